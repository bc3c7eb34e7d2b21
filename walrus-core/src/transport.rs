//! [`Transport`]: requests between nodes.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::metadata::NodeInfo;
use crate::types::{NodeId, SegmentKey, StorageId, TopicName};

/// A request from one node to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRequest {
    /// Append to a segment the receiver leads (forwarded PUT).
    /// Answered with [`NodeResponse::Appended`].
    Append {
        segment: SegmentKey,
        entries: Vec<Bytes>,
    },
    /// Read entries of a segment the receiver holds.
    /// Answered with [`NodeResponse::Entries`].
    Read {
        segment: SegmentKey,
        from: u64,
        max_entries: u32,
        max_bytes: u32,
    },
    /// The next entry of the topic's shared GET cursor; sent to the cursor's
    /// owner (the consensus leader). Answered with [`NodeResponse::Entry`].
    Get { topic: TopicName },
    /// A write-lease renewal from `node` to the consensus leader.
    /// Answered with [`NodeResponse::Lease`].
    RenewLease { node: NodeId },
    /// A new node asks to join the cluster. Answered with [`NodeResponse::Done`].
    Join { node: NodeId, info: NodeInfo },
    /// The consensus backend's own message, opaque to everything else.
    /// Answered with [`NodeResponse::Consensus`].
    Consensus(Bytes),
    /// Liveness probe. Answered with [`NodeResponse::Done`].
    Ping,
    /// A starting node names its storage before it takes part in consensus:
    /// the cluster records it, or refuses with [`Error::Refused`](crate::Error)
    /// when it recorded another one for `node` (its data was wiped or
    /// replaced). `fresh`: the node has no consensus state, so if it is
    /// still a member it is taken out to join again from scratch.
    /// Answered with [`NodeResponse::Done`].
    ClaimStorage {
        node: NodeId,
        storage: StorageId,
        fresh: bool,
    },
    /// The operator accepts that `node` lost its storage (sent to the
    /// consensus leader, which owns the GET cursors). Answered with
    /// [`NodeResponse::StorageReplaced`].
    ReplaceStorage { node: NodeId, storage: StorageId },
    // New variants go last: the envelope encodes a variant by its position.
    /// Like `Read`, for a READ by offset: when nothing is readable at
    /// `from` yet and the segment is still its topic's open one, the
    /// receiver waits up to `wait_ms` for an append to it (or for the topic
    /// to move on) before answering. `max_entries` 0 reads nothing and
    /// answers only the count. Answered with [`NodeResponse::Entries`].
    ReadWait {
        segment: SegmentKey,
        from: u64,
        max_entries: u32,
        max_bytes: u32,
        wait_ms: u32,
    },
}

/// A successful answer to a [`NodeRequest`]; failures travel as
/// [`Error`](crate::Error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeResponse {
    Done,
    Appended {
        first_index: u64,
        count: u64,
    },
    Entries {
        entries: Vec<Bytes>,
        /// The segment's count on the holder and whether it is sealed there.
        count: u64,
        sealed: bool,
    },
    Entry(Option<Bytes>),
    Lease {
        /// The metadata version the leader confirmed with its quorum.
        version: u64,
    },
    Consensus(Bytes),
    /// The segments closed as lost, each with the entries it keeps.
    StorageReplaced {
        lost: Vec<(SegmentKey, u64)>,
    },
}

/// Sends [`NodeRequest`]s to other nodes.
///
/// # Contract
///
/// 1. **Connections are reused.** No connect per request: a backend keeps
///    connections to each peer and runs many requests on them at once.
/// 2. **Bounded waits.** A call to a dead or partitioned peer fails within
///    the backend's timeout; it never hangs.
/// 3. **Errors travel.** An `Err` returned by the receiver's
///    [`RequestHandler`] arrives as the same `Err` at the caller.
/// 4. **At most once.** A request is handled by the receiver at most once
///    per call (no blind resends).
/// 5. **Sent or not.** A call that fails before the request left this node
///    returns `Unreachable` (or `ShuttingDown`, `Timeout`): the receiver
///    never saw it. Once (part of) it was sent, a lost connection or a
///    timeout returns `NoAnswer`: the receiver may or may not have handled
///    it, and the caller decides what that means for its request.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Sends `req` to `to` and waits for its answer.
    async fn call(&self, to: NodeId, req: NodeRequest) -> Result<NodeResponse>;

    /// Sends `req` to an address whose node id is not known yet (joining a
    /// cluster through `--join host:port`).
    async fn call_addr(&self, addr: &str, req: NodeRequest) -> Result<NodeResponse>;

    /// Tells the transport where `node` listens (`host:port`). Transports
    /// that do not use addresses ignore it.
    fn set_peer_address(&self, _node: NodeId, _addr: &str) {}
}

/// The receiving side: what a node does with an incoming [`NodeRequest`].
#[async_trait]
pub trait RequestHandler: Send + Sync + 'static {
    async fn handle(&self, req: NodeRequest) -> Result<NodeResponse>;
}
