//! [`TestCluster`]: N nodes of real [`Node`] logic on the fakes
//! ([`FakeMetadataCluster`], [`SimNetwork`], [`MemLogStore`]), in one
//! process. Run it under `#[tokio::test(start_paused = true)]`: leases,
//! renewals and failover then take no wall-clock time.
//!
//! ```no_run
//! # async fn demo() {
//! use walrus_core::testing::TestCluster;
//! let cluster = TestCluster::start(3, |id| TestCluster::config(id, 10)).await;
//! assert_eq!(cluster.send(2, "REGISTER logs").await, walrus_core::protocol::Response::Ok);
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::clock::SystemClock;
use crate::metadata::NodeInfo;
use crate::node::{Node, NodeConfig};
use crate::protocol::{Request, Response};
use crate::types::NodeId;

use super::fake_metadata::FakeMetadataCluster;
use super::mem_log_store::MemLogStore;
use super::sim_network::SimNetwork;

/// An in-process cluster of nodes 1..=n.
pub struct TestCluster {
    pub configs: BTreeMap<NodeId, NodeConfig>,
    pub metadata: FakeMetadataCluster,
    pub net: SimNetwork,
    pub nodes: BTreeMap<NodeId, Arc<Node>>,
    pub logs: BTreeMap<NodeId, Arc<MemLogStore>>,
}

/// The simulated inter-node address of `node`.
pub fn sim_info(node: NodeId) -> NodeInfo {
    NodeInfo {
        raft_addr: format!("sim:{node}"),
        client_addr: format!("sim-client:{node}"),
    }
}

impl TestCluster {
    /// A test configuration: segment limit `limit`, a fast monitor loop,
    /// the default lease timings.
    pub fn config(node: NodeId, limit: u64) -> NodeConfig {
        NodeConfig {
            max_segment_entries: limit,
            monitor_interval: Duration::from_millis(50),
            ..NodeConfig::new(node)
        }
    }

    /// Starts nodes `1..=n` (node 1 is the consensus leader) and waits
    /// until every node holds a write lease.
    pub async fn start(n: u64, config: impl Fn(NodeId) -> NodeConfig) -> TestCluster {
        Self::start_with(n, SimNetwork::new(0), config).await
    }

    /// Like [`TestCluster::start`] on a given network (e.g. a seeded one).
    pub async fn start_with(
        n: u64,
        net: SimNetwork,
        config: impl Fn(NodeId) -> NodeConfig,
    ) -> TestCluster {
        let metadata = FakeMetadataCluster::new();
        let stores: Vec<_> = (1..=n)
            .map(|id| (id, metadata.join(id, sim_info(id))))
            .collect();
        let mut nodes = BTreeMap::new();
        let mut logs = BTreeMap::new();
        let mut configs = BTreeMap::new();
        for (id, store) in stores {
            let log = Arc::new(MemLogStore::new());
            let node = Node::new(
                config(id),
                store,
                log.clone(),
                net.transport(id),
                Arc::new(SystemClock),
            );
            net.register(id, node.clone());
            node.start();
            nodes.insert(id, node);
            logs.insert(id, log);
            configs.insert(id, config(id));
        }
        let cluster = TestCluster {
            configs,
            metadata,
            net,
            nodes,
            logs,
        };
        cluster.wait_for_leases(Duration::from_secs(10)).await;
        cluster
    }

    /// Waits until every node that is not cut off holds a valid lease.
    ///
    /// # Panics
    /// When that takes longer than `limit` (a bug in the lease logic).
    pub async fn wait_for_leases(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.nodes.values().all(|n| n.lease().is_valid()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nodes did not all get a write lease within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn node(&self, id: NodeId) -> &Arc<Node> {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("the test cluster has no node {id}"))
    }

    /// Sends one text-protocol request (`"PUT logs hello"`) to node `id`,
    /// as a client would; parse errors come back as `ERR` like on the wire.
    pub async fn send(&self, id: NodeId, line: &str) -> Response {
        self.send_bytes(id, Bytes::copy_from_slice(line.as_bytes()))
            .await
    }

    pub async fn send_bytes(&self, id: NodeId, body: Bytes) -> Response {
        match Request::parse(body) {
            Ok(req) => self.node(id).handle(req).await,
            Err(e) => Response::from(e),
        }
    }

    /// Cuts `id` off from the network and from consensus.
    pub fn isolate(&self, id: NodeId) {
        self.net.isolate(id);
        self.metadata.cut_off(id);
    }

    /// Heals every partition; cut-off nodes catch up with metadata.
    pub fn heal(&self) {
        self.net.heal();
        for id in self.nodes.keys() {
            self.metadata.reconnect(*id);
        }
    }

    /// Reads the whole topic through the shared cursor via node `id`,
    /// retrying retryable errors, until `EMPTY`.
    ///
    /// # Panics
    /// On a non-retryable error, or when the topic does not drain within
    /// `limit`.
    pub async fn drain(&self, id: NodeId, topic: &str, limit: Duration) -> Vec<Bytes> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut out = Vec::new();
        let line = format!("GET {topic}");
        loop {
            match self.send(id, &line).await {
                Response::Entry(e) => out.push(e),
                Response::Empty => return out,
                Response::Err(e) if e.starts_with("unavailable") => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "GET {topic} kept failing: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => panic!("GET {topic} via node {id}: unexpected {other:?}"),
            }
        }
    }

    /// Crashes node `id`: it drops off the network and out of consensus
    /// and its loops stop. Its log (the disk) stays, for [`restart`](Self::restart).
    pub async fn crash(&self, id: NodeId) {
        self.net.unregister(id);
        self.metadata.cut_off(id);
        self.node(id).shutdown().await;
    }

    /// Starts a fresh node `id` on the log and metadata it had (a restart
    /// after [`crash`](Self::crash)), reconnected to the network and consensus.
    pub fn restart(&mut self, id: NodeId) {
        let node = Node::new(
            self.configs[&id].clone(),
            self.metadata.store(id),
            self.logs[&id].clone(),
            self.net.transport(id),
            Arc::new(SystemClock),
        );
        self.metadata.reconnect(id);
        self.net.register(id, node.clone());
        node.start();
        self.nodes.insert(id, node);
    }

    /// Starts a new node `id` with `config` on an empty log and makes it a
    /// voter (it joins, as `--join` does).
    pub fn add_node(&mut self, id: NodeId, config: NodeConfig) {
        let store = self.metadata.join(id, sim_info(id));
        let log = Arc::new(MemLogStore::new());
        let node = Node::new(
            config.clone(),
            store,
            log.clone(),
            self.net.transport(id),
            Arc::new(SystemClock),
        );
        self.net.register(id, node.clone());
        node.start();
        self.nodes.insert(id, node);
        self.logs.insert(id, log);
        self.configs.insert(id, config);
    }

    /// Stops every node.
    pub async fn shutdown(&self) {
        for node in self.nodes.values() {
            node.shutdown().await;
        }
    }
}
