//! One run: draw a plan from the seed, start the cluster, let clients and
//! the fault injector loose, heal everything, drain the topics, read the
//! final state and check it.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use walrus_core::protocol::{Request, Response};
use walrus_core::testing::SimNetwork;
use walrus_core::{
    GroupName, LogStore, MetadataCmd, NodeConfig, NodeId, SegmentKey, SegmentStatus, TopicName,
};

use crate::history::{
    History, Outcome, Read, ReadAt, ReadResult, SegmentTruth, Stored, TopicTruth, Truth, Write,
};
use crate::world::{Call, World};
use crate::{Options, Plant, Report, Stats};
use walrus_core::locks::MutexExt;

const TOPICS: [&str; 2] = ["t0", "t1"];
/// After the faults end: time for leases, failovers and pending counts
/// to settle before the final drain.
const SETTLE: Duration = Duration::from_secs(4);
/// The final drain of a topic must reach its end within this.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// A VM pause within the design's bound: under `failover_margin / 2`.
const MAX_PAUSE_MS: u64 = 200;
/// At most one such pause per node within any lease window (plus margin).
const PAUSE_SPACING: Duration = Duration::from_secs(3);

/// What the seed chose for this run.
#[derive(Debug, Clone)]
struct Plan {
    nodes: u64,
    relaxed: bool,
    limit: u64,
    clients: usize,
    ops: usize,
    /// Longest pause of a client between two operations.
    think_ms: u64,
    delay: (u64, u64),
    drop_rate: f64,
    answer_loss: f64,
    duplicates: f64,
    commit_delay_ms: u64,
    lag_ms: u64,
    fault_every: (u64, u64),
}

impl Plan {
    fn draw(rng: &mut StdRng, opts: &Options) -> Plan {
        let max_delay = rng.gen_range(1..=20);
        Plan {
            nodes: if rng.gen_bool(0.5) { 3 } else { 5 },
            relaxed: rng.gen_bool(0.5),
            limit: rng.gen_range(2..=8),
            clients: 3,
            ops: opts.ops,
            think_ms: [40, 300, 600][rng.gen_range(0..3)],
            delay: (rng.gen_range(0..=max_delay / 2), max_delay),
            drop_rate: [0.0, 0.01, 0.05][rng.gen_range(0..3)],
            answer_loss: [0.0, 0.01, 0.05][rng.gen_range(0..3)],
            duplicates: [0.0, 0.1][rng.gen_range(0..2)],
            commit_delay_ms: [0, 1, 5][rng.gen_range(0..3)],
            lag_ms: [0, 0, 20][rng.gen_range(0..3)],
            fault_every: (50, rng.gen_range(200..=800)),
        }
    }
}

/// The run's trace: every client answer and fault, with its time. Its
/// hash is the replay check; the lines are kept when asked for.
pub(crate) struct Trace {
    start: Instant,
    hasher: std::collections::hash_map::DefaultHasher,
    lines: Option<Vec<String>>,
}

impl Trace {
    fn note(&mut self, what: &str) {
        let at = self.start.elapsed();
        (at, what).hash(&mut self.hasher);
        if let Some(lines) = &mut self.lines {
            lines.push(format!("{:>10.3} ms  {what}", at.as_secs_f64() * 1e3));
        }
    }
}

struct Run {
    world: Arc<World>,
    start: Instant,
    trace: Mutex<Trace>,
    history: Mutex<History>,
    stats: Mutex<Stats>,
}

