//! One load connection: keeps up to `depth` requests in flight, sends them
//! on schedule (as fast as allowed, or at the intended times of a fixed
//! rate) and records every answer.
//!
//! One task per connection, no locks: the connection owns its counters and
//! hands them back when done. Requests due at the same moment go out in one
//! write, as a pipelining client would send them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use walrus_core::protocol::encode_frame;

use crate::payload::{entry_id, Decoded, PayloadCodec};
use crate::stats::ConnStats;
use crate::wire::{classify, excerpt, take_frame, Answer};

/// Which requests a connection sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Put,
    Get,
    /// Each request is a GET with probability `get_percent`/100, else a PUT.
    Mixed {
        get_percent: u8,
    },
}

impl Workload {
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Mixed { .. } => "mixed",
        }
    }
}

/// When a connection stops sending: after `count` requests or at `until`,
/// whichever comes first (at least one is set).
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub count: Option<u64>,
    pub until: Option<Instant>,
}

/// Everything one connection needs to run.
#[derive(Debug, Clone)]
pub struct ConnPlan {
    pub index: usize,
    pub addr: String,
    pub workload: Workload,
    /// Names of all topics; request `n` of connection `i` goes to topic
    /// `(i + n) % topics.len()`.
    pub topics: Arc<Vec<String>>,
    pub payload_size: usize,
    /// Entries per write (above 1: one PUTB each).
    pub batch: usize,
    pub depth: usize,
    pub nodelay: bool,
    pub limit: Limit,
    /// With a rate: when this connection's first request is due, and the
    /// interval between its requests.
    pub schedule: Option<(Instant, Duration)>,
    /// When set, PUT payloads carry ids and acknowledged ids are kept.
    pub codec: Option<PayloadCodec>,
    /// How long to wait for the answers still in flight once sending stops.
    pub drain_timeout: Duration,
    /// Shared count of answered requests, for the progress bar.
    pub progress: Arc<AtomicU64>,
    /// Sent as `AUTH <token>` before the first request.
    pub token: Option<walrus_core::Secret>,
}

/// What a connection brings back.
#[derive(Debug, Default)]
pub struct ConnOutcome {
    pub stats: ConnStats,
    /// `(topic index, entry id)` of PUTs answered OK (with `--verify`).
    pub acked: Vec<(u32, u64)>,
    /// Entries read by GETs during the run (with `--verify`).
    pub reads: Vec<(u32, Decoded)>,
    /// When the connection got its last answer (or gave up).
    pub finished: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
enum Sent {
    Put { topic: u32, id: u64 },
    Get { topic: u32 },
}

struct InFlight {
    /// The intended send time with a rate, else the actual send time.
    start: Instant,
    what: Sent,
}

/// Prebuilt request frames: without `--verify` every PUT to a topic is the
/// same bytes, so the hot path copies instead of formatting.
struct Frames {
    put: Vec<Vec<u8>>,
    put_prefix: Vec<Vec<u8>>,
    get: Vec<Vec<u8>>,
}

impl Frames {
    fn new(topics: &[String], payload_size: usize, batch: usize) -> Frames {
        let payload = vec![b'x'; payload_size];
        let mut frames = Frames {
            put: Vec::new(),
            put_prefix: Vec::new(),
            get: Vec::new(),
        };
        for t in topics {
            let mut body = format!("PUT {t} ").into_bytes();
            frames.put_prefix.push(body.clone());
            if batch > 1 {
                body = format!("PUTB {t} {batch}\n").into_bytes();
                for _ in 0..batch {
                    body.extend_from_slice(format!("{payload_size}\n").as_bytes());
                    body.extend_from_slice(&payload);
                    body.push(b'\n');
                }
            } else {
                body.extend_from_slice(&payload);
            }
            let mut f = BytesMut::new();
            encode_frame(&mut f, &body);
            frames.put.push(f.to_vec());
            let mut f = BytesMut::new();
            encode_frame(&mut f, format!("GET {t}").as_bytes());
            frames.get.push(f.to_vec());
        }
        frames
    }
}

/// Runs one connection to the end of its limit and returns its counters.
/// Never fails: connection problems are counted as errors by their text.
pub async fn run_connection(plan: ConnPlan) -> ConnOutcome {
    let mut out = ConnOutcome::default();
    let stream =
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&plan.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                out.stats
                    .record_error(format!("cannot connect to {}: {e}", plan.addr), 1);
                out.finished = Some(Instant::now());
                return out;
            }
            Err(_) => {
                out.stats
                    .record_error(format!("connecting to {} timed out", plan.addr), 1);
                out.finished = Some(Instant::now());
                return out;
            }
        };
    if let Err(e) = stream.set_nodelay(plan.nodelay) {
        out.stats.record_error(format!("set TCP_NODELAY: {e}"), 1);
    }
    let mut stream = stream;
    if let Some(token) = &plan.token {
        if let Err(e) = crate::wire::authenticate(&mut stream, token).await {
            out.stats.record_error(format!("{}: {e}", plan.addr), 1);
            out.finished = Some(Instant::now());
            return out;
        }
    }
    let mut driver = Driver::new(&plan, stream);
    driver.run(&mut out).await;
    out.finished = Some(Instant::now());
    out
}

