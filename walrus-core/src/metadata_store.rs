//! [`MetadataStore`]: the replicated cluster metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::Result;
use crate::metadata::{ClusterState, CmdResult, MetadataCmd, NodeInfo};
use crate::types::NodeId;

/// The consensus view of one node, for METRICS, round-robin and failover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsensusStatus {
    /// This node.
    pub node: NodeId,
    /// The consensus leader as far as this node knows.
    pub leader: Option<NodeId>,
    pub term: u64,
    /// Voting members, in id order: the round-robin ring of segment leaders.
    pub voters: BTreeSet<NodeId>,
}

impl ConsensusStatus {
    pub fn is_leader(&self) -> bool {
        self.leader == Some(self.node)
    }
}

/// What a node's consensus does right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsensusRole {
    /// Receives the log but does not vote (a node still catching up).
    Learner,
    Follower,
    /// Asking for votes: an election is under way.
    Candidate,
    Leader,
    /// The store has stopped.
    Shutdown,
}

/// A place in the consensus log: entry `index`, written by `leader` in
/// `term`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    pub term: u64,
    pub leader: NodeId,
    pub index: u64,
}

/// The vote a node holds: for `candidate` in `term`; `committed` once a
/// quorum granted it (the candidate leads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsensusVote {
    pub term: u64,
    pub candidate: NodeId,
    pub committed: bool,
}

/// The consensus membership a node knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsensusMembership {
    /// The log entry that carried this membership, if any.
    pub at: Option<LogPosition>,
    /// The voter sets: one, or two while the membership changes (a joint
    /// consensus needs a quorum of each).
    pub configs: Vec<BTreeSet<NodeId>>,
    /// Every member's inter-node address; members in no voter set are
    /// learners.
    pub addresses: BTreeMap<NodeId, String>,
}

/// What a [`MetadataStore`] reports of its consensus, for METRICS (the
/// server renders it in the client protocol's field names,
/// docs/protocol.md). Backends fill what they know; a field with no
/// meaning for a backend stays `None` (or empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsensusMetrics {
    /// This node.
    pub node: NodeId,
    pub role: ConsensusRole,
    pub term: u64,
    pub vote: Option<ConsensusVote>,
    /// The consensus leader as far as this node knows.
    pub leader: Option<NodeId>,
    /// The last entry in this node's log.
    pub last_log_index: Option<u64>,
    /// The last entry applied to this node's [`ClusterState`].
    pub last_applied: Option<LogPosition>,
    /// The last entry covered by this node's snapshot.
    pub snapshot: Option<LogPosition>,
    /// The last entry removed from this node's log (it is in the snapshot).
    pub purged: Option<LogPosition>,
    /// On the leader: milliseconds since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    pub membership: ConsensusMembership,
    /// On the leader: the last entry each follower is known to hold
    /// (`None` inside: nothing confirmed yet). `None` on other nodes.
    pub replication: Option<BTreeMap<NodeId, Option<LogPosition>>>,
    /// Why the consensus stopped for good (a storage failure, a panic), if
    /// it did: the node needs an operator.
    pub failure: Option<String>,
}

