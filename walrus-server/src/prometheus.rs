//! `--metrics-addr`: `GET /metrics` in the Prometheus text format (0.0.4),
//! encoded by `prometheus-client`, the official Rust client.
//!
//! The request path only bumps atomics ([`RequestStats`], the listener's
//! [`ListenerStats`]); everything else (Raft, topics, segments) is read
//! when Prometheus scrapes, from what METRICS and `TOPICS COUNTS` already
//! report, so nothing is counted twice.
//!
//! The HTTP side is a minimal HTTP/1.1 responder on tokio: no HTTP crate is
//! in the dependency tree, and one GET path with `Connection: close` does
//! not justify adding hyper.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use walrus_core::metadata::SegmentStatus;
use walrus_core::protocol::{Request, Response};
use walrus_core::{ConsensusRole, Node, NodeMetrics, TopicName};

use crate::listener::{ClientHandler, ListenerStats};

/// The `command` label of each request kind, in [`command_index`] order.
const COMMANDS: [&str; 15] = [
    "register",
    "put",
    "putb",
    "get",
    "state",
    "metrics",
    "ping",
    "topics",
    "topic_counts",
    "read",
    "offsets",
    "fetch",
    "commit",
    "replace_storage",
    "config",
];
const PUT: usize = 1;
const GET: usize = 3;
const READ: usize = 9;

fn command_index(req: &Request) -> usize {
    match req {
        Request::Register(_) | Request::RegisterRetaining { .. } => 0,
        Request::Put { .. } => PUT,
        Request::PutBatch { .. } => 2,
        Request::Get(_) => GET,
        Request::State(_) => 4,
        Request::Metrics => 5,
        Request::Ping => 6,
        Request::Topics => 7,
        Request::TopicCounts => 8,
        Request::Read { .. } => READ,
        Request::Offsets(_) => 10,
        Request::Fetch { .. } => 11,
        Request::Commit { .. } => 12,
        Request::ReplaceStorage { .. } => 13,
        Request::Config { .. } => 14,
    }
}

