//! The simulated cluster: real [`Node`]s on core's fakes, with the faults
//! the simulator injects (crash, power cut, freeze, clock pause,
//! partitions, elections, failing disks).
//!
//! Each node's backends are wrapped per *incarnation* ([`Guard`]): when a
//! node crashes, what the dead incarnation still has in flight (a rollover
//! task, a forwarded append running inline in another node's call) can no
//! longer touch the disk, consensus or the network, as after a real crash.
//! A frozen node (a suspended machine, a paused VM) holds every I/O of its
//! own until it thaws.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use walrus_core::locks::MutexExt;
use walrus_core::log_store::{Appended, LogStore, SegmentInfo, SegmentLimit, StorageHealth};
use walrus_core::metadata_store::{ConsensusStatus, MetadataStore};
use walrus_core::testing::{sim_info, FakeMetadataCluster, MemLogStore, SimNetwork};
use walrus_core::{
    Clock, ClusterState, CmdResult, Error, MetadataCmd, Node, NodeConfig, NodeId, NodeInfo,
    NodeRequest, NodeResponse, RequestHandler, Result, SegmentKey, Transport,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // One thread runs the whole simulation: a panic already failed this
    // seed (the runner reports it); the lock policy takes the lock anyway.
    m.lock_or_recover()
}

/// A node's clock: the simulation's time, minus what it lost in pauses
/// (a paused VM's clocks stop; after it resumes they run behind).
#[derive(Default)]
pub struct SimClock {
    state: Mutex<ClockState>,
}

#[derive(Default)]
struct ClockState {
    behind: Duration,
    /// A freeze in progress: it started and ends at these simulation
    /// instants; `true` when the time is lost (a VM pause), `false` when
    /// the clock catches up at the end (a suspend: `CLOCK_BOOTTIME`).
    paused: Option<(Instant, Instant, bool)>,
    /// The planted bug: stopped while the node is cut off.
    stopped_since: Option<Instant>,
}

impl SimClock {
    /// The clock stands still for `d` of simulation time, then runs on
    /// `d` behind (`lost`: a paused VM) or jumps ahead by `d` (a suspend:
    /// what ran meanwhile saw no time pass, as nothing runs in a suspended
    /// machine, and the clock then shows the time slept).
    pub fn pause(&self, d: Duration, lost: bool) {
        let now = Instant::now();
        let mut s = lock(&self.state);
        s.settle(now);
        if s.paused.is_none() {
            s.paused = Some((now, now + d, lost));
        }
    }

    /// Ends a freeze before its planned end (the node was woken early):
    /// the clock runs again from now, behind by the time lost if it was a
    /// VM pause, caught up if it was a suspend.
    pub fn resume(&self) {
        let now = Instant::now();
        let mut s = lock(&self.state);
        if let Some((start, end, lost)) = s.paused {
            s.paused = Some((start, end.min(now), lost));
        }
        s.settle(now);
    }

    /// Stops the clock until [`SimClock::start`] (the planted bug).
    pub fn stop(&self) {
        let now = Instant::now();
        let mut s = lock(&self.state);
        s.settle(now);
        s.stopped_since.get_or_insert(now);
    }

    pub fn start(&self) {
        let now = Instant::now();
        let mut s = lock(&self.state);
        s.settle(now);
        if let Some(since) = s.stopped_since.take() {
            s.behind += now - since;
        }
    }
}

impl ClockState {
    fn settle(&mut self, now: Instant) {
        if let Some((start, end, lost)) = self.paused {
            if now >= end {
                if lost {
                    self.behind += end - start;
                }
                self.paused = None;
            }
        }
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        let now = Instant::now();
        let mut s = lock(&self.state);
        s.settle(now);
        let at = match (s.paused, s.stopped_since) {
            (Some((start, ..)), Some(since)) => start.min(since),
            (Some((start, ..)), None) => start,
            (None, Some(since)) => since,
            (None, None) => now,
        };
        // The simulation starts at the real `Instant::now()`, far from zero.
        at.checked_sub(s.behind).unwrap_or(at)
    }
}

/// Freezes of one node id (they outlive its incarnations).
#[derive(Default)]
pub struct Freeze {
    until: Mutex<Option<Instant>>,
}

