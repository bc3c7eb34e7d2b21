//! openraft + redb metadata store: [`RaftMetadataStore`].
//!
//! - [`types`]: the openraft type configuration and encodings.
//! - [`log_store`]: the Raft log, vote and committed index in redb.
//! - [`state_machine`]: [`walrus_core::ClusterState`] with snapshots in redb.
//! - [`network`]: Raft RPCs and forwarded requests over the core `Transport`.
//! - [`admission`]: what a node without consensus state must pass before it
//!   takes part (storage identity, no second cluster).
//! - [`metrics`]: openraft's metrics as core's `ConsensusMetrics`.
//!
//! Raft's own messages arrive as `NodeRequest::Consensus`; [`RaftRouter`]
//! answers them with [`RaftMetadataStore::handle_message`] and hands every
//! other request to the node.
//!
//! # Storage
//!
//! One redb file per node, `<dir>/raft.redb`, with tables `raft_log`
//! (index → postcard entry), `raft_meta` (`vote`, `committed`,
//! `last_purged`) and `sm_snapshot` (the latest snapshot: its meta and the
//! JSON of the `ClusterState`). The state machine lives in memory; after a
//! restart it is the snapshot plus the log replayed up to `committed`.
//! A snapshot is built every `snapshot_every` entries and persisted before
//! openraft purges the log it covers.
//!
//! # Write path
//!
//! `propose` on the leader queues the command for a batcher, which writes
//! every command queued meanwhile as ONE log entry ([`types::MetadataBatch`]):
//! openraft 0.9 makes each entry durable before it takes the next, so this
//! is where concurrent proposers share an fsync and a replication round.
//! On a follower, `propose` forwards the command to the leader
//! (`ConsensusRequest::Propose`) and then waits until its own state has
//! applied the returned log index (read your writes).
//!
//! # Membership
//!
//! `bootstrap_or_join`: a node with data does nothing but re-register in the
//! background (`add_node` of itself: idempotent, promotes a left-over
//! learner); a node without data either initialises a one-voter cluster or
//! sends `NodeRequest::Join` to `--join` until accepted. `add_node` on the
//! leader: `add_learner` (blocking until caught up), `change_membership`
//! to voter, then `UpsertNode` with its addresses.
//!
//! # Timing
//!
//! Timing defaults (see [`RaftConfig::new`]): heartbeat 100 ms, election
//! timeout 300–600 ms. openraft 0.9 starts an election only after a follower
//! has heard nothing for `election_timeout_max` (its leader lease) plus its
//! own random election timeout, checked every 1.5 heartbeats: 0.9–1.35 s
//! after the leader's last heartbeat, so a dead leader is replaced well
//! within 2 s while a follower tolerates ~9 lost heartbeats. The heartbeat
//! is far above a connect time, so a leadership check (`confirm`) never
//! fails just because a connection is being (re)made.