impl Run {
    fn note(&self, what: impl AsRef<str>) {
        lock(&self.trace).note(what.as_ref());
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn violation(&self, what: String) {
        self.note(format!("VIOLATION {what}"));
        lock(&self.history).violations.push(what);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock_or_recover()
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).expect("the simulator's topic names are valid")
}

pub(crate) async fn simulate(seed: u64, opts: &Options) -> Report {
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let plan = Plan::draw(&mut rng, opts);
    let net = SimNetwork::new(rng.gen());
    net.set_delay(
        Duration::from_millis(plan.delay.0),
        Duration::from_millis(plan.delay.1),
    );
    let config = NodeConfig {
        max_segment_entries: plan.limit,
        monitor_interval: Duration::from_millis(200),
        ..NodeConfig::new(1)
    };
    let world = World::new(
        plan.nodes,
        net,
        config,
        plan.relaxed,
        opts.plant == Some(Plant::StoppedLeaseClock),
    );
    world
        .metadata
        .set_commit_delay(Some(Duration::from_millis(plan.commit_delay_ms)));
    world
        .metadata
        .set_lag(Some(Duration::from_millis(plan.lag_ms)));
    let run = Arc::new(Run {
        world: world.clone(),
        start,
        trace: Mutex::new(Trace {
            start,
            hasher: Default::default(),
            lines: opts.trace.then(Vec::new),
        }),
        history: Mutex::new(History::default()),
        stats: Mutex::new(Stats::default()),
    });
    run.note(format!("plan {plan:?}"));

    for name in TOPICS {
        register(&run, name).await;
    }
    world.net.set_drop_rate(plan.drop_rate);
    world.net.set_answer_loss_rate(plan.answer_loss);
    world.net.set_duplicate_rate(plan.duplicates);

    let clients: Vec<_> = (0..plan.clients)
        .map(|c| {
            let rng = StdRng::seed_from_u64(rng.gen());
            tokio::spawn(client(run.clone(), c, rng, plan.clone()))
        })
        .collect();
    let mut faults = Faults {
        rng: StdRng::seed_from_u64(rng.gen()),
        last_pause: Default::default(),
    };
    while !clients.iter().all(|c| c.is_finished()) {
        let pause = faults
            .rng
            .gen_range(plan.fault_every.0..=plan.fault_every.1);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if opts.faults {
            faults.inject(&run).await;
        }
    }
    for c in clients {
        if let Err(e) = c.await {
            run.violation(format!("a client task failed: {e}"));
        }
    }

    run.note("heal");
    world.net.set_drop_rate(0.0);
    world.net.set_answer_loss_rate(0.0);
    world.net.set_duplicate_rate(0.0);
    for id in world.ids() {
        world.log(id).fail_appends(None);
    }
    world.heal_all();
    if world.metadata.leader().is_none() {
        world.metadata.set_leader(Some(1));
    }
    tokio::time::sleep(SETTLE).await;
    for name in TOPICS {
        drain(&run, name).await;
    }
    let truth = read_truth(&world, start).await;
    let dropped: BTreeSet<Bytes> = lock(&world.dropped).iter().cloned().collect();
    let history = lock(&run.history).clone();
    let violations = crate::checker::check(&history, &truth, &dropped);
    for v in &violations {
        run.note(format!("CHECK {v}"));
    }
    let report = {
        let mut trace = lock(&run.trace);
        let mut stats = lock(&run.stats).clone();
        stats.sim_time = start.elapsed();
        stats.dropped_unsynced = dropped.len() as u64;
        for cmd in world.metadata.log() {
            match cmd {
                MetadataCmd::Roll { count: Some(_), .. } => stats.rollovers += 1,
                MetadataCmd::Roll { count: None, .. } => stats.failovers += 1,
                _ => {}
            }
        }
        // A block, not drop(): clippy sees a guard dropped by hand as held
        // across the awaits below.
        Report {
            seed,
            nodes: plan.nodes,
            trace_hash: trace.hasher.finish(),
            violations,
            stats,
            trace: trace.lines.take().unwrap_or_default(),
        }
    };
    // Nodes and the network hold each other (a node's transport is the
    // network, the network routes to the node): without stopping them, a
    // search of a million seeds would keep every run's cluster in memory.
    for id in world.ids() {
        world.crash(id).await;
    }
    report
}

async fn register(run: &Run, name: &'static str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = run
            .world
            .on_node(1, move |n| async move {
                n.handle(Request::Register(topic(name))).await
            })
            .await;
        match answer {
            Call::Done(Response::Ok) => return,
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => {
                run.violation(format!("cannot register {name} on a healthy cluster"));
                return;
            }
        }
    }
}

