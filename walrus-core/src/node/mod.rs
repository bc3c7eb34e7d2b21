//! The node logic, written against the traits only: routing and forwarding,
//! lease checks, rollover, failover and the shared GET cursor.
//! See `docs/architecture.md` for the design.
//!
//! - `data_path`: client requests: routing, the PUT path with its lease
//!   checks, and reads of segments wherever they live.
//! - [`lease`]: [`QuorumLease`] (the [`LeaseProvider`](crate::LeaseProvider))
//!   and its renewal.
//! - `forward`: forwarded appends, combined when many meet on the way to
//!   one segment leader.
//! - `produce`: PUTB (whole batches) and idempotent producers.
//! - `replicate`: quorum acknowledgement, streaming a replicated
//!   segment's appends from its leader to its followers.
//! - `rollover`: sealing full segments and opening the next one.
//! - `closing`: failover of a replicated segment: closing it at the count
//!   a majority of its replicas holds.
//! - `failover`: the consensus leader's watch over segment leaders.
//! - `cursor`: the shared GET cursor, owned by the consensus leader.
//! - `read`: reads by offset (READ with long-polling, OFFSETS), which move
//!   no cursor.
//! - `retention`: deleting closed segments past a topic's retention, in
//!   the metadata (the consensus leader) and on every node's disk.
//! - `membership`: removing a node for good (`REMOVE-NODE`) and accepting
//!   a node back on an empty disk when its copies exist elsewhere.
//! - `rereplicate`: new copies of sealed segments that have fewer than
//!   their topic's `rf`, made by the consensus leader.
//! - `storage`: storage identity: claims of starting nodes and the
//!   operator's acceptance of a lost storage.
//! - `peer_requests`: the [`RequestHandler`](crate::RequestHandler) that
//!   answers other nodes.
//! - `metrics`: [`NodeMetrics`], what METRICS reports.

mod closing;
mod cursor;
mod data_path;
mod failover;
mod forward;
mod group;
pub mod lease;
mod membership;
mod metrics;
mod peer_requests;
mod produce;
mod read;
mod replicate;
mod rereplicate;
mod retention;
mod rollover;
mod storage;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::clock::{Clock, DEFAULT_FAILOVER_MARGIN, DEFAULT_LEASE, DEFAULT_LEASE_RENEW};
use crate::lease::LeaseProvider;
use crate::log_store::LogStore;
use crate::metadata::Retention;
use crate::metadata_store::MetadataStore;
use crate::protocol::{Request, Response};
use crate::transport::Transport;
use crate::types::NodeId;

use crate::locks::MutexExt;
pub use lease::QuorumLease;
pub use metrics::{NodeMetrics, StorageMetrics};

/// Re-replication's default pace: 32 MiB/s.
pub const DEFAULT_REREPLICATION_RATE: u64 = 32 << 20;

/// Settings of one node's logic.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// Entries per segment before rollover (`WALRUS_MAX_SEGMENT_ENTRIES`).
    pub max_segment_entries: u64,
    /// Payload bytes per segment before rollover
    /// (`WALRUS_MAX_SEGMENT_BYTES`; `u64::MAX`: none). A segment never
    /// holds more, except one entry larger than this alone.
    pub max_segment_bytes: u64,
    /// Backstop rollover check period (`WALRUS_MONITOR_CHECK_MS`).
    pub monitor_interval: Duration,
    /// Retention of topics that set none (`WALRUS_RETENTION_ENTRIES`,
    /// `WALRUS_RETENTION_AGE`). Give every node the same: the consensus
    /// leader's is the one applied.
    pub default_retention: Retention,
    /// How often retention runs: the consensus leader deletes what is due,
    /// every node removes the files of deleted segments
    /// (`WALRUS_RETENTION_CHECK_MS`).
    pub retention_interval: Duration,
    /// Write-lease duration.
    pub lease: Duration,
    /// Lease renewal period (the seed's 100 ms).
    pub lease_renew: Duration,
    /// Failover waits `lease + failover_margin` after last hearing from a node.
    pub failover_margin: Duration,
    /// How long a request waits for a rollover or failover before answering
    /// a retryable error.
    pub request_timeout: Duration,
    /// How long a forwarded PUT waits for the segment leader. A leader cut
    /// off by a partition never answers; after this the client is told the
    /// outcome is unknown instead of waiting out `request_timeout`.
    pub forward_timeout: Duration,
    /// The identity of this node's storage, sent with every count report so
    /// the cluster can refuse a report read from a wiped or replaced disk.
    /// `None` for a node without one (in-memory test stacks).
    pub storage: Option<crate::types::StorageId>,
    /// Copies of each segment (its leader included) for topics registered
    /// here without `RF` (`--replication-factor`). `None`: `min(3,
    /// voters)` when the topic is registered (the server's default). Core's
    /// own default is `Some(1)`, so that a test on one copy says nothing.
    pub replication_factor: Option<u32>,
    /// Bytes per second re-replication copies at, at most (one segment at a
    /// time, from the consensus leader), so producers keep the disks and
    /// the network.
    pub rereplication_rate: u64,
}

