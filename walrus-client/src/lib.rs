//! The Walrus client library: [`Client`] (async, tokio) and
//! [`blocking::Client`] (the same calls, blocking). It speaks every
//! command of docs/protocol.md and depends on no storage engine (only
//! walrus-core's protocol types; a test checks the dependency tree).
//!
//! ```no_run
//! use walrus_client::Client; // or distributed_walrus::cli_client::CliClient
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Any node takes any request; the others are there for fail-over.
//! let client = Client::with_nodes(["127.0.0.1:9091", "127.0.0.1:9092"]);
//! client.register("logs").await?;
//! client.put("logs", "hello world").await?;
//! assert_eq!(client.get("logs").await?.as_deref(), Some("hello world"));
//! # Ok(()) }
//! ```
//!
//! TLS: [`Client::with_tls`] with a [`TlsConfig`] (the CA that signed the
//! server's certificate), for a server run with `--tls-cert`.
//!
//! One connection is kept open and reused, to one node at a time (see
//! [`Client::with_nodes`] for fail-over). Requests are pipelined with
//! [`Client::put_many`] and [`Client::send_many`]. Frames are cut by
//! walrus-core's [`FrameCodec`], the one decoder of every client side. The server closes a connection
//! that stays silent between requests (`--idle-connection-timeout-ms`), and
//! a restart closes them all; so before a call writes on a kept connection
//! it looks, without waiting, whether the server has closed or reset it,
//! and if so connects again first: nothing was sent, so nothing can be
//! applied twice. A write refused before any byte of the call left (the
//! connection was reset unnoticed) is sent once more on a new connection,
//! for the same reason. Once any byte was written, a lost answer is
//! [`ClientError::NoAnswer`] for a PUT or GET and is never resent. Limit:
//! a close that lands between the look and the write (a window of
//! microseconds, against an idle timeout of minutes) still reads as
//! "outcome unknown". Otherwise a call is never resent on its own, except
//! by [`Client::send_retrying`], which resends only what certainly had
//! no effect.
//!
//! Every error says which of three things happened (see the protocol's
//! Errors section):
//! - [`ClientError::is_retryable`]: certainly not carried out; send again.
//! - [`ClientError::is_outcome_unknown`]: a PUT may or may not be stored (a
//!   GET may have taken an entry nobody got): the server said
//!   `ERR outcome unknown: …`, or the request was sent and no answer came.
//!   Read the topic before sending a PUT again.
//! - anything else: failed; sending it again gives the same answer.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;
use tokio_util::codec::{Decoder, Encoder};
pub use walrus_core::protocol::RetainSetting;
use walrus_core::protocol::{FrameCodec, FrameError};
pub use walrus_core::Retention;
use walrus_core::Secret;

pub mod blocking;

/// The seed's name for [`Client`] (`distributed_walrus::cli_client::CliClient`).
pub type CliClient = Client;

mod batch;
mod tls;
pub use batch::{putb_body, BatchAck, Producer, MAX_BATCH_ENTRIES};
pub use tls::{connect, Stream, TlsConfig};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered `ERR <text>`; this is the text.
    #[error("{0}")]
    Server(String),
    /// The connection could not be made (nothing was sent), or broke during
    /// a request that changes nothing (STATE, METRICS, TOPICS, PING, or an
    /// idempotent REGISTER). Safe to retry.
    #[error("connection to {addr} failed: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// No connection, or no answer to a request that changes nothing,
    /// within the client's timeout. Safe to retry.
    #[error("no answer from {0} within the timeout")]
    Timeout(String),
    /// A PUT or GET was sent and no answer came (the connection broke or the
    /// timeout passed): it may or may not have been carried out.
    #[error(
        "no answer from {addr} to a {verb} that was sent ({why}); {}",
        unknown_advice(verb)
    )]
    NoAnswer {
        addr: String,
        /// `PUT` or `GET`.
        verb: &'static str,
        why: String,
    },
    /// The request cannot be sent as one frame (empty or over 64 KiB).
    #[error("request is {0} bytes; a request must be 1 to 65536 bytes")]
    TooLarge(usize),
    /// The answer did not have the expected form.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The client cannot run here: the blocking client was called from
    /// inside an async runtime (use [`Client`] there), or its runtime could
    /// not be made. Nothing was sent.
    #[error("{0}")]
    Runtime(String),
}

impl ClientError {
    /// True when the request certainly was not carried out, so sending it
    /// again cannot store anything twice: `ERR NotLeaderError`,
    /// `ERR write lease expired`, `ERR unavailable: …`, `ERR too many
    /// connections: …`, a connection that could not be made, and a broken
    /// connection or timeout during a request that changes nothing. False
    /// when the outcome is unknown.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Server(t) => {
                t == "NotLeaderError"
                    || t == "write lease expired"
                    || t.starts_with("unavailable")
                    || t.starts_with("too many connections")
            }
            ClientError::Io { .. } | ClientError::Timeout(_) => true,
            _ => false,
        }
    }

    /// True when the request may or may not have been carried out: the
    /// server answered `ERR outcome unknown: …`, or a PUT or GET was sent
    /// and no answer came. Before sending a PUT again, read the topic to
    /// see whether it is there.
    pub fn is_outcome_unknown(&self) -> bool {
        match self {
            ClientError::Server(t) => t.starts_with("outcome unknown"),
            ClientError::NoAnswer { .. } => true,
            _ => false,
        }
    }
}

