//! The consumer workloads: `read` (READ by offset), `fetch` (a consumer
//! group's FETCH + COMMIT loop) and `tail-latency` (PUT load with
//! long-polling readers timing each entry from its send to its delivery).
//!
//! Each is a fill step and a measure step, and each checks what it reads:
//! every entry must come back at the offset it was written to, intact, in
//! order and exactly once, so a server that skips, repeats or garbles
//! entries cannot report a good figure (the report's `check` says what was
//! wrong, and `walrus-bench` then exits 2).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use walrus_client::{connect, Stream, TlsConfig};
use walrus_core::protocol::{encode_frame, parse_entry_spans, request::READ_MAX_BYTES};

use crate::payload::{Decoded, PayloadCodec};
use crate::run::register_topics;
use crate::stats::{process_cpu_time, push_summary, ConnStats, Percentiles};
use crate::wire::{authenticate, excerpt, take_frame};

/// Which consumer workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// READ a filled topic from its start to its end, again and again.
    Read,
    /// FETCH + COMMIT a filled topic as a consumer group, again and again.
    Fetch,
    /// PUT load; long-polling readers time each entry's delivery.
    TailLatency,
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Read => "read",
            Mode::Fetch => "fetch",
            Mode::TailLatency => "tail-latency",
        }
    }
}

/// One consumer run, as the CLI (or a test) describes it.
#[derive(Debug, Clone)]
pub struct ConsumeConfig {
    pub mode: Mode,
    /// Everything goes to the first address (the node to read from).
    pub targets: Vec<String>,
    /// The topic is `<prefix>-0`.
    pub topic_prefix: String,
    pub payload_size: usize,
    /// Entries written by the fill step of `read` and `fetch`.
    pub fill: u64,
    /// Entries asked for per READ or FETCH.
    pub read_batch: u32,
    /// How long the measure step goes on (at least one whole pass over the
    /// filled entries for `read` and `fetch`); the writers' time for
    /// `tail-latency`.
    pub duration: Duration,
    /// `tail-latency`: writing connections, each with `depth` PUTs in flight.
    pub connections: usize,
    pub depth: usize,
    /// `tail-latency`: long-polling readers, each on its own connection.
    pub readers: usize,
    /// `tail-latency`: the readers FETCH (and COMMIT) as one consumer group
    /// each, rather than READ.
    pub tail_fetch: bool,
    /// `WAIT` of the long-polling reads.
    pub wait: Duration,
    /// Upper bound for anything that is not measured (fill, read-back after
    /// the writers stopped, one request).
    pub timeout: Duration,
    /// `fetch`: commit with `COMMIT … ASYNC` (applied at once by the node,
    /// made durable behind the consumer's back) instead of a durable COMMIT.
    pub commit_async: bool,
    /// TLS on every connection (`None`: plain TCP).
    pub tls: Option<TlsConfig>,
    /// Sent as `AUTH <token>` first on every connection.
    pub token: Option<walrus_core::Secret>,
}

impl ConsumeConfig {
    pub fn new(mode: Mode, target: impl Into<String>) -> ConsumeConfig {
        ConsumeConfig {
            mode,
            targets: vec![target.into()],
            topic_prefix: "bench".into(),
            payload_size: 1024,
            fill: 100_000,
            read_batch: default_read_batch(mode),
            duration: Duration::from_secs(10),
            connections: 1,
            depth: 1,
            readers: 1,
            tail_fetch: false,
            wait: Duration::from_secs(1),
            timeout: Duration::from_secs(60),
            commit_async: false,
            tls: None,
            token: None,
        }
    }

    pub fn topic(&self) -> String {
        format!("{}-0", self.topic_prefix)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.targets.is_empty() {
            bail!("no target address: give one with --addr host:port");
        }
        if !(1..=10_000).contains(&self.read_batch) {
            bail!(
                "--read-batch must be 1 to 10000 entries, got {}",
                self.read_batch
            );
        }
        if self.wait > Duration::from_secs(60) {
            bail!("--wait-ms must be at most 60000 (the protocol's WAIT limit)");
        }
        match self.mode {
            Mode::Read | Mode::Fetch => {
                if self.fill == 0 {
                    bail!(
                        "--fill must be at least 1 entry: {} reads what it wrote",
                        self.mode.name()
                    );
                }
                // Filled by PUTB: a frame holds at most 64 KiB.
                if self.payload_size > 60_000 {
                    bail!(
                        "--size must be at most 60000 bytes here: the fill writes them with PUTB"
                    );
                }
                PayloadCodec::new(0, self.payload_size).map_err(anyhow::Error::msg)?;
            }
            Mode::TailLatency => {
                if self.connections == 0 || self.depth == 0 || self.readers == 0 {
                    bail!("--connections, --depth and --readers must be at least 1");
                }
                if self.payload_size < STAMP_LEN {
                    bail!(
                        "tail-latency needs payloads of at least {STAMP_LEN} bytes to carry their \
                         send time; got --size {}, use a larger --size",
                        self.payload_size
                    );
                }
            }
        }
        Ok(())
    }
}

