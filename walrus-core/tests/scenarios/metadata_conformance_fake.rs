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

/// How a [`Broken`] store breaks the contract.
#[derive(Clone, Copy)]
enum Bend {
    /// Rule 5: every node claims it confirmed leadership.
    ConfirmsAnywhere,
    /// Rule 7 (commands idempotent): it "helpfully" points a rollover at
    /// the topic's current segment, so a retried `Roll` that had committed
    /// rolls a second segment.
    RetargetsRolls,
}

/// The fake store, bent one way.
struct Broken(Arc<dyn MetadataStore>, Bend);

#[async_trait]
impl MetadataStore for Broken {
    async fn propose(
        &self,
        cmd: walrus_core::MetadataCmd,
    ) -> walrus_core::Result<walrus_core::CmdResult> {
        let cmd = match (self.1, cmd) {
            (
                Bend::RetargetsRolls,
                walrus_core::MetadataCmd::Roll {
                    topic,
                    count,
                    next_leader,
                    ..
                },
            ) => {
                let current = self.0.state().topic(&topic).map_or(1, |t| t.current().id);
                walrus_core::MetadataCmd::Roll {
                    topic,
                    segment: current,
                    count,
                    next_leader,
                }
            }
            (_, other) => other,
        };
        self.0.propose(cmd).await
    }
    fn watch(&self) -> tokio::sync::watch::Receiver<Arc<walrus_core::ClusterState>> {
        self.0.watch()
    }
    async fn confirm(&self) -> walrus_core::Result<u64> {
        match self.1 {
            Bend::ConfirmsAnywhere => Ok(self.0.state().version),
            Bend::RetargetsRolls => self.0.confirm().await,
        }
    }
    fn status(&self) -> walrus_core::ConsensusStatus {
        self.0.status()
    }
    async fn add_node(&self, node: walrus_core::NodeId, info: NodeInfo) -> walrus_core::Result<()> {
        self.0.add_node(node, info).await
    }
    fn metrics(&self) -> walrus_core::ConsensusMetrics {
        self.0.metrics()
    }
}

struct BrokenFactory(FakeFactory, Bend);

#[async_trait]
impl MetadataStoreFactory for BrokenFactory {
    async fn open(&mut self) -> Vec<Arc<dyn MetadataStore>> {
        let bend = self.1;
        self.0
            .open()
            .await
            .into_iter()
            .map(|s| Arc::new(Broken(s, bend)) as Arc<dyn MetadataStore>)
            .collect()
    }
    async fn close(&mut self) {}
}

#[tokio::test]
#[should_panic(expected = "not the leader")]
async fn given_a_store_that_confirms_on_followers_when_running_the_suite_should_fail() {
    run(BrokenFactory(
        FakeFactory { cluster: None },
        Bend::ConfirmsAnywhere,
    ))
    .await;
}

#[tokio::test]
#[should_panic(expected = "applied a second time changed the state again")]
async fn given_a_store_that_makes_a_rollover_apply_twice_when_running_the_suite_should_fail() {
    run(BrokenFactory(
        FakeFactory { cluster: None },
        Bend::RetargetsRolls,
    ))
    .await;
}