impl Freeze {
    async fn wait(&self) {
        loop {
            let until = *lock(&self.until);
            match until {
                Some(u) if Instant::now() < u => tokio::time::sleep_until(u).await,
                _ => return,
            }
        }
    }

    pub fn is_frozen(&self) -> bool {
        lock(&self.until).is_some_and(|u| Instant::now() < u)
    }
}

/// One incarnation of a node: dead after its crash.
pub struct Guard {
    dead: AtomicBool,
    freeze: Arc<Freeze>,
    /// Client requests running on this incarnation, and its metadata
    /// forwarder (aborted by its crash).
    requests: Mutex<Vec<AbortHandle>>,
    /// Its metadata subscribers (dropped by its crash).
    fanout: Arc<Fanout>,
}

impl Guard {
    fn new(freeze: Arc<Freeze>) -> Arc<Guard> {
        Arc::new(Guard {
            dead: AtomicBool::new(false),
            freeze,
            requests: Mutex::new(Vec::new()),
            fanout: Arc::default(),
        })
    }

    fn dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Waits out a freeze; false when this incarnation is dead.
    async fn pass(&self) -> bool {
        self.freeze.wait().await;
        !self.dead()
    }
}

struct GuardedLog {
    guard: Arc<Guard>,
    log: Arc<MemLogStore>,
}

fn crashed() -> Error {
    Error::ShuttingDown
}

#[async_trait]
impl LogStore for GuardedLog {
    async fn append_within(
        &self,
        segment: &SegmentKey,
        entries: &[Bytes],
        limit: SegmentLimit,
    ) -> Result<Appended> {
        if !self.guard.pass().await {
            return Err(crashed());
        }
        self.log.append_within(segment, entries, limit).await
    }

    async fn read(
        &self,
        segment: &SegmentKey,
        from: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>> {
        if !self.guard.pass().await {
            return Err(crashed());
        }
        self.log.read(segment, from, max_entries, max_bytes).await
    }

    async fn info(&self, segment: &SegmentKey) -> Result<Option<SegmentInfo>> {
        if !self.guard.pass().await {
            return Err(crashed());
        }
        self.log.info(segment).await
    }

    async fn seal(&self, segment: &SegmentKey) -> Result<u64> {
        if !self.guard.pass().await {
            return Err(crashed());
        }
        self.log.seal(segment).await
    }

    async fn append_at(
        &self,
        segment: &SegmentKey,
        first: u64,
        entries: &[Bytes],
    ) -> Result<Appended> {
        if !self.guard.pass().await {
            return Err(crashed());
        }
        self.log.append_at(segment, first, entries).await
    }

    async fn seal_at(&self, segment: &SegmentKey, count: u64) -> Result<u64> {
        if !self.guard.pass().await {
            return Err(crashed());
        }
        self.log.seal_at(segment, count).await
    }

    async fn delete(&self, segment: &SegmentKey) -> Result<()> {
        if !self.guard.pass().await {
            return Err(crashed());
        }
        self.log.delete(segment).await
    }

    async fn sync(&self) -> Result<()> {
        if !self.guard.pass().await {
            return Err(crashed());
        }
        self.log.sync().await
    }

    fn health(&self) -> StorageHealth {
        self.log.health()
    }

    async fn segments(&self) -> Result<Vec<(SegmentKey, SegmentInfo)>> {
        if !self.guard.pass().await {
            return Err(crashed());
        }
        self.log.segments().await
    }
}

/// One watch channel per subscriber, fed in subscription order.
///
/// Tokio's watch wakes the waiters of one channel in a random order (it
/// puts each in one of 8 queues at random, from a generator the
/// simulation cannot seed), so tasks waiting on one node's metadata would
/// run in a different order in each replay. With one receiver per channel,
/// the wake order is the order of the sends below: the same every time.
#[derive(Default)]
struct Fanout {
    subscribers: Mutex<Vec<watch::Sender<Arc<ClusterState>>>>,
}

impl Fanout {
    /// Forwards every state the store applies, until aborted.
    fn spawn(self: &Arc<Self>, store: &dyn MetadataStore) -> AbortHandle {
        let mut rx = store.watch();
        let fanout = self.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let state = rx.borrow_and_update().clone();
                let mut subs = lock(&fanout.subscribers);
                subs.retain(|tx| !tx.is_closed());
                for tx in subs.iter() {
                    tx.send_replace(state.clone());
                }
            }
        })
        .abort_handle()
    }
}

