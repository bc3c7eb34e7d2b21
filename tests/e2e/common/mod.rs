//! Harness for end-to-end tests: real `walrus-server` processes on
//! loopback (or in network namespaces), each with its own temp data dir.
//!
//! The server binary is `target/<profile>/walrus-server`, next to this test
//! executable's `deps/` folder; it is built on first use if missing
//! (`cargo build --workspace --bins` before `cargo test` keeps it fresh).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use distributed_walrus::cli_client::{CliClient, ClientError};

pub fn server_binary() -> PathBuf {
    static BUILD: Once = Once::new();
    let exe = std::env::current_exe().expect("the test executable has a path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executables live in target/<profile>/deps");
    let bin = profile_dir.join("walrus-server");
    BUILD.call_once(|| {
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "walrus-server", "--bins"])
                .status()
                .expect("running cargo build for walrus-server");
            assert!(status.success(), "building walrus-server failed");
        }
    });
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

/// A free TCP port on 127.0.0.1, handed out once per test process.
///
/// Taken below the kernel's ephemeral range (32768-60999 on Linux), not
/// from it: a port of that range can be taken by any outgoing connection
/// while its node is down between a kill and a restart. Seen: a node
/// restarted by one test found its client port in use by one of the 4,096
/// connections another test opens. The start point depends on the process
/// id, so test binaries that run at the same time do not walk in step.
pub fn free_port() -> u16 {
    const FIRST: u32 = 10_000;
    const COUNT: u32 = 17_000; // up to 26999: scripts/bench.sh starts at 27000
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919);
    for _ in 0..COUNT {
        let port =
            (FIRST + start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free TCP port on 127.0.0.1 in {FIRST}..{}",
        FIRST + COUNT
    )
}

/// How to start one node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub id: u64,
    pub raft_host: String,
    pub raft_port: u16,
    pub client_host: String,
    pub client_port: u16,
    pub join: Option<String>,
    pub data_dir: PathBuf,
    pub env: Vec<(String, String)>,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
}

impl NodeSpec {
    /// A node on loopback with ports of its own.
    pub fn local(
        id: u64,
        data_dir: &Path,
        join: Option<String>,
        env: Vec<(String, String)>,
    ) -> NodeSpec {
        NodeSpec {
            id,
            raft_host: "127.0.0.1".into(),
            raft_port: free_port(),
            client_host: "127.0.0.1".into(),
            client_port: free_port(),
            join,
            data_dir: data_dir.to_path_buf(),
            env,
            netns: None,
        }
    }

    pub fn client_addr(&self) -> String {
        format!("{}:{}", self.client_host, self.client_port)
    }
    pub fn raft_addr(&self) -> String {
        format!("{}:{}", self.raft_host, self.raft_port)
    }
}

/// One `walrus-server` process (or none while it is down).
pub struct ServerProc {
    pub spec: NodeSpec,
    child: Option<Child>,
    log: PathBuf,
}

impl ServerProc {
    pub fn start(spec: NodeSpec) -> ServerProc {
        let log = spec.data_dir.join(format!("node_{}.log", spec.id));
        let mut p = ServerProc {
            spec,
            child: None,
            log,
        };
        p.spawn();
        p
    }