/// Sends one client request to node `node`, as a client connected to it.
async fn ask(run: &Run, node: NodeId, req: Request) -> Call<Response> {
    run.world
        .on_node(node, move |n| async move { n.handle(req).await })
        .await
}

fn pick(rng: &mut StdRng, n: u64) -> NodeId {
    rng.gen_range(1..=n)
}

async fn client(run: Arc<Run>, c: usize, mut rng: StdRng, plan: Plan) {
    // Each client is the one member of its own consumer group.
    let mut group = Group::new(format!("g{c}"));
    for op in 0..plan.ops {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=plan.think_ms))).await;
        let name = TOPICS[rng.gen_range(0..TOPICS.len())];
        match rng.gen_range(0..100) {
            0..40 => put(&run, &mut rng, &plan, name, format!("c{c}o{op}")).await,
            40..55 => batch(&run, &mut rng, &plan, name, c, op).await,
            55..70 => read_at(&run, &mut rng, &plan, name).await,
            70..85 => consume(&run, &mut rng, &plan, name, &mut group).await,
            _ => get(&run, &mut rng, &plan, name).await,
        }
    }
}

/// What a group's only member knows of the group's committed offsets.
struct Group {
    name: GroupName,
    /// Per topic: the offset of the last COMMIT answered `OK` (0 before
    /// any), and the offsets of COMMITs whose outcome is unknown (one may
    /// still land, even after a later `OK`: the checker accepts them all).
    offsets: BTreeMap<&'static str, (u64, BTreeSet<u64>)>,
}

impl Group {
    fn new(name: String) -> Self {
        Group {
            name: GroupName::new(&name).expect("the simulator's group names are valid"),
            offsets: BTreeMap::new(),
        }
    }
}

/// A consumer-group step: FETCH from the committed offset, then COMMIT the
/// next offset. The FETCH must start where an acknowledged (or a possibly
/// applied) COMMIT left the group: a committed offset is durable through
/// crashes, failovers and elections. Its entries are checked like READ's.
async fn consume(run: &Run, rng: &mut StdRng, plan: &Plan, name: &'static str, group: &mut Group) {
    let node = pick(rng, plan.nodes);
    let max_entries = rng.gen_range(1..=8);
    let g = group.name.clone();
    let answer = ask(
        run,
        node,
        Request::Fetch {
            group: g,
            topic: topic(name),
            max_entries,
            max_bytes: 1 << 20,
            wait_ms: 0,
        },
    )
    .await;
    let (committed, uncertain) = group.offsets.entry(name).or_default();
    let (entries, next) = match answer {
        Call::Done(Response::Entries { entries, next }) => (entries, next),
        Call::Done(Response::Err(e)) => {
            classify(run, &e);
            return;
        }
        Call::Done(other) => {
            run.violation(format!("FETCH answered {other:?}"));
            return;
        }
        Call::Hung => {
            hung(run, "FETCH");
            return;
        }
        Call::Refused | Call::Cut => return,
    };
    run.note(format!(
        "FETCH {} {name} x{max_entries} via {node}: {:?} next {next}",
        group.name,
        entries
            .iter()
            .map(|(o, p)| format!("{o}={}", String::from_utf8_lossy(p)))
            .collect::<Vec<_>>()
    ));
    if let Some((first, _)) = entries.first() {
        if *first != *committed && !uncertain.contains(first) {
            run.violation(format!(
                "FETCH {} {name} started at offset {first}; the group's last acknowledged COMMIT was {committed} (unknown outcomes: {uncertain:?})",
                group.name
            ));
        }
    } else {
        return;
    }
    lock(&run.history)
        .reads_at
        .extend(entries.into_iter().map(|(offset, payload)| ReadAt {
            topic: name.into(),
            offset,
            payload,
        }));

    let node = pick(rng, plan.nodes);
    let g = group.name.clone();
    let answer = ask(
        run,
        node,
        Request::Commit {
            group: g,
            topic: topic(name),
            offset: next,
            asynchronous: false,
        },
    )
    .await;
    let outcome = match answer {
        Call::Done(Response::Ok) => Outcome::Acked,
        // The one "unavailable" that promises nothing either way.
        Call::Done(Response::Err(e)) if e.contains("may or may not be stored") => Outcome::Maybe,
        Call::Done(Response::Err(e)) => classify(run, &e),
        Call::Done(other) => {
            run.violation(format!("COMMIT answered {other:?}"));
            Outcome::Maybe
        }
        Call::Refused => Outcome::NotApplied,
        Call::Cut => Outcome::Maybe,
        Call::Hung => hung(run, "COMMIT"),
    };
    run.note(format!(
        "COMMIT {} {name} {next} via {node}: {outcome:?}",
        group.name
    ));
    match outcome {
        Outcome::Acked => *committed = next,
        Outcome::Maybe => {
            uncertain.insert(next);
        }
        Outcome::NotApplied => {}
    }
}

