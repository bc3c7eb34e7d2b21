//! openraft + redb metadata store: [`RaftMetadataStore`].
//!
//! - [`types`]: the openraft type configuration and encodings.
//! - [`log_store`]: the Raft log, vote and committed index in redb.
//! - [`state_machine`]: [`walrus_core::ClusterState`] with snapshots in redb.
//! - [`network`]: Raft RPCs and forwarded requests over the core `Transport`.
//! - [`admission`]: what a node without consensus state must pass before it
//!   takes part (storage identity, no second cluster).
//! - [`metrics`]: openraft's metrics as core's `ConsensusMetrics`.
//! - `metadata_store`: the [`MetadataStore`] methods: each runs on the
//!   leader or is forwarded to it, retried until a deadline.
//! - `batcher`: the leader's proposals, many commands per log entry.
//! - `membership`: joining, re-registering, adding and readmitting nodes.
//! - `inbound`: what arrives from other nodes ([`RaftRouter`]).
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
mod batcher;
mod inbound;
pub mod log_store;
mod membership;
mod metadata_store;
pub mod metrics;
pub mod network;
pub mod state_machine;
pub mod types;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use openraft::error::{Fatal, ForwardToLeader, InitializeError, RaftError};
use openraft::{BasicNode, SnapshotPolicy};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use walrus_core::{ClusterState, Error, NodeInfo, StorageId, Transport};

use crate::durable_dir::{create_dir_durable, sync_dir};

use self::batcher::{batch_loop, Proposal, MAX_BATCH};
use self::log_store::RedbLogStore;
use self::network::NetworkFactory;
use self::state_machine::StateMachineStore;
use self::types::{NodeId, Raft};

pub use self::inbound::{route, RaftRouter};
use walrus_core::locks::MutexExt;

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
        self.tasks.lock_or_recover()
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
}

/// redb's page cache for the Raft database.
const RAFT_DB_CACHE_BYTES: usize = 16 << 20;

/// Opens the redb file, waiting briefly if a previous instance in this
/// process is still closing it (openraft drops its storage asynchronously).
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

impl Drop for RaftMetadataStore {
    fn drop(&mut self) {
        for task in self.lock_tasks().drain(..) {
            task.abort();
        }
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
