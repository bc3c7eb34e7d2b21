//! A cluster of RaftMetadataStores in one process over real loopback TCP
//! (TcpTransport), with a switch per node that cuts it off the network.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use walrus_backends::raft::{route, RaftConfig, RaftMetadataStore};
use walrus_backends::tcp::{TcpConfig, TcpTransport};
use walrus_core::{
    ConsensusStatus, Error, MetadataCmd, MetadataStore, NodeId, NodeRequest, NodeResponse,
    RequestHandler, Result, TopicName, Transport,
};

/// Routes incoming requests to the node's store, unless the node is cut.
struct Handler {
    me: NodeId,
    store: OnceLock<Arc<RaftMetadataStore>>,
    cut: Arc<AtomicBool>,
}

#[async_trait]
impl RequestHandler for Handler {
    async fn handle(&self, req: NodeRequest) -> Result<NodeResponse> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(Error::Unreachable(self.me));
        }
        match self.store.get() {
            Some(store) => route(store, req).await,
            None => Err(Error::Unavailable(format!("node {} is starting", self.me))),
        }
    }
}

/// The node's outgoing side, failing every call while the node is cut.
pub struct CuttableTransport {
    pub inner: Arc<TcpTransport>,
    pub cut: Arc<AtomicBool>,
}

#[async_trait]
impl Transport for CuttableTransport {
    async fn call(&self, to: NodeId, req: NodeRequest) -> Result<NodeResponse> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(Error::Unreachable(to));
        }
        self.inner.call(to, req).await
    }

    async fn call_addr(&self, addr: &str, req: NodeRequest) -> Result<NodeResponse> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(Error::Unavailable(format!("{addr} is unreachable")));
        }
        self.inner.call_addr(addr, req).await
    }

    fn set_peer_address(&self, node: NodeId, addr: &str) {
        self.inner.set_peer_address(node, addr)
    }
}

pub struct TestNode {
    pub id: NodeId,
    pub dir: PathBuf,
    pub addr: String,
    pub store: Arc<RaftMetadataStore>,
    transport: Arc<TcpTransport>,
    server: JoinHandle<()>,
    cut: Arc<AtomicBool>,
}

impl TestNode {
    /// Starts node `id` with its data in `dir`, listening on `addr`
    /// (`127.0.0.1:0` picks a port), joining through `join`.
    pub async fn start(
        id: NodeId,
        dir: PathBuf,
        addr: &str,
        join: Option<String>,
        tune: impl FnOnce(&mut RaftConfig),
    ) -> TestNode {
        let listener = bind(addr).await;
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address")
            .to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let transport = TcpTransport::new(TcpConfig {
            request_timeout: Duration::from_secs(3),
            ..TcpConfig::default()
        });
        let handler = Arc::new(Handler {
            me: id,
            store: OnceLock::new(),
            cut: cut.clone(),
        });
        let server = transport.serve(listener, handler.clone());
        let outgoing = Arc::new(CuttableTransport {
            inner: transport.clone(),
            cut: cut.clone(),
        });
        let mut config = RaftConfig::new(id, &dir, &addr, format!("client-of-{id}"));
        tune(&mut config);
        let store = RaftMetadataStore::open(config, outgoing)
            .await
            .expect("the raft store opens");
        let _ = handler.store.set(store.clone());
        store
            .bootstrap_or_join(join)
            .await
            .expect("the node bootstraps or joins");
        TestNode {
            id,
            dir,
            addr,
            store,
            transport,
            server,
            cut,
        }
    }

    /// Stops the node as a crash would, except that its redb file is
    /// closed cleanly so the test can reopen it in this process.
    pub async fn stop(self) -> (PathBuf, String) {
        self.transport.shutdown();
        self.server.abort();
        self.store.shutdown().await;
        (self.dir, self.addr)
    }

    pub fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }

    pub fn dyn_store(&self) -> Arc<dyn MetadataStore> {
        self.store.clone()
    }
}

/// Binds `addr`, retrying while a just-closed listener still holds the port.
pub async fn bind(addr: &str) -> TcpListener {
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("cannot bind {addr}");
}

/// Nodes 1..=n: node 1 bootstraps, the others join through node 1.
pub struct Cluster {
    pub base: tempfile::TempDir,
    pub nodes: BTreeMap<NodeId, TestNode>,
    tune: fn(&mut RaftConfig),
}