/// One PUT, sent again (to a random node) after "not applied", like a
/// well-behaved client: at most three times.
async fn put(run: &Run, rng: &mut StdRng, plan: &Plan, name: &'static str, payload: String) {
    let payload = Bytes::from(payload);
    for attempt in 1..=3 {
        let node = pick(rng, plan.nodes);
        let invoked = run.now();
        let p = payload.clone();
        let answer = ask(
            run,
            node,
            Request::Put {
                topic: topic(name),
                payload: p,
            },
        )
        .await;
        let outcome = match answer {
            Call::Done(Response::Ok) => Outcome::Acked,
            Call::Done(Response::Err(e)) => classify(run, &e),
            Call::Done(other) => {
                run.violation(format!("PUT answered {other:?}"));
                Outcome::Maybe
            }
            Call::Refused => Outcome::NotApplied,
            Call::Cut => Outcome::Maybe,
            Call::Hung => hung(run, "PUT"),
        };
        run.note(format!(
            "PUT {name} {} via {node}: {outcome:?}",
            String::from_utf8_lossy(&payload)
        ));
        if outcome == Outcome::NotApplied && attempt < 3 {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(10..=100))).await;
            continue;
        }
        record(run, name, payload, invoked, outcome);
        return;
    }
}

/// A pipelined writer's queued PUTs, through `Node::put_batch`.
async fn batch(run: &Run, rng: &mut StdRng, plan: &Plan, name: &'static str, c: usize, op: usize) {
    let n = rng.gen_range(2..=4);
    let payloads: Vec<Bytes> = (0..n)
        .map(|i| Bytes::from(format!("c{c}o{op}b{i}")))
        .collect();
    let node = pick(rng, plan.nodes);
    let invoked = run.now();
    let sent = payloads.clone();
    let answer = run
        .world
        .on_node(node, move |n| async move {
            n.put_batch(&topic(name), sent).await
        })
        .await;
    let (acked, rest) = match answer {
        Call::Done((k, None)) => (k, Outcome::Acked),
        Call::Done((k, Some(e))) => (k, classify(run, &e.to_string())),
        Call::Refused => (0, Outcome::NotApplied),
        Call::Cut => (0, Outcome::Maybe),
        Call::Hung => (0, hung(run, "batch PUT")),
    };
    run.note(format!(
        "BATCH {name} c{c}o{op} x{n} via {node}: {acked} acked, rest {rest:?}"
    ));
    for (i, p) in payloads.into_iter().enumerate() {
        let outcome = if i < acked { Outcome::Acked } else { rest };
        record(run, name, p, invoked, outcome);
    }
}