impl ClientError {
    /// The same failure for another request of one pipelined exchange (the
    /// `std::io::Error` inside cannot be cloned, so that one is re-made
    /// from its text; its class is kept).
    fn same_again(&self) -> ClientError {
        match self {
            ClientError::Server(t) => ClientError::Server(t.clone()),
            ClientError::Io { addr, source } => ClientError::Io {
                addr: addr.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            ClientError::Timeout(a) => ClientError::Timeout(a.clone()),
            ClientError::NoAnswer { addr, verb, why } => ClientError::NoAnswer {
                addr: addr.clone(),
                verb,
                why: why.clone(),
            },
            ClientError::TooLarge(n) => ClientError::TooLarge(*n),
            ClientError::Protocol(t) => ClientError::Protocol(t.clone()),
            ClientError::Runtime(t) => ClientError::Runtime(t.clone()),
        }
    }
}

fn unknown_advice(verb: &str) -> &'static str {
    if verb == "GET" {
        "it may have taken an entry from the cursor that was never delivered"
    } else {
        "it may or may not be stored: read the topic to check before sending it again"
    }
}

/// The verb of a request that changes state, for which a lost answer
/// leaves the outcome unknown: `PUT` (an append) or `GET` (moves the shared
/// cursor). Every other request reads, or is idempotent (REGISTER,
/// COMMIT).
fn changing_verb(request: &[u8]) -> Option<&'static str> {
    let verb = request.split(|b| *b == b' ').next().unwrap_or_default();
    if verb.eq_ignore_ascii_case(b"PUT") {
        Some("PUT")
    } else if verb.eq_ignore_ascii_case(b"PUTB") {
        Some("PUTB")
    } else if verb.eq_ignore_ascii_case(b"GET") {
        Some("GET")
    } else {
        None
    }
}

/// One entry of a READ, with its offset in the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    /// The payload exactly as it was PUT.
    pub payload: String,
}

/// A READ's answer: entries in offset order, and the offset to read next
/// (the requested one when there were none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBatch {
    pub entries: Vec<Entry>,
    pub next: u64,
}

/// A topic's retention, as `CONFIG <topic>` answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicConfig {
    /// The topic's own retention; `None`: the server default.
    pub retention: Option<Retention>,
    /// The retention in force on the node that answered (its default
    /// filled in).
    pub in_force: Retention,
    /// The first retained offset.
    pub first: u64,
}

/// How much a READ returns and how long it waits for a first entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// 1 to 10,000 entries (default 100).
    pub max_entries: u32,
    /// 1 to 1,048,576 payload bytes (default and most: 1 MiB); one entry
    /// is returned even when it alone is larger.
    pub max_bytes: u32,
    /// Zero answers at once; otherwise a read at the end waits up to this
    /// long (at most 60 s) for the next entry.
    pub wait: Duration,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            max_entries: walrus_core::protocol::request::READ_DEFAULT_MAX_ENTRIES,
            max_bytes: walrus_core::protocol::request::READ_MAX_BYTES,
            wait: Duration::ZERO,
        }
    }
}

/// First pause between retries of [`Client::send_retrying`]; doubles up
/// to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(50);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// How long a connection attempt to one address may take before the next
/// address is tried (default).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Conn {
    stream: Stream,
    /// Answer bytes read and not yet decoded.
    rbuf: BytesMut,
    /// Index of the address this connection went to.
    node: usize,
}

