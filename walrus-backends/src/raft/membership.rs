//! Membership: joining a cluster, re-registering on restart, and (on the
//! leader) adding a node as a voter or taking it out to join again.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use tokio::time::Instant;
use walrus_core::{
    ClusterId, CmdResult, Error, MetadataCmd, MetadataStore, NodeInfo, NodeRequest, Result,
};

use super::metadata_store::Attempt;
use super::types::{self, NodeId};
use super::{fatal, RaftMetadataStore};

impl RaftMetadataStore {
    /// Joins through `addr` until the cluster accepts this node.
    pub(super) async fn join_via(&self, addr: &str) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.stopped.load(Ordering::SeqCst) {
                anyhow::bail!("shut down before joining the cluster at {addr}");
            }
            let req = NodeRequest::Join {
                node: self.id,
                info: self.config.info(),
            };
            match self.transport.call_addr(addr, req).await {
                Ok(_) => return Ok(()),
                // A join is idempotent: one whose answer was lost is asked again.
                Err(e) if e.is_retryable() || e.is_outcome_unknown() => {
                    tracing::info!(
                        node = self.id,
                        "join via {addr} not accepted yet: {e}; retrying"
                    )
                }
                Err(e) => anyhow::bail!("the cluster at {addr} refused node {}: {e}", self.id),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Records this node's addresses in metadata (and makes it a voter if it
    /// is not), retrying until done or shut down.
    pub(super) async fn register_until_done(&self) {
        let mut backoff = Duration::from_millis(50);
        while !self.stopped.load(Ordering::SeqCst) {
            match self.register_once().await {
                Ok(()) => return,
                Err(e) => tracing::debug!(node = self.id, "registering addresses: {e}; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn register_once(&self) -> Result<()> {
        let leader_known = self.current_leader().is_some();
        if leader_known && self.state_rx.borrow().cluster.is_none() {
            // The bootstrapping node names the cluster; a cluster from
            // before cluster ids gets one from whichever member asks first.
            let id = ClusterId::random();
            self.propose(MetadataCmd::InitCluster { id }).await?;
        }
        if let Some(storage) = self.config.storage.filter(|_| leader_known) {
            let cmd = MetadataCmd::RegisterStorage {
                node: self.id,
                storage,
            };
            if let CmdResult::Rejected(why) = self.propose(cmd).await? {
                tracing::error!(
                    node = self.id,
                    "the cluster refused this node's storage: {why}"
                );
                self.refused.send_replace(Some(why));
                // Registering further would only repeat the refusal.
                return Ok(());
            }
        }
        if self.current_leader().is_some() {
            return self.add_node(self.id, self.config.info()).await;
        }
        // No leader known: it may be replicating to an address this node no
        // longer has. Ask the other members to pass the request on.
        let peers: Vec<NodeId> = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| *id != self.id)
                .collect()
        };
        let mut last = Error::Unavailable("no consensus leader and no other member known".into());
        for peer in peers {
            let req = NodeRequest::Join {
                node: self.id,
                info: self.config.info(),
            };
            let call = self.transport.call(peer, req);
            match tokio::time::timeout(self.config.propose_timeout, call).await {
                // The storage is registered once a leader is known.
                Ok(Ok(_)) if self.config.storage.is_some() => {
                    return Err(Error::Unavailable(
                        "addresses registered; the storage identity is next".into(),
                    ))
                }
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last = e,
                Err(_) => last = Error::Timeout(format!("node {peer} to pass on a join")),
            }
        }
        Err(last)
    }

    /// Makes `node` a voter with `info` recorded, on this node as leader.
    /// Returns the log index of the `UpsertNode`.
    pub(super) async fn add_node_local(
        &self,
        node: NodeId,
        info: &NodeInfo,
        deadline: Instant,
    ) -> std::result::Result<u64, Attempt> {
        if self.state_rx.borrow().removed.contains(&node) {
            // Removed for good (`REMOVE-NODE`): a removed node still running
            // must not vote its way back in.
            return Err(Attempt::Fail(Error::Refused(
                walrus_core::metadata::removed_for_good(node),
            )));
        }
        self.transport.set_peer_address(node, &info.raft_addr);
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let is_voter = membership.membership().voter_ids().any(|id| id == node);
        if !is_voter {
            let is_learner = membership.nodes().any(|(id, _)| *id == node);
            if !is_learner {
                let learner = BasicNode::new(&info.raft_addr);
                // Blocking: returns once the learner has caught up, so the
                // promotion below does not stall the quorum.
                let r = self.membership_op(deadline, self.raft.add_learner(node, learner, true));
                r.await?;
            }
            let change = ChangeMembers::AddVoterIds(BTreeSet::from([node]));
            self.membership_op(deadline, self.raft.change_membership(change, false))
                .await?;
        }
        let cmd = MetadataCmd::UpsertNode {
            node,
            info: info.clone(),
        };
        Ok(self.write_local(cmd, deadline).await?.1)
    }

    /// Takes `node` out of the membership (voter or learner), on this node
    /// as leader, so it can join again from empty consensus state. openraft
    /// would otherwise see a member's log go backwards (it panics on that
    /// unless told to allow it), and the member's lost vote could help
    /// elect a leader that lacks committed entries.
    pub(super) async fn readmit_local(
        &self,
        node: NodeId,
        deadline: Instant,
    ) -> std::result::Result<(), Attempt> {
        if node == self.id {
            return Err(Attempt::Fail(Error::Refused(format!(
                "node {node} is the consensus leader: it has its consensus state"
            ))));
        }
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let is_voter = membership.membership().voter_ids().any(|id| id == node);
        let is_member = membership.nodes().any(|(id, _)| *id == node);
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([node]))
        } else if is_member {
            ChangeMembers::RemoveNodes(BTreeSet::from([node]))
        } else {
            return Ok(());
        };
        tracing::warn!(
            node = self.id,
            "node {node} is back without its consensus state: taking it out of the \
             membership so it joins again as a new member"
        );
        self.membership_op(deadline, self.raft.change_membership(change, false))
            .await
    }

    async fn membership_op<F>(&self, deadline: Instant, op: F) -> std::result::Result<(), Attempt>
    where
        F: std::future::Future<
            Output = std::result::Result<
                openraft::raft::ClientWriteResponse<types::TypeConfig>,
                RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
            >,
        >,
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, op).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                self.remember(&f);
                Err(Attempt::Retry("the leader changed".into()))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            )))) => Err(Attempt::Retry(
                "another membership change is in progress".into(),
            )),
            Ok(Err(RaftError::APIError(e))) => Err(Attempt::Fail(Error::internal(e))),
            Ok(Err(RaftError::Fatal(e))) => Err(Attempt::Fail(fatal(e))),
            Err(_) => Err(Attempt::Fail(Error::Unavailable(
                "no quorum: the membership change did not complete in time, retry".into(),
            ))),
        }
    }
}