struct GuardedMetadata {
    guard: Arc<Guard>,
    store: Arc<dyn MetadataStore>,
    fanout: Arc<Fanout>,
}

fn cut() -> Error {
    Error::Unavailable("this node crashed (simulated)".into())
}

#[async_trait]
impl MetadataStore for GuardedMetadata {
    async fn propose(&self, cmd: MetadataCmd) -> Result<CmdResult> {
        if !self.guard.pass().await {
            return Err(cut());
        }
        self.store.propose(cmd).await
    }

    fn state(&self) -> Arc<ClusterState> {
        self.store.state()
    }

    fn watch(&self) -> watch::Receiver<Arc<ClusterState>> {
        let (tx, rx) = watch::channel(self.store.state());
        if !self.guard.dead() {
            lock(&self.fanout.subscribers).push(tx);
        }
        // Dead: the sender is gone, so a wait ends at once ("the store is
        // gone"), as nothing of a crashed node waits for anything.
        rx
    }

    async fn confirm(&self) -> Result<u64> {
        if !self.guard.pass().await {
            return Err(cut());
        }
        self.store.confirm().await
    }

    fn status(&self) -> ConsensusStatus {
        self.store.status()
    }

    async fn add_node(&self, node: NodeId, info: NodeInfo) -> Result<()> {
        if !self.guard.pass().await {
            return Err(cut());
        }
        self.store.add_node(node, info).await
    }

    fn metrics(&self) -> walrus_core::ConsensusMetrics {
        self.store.metrics()
    }
}

struct GuardedTransport {
    guard: Arc<Guard>,
    inner: Arc<dyn Transport>,
}

#[async_trait]
impl Transport for GuardedTransport {
    async fn call(&self, to: NodeId, req: NodeRequest) -> Result<NodeResponse> {
        if !self.guard.pass().await {
            return Err(crashed());
        }
        self.inner.call(to, req).await
    }

    async fn call_addr(&self, addr: &str, req: NodeRequest) -> Result<NodeResponse> {
        if !self.guard.pass().await {
            return Err(crashed());
        }
        self.inner.call_addr(addr, req).await
    }
}

/// The receiving side of one incarnation on the network.
struct GuardedHandler {
    guard: Arc<Guard>,
    node: Arc<Node>,
}

#[async_trait]
impl RequestHandler for GuardedHandler {
    async fn handle(&self, req: NodeRequest) -> Result<NodeResponse> {
        if !self.guard.pass().await {
            // It left the sender: for all the sender knows, it was handled.
            return Err(Error::NoAnswer("the node crashed (simulated)".into()));
        }
        RequestHandler::handle(&*self.node, req).await
    }
}

/// What became of a client request sent to a node.
pub enum Call<T> {
    Done(T),
    /// The node was down: the request was never sent.
    Refused,
    /// The node crashed while handling it: outcome unknown.
    Cut,
    /// No answer within [`REQUEST_LIMIT`]: the request hangs (a bug).
    Hung,
}

/// A client gives up on a request after this long: far past every
/// timeout of the node, so only a request that hangs gets there.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(60);

struct Slot {
    guard: Arc<Guard>,
    node: Option<Arc<Node>>,
    log: Arc<MemLogStore>,
    clock: Arc<SimClock>,
    freeze: Arc<Freeze>,
    isolated: bool,
}

/// The whole simulated cluster.
pub struct World {
    pub metadata: FakeMetadataCluster,
    pub net: SimNetwork,
    config: NodeConfig,
    slots: Mutex<BTreeMap<NodeId, Slot>>,
    /// Pairs that cannot talk on the data path (consensus unaffected).
    cuts: Mutex<BTreeSet<(NodeId, NodeId)>>,
    /// Unsynced entries dropped by power cuts and failed syncs: a store
    /// acknowledges them under relaxed syncs, and may lose them (the
    /// `LogStore` durability contract under `fsync=interval/never`).
    pub dropped: Mutex<Vec<Bytes>>,
    /// The planted bug: a cut-off node's clock stops.
    plant_stopped_clock: bool,
}