struct Driver<'a> {
    plan: &'a ConnPlan,
    stream: TcpStream,
    frames: Frames,
    in_flight: VecDeque<InFlight>,
    sent: u64,
    wbuf: Vec<u8>,
    rbuf: BytesMut,
    topic_count: u32,
    /// Set once the limit is reached: only answers are awaited from then on.
    drain_deadline: Option<Instant>,
    /// All `depth` slots are taken.
    pipeline_full: bool,
    /// When the pipeline last stopped being full: a request due before
    /// then was held back by the server, not by the client's timer.
    last_unblocked: Option<Instant>,
}

impl<'a> Driver<'a> {
    fn new(plan: &'a ConnPlan, stream: TcpStream) -> Self {
        Driver {
            plan,
            stream,
            frames: Frames::new(&plan.topics, plan.payload_size, plan.batch),
            in_flight: VecDeque::with_capacity(plan.depth),
            sent: 0,
            wbuf: Vec::with_capacity(plan.depth * (plan.payload_size + 64)),
            rbuf: BytesMut::with_capacity(64 * 1024),
            topic_count: plan.topics.len() as u32,
            drain_deadline: None,
            pipeline_full: false,
            last_unblocked: None,
        }
    }

    /// The intended send time of the next request, with a rate.
    fn next_due(&self) -> Option<Instant> {
        self.plan
            .schedule
            .map(|(first, interval)| first + interval.mul_f64(self.sent as f64))
    }

    fn limit_reached(&self, now: Instant) -> bool {
        let Limit { count, until } = self.plan.limit;
        count.is_some_and(|n| self.sent >= n)
            || until.is_some_and(|end| match self.next_due() {
                // With a rate the schedule decides: a request due before
                // the end is still sent when the client runs late, unless
                // the server has held everything up past the drain time.
                Some(due) => due >= end || now >= end + self.plan.drain_timeout,
                None => now >= end,
            })
    }

    async fn run(&mut self, out: &mut ConnOutcome) {
        loop {
            let now = Instant::now();
            if self.drain_deadline.is_none() && self.limit_reached(now) {
                self.drain_deadline = Some(now + self.plan.drain_timeout);
            }
            if self.drain_deadline.is_none() {
                self.queue_due_requests(now);
            }
            if !self.wbuf.is_empty() {
                if let Err(e) = self.stream.write_all(&self.wbuf).await {
                    self.fail(out, format!("write failed: {e}"));
                    return;
                }
                self.wbuf.clear();
            }
            // What to wait for besides an answer: the next intended send
            // time, the end of the run, or the end of the drain.
            let mut wake: Option<Instant> = None;
            let mut consider = |t: Instant| wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
            match self.drain_deadline {
                Some(d) => consider(d),
                None => {
                    if self.in_flight.len() < self.plan.depth {
                        if let Some(due) = self.next_due() {
                            consider(due);
                        }
                    }
                    if let Some(end) = self.plan.limit.until {
                        consider(end);
                    }
                }
            }
            if self.in_flight.is_empty() {
                match (self.drain_deadline, wake) {
                    (Some(_), _) => return,
                    (None, Some(t)) => {
                        tokio::time::sleep_until(t).await;
                        continue;
                    }
                    // Nothing in flight, nothing scheduled: cannot happen
                    // with depth >= 1, but never spin.
                    (None, None) => return,
                }
            }
            let read = match wake {
                Some(t) => tokio::select! {
                    r = self.stream.read_buf(&mut self.rbuf) => Some(r),
                    _ = tokio::time::sleep_until(t) => None,
                },
                None => Some(self.stream.read_buf(&mut self.rbuf).await),
            };
            match read {
                None => {
                    if self.drain_deadline.is_some_and(|d| Instant::now() >= d) {
                        let n = self.in_flight.len() as u64;
                        out.stats.record_error(
                            format!(
                                "no answer within {:?} after the run ended",
                                self.plan.drain_timeout
                            ),
                            n,
                        );
                        return;
                    }
                }
                Some(Ok(0)) => {
                    self.fail(out, "server closed the connection".into());
                    return;
                }
                Some(Err(e)) => {
                    self.fail(out, format!("read failed: {e}"));
                    return;
                }
                Some(Ok(_)) => {
                    if let Err(e) = self.handle_answers(out) {
                        self.fail(out, e);
                        return;
                    }
                }
            }
        }
    }