/// A READ by offset (no cursor), sometimes long-polling.
async fn read_at(run: &Run, rng: &mut StdRng, plan: &Plan, name: &'static str) {
    let node = pick(rng, plan.nodes);
    let offset = rng.gen_range(0..=(plan.ops as u64 * 2));
    let max_entries = rng.gen_range(1..=8);
    let wait_ms = [0, 0, 300][rng.gen_range(0..3)];
    let answer = ask(
        run,
        node,
        Request::Read {
            topic: topic(name),
            offset,
            max_entries,
            max_bytes: 1 << 20,
            wait_ms,
        },
    )
    .await;
    let got = match answer {
        Call::Done(Response::Entries { entries, next }) => {
            let last = entries.last().map_or(offset, |(o, _)| o + 1);
            if entries.first().is_some_and(|(o, _)| *o != offset) || next < last {
                run.violation(format!(
                    "READ {name} {offset} answered offsets {:?} and next {next}",
                    entries.iter().map(|(o, _)| *o).collect::<Vec<_>>()
                ));
            }
            entries
        }
        Call::Done(Response::Err(e)) => {
            // An offset past the end is the reader's mistake, not the node's.
            if !(e.starts_with("offset ") && e.contains("is past the end")) {
                classify(run, &e);
            }
            Vec::new()
        }
        Call::Done(other) => {
            run.violation(format!("READ answered {other:?}"));
            Vec::new()
        }
        Call::Hung => {
            hung(run, "READ");
            Vec::new()
        }
        Call::Refused | Call::Cut => Vec::new(),
    };
    run.note(format!(
        "READ {name} {offset} x{max_entries} wait {wait_ms} via {node}: {:?}",
        got.iter()
            .map(|(o, p)| format!("{o}={}", String::from_utf8_lossy(p)))
            .collect::<Vec<_>>()
    ));
    let mut h = lock(&run.history);
    for (offset, payload) in got {
        h.reads_at.push(ReadAt {
            topic: name.into(),
            offset,
            payload,
        });
    }
}

async fn get(run: &Run, rng: &mut StdRng, plan: &Plan, name: &'static str) {
    let node = pick(rng, plan.nodes);
    let answer = ask(run, node, Request::Get(topic(name))).await;
    let result = read_result(run, answer);
    run.note(format!("GET {name} via {node}: {result:?}"));
    lock(&run.stats).gets += 1;
    lock(&run.history).reads.push(Read {
        topic: name.into(),
        result,
    });
}

fn read_result(run: &Run, answer: Call<Response>) -> ReadResult {
    match answer {
        Call::Done(Response::Entry(e)) => ReadResult::Entry(e),
        Call::Done(Response::Empty) => ReadResult::Empty,
        Call::Done(Response::Err(e)) => match classify(run, &e) {
            Outcome::Maybe => ReadResult::Maybe,
            _ => ReadResult::NotApplied,
        },
        Call::Done(other) => {
            run.violation(format!("GET answered {other:?}"));
            ReadResult::Maybe
        }
        Call::Refused => ReadResult::NotApplied,
        Call::Cut => ReadResult::Maybe,
        Call::Hung => {
            hung(run, "GET");
            ReadResult::Maybe
        }
    }
}

fn hung(run: &Run, what: &str) -> Outcome {
    run.violation(format!(
        "a {what} got no answer within {:?}",
        crate::world::REQUEST_LIMIT
    ));
    Outcome::Maybe
}

fn classify(run: &Run, text: &str) -> Outcome {
    match Outcome::of_error(text) {
        Ok(o) => o,
        Err(text) => {
            run.violation(format!("a request was answered ERR {text}"));
            Outcome::Maybe
        }
    }
}