pub fn no_tuning(_: &mut RaftConfig) {}

impl Cluster {
    pub async fn start(n: u64) -> Cluster {
        Self::start_tuned(n, no_tuning).await
    }

    pub async fn start_tuned(n: u64, tune: fn(&mut RaftConfig)) -> Cluster {
        let base = tempfile::tempdir().expect("a temp dir");
        let mut cluster = Cluster {
            base,
            nodes: BTreeMap::new(),
            tune,
        };
        for id in 1..=n {
            cluster.add(id).await;
        }
        cluster
    }

    pub fn dir_of(&self, id: NodeId) -> PathBuf {
        self.base.path().join(format!("node_{id}"))
    }

    /// Starts a new node `id` that joins through the lowest running node.
    pub async fn add(&mut self, id: NodeId) {
        let join = self.nodes.values().next().map(|n| n.addr.clone());
        self.add_joining(id, join).await
    }

    pub async fn add_joining(&mut self, id: NodeId, join: Option<String>) {
        let node = TestNode::start(id, self.dir_of(id), "127.0.0.1:0", join, self.tune).await;
        self.nodes.insert(id, node);
    }

    pub async fn stop(&mut self, id: NodeId) -> String {
        let node = self.nodes.remove(&id).expect("the node runs");
        node.stop().await.1
    }

    /// Restarts a stopped node from its data directory on its old address,
    /// with no join flag (a member restarting).
    pub async fn restart(&mut self, id: NodeId, addr: &str) {
        let node = TestNode::start(id, self.dir_of(id), addr, None, self.tune).await;
        self.nodes.insert(id, node);
    }

    pub async fn stop_all(&mut self) -> BTreeMap<NodeId, String> {
        let mut addrs = BTreeMap::new();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            addrs.insert(id, self.stop(id).await);
        }
        addrs
    }

    pub fn store(&self, id: NodeId) -> &Arc<RaftMetadataStore> {
        &self.nodes.get(&id).expect("the node runs").store
    }

    /// Waits until the running nodes (except `ignore`) agree on one leader
    /// among them and it confirms with a quorum.
    pub async fn leader_except(&self, ignore: &[NodeId], within: Duration) -> Option<NodeId> {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            let live: Vec<&TestNode> = self
                .nodes
                .values()
                .filter(|n| !ignore.contains(&n.id))
                .collect();
            let leaders: Vec<Option<NodeId>> =
                live.iter().map(|n| n.store.status().leader).collect();
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| *x == Some(*l)) && !ignore.contains(l) {
                    if let Some(node) = self.nodes.get(l) {
                        if node.store.confirm().await.is_ok() {
                            return Some(*l);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Waits until node `id`'s consensus view satisfies `ok` and returns
    /// it; after `within`, returns the view as it is then, for the caller's
    /// assertion to report. A member's view trails the commit: a membership
    /// change commits on a quorum, which need not include the node it adds.
    pub async fn wait_status(
        &self,
        id: NodeId,
        within: Duration,
        ok: impl Fn(&ConsensusStatus) -> bool,
    ) -> ConsensusStatus {
        let store = self.store(id);
        // status() is read from these metrics: a change of the view is a
        // change here, so waiting on them misses none.
        let mut metrics = store.raft().metrics();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let st = store.status();
            if ok(&st) {
                return st;
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or raft stopped: the view is final.
                Ok(Err(_)) | Err(_) => return store.status(),
            }
        }
    }

    pub async fn leader(&self) -> NodeId {
        self.leader_except(&[], Duration::from_secs(10))
            .await
            .expect("the cluster elects a leader within 10 s")
    }
}

pub fn topic(name: &str) -> TopicName {
    TopicName::new(name).expect("test topic names are valid")
}

pub fn create(name: &str) -> MetadataCmd {
    MetadataCmd::CreateTopic {
        topic: topic(name),
        leader: 1,
    }
}

/// Waits until `store`'s state has topic `name`.
pub async fn wait_topic(store: &Arc<RaftMetadataStore>, name: &str, within: Duration) -> bool {
    let t = topic(name);
    let mut rx = store.watch();
    tokio::time::timeout(within, async {
        loop {
            if rx.borrow_and_update().topic(&t).is_some() {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    })
    .await
    .is_ok()
}
