//! walrus-core's MetadataStore conformance suite against a 3-node
//! RaftMetadataStore cluster over loopback TCP, restarted from its redb files.

use crate::raft_common;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use raft_common::Cluster;
use walrus_core::testing::metadata_store_conformance::{run, MetadataStoreFactory};
use walrus_core::{MetadataStore, NodeId};

struct RaftFactory {
    cluster: Option<Cluster>,
    /// Addresses of the stopped nodes, reused on restart.
    stopped: BTreeMap<NodeId, String>,
}

#[async_trait]
impl MetadataStoreFactory for RaftFactory {
    async fn open(&mut self) -> Vec<Arc<dyn MetadataStore>> {
        match self.cluster.as_mut() {
            None => self.cluster = Some(Cluster::start(3).await),
            Some(c) => {
                for (id, addr) in std::mem::take(&mut self.stopped) {
                    c.restart(id, &addr).await;
                }
            }
        }
        let c = self.cluster.as_ref().expect("opened above");
        c.nodes.values().map(|n| n.dyn_store()).collect()
    }

    async fn close(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            self.stopped = c.stop_all().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_a_three_node_raft_cluster_when_running_the_conformance_suite_should_pass() {
    run(RaftFactory {
        cluster: None,
        stopped: BTreeMap::new(),
    })
    .await;
}