impl World {
    /// Nodes `1..=n`, node 1 the consensus leader.
    pub fn new(
        n: u64,
        net: SimNetwork,
        config: NodeConfig,
        relaxed: bool,
        plant_stopped_clock: bool,
    ) -> Arc<World> {
        let metadata = FakeMetadataCluster::new();
        let mut slots = BTreeMap::new();
        for id in 1..=n {
            metadata.join(id, sim_info(id));
            let log = Arc::new(MemLogStore::new());
            log.relax_syncs(relaxed);
            let freeze = Arc::new(Freeze::default());
            slots.insert(
                id,
                Slot {
                    guard: Guard::new(freeze.clone()),
                    node: None,
                    log,
                    clock: Arc::new(SimClock::default()),
                    freeze,
                    isolated: false,
                },
            );
        }
        let world = Arc::new(World {
            metadata,
            net,
            config,
            slots: Mutex::new(slots),
            cuts: Mutex::new(BTreeSet::new()),
            dropped: Mutex::new(Vec::new()),
            plant_stopped_clock,
        });
        for id in 1..=n {
            world.boot(id);
        }
        world
    }

    pub fn ids(&self) -> Vec<NodeId> {
        lock(&self.slots).keys().copied().collect()
    }

    pub fn log(&self, id: NodeId) -> Arc<MemLogStore> {
        lock(&self.slots)[&id].log.clone()
    }

    pub fn is_down(&self, id: NodeId) -> bool {
        lock(&self.slots)[&id].node.is_none()
    }

    pub fn is_frozen(&self, id: NodeId) -> bool {
        lock(&self.slots)[&id].freeze.is_frozen()
    }

    pub fn is_isolated(&self, id: NodeId) -> bool {
        lock(&self.slots)[&id].isolated
    }

    /// Starts a new incarnation of `id` on the disk it had.
    fn boot(&self, id: NodeId) {
        let mut slots = lock(&self.slots);
        let slot = slots.get_mut(&id).expect("booting a node of the world");
        let guard = Guard::new(slot.freeze.clone());
        let store = self.metadata.store(id);
        let forwarder = guard.fanout.spawn(&*store);
        lock(&guard.requests).push(forwarder);
        let node = Node::new(
            NodeConfig {
                node_id: id,
                ..self.config.clone()
            },
            Arc::new(GuardedMetadata {
                guard: guard.clone(),
                store,
                fanout: guard.fanout.clone(),
            }),
            Arc::new(GuardedLog {
                guard: guard.clone(),
                log: slot.log.clone(),
            }),
            Arc::new(GuardedTransport {
                guard: guard.clone(),
                inner: self.net.transport(id),
            }),
            slot.clock.clone(),
        );
        self.net.register(
            id,
            Arc::new(GuardedHandler {
                guard: guard.clone(),
                node: node.clone(),
            }),
        );
        node.start();
        slot.guard = guard;
        slot.node = Some(node);
        drop(slots);
        self.refresh(id);
    }

    /// Cuts `id` off from consensus while it is down, isolated or frozen.
    fn refresh(&self, id: NodeId) {
        let (off, isolated, clock) = {
            let slots = lock(&self.slots);
            let s = &slots[&id];
            (
                s.node.is_none() || s.isolated || s.freeze.is_frozen(),
                s.isolated,
                s.clock.clone(),
            )
        };
        if off {
            self.metadata.cut_off(id);
        } else {
            self.metadata.reconnect(id);
        }
        if self.plant_stopped_clock {
            if isolated {
                clock.stop();
            } else {
                clock.start();
            }
        }
    }

    /// Re-applies isolations and cut pairs to the network.
    fn rewire(&self) {
        self.net.heal();
        for (id, s) in lock(&self.slots).iter() {
            if s.isolated {
                self.net.isolate(*id);
            }
        }
        for (a, b) in lock(&self.cuts).iter() {
            self.net.partition(*a, *b);
        }
    }

