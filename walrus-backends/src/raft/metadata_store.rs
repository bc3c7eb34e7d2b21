//! [`MetadataStore`] on Raft: each operation runs on the leader (through
//! the batcher) or is forwarded to it, and is retried until its deadline
//! while nothing was done (no leader known, leader changed).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::watch;
use tokio::time::Instant;
use walrus_core::{
    ClusterState, CmdResult, ConsensusMetrics, ConsensusStatus, Error, MetadataCmd, MetadataStore,
    NodeId, NodeInfo, Result,
};

use super::network::{self, ConsensusReply, ConsensusRequest};
use super::{fatal, metrics, RaftMetadataStore};

/// Why one attempt of a forwarded operation failed.
#[derive(Clone)]
pub(super) enum Attempt {
    /// Nothing was done (no leader known, leader changed, peer unreachable):
    /// try again until the deadline.
    Retry(String),
    /// Give up with this error.
    Fail(Error),
}

impl RaftMetadataStore {
    /// Waits until this node has applied log `index`.
    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "read your writes")
            .await
            .map(|_| ())
            .map_err(|e| {
                Error::Unavailable(format!(
                    "committed at index {index} but not yet applied on node {}: {e}; retry",
                    self.id
                ))
            })
    }

    /// Runs `op` (one attempt: locally if leader, else forwarded) until it
    /// succeeds, fails for good, or the deadline passes.
    async fn with_retries<T, F, Fut>(&self, what: &str, timeout: Duration, mut op: F) -> Result<T>
    where
        F: FnMut(Instant) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Attempt>>,
    {
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_millis(20);
        loop {
            if self.stopped.load(Ordering::SeqCst) {
                return Err(Error::ShuttingDown);
            }
            match op(deadline).await {
                Ok(v) => return Ok(v),
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry(why)) => {
                    if Instant::now() + backoff >= deadline {
                        return Err(Error::Unavailable(format!(
                            "no quorum for {what} within {timeout:?} ({why}), retry"
                        )));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
            }
        }
    }

    /// Sends a forwarded request to the leader `to`.
    async fn forward(
        &self,
        to: NodeId,
        req: &ConsensusRequest,
        deadline: Instant,
    ) -> std::result::Result<ConsensusReply, Attempt> {
        let left = deadline.saturating_duration_since(Instant::now());
        let cluster = self.state_rx.borrow().cluster;
        let call = network::call(&*self.transport, to, cluster, req);
        match tokio::time::timeout(left, call).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(
                e @ (Error::NotLeader
                | Error::Unreachable(_)
                | Error::ShuttingDown
                | Error::Unavailable(_)),
            )) => Err(Attempt::Retry(format!("leader {to}: {e}"))),
            Ok(Err(e)) => Err(Attempt::Fail(e)),
            Err(_) => Err(Attempt::Fail(Error::Timeout(format!(
                "the consensus leader (node {to})"
            )))),
        }
    }

    fn not_leader() -> Attempt {
        Attempt::Retry("no consensus leader is known".into())
    }
}

#[async_trait]
impl MetadataStore for RaftMetadataStore {
    async fn propose(&self, cmd: MetadataCmd) -> Result<CmdResult> {
        let timeout = self.config.propose_timeout;
        self.with_retries("a metadata proposal", timeout, |deadline| {
            let cmd = cmd.clone();
            async move {
                match self.current_leader() {
                    None => Err(Self::not_leader()),
                    Some(leader) if leader == self.id => {
                        Ok(self.write_local(cmd, deadline).await?.0)
                    }
                    Some(leader) => {
                        let req = ConsensusRequest::Propose(cmd);
                        match self.forward(leader, &req, deadline).await? {
                            ConsensusReply::Proposed { result, index } => {
                                self.wait_applied(index, deadline)
                                    .await
                                    .map_err(Attempt::Fail)?;
                                Ok(result)
                            }
                            other => Err(Attempt::Fail(Error::Internal(format!(
                                "leader {leader} answered a proposal with {other:?}"
                            )))),
                        }
                    }
                }
            }
        })
        .await
    }

    fn watch(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state_rx.clone()
    }

    async fn confirm(&self) -> Result<u64> {
        let timeout = self.config.propose_timeout;
        match tokio::time::timeout(timeout, self.raft.ensure_linearizable()).await {
            // ensure_linearizable has waited until the read point is applied.
            Ok(Ok(_)) => Ok(self.state_rx.borrow().version),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                self.remember(&f);
                Err(Error::NotLeader)
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(Error::Unavailable(format!(
                    "no quorum: node {} could not confirm its leadership ({e}), retry",
                    self.id
                )))
            }
            Ok(Err(RaftError::Fatal(e))) => Err(fatal(e)),
            Err(_) => Err(Error::Unavailable(format!(
                "no quorum: node {} could not confirm its leadership within {timeout:?}, retry",
                self.id
            ))),
        }
    }

    fn status(&self) -> ConsensusStatus {
        // Called on every request: read the fields in place instead of
        // cloning the whole metrics struct.
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        ConsensusStatus {
            node: self.id,
            leader: m.current_leader,
            term: m.current_term,
            voters: m.membership_config.membership().voter_ids().collect(),
        }
    }

    async fn add_node(&self, node: NodeId, info: NodeInfo) -> Result<()> {
        let timeout = self.config.add_node_timeout;
        self.with_retries("adding a node", timeout, |deadline| {
            let info = info.clone();
            async move {
                match self.current_leader() {
                    None => Err(Self::not_leader()),
                    Some(leader) if leader == self.id => {
                        self.add_node_local(node, &info, deadline).await.map(|_| ())
                    }
                    Some(leader) => {
                        let req = ConsensusRequest::AddNode { node, info };
                        match self.forward(leader, &req, deadline).await? {
                            ConsensusReply::NodeAdded { .. } => Ok(()),
                            other => Err(Attempt::Fail(Error::Internal(format!(
                                "leader {leader} answered add_node with {other:?}"
                            )))),
                        }
                    }
                }
            }
        })
        .await
    }

    async fn readmit_node(&self, node: NodeId) -> Result<()> {
        let timeout = self.config.add_node_timeout;
        self.with_retries(
            "taking a node out to join again",
            timeout,
            |deadline| async move {
                match self.current_leader() {
                    None => Err(Self::not_leader()),
                    Some(leader) if leader == self.id => self.readmit_local(node, deadline).await,
                    Some(leader) => {
                        let req = ConsensusRequest::Readmit { node };
                        match self.forward(leader, &req, deadline).await? {
                            ConsensusReply::Readmitted => Ok(()),
                            other => Err(Attempt::Fail(Error::Internal(format!(
                                "leader {leader} answered a readmission with {other:?}"
                            )))),
                        }
                    }
                }
            },
        )
        .await
    }

    fn metrics(&self) -> ConsensusMetrics {
        metrics::consensus_metrics(&self.raft.metrics().borrow())
    }
}