/// Entries per READ or FETCH when `--read-batch` is not given: the sizes
/// the measurements of issue 11 ask for.
pub fn default_read_batch(mode: Mode) -> u32 {
    match mode {
        Mode::Fetch => 100,
        Mode::Read | Mode::TailLatency => 1000,
    }
}

/// The fill step's figures.
#[derive(Debug, Clone, Serialize)]
pub struct FillReport {
    pub entries: u64,
    pub entries_per_batch: usize,
    pub elapsed_s: f64,
    pub entries_per_sec: f64,
}

/// Whether what was read is what was written.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub ok: bool,
    /// Entries read and found at their offset, intact and in order.
    pub entries_checked: u64,
    /// Whole passes over the filled entries (`read`, `fetch`).
    pub passes: u64,
    /// Acknowledged PUTs never delivered to a reader (`tail-latency`).
    pub missing: u64,
    /// What was wrong (the first few).
    pub problems: Vec<String>,
    pub problem_count: u64,
}

impl CheckReport {
    fn problem(&mut self, what: String) {
        self.problem_count += 1;
        if self.problems.len() < 10 {
            self.problems.push(what);
        }
    }
}

/// The outcome of a consumer run. The keys shared with the load runs'
/// report (`ops_per_sec`, `mib_per_sec`, `latency_ms`, `errors_total`,
/// `errors`, `client_cpu_pct`) mean the same there: `ops` are entries
/// delivered to the reader(s).
#[derive(Debug, Clone, Serialize)]
pub struct ConsumeReport {
    pub workload: String,
    pub targets: Vec<String>,
    pub topic: String,
    pub payload_size: usize,
    pub read_batch: u32,
    pub connections: usize,
    pub depth: usize,
    pub readers: usize,
    pub fill: Option<FillReport>,
    pub elapsed_s: f64,
    /// Entries read (`read`, `fetch`) or delivered to readers (`tail-latency`).
    pub ops: u64,
    pub ops_per_sec: f64,
    pub mib_per_sec: f64,
    /// READ or FETCH requests (with their COMMIT, for `fetch`) answered.
    pub requests: u64,
    /// `read` and `fetch`: per request; `tail-latency`: from each PUT's
    /// send to the delivery of its entry to a reader.
    pub latency_ms: Percentiles,
    /// `tail-latency`: PUTs acknowledged, and their rate.
    pub puts: Option<u64>,
    pub puts_per_sec: Option<f64>,
    pub errors_total: u64,
    pub errors: BTreeMap<String, u64>,
    pub check: CheckReport,
    pub client_cpu_pct: Option<f64>,
}

impl ConsumeReport {
    /// The report of one reader's figures (the caller adds the rest).
    fn new(
        cfg: &ConsumeConfig,
        topic: &str,
        stats: ConnStats,
        mut check: CheckReport,
        elapsed: Duration,
        entries: u64,
        requests: u64,
    ) -> ConsumeReport {
        check.ok = check.problem_count == 0;
        let secs = elapsed.as_secs_f64().max(1e-9);
        ConsumeReport {
            workload: cfg.mode.name().into(),
            targets: cfg.targets.clone(),
            topic: topic.into(),
            payload_size: cfg.payload_size,
            read_batch: cfg.read_batch,
            connections: 1,
            depth: 1,
            readers: 1,
            fill: None,
            elapsed_s: secs,
            ops: entries,
            ops_per_sec: entries as f64 / secs,
            mib_per_sec: stats.payload_bytes as f64 / (1024.0 * 1024.0) / secs,
            requests,
            latency_ms: Percentiles::of(&stats.latency),
            puts: None,
            puts_per_sec: None,
            errors_total: stats.error_total(),
            errors: stats.errors,
            check,
            client_cpu_pct: None,
        }
    }