    /// Encodes every request that may go now into the write buffer.
    fn queue_due_requests(&mut self, now: Instant) {
        while self.in_flight.len() < self.plan.depth && !self.limit_reached(now) {
            let start = match self.next_due() {
                Some(due) if due > now => break,
                // Held back because every slot was taken when it was due:
                // the wait counts (no coordinated omission).
                Some(due) if self.last_unblocked.is_some_and(|t| due < t) => due,
                // Slots were free, only the timer (1 ms granularity) or
                // the client's scheduling made it late: not the server's
                // doing, so it counts from the actual send.
                Some(_) => now,
                None => now,
            };
            let topic = ((self.plan.index as u64 + self.sent) % self.topic_count as u64) as u32;
            let is_get = match self.plan.workload {
                Workload::Put => false,
                Workload::Get => true,
                Workload::Mixed { get_percent } => {
                    mix(self.plan.index as u64, self.sent) % 100 < get_percent as u64
                }
            };
            let what = if is_get {
                self.wbuf
                    .extend_from_slice(&self.frames.get[topic as usize]);
                Sent::Get { topic }
            } else {
                let id = entry_id(self.plan.index, self.sent);
                match &self.plan.codec {
                    Some(codec) => {
                        let prefix = &self.frames.put_prefix[topic as usize];
                        let len = (prefix.len() + codec.size()) as u32;
                        self.wbuf.extend_from_slice(&len.to_le_bytes());
                        self.wbuf.extend_from_slice(prefix);
                        codec.encode_into(id, &mut self.wbuf);
                    }
                    None => self
                        .wbuf
                        .extend_from_slice(&self.frames.put[topic as usize]),
                }
                Sent::Put { topic, id }
            };
            self.in_flight.push_back(InFlight { start, what });
            self.sent += 1;
            if self.in_flight.len() == self.plan.depth {
                self.pipeline_full = true;
            }
        }
    }

    fn handle_answers(&mut self, out: &mut ConnOutcome) -> Result<(), String> {
        let now = Instant::now();
        let mut answered = 0u64;
        while let Some(body) = take_frame(&mut self.rbuf)? {
            let Some(req) = self.in_flight.pop_front() else {
                return Err(format!(
                    "server sent an answer to no request: {}",
                    excerpt(&body)
                ));
            };
            answered += 1;
            let latency = now.saturating_duration_since(req.start);
            let verify = self.plan.codec.as_ref();
            match (req.what, classify(&body)) {
                // A PUTB's `OK <n> <first>`: all of the batch is stored.
                (Sent::Put { .. }, Answer::Entry(_)) if self.plan.batch > 1 => {
                    out.stats
                        .record_ok(latency, self.plan.payload_size * self.plan.batch);
                }
                (Sent::Put { topic, id }, Answer::Ok) => {
                    out.stats.record_ok(latency, self.plan.payload_size);
                    if verify.is_some() {
                        out.acked.push((topic, id));
                    }
                }
                (Sent::Get { topic }, Answer::Entry(p)) => {
                    out.stats.record_ok(latency, p.len());
                    if let Some(codec) = verify {
                        out.reads.push((topic, codec.decode(p)));
                    }
                }
                (Sent::Get { .. }, Answer::Empty) => {
                    out.stats.record_ok(latency, 0);
                    out.stats.empty += 1;
                }
                (_, Answer::Err(text)) => out.stats.record_error(text, 1),
                (Sent::Put { .. }, _) => out
                    .stats
                    .record_error(format!("unexpected answer to PUT: {}", excerpt(&body)), 1),
                (Sent::Get { .. }, _) => out
                    .stats
                    .record_error(format!("unexpected answer to GET: {}", excerpt(&body)), 1),
            }
        }
        if answered > 0 && self.pipeline_full {
            self.pipeline_full = false;
            self.last_unblocked = Some(now);
        }
        self.plan.progress.fetch_add(answered, Ordering::Relaxed);
        Ok(())
    }

    /// The connection is unusable: what was in flight is lost.
    fn fail(&mut self, out: &mut ConnOutcome, why: String) {
        let lost = self.in_flight.len() as u64;
        out.stats.record_error(why.clone(), 1);
        if lost > 0 {
            out.stats
                .record_error(format!("unanswered (connection lost: {why})"), lost);
        }
        self.in_flight.clear();
    }
}

/// A cheap, deterministic stand-in for a random draw (splitmix64), so a
/// mixed run sends the same sequence every time.
fn mix(conn: u64, n: u64) -> u64 {
    let mut z = (conn << 48 ^ n).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