pub mod admission;
pub mod log_store;
pub mod metrics;
pub mod network;
pub mod state_machine;
pub mod types;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, Fatal, ForwardToLeader,
    InitializeError, RaftError,
};
use openraft::{BasicNode, ChangeMembers, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use walrus_core::{
    ClusterId, ClusterState, CmdResult, ConsensusMetrics, ConsensusStatus, Error, MetadataCmd,
    MetadataStore, NodeInfo, NodeRequest, NodeResponse, RequestHandler, Result, StorageId,
    Transport,
};

use crate::durable_dir::{create_dir_durable, sync_dir};

use self::log_store::RedbLogStore;
use self::network::{ConsensusReply, ConsensusRequest, NetworkFactory};
use self::state_machine::StateMachineStore;
use self::types::{MetadataBatch, NodeId, Raft};

/// How long a new node listens before it bootstraps: long enough to hear a
/// leader's heartbeat to a member it counts as down (retried every
/// `2 × heartbeat`, 200 ms, plus a reconnect) or, with no leader, a
/// candidate's vote request (elections follow each other within
/// ~1.35 s); see "Storage identity" in docs/architecture.md.
pub const DEFAULT_BOOTSTRAP_LISTEN: Duration = Duration::from_millis(1500);

/// How one node runs its consensus.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    pub node_id: NodeId,
    /// The node's data directory (e.g. `<data-dir>/node_<id>`).
    pub dir: PathBuf,
    /// Advertised inter-node address (`host:port`).
    pub raft_addr: String,
    /// Advertised client address (`host:port`).
    pub client_addr: String,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// How long a proposal (or a confirm) may wait for a quorum before it
    /// fails with `Unavailable`.
    pub propose_timeout: Duration,
    /// How long `add_node` may take (the learner catches up first).
    pub add_node_timeout: Duration,
    /// Build a snapshot (and purge the log before it) every this many entries.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, so a briefly lagging
    /// follower gets entries instead of a whole snapshot.
    pub keep_behind_snapshot: u64,
    /// The identity of this node's storage. With one, a node without
    /// consensus state is admitted only after the cluster has checked it
    /// (see [`admission`]); `None` turns the checks off (tests that build
    /// bare Raft stores).
    pub storage: Option<StorageId>,
    /// How long a node with a storage identity, no consensus state and no
    /// `join` listens for Raft traffic of an existing cluster before it
    /// bootstraps a new one.
    pub bootstrap_listen: Duration,
}

impl RaftConfig {
    /// Defaults: heartbeat 100 ms, election 300–600 ms, proposals time out
    /// after 5 s, snapshot every 10 000 entries.
    pub fn new(
        node_id: NodeId,
        dir: impl Into<PathBuf>,
        raft_addr: impl Into<String>,
        client_addr: impl Into<String>,
    ) -> Self {
        RaftConfig {
            node_id,
            dir: dir.into(),
            raft_addr: raft_addr.into(),
            client_addr: client_addr.into(),
            heartbeat_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            propose_timeout: Duration::from_secs(5),
            add_node_timeout: Duration::from_secs(30),
            snapshot_every: 10_000,
            keep_behind_snapshot: 1_000,
            storage: None,
            bootstrap_listen: DEFAULT_BOOTSTRAP_LISTEN,
        }
    }

    fn openraft_config(&self) -> anyhow::Result<openraft::Config> {
        let config = openraft::Config {
            cluster_name: "walrus".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_behind_snapshot,
            // Keep every Raft message far below the transport's frame limit
            // (16 MiB by default): at most 64 entries of up to 256 commands
            // per AppendEntries, snapshots in 1 MiB chunks.
            max_payload_entries: 64,
            snapshot_max_chunk_size: 1024 * 1024,
            ..Default::default()
        };
        config
            .validate()
            .context("invalid raft timing configuration")
    }

    fn info(&self) -> NodeInfo {
        NodeInfo {
            raft_addr: self.raft_addr.clone(),
            client_addr: self.client_addr.clone(),
        }
    }
}

/// Why one attempt of a forwarded operation failed.
#[derive(Clone)]
enum Attempt {
    /// Nothing was done (no leader known, leader changed, peer unreachable):
    /// try again until the deadline.
    Retry(String),
    /// Give up with this error.
    Fail(Error),
}

/// The [`MetadataStore`] on openraft, with its log and snapshots in redb.
pub struct RaftMetadataStore {
    id: NodeId,
    config: RaftConfig,
    raft: Raft,
    transport: Arc<dyn Transport>,
    state_rx: watch::Receiver<Arc<ClusterState>>,
    proposals: mpsc::Sender<Proposal>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stopped: AtomicBool,
    gate: admission::Gate,
    /// Set when the cluster refused this node's storage after it started
    /// (a member restarting from its data): the node must stop.
    refused: watch::Sender<Option<String>>,
}

/// A command waiting for the batcher, and where its outcome goes.
struct Proposal {
    cmd: MetadataCmd,
    done: oneshot::Sender<std::result::Result<(CmdResult, u64), Attempt>>,
}