    pub fn is_clean(&self) -> bool {
        self.errors_total == 0 && self.check.ok
    }

    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} of {} at {}: {} B entries, batches of {}",
            self.workload,
            self.topic,
            self.targets.join(","),
            self.payload_size,
            self.read_batch
        );
        if self.workload == Mode::TailLatency.name() {
            s.push_str(&format!(
                ", {} writer conn x depth {}, {} reader(s)",
                self.connections, self.depth, self.readers
            ));
        }
        s.push('\n');
        if let Some(f) = &self.fill {
            s.push_str(&format!(
                "  fill: {} entries in {:.2} s ({:.0} entries/s, PUTB of {})\n",
                f.entries, f.elapsed_s, f.entries_per_sec, f.entries_per_batch
            ));
        }
        s.push_str(&format!(
            "  {} entries in {:.2} s: {:.0} entries/s, {:.2} MiB/s, {} requests\n",
            self.ops, self.elapsed_s, self.ops_per_sec, self.mib_per_sec, self.requests
        ));
        if let (Some(p), Some(r)) = (self.puts, self.puts_per_sec) {
            s.push_str(&format!("  writers: {p} PUTs acknowledged, {r:.0}/s\n"));
        }
        let latency = if self.workload == Mode::TailLatency.name() {
            "PUT to delivery ms"
        } else {
            "latency per request ms"
        };
        push_summary(
            &mut s,
            latency,
            &self.latency_ms,
            self.client_cpu_pct,
            &self.errors,
        );
        let c = &self.check;
        s.push_str(&format!(
            "  check: {} ({} entries checked, {} whole passes{})\n",
            if c.ok { "OK" } else { "FAILED" },
            c.entries_checked,
            c.passes,
            if c.missing > 0 {
                format!(", {} acknowledged PUTs never delivered", c.missing)
            } else {
                String::new()
            }
        ));
        for p in &c.problems {
            s.push_str(&format!("    {p}\n"));
        }
        if c.problem_count > c.problems.len() as u64 {
            s.push_str(&format!(
                "    … and {} more\n",
                c.problem_count - c.problems.len() as u64
            ));
        }
        s
    }
}

/// Runs a consumer workload. Fails only on set-up problems (bad
/// configuration, a topic that cannot be registered, a fill the server
/// refused); what happens while measuring is in the report.
pub async fn run(cfg: ConsumeConfig) -> anyhow::Result<ConsumeReport> {
    cfg.validate()?;
    let topic = cfg.topic();
    register_topics(
        &cfg.targets[0],
        std::slice::from_ref(&topic),
        cfg.tls.as_ref(),
        cfg.token.as_ref(),
    )
    .await?;
    match cfg.mode {
        Mode::Read | Mode::Fetch => run_reads(&cfg, &topic).await,
        Mode::TailLatency => run_tail(&cfg, &topic).await,
    }
}

// --- one connection, one request at a time (or a few, pipelined) -----------

/// A connection that sends frames and takes answers in order.
struct Wire {
    addr: String,
    stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    timeout: Duration,
}

impl Wire {
    /// A connection to the run's first address, with its TLS and token.
    async fn connect(cfg: &ConsumeConfig) -> anyhow::Result<Wire> {
        let addr = &cfg.targets[0];
        let timeout = cfg.timeout;
        let mut stream = tokio::time::timeout(timeout, connect(addr, cfg.tls.as_ref()))
            .await
            .map_err(|_| anyhow::anyhow!("connecting to {addr} timed out"))?
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.tcp().set_nodelay(true).context("set TCP_NODELAY")?;
        if let Some(token) = &cfg.token {
            tokio::time::timeout(timeout, authenticate(&mut stream, token))
                .await
                .map_err(|_| anyhow::anyhow!("AUTH at {addr} timed out"))?
                .map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
        }
        Ok(Wire {
            addr: addr.to_string(),
            stream,
            rbuf: BytesMut::with_capacity(2 << 20),
            wbuf: BytesMut::new(),
            timeout,
        })
    }

    fn push(&mut self, body: &[u8]) {
        encode_frame(&mut self.wbuf, body);
    }

    async fn flush(&mut self) -> Result<(), String> {
        let out = self.wbuf.split();
        // A TLS stream may hold encrypted bytes until flushed.
        let written = async {
            self.stream.write_all(&out).await?;
            self.stream.flush().await
        };
        written
            .await
            .map_err(|e| format!("writing to {}: {e}", self.addr))
    }

    /// The next answer, waiting at most `extra` beyond the wire's timeout.
    async fn answer(&mut self, extra: Duration) -> Result<BytesMut, String> {
        let deadline = Instant::now() + self.timeout + extra;
        loop {
            if let Some(body) = take_frame(&mut self.rbuf)? {
                return Ok(body);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => return Err(format!("no answer from {} in time", self.addr)),
                Ok(Ok(0)) => return Err(format!("{} closed the connection", self.addr)),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("reading from {}: {e}", self.addr)),
            }
        }
    }

    async fn request(&mut self, body: &[u8]) -> Result<BytesMut, String> {
        self.push(body);
        self.flush().await?;
        self.answer(Duration::ZERO).await
    }
}

/// The end offset of `topic` (OFFSETS), on `wire`.
async fn end_offset(wire: &mut Wire, topic: &str) -> anyhow::Result<u64> {
    let body = wire
        .request(format!("OFFSETS {topic}").as_bytes())
        .await
        .map_err(anyhow::Error::msg)?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| anyhow::anyhow!("OFFSETS {topic}: unexpected answer {}", excerpt(&body)))?;
    v["end"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("OFFSETS {topic}: no end in {v}"))
}

// --- read and fetch -----------------------------------------------------------

