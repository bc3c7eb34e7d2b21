//! [`FakeMetadataCluster`]: one replicated metadata log shared by
//! in-process nodes, with a consensus leader the test moves or cuts off.
//!
//! Every node gets a [`FakeMetadataStore`] handle (a [`MetadataStore`]).
//! A committed command is applied at once to the state of every node that
//! is connected; a node that is cut off keeps its old state (and its old
//! idea of the leader) and catches up when it is reconnected, exactly like
//! a partitioned Raft follower. Commands need the leader and a majority of
//! the voters to be connected, otherwise they fail with a retryable
//! `Error::Unavailable`.
//!
//! Like a real consensus, it can commit a proposal and still fail it
//! ([`FakeMetadataCluster::fail_after_commit`]: the answer to a forwarding
//! follower was lost), or fail it and commit it later
//! ([`FakeMetadataCluster::fail_then_commit`]: the proposer stopped waiting
//! while the command sat in the leader's log).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::locks::MutexExt;
use crate::metadata::{ClusterState, CmdResult, MetadataCmd, NodeInfo};
use crate::metadata_store::{
    ConsensusMembership, ConsensusMetrics, ConsensusRole, ConsensusStatus, ConsensusVote,
    LogPosition, MetadataStore,
};
use crate::types::NodeId;

struct Member {
    /// Index into the log of the next command this node has not applied.
    applied: usize,
    state: ClusterState,
    tx: watch::Sender<Arc<ClusterState>>,
    known_leader: Option<NodeId>,
    known_term: u64,
}

struct Inner {
    log: Vec<MetadataCmd>,
    /// The term and leader that committed each entry of `log`.
    positions: Vec<(u64, NodeId)>,
    /// The state after every committed command (what the leader has).
    committed: ClusterState,
    members: BTreeMap<NodeId, Member>,
    voters: BTreeSet<NodeId>,
    cut_off: BTreeSet<NodeId>,
    leader: Option<NodeId>,
    term: u64,
    /// Followers apply commits this late (None: at once).
    lag: Option<Duration>,
    /// Every proposal takes this long to commit (a quorum round and fsync).
    commit_delay: Option<Duration>,
    /// The next proposals to fail, with the error each gets and how long
    /// after failing it commits (`None`: committed before failing).
    failing: std::collections::VecDeque<(Error, Option<Duration>)>,
}

impl Inner {
    fn connected(&self, node: NodeId) -> bool {
        self.members.contains_key(&node) && !self.cut_off.contains(&node)
    }

    fn has_quorum(&self) -> Result<NodeId> {
        let Some(leader) = self.leader.filter(|l| self.connected(*l)) else {
            return Err(Error::Unavailable(
                "no consensus leader, retry in a moment".into(),
            ));
        };
        let live = self.voters.iter().filter(|v| self.connected(**v)).count();
        if live * 2 <= self.voters.len() {
            return Err(Error::Unavailable("no quorum, retry".into()));
        }
        Ok(leader)
    }

    /// Applies the committed log to every connected member and publishes.
    fn replicate(&mut self) {
        let ids: Vec<NodeId> = self.members.keys().copied().collect();
        self.replicate_to(&ids);
    }

    /// Applies the committed log to the connected members among `ids`.
    fn replicate_to(&mut self, ids: &[NodeId]) {
        let (log, leader, term, cut_off) = (&self.log, self.leader, self.term, &self.cut_off);
        for (id, m) in self.members.iter_mut() {
            if cut_off.contains(id) || !ids.contains(id) {
                continue;
            }
            m.known_leader = leader;
            m.known_term = term;
            if m.applied < log.len() {
                for cmd in &log[m.applied..] {
                    m.state.apply(cmd);
                }
                m.applied = log.len();
                m.tx.send_replace(Arc::new(m.state.clone()));
            }
        }
    }

    /// Commits `cmd`: applied at once on the leader and on `proposer`, on
    /// the other members after the configured lag.
    fn commit(&mut self, cmd: MetadataCmd, proposer: Option<NodeId>) -> CmdResult {
        let result = self.committed.apply(&cmd);
        self.log.push(cmd);
        self.positions
            .push((self.term, self.leader.or(proposer).unwrap_or_default()));
        match (self.lag, proposer) {
            (Some(_), Some(p)) => {
                let now: Vec<NodeId> = [Some(p), self.leader].into_iter().flatten().collect();
                self.replicate_to(&now);
            }
            _ => self.replicate(),
        }
        result
    }
}