impl Conn {
    /// False when the kept connection can no longer carry a request: the
    /// server closed or reset it, or sent bytes nobody asked for (then
    /// answers and requests no longer pair up). Looks without waiting and
    /// without taking anything from the socket.
    fn is_usable(&self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut byte = 0u8;
        // A direct peek, not tokio's readiness: readiness learns of the
        // server's FIN only when the reactor next runs, which may be after
        // this request is written.
        // SAFETY: the descriptor is open for as long as `self.stream` lives,
        // and `byte` is a valid 1-byte buffer for the call's duration.
        let n = unsafe {
            libc::recv(
                self.stream.tcp().as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        // 0: the server closed its side; > 0: unasked-for bytes; -1 with
        // EAGAIN: open and quiet, the one usable state.
        n < 0 && {
            let e = std::io::Error::last_os_error();
            e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::Interrupted
        }
    }
}

/// A client of a Walrus cluster, through one node at a time. Cheap to
/// share behind an `Arc`; calls on one client are serialised on its
/// connection (see [`Client::put_many`] and [`Client::send_many`] for
/// pipelining on it).
pub struct Client {
    /// Every node may take every request, so any of them will do.
    addrs: Vec<String>,
    /// The address the next connection tries first.
    preferred: AtomicUsize,
    timeout: Duration,
    connect_timeout: Duration,
    tls: Option<TlsConfig>,
    /// Sent as `AUTH <token>` first on every connection.
    token: Option<Secret>,
    conn: Mutex<Option<Conn>>,
}

impl Client {
    /// A client of the node at `addr` (`host:port`). Connects on first use.
    pub fn new(addr: impl Into<String>) -> Self {
        Self::with_nodes([addr.into()])
    }

    /// A client of the cluster whose nodes are at `addrs` (`host:port`
    /// each; a list without any is treated as the default,
    /// `127.0.0.1:9091`). Connects on first use, to the first address that
    /// answers, trying them in order. When a connection cannot be made
    /// or breaks, the next connection starts with the next address, so a
    /// node that is down costs one failed call (or nothing, when the
    /// connection is made afresh), never a stuck client. Fail-over never
    /// resends a request that may have been carried out: the call that saw
    /// the break gets its error (see [`ClientError::is_outcome_unknown`]).
    pub fn with_nodes<A: Into<String>>(addrs: impl IntoIterator<Item = A>) -> Self {
        let mut addrs: Vec<String> = addrs.into_iter().map(Into::into).collect();
        if addrs.is_empty() {
            addrs.push("127.0.0.1:9091".into());
        }
        Client {
            addrs,
            preferred: AtomicUsize::new(0),
            timeout: Duration::from_secs(30),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tls: None,
            token: None,
            conn: Mutex::new(None),
        }
    }

    /// Sets how long a call waits for its answer (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how long a connection attempt to one address may take before
    /// the next address is tried (default 5 s; never more than the call's
    /// timeout).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Speaks TLS to every node (whose client port runs with
    /// `--tls-cert`), verifying each against `tls`'s CA; see [`TlsConfig`].
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Authenticates with `token` (a server started with
    /// `--auth-token-file`): every connection the client opens, the first
    /// and each reconnection or fail-over, sends `AUTH <token>` before any
    /// request. A refused token fails the call with
    /// `ClientError::Server("authentication failed: …")`, having sent
    /// nothing else. The token is kept as a [`Secret`]: it never shows in
    /// `Debug` output or errors.
    pub fn with_auth(mut self, token: impl Into<Vec<u8>>) -> Self {
        self.token = Some(Secret::new(token));
        self
    }

    /// The address the client talks to now (or tries first next).
    pub fn addr(&self) -> &str {
        &self.addrs[self.preferred.load(Ordering::Relaxed) % self.addrs.len()]
    }

    /// Every address the client may use, in the order it tries them.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// `REGISTER <topic>`.
    pub async fn register(&self, topic: &str) -> Result<()> {
        expect_ok(self.send_raw(&format!("REGISTER {topic}")).await?)
    }

    /// `REGISTER <topic> RF <rf>`: creates the topic with `rf` copies of
    /// each segment (fixed at creation; fewer while fewer nodes are live).
    /// Idempotent; a topic that exists with another factor is refused.
    pub async fn register_replicated(&self, topic: &str, rf: u32) -> Result<()> {
        expect_ok(self.send_raw(&format!("REGISTER {topic} RF {rf}")).await?)
    }

    /// `PUT <topic> <payload>`: `Ok` once the entry is durable.
    pub async fn put(&self, topic: &str, payload: impl AsRef<str>) -> Result<()> {
        expect_ok(
            self.send_raw(&format!("PUT {topic} {}", payload.as_ref()))
                .await?,
        )
    }

    /// `GET <topic>`: the next entry of the topic's shared cursor, `None`
    /// at the end of the topic.
    pub async fn get(&self, topic: &str) -> Result<Option<String>> {
        let resp = self.send_raw(&format!("GET {topic}")).await?;
        if resp == "EMPTY" {
            return Ok(None);
        }
        if let Some(p) = resp.strip_prefix("OK ") {
            return Ok(Some(p.to_string()));
        }
        Err(server_error(resp))
    }

    /// `STATE <topic>`: the topic's metadata as JSON.
    pub async fn state(&self, topic: &str) -> Result<serde_json::Value> {
        expect_json(self.send_raw(&format!("STATE {topic}")).await?)
    }

    /// `METRICS`: the node's consensus metrics as JSON.
    pub async fn metrics(&self) -> Result<serde_json::Value> {
        expect_json(self.send_raw("METRICS").await?)
    }

    /// `TOPICS`: the list of topics as JSON.
    pub async fn topics(&self) -> Result<serde_json::Value> {
        expect_json(self.send_raw("TOPICS").await?)
    }

    /// `TOPICS COUNTS`: every topic with `first` and `end` offsets (`end`
    /// is `null`, with an `error`, while it cannot be known).
    pub async fn topic_counts(&self) -> Result<serde_json::Value> {
        expect_json(self.send_raw("TOPICS COUNTS").await?)
    }

    /// `READ <topic> <from> …`: entries from offset `from` on, moving no
    /// cursor (any number of readers, each at its own offset). Keep
    /// reading at `next`. With a `wait`, the call waits that long (plus the
    /// client's timeout) for an entry at the end.
    pub async fn read(&self, topic: &str, from: u64, options: ReadOptions) -> Result<ReadBatch> {
        self.read_like(format!("READ {topic} {from}"), options)
            .await
    }

    /// `FETCH <group> <topic> …`: a READ from the offset `group` last
    /// committed for `topic` (0 when none). Commits nothing: call
    /// [`Client::commit`] with the batch's `next` once its entries are
    /// processed; until then every FETCH (by this or another member, or
    /// after a crash) returns them again.
    pub async fn fetch(&self, group: &str, topic: &str, options: ReadOptions) -> Result<ReadBatch> {
        self.read_like(format!("FETCH {group} {topic}"), options)
            .await
    }

    /// `COMMIT <group> <topic> <offset>`: the group's next FETCH starts at
    /// `offset` (forward or back; from the topic's first offset to its
    /// end). Setting an offset twice is setting it once, so every
    /// [`ClientError::is_retryable`] error, a lost answer included, may
    /// simply be retried.
    pub async fn commit(&self, group: &str, topic: &str, offset: u64) -> Result<()> {
        expect_ok(
            self.send_raw(&format!("COMMIT {group} {topic} {offset}"))
                .await?,
        )
    }

    /// `COMMIT <group> <topic> <offset> ASYNC`: like [`Client::commit`],
    /// but answered once the node that took it applied it in memory (its
    /// FETCHes see it at once); it becomes durable in the background. A
    /// crash of that node before then makes the group fetch again from its
    /// last durable commit (at-least-once). See docs/protocol.md,
    /// "Asynchronous commits".
    pub async fn commit_async(&self, group: &str, topic: &str, offset: u64) -> Result<()> {
        expect_ok(
            self.send_raw(&format!("COMMIT {group} {topic} {offset} ASYNC"))
                .await?,
        )
    }

    /// `SEEK <group> <topic> <offset>`: the same as [`Client::commit`]
    /// (the word says the intent: move the group back or forward).
    pub async fn seek(&self, group: &str, topic: &str, offset: u64) -> Result<()> {
        expect_ok(
            self.send_raw(&format!("SEEK {group} {topic} {offset}"))
                .await?,
        )
    }

    /// `REPLACE-STORAGE <node> <storage-id>` (operator): accepts that node
    /// `node` lost its storage; the answer lists the segments closed as
    /// lost (see the protocol's table and architecture.md, "Storage
    /// identity").
    pub async fn replace_storage(&self, node: u64, storage_id: &str) -> Result<serde_json::Value> {
        expect_json(
            self.send_raw(&format!("REPLACE-STORAGE {node} {storage_id}"))
                .await?,
        )
    }

    /// `REGISTER <topic> RETAIN …`: creates the topic if need be and sets
    /// its retention (on an existing topic, it is [`Client::set_retention`]).
    /// Idempotent.
    pub async fn register_retaining(&self, topic: &str, retain: RetainSetting) -> Result<()> {
        expect_ok(
            self.send_raw(&format!("REGISTER {topic} RETAIN {}", retain.to_words()))
                .await?,
        )
    }

    /// `CONFIG <topic> RETAIN …`: sets the topic's retention (its whole
    /// retention: a limit left out is no limit). Idempotent.
    pub async fn set_retention(&self, topic: &str, retain: RetainSetting) -> Result<()> {
        expect_ok(
            self.send_raw(&format!("CONFIG {topic} RETAIN {}", retain.to_words()))
                .await?,
        )
    }

    /// `CONFIG <topic>`: the topic's retention settings and first offset.
    pub async fn config(&self, topic: &str) -> Result<TopicConfig> {
        let v = expect_json(self.send_raw(&format!("CONFIG {topic}")).await?)?;
        let retention = |key: &str| serde_json::from_value::<Option<Retention>>(v[key].clone());
        match (
            retention("retention"),
            retention("in_force"),
            v["first"].as_u64(),
        ) {
            (Ok(retention), Ok(Some(in_force)), Some(first)) => Ok(TopicConfig {
                retention,
                in_force,
                first,
            }),
            _ => Err(ClientError::Protocol(v.to_string())),
        }
    }

    /// Sends `head` (a READ or FETCH up to its limits) with `options`, and
    /// parses the `ENTRIES` answer.
    async fn read_like(&self, head: String, options: ReadOptions) -> Result<ReadBatch> {
        let mut request = format!("{head} {} {}", options.max_entries, options.max_bytes);
        let wait_ms = options.wait.as_millis();
        if wait_ms > 0 {
            request.push_str(&format!(" WAIT {wait_ms}"));
        }
        let resp = self
            .exchange(&[request.as_bytes()], self.timeout + options.wait)
            .await
            .pop()
            .ok_or_else(|| ClientError::Protocol("no answer".into()))??;
        if resp.starts_with("ERR ") {
            return Err(server_error(resp));
        }
        let Some((entries, next)) = walrus_core::protocol::parse_entries(resp.as_bytes()) else {
            return Err(ClientError::Protocol(resp));
        };
        let entries = entries
            .into_iter()
            .map(|(offset, payload)| {
                String::from_utf8(payload.to_vec())
                    .map(|payload| Entry { offset, payload })
                    .map_err(|_| ClientError::Protocol(format!("entry {offset} is not UTF-8")))
            })
            .collect::<Result<Vec<Entry>>>()?;
        Ok(ReadBatch { entries, next })
    }

    /// `OFFSETS <topic>`: `(first, end)`: the first offset a READ can
    /// start at and one past the last entry readable now.
    pub async fn offsets(&self, topic: &str) -> Result<(u64, u64)> {
        let v = expect_json(self.send_raw(&format!("OFFSETS {topic}")).await?)?;
        match (v["first"].as_u64(), v["end"].as_u64()) {
            (Some(first), Some(end)) => Ok((first, end)),
            _ => Err(ClientError::Protocol(v.to_string())),
        }
    }

    /// `PING`: `Ok` if the node answers.
    pub async fn ping(&self) -> Result<()> {
        let resp = self.send_raw("PING").await?;
        if resp == "OK PONG" {
            Ok(())
        } else {
            Err(server_error(resp))
        }
    }

    /// Sends one request body as it is and returns the answer's text as it
    /// is (an `ERR …` answer is `Ok` here).
    pub async fn send_raw(&self, request: &str) -> Result<String> {
        self.exchange(&[request.as_bytes()], self.timeout)
            .await
            .pop()
            .ok_or_else(|| ClientError::Protocol("no answer".into()))?
    }

    /// Like [`Client::send_raw`], but sends the request again (pausing
    /// 50 ms, doubling up to 1 s) while the answer says it certainly was not
    /// carried out ([`ClientError::is_retryable`]), for up to `patience`.
    /// Never resends after an unknown outcome. Returns the last answer's
    /// text (`ERR …` included) or the last error.
    pub async fn send_retrying(&self, request: &str, patience: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut pause = FIRST_RETRY_PAUSE;
        loop {
            let outcome = self.send_raw(request).await;
            let retry = match &outcome {
                Ok(answer) => answer
                    .strip_prefix("ERR ")
                    .is_some_and(|text| ClientError::Server(text.into()).is_retryable()),
                Err(e) => e.is_retryable(),
            };
            if !retry || tokio::time::Instant::now() + pause > deadline {
                return outcome;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
        }
    }

    /// `PUT` through [`Client::send_retrying`]: `Ok` once stored; an
    /// error that [`ClientError::is_outcome_unknown`] is returned at once.
    pub async fn put_retrying(
        &self,
        topic: &str,
        payload: impl AsRef<str>,
        patience: Duration,
    ) -> Result<()> {
        let request = format!("PUT {topic} {}", payload.as_ref());
        expect_ok(self.send_retrying(&request, patience).await?)
    }

    /// Appends every payload to `topic` over the one connection, pipelined
    /// (up to `window` requests in flight). Entries land in the order given.
    /// Returns one outcome per payload; if the connection breaks, the
    /// payloads without an answer get `Err(ClientError::NoAnswer)`: they may
    /// or may not have been applied.
    pub async fn put_many<P: AsRef<str>>(
        &self,
        topic: &str,
        payloads: &[P],
        window: usize,
    ) -> Vec<Result<()>> {
        let requests: Vec<String> = payloads
            .iter()
            .map(|p| format!("PUT {topic} {}", p.as_ref()))
            .collect();
        self.send_many(&requests, window)
            .await
            .into_iter()
            .map(|answer| expect_ok(answer?))
            .collect()
    }

    /// Sends every request body over the one connection, pipelined (up to
    /// `window` in flight), and returns one outcome per request, in order:
    /// the answer's text as it is (`ERR …` included), or why there is
    /// none. Requests on one topic are carried out in the order given.
    /// When the connection breaks, each request without an answer gets
    /// the error of its kind: `NoAnswer` (outcome unknown) for a PUT or GET
    /// that was sent, a safe-to-retry error for the others and for those
    /// never sent. Nothing is resent.
    pub async fn send_many<R: AsRef<str>>(
        &self,
        requests: &[R],
        window: usize,
    ) -> Vec<Result<String>> {
        let mut outcomes = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(window.max(1)) {
            let bodies: Vec<&[u8]> = chunk.iter().map(|r| r.as_ref().as_bytes()).collect();
            let answers = self.exchange(&bodies, self.timeout).await;
            let failed = answers.iter().any(|a| a.is_err());
            outcomes.extend(answers);
            if failed {
                // Later chunks were never sent.
                while outcomes.len() < requests.len() {
                    outcomes.push(Err(ClientError::Io {
                        addr: self.addr().to_string(),
                        source: std::io::Error::other(
                            "not sent: the connection failed on an earlier request of this call",
                        ),
                    }));
                }
                break;
            }
        }
        outcomes
    }

    /// Writes all `requests` in one go, then reads one answer per request.
    /// Returns one outcome per request, in order: the answer, or why it
    /// has none.
    async fn exchange(&self, requests: &[&[u8]], timeout: Duration) -> Vec<Result<String>> {
        let mut out = BytesMut::new();
        let mut codec = FrameCodec::requests();
        for r in requests {
            if codec.encode(r, &mut out).is_err() {
                return requests
                    .iter()
                    .map(|_| Err(ClientError::TooLarge(r.len())))
                    .collect();
            }
        }
        let mut guard = self.conn.lock().await;
        // A kept connection the server closed while it sat idle (its idle
        // timeout, a restart) would swallow the request: drop it unused.
        if guard.as_ref().is_some_and(|c| !c.is_usable()) {
            *guard = None;
        }
        let mut may_resend = true;
        loop {
            let reused = guard.is_some();
            let conn = match guard.as_mut() {
                Some(c) => c,
                None => match self.connect(timeout).await {
                    Ok(c) => guard.insert(c),
                    // Nothing was sent.
                    Err(e) => return requests.iter().map(|_| Err(e.same_again())).collect(),
                },
            };
            let node = conn.node;
            let mut answers = Vec::with_capacity(requests.len());
            let mut written = 0;
            let result = tokio::time::timeout(timeout, async {
                // Counted by hand (not write_all) to know whether any byte
                // left: a write refused outright sent nothing.
                while written < out.len() {
                    match conn.stream.write(&out[written..]).await? {
                        0 => return Err(std::io::ErrorKind::WriteZero.into()),
                        n => written += n,
                    }
                }
                // TLS may hold encrypted bytes until flushed.
                conn.stream.flush().await?;
                for _ in requests {
                    answers.push(read_answer(conn).await?);
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            let why = match result {
                Ok(Ok(())) => return answers.into_iter().map(Ok).collect(),
                Ok(Err(e)) => e,
                // Answers may still arrive later and would be read by the
                // next call: the connection goes too.
                Err(_) => std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}"),
                ),
            };
            *guard = None; // broken: reconnect on the next call
                           // The node may be down: the next connection tries the next one.
            self.preferred
                .store((node + 1) % self.addrs.len(), Ordering::Relaxed);
            let addr = &self.addrs[node];
            if written == 0 {
                // Not one byte of the requests reached the socket, so the
                // server cannot have seen them. A kept connection that broke
                // unnoticed (reset by the server) earns one resend on a new
                // one; otherwise the caller may send again.
                if reused && may_resend && why.kind() != std::io::ErrorKind::TimedOut {
                    may_resend = false;
                    continue;
                }
                let e = not_sent(addr, why);
                return requests.iter().map(|_| Err(e.same_again())).collect();
            }
            // Once any of it was written, a request that changes state may
            // have been carried out: only its verb says whether that matters.
            let mut outcomes: Vec<Result<String>> = answers.into_iter().map(Ok).collect();
            for r in &requests[outcomes.len()..] {
                outcomes.push(Err(match changing_verb(r) {
                    Some(verb) => ClientError::NoAnswer {
                        addr: addr.clone(),
                        verb,
                        why: why.to_string(),
                    },
                    None => not_sent(addr, std::io::Error::new(why.kind(), why.to_string())),
                }));
            }
            return outcomes;
        }
    }

    /// Connects to the preferred address, or else to the next ones in
    /// turn; each attempt may take the connect timeout (and all of them
    /// together the call's `timeout`).
    async fn connect(&self, timeout: Duration) -> Result<Conn> {
        let deadline = tokio::time::Instant::now() + timeout;
        let first = self.preferred.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        let mut last_kind = std::io::ErrorKind::Other;
        for node in (first..first + self.addrs.len()).map(|i| i % self.addrs.len()) {
            let addr = &self.addrs[node];
            let attempt = tokio::time::Instant::now() + self.connect_timeout;
            let connecting = tls::connect(addr, self.tls.as_ref());
            let result = tokio::time::timeout_at(attempt.min(deadline), connecting)
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
            let result = match result {
                Ok(stream) => {
                    let mut conn = Conn {
                        stream,
                        rbuf: BytesMut::with_capacity(8 * 1024),
                        node,
                    };
                    match &self.token {
                        None => Ok(conn),
                        Some(token) => {
                            let auth = tokio::time::timeout_at(
                                attempt.min(deadline),
                                authenticate(&mut conn, token),
                            )
                            .await
                            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
                            match auth {
                                Ok(None) => Ok(conn),
                                // Every node has the same tokens: the next
                                // one would refuse it too.
                                Ok(Some(refused)) => return Err(server_error(refused)),
                                Err(e) => Err(e),
                            }
                        }
                    }
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(conn) => {
                    self.preferred.store(node, Ordering::Relaxed);
                    return Ok(conn);
                }
                Err(e) => {
                    last_kind = e.kind();
                    failures.push(format!("{addr}: {e}"));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        let addr = self.addrs.join(", ");
        if failures.len() == 1 && last_kind == std::io::ErrorKind::TimedOut {
            return Err(ClientError::Timeout(addr));
        }
        Err(ClientError::Io {
            addr,
            source: std::io::Error::new(last_kind, failures.join("; ")),
        })
    }
}

/// The error for a failure that carried nothing out: a timeout or a
/// broken connection, both safe to retry.
fn not_sent(addr: &str, why: std::io::Error) -> ClientError {
    if why.kind() == std::io::ErrorKind::TimedOut {
        ClientError::Timeout(addr.to_string())
    } else {
        ClientError::Io {
            addr: addr.to_string(),
            source: why,
        }
    }
}

/// Sends `AUTH <token>` on a new connection. `Ok(None)`: accepted;
/// `Ok(Some(answer))`: refused, with the server's answer.
async fn authenticate(conn: &mut Conn, token: &Secret) -> std::io::Result<Option<String>> {
    let mut body = Vec::with_capacity(5 + token.len());
    body.extend_from_slice(b"AUTH ");
    body.extend_from_slice(token.expose());
    let mut out = BytesMut::new();
    FrameCodec::requests()
        .encode(&body[..], &mut out)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    conn.stream.write_all(&out).await?;
    let answer = read_answer(conn).await?;
    Ok((answer != "OK").then_some(answer))
}

/// Reads the next answer off `conn`.
async fn read_answer(conn: &mut Conn) -> std::io::Result<String> {
    let mut codec = FrameCodec::answers();
    loop {
        match codec.decode(&mut conn.rbuf) {
            Ok(Some(body)) => {
                return String::from_utf8(body.to_vec()).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "answer is not UTF-8")
                })
            }
            Ok(None) => {}
            Err(FrameError::InvalidLength(len)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("answer of {len} bytes is larger than any valid answer"),
                ))
            }
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        if conn.stream.read_buf(&mut conn.rbuf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

fn server_error(resp: String) -> ClientError {
    match resp.strip_prefix("ERR ") {
        Some(text) => ClientError::Server(text.to_string()),
        None => ClientError::Protocol(resp),
    }
}

fn expect_ok(resp: String) -> Result<()> {
    if resp == "OK" {
        Ok(())
    } else {
        Err(server_error(resp))
    }
}

fn expect_json(resp: String) -> Result<serde_json::Value> {
    if resp.starts_with("ERR ") {
        return Err(server_error(resp));
    }
    serde_json::from_str(&resp).map_err(|e| ClientError::Protocol(format!("{e}: {resp}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A server that answers each request with what `script` says for the
    /// `n`th request it has seen (from 0), or closes the connection without
    /// answering on `None`. Returns its address and the request count.
    pub(crate) async fn scripted(
        script: impl Fn(usize, &str) -> Option<String> + Send + Sync + 'static,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use walrus_core::protocol::{encode_frame, read_frame, MAX_FRAME};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = Arc::new(AtomicUsize::new(0));
        let (script, counter) = (Arc::new(script), seen.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = l.accept().await {
                let (script, counter) = (script.clone(), counter.clone());
                tokio::spawn(async move {
                    while let Ok(Some(body)) = read_frame(&mut stream, MAX_FRAME).await {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let Some(answer) = script(n, std::str::from_utf8(&body).unwrap()) else {
                            return; // drops the connection, unanswered
                        };
                        let mut out = BytesMut::new();
                        encode_frame(&mut out, answer.as_bytes());
                        if stream.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    pub(crate) fn count(seen: &std::sync::atomic::AtomicUsize) -> usize {
        seen.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn given_a_put_sent_when_the_connection_drops_unanswered_should_be_outcome_unknown_never_retryable(
    ) {
        let (addr, _) = scripted(|_, _| None).await;
        let c = Client::new(addr);
        let e = c.put("logs", "x").await.unwrap_err();
        assert!(e.is_outcome_unknown(), "{e}");
        assert!(!e.is_retryable(), "a retry could store it twice: {e}");
        assert!(e.to_string().contains("read the topic"), "{e}");
        let e = c.get("logs").await.unwrap_err();
        assert!(e.is_outcome_unknown() && !e.is_retryable(), "{e}");
        // A request that changes nothing is safe to send again.
        let e = c.ping().await.unwrap_err();
        assert!(e.is_retryable() && !e.is_outcome_unknown(), "{e}");
    }

    #[tokio::test]
    async fn given_the_server_answers_outcome_unknown_should_not_resend_the_put() {
        let (addr, seen) = scripted(|_, _| {
            Some("ERR outcome unknown: the write was sent to node 2 and no answer came".into())
        })
        .await;
        let c = Client::new(addr);
        let e = c
            .put_retrying("logs", "x", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.is_outcome_unknown() && !e.is_retryable(), "{e}");
        assert_eq!(count(&seen), 1, "sent once, never resent");
    }

    #[tokio::test]
    async fn given_a_put_sent_and_unanswered_when_retrying_should_not_resend_it() {
        let (addr, seen) = scripted(|_, _| None).await;
        let c = Client::new(addr);
        let e = c
            .put_retrying("logs", "x", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.is_outcome_unknown(), "{e}");
        assert_eq!(count(&seen), 1, "sent once, never resent");
    }

    #[tokio::test]
    async fn given_a_pipelined_put_when_the_connection_drops_midway_should_keep_the_answers_it_got()
    {
        let (addr, _) = scripted(|n, _| (n < 2).then(|| "OK".to_string())).await;
        let c = Client::new(addr);
        let payloads = ["a", "b", "c", "d", "e"];
        let outcomes = c.put_many("logs", &payloads, 4).await;
        assert_eq!(outcomes.len(), 5);
        assert!(outcomes[0].is_ok() && outcomes[1].is_ok());
        for o in &outcomes[2..4] {
            let e = o.as_ref().unwrap_err();
            assert!(e.is_outcome_unknown() && !e.is_retryable(), "{e}");
        }
        let never_sent = outcomes[4].as_ref().unwrap_err();
        assert!(never_sent.is_retryable(), "{never_sent}");
    }

    #[tokio::test]
    async fn given_a_kept_connection_when_the_server_takes_a_put_and_drops_it_unanswered_should_not_resend(
    ) {
        // PING is answered, so the PUT goes out on a kept connection; the
        // server reads it and drops the connection.
        let (addr, seen) = scripted(|_, req| (req == "PING").then(|| "OK PONG".to_string())).await;
        let c = Client::new(addr);
        c.ping().await.unwrap();
        let e = c.put("logs", "x").await.unwrap_err();
        assert!(
            matches!(e, ClientError::NoAnswer { verb: "PUT", .. }),
            "{e}"
        );
        assert!(e.is_outcome_unknown() && !e.is_retryable(), "{e}");
        assert_eq!(count(&seen), 2, "the PUT was read once and never resent");
    }

    #[tokio::test]
    async fn given_answers_that_say_not_applied_when_retrying_should_resend_until_stored() {
        let (addr, seen) = scripted(|n, req| {
            assert_eq!(req, "PUT logs x");
            Some(
                match n {
                    0 => "ERR unavailable: node 2 is unreachable, retry",
                    1 => "ERR write lease expired",
                    2 => "ERR NotLeaderError",
                    _ => "OK",
                }
                .into(),
            )
        })
        .await;
        let c = Client::new(addr);
        c.put_retrying("logs", "x", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(count(&seen), 4);
        // An error that is neither comes back at once.
        let (addr, seen) = scripted(|_, _| Some("ERR topic not found".into())).await;
        let e = Client::new(addr)
            .put_retrying("logs", "x", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(!e.is_retryable() && !e.is_outcome_unknown(), "{e}");
        assert_eq!(count(&seen), 1);
    }

    /// An address nothing listens on (a port bound, then released).
    pub(crate) async fn dead_addr() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn given_a_first_node_that_is_down_when_calling_should_fail_over_to_the_next() {
        let dead = dead_addr().await;
        let (live, seen) = scripted(|_, _| Some("OK PONG".into())).await;
        let c = Client::with_nodes([dead.clone(), live.clone()]);
        c.ping().await.unwrap();
        assert_eq!(c.addr(), live);
        assert_eq!(count(&seen), 1);
        // Every node down: a safe-to-retry error that names them all.
        let (dead2, dead3) = (dead_addr().await, dead_addr().await);
        let e = Client::with_nodes([dead2.clone(), dead3.clone()])
            .put("logs", "x")
            .await
            .unwrap_err();
        assert!(e.is_retryable() && !e.is_outcome_unknown(), "{e}");
        let text = e.to_string();
        assert!(text.contains(&dead2) && text.contains(&dead3), "{text}");
    }

    #[tokio::test]
    async fn given_a_node_that_breaks_the_connection_should_report_it_then_use_the_next_node() {
        let (flaky, _) = scripted(|_, _| None).await;
        let (live, live_seen) = scripted(|_, _| Some("OK".into())).await;
        let c = Client::with_nodes([flaky.clone(), live.clone()]);
        // The PUT reached the flaky node: its outcome is unknown, and it is
        // not sent again to the other node on its own.
        let e = c.put("logs", "x").await.unwrap_err();
        assert!(e.is_outcome_unknown(), "{e}");
        assert!(e.to_string().contains(&flaky), "{e}");
        assert_eq!(count(&live_seen), 0, "never resent elsewhere");
        // The next call goes to the next node.
        c.put("logs", "y").await.unwrap();
        assert_eq!(c.addr(), live);
        assert_eq!(count(&live_seen), 1);
    }

    #[tokio::test]
    async fn given_mixed_pipelined_requests_when_the_connection_drops_should_class_each_unanswered_one_by_its_verb(
    ) {
        let (addr, seen) = scripted(|n, _| (n < 1).then(|| "OK".to_string())).await;
        let c = Client::new(addr);
        let requests = ["PUT logs a", "PING", "PUT logs b", "STATE logs"];
        let outcomes = c.send_many(&requests, 8).await;
        assert_eq!(outcomes.len(), 4);
        assert_eq!(outcomes[0].as_deref().unwrap(), "OK");
        let ping = outcomes[1].as_ref().unwrap_err();
        assert!(ping.is_retryable() && !ping.is_outcome_unknown(), "{ping}");
        let put = outcomes[2].as_ref().unwrap_err();
        assert!(put.is_outcome_unknown() && !put.is_retryable(), "{put}");
        let state = outcomes[3].as_ref().unwrap_err();
        assert!(state.is_retryable(), "{state}");
        assert!(count(&seen) >= 2, "sent pipelined, in one go");
    }

    #[tokio::test]
    async fn given_an_answer_frame_longer_than_any_answer_should_be_a_protocol_failure_not_an_allocation(
    ) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(&u32::MAX.to_le_bytes()).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let e = Client::new(addr).ping().await.unwrap_err();
        assert!(
            e.to_string().contains("larger than any valid answer"),
            "{e}"
        );
    }
}