impl NodeConfig {
    pub fn new(node_id: NodeId) -> Self {
        NodeConfig {
            node_id,
            max_segment_entries: 1_000_000,
            max_segment_bytes: u64::MAX,
            monitor_interval: Duration::from_millis(1000),
            default_retention: Retention::default(),
            retention_interval: Duration::from_millis(1000),
            lease: DEFAULT_LEASE,
            lease_renew: DEFAULT_LEASE_RENEW,
            failover_margin: DEFAULT_FAILOVER_MARGIN,
            request_timeout: Duration::from_secs(5),
            // Past two leases and the margin a cut-off leader has stopped
            // acknowledging and the failover is due: waiting longer gains
            // nothing.
            forward_timeout: DEFAULT_LEASE * 2 + DEFAULT_FAILOVER_MARGIN,
            storage: None,
            replication_factor: Some(1),
            rereplication_rate: DEFAULT_REREPLICATION_RATE,
        }
    }
}

/// One Walrus node: answers client [`Request`]s and other nodes'
/// [`NodeRequest`](crate::NodeRequest)s (it is the [`RequestHandler`](crate::RequestHandler)
/// to give the transport's receiving side).
pub struct Node {
    config: NodeConfig,
    id: NodeId,
    metadata: Arc<dyn MetadataStore>,
    log: Arc<dyn LogStore>,
    transport: Arc<dyn Transport>,
    clock: Arc<dyn Clock>,
    lease: Arc<dyn LeaseProvider>,
    rollover: rollover::Rollovers,
    failover: failover::Failover,
    cursors: cursor::Cursors,
    forwards: forward::Forwards,
    /// Producers' last writes, for idempotent PUTBs.
    producers: produce::Producers,
    /// Copies of the replicated segments this node leads.
    replication: replicate::Replication,
    /// The consensus leader's re-replication pass, when one runs.
    rereplication: rereplicate::Rereplication,
    /// Wakes long-polling readers of segments this node leads.
    appends: read::AppendSignals,
    /// Set when the node stops: waiting READs answer at once.
    stopping: read::Stopping,
    /// `COMMIT … ASYNC`s taken here and not durable yet.
    async_commits: group::AsyncCommits,
    /// Segments retention deleted from the local store, per topic.
    retention_done: retention::LocalDeletions,
    /// Wall-clock time (ms since the Unix epoch) at `clock`'s instant: the
    /// node's wall time advances with its clock from there
    /// ([`Node::wall_ms`]).
    wall_origin: (tokio::time::Instant, u64),
    /// A count report of ours was refused (storage mismatch): logged once.
    count_refused: std::sync::atomic::AtomicBool,
    /// This life of the node (its start time in ns, larger than any life
    /// before it): recorded with `NodeStarted` before it appends to a
    /// replicated segment ([`Node::check_life`]).
    incarnation: u64,
    /// A weak handle on ourselves, to spawn work that outlives a request.
    me: Weak<Node>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Node {
    /// Builds a node over one stack of backends, with core's write lease
    /// ([`QuorumLease`], renewed by the node's lease loop). Call
    /// [`Node::start`] to run its background loops (lease renewal, rollover
    /// monitor, failover, cursor persistence).
    pub fn new(
        config: NodeConfig,
        metadata: Arc<dyn MetadataStore>,
        log: Arc<dyn LogStore>,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Node> {
        let lease = Arc::new(QuorumLease::new(
            config.node_id,
            metadata.clone(),
            clock.clone(),
            config.lease,
        ));
        Self::with_lease(config, metadata, log, transport, clock, lease)
    }

    /// Like [`Node::new`] with another [`LeaseProvider`]. The node still
    /// renews with the quorum every `lease_renew` (the consensus leader's
    /// failover hears from it that way) and reports each success to
    /// [`LeaseProvider::renewed`]; the provider must keep the trait's
    /// contract with `config.lease` (rule 3).
    pub fn with_lease(
        config: NodeConfig,
        metadata: Arc<dyn MetadataStore>,
        log: Arc<dyn LogStore>,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
        lease: Arc<dyn LeaseProvider>,
    ) -> Arc<Node> {
        Arc::new_cyclic(|me| Node {
            id: config.node_id,
            lease,
            rollover: rollover::Rollovers::default(),
            failover: failover::Failover::default(),
            cursors: cursor::Cursors::default(),
            forwards: forward::Forwards::default(),
            producers: produce::Producers::default(),
            appends: read::AppendSignals::default(),
            replication: replicate::Replication::default(),
            rereplication: rereplicate::Rereplication::default(),
            stopping: read::Stopping::default(),
            async_commits: group::AsyncCommits::default(),
            count_refused: Default::default(),
            incarnation: new_incarnation(),
            retention_done: Default::default(),
            wall_origin: (clock.now(), unix_ms()),
            config,
            metadata,
            log,
            transport,
            clock,
            me: me.clone(),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// Spawns the background loops on the current tokio runtime.
    pub fn start(self: &Arc<Self>) {
        let loops: Vec<JoinHandle<()>> = vec![
            tokio::spawn(lease_loop(Arc::downgrade(self))),
            tokio::spawn(monitor_loop(Arc::downgrade(self))),
            tokio::spawn(failover_loop(Arc::downgrade(self))),
            tokio::spawn(cursor_loop(Arc::downgrade(self))),
            tokio::spawn(retention_loop(Arc::downgrade(self))),
            tokio::spawn(membership_loop(Arc::downgrade(self))),
        ];
        self.tasks_lock().extend(loops);
    }

    /// Answers one client request.
    pub async fn handle(&self, req: Request) -> Response {
        match self.route(req).await {
            Ok(resp) => resp,
            Err(e) => Response::Err(e.to_string()),
        }
    }

    /// Ends the waits of long-polling READs: each answers what it has at
    /// once (an empty result at the end of the topic), so that a graceful
    /// shutdown does not wait out their `WAIT`. Call it before draining
    /// client requests; reads that start afterwards do not wait.
    pub fn stop_waiting(&self) {
        self.stopping.stop();
    }

    /// Stops the background loops, persists the GET cursors and syncs the
    /// log store. In-flight requests finish first (the server stops
    /// accepting before calling this).
    pub async fn shutdown(&self) {
        self.stop_waiting();
        self.flush_async_commits().await;
        let tasks: Vec<JoinHandle<()>> = self.tasks_lock().drain(..).collect();
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        self.persist_cursors().await;
        if let Err(e) = self.log.sync().await {
            tracing::warn!(node = self.id, "log sync at shutdown failed: {e}");
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's write lease.
    pub fn lease(&self) -> &Arc<dyn LeaseProvider> {
        &self.lease
    }

    /// The metadata store this node runs on.
    pub fn metadata(&self) -> &Arc<dyn MetadataStore> {
        &self.metadata
    }

    /// Wall-clock time in ms since the Unix epoch, read once at creation
    /// and advanced by the node's clock since (so a test's paused clock
    /// moves it, and a suspend counts).
    pub(crate) fn wall_ms(&self) -> u64 {
        let (at, ms) = self.wall_origin;
        let elapsed = self.clock.now().saturating_duration_since(at);
        ms.saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }

    fn tasks_lock(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock_or_recover()
    }
}

/// Runs `tick` every `period` while the node exists.
macro_rules! node_loop {
    ($name:ident, $period:expr, $tick:ident) => {
        async fn $name(node: Weak<Node>) {
            loop {
                let Some(n) = node.upgrade() else { return };
                let period: Duration = $period(&n.config);
                n.$tick().await;
                drop(n);
                tokio::time::sleep(period).await;
            }
        }
    };
}

node_loop!(lease_loop, |c: &NodeConfig| c.lease_renew, renew_lease);
node_loop!(
    monitor_loop,
    |c: &NodeConfig| c.monitor_interval,
    monitor_tick
);
node_loop!(failover_loop, |c: &NodeConfig| c.lease_renew, failover_tick);
node_loop!(
    retention_loop,
    |c: &NodeConfig| c.retention_interval,
    retention_tick
);
node_loop!(
    membership_loop,
    |c: &NodeConfig| c.monitor_interval,
    membership_tick
);
node_loop!(
    cursor_loop,
    |_: &NodeConfig| cursor::PERSIST_EVERY,
    persist_cursors
);

/// A number for a new life of a node, larger than that of any life
/// before it (the wall clock in ns, and larger than the last one this
/// process gave, for nodes restarted within one test process).
fn new_incarnation() -> u64 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let previous = LAST
        .fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |last| Some(now.max(last + 1)),
        )
        .unwrap_or_else(|last| last);
    now.max(previous + 1)
}

/// Now, in ms since the Unix epoch (0 on a clock set before 1970).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
