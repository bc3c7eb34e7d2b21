//! openraft's own storage conformance suite against the redb log store and
//! the ClusterState state machine.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use walrus_backends::raft::log_store::RedbLogStore;
use walrus_backends::raft::state_machine::StateMachineStore;
use walrus_backends::raft::types::TypeConfig;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, RedbLogStore, StateMachineStore, tempfile::TempDir> for RedbBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, RedbLogStore, StateMachineStore), StorageError<u64>> {
        let fail = |e: &dyn std::fmt::Display| walrus_backends::raft::types::write_err(e);
        let dir = tempfile::tempdir().map_err(|e| fail(&e))?;
        let db = redb::Database::create(dir.path().join("raft.redb")).map_err(|e| fail(&e))?;
        let db = Arc::new(db);
        let log = RedbLogStore::new(db.clone()).map_err(|e| fail(&e))?;
        let sm = StateMachineStore::new(db).map_err(|e| fail(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn given_redb_storage_when_running_the_openraft_suite_should_pass_every_case() {
    Suite::test_all(RedbBuilder).expect("the openraft storage suite should pass");
}
