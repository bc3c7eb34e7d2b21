//! [`MetadataStore`]: the replicated cluster metadata.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
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
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Commits `cmd` through consensus and returns what it did.
    async fn propose(&self, cmd: MetadataCmd) -> Result<CmdResult>;

    /// This node's applied state. Cheap: a shared pointer.
    fn state(&self) -> Arc<ClusterState> {
        self.watch().borrow().clone()
    }

    /// A receiver of this node's applied state, updated on every apply.
    fn watch(&self) -> watch::Receiver<Arc<ClusterState>>;

    /// Confirms leadership with a quorum; see the contract.
    async fn confirm(&self) -> Result<u64>;

    /// The consensus view of this node.
    fn status(&self) -> ConsensusStatus;

    /// Adds `node` as a voter (via learner first, where the backend needs
    /// it) and records its addresses in metadata. Idempotent.
    async fn add_node(&self, node: NodeId, info: NodeInfo) -> Result<()>;

    /// The METRICS JSON: openraft's `RaftMetrics` field names at the top
    /// level (`id`, `state`, `current_term`, `current_leader`,
    /// `last_log_index`, `last_applied`, `membership_config`, `replication`).
    fn metrics(&self) -> serde_json::Value;

    /// Handles a consensus message that arrived through the
    /// [`Transport`](crate::Transport) (the backend's own encoding), and
    /// returns the encoded reply. Backends that need no messages keep the
    /// default.
    /// Takes `node` out of the consensus membership if it is in it, so that
    /// it can join again with empty consensus state (its storage was
    /// replaced: a voter that forgot its log and votes must not count
    /// towards a quorum until it has caught up as a new member). Backends
    /// without such state keep the default.
    async fn readmit_node(&self, _node: NodeId) -> Result<()> {
        Ok(())
    }

    async fn handle_message(&self, _msg: Bytes) -> Result<Bytes> {
        Err(crate::Error::Internal(
            "this metadata store takes no consensus messages".into(),
        ))
    }
}