/// The most commands in one log entry.
const MAX_BATCH: usize = 256;

/// Writes queued proposals to Raft, one entry at a time, each entry
/// carrying every proposal that queued up while the previous one was being
/// committed (openraft 0.9 flushes each entry before taking the next, so
/// this is where concurrent proposers share an fsync and a round trip).
async fn batch_loop(raft: Raft, mut rx: mpsc::Receiver<Proposal>, timeout: Duration) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // A caller that gave up must not have its command committed later.
        batch.retain(|p| !p.done.is_closed());
        if batch.is_empty() {
            continue;
        }
        let cmds = MetadataBatch(batch.iter().map(|p| p.cmd.clone()).collect());
        let outcome = match tokio::time::timeout(timeout, raft.client_write(cmds)).await {
            Ok(Ok(resp)) if resp.data.len() == batch.len() => {
                let index = resp.log_id.index;
                for (p, result) in batch.into_iter().zip(resp.data) {
                    let _ = p.done.send(Ok((result, index)));
                }
                continue;
            }
            Ok(Ok(resp)) => Attempt::Fail(Error::Internal(format!(
                "a batch of {} commands applied with {} results",
                batch.len(),
                resp.data.len()
            ))),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Attempt::Retry("this node is no longer the leader".into())
            }
            Ok(Err(RaftError::APIError(e))) => Attempt::Fail(Error::internal(e)),
            Ok(Err(RaftError::Fatal(e))) => Attempt::Fail(fatal(e)),
            // It may still commit later; retrying could apply it twice.
            Err(_) => Attempt::Fail(Error::Unavailable(format!(
                "no quorum: the proposal was not committed within {timeout:?}, retry"
            ))),
        };
        for p in batch {
            let _ = p.done.send(Err(outcome.clone()));
        }
    }
}

impl RaftMetadataStore {
    /// Opens (or creates) the node's redb file under `config.dir` and starts
    /// its Raft. Call [`Self::bootstrap_or_join`] next.
    pub async fn open(
        config: RaftConfig,
        transport: Arc<dyn Transport>,
    ) -> anyhow::Result<Arc<RaftMetadataStore>> {
        let raft_config = Arc::new(config.openraft_config()?);
        let dir = config.dir.clone();
        tokio::task::spawn_blocking(move || create_dir_durable(&dir))
            .await?
            .with_context(|| format!("cannot create data directory {}", config.dir.display()))?;
        let db = Arc::new(open_db(config.dir.join("raft.redb")).await?);
        // redb syncs the file it writes, not the directory entry that
        // names it: without this, a power cut after the first commit could
        // leave the directory without raft.redb.
        let dir = config.dir.clone();
        tokio::task::spawn_blocking(move || sync_dir(&dir))
            .await?
            .with_context(|| format!("cannot sync the directory {}", config.dir.display()))?;
        let log_store = RedbLogStore::new(db.clone())?;
        let state_machine = StateMachineStore::new(db)?;
        let state_rx = state_machine.watch();
        let (proposals, proposals_rx) = mpsc::channel(4 * MAX_BATCH);
        let network = NetworkFactory {
            me: config.node_id,
            transport: transport.clone(),
            backoff: Duration::from_millis(config.heartbeat_ms * 2),
            state: state_rx.clone(),
        };
        let raft = Raft::new(
            config.node_id,
            raft_config,
            network,
            log_store,
            state_machine,
        )
        .await
        .context("cannot start raft")?;
        let initialized = raft
            .is_initialized()
            .await
            .context("raft stopped while starting")?;
        let gate = admission::Gate::new(initialized || config.storage.is_none());
        let store = Arc::new(RaftMetadataStore {
            id: config.node_id,
            config,
            raft,
            transport,
            state_rx,
            proposals,
            tasks: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            gate,
            refused: watch::channel(None).0,
        });
        let sync = tokio::spawn(sync_peer_addresses(
            store.raft.metrics(),
            store.state_rx.clone(),
            store.transport.clone(),
        ));
        store.track(sync);
        let batcher = tokio::spawn(batch_loop(
            store.raft.clone(),
            proposals_rx,
            store.config.propose_timeout,
        ));
        store.track(batcher);
        Ok(store)
    }

