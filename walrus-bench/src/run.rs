//! A whole load run: register topics, start the connections, show
//! progress, merge what they measured, verify if asked.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;

use crate::conn::{run_connection, ConnPlan, Limit, Workload};
use crate::payload::PayloadCodec;
use crate::stats::{process_cpu_time, ConnStats, Report, RunShape};
use crate::verify::{check, read_topic};
use crate::wire::{classify, excerpt, Answer};

/// How long the run goes on.
#[derive(Debug, Clone, Copy)]
pub enum Length {
    Duration(Duration),
    /// Total requests over all connections.
    Requests(u64),
    /// Total requests, but stop sending after the duration all the same.
    RequestsWithin(u64, Duration),
}

/// One load run, as the CLI (or a test) describes it.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Connections are spread round-robin over these addresses.
    pub targets: Vec<String>,
    pub workload: Workload,
    pub payload_size: usize,
    /// Entries per write: 1 sends `PUT`, more send one `PUTB` of that many
    /// entries (throughput in entries is requests × batch).
    pub batch: usize,
    pub connections: usize,
    pub depth: usize,
    pub length: Length,
    /// Total requests per second over all connections; `None`: as fast as
    /// the depth allows.
    pub rate: Option<f64>,
    pub topics: usize,
    pub topic_prefix: String,
    pub register: bool,
    pub verify: bool,
    pub nodelay: bool,
    pub progress: bool,
    pub drain_timeout: Duration,
    /// Upper bound for the `--verify` read-back.
    pub verify_timeout: Duration,
    /// Every connection (load, set-up, read-back) sends `AUTH <token>`
    /// first: for a server run with `--auth-token-file`.
    pub token: Option<walrus_core::Secret>,
}

impl RunConfig {
    /// A run with the CLI's defaults against `target`.
    pub fn new(target: impl Into<String>) -> RunConfig {
        RunConfig {
            targets: vec![target.into()],
            workload: Workload::Put,
            payload_size: 1024,
            batch: 1,
            connections: 1,
            depth: 1,
            length: Length::Duration(Duration::from_secs(10)),
            rate: None,
            topics: 1,
            topic_prefix: "bench".into(),
            register: false,
            verify: false,
            nodelay: true,
            progress: false,
            drain_timeout: Duration::from_secs(5),
            verify_timeout: Duration::from_secs(300),
            token: None,
        }
    }

    pub fn topic_names(&self) -> Vec<String> {
        (0..self.topics)
            .map(|i| format!("{}-{i}", self.topic_prefix))
            .collect()
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.targets.is_empty() {
            bail!("no target address: give one with --addr host:port");
        }
        if self.connections == 0 || self.depth == 0 || self.topics == 0 {
            bail!("--connections, --depth and --topics must be at least 1");
        }
        if self.payload_size == 0 && self.workload != Workload::Get {
            bail!("--size must be at least 1: the protocol refuses an empty PUT payload");
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                bail!("--rate must be a positive number of requests per second, got {r}");
            }
        }
        if !(1..=10_000).contains(&self.batch) {
            bail!("--batch must be 1 to 10000 entries, got {}", self.batch);
        }
        // A PUTB frame: a header, then `<size>\n<payload>\n` per entry.
        let frame = 300 + self.batch * (self.payload_size + 8);
        if self.batch > 1 && frame > 65536 {
            bail!(
                "--batch {} of --size {} makes a PUTB of about {frame} bytes; a request is at most 65536",
                self.batch,
                self.payload_size
            );
        }
        if self.batch > 1 && self.verify {
            bail!("--verify checks single PUTs: run it without --batch");
        }
        if self.verify && self.workload == Workload::Get {
            bail!("--verify checks what a run wrote: use it with --workload put or mixed");
        }
        Ok(())
    }
}