    /// Runs a client request on node `id`, as a client connected to it.
    pub async fn on_node<T, F, Fut>(&self, id: NodeId, f: F) -> Call<T>
    where
        F: FnOnce(Arc<Node>) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (guard, node) = {
            let slots = lock(&self.slots);
            let s = &slots[&id];
            (s.guard.clone(), s.node.clone())
        };
        let Some(node) = node else {
            return Call::Refused;
        };
        if !guard.pass().await {
            return Call::Refused;
        }
        let task = tokio::spawn(f(node));
        let abort = task.abort_handle();
        lock(&guard.requests).push(abort.clone());
        match tokio::time::timeout(REQUEST_LIMIT, task).await {
            Ok(Ok(v)) => Call::Done(v),
            Ok(Err(_)) => Call::Cut,
            Err(_) => {
                abort.abort();
                Call::Hung
            }
        }
    }

    /// A crash with a power cut: the node's unsynced entries are gone, its
    /// requests in flight are cut, nothing of it runs any more.
    pub async fn crash(&self, id: NodeId) {
        let (guard, node, log) = {
            let mut slots = lock(&self.slots);
            let s = slots.get_mut(&id).expect("crashing a node of the world");
            let Some(node) = s.node.take() else { return };
            (s.guard.clone(), node, s.log.clone())
        };
        self.drop_unsynced(&log, None);
        log.power_cut();
        guard.dead.store(true, Ordering::SeqCst);
        for r in lock(&guard.requests).drain(..) {
            r.abort();
        }
        lock(&guard.fanout.subscribers).clear();
        self.net.unregister(id);
        self.refresh(id);
        node.shutdown().await;
    }

    pub fn restart(&self, id: NodeId) {
        if self.is_down(id) {
            self.boot(id);
        }
    }

    fn drop_unsynced(&self, log: &MemLogStore, only: Option<&SegmentKey>) {
        let mut dropped = lock(&self.dropped);
        for (key, entries) in log.unsynced() {
            if only.is_none_or(|k| *k == key) {
                dropped.extend(entries);
            }
        }
    }

    /// A sync of `key` on `id` fails (EIO): its unsynced entries are gone
    /// and it takes no more appends.
    pub fn fail_sync(&self, id: NodeId, key: &SegmentKey) {
        let log = self.log(id);
        self.drop_unsynced(&log, Some(key));
        log.fail_sync(key);
    }

    /// Freezes `id` for `d`: a suspended machine (`clock_stops: false`, its
    /// boot clock counts the sleep) or a paused VM (all its clocks stop).
    /// Its I/O waits; it is cut off from consensus meanwhile. Its timers
    /// still fire, so its clock stands still while frozen: its loops see
    /// no time pass, as in a machine where nothing runs.
    pub fn freeze(self: &Arc<Self>, id: NodeId, d: Duration, clock_stops: bool) {
        let until = Instant::now() + d;
        {
            let slots = lock(&self.slots);
            let s = &slots[&id];
            let mut u = lock(&s.freeze.until);
            if u.is_some_and(|u| u > Instant::now()) {
                return;
            }
            *u = Some(until);
            s.clock.pause(d, clock_stops);
        }
        self.refresh(id);
        let world = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            if let Some(w) = world.upgrade() {
                w.refresh(id);
            }
        });
    }

    pub fn isolate(&self, id: NodeId, on: bool) {
        lock(&self.slots)
            .get_mut(&id)
            .expect("isolating a node of the world")
            .isolated = on;
        self.rewire();
        self.refresh(id);
    }

    pub fn cut_pair(&self, a: NodeId, b: NodeId) {
        if a != b {
            lock(&self.cuts).insert((a.min(b), a.max(b)));
            self.rewire();
        }
    }

    /// Ends every isolation, cut pair and freeze; restarts crashed nodes.
    pub fn heal_all(&self) {
        for s in lock(&self.slots).values_mut() {
            s.isolated = false;
            // A woken node's clock runs again too: a node that runs with a
            // stopped clock is the planted bug, not a suspend.
            *lock(&s.freeze.until) = None;
            s.clock.resume();
        }
        lock(&self.cuts).clear();
        self.rewire();
        for id in self.ids() {
            self.restart(id);
            self.refresh(id);
        }
    }
}