    /// Makes this node part of a cluster:
    ///
    /// - a member restarting from its data: nothing to wait for; it
    ///   re-registers its storage and addresses (and, if it was left a
    ///   learner, is promoted) in the background; a refused storage shows
    ///   in [`Self::refusals`];
    /// - no data and no `join`: with a storage identity, listens for a
    ///   cluster that still counts this node as a member first and refuses
    ///   to start if it hears one (see [`admission`]); then initialises a
    ///   one-voter cluster (only ever on empty data) and records this
    ///   node's storage and addresses;
    /// - no data and `join = Some(addr)`: claims its storage through `addr`
    ///   (a refusal is final), then asks the cluster at `addr` to add this
    ///   node, retrying with backoff until it is accepted.
    pub async fn bootstrap_or_join(self: &Arc<Self>, join: Option<String>) -> anyhow::Result<()> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .context("raft stopped while starting")?;
        if initialized {
            self.gate.admit();
            let me = self.clone();
            let task = tokio::spawn(async move { me.register_until_done().await });
            self.track(task);
            return Ok(());
        }
        match join {
            None => {
                if let Some(storage) = self.config.storage {
                    self.listen_for_an_old_cluster(storage).await?;
                }
                self.gate.admit();
                let members = BTreeMap::from([(self.id, BasicNode::new(&self.config.raft_addr))]);
                match self.raft.initialize(members).await {
                    Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                    Err(e) => return Err(anyhow::anyhow!("cannot initialise the cluster: {e}")),
                }
                self.register_until_done().await;
                if let Some(why) = self.refused.borrow().clone() {
                    anyhow::bail!("{why}");
                }
                Ok(())
            }
            Some(addr) => {
                if let Some(storage) = self.config.storage {
                    self.claim_via(&addr, storage).await?;
                }
                self.gate.admit();
                self.join_via(&addr).await
            }
        }
    }

    /// The reason the cluster refused this node's storage, once it has: the
    /// node must stop (its data is not what the cluster recorded for it).
    pub fn refusals(&self) -> watch::Receiver<Option<String>> {
        self.refused.subscribe()
    }

    /// Stops Raft and the background tasks. The redb file is closed once
    /// openraft has dropped its storage.
    pub async fn shutdown(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for task in self.lock_tasks().drain(..) {
            task.abort();
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(node = self.id, "raft shutdown: {e}");
        }
    }

    /// The openraft handle, for tests and diagnostics.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn track(&self, task: JoinHandle<()>) {
        self.lock_tasks().push(task);
    }

    fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    fn remember(&self, leader: &ForwardToLeader<NodeId, BasicNode>) {
        if let (Some(id), Some(node)) = (leader.leader_id, &leader.leader_node) {
            self.transport.set_peer_address(id, &node.addr);
        }
    }

    /// Joins through `addr` until the cluster accepts this node.
    async fn join_via(&self, addr: &str) -> anyhow::Result<()> {
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
    async fn register_until_done(&self) {
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

    /// Commits `cmd` on this node, which must be the leader, through the
    /// batcher. Returns its result and the log index that carried it.
    async fn write_local(
        &self,
        cmd: MetadataCmd,
        deadline: Instant,
    ) -> std::result::Result<(CmdResult, u64), Attempt> {
        let (done, outcome) = oneshot::channel();
        if self.proposals.send(Proposal { cmd, done }).await.is_err() {
            return Err(Attempt::Fail(Error::ShuttingDown));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, outcome).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Attempt::Fail(Error::ShuttingDown)),
            Err(_) => Err(Attempt::Fail(Error::Unavailable(format!(
                "no quorum: the proposal was not committed within {:?}, retry",
                self.config.propose_timeout
            )))),
        }
    }

    /// Makes `node` a voter with `info` recorded, on this node as leader.
    /// Returns the log index of the `UpsertNode`.
    async fn add_node_local(
        &self,
        node: NodeId,
        info: &NodeInfo,
        deadline: Instant,
    ) -> std::result::Result<u64, Attempt> {
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
    async fn readmit_local(
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

/// Opens the redb file, waiting briefly if a previous instance in this
/// process is still closing it (openraft drops its storage asynchronously).
/// redb's page cache for the Raft database.
const RAFT_DB_CACHE_BYTES: usize = 16 << 20;

async fn open_db(path: PathBuf) -> anyhow::Result<redb::Database> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = path.clone();
        // The metadata is small; redb's default 1 GiB cache would only let
        // the process grow under a steady stream of proposals.
        let r = tokio::task::spawn_blocking(move || {
            redb::Builder::new()
                .set_cache_size(RAFT_DB_CACHE_BYTES)
                .create(p)
        })
        .await?;
        match r {
            Ok(db) => return Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e @ redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(e).with_context(|| {
                    format!(
                        "raft database {} is in use (is another node running on this data directory?)",
                        path.display()
                    )
                })
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot open raft database {}", path.display()))
            }
        }
    }
}

