//! Core's Node (routing, QuorumLease) on RaftMetadataStore over loopback
//! TCP: a node cut off from the quorum loses its write lease within the
//! lease time, while the majority elects and commits.

use crate::raft_common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use raft_common::{bind, CuttableTransport};
use tokio::time::Instant;
use walrus_backends::raft::{RaftConfig, RaftMetadataStore, RaftRouter};
use walrus_backends::tcp::{TcpConfig, TcpTransport};
use walrus_core::protocol::{Request, Response};
use walrus_core::testing::MemLogStore;
use walrus_core::{
    Error, MetadataStore, Node, NodeConfig, NodeId, NodeRequest, NodeResponse, RequestHandler,
    Result, SystemClock,
};

/// The node's receiving side (Raft's messages to the store, the rest to
/// the node), refusing everything while the node is cut.
struct CutHandler {
    id: NodeId,
    inner: Arc<RaftRouter>,
    cut: Arc<AtomicBool>,
}

#[async_trait]
impl RequestHandler for CutHandler {
    async fn handle(&self, req: NodeRequest) -> Result<NodeResponse> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(Error::Unreachable(self.id));
        }
        self.inner.handle(req).await
    }
}

struct Member {
    node: Arc<Node>,
    store: Arc<RaftMetadataStore>,
    transport: Arc<TcpTransport>,
    cut: Arc<AtomicBool>,
}

async fn start(id: NodeId, dir: std::path::PathBuf, join: Option<String>) -> (Member, String) {
    let listener = bind("127.0.0.1:0").await;
    let addr = listener.local_addr().expect("bound").to_string();
    let cut = Arc::new(AtomicBool::new(false));
    let tcp = TcpTransport::new(TcpConfig {
        request_timeout: Duration::from_secs(3),
        ..TcpConfig::default()
    });
    let transport = Arc::new(CuttableTransport {
        inner: tcp.clone(),
        cut: cut.clone(),
    });
    let store = RaftMetadataStore::open(
        RaftConfig::new(id, dir, &addr, format!("client-{id}")),
        transport.clone(),
    )
    .await
    .expect("raft opens");
    let node = Node::new(
        NodeConfig::new(id),
        store.clone(),
        Arc::new(MemLogStore::new()),
        transport,
        Arc::new(SystemClock),
    );
    tcp.serve(
        listener,
        Arc::new(CutHandler {
            id,
            inner: RaftRouter::new(store.clone(), node.clone()),
            cut: cut.clone(),
        }),
    );
    store.bootstrap_or_join(join).await.expect("joins");
    node.start();
    (
        Member {
            node,
            store,
            transport: tcp,
            cut,
        },
        addr,
    )
}

async fn request(node: &Node, text: &str) -> Response {
    node.handle(Request::parse(Bytes::from(text.to_string())).expect("a valid request"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_a_segment_leader_cut_off_when_the_lease_time_passes_should_refuse_writes_while_the_majority_commits(
) {
    let base = tempfile::tempdir().expect("temp dir");
    let mut members: BTreeMap<NodeId, Member> = BTreeMap::new();
    let (m1, addr1) = start(1, base.path().join("node_1"), None).await;
    members.insert(1, m1);
    for id in 2..=3 {
        let (m, _) = start(
            id,
            base.path().join(format!("node_{id}")),
            Some(addr1.clone()),
        )
        .await;
        members.insert(id, m);
    }
    // Wait until every node holds a valid lease and all are voters.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !members
        .values()
        .all(|m| m.node.lease().is_valid() && m.store.status().voters.len() == 3)
    {
        assert!(Instant::now() < deadline, "leases never became valid");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = members[&1].store.status().leader.expect("a leader");
    // The consensus leader registers a topic: it leads segment 1.
    let r = request(&members[&leader].node, "REGISTER logs").await;
    assert_eq!(r, Response::Ok, "register");
    let r = request(&members[&leader].node, "PUT logs before-cut").await;
    assert_eq!(r, Response::Ok, "put before the cut");

    // Cut the consensus leader, which also leads the topic's segment.
    members[&leader].cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    let lease = NodeConfig::new(leader).lease;

    // Its lease never reaches past the cut by more than one lease time ...
    tokio::time::sleep(lease + Duration::from_millis(20)).await;
    let isolated = &members[&leader].node;
    let until = isolated
        .lease()
        .valid_until()
        .expect("it was renewed before");
    assert!(
        until <= cut_at + lease,
        "a renewal after the cut extended the lease to {:?} after it",
        until - cut_at
    );
    assert!(
        !isolated.lease().is_valid(),
        "the isolated node still has a lease"
    );
    // ... so it refuses writes.
    let r = request(isolated, "PUT logs on-isolated").await;
    assert!(
        matches!(r, Response::Err(ref e) if e.contains("lease expired") || e.contains("NotLeader") || e.contains("unavailable")),
        "the isolated node acknowledged a write: {r:?}"
    );

    // Meanwhile the majority elects a leader, moves the topic on, and takes writes.
    let other = members
        .keys()
        .copied()
        .find(|id| *id != leader)
        .expect("another node");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = request(&members[&other].node, "PUT logs after-cut").await;
        if r == Response::Ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the majority never took writes again: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in members.values() {
        m.node.shutdown().await;
        m.store.shutdown().await;
        m.transport.shutdown();
    }
}