/// Writes `cfg.fill` entries (entry `k` is `codec.encode(k)`) with PUTBs
/// pipelined on one connection, so they land in order; returns the offset
/// of entry 0 (from the first PUTB's answer: entries of an earlier run may
/// not be readable yet, so OFFSETS could say less).
async fn fill(
    cfg: &ConsumeConfig,
    topic: &str,
    codec: &PayloadCodec,
) -> anyhow::Result<(u64, FillReport)> {
    let mut wire = Wire::connect(cfg).await?;
    let mut base = None;
    let per_batch = (60_000 / (cfg.payload_size + 8)).clamp(1, 1000);
    const WINDOW: usize = 16;
    let start = Instant::now();
    let mut written = 0u64;
    let mut payload = Vec::with_capacity(cfg.payload_size);
    while written < cfg.fill {
        let mut expect = Vec::with_capacity(WINDOW);
        let mut next = written;
        while expect.len() < WINDOW && next < cfg.fill {
            let n = (cfg.fill - next).min(per_batch as u64);
            let mut body = format!("PUTB {topic} {n}\n").into_bytes();
            for k in next..next + n {
                payload.clear();
                codec.encode_into(k, &mut payload);
                body.extend_from_slice(format!("{}\n", payload.len()).as_bytes());
                body.extend_from_slice(&payload);
                body.push(b'\n');
            }
            wire.push(&body);
            expect.push((n, next));
            next += n;
        }
        wire.flush().await.map_err(anyhow::Error::msg)?;
        for (n, k) in expect {
            let body = wire
                .answer(Duration::ZERO)
                .await
                .map_err(anyhow::Error::msg)?;
            let first = match base {
                Some(base) => base + k,
                None => {
                    let text = String::from_utf8_lossy(&body);
                    let first = text
                        .strip_prefix(&format!("OK {n} "))
                        .and_then(|f| f.parse::<u64>().ok());
                    *base.insert(first.unwrap_or(0))
                }
            };
            let want = format!("OK {n} {first}");
            if body[..] != *want.as_bytes() {
                bail!(
                    "fill: PUTB of {n} entries at {} answered {:?}, expected {want:?} (entries \
                     written in order on one connection to a topic nobody else writes)",
                    cfg.targets[0],
                    excerpt(&body)
                );
            }
            written += n;
        }
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    Ok((
        base.unwrap_or(0),
        FillReport {
            entries: cfg.fill,
            entries_per_batch: per_batch,
            elapsed_s: elapsed,
            entries_per_sec: cfg.fill as f64 / elapsed,
        },
    ))
}

/// How a reader asks for entries.
enum Via {
    Read,
    /// As group `group`; `commit` is the offset to commit before the next
    /// FETCH (sent with it, in one write: a COMMIT and a FETCH of one
    /// topic on one connection run in the order sent), with `COMMIT …
    /// ASYNC` when `asynchronous`.
    Fetch {
        group: String,
        commit: Option<u64>,
        asynchronous: bool,
    },
}

/// One READ or FETCH (with its COMMIT), checked for its framing and its
/// first offset; the entries are the caller's to check.
struct Reader {
    wire: Wire,
    topic: String,
    via: Via,
    batch: u32,
    /// The offset the next request reads from.
    next: u64,
}

/// One answer of a reader.
struct Got {
    entries: Vec<(u64, Bytes)>,
    at: Instant,
}

impl Reader {
    /// A reader of `topic` on a connection of its own, at `from` (its
    /// group, with FETCH, moved there by its first request).
    async fn open(cfg: &ConsumeConfig, topic: &str, via: Via, from: u64) -> anyhow::Result<Reader> {
        let mut reader = Reader {
            wire: Wire::connect(cfg).await?,
            topic: topic.to_string(),
            via,
            batch: cfg.read_batch,
            next: from,
        };
        reader.seek(from);
        Ok(reader)
    }

    /// Moves the reader (and its group) to `offset`.
    fn seek(&mut self, offset: u64) {
        self.next = offset;
        if let Via::Fetch { commit, .. } = &mut self.via {
            *commit = Some(offset);
        }
    }

    /// Sends one request and takes its answer. `Err` for an answer that is
    /// not ENTRIES (an `ERR …` or a broken connection: an error to count);
    /// `Ok(Err)` for an answer that breaks the protocol (a check problem).
    async fn step(&mut self, wait: Duration) -> Result<Result<Got, String>, String> {
        let wait_part = if wait.is_zero() {
            String::new()
        } else {
            format!(" WAIT {}", wait.as_millis())
        };
        let committing = match &mut self.via {
            Via::Read => {
                let req = format!(
                    "READ {} {} {} {READ_MAX_BYTES}{wait_part}",
                    self.topic, self.next, self.batch
                );
                self.wire.push(req.as_bytes());
                false
            }
            Via::Fetch {
                group,
                commit,
                asynchronous,
            } => {
                let c = commit.take();
                if let Some(offset) = c {
                    let mode = if *asynchronous { " ASYNC" } else { "" };
                    let req = format!("COMMIT {group} {} {offset}{mode}", self.topic);
                    self.wire.push(req.as_bytes());
                }
                let req = format!(
                    "FETCH {group} {} {} {READ_MAX_BYTES}{wait_part}",
                    self.topic, self.batch
                );
                self.wire.push(req.as_bytes());
                c.is_some()
            }
        };
        self.wire.flush().await?;
        if committing {
            let body = self.wire.answer(Duration::ZERO).await?;
            if &body[..] != b"OK" {
                // The COMMIT did not happen: commit again with the next FETCH.
                if let Via::Fetch { commit, .. } = &mut self.via {
                    *commit = Some(self.next);
                }
                // The FETCH's answer is still to come.
                let _ = self.wire.answer(wait).await?;
                return Err(format!("COMMIT: {}", answer_text(&body)));
            }
        }
        let body = self.wire.answer(wait).await?;
        let at = Instant::now();
        if body.starts_with(b"ERR ") {
            return Err(answer_text(&body));
        }
        let Some((spans, next)) = parse_entry_spans(&body) else {
            return Ok(Err(format!(
                "an answer that is not ENTRIES: {}",
                excerpt(&body)
            )));
        };
        // Slices of the answer: no copy or allocation per entry.
        let body = body.freeze();
        let entries: Vec<(u64, Bytes)> = spans
            .into_iter()
            .map(|(offset, span)| (offset, body.slice(span)))
            .collect();
        let asked = self.next;
        if let Some(((first, _), (last, _))) = entries.first().zip(entries.last()) {
            let consecutive = entries
                .iter()
                .enumerate()
                .all(|(i, (o, _))| *o == first + i as u64);
            if *first != asked || !consecutive || next != last + 1 {
                return Ok(Err(format!(
                    "asked for entries from offset {asked}, got {} entries at {first}..={last} \
                     ({}consecutive) and next {next}",
                    entries.len(),
                    if consecutive { "" } else { "not " }
                )));
            }
        } else if next != asked {
            return Ok(Err(format!(
                "asked for entries from offset {asked}, got none and next {next}"
            )));
        }
        self.next = next;
        if let Via::Fetch { commit, .. } = &mut self.via {
            if !entries.is_empty() {
                *commit = Some(next);
            }
        }
        Ok(Ok(Got { entries, at }))
    }
}

fn answer_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.strip_prefix("ERR ").unwrap_or(&text).to_string()
}