    pub fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "node {} is already running",
            self.spec.id
        );
        let s = &self.spec;
        let mut cmd = match &s.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(server_binary());
                c
            }
            None => Command::new(server_binary()),
        };
        cmd.arg("--node-id")
            .arg(s.id.to_string())
            .arg("--data-dir")
            .arg(&s.data_dir)
            .arg("--raft-host")
            .arg(&s.raft_host)
            .arg("--raft-port")
            .arg(s.raft_port.to_string())
            .arg("--client-host")
            .arg(&s.client_host)
            .arg("--client-port")
            .arg(s.client_port.to_string());
        // Small WAL files: tests make many small segments.
        cmd.arg("--wal-file-bytes").arg("1048576");
        if let Some(j) = &s.join {
            cmd.arg("--join").arg(j);
        }
        for (k, v) in &s.env {
            cmd.env(k, v);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,openraft=warn");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the node's log file");
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning a file handle"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawning walrus-server"));
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `sig` (as `kill` takes it: `-STOP`, `-CONT`, ...).
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// `kill -9`: no chance to sync or say goodbye.
    pub fn kill9(&mut self) {
        self.signal("-KILL");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        self.signal("-TERM");
        let mut c = self.child.take()?;
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if start.elapsed() > limit {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "node {} did not exit within {limit:?} of SIGTERM",
                    self.spec.id
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit on its own; its exit code, or `None`
    /// if it is still running after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<Option<i32>> {
        let start = Instant::now();
        while start.elapsed() < limit {
            let c = self.child.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // openraft repeats one harmless warning per dropped responder.
        let all: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("OneshotConsumer"))
            .collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- node {} log (last lines) ----\n{}",
                self.spec.id,
                self.log_tail(60)
            );
        }
    }
}

/// Nodes 1..=n of one cluster.
pub struct Cluster {
    // Declared first so the processes stop (and print their logs on a
    // failure) before the directory holding the logs is removed.
    pub nodes: BTreeMap<u64, ServerProc>,
    pub dir: tempfile::TempDir,
}

pub struct ClusterOptions {
    pub env: Vec<(String, String)>,
    /// Added to `env` for one node only (a port of its own, say).
    pub node_env: HashMap<u64, Vec<(String, String)>>,
    /// Per node: (netns, raft host, client host), for partition tests.
    pub netns: Option<HashMap<u64, (String, String, String)>>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            env: vec![("WALRUS_MONITOR_CHECK_MS".into(), "100".into())],
            node_env: HashMap::new(),
            netns: None,
        }
    }
}

impl ClusterOptions {
    /// One copy of each segment (`--replication-factor 1`), for tests of
    /// what losing that copy means.
    pub fn single_copy(mut self) -> Self {
        self.env
            .push(("WALRUS_REPLICATION_FACTOR".into(), "1".into()));
        self
    }

    pub fn segment_limit(mut self, limit: u64) -> Self {
        self.env
            .push(("WALRUS_MAX_SEGMENT_ENTRIES".into(), limit.to_string()));
        self
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep data and full logs of a failed run for a post-mortem.
            self.dir.disable_cleanup(true);
            eprintln!(
                "---- kept the failed cluster's files in {}",
                self.dir.path().display()
            );
        }
    }
}

