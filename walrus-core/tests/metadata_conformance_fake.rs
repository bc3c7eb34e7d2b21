//! The MetadataStore conformance suite against the in-memory fake.

use std::sync::Arc;

use async_trait::async_trait;
use walrus_core::testing::metadata_store_conformance::{run, MetadataStoreFactory};
use walrus_core::testing::FakeMetadataCluster;
use walrus_core::{MetadataStore, NodeInfo};

/// A fake cluster of three; "restart" gives fresh handles on the same shared
/// log, which is what the fake persists.
struct FakeFactory {
    cluster: Option<FakeMetadataCluster>,
}

#[async_trait]
impl MetadataStoreFactory for FakeFactory {
    async fn open(&mut self) -> Vec<Arc<dyn MetadataStore>> {
        let nodes = [1, 2, 3];
        match &self.cluster {
            Some(cluster) => nodes
                .iter()
                .map(|n| cluster.store(*n) as Arc<dyn MetadataStore>)
                .collect(),
            None => {
                let cluster = FakeMetadataCluster::new();
                let stores = nodes
                    .iter()
                    .map(|n| {
                        let info = NodeInfo {
                            raft_addr: format!("sim-{n}"),
                            client_addr: format!("client-{n}"),
                        };
                        cluster.join(*n, info) as Arc<dyn MetadataStore>
                    })
                    .collect();
                self.cluster = Some(cluster);
                stores
            }
        }
    }

    async fn close(&mut self) {}
}

#[tokio::test]
async fn given_the_fake_metadata_cluster_when_running_the_conformance_suite_should_pass() {
    run(FakeFactory { cluster: None }).await;
}
