//! The LogStore conformance suite against the in-memory fake.

use walrus_core::testing::log_store_conformance::run_all;
use walrus_core::testing::MemLogStore;

#[tokio::test(flavor = "multi_thread")]
async fn given_the_mem_log_store_when_running_the_conformance_suite_should_pass() {
    run_all(MemLogStore::new).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn given_the_mem_log_store_with_relaxed_syncs_when_running_the_conformance_suite_should_pass()
{
    run_all(|| {
        let store = MemLogStore::new();
        store.relax_syncs(true);
        store
    })
    .await;
}