/// Runs the load and returns the report. Fails only on set-up problems
/// (bad configuration, a topic that cannot be registered); everything
/// during the run is counted in the report.
pub async fn run(cfg: RunConfig) -> anyhow::Result<Report> {
    cfg.validate()?;
    let topics = Arc::new(cfg.topic_names());
    if cfg.register {
        register_topics(&cfg.targets[0], &topics, cfg.token.as_ref()).await?;
    }
    let codec = if cfg.verify {
        Some(PayloadCodec::new(rand::random(), cfg.payload_size).map_err(anyhow::Error::msg)?)
    } else {
        None
    };

    let progress = Arc::new(AtomicU64::new(0));
    let cpu_before = process_cpu_time();
    let start = Instant::now();
    let per_conn_interval = cfg
        .rate
        .map(|r| Duration::from_secs_f64(cfg.connections as f64 / r));
    let mut handles = Vec::with_capacity(cfg.connections);
    for i in 0..cfg.connections {
        let share = |n: u64| {
            let c = cfg.connections as u64;
            n / c + u64::from((i as u64) < n % c)
        };
        let limit = match cfg.length {
            Length::Duration(d) => Limit {
                count: None,
                until: Some(start + d),
            },
            Length::Requests(n) => Limit {
                count: Some(share(n)),
                until: None,
            },
            Length::RequestsWithin(n, d) => Limit {
                count: Some(share(n)),
                until: Some(start + d),
            },
        };
        // Stagger the connections over one interval so that a rate does
        // not arrive in bursts of `connections` requests.
        let schedule =
            per_conn_interval.map(|iv| (start + iv.mul_f64(i as f64 / cfg.connections as f64), iv));
        let plan = ConnPlan {
            index: i,
            addr: cfg.targets[i % cfg.targets.len()].clone(),
            workload: cfg.workload,
            topics: topics.clone(),
            payload_size: cfg.payload_size,
            batch: cfg.batch,
            depth: cfg.depth,
            nodelay: cfg.nodelay,
            limit,
            schedule,
            codec: codec.clone(),
            drain_timeout: cfg.drain_timeout,
            progress: progress.clone(),
            token: cfg.token.clone(),
        };
        handles.push(tokio::spawn(run_connection(plan)));
    }

    let bar = cfg.progress.then(|| progress_bar(&cfg));
    let ticker = bar.clone().map(|bar| {
        let progress = progress.clone();
        let length = cfg.length;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let done = progress.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64();
                match length {
                    Length::Duration(_) => bar.set_position(start.elapsed().as_millis() as u64),
                    Length::Requests(_) | Length::RequestsWithin(..) => bar.set_position(done),
                }
                bar.set_message(format!("{done} ok, {:.0}/s", done as f64 / secs.max(1e-3)));
            }
        })
    });

    let mut total = ConnStats::default();
    let mut acked = Vec::new();
    let mut reads = Vec::new();
    let mut last = start;
    for h in handles {
        let outcome = h.await.context("a load connection panicked")?;
        total.merge(&outcome.stats);
        acked.extend(outcome.acked);
        reads.push(outcome.reads);
        if let Some(f) = outcome.finished {
            last = last.max(f);
        }
    }
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    let shape = RunShape {
        workload: cfg.workload.name().to_string(),
        targets: cfg.targets.clone(),
        connections: cfg.connections,
        depth: cfg.depth,
        payload_size: cfg.payload_size,
        topics: cfg.topics,
        rate: cfg.rate,
        nodelay: cfg.nodelay,
    };
    let mut report = Report::new(shape, &total, last - start);
    if let (Some(before), Some(after)) = (cpu_before, process_cpu_time()) {
        let wall = start.elapsed().as_secs_f64().max(1e-9);
        report.client_cpu_pct = Some(100.0 * (after - before).as_secs_f64() / wall);
    }

    if let Some(codec) = codec {
        let deadline = Instant::now() + cfg.verify_timeout;
        let mut read_errors = BTreeMap::new();
        let mut stopped = Vec::new();
        for (i, topic) in topics.iter().enumerate() {
            let found = read_topic(
                crate::verify::Target {
                    addr: &cfg.targets[0],
                    token: cfg.token.as_ref(),
                },
                topic,
                &codec,
                32,
                deadline,
                &mut read_errors,
                &mut stopped,
            )
            .await;
            reads.push(found.into_iter().map(|d| (i as u32, d)).collect());
        }
        report.verify = Some(check(&acked, &reads, read_errors, stopped));
    }
    Ok(report)
}

/// Sends `REGISTER` for each topic; any answer but `OK` stops the run.
pub async fn register_topics(
    addr: &str,
    topics: &[String],
    token: Option<&walrus_core::Secret>,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(10);
    let mut client = walrus_client::Client::new(addr)
        .with_timeout(timeout)
        .with_connect_timeout(timeout);
    if let Some(token) = token {
        client = client.with_auth(token.expose());
    }
    for t in topics {
        let body = client
            .send_raw(&format!("REGISTER {t}"))
            .await
            .with_context(|| format!("REGISTER {t} at {addr}"))?;
        let body = body.as_bytes();
        match classify(body) {
            Answer::Ok => {}
            Answer::Err(e) => bail!("REGISTER {t} at {addr} failed: {e}"),
            _ => bail!(
                "REGISTER {t} at {addr}: unexpected answer {}",
                excerpt(body)
            ),
        }
    }
    Ok(())
}

fn progress_bar(cfg: &RunConfig) -> ProgressBar {
    let (len, unit) = match cfg.length {
        Length::Duration(d) => (d.as_millis() as u64, "ms"),
        Length::Requests(n) | Length::RequestsWithin(n, _) => (n, "req"),
    };
    let bar = ProgressBar::new(len);
    let template =
        format!("{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}
