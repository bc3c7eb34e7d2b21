//! `GET /metrics` in the Prometheus text format (0.0.4), encoded by
//! `prometheus-client`, the official Rust client.
//!
//! The request path only bumps atomics ([`RequestStats`], the listener's
//! [`ListenerStats`], the WAL's [`WalStats`](walrus_backends::wal::WalStats));
//! everything else (Raft, topics, segments, memory) is read when Prometheus
//! scrapes, from what METRICS and `TOPICS COUNTS` already report, so nothing
//! is counted twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use walrus_backends::stats::{Histogram, HistogramSnapshot};
use walrus_backends::wal::WalStatsSnapshot;
use walrus_core::locks::RwLockExt;
use walrus_core::metadata::SegmentStatus;
use walrus_core::protocol::{Request, Response};
use walrus_core::{ConsensusRole, Node, NodeMetrics, TopicName};

use super::Sources;
use crate::listener::{ClientHandler, ListenerStats};

/// The `command` label of each request kind, in [`command_index`] order.
const COMMANDS: [&str; 16] = [
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
    "remove_node",
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
        Request::RemoveNode { .. } => 15,
    }
}

/// Upper bounds of the latency buckets, in seconds: 100 µs (a PUT under
/// `--fsync interval`) to 10 s (a long-polling READ).
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Client requests and their errors per command, and PUT/GET/READ latency.
/// Payload bytes of the PUTs acknowledged, per topic.
#[derive(Debug)]
pub struct RequestStats {
    requests: [AtomicU64; COMMANDS.len()],
    errors: [AtomicU64; COMMANDS.len()],
    put: Histogram,
    get: Histogram,
    read: Histogram,
    /// Per topic: a read lock and an atomic add per acknowledged write; the
    /// write lock only for a topic's first acknowledged write here (so a
    /// PUT to a topic that does not exist adds no label).
    topic_bytes: RwLock<HashMap<TopicName, Arc<AtomicU64>>>,
}

impl Default for RequestStats {
    fn default() -> Self {
        RequestStats {
            requests: Default::default(),
            errors: Default::default(),
            put: Histogram::seconds(&BUCKETS),
            get: Histogram::seconds(&BUCKETS),
            read: Histogram::seconds(&BUCKETS),
            topic_bytes: RwLock::default(),
        }
    }
}

/// Where an acknowledged write's bytes are added.
enum TopicSlot {
    Known(Arc<AtomicU64>),
    New(TopicName),
}

impl RequestStats {
    fn record(&self, command: usize, answer: &Response, took: Duration) {
        self.requests[command].fetch_add(1, Ordering::Relaxed);
        if matches!(answer, Response::Err(_)) {
            self.errors[command].fetch_add(1, Ordering::Relaxed);
        }
        match command {
            PUT => self.put.observe_duration(took),
            GET => self.get.observe_duration(took),
            READ => self.read.observe_duration(took),
            _ => {}
        }
    }

    /// Looked up before the write: the name is cloned only for a topic not
    /// counted yet.
    fn slot(&self, topic: &TopicName) -> TopicSlot {
        match self.topic_bytes.read_or_recover().get(topic) {
            Some(n) => TopicSlot::Known(n.clone()),
            None => TopicSlot::New(topic.clone()),
        }
    }