/// The cluster metadata, replicated by consensus. Every change is a
/// [`MetadataCmd`] applied by [`ClusterState::apply`].
///
/// # Contract
///
/// 1. **Committed means applied everywhere, in one order.** `propose` returns
///    only after the command is committed by a quorum and applied to this
///    node's state; every node applies the same commands in the same order.
/// 2. **Read your writes.** After `propose` returns, `state()` on the same
///    node reflects the command.
/// 3. **Forwarding is the store's job.** `propose` and `add_node` work on any
///    node; a follower forwards them to the consensus leader. Without a
///    quorum they fail with a retryable error (`Unavailable`), never hang
///    forever.
/// 4. **Notification.** `watch()` yields every new applied state (possibly
///    coalesced: a receiver sees the latest, not each one).
/// 5. **Confirmation.** `confirm()` succeeds only on the consensus leader
///    after a quorum round that started after the call, and returns a
///    version `v` of the state such that every command committed before the
///    call is in every state with `version >= v`. A deposed or isolated
///    leader gets an error.
/// 6. **Durability.** Committed commands survive a restart of every node.
/// 7. **A failed proposal may still commit; commands are idempotent.** A
///    proposal that timed out, or whose answer from the leader was lost,
///    may be in the log and apply later: an error from `propose` means "not
///    known to be committed", never "certainly not committed", whatever its
///    class ([`Error::is_retryable`](crate::Error::is_retryable) included).
///    Callers therefore retry, and the same command may be applied twice.
///    Every [`MetadataCmd`] is written so that this is harmless: applied a
///    second time, directly after the first, it leaves the state as the
///    first left it (only `version` counts both) and answers
///    [`CmdResult::Unchanged`] (or the same `Rejected`). So a retry that
///    answers `Unchanged` means "done", like `Applied`. A store must not
///    break this: it applies each committed command exactly as proposed
///    (no merging, no rewriting). `metadata_store_conformance` checks it
///    for every command.
///
///    The repeat need not follow directly: other proposers' commands may
///    commit between the original and its retry. A late repeat of a command
///    whose original was not rejected changes nothing either (a command
///    naming a segment that does not exist yet, or reporting the count of
///    an open one, is rejected rather than ignored, so that it cannot
///    apply later), except for the two that are last-writer-wins by
///    nature: `CommitOffset` (a late repeat moves the group back: its
///    entries are delivered again, never lost) and `UpsertNode` (only a
///    node proposes its own address, and it does not change it while a
///    proposal of it is in flight). The property test
///    `metadata_repeats` (walrus-core's scenarios) checks it on random
///    command sequences.
///
/// Core calls every method here. Messages of the backend's own protocol
/// (openraft's RPCs, forwarded proposals) are not part of the trait: the
/// wiring routes `NodeRequest::Consensus` to the backend before the node's
/// [`RequestHandler`](crate::RequestHandler) (see `walrus-backends`'
/// `raft::RaftRouter`).
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Commits `cmd` through consensus and returns what it did. An error
    /// does not mean the command was not committed (rule 7).
    async fn propose(&self, cmd: MetadataCmd) -> Result<CmdResult>;

    /// This node's applied state. Cheap: a shared pointer.
    fn state(&self) -> Arc<ClusterState> {
        self.watch().borrow().clone()
    }

    /// A receiver of this node's applied state, updated on every apply.
    fn watch(&self) -> watch::Receiver<Arc<ClusterState>>;

    /// Confirms leadership with a quorum; see the contract.
    async fn confirm(&self) -> Result<u64>;

    /// The consensus view of this node. Cheap: called on every request.
    fn status(&self) -> ConsensusStatus;

    /// Adds `node` as a voter (via learner first, where the backend needs
    /// it) and records its addresses in metadata. Idempotent.
    async fn add_node(&self, node: NodeId, info: NodeInfo) -> Result<()>;

    /// Takes `node` out of the consensus membership if it is in it, so that
    /// it can join again with empty consensus state (its storage was
    /// replaced: a voter that forgot its log and votes must not count
    /// towards a quorum until it has caught up as a new member). Backends
    /// without such state keep the default.
    async fn readmit_node(&self, _node: NodeId) -> Result<()> {
        Ok(())
    }

    /// Takes `node` out of the consensus membership for good (`REMOVE-NODE`,
    /// after `RemoveNode` committed): it no longer votes or counts towards
    /// a quorum. Idempotent. The default is [`readmit_node`](Self::readmit_node),
    /// which does exactly that; `RemoveNode` in the metadata is what keeps
    /// the node from joining again.
    async fn remove_node(&self, node: NodeId) -> Result<()> {
        self.readmit_node(node).await
    }

    /// What the consensus reports about this node, for METRICS. Its
    /// `node`, `leader` and `term` agree with [`status`](Self::status).
    fn metrics(&self) -> ConsensusMetrics;
}