impl Cluster {
    /// Starts node 1 (bootstrap), then the others with `--join`, one at a
    /// time, and waits until every node answers and knows a leader.
    pub async fn start(n: u64, opts: ClusterOptions) -> Cluster {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            dir,
        };
        let first = c.spec(1, &opts, None);
        let join = Some(first.raft_addr());
        c.nodes.insert(1, ServerProc::start(first));
        c.wait_ready(&[1], Duration::from_secs(30)).await;
        for id in 2..=n {
            let spec = c.spec(id, &opts, join.clone());
            c.nodes.insert(id, ServerProc::start(spec));
            // Membership changes are serialised: one join at a time.
            c.wait_voters(1, id as usize, Duration::from_secs(30)).await;
        }
        let ids: Vec<u64> = (1..=n).collect();
        c.wait_ready(&ids, Duration::from_secs(30)).await;
        c
    }

    fn spec(&self, id: u64, opts: &ClusterOptions, join: Option<String>) -> NodeSpec {
        let (netns, raft_host, client_host) = match &opts.netns {
            Some(m) => {
                let (ns, r, cl) = m[&id].clone();
                (Some(ns), r, cl)
            }
            None => (None, "127.0.0.1".to_string(), "127.0.0.1".to_string()),
        };
        let (raft_port, client_port) = if netns.is_some() {
            (9191, 9091)
        } else {
            (free_port(), free_port())
        };
        NodeSpec {
            id,
            raft_host,
            raft_port,
            client_host,
            client_port,
            join,
            data_dir: self.dir.path().to_path_buf(),
            env: opts
                .env
                .iter()
                .chain(opts.node_env.get(&id).into_iter().flatten())
                .cloned()
                .collect(),
            netns,
        }
    }

    /// Starts node `id` joining the cluster through the lowest running id
    /// (does not wait: see `wait_voters`).
    pub fn join_node(&mut self, id: u64, opts: &ClusterOptions) {
        let via = *self.nodes.keys().next().expect("a running node to join");
        let join = Some(self.nodes[&via].spec.raft_addr());
        let spec = self.spec(id, opts, join);
        self.nodes.insert(id, ServerProc::start(spec));
    }

    pub fn client(&self, id: u64) -> CliClient {
        CliClient::new(self.nodes[&id].spec.client_addr()).with_timeout(Duration::from_secs(10))
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// kill -9 of every node, then a restart of each, until all are ready.
    pub async fn kill9_and_restart_all(&mut self) {
        for id in self.ids() {
            self.nodes.get_mut(&id).unwrap().kill9();
        }
        for id in self.ids() {
            self.nodes.get_mut(&id).unwrap().spawn();
        }
        self.wait_ready(&self.ids(), Duration::from_secs(30)).await;
    }

    /// Waits until each node answers PING and knows a consensus leader.
    pub async fn wait_ready(&self, ids: &[u64], limit: Duration) -> Duration {
        let start = Instant::now();
        for id in ids {
            let c = self.client(*id);
            loop {
                let ok = c.ping().await.is_ok()
                    && matches!(c.metrics().await, Ok(m) if m["current_leader"].as_u64().is_some());
                if ok {
                    break;
                }
                assert!(
                    start.elapsed() < limit,
                    "node {id} not ready within {limit:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        start.elapsed()
    }

    /// Waits until node `via` reports `n` voters.
    pub async fn wait_voters(&self, via: u64, n: usize, limit: Duration) {
        let start = Instant::now();
        let c = self.client(via);
        loop {
            if let Ok(m) = c.metrics().await {
                if voters(&m).len() >= n {
                    return;
                }
            }
            assert!(
                start.elapsed() < limit,
                "cluster did not reach {n} voters within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// REGISTER through `via`, then waits until every running node's
    /// applied metadata has the topic. (A node that has not applied the
    /// CreateTopic yet answers `ERR topic not found`; see the report.)
    pub async fn register(&self, via: u64, topic: &str) {
        self.client(via).register(topic).await.expect("REGISTER");
        let start = Instant::now();
        for id in self.ids() {
            let c = self.client(id);
            while c.state(topic).await.is_err() {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "node {id} never saw topic {topic}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// The consensus leader as node `via` sees it.
    pub async fn leader(&self, via: u64) -> Option<u64> {
        self.client(via).metrics().await.ok()?["current_leader"].as_u64()
    }
}

/// The voters in a METRICS answer (`membership_config.membership.configs`,
/// last config).
pub fn voters(metrics: &serde_json::Value) -> Vec<u64> {
    let configs = &metrics["membership_config"]["membership"]["configs"];
    let Some(last) = configs.as_array().and_then(|a| a.last()) else {
        return Vec::new();
    };
    match last {
        serde_json::Value::Array(ids) => ids.iter().filter_map(|v| v.as_u64()).collect(),
        serde_json::Value::Object(m) => m.keys().filter_map(|k| k.parse().ok()).collect(),
        _ => Vec::new(),
    }
}

/// True for the errors the protocol says a write can be retried after
/// without risk of a duplicate (`NotLeaderError`, `write lease expired`,
/// `unavailable: …`, no connection). Writers retry these, so a write such
/// an answer hid would be read twice and fail `check_reads`.
pub fn retry_safe(e: &ClientError) -> bool {
    e.is_retryable()
}

/// What one writer saw: every payload it got OK for, in order, and the
/// ones whose outcome is unknown (connection broke mid-request).
#[derive(Default, Debug, Clone)]
pub struct WriterLog {
    pub acked: Vec<String>,
    pub unknown: Vec<String>,
    /// Longest time between two OKs, and when it started.
    pub longest_gap: Duration,
    pub ack_times: Vec<Instant>,
    /// Every error seen, with how often.
    pub errors: BTreeMap<String, usize>,
    /// Payloads given up on after only retry-safe errors (never applied,
    /// per the protocol).
    pub abandoned: Vec<String>,
    /// Payloads that saw errors before their outcome, with those errors.
    pub attempts: HashMap<String, Vec<String>>,
}

impl WriterLog {
    /// The last OK in `from..to`, relative to `from` (zero when none): how
    /// long a cut-off node went on acknowledging.
    pub fn last_ok_between(&self, from: Instant, to: Instant) -> Duration {
        self.ack_times
            .iter()
            .filter(|t| **t > from && **t < to)
            .map(|t| *t - from)
            .max()
            .unwrap_or_default()
    }

    /// The first OK after `t`, relative to `t`: how soon writes resumed.
    pub fn first_ok_after(&self, t: Instant) -> Option<Duration> {
        self.ack_times.iter().find(|a| **a > t).map(|a| *a - t)
    }
}

/// Writes `prefix-<i>` payloads to `topic` through `addrs` (rotating to the
/// next node when one fails) until `stop` is set, recording every outcome.
pub async fn writer(
    addrs: Vec<String>,
    topic: String,
    prefix: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    max: Option<usize>,
) -> WriterLog {
    let clients: Vec<CliClient> = addrs
        .iter()
        .map(|a| CliClient::new(a.clone()).with_timeout(Duration::from_secs(5)))
        .collect();
    let mut log = WriterLog::default();
    let mut which = 0;
    let mut last_ok = Instant::now();
    let mut i = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && max.is_none_or(|m| i < m) {
        let payload = format!("{prefix}-{i}");
        loop {
            match clients[which].put(&topic, &payload).await {
                Ok(()) => {
                    let now = Instant::now();
                    log.longest_gap = log.longest_gap.max(now - last_ok);
                    last_ok = now;
                    log.acked.push(payload.clone());
                    log.ack_times.push(now);
                    break;
                }
                Err(e) if retry_safe(&e) => {
                    *log.errors.entry(e.to_string()).or_default() += 1;
                    log.attempts
                        .entry(payload.clone())
                        .or_default()
                        .push(e.to_string());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        // Every answer said "not applied": give up on it.
                        log.abandoned.push(payload.clone());
                        break;
                    }
                }
                Err(e) => {
                    *log.errors.entry(e.to_string()).or_default() += 1;
                    log.attempts
                        .entry(payload.clone())
                        .or_default()
                        .push(e.to_string());
                    // The write may have been applied (a timeout, a broken
                    // connection): never resend, record as unknown, move on.
                    log.unknown.push(payload.clone());
                    which = (which + 1) % clients.len();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    break;
                }
            }
        }
        i += 1;
    }
    log
}

/// Reads the whole topic through the shared cursor via `addr`, retrying
/// `ERR unavailable` (a segment on a node that is down or catching up).
pub async fn drain(addr: &str, topic: &str, limit: Duration) -> Vec<String> {
    let c = CliClient::new(addr.to_string()).with_timeout(Duration::from_secs(10));
    let start = Instant::now();
    let mut out = Vec::new();
    loop {
        assert!(
            start.elapsed() < limit,
            "draining {topic} took over {limit:?}; got {} so far",
            out.len()
        );
        match c.get(topic).await {
            Ok(Some(e)) => out.push(e),
            Ok(None) => return out,
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("GET {topic} failed: {e}"),
        }
    }
}

/// Checks what was read against what writers saw: every acked payload read
/// exactly once, unknown ones at most once, nothing else, and each writer's
/// acked payloads in the order they were acked.
pub fn check_reads(read: &[String], writers: &[WriterLog]) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for r in read {
        *seen.entry(r.as_str()).or_default() += 1;
    }
    let mut expected = 0;
    for w in writers {
        for a in &w.acked {
            let n = seen.get(a.as_str()).copied().unwrap_or(0);
            if n != 1 {
                let dump = std::env::temp_dir().join("walrus-e2e-read-dump.txt");
                let _ = std::fs::write(&dump, read.join("\n"));
                let at: Vec<usize> = read
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| *r == a)
                    .map(|(i, _)| i)
                    .collect();
                panic!(
                    "acknowledged {a:?} read {n} times (at positions {at:?} of {}, all reads in {}); errors before its OK: {:?}",
                    read.len(),
                    dump.display(),
                    w.attempts.get(a)
                );
            }
            expected += 1;
        }
        for u in &w.unknown {
            assert!(
                seen.get(u.as_str()).copied().unwrap_or(0) <= 1,
                "{u:?} read twice"
            );
        }
    }
    let known: std::collections::HashSet<&str> = writers
        .iter()
        .flat_map(|w| w.acked.iter().chain(w.unknown.iter()))
        .map(|s| s.as_str())
        .collect();
    for r in read {
        if let Some(w) = writers.iter().find(|w| w.abandoned.contains(r)) {
            panic!(
                "read {r:?}, a write every answer to which said it was not applied: {:?}",
                w.attempts.get(r)
            );
        }
        assert!(known.contains(r.as_str()), "read {r:?} that nobody wrote");
    }
    for w in writers {
        let acked: std::collections::HashSet<&str> = w.acked.iter().map(|s| s.as_str()).collect();
        let order: Vec<&str> = read
            .iter()
            .map(|s| s.as_str())
            .filter(|s| acked.contains(s))
            .collect();
        let want: Vec<&str> = w.acked.iter().map(|s| s.as_str()).collect();
        assert!(
            order == want,
            "a writer's acknowledged entries are read out of order"
        );
    }
    assert!(read.len() >= expected);
}

/// Removes replays from a GET sequence: runs that repeat, in the same
/// order, entries already read. That is the at-least-once redelivery the
/// protocol allows when the cursor's owner (the consensus leader) changes:
/// the new owner restarts from the last persisted cursor. Returns the
/// sequence without replays and how many entries were replayed.
pub fn remove_replays(read: &[String]) -> (Vec<String>, usize) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<String> = Vec::with_capacity(read.len());
    let mut replayed = 0;
    let mut i = 0;
    while i < read.len() {
        match first.get(read[i].as_str()) {
            Some(&j) => {
                // Skip the whole run that mirrors read[j..].
                let mut k = 0;
                while i + k < read.len() && j + k < i && read[i + k] == read[j + k] {
                    k += 1;
                }
                replayed += k;
                i += k;
            }
            None => {
                first.insert(read[i].as_str(), i);
                out.push(read[i].clone());
                i += 1;
            }
        }
    }
    (out, replayed)
}

/// Sends raw bytes on a fresh connection and reads one answer (None if the
/// server closed the connection first).
pub async fn raw_exchange(addr: &str, bytes: &[u8]) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(bytes).await.ok()?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let mut body = vec![0; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).await.ok()?;
    Some(String::from_utf8_lossy(&body).into_owned())
}

pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Prints a measured figure in a form that is easy to grep from test output.
/// Runs `walrus-cli --addr <addr> <args>` to its end: (exit code, stdout,
/// stderr).
pub fn run_cli(addr: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(server_binary().with_file_name("walrus-cli"))
        .args(["--addr", addr])
        .args(args)
        .output()
        .expect("running walrus-cli");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn report(what: &str, d: Duration) {
    println!("MEASURE {what}: {:.3} s", d.as_secs_f64());
}

pub fn data_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node_{id}"))
}

pub type Shared<T> = Arc<Mutex<T>>;

/// Cluster tests of one test binary run one at a time: on a small machine
/// several clusters at once would starve each other's leases.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