    fn add_topic_bytes(&self, slot: TopicSlot, bytes: u64) {
        let counter = match slot {
            TopicSlot::Known(n) => n,
            TopicSlot::New(topic) => self
                .topic_bytes
                .write_or_recover()
                .entry(topic)
                .or_default()
                .clone(),
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }

    fn topic_bytes(&self) -> Vec<(String, u64)> {
        let mut rows: Vec<(String, u64)> = self
            .topic_bytes
            .read_or_recover()
            .iter()
            .map(|(t, n)| (t.as_str().to_string(), n.load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        rows
    }

    /// `(command label, requests, errors)` for every command, for the console.
    pub fn requests_by_command(&self) -> Vec<(&'static str, u64, u64)> {
        COMMANDS
            .iter()
            .zip(self.requests.iter().zip(self.errors.iter()))
            .map(|(c, (n, e))| (*c, n.load(Ordering::Relaxed), e.load(Ordering::Relaxed)))
            .collect()
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
        let written = match &req {
            Request::Put { topic, payload } => Some((self.stats.slot(topic), payload.len())),
            Request::PutBatch { topic, entries, .. } => {
                Some((self.stats.slot(topic), entries.iter().map(Bytes::len).sum()))
            }
            _ => None,
        };
        let start = Instant::now();
        let answer = self.inner.handle(req).await;
        self.stats.record(command, &answer, start.elapsed());
        if let Some((slot, bytes)) = written {
            if matches!(answer, Response::Ok | Response::Stored { .. }) {
                self.stats.add_topic_bytes(slot, bytes as u64);
            }
        }
        answer
    }

    async fn handle_puts(&self, topic: TopicName, payloads: Vec<Bytes>) -> Vec<Response> {
        let slot = self.stats.slot(&topic);
        let sizes: Vec<usize> = payloads.iter().map(Bytes::len).collect();
        let start = Instant::now();
        let answers = self.inner.handle_puts(topic, payloads).await;
        // Each PUT of a batch waited for the whole batch.
        let took = start.elapsed();
        let mut acked = 0u64;
        for (answer, size) in answers.iter().zip(sizes) {
            self.stats.record(PUT, answer, took);
            if matches!(answer, Response::Ok) {
                acked += size as u64;
            }
        }
        if acked > 0 {
            self.stats.add_topic_bytes(slot, acked);
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
    wal: Option<WalStatsSnapshot>,
    memory: Option<Memory>,
}

/// This process's memory, from `/proc/self/status` (Linux), in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Memory {
    virtual_bytes: u64,
    resident: u64,
    /// Resident and not backed by a file: the heap, stacks. What grows
    /// with a leak; the WAL's maps are file-backed and come and go.
    anonymous: u64,
    /// Resident pages of mapped files (the WAL's segment files).
    file: u64,
}

impl Memory {
    fn read() -> Option<Memory> {
        Memory::parse(&std::fs::read_to_string("/proc/self/status").ok()?)
    }

    /// Parses `/proc/<pid>/status`: `VmSize:   1234 kB` lines.
    fn parse(status: &str) -> Option<Memory> {
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            let kib = line[name.len()..].trim().strip_suffix("kB")?.trim();
            kib.parse::<u64>().ok().map(|k| k * 1024)
        };
        Some(Memory {
            virtual_bytes: field("VmSize:")?,
            resident: field("VmRSS:")?,
            anonymous: field("RssAnon:")?,
            file: field("RssFile:")?,
        })
    }
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &HistogramSnapshot,
) -> Result<(), std::fmt::Error> {
    family(encoder, name, help, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
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
            let h = latency.snapshot();
            f.encode_family(&[("command", command)])?
                .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
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
        let mut f = family(
            &mut encoder,
            "walrus_topic_put_bytes",
            "Payload bytes of the writes (PUT, PUTB) this node acknowledged, by topic.",
            MetricType::Counter,
        )?;
        for (topic, bytes) in r.topic_bytes() {
            f.encode_family(&[("topic", topic.as_str())])?
                .encode_counter::<NoLabelSet, _, f64>(&bytes, None)?;
        }
        gauge(
            &mut encoder,
            "walrus_segments_pending",
            "Segments whose count is pending (their leader failed before sealing them).",
            self.segments_pending as i64,
        )?;
        gauge(
            &mut encoder,
            "walrus_segments_under_replicated",
            "Segments (every topic's, from the cluster metadata) with fewer copies than their \
             topic's replication factor: opened with too few live nodes, or holding a copy on a \
             removed or wiped node. Re-replication brings sealed ones back.",
            self.node.under_replicated_segments as i64,
        )?;
        if let Some(wal) = &self.wal {
            counter(
                &mut encoder,
                "walrus_wal_flushes",
                "WAL segment flushes (msync), one per segment per group commit.",
                wal.flushes,
            )?;
            histogram(
                &mut encoder,
                "walrus_wal_sync_duration_seconds",
                "Time one WAL segment flush (msync, i.e. fdatasync of the range) took.",
                &wal.sync_seconds,
            )?;
            histogram(
                &mut encoder,
                "walrus_wal_group_commit_size",
                "Appends (and explicit syncs) answered by one WAL flush: writers sharing a group commit.",
                &wal.group_size,
            )?;
        }
        if let Some(m) = &self.memory {
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory of this process (VmRSS).",
                m.resident as i64,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory of this process (VmSize).",
                m.virtual_bytes as i64,
            )?;
            gauge(
                &mut encoder,
                "walrus_process_anonymous_memory_bytes",
                "Resident memory not backed by a file (RssAnon: heap, stacks): what a leak grows.",
                m.anonymous as i64,
            )?;
            gauge(
                &mut encoder,
                "walrus_process_file_memory_bytes",
                "Resident pages of mapped files (RssFile: mostly the WAL's segment files).",
                m.file as i64,
            )?;
        }
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
pub(super) async fn render(sources: &Sources) -> String {
    let node = &sources.node;
    let metrics = node.metrics();
    let segments_pending = node
        .metadata()
        .state()
        .topics
        .values()
        .flat_map(|t| t.segments.iter())
        .filter(|s| s.status == SegmentStatus::Pending)
        .count() as u64;
    let topic_entries = topic_counts(node)
        .await
        .into_iter()
        .filter_map(|(topic, _, end)| Some((topic, end?)))
        .collect();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        requests: sources.requests.clone(),
        listener: sources.listener.clone(),
        node: metrics,
        topic_entries,
        segments_pending,
        wal: sources.wal.as_ref().map(|w| w.snapshot()),
        memory: Memory::read(),
    }));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .map(|()| text)
        .unwrap_or_else(|e| format!("# encoding the metrics failed: {e}\n"))
}

/// `(topic, first, end)` per topic from TOPICS COUNTS's own rows: one code
/// path for the counts clients, Prometheus and the console see. `end` is
/// `None` for a topic whose end cannot be known now.
pub(super) async fn topic_counts(node: &Node) -> Vec<(String, u64, Option<u64>)> {
    match Node::handle(node, Request::TopicCounts).await {
        Response::Json(text) => serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|row| {
                Some((
                    row["topic"].as_str()?.to_string(),
                    row["first"].as_u64().unwrap_or(0),
                    row["end"].as_u64(),
                ))
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::Memory;

    #[test]
    fn given_a_proc_status_text_when_parsed_should_read_each_figure_in_bytes() {
        let status = "Name:\twalrus-server\nVmSize:\t  204800 kB\nVmRSS:\t   10240 kB\nRssAnon:\t    4096 kB\nRssFile:\t    6144 kB\nRssShmem:\t       0 kB\n";
        assert_eq!(
            Memory::parse(status),
            Some(Memory {
                virtual_bytes: 204800 * 1024,
                resident: 10240 * 1024,
                anonymous: 4096 * 1024,
                file: 6144 * 1024,
            })
        );
        assert_eq!(Memory::parse("VmRSS: lots\n"), None);
    }

    #[test]
    fn given_this_process_when_memory_is_read_should_report_a_resident_size() {
        let m = Memory::read().expect("/proc/self/status on Linux");
        assert!(m.resident > 0 && m.resident <= m.virtual_bytes, "{m:?}");
        assert!(m.anonymous + m.file <= m.resident, "{m:?}");
    }
}