/// Error answers in a row after which a reader gives up.
const MAX_ERRORS_IN_A_ROW: u32 = 50;

async fn run_reads(cfg: &ConsumeConfig, topic: &str) -> anyhow::Result<ConsumeReport> {
    let codec = PayloadCodec::new(rand::random(), cfg.payload_size).map_err(anyhow::Error::msg)?;
    let (base, fill_report) = fill(cfg, topic, &codec).await?;
    let end = base + cfg.fill;
    let via = match cfg.mode {
        Mode::Fetch => Via::Fetch {
            group: format!("{}-bench-{:08x}", cfg.topic_prefix, rand::random::<u32>()),
            commit: None,
            asynchronous: cfg.commit_async,
        },
        _ => Via::Read,
    };
    let mut reader = Reader::open(cfg, topic, via, base).await?;

    let mut stats = ConnStats::default();
    let mut check = CheckReport::default();
    let mut entries = 0u64;
    let mut requests = 0u64;
    let mut errors_in_a_row = 0;
    let cpu_before = process_cpu_time();
    let start = Instant::now();
    let mut last = start;
    // The first pass is read whole whatever the duration (bounded by the
    // timeout), so that every entry is checked once.
    let first_pass_deadline = start + cfg.timeout.max(cfg.duration);
    loop {
        let now = Instant::now();
        if (check.passes >= 1 && now >= start + cfg.duration) || now >= first_pass_deadline {
            break;
        }
        let sent = Instant::now();
        match reader.step(Duration::ZERO).await {
            Err(e) => {
                stats.record_error(e.clone(), 1);
                errors_in_a_row += 1;
                if errors_in_a_row >= MAX_ERRORS_IN_A_ROW {
                    check.problem(format!(
                        "gave up at offset {} after {MAX_ERRORS_IN_A_ROW} errors in a row: {e}",
                        reader.next
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Ok(Err(problem)) => {
                check.problem(problem);
                break;
            }
            Ok(Ok(got)) => {
                errors_in_a_row = 0;
                requests += 1;
                last = got.at;
                let bytes: usize = got.entries.iter().map(|(_, p)| p.len()).sum();
                stats.record_ok(got.at - sent, bytes);
                if got.entries.is_empty() {
                    check.problem(format!(
                        "no entry at offset {}, though the fill wrote up to {end}",
                        reader.next
                    ));
                    break;
                }
                let mut bad = false;
                for (offset, payload) in &got.entries {
                    if *offset >= end {
                        check.problem(format!(
                            "an entry at offset {offset}, past the last one written ({})",
                            end - 1
                        ));
                        bad = true;
                        break;
                    }
                    match codec.decode(payload) {
                        Decoded::Ours(k) if k == offset - base => check.entries_checked += 1,
                        other => {
                            check.problem(format!(
                                "offset {offset} holds {}, not entry {} of the fill",
                                describe(other),
                                offset - base
                            ));
                            bad = true;
                            break;
                        }
                    }
                }
                if bad {
                    break;
                }
                entries += got.entries.len() as u64;
                if reader.next == end {
                    check.passes += 1;
                    reader.seek(base);
                }
            }
        }
    }
    if check.passes == 0 && check.problem_count == 0 {
        check.problem(format!(
            "read only {} of the {} entries within {:?}",
            reader.next - base,
            cfg.fill,
            cfg.timeout.max(cfg.duration)
        ));
    }
    let mut report = ConsumeReport::new(cfg, topic, stats, check, last - start, entries, requests);
    report.fill = Some(fill_report);
    report.client_cpu_pct = cpu_pct(cpu_before, start);
    Ok(report)
}

fn describe(d: Decoded) -> String {
    match d {
        Decoded::Ours(k) => format!("entry {k} of the fill"),
        Decoded::Foreign => "an entry this run did not write".into(),
        Decoded::Corrupt => "a damaged entry".into(),
    }
}

fn cpu_pct(before: Option<Duration>, start: Instant) -> Option<f64> {
    let after = process_cpu_time()?;
    let wall = start.elapsed().as_secs_f64().max(1e-9);
    Some(100.0 * (after - before?).as_secs_f64() / wall)
}

// --- tail latency ---------------------------------------------------------------

/// `tl:<run, 16 hex>:<writer, 8 hex>:<sequence, 16 hex>:<send time in ns
/// since the run's start, 16 hex>:`, then `x` up to the payload size.
const STAMP_LEN: usize = 3 + 16 + 1 + 8 + 1 + 16 + 1 + 16 + 1;

fn stamp(out: &mut Vec<u8>, run: u64, writer: u32, seq: u64, ns: u64, size: usize) {
    use std::io::Write;
    let _ = write!(out, "tl:{run:016x}:{writer:08x}:{seq:016x}:{ns:016x}:");
    out.resize(out.len() + size - STAMP_LEN, b'x');
}

/// `(writer, sequence, send ns)` of a payload of run `run`, if it is one,
/// intact and of `size` bytes.
fn unstamp(payload: &[u8], run: u64, size: usize) -> Option<(u32, u64, u64)> {
    if payload.len() != size || !payload.starts_with(b"tl:") {
        return None;
    }
    let hex = |from: usize, len: usize| {
        let s = std::str::from_utf8(payload.get(from..from + len)?).ok()?;
        (payload.get(from + len) == Some(&b':')).then_some(())?;
        u64::from_str_radix(s, 16).ok()
    };
    if hex(3, 16)? != run || payload[STAMP_LEN..].iter().any(|&b| b != b'x') {
        return None;
    }
    Some((hex(20, 8)? as u32, hex(29, 16)?, hex(46, 16)?))
}

/// What one writer sent.
#[derive(Default)]
struct Written {
    sent: u64,
    /// Sequences answered with an error (they may or may not be stored).
    failed: HashSet<u64>,
    stats: ConnStats,
}

async fn write_load(
    cfg: ConsumeConfig,
    topic: String,
    writer: u32,
    run_id: u64,
    start: Instant,
    until: Instant,
) -> Written {
    let mut w = Written::default();
    let mut wire = match Wire::connect(&cfg).await {
        Ok(wire) => wire,
        Err(e) => {
            w.stats.record_error(format!("{e:#}"), 1);
            return w;
        }
    };
    let mut body = Vec::with_capacity(cfg.payload_size + topic.len() + 8);
    while Instant::now() < until {
        let first = w.sent;
        let sent_at = Instant::now();
        for seq in first..first + cfg.depth as u64 {
            body.clear();
            body.extend_from_slice(format!("PUT {topic} ").as_bytes());
            let ns = (Instant::now() - start).as_nanos() as u64;
            stamp(&mut body, run_id, writer, seq, ns, cfg.payload_size);
            wire.push(&body);
        }
        w.sent += cfg.depth as u64;
        if let Err(e) = wire.flush().await {
            w.stats.record_error(e, cfg.depth as u64);
            w.failed.extend(first..w.sent);
            return w;
        }
        for seq in first..w.sent {
            match wire.answer(Duration::ZERO).await {
                Ok(body) if &body[..] == b"OK" => w.stats.record_ok(sent_at.elapsed(), 0),
                Ok(body) => {
                    w.stats.record_error(answer_text(&body), 1);
                    w.failed.insert(seq);
                }
                Err(e) => {
                    w.stats.record_error(e, w.sent - seq);
                    w.failed.extend(seq..w.sent);
                    return w;
                }
            }
        }
    }
    w
}

/// What one long-polling reader saw.
struct Tailed {
    stats: ConnStats,
    check: CheckReport,
    /// Per writer, the sequences delivered, in the order delivered.
    seen: Vec<Vec<u64>>,
    delivered: u64,
    requests: u64,
    last: Instant,
}

/// How long readers keep asking, after the writers are done, while no
/// entry comes and acknowledged ones are still missing.
const SETTLE: Duration = Duration::from_secs(2);

/// Where the readers of a tail-latency run may stop, once the writers are
/// done: every acknowledged PUT is below `must_reach`; PUTs answered with
/// an error may be stored too, up to `may_reach`.
struct StopAt {
    must_reach: AtomicU64,
    may_reach: AtomicU64,
}

async fn tail_reader(
    cfg: ConsumeConfig,
    mut reader: Reader,
    run_id: u64,
    start: Instant,
    stop_at: Arc<StopAt>,
) -> Tailed {
    let mut t = Tailed {
        stats: ConnStats::default(),
        check: CheckReport::default(),
        seen: vec![Vec::new(); cfg.connections],
        delivered: 0,
        requests: 0,
        last: start,
    };
    let mut errors_in_a_row = 0;
    let mut at_end = false;
    let mut empty_since: Option<Instant> = None;
    loop {
        // An entry is readable once durable, which may be a moment after
        // its PUT was answered: once the writers are done, a reader stops
        // when a long-poll finds nothing more past what must be there, or
        // finds nothing for SETTLE (then what is missing is reported).
        let must = stop_at.must_reach.load(Ordering::Acquire);
        if reader.next >= stop_at.may_reach.load(Ordering::Acquire) {
            break;
        }
        if at_end && must != u64::MAX {
            let since = *empty_since.get_or_insert_with(Instant::now);
            if reader.next >= must || since.elapsed() >= SETTLE {
                break;
            }
        }
        if !at_end {
            empty_since = None;
        }
        at_end = false;
        match reader.step(cfg.wait).await {
            Err(e) => {
                t.stats.record_error(e.clone(), 1);
                errors_in_a_row += 1;
                if errors_in_a_row >= MAX_ERRORS_IN_A_ROW {
                    t.check.problem(format!(
                        "a reader gave up at offset {} after {MAX_ERRORS_IN_A_ROW} errors in a \
                         row: {e}",
                        reader.next
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(Err(problem)) => {
                t.check.problem(problem);
                break;
            }
            Ok(Ok(got)) => {
                errors_in_a_row = 0;
                t.requests += 1;
                at_end = got.entries.is_empty();
                if !at_end {
                    t.last = got.at;
                }
                let now_ns = (got.at - start).as_nanos() as u64;
                for (offset, payload) in &got.entries {
                    let Some((writer, seq, ns)) = unstamp(payload, run_id, cfg.payload_size) else {
                        // The end of an earlier run on this topic that was
                        // not readable yet when this one looked for the end.
                        if t.delivered == 0 && payload.starts_with(b"tl:") {
                            continue;
                        }
                        t.check.problem(format!(
                            "offset {offset} holds {}, not a PUT of this run",
                            excerpt(payload)
                        ));
                        continue;
                    };
                    let Some(seen) = t.seen.get_mut(writer as usize) else {
                        t.check
                            .problem(format!("offset {offset} names writer {writer}, unknown"));
                        continue;
                    };
                    if seen.last().is_some_and(|&prev| prev >= seq) {
                        t.check.problem(format!(
                            "offset {offset}: PUT {seq} of writer {writer} after its PUT {} \
                             (out of order or twice)",
                            seen[seen.len() - 1]
                        ));
                    }
                    seen.push(seq);
                    t.delivered += 1;
                    t.check.entries_checked += 1;
                    t.stats.record_ok(
                        Duration::from_nanos(now_ns.saturating_sub(ns)),
                        payload.len(),
                    );
                }
            }
        }
    }
    t
}

async fn run_tail(cfg: &ConsumeConfig, topic: &str) -> anyhow::Result<ConsumeReport> {
    let run_id: u64 = rand::random();
    let mut probe = Wire::connect(cfg).await?;
    let base = end_offset(&mut probe, topic).await?;
    let stop_at = Arc::new(StopAt {
        must_reach: AtomicU64::new(u64::MAX),
        may_reach: AtomicU64::new(u64::MAX),
    });
    let start = Instant::now();
    let mut readers = Vec::with_capacity(cfg.readers);
    for i in 0..cfg.readers {
        let via = if cfg.tail_fetch {
            Via::Fetch {
                group: format!("{}-tail-{run_id:016x}-{i}", cfg.topic_prefix),
                commit: None,
                asynchronous: cfg.commit_async,
            }
        } else {
            Via::Read
        };
        let reader = Reader::open(cfg, topic, via, base).await?;
        readers.push(tokio::spawn(tail_reader(
            cfg.clone(),
            reader,
            run_id,
            start,
            stop_at.clone(),
        )));
    }
    let cpu_before = process_cpu_time();
    // The readers are waiting at the end before the first PUT goes out.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let writers_start = Instant::now();
    let until = writers_start + cfg.duration;
    let writers: Vec<_> = (0..cfg.connections)
        .map(|i| {
            tokio::spawn(write_load(
                cfg.clone(),
                topic.to_string(),
                i as u32,
                run_id,
                start,
                until,
            ))
        })
        .collect();
    let mut written = Vec::with_capacity(writers.len());
    for w in writers {
        written.push(w.await.context("a writer panicked")?);
    }
    let writers_elapsed = writers_start.elapsed().as_secs_f64().max(1e-9);
    let sent: u64 = written.iter().map(|w| w.sent).sum();
    let failed: u64 = written.iter().map(|w| w.failed.len() as u64).sum();
    let end = base + sent - failed;
    stop_at.may_reach.store(base + sent, Ordering::Release);
    stop_at.must_reach.store(end, Ordering::Release);

    let mut stats = ConnStats::default();
    let mut check = CheckReport::default();
    let mut delivered = 0;
    let mut requests = 0;
    let mut last = writers_start;
    for (i, r) in readers.into_iter().enumerate() {
        let deadline = cfg.timeout + cfg.wait;
        let t = match tokio::time::timeout(deadline, r).await {
            Ok(t) => t.context("a reader panicked")?,
            Err(_) => {
                check.problem(format!(
                    "reader {i} did not reach the end ({end}) within {deadline:?} of the writers' stop"
                ));
                continue;
            }
        };
        stats.merge(&t.stats);
        delivered += t.delivered;
        requests += t.requests;
        last = last.max(t.last);
        check.entries_checked += t.check.entries_checked;
        for p in t.check.problems {
            check.problem(p);
        }
        // Every acknowledged PUT delivered to this reader, nothing it was
        // not sent.
        for (writer, (w, seen)) in written.iter().zip(&t.seen).enumerate() {
            let seen: HashSet<u64> = seen.iter().copied().collect();
            if let Some(extra) = seen.iter().find(|s| **s >= w.sent) {
                check.problem(format!(
                    "reader {i} got PUT {extra} of writer {writer}, which sent {}",
                    w.sent
                ));
            }
            let missing = (0..w.sent)
                .filter(|s| !w.failed.contains(s) && !seen.contains(s))
                .count() as u64;
            if missing > 0 {
                check.missing += missing;
                check.problem(format!(
                    "reader {i}: {missing} acknowledged PUTs of writer {writer} never delivered"
                ));
            }
        }
    }
    let mut puts = 0;
    for w in &written {
        puts += w.stats.ok;
        for (text, n) in &w.stats.errors {
            stats.record_error(format!("PUT: {text}"), *n);
        }
    }
    let mut report = ConsumeReport::new(
        cfg,
        topic,
        stats,
        check,
        last - writers_start,
        delivered,
        requests,
    );
    (report.connections, report.depth, report.readers) = (cfg.connections, cfg.depth, cfg.readers);
    report.puts = Some(puts);
    report.puts_per_sec = Some(puts as f64 / writers_elapsed);
    report.client_cpu_pct = cpu_pct(cpu_before, start);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_stamp_when_read_back_should_give_writer_sequence_and_time() {
        let mut p = Vec::new();
        stamp(&mut p, 7, 3, 99, 123_456_789, 100);
        assert_eq!(p.len(), 100);
        assert!(!p.contains(&b' '), "one word, like the other payloads");
        assert_eq!(unstamp(&p, 7, 100), Some((3, 99, 123_456_789)));
        assert_eq!(unstamp(&p, 8, 100), None, "another run's");
        assert_eq!(unstamp(&p[..99], 7, 100), None, "cut");
        let mut damaged = p.clone();
        damaged[80] = b'y';
        assert_eq!(unstamp(&damaged, 7, 100), None);
    }

    #[test]
    fn given_a_smallest_stamp_when_read_back_should_fit_exactly() {
        let mut p = Vec::new();
        stamp(&mut p, u64::MAX, u32::MAX, u64::MAX, u64::MAX, STAMP_LEN);
        assert_eq!(p.len(), STAMP_LEN);
        assert_eq!(
            unstamp(&p, u64::MAX, STAMP_LEN),
            Some((u32::MAX, u64::MAX, u64::MAX))
        );
    }

    #[test]
    fn given_bad_settings_when_validated_should_refuse_with_the_flag() {
        let mut c = ConsumeConfig::new(Mode::Read, "x:1");
        c.fill = 0;
        assert!(c.validate().unwrap_err().to_string().contains("--fill"));
        let mut c = ConsumeConfig::new(Mode::TailLatency, "x:1");
        c.payload_size = 10;
        assert!(c.validate().unwrap_err().to_string().contains("--size"));
        let mut c = ConsumeConfig::new(Mode::Fetch, "x:1");
        c.read_batch = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--read-batch"));
    }
}