fn record(run: &Run, name: &str, payload: Bytes, invoked: Duration, outcome: Outcome) {
    {
        let mut s = lock(&run.stats);
        match outcome {
            Outcome::Acked => s.acked += 1,
            Outcome::Maybe => s.maybe += 1,
            Outcome::NotApplied => s.not_applied += 1,
        }
    }
    lock(&run.history).writes.push(Write {
        topic: name.into(),
        payload,
        invoked,
        done: run.now(),
        outcome,
    });
}

/// Reads the whole topic through the shared cursor, retrying what is
/// retryable, until `EMPTY`.
async fn drain(run: &Run, name: &'static str) {
    let deadline = Instant::now() + DRAIN_LIMIT;
    let ids = run.world.ids();
    let mut i = 0usize;
    loop {
        let node = ids[i % ids.len()];
        i += 1;
        let answer = ask(run, node, Request::Get(topic(name))).await;
        let last = format!("{:?}", answer_text(&answer));
        let result = read_result(run, answer);
        run.note(format!("DRAIN {name} via {node}: {result:?}"));
        let done = result == ReadResult::Empty;
        let progress = matches!(result, ReadResult::Entry(_));
        lock(&run.history).reads.push(Read {
            topic: name.into(),
            result,
        });
        if done {
            return;
        }
        if Instant::now() >= deadline {
            run.violation(format!(
                "the final drain of {name} did not reach its end within {DRAIN_LIMIT:?} of a \
                 healed cluster; last answer {last}"
            ));
            return;
        }
        if !progress {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn answer_text(answer: &Call<Response>) -> String {
    match answer {
        Call::Done(r) => format!("{r:?}"),
        Call::Refused => "refused".into(),
        Call::Cut => "cut".into(),
        Call::Hung => "hung".into(),
    }
}

/// Every topic as the segment leaders' stores hold it, in the order the
/// committed metadata gives; checks the sealed counts on the way.
async fn read_truth(world: &World, start: Instant) -> Truth {
    let state = world.metadata.committed();
    let mut truth = Truth::default();
    for (name, t) in &state.topics {
        let mut out = TopicTruth {
            cursor: t.cursor,
            ..Default::default()
        };
        for seg in &t.segments {
            let key = SegmentKey::new(name.clone(), seg.id);
            let log = world.log(seg.leader);
            let history: Vec<(Duration, u64)> = log
                .append_history()
                .into_iter()
                .filter(|(_, k, _)| *k == key)
                .map(|(at, _, first)| (at.duration_since(start), first))
                .collect();
            let info = log.info(&key).await.ok().flatten();
            let held = info.map_or(0, |i| i.count);
            let count = match seg.status {
                SegmentStatus::Sealed { count } => {
                    if !info.is_some_and(|i| i.sealed && i.count == count) {
                        truth.problems.push(format!(
                            "{key}: metadata says sealed with {count} entries; node {} holds \
                             {info:?}",
                            seg.leader
                        ));
                    }
                    count
                }
                SegmentStatus::Open => held,
                other => {
                    truth.problems.push(format!(
                        "{key} (node {}) is still {other:?} after every node is back",
                        seg.leader
                    ));
                    held
                }
            };
            let entries = log
                .read(&key, 0, count as usize, usize::MAX)
                .await
                .unwrap_or_default();
            if (entries.len() as u64) < count {
                truth.problems.push(format!(
                    "{key}: node {} serves {} of its {count} entries",
                    seg.leader,
                    entries.len()
                ));
            }
            for (index, payload) in entries.into_iter().enumerate() {
                // The append that wrote an index last is the one whose entry
                // is there (a power cut lets an index be written again).
                let appended = history
                    .iter()
                    .rev()
                    .find(|(_, first)| *first <= index as u64)
                    .map(|(at, _)| *at);
                out.entries.push(Stored {
                    payload,
                    segment: seg.id,
                    appended,
                });
            }
            out.segments.push(SegmentTruth {
                id: seg.id,
                leader: seg.leader,
                first_append: history.first().map(|(at, _)| *at),
            });
        }
        truth.topics.insert(name.as_str().to_owned(), out);
    }
    truth
}

/// The fault injector's own state.
struct Faults {
    rng: StdRng,
    last_pause: std::collections::BTreeMap<NodeId, Instant>,
}

impl Faults {
    /// Nodes down, isolated or frozen.
    fn off(world: &World) -> usize {
        world
            .ids()
            .into_iter()
            .filter(|id| world.is_down(*id) || world.is_isolated(*id) || world.is_frozen(*id))
            .count()
    }

    async fn inject(&mut self, run: &Run) {
        let world = &run.world;
        let ids = world.ids();
        let n = ids.len();
        let id = ids[self.rng.gen_range(0..n)];
        // Keep a majority up most of the time: a cluster without one only
        // answers "unavailable", which tests little.
        let may_take = Self::off(world) * 2 + 2 < n || self.rng.gen_bool(0.1);
        let roll = self.rng.gen_range(0..100);
        let what = match roll {
            0..10 if may_take && !world.is_down(id) => {
                world.crash(id).await;
                format!("crash {id} (power cut)")
            }
            10..25 if world.is_down(id) => {
                world.restart(id);
                format!("restart {id}")
            }
            25..35 if may_take && !world.is_isolated(id) => {
                world.isolate(id, true);
                format!("isolate {id}")
            }
            35..50 if world.is_isolated(id) => {
                world.isolate(id, false);
                format!("reconnect {id}")
            }
            50..55 => {
                let other = ids[self.rng.gen_range(0..n)];
                world.cut_pair(id, other);
                format!("cut {id}-{other}")
            }
            55..60 => {
                world.heal_all();
                "heal all, restart all".into()
            }
            60..65 if may_take => {
                let d = Duration::from_millis(self.rng.gen_range(100..=3000));
                world.freeze(id, d, false);
                format!("suspend {id} for {d:?}")
            }
            65..70 if may_take => {
                let now = Instant::now();
                if self
                    .last_pause
                    .get(&id)
                    .is_some_and(|t| now.duration_since(*t) < PAUSE_SPACING)
                {
                    return;
                }
                self.last_pause.insert(id, now);
                let d = Duration::from_millis(self.rng.gen_range(10..=MAX_PAUSE_MS));
                world.freeze(id, d, true);
                format!("pause VM {id} for {d:?}")
            }
            70..82 => {
                let live: Vec<NodeId> = ids
                    .iter()
                    .copied()
                    .filter(|i| {
                        !world.is_down(*i) && !world.is_isolated(*i) && !world.is_frozen(*i)
                    })
                    .collect();
                if live.is_empty() {
                    return;
                }
                let leader = live[self.rng.gen_range(0..live.len())];
                world.metadata.set_leader(Some(leader));
                format!("elect {leader}")
            }
            82..86 => {
                let state = world.metadata.committed();
                let led: Vec<SegmentKey> = state
                    .topics
                    .iter()
                    .filter(|(_, t)| t.current().leader == id)
                    .map(|(name, t)| SegmentKey::new(name.clone(), t.current().id))
                    .collect();
                let Some(key) = led.first() else { return };
                world.fail_sync(id, key);
                format!("fail the sync of {key} on {id}")
            }
            86..90 => {
                let log = world.log(id);
                log.fail_appends(Some("no space left on device (simulated)"));
                let d = Duration::from_millis(self.rng.gen_range(50..=800));
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    log.fail_appends(None);
                });
                format!("disk of {id} full for {d:?}")
            }
            90..95 => {
                let rate = [0.0, 0.02, 0.1][self.rng.gen_range(0..3)];
                world.net.set_drop_rate(rate);
                format!("drop rate {rate}")
            }
            _ => return,
        };
        lock(&run.stats).faults += 1;
        run.note(format!("FAULT {what}"));
    }
}