/// The shared metadata of an in-process cluster. Cloning gives another
/// handle to the same cluster.
#[derive(Clone)]
pub struct FakeMetadataCluster {
    inner: Arc<Mutex<Inner>>,
}

impl Default for FakeMetadataCluster {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeMetadataCluster {
    /// An empty cluster with no members and no leader.
    pub fn new() -> Self {
        FakeMetadataCluster {
            inner: Arc::new(Mutex::new(Inner {
                log: Vec::new(),
                positions: Vec::new(),
                committed: ClusterState::default(),
                members: BTreeMap::new(),
                voters: BTreeSet::new(),
                cut_off: BTreeSet::new(),
                leader: None,
                term: 0,
                lag: None,
                commit_delay: None,
                failing: Default::default(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock_or_recover()
    }

    /// Adds `node` as a voter (if new) and returns its store handle. The
    /// first member becomes the leader. Also records `info` in metadata.
    pub fn join(&self, node: NodeId, info: NodeInfo) -> Arc<FakeMetadataStore> {
        let mut inner = self.lock();
        if let std::collections::btree_map::Entry::Vacant(slot) = inner.members.entry(node) {
            let (tx, _) = watch::channel(Arc::new(ClusterState::default()));
            slot.insert(Member {
                applied: 0,
                state: ClusterState::default(),
                tx,
                known_leader: None,
                known_term: 0,
            });
            inner.voters.insert(node);
            if inner.leader.is_none() {
                inner.leader = Some(node);
                inner.term += 1;
            }
        }
        inner.commit(MetadataCmd::UpsertNode { node, info }, None);
        Arc::new(FakeMetadataStore {
            cluster: self.clone(),
            node,
        })
    }

    /// A handle for an existing member (e.g. for a restarted node).
    pub fn store(&self, node: NodeId) -> Arc<FakeMetadataStore> {
        Arc::new(FakeMetadataStore {
            cluster: self.clone(),
            node,
        })
    }

    /// Makes `node` the consensus leader in a new term (an election).
    pub fn set_leader(&self, node: Option<NodeId>) {
        let mut inner = self.lock();
        inner.leader = node;
        inner.term += 1;
        inner.replicate();
    }

    /// Makes followers apply each commit `lag` after the leader and the
    /// proposer do (a lagging Raft follower); `None` applies at once.
    /// Needs a tokio runtime when set.
    pub fn set_lag(&self, lag: Option<Duration>) {
        self.lock().lag = lag.filter(|l| !l.is_zero());
    }

    /// Makes every proposal take `delay` before it commits (a slow quorum
    /// round or fsync); `None` commits at once. Needs a tokio runtime when set.
    pub fn set_commit_delay(&self, delay: Option<Duration>) {
        self.lock().commit_delay = delay.filter(|d| !d.is_zero());
    }

    /// Makes the next `n` proposals commit (applied everywhere, like any
    /// other) and then fail with `error`, as a real store's do when the
    /// leader commits after the proposer stopped waiting
    /// (`Error::Unavailable`) or a forwarded proposal's answer is lost
    /// (`Error::NoAnswer`). A caller that retries applies the command
    /// twice: the `MetadataStore` contract (rule 7) says that is harmless.
    pub fn fail_after_commit(&self, n: usize, error: Error) {
        let mut inner = self.lock();
        inner.failing.extend(std::iter::repeat_n((error, None), n));
    }

    /// Makes the next `n` proposals fail at once with `error` and commit
    /// `after` later (if a quorum is connected then), as in a real store
    /// whose proposer timed out while the command waited in the leader's
    /// log. The proposer, seeing no change, may propose it again: both
    /// commit, and rule 7 (idempotent commands) keeps that harmless.
    /// Needs a tokio runtime.
    pub fn fail_then_commit(&self, n: usize, error: Error, after: Duration) {
        let mut inner = self.lock();
        inner
            .failing
            .extend(std::iter::repeat_n((error, Some(after)), n));
    }

    /// The current leader, as the cluster (not a cut-off node) sees it.
    pub fn leader(&self) -> Option<NodeId> {
        self.lock().leader
    }

    /// Cuts `node` off from consensus: it can no longer propose or
    /// confirm, and stops receiving commits.
    pub fn cut_off(&self, node: NodeId) {
        self.lock().cut_off.insert(node);
    }

    /// Reconnects `node`; it catches up with the log at once.
    pub fn reconnect(&self, node: NodeId) {
        let mut inner = self.lock();
        inner.cut_off.remove(&node);
        inner.replicate();
    }

    /// The committed state (what a leader would have).
    pub fn committed(&self) -> ClusterState {
        self.lock().committed.clone()
    }

    /// Every committed command so far, in order.
    pub fn log(&self) -> Vec<MetadataCmd> {
        self.lock().log.clone()
    }
}

/// One node's handle on a [`FakeMetadataCluster`].
pub struct FakeMetadataStore {
    cluster: FakeMetadataCluster,
    node: NodeId,
}

impl FakeMetadataStore {
    fn check_connected(&self, inner: &Inner) -> Result<()> {
        if !inner.connected(self.node) {
            return Err(Error::Unavailable(format!(
                "node {} is cut off from the consensus quorum, retry",
                self.node
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl MetadataStore for FakeMetadataStore {
    async fn propose(&self, cmd: MetadataCmd) -> Result<CmdResult> {
        let delay = self.cluster.lock().commit_delay;
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let mut inner = self.cluster.lock();
        self.check_connected(&inner)?;
        inner.has_quorum()?;
        let failure = inner.failing.pop_front();
        if let Some((error, Some(after))) = failure {
            let cluster = self.cluster.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let mut inner = cluster.lock();
                if inner.has_quorum().is_ok() {
                    inner.commit(cmd, None);
                }
            });
            return Err(error);
        }
        let result = inner.commit(cmd, Some(self.node));
        let lag = inner.lag;
        drop(inner);
        if let Some(lag) = lag {
            // Followers catch up later, like Raft followers applying on
            // the next heartbeat.
            let cluster = self.cluster.clone();
            tokio::spawn(async move {
                tokio::time::sleep(lag).await;
                cluster.lock().replicate();
            });
        }
        match failure {
            Some((error, _)) => Err(error),
            None => Ok(result),
        }
    }

    fn watch(&self) -> watch::Receiver<Arc<ClusterState>> {
        let inner = self.cluster.lock();
        match inner.members.get(&self.node) {
            Some(m) => m.tx.subscribe(),
            // Not a member: an empty state that never changes.
            None => watch::channel(Arc::new(ClusterState::default())).1,
        }
    }

    async fn confirm(&self) -> Result<u64> {
        let inner = self.cluster.lock();
        self.check_connected(&inner)?;
        let leader = inner.has_quorum()?;
        if leader != self.node {
            return Err(Error::NotLeader);
        }
        Ok(inner.committed.version)
    }

    fn status(&self) -> ConsensusStatus {
        let inner = self.cluster.lock();
        let (leader, term) = match inner.members.get(&self.node) {
            Some(m) => (m.known_leader, m.known_term),
            None => (None, 0),
        };
        ConsensusStatus {
            node: self.node,
            leader,
            term,
            voters: inner.voters.clone(),
        }
    }

    async fn add_node(&self, node: NodeId, info: NodeInfo) -> Result<()> {
        {
            let inner = self.cluster.lock();
            self.check_connected(&inner)?;
            inner.has_quorum()?;
        }
        self.cluster.join(node, info);
        Ok(())
    }

    async fn remove_node(&self, node: NodeId) -> Result<()> {
        let mut inner = self.cluster.lock();
        self.check_connected(&inner)?;
        inner.has_quorum()?;
        inner.voters.remove(&node);
        Ok(())
    }

    fn metrics(&self) -> ConsensusMetrics {
        let inner = self.cluster.lock();
        let (leader, term, applied) = match inner.members.get(&self.node) {
            Some(m) => (m.known_leader, m.known_term, m.applied),
            None => (None, 0, 0),
        };
        let is_leader = leader == Some(self.node) && inner.connected(self.node);
        let position = |count: usize| {
            let (term, leader) = *inner.positions.get(count.checked_sub(1)?)?;
            Some(LogPosition {
                term,
                leader,
                index: count as u64,
            })
        };
        let addresses = inner
            .committed
            .nodes
            .iter()
            .map(|(id, info)| (*id, info.raft_addr.clone()))
            .collect();
        let replication = is_leader.then(|| {
            inner
                .voters
                .iter()
                .filter(|v| **v != self.node)
                .map(|v| {
                    let held = inner.members.get(v).map_or(0, |m| m.applied);
                    (*v, position(held))
                })
                .collect()
        });
        ConsensusMetrics {
            node: self.node,
            role: if is_leader {
                ConsensusRole::Leader
            } else {
                ConsensusRole::Follower
            },
            term,
            vote: leader.map(|candidate| ConsensusVote {
                term,
                candidate,
                committed: true,
            }),
            leader,
            last_log_index: position(applied).map(|p| p.index),
            last_applied: position(applied),
            snapshot: None,
            purged: None,
            millis_since_quorum_ack: None,
            membership: ConsensusMembership {
                at: None,
                configs: vec![inner.voters.clone()],
                addresses,
            },
            replication,
            failure: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::TopicName;

    fn info(n: NodeId) -> NodeInfo {
        NodeInfo {
            raft_addr: format!("sim:{n}"),
            client_addr: format!("sim-client:{n}"),
        }
    }

    fn create(t: &str) -> MetadataCmd {
        MetadataCmd::CreateTopic {
            topic: TopicName::new(t).unwrap(),
            leader: 1,
        }
    }

    #[tokio::test]
    async fn given_a_cut_off_node_when_others_commit_should_lag_then_catch_up_on_reconnect() {
        let cluster = FakeMetadataCluster::new();
        let s1 = cluster.join(1, info(1));
        let s2 = cluster.join(2, info(2));
        let _s3 = cluster.join(3, info(3));
        cluster.cut_off(2);
        s1.propose(create("a")).await.unwrap();
        assert!(s2.state().topics.is_empty());
        assert!(s2.propose(create("b")).await.is_err());
        assert!(s2.confirm().await.is_err());
        cluster.reconnect(2);
        assert_eq!(s2.state().topics.len(), 1);
    }

    #[tokio::test]
    async fn given_a_minority_when_proposing_should_be_unavailable() {
        let cluster = FakeMetadataCluster::new();
        let s1 = cluster.join(1, info(1));
        cluster.join(2, info(2));
        cluster.join(3, info(3));
        cluster.cut_off(2);
        cluster.cut_off(3);
        let err = s1.propose(create("a")).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(s1.confirm().await.is_err());
    }

    #[tokio::test]
    async fn given_a_proposal_set_to_fail_after_commit_should_commit_fail_and_answer_a_retry_unchanged(
    ) {
        let cluster = FakeMetadataCluster::new();
        let s1 = cluster.join(1, info(1));
        cluster.fail_after_commit(1, Error::NoAnswer("from node 1".into()));
        let err = s1.propose(create("a")).await.unwrap_err();
        assert!(err.is_outcome_unknown(), "{err}");
        assert_eq!(s1.state().topics.len(), 1, "committed all the same");
        assert_eq!(s1.propose(create("a")).await, Ok(CmdResult::Unchanged));
        assert_eq!(s1.propose(create("b")).await, Ok(CmdResult::Applied));
    }

    #[tokio::test(start_paused = true)]
    async fn given_a_proposal_set_to_fail_then_commit_should_fail_at_once_and_commit_later() {
        let cluster = FakeMetadataCluster::new();
        let s1 = cluster.join(1, info(1));
        let err = Error::Unavailable("no quorum in time, retry".into());
        cluster.fail_then_commit(1, err.clone(), Duration::from_millis(300));
        assert_eq!(s1.propose(create("a")).await, Err(err));
        assert!(s1.state().topics.is_empty(), "not committed yet");
        tokio::time::sleep(Duration::from_millis(301)).await;
        assert_eq!(s1.state().topics.len(), 1, "committed late");
        let creates = cluster.log().iter().filter(|c| **c == create("a")).count();
        assert_eq!(creates, 1);
    }

    #[tokio::test]
    async fn given_a_moved_leader_when_confirming_should_succeed_only_on_the_new_leader() {
        let cluster = FakeMetadataCluster::new();
        let s1 = cluster.join(1, info(1));
        let s2 = cluster.join(2, info(2));
        cluster.join(3, info(3));
        assert!(s1.confirm().await.is_ok());
        cluster.set_leader(Some(2));
        assert!(s1.confirm().await.is_err());
        let v = s2.confirm().await.unwrap();
        assert!(s2.state().version >= v);
        assert_eq!(s1.status().leader, Some(2));
        assert!(s2.status().is_leader());
    }
}
