//! [`Transport`]: requests between nodes.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::metadata::{NodeInfo, ProducerEntry};
use crate::types::{NodeId, ProducerId, ProducerSeq, SegmentId, SegmentKey, StorageId, TopicName};

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
    /// Append all of `entries` to a segment the receiver leads, or none
    /// (a PUTB): never a prefix. With `producer`, a write stored before
    /// under that producer and sequence is answered as it was then and not
    /// stored again. Answered with [`NodeResponse::Stored`].
    AppendWhole {
        segment: SegmentKey,
        entries: Vec<Bytes>,
        producer: Option<ProducerSeq>,
    },
    /// From the leader of a replicated segment to one of its followers:
    /// entries `first..` of `segment`, to store at those indexes (what the
    /// receiver holds already is skipped). `seal: Some(n)`: the leader
    /// sealed the segment at `n`; the receiver seals its copy there once
    /// it holds `n` entries. `marks`: the idempotent writes whose last
    /// entry is among `entries`, each its producer's latest; the receiver
    /// journals them before it stores the entries, so that a failover
    /// learns each producer's last write from the replicas (see
    /// [`ProducerMark`]). Answered with [`NodeResponse::Replicated`].
    Replicate {
        segment: SegmentKey,
        first: u64,
        entries: Vec<Bytes>,
        seal: Option<u64>,
        marks: Vec<ProducerMark>,
    },
    /// Failover of a replicated segment whose leader's lease lapsed: the
    /// consensus leader asks each replica for the count it holds. The
    /// answer fences: a follower that answered refuses every later
    /// `Replicate` of `segment` (the old leader's), so nothing it takes
    /// afterwards can count towards a majority; the segment's leader, if
    /// it answers, seals its copy (it takes no more appends). The count
    /// includes every entry the replica took (synced first, whatever the
    /// fsync policy). Answered with [`NodeResponse::Replicated`].
    Fence { segment: SegmentKey },
    /// Entries `from..` of the receiver's copy of `segment` as stored,
    /// without the commit point that client reads stop at: what failover
    /// copies between replicas. Answered with [`NodeResponse::Entries`].
    ReadCopy {
        segment: SegmentKey,
        from: u64,
        max_entries: u32,
    },
    /// Failover closes a replicated segment at `count`: the receiver
    /// stores `entries` at `first..` (what it holds is skipped) and, once
    /// it holds `count` entries, seals its copy at exactly `count` (a
    /// longer tail is cut). Unlike `Replicate`, a fence does not refuse
    /// it. Answered with [`NodeResponse::Replicated`].
    SealCopy {
        segment: SegmentKey,
        first: u64,
        entries: Vec<Bytes>,
        count: u64,
    },
    /// The operator removes `node` for good (sent to the consensus leader,
    /// which checks liveness and copies). Answered with
    /// [`NodeResponse::NodeRemoved`].
    RemoveNode { node: NodeId },
    /// Failover, once a replicated segment is sealed on a majority of its
    /// replicas: each producer's last write stored in the receiver's
    /// sealed copy of `segment`, from the marks it journaled. Answered
    /// with [`NodeResponse::Producers`].
    SegmentProducers { segment: SegmentKey },
}

/// An idempotent write, as the leader of a replicated segment tells its
/// followers: sequence `seq` of `producer` is the `n` entries from index
/// `first_index`, whose hashes are `first_hash` (the first entry) and
/// `batch_hash` (all of them). A replica believes a mark only where its
/// own copy holds entries with those hashes at that index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerMark {
    pub producer: ProducerId,
    pub seq: u64,
    pub n: u64,
    pub first_index: u64,
    pub first_hash: u64,
    pub batch_hash: u64,
}

impl ProducerMark {
    /// The index after the write's last entry.
    pub fn end(&self) -> u64 {
        self.first_index + self.n
    }
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
    // New variants go last (the envelope encodes a variant by position).
    /// Where a whole batch is: `n` entries from `first_index` of `segment`
    /// (for a repeated idempotent write, where it was stored the first
    /// time, maybe an earlier segment; `first_index` is `None` when that is
    /// no longer known, after a restart).
    Stored {
        segment: SegmentId,
        first_index: Option<u64>,
        n: u64,
    },
    /// The receiver of a `Replicate` holds entries `0..count` of the
    /// segment (durable under its fsync policy). Below the request's
    /// `first` when it missed earlier entries: the leader sends again from
    /// `count`.
    Replicated {
        count: u64,
    },
    /// `node` is removed; `under_replicated` segments (every topic's) now
    /// wait for re-replication.
    NodeRemoved {
        node: NodeId,
        under_replicated: u64,
    },
    /// Each producer's last write found in the receiver's copy of a segment.
    Producers(Vec<(ProducerId, ProducerEntry)>),
}

/// Sends [`NodeRequest`]s to other nodes.
///
/// # Contract
///
/// Rules 1 to 6 are checked by `testing::transport_conformance`, on every
/// implementation (the simulated network and TCP).
///
/// 1. **Unchanged.** The receiver's [`RequestHandler`] is handed the request
///    as sent, and the caller gets the answer as the handler returned it.
/// 2. **Answers match calls.** Many calls may be in flight to one peer at
///    once; each gets the answer to its own request, in whatever order the
///    receiver finishes them.
/// 3. **Errors travel.** An `Err` returned by the receiver's handler
///    arrives as the same `Err` at the caller.
/// 4. **At most once, and in order when sequential.** A request is handed
///    to the receiver's handler at most once per call (no blind resends).
///    A call to a node made after an earlier call to it returned is handled
///    after that one. Calls in flight together have no order: the receiver
///    may run them at once.
/// 5. **Sent or not.** A failure that says the request was not delivered
///    ([`Error::is_retryable`](crate::Error::is_retryable): `Unreachable`,
///    `ShuttingDown`, `Timeout`, `Unavailable`) guarantees the receiver's
///    handler never saw it, so the caller may send it again. Once it may
///    have been delivered, a failure is `NoAnswer`
///    ([`Error::is_outcome_unknown`](crate::Error::is_outcome_unknown)):
///    the answer was lost, the connection broke after the request went
///    out, the receiver crashed while handling it, or no answer came in
///    time. The handler may or may not have run it, and the caller decides
///    what that means for its request (a renewal: not confirmed; a
///    forwarded PUT: outcome unknown for the client).
/// 6. **Bounded waits.** Every call ends within the backend's timeout,
///    whatever the peer does (dead, partitioned, or never answering).
/// 7. **Connections are reused.** No connect per request: a backend keeps
///    connections to each peer and runs many requests on them at once.
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
