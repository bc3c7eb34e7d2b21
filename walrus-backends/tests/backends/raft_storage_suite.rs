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

mod reopen {
    use std::sync::Arc;

    use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
    use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftLogReader, Vote};
    use walrus_backends::raft::log_store::RedbLogStore;
    use walrus_backends::raft::types::{Entry, MetadataBatch};
    use walrus_core::MetadataCmd;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(MetadataBatch(vec![MetadataCmd::Noop])),
        }
    }

    async fn open(path: &std::path::Path) -> RedbLogStore {
        // The previous writer thread closes the file shortly after its store
        // is dropped.
        for _ in 0..100 {
            if let Ok(db) = redb::Database::create(path) {
                return RedbLogStore::new(Arc::new(db)).expect("log store opens");
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("cannot reopen {}", path.display());
    }

    #[tokio::test]
    async fn given_a_flushed_log_with_vote_truncate_and_purge_when_reopened_should_read_the_same() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("raft.redb");
        {
            let mut log = open(&path).await;
            log.blocking_append((1..=10).map(entry))
                .await
                .expect("append");
            log.truncate(entry(8).log_id).await.expect("truncate 8..");
            log.purge(entry(3).log_id).await.expect("purge ..=3");
            log.save_committed(Some(entry(5).log_id))
                .await
                .expect("committed");
            // The vote is durable on return, and so is everything before it.
            log.save_vote(&Vote::new(2, 1)).await.expect("vote");
        }
        let mut log = open(&path).await;
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id, Some(entry(3).log_id));
        assert_eq!(state.last_log_id, Some(entry(7).log_id));
        let indexes: Vec<u64> = log
            .try_get_log_entries(0..100)
            .await
            .expect("read")
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(indexes, vec![4, 5, 6, 7]);
        assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(2, 1)));
        assert_eq!(
            log.read_committed().await.expect("committed"),
            Some(entry(5).log_id)
        );
    }

    #[tokio::test]
    async fn given_everything_purged_when_reopened_should_end_where_the_purge_ended() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("raft.redb");
        {
            let mut log = open(&path).await;
            log.blocking_append((1..=4).map(entry))
                .await
                .expect("append");
            log.purge(entry(4).log_id).await.expect("purge all");
            log.save_vote(&Vote::new(1, 1)).await.expect("vote flushes");
        }
        let mut log = open(&path).await;
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_log_id, Some(entry(4).log_id));
        assert!(log
            .try_get_log_entries(0..100)
            .await
            .expect("read")
            .is_empty());
    }
}