/// Upper bounds of the latency buckets, in seconds: 100 µs (a PUT under
/// `--fsync interval`) to 10 s (a long-polling READ).
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A latency histogram of atomics (prometheus-client's own takes a lock
/// per observation).
#[derive(Debug, Default)]
struct Latency {
    /// Observations per bucket, not cumulative; the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Latency {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// `(sum in seconds, count, buckets)`, each bucket's own count:
    /// prometheus-client's encoder makes them cumulative.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let bound = BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
                (bound, n.load(Ordering::Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

/// Client requests and their errors per command, and PUT/GET/READ latency.
#[derive(Debug, Default)]
pub struct RequestStats {
    requests: [AtomicU64; COMMANDS.len()],
    errors: [AtomicU64; COMMANDS.len()],
    put: Latency,
    get: Latency,
    read: Latency,
}

impl RequestStats {
    fn record(&self, command: usize, answer: &Response, took: Duration) {
        self.requests[command].fetch_add(1, Ordering::Relaxed);
        if matches!(answer, Response::Err(_)) {
            self.errors[command].fetch_add(1, Ordering::Relaxed);
        }
        match command {
            PUT => self.put.observe(took),
            GET => self.get.observe(took),
            READ => self.read.observe(took),
            _ => {}
        }
    }
}

/// A [`ClientHandler`] that counts what passes through to `inner`.
pub struct Instrumented<H: ?Sized> {
    stats: Arc<RequestStats>,
    inner: Arc<H>,
}

impl<H: ClientHandler + ?Sized> Instrumented<H> {
    pub fn new(inner: Arc<H>, stats: Arc<RequestStats>) -> Self {
        Instrumented { stats, inner }
    }
}

#[async_trait]
impl<H: ClientHandler + ?Sized> ClientHandler for Instrumented<H> {
    async fn handle(&self, req: Request) -> Response {
        let command = command_index(&req);
        let start = Instant::now();
        let answer = self.inner.handle(req).await;
        self.stats.record(command, &answer, start.elapsed());
        answer
    }

    async fn handle_puts(&self, topic: TopicName, payloads: Vec<Bytes>) -> Vec<Response> {
        let start = Instant::now();
        let answers = self.inner.handle_puts(topic, payloads).await;
        // Each PUT of a batch waited for the whole batch.
        let took = start.elapsed();
        for answer in &answers {
            self.stats.record(PUT, answer, took);
        }
        answers
    }
}

/// What one scrape reports, read before encoding (the topic counts need
/// an await; prometheus-client encodes synchronously).
#[derive(Debug)]
struct Scrape {
    requests: Arc<RequestStats>,
    listener: Arc<ListenerStats>,
    node: NodeMetrics,
    /// `(topic, entries)`; topics whose count could not be read are left out.
    topic_entries: Vec<(String, u64)>,
    segments_pending: u64,
}

fn family<'a>(
    encoder: &'a mut DescriptorEncoder,
    name: &'a str,
    help: &str,
    kind: MetricType,
) -> Result<prometheus_client::encoding::MetricEncoder<'a>, std::fmt::Error> {
    encoder.encode_descriptor(name, help, None, kind)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    family(encoder, name, help, MetricType::Gauge)?.encode_gauge(&value)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    family(encoder, name, help, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, f64>(&value, None)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = &self.requests;
        for (name, help, values) in [
            (
                "walrus_requests",
                "Client requests answered, by command.",
                &r.requests,
            ),
            (
                "walrus_request_errors",
                "Client requests answered with ERR, by command.",
                &r.errors,
            ),
        ] {
            let mut f = family(&mut encoder, name, help, MetricType::Counter)?;
            for (command, n) in COMMANDS.iter().zip(values.iter()) {
                f.encode_family(&[("command", *command)])?
                    .encode_counter::<NoLabelSet, _, f64>(&n.load(Ordering::Relaxed), None)?;
            }
        }
        let mut f = family(
            &mut encoder,
            "walrus_request_duration_seconds",
            "Time from a request's start to its answer, for PUT, GET and READ.",
            MetricType::Histogram,
        )?;
        for (command, latency) in [("put", &r.put), ("get", &r.get), ("read", &r.read)] {
            let (sum, count, buckets) = latency.snapshot();
            f.encode_family(&[("command", command)])?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        let l = &self.listener;
        counter(
            &mut encoder,
            "walrus_client_received_bytes",
            "Bytes of client request frames read.",
            l.bytes_in(),
        )?;
        counter(
            &mut encoder,
            "walrus_client_sent_bytes",
            "Bytes of answers written to clients.",
            l.bytes_out(),
        )?;
        counter(
            &mut encoder,
            "walrus_client_connections_accepted",
            "Client connections admitted since start.",
            l.connections_accepted(),
        )?;
        gauge(
            &mut encoder,
            "walrus_client_connections",
            "Client connections open now.",
            l.connections_open() as i64,
        )?;
        let c = &self.node.consensus;
        gauge(
            &mut encoder,
            "walrus_raft_term",
            "This node's current Raft term.",
            c.term as i64,
        )?;
        gauge(
            &mut encoder,
            "walrus_raft_leader",
            "The Raft leader's node id as this node knows it; -1 when none.",
            c.leader.map_or(-1, |l| l as i64),
        )?;
        gauge(
            &mut encoder,
            "walrus_raft_is_leader",
            "1 when this node is the Raft leader.",
            i64::from(c.role == ConsensusRole::Leader),
        )?;
        gauge(
            &mut encoder,
            "walrus_raft_commit_index",
            "Index of the last Raft entry applied on this node (committed); -1 before any.",
            c.last_applied.as_ref().map_or(-1, |p| p.index as i64),
        )?;
        gauge(
            &mut encoder,
            "walrus_raft_last_log_index",
            "Index of the last entry in this node's Raft log; -1 when empty.",
            c.last_log_index.map_or(-1, |i| i as i64),
        )?;
        gauge(
            &mut encoder,
            "walrus_metadata_version",
            "Version of this node's applied cluster metadata.",
            self.node.metadata_version as i64,
        )?;
        gauge(
            &mut encoder,
            "walrus_topics",
            "Topics in this node's applied metadata.",
            self.node.topics as i64,
        )?;
        let mut f = family(
            &mut encoder,
            "walrus_topic_entries",
            "Entries of a topic (its end offset), as TOPICS COUNTS reports it.",
            MetricType::Gauge,
        )?;
        for (topic, entries) in &self.topic_entries {
            f.encode_family(&[("topic", topic.as_str())])?
                .encode_gauge(&(*entries as i64))?;
        }
        gauge(
            &mut encoder,
            "walrus_segments_pending",
            "Segments whose count is pending (their leader failed before sealing them).",
            self.segments_pending as i64,
        )?;
        let s = &self.node.storage;
        counter(
            &mut encoder,
            "walrus_storage_failed_syncs",
            "WAL syncs that failed.",
            s.failed_syncs,
        )?;
        gauge(
            &mut encoder,
            "walrus_storage_quarantined_segments",
            "Segments quarantined for a damaged WAL file.",
            s.quarantined_segments as i64,
        )?;
        Ok(())
    }
}

/// Reads everything a scrape reports and encodes it.
async fn render(
    node: &Node,
    requests: &Arc<RequestStats>,
    listener: &Arc<ListenerStats>,
) -> String {
    let metrics = node.metrics();
    let segments_pending = node
        .metadata()
        .state()
        .topics
        .values()
        .flat_map(|t| t.segments.iter())
        .filter(|s| s.status == SegmentStatus::Pending)
        .count() as u64;
    // TOPICS COUNTS's own rows: one code path for the counts clients see.
    let topic_entries = match Node::handle(node, Request::TopicCounts).await {
        Response::Json(text) => serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|row| Some((row["topic"].as_str()?.to_string(), row["end"].as_u64()?)))
            .collect(),
        _ => Vec::new(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        requests: requests.clone(),
        listener: listener.clone(),
        node: metrics,
        topic_entries,
        segments_pending,
    }));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .map(|()| text)
        .unwrap_or_else(|e| format!("# encoding the metrics failed: {e}\n"))
}

/// What `/metrics` reads from.
pub struct Sources {
    pub node: Arc<Node>,
    pub requests: Arc<RequestStats>,
    pub listener: Arc<ListenerStats>,
}

/// Serves `GET /metrics` on `listener` until the task is aborted.
pub fn serve(
    listener: TcpListener,
    sources: Sources,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let addr = listener.local_addr()?;
    let sources = Arc::new(sources);
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let sources = sources.clone();
            tokio::spawn(async move {
                // A scraper that stalls is dropped rather than held forever.
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), answer(stream, &sources)).await;
            });
        }
    });
    Ok((addr, task))
}

/// Reads one request head and answers it, then closes the connection.
async fn answer(mut stream: TcpStream, sources: &Sources) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            let _ = respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
            )
            .await;
            return;
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => {
            let body = render(&sources.node, &sources.requests, &sources.listener).await;
            let _ = respond(&mut stream, "200 OK", CONTENT_TYPE, &body).await;
        }
        ("GET", _) => {
            let _ = respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                "not found: the metrics are at /metrics\n",
            )
            .await;
        }
        _ => {
            let _ = respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                "only GET is served\n",
            )
            .await;
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
