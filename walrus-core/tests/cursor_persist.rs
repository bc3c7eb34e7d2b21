//! The GET cursor persists its offset with one proposal at a time: GETs
//! served while an `AdvanceCursor` is being committed start no more of
//! them (they used to pile up, one per GET, and fill the metadata log).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;
use walrus_core::protocol::{Request, Response};
use walrus_core::testing::{sim_info, FakeMetadataCluster, MemLogStore, SimNetwork, TestCluster};
use walrus_core::{
    ClusterState, CmdResult, ConsensusStatus, MetadataCmd, MetadataStore, Node, NodeId, NodeInfo,
    Result, SystemClock, TopicName,
};

/// A metadata store whose `AdvanceCursor` commits take 20 ms (a Raft
/// round with an fsync), counting how many are proposed.
struct SlowCursorCommits {
    inner: Arc<dyn MetadataStore>,
    advances: AtomicUsize,
}

#[async_trait]
impl MetadataStore for SlowCursorCommits {
    async fn propose(&self, cmd: MetadataCmd) -> Result<CmdResult> {
        if matches!(cmd, MetadataCmd::AdvanceCursor { .. }) {
            self.advances.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.inner.propose(cmd).await
    }
    fn watch(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.inner.watch()
    }
    async fn confirm(&self) -> Result<u64> {
        self.inner.confirm().await
    }
    fn status(&self) -> ConsensusStatus {
        self.inner.status()
    }
    async fn add_node(&self, node: NodeId, info: NodeInfo) -> Result<()> {
        self.inner.add_node(node, info).await
    }
    fn metrics(&self) -> serde_json::Value {
        self.inner.metrics()
    }
}

#[tokio::test(start_paused = true)]
async fn given_slow_cursor_commits_when_16_readers_get_1000_entries_should_persist_one_at_a_time() {
    let cluster = FakeMetadataCluster::new();
    let metadata = Arc::new(SlowCursorCommits {
        inner: cluster.join(1, sim_info(1)),
        advances: AtomicUsize::new(0),
    });
    let net = SimNetwork::new(0);
    let node = Node::new(
        TestCluster::config(1, 1_000_000),
        metadata.clone(),
        Arc::new(MemLogStore::new()),
        net.transport(1),
        Arc::new(SystemClock),
    );
    net.register(1, node.clone());
    node.start();
    while !node.lease().is_valid() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let topic = TopicName::new("logs").unwrap();
    assert_eq!(
        node.handle(Request::Register(topic.clone())).await,
        Response::Ok
    );
    let entries: Vec<Bytes> = (0..1000).map(|i| Bytes::from(format!("e{i}"))).collect();
    assert_eq!(node.put_batch(&topic, entries).await, (1000, None));

    let mut readers = Vec::new();
    for _ in 0..16 {
        let node = node.clone();
        let topic = topic.clone();
        readers.push(tokio::spawn(async move {
            let mut got = 0;
            for _ in 0..1000 / 16 {
                match node.handle(Request::Get(topic.clone())).await {
                    Response::Entry(_) => got += 1,
                    other => panic!("GET: {other:?}"),
                }
                // Readers interleave with the persist tasks.
                tokio::task::yield_now().await;
            }
            got
        }));
    }
    let mut got = 0;
    for r in readers {
        got += r.await.unwrap();
    }
    assert_eq!(got, 1000 / 16 * 16);
    // 992 deliveries, a persist due every 64: about 16, plus the cursor
    // loop's. One per GET past the threshold would be hundreds.
    let advances = metadata.advances.load(Ordering::SeqCst);
    assert!(
        advances <= 40,
        "{advances} AdvanceCursor proposals for 992 GETs"
    );
    node.shutdown().await;
}