fn fatal(e: Fatal<NodeId>) -> Error {
    match e {
        Fatal::Stopped => Error::ShuttingDown,
        other => Error::Internal(format!("raft failed: {other}")),
    }
}

/// Passes every member address learnt from membership or metadata to the
/// transport, so that any member can be dialled (forwarding, replication).
async fn sync_peer_addresses(
    mut metrics: watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
    mut state: watch::Receiver<Arc<ClusterState>>,
    transport: Arc<dyn Transport>,
) {
    let mut known: HashMap<NodeId, String> = HashMap::new();
    loop {
        let mut addrs: BTreeMap<NodeId, String> = metrics
            .borrow_and_update()
            .membership_config
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        // Metadata is newer than the membership's address (a node that
        // restarted on another address re-registers there).
        addrs.extend(
            state
                .borrow_and_update()
                .nodes
                .iter()
                .map(|(id, info)| (*id, info.raft_addr.clone())),
        );
        for (id, addr) in addrs {
            if known.get(&id) != Some(&addr) {
                transport.set_peer_address(id, &addr);
                known.insert(id, addr);
            }
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return },
            r = state.changed() => if r.is_err() { return },
        }
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

impl RaftMetadataStore {
    /// Answers one of Raft's own messages from another node (an RPC of
    /// openraft's or a request forwarded to the leader) and returns the
    /// encoded reply. The wiring calls it for `NodeRequest::Consensus`
    /// ([`RaftRouter`]): it is no part of core's `MetadataStore`.
    pub async fn handle_message(&self, msg: Bytes) -> Result<Bytes> {
        let (header, req) = network::decode_request(&msg)?;
        header.check(self.id, self.state_rx.borrow().cluster)?;
        self.gate.check(self.id, &req)?;
        let reply = match req {
            ConsensusRequest::AppendEntries(rpc) => {
                ConsensusReply::AppendEntries(self.raft.append_entries(rpc).await)
            }
            ConsensusRequest::Vote(rpc) => ConsensusReply::Vote(self.raft.vote(rpc).await),
            ConsensusRequest::InstallSnapshot(rpc) => {
                ConsensusReply::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
            ConsensusRequest::Propose(cmd) => {
                let deadline = Instant::now() + self.config.propose_timeout;
                match self.write_local(cmd, deadline).await {
                    Ok((result, index)) => ConsensusReply::Proposed { result, index },
                    Err(Attempt::Retry(_)) => return Err(Error::NotLeader),
                    Err(Attempt::Fail(e)) => return Err(e),
                }
            }
            ConsensusRequest::AddNode { node, info } => {
                if self.current_leader() != Some(self.id) {
                    return Err(Error::NotLeader);
                }
                let deadline = Instant::now() + self.config.add_node_timeout;
                match self.add_node_local(node, &info, deadline).await {
                    Ok(index) => ConsensusReply::NodeAdded { index },
                    Err(Attempt::Retry(_)) => return Err(Error::NotLeader),
                    Err(Attempt::Fail(e)) => return Err(e),
                }
            }
            ConsensusRequest::Readmit { node } => {
                if self.current_leader() != Some(self.id) {
                    return Err(Error::NotLeader);
                }
                let deadline = Instant::now() + self.config.add_node_timeout;
                match self.readmit_local(node, deadline).await {
                    Ok(()) => ConsensusReply::Readmitted,
                    Err(Attempt::Retry(_)) => return Err(Error::NotLeader),
                    Err(Attempt::Fail(e)) => return Err(e),
                }
            }
        };
        network::encode_reply(&reply)
    }
}

impl Drop for RaftMetadataStore {
    fn drop(&mut self) {
        for task in self.lock_tasks().drain(..) {
            task.abort();
        }
    }
}

/// The receiving side of a node on Raft: Raft's own messages
/// (`NodeRequest::Consensus`) go to the store, every other request to the
/// node (core's `Node`, or whatever handler the wiring puts there).
pub struct RaftRouter {
    store: Arc<RaftMetadataStore>,
    node: Arc<dyn RequestHandler>,
}

impl RaftRouter {
    pub fn new(store: Arc<RaftMetadataStore>, node: Arc<dyn RequestHandler>) -> Arc<RaftRouter> {
        Arc::new(RaftRouter { store, node })
    }
}

#[async_trait]
impl RequestHandler for RaftRouter {
    async fn handle(&self, req: NodeRequest) -> Result<NodeResponse> {
        match req {
            NodeRequest::Consensus(bytes) => Ok(NodeResponse::Consensus(
                self.store.handle_message(bytes).await?,
            )),
            other => self.node.handle(other).await,
        }
    }
}

/// Answers a `NodeRequest` aimed at the metadata store, without a node;
/// for tests that run bare Raft stores (a node answers the others).
pub async fn route(store: &RaftMetadataStore, req: NodeRequest) -> Result<NodeResponse> {
    match req {
        NodeRequest::Consensus(bytes) => {
            Ok(NodeResponse::Consensus(store.handle_message(bytes).await?))
        }
        NodeRequest::Join { node, info } => {
            store.add_node(node, info).await?;
            Ok(NodeResponse::Done)
        }
        NodeRequest::ClaimStorage {
            node,
            storage,
            fresh,
        } => {
            let cmd = MetadataCmd::RegisterStorage { node, storage };
            if let CmdResult::Rejected(why) = store.propose(cmd).await? {
                return Err(Error::Refused(why));
            }
            if fresh {
                store.readmit_node(node).await?;
            }
            Ok(NodeResponse::Done)
        }
        NodeRequest::Ping => Ok(NodeResponse::Done),
        other => Err(Error::BadRequest(format!(
            "the metadata store does not handle {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable_dir::record;

    #[tokio::test]
    async fn given_a_new_data_directory_when_raft_opens_should_sync_each_new_directory_and_the_database_name(
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let node_dir = tmp.path().join("data").join("node_1");
        let raft_dir = node_dir.join("raft");
        let net = walrus_core::testing::SimNetwork::new(0);
        let config = RaftConfig::new(1, &raft_dir, "sim:1", "sim-client:1");
        let store = RaftMetadataStore::open(config, net.transport(1))
            .await
            .expect("raft opens");
        assert!(raft_dir.join("raft.redb").is_file());
        assert_eq!(record::count(tmp.path()), 1, "data's name in its parent");
        assert_eq!(record::count(&tmp.path().join("data")), 1, "node_1's name");
        assert_eq!(record::count(&node_dir), 1, "raft's name in node_1");
        assert_eq!(record::count(&raft_dir), 1, "raft.redb's name in raft");
        store.shutdown().await;
    }
}
