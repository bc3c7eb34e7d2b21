//! The client library: [`CliClient`].
//!
//! ```no_run
//! use walrus_client::CliClient; // or distributed_walrus::cli_client::CliClient
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = CliClient::new("127.0.0.1:9091");
//! client.register("logs").await?;
//! client.put("logs", "hello world").await?;
//! assert_eq!(client.get("logs").await?.as_deref(), Some("hello world"));
//! # Ok(()) }
//! ```
//!
//! One connection is kept open and reused. The server closes a connection
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
//! by [`CliClient::send_retrying`], which resends only what certainly had
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
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use walrus_core::protocol::{encode_frame, MAX_FRAME};

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

/// First pause between retries of [`CliClient::send_retrying`]; doubles up
/// to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(50);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    /// False when the kept connection can no longer carry a request: the
    /// server closed or reset it, or sent bytes nobody asked for (then
    /// answers and requests no longer pair up). Looks without waiting and
    /// without taking anything from the socket.
    fn is_usable(&self) -> bool {
        if !self.stream.buffer().is_empty() {
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
                self.stream.get_ref().as_raw_fd(),
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

/// A client of one Walrus node. Cheap to share behind an `Arc`; calls on
/// one client are serialised on its connection.
pub struct CliClient {
    addr: String,
    timeout: Duration,
    conn: Mutex<Option<Conn>>,
}

impl CliClient {
    /// A client of the node at `addr` (`host:port`). Connects on first use.
    pub fn new(addr: impl Into<String>) -> Self {
        CliClient {
            addr: addr.into(),
            timeout: Duration::from_secs(30),
            conn: Mutex::new(None),
        }
    }

    /// Sets how long a call waits for its answer (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `REGISTER <topic>`.
    pub async fn register(&self, topic: &str) -> Result<()> {
        expect_ok(self.send_raw(&format!("REGISTER {topic}")).await?)
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
    /// [`CliClient::commit`] with the batch's `next` once its entries are
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

    /// Sends `head` (a READ or FETCH up to its limits) with `options`, and
    /// parses the `ENTRIES` answer.
    async fn read_like(&self, head: String, options: ReadOptions) -> Result<ReadBatch> {
        let mut request = format!("{head} {} {}", options.max_entries, options.max_bytes);
        let wait_ms = options.wait.as_millis();
        if wait_ms > 0 {
            request.push_str(&format!(" WAIT {wait_ms}"));
        }
        let (mut answers, failed) = self
            .exchange(&[request.as_bytes()], self.timeout + options.wait)
            .await;
        if let Some(e) = failed {
            return Err(e);
        }
        let resp = answers
            .pop()
            .ok_or_else(|| ClientError::Protocol("no answer".into()))?;
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
        let (mut out, failed) = self.exchange(&[request.as_bytes()], self.timeout).await;
        if let Some(e) = failed {
            return Err(e);
        }
        out.pop()
            .ok_or_else(|| ClientError::Protocol("no answer".into()))
    }

    /// Like [`CliClient::send_raw`], but sends the request again (pausing
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

    /// `PUT` through [`CliClient::send_retrying`]: `Ok` once stored; an
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
        let mut outcomes = Vec::with_capacity(payloads.len());
        for chunk in payloads.chunks(window.max(1)) {
            let bodies: Vec<String> = chunk
                .iter()
                .map(|p| format!("PUT {topic} {}", p.as_ref()))
                .collect();
            let refs: Vec<&[u8]> = bodies.iter().map(|b| b.as_bytes()).collect();
            let chunk_end = outcomes.len() + chunk.len();
            let (answers, failed) = self.exchange(&refs, self.timeout).await;
            outcomes.extend(answers.into_iter().map(expect_ok));
            if let Some(e) = failed {
                // The rest of this chunk shares the failure (when it is a
                // lost answer, each may or may not be stored); later chunks
                // were never sent.
                while outcomes.len() + 1 < chunk_end {
                    outcomes.push(Err(e.same_again()));
                }
                outcomes.push(Err(e));
                while outcomes.len() < payloads.len() {
                    outcomes.push(Err(ClientError::Io {
                        addr: self.addr.clone(),
                        source: std::io::Error::other(
                            "not sent: the connection failed on an earlier PUT of this call",
                        ),
                    }));
                }
                return outcomes;
            }
        }
        outcomes
    }

    /// Writes all `requests` in one go, then reads one answer per request.
    /// Returns the answers read, in order, and what stopped the rest (for
    /// each request without an answer).
    async fn exchange(
        &self,
        requests: &[&[u8]],
        timeout: Duration,
    ) -> (Vec<String>, Option<ClientError>) {
        let mut out = BytesMut::new();
        for r in requests {
            if r.is_empty() || r.len() > MAX_FRAME {
                return (Vec::new(), Some(ClientError::TooLarge(r.len())));
            }
            encode_frame(&mut out, r);
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
                None => match self.connect().await {
                    Ok(c) => guard.insert(c),
                    // Nothing was sent.
                    Err(e) => return (Vec::new(), Some(e)),
                },
            };
            let mut answers = Vec::with_capacity(requests.len());
            let mut written = 0;
            let result = tokio::time::timeout(timeout, async {
                // Counted by hand (not write_all) to know whether any byte
                // left: a write refused outright sent nothing.
                while written < out.len() {
                    match conn.stream.get_mut().write(&out[written..]).await? {
                        0 => return Err(std::io::ErrorKind::WriteZero.into()),
                        n => written += n,
                    }
                }
                for _ in requests {
                    answers.push(read_answer(&mut conn.stream).await?);
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            let why = match result {
                Ok(Ok(())) => return (answers, None),
                Ok(Err(e)) => e,
                // Answers may still arrive later and would be read by the
                // next call: the connection goes too.
                Err(_) => std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}"),
                ),
            };
            *guard = None; // broken: reconnect on the next call
            if written == 0 {
                // Not one byte of the requests reached the socket, so the
                // server cannot have seen them. A kept connection that broke
                // unnoticed (reset by the server) earns one resend on a new
                // one; otherwise the caller may send again.
                if reused && may_resend && why.kind() != std::io::ErrorKind::TimedOut {
                    may_resend = false;
                    continue;
                }
                return (Vec::new(), Some(self.not_sent(why)));
            }
            // Once any of it was written, a request that changes state may
            // have been carried out: only its verb says whether that matters.
            let unanswered = &requests[answers.len()..];
            let error = match unanswered.iter().find_map(|r| changing_verb(r)) {
                Some(verb) => ClientError::NoAnswer {
                    addr: self.addr.clone(),
                    verb,
                    why: why.to_string(),
                },
                None => self.not_sent(why),
            };
            return (answers, Some(error));
        }
    }

    /// The error for a failure that carried nothing out: a timeout or a
    /// broken connection, both safe to retry.
    fn not_sent(&self, why: std::io::Error) -> ClientError {
        if why.kind() == std::io::ErrorKind::TimedOut {
            ClientError::Timeout(self.addr.clone())
        } else {
            ClientError::Io {
                addr: self.addr.clone(),
                source: why,
            }
        }
    }

    async fn connect(&self) -> Result<Conn> {
        let io_err = |source| ClientError::Io {
            addr: self.addr.clone(),
            source,
        };
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| ClientError::Timeout(self.addr.clone()))?
            .map_err(io_err)?;
        stream.set_nodelay(true).map_err(io_err)?;
        Ok(Conn {
            stream: BufReader::new(stream),
        })
    }
}

async fn read_answer(stream: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let len = stream.read_u32_le().await? as usize;
    // Answers carry at most one entry plus a little framing, but STATE and
    // METRICS JSON can be bigger; refuse only the absurd.
    if len > 64 * MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("answer of {len} bytes is larger than any valid answer"),
        ));
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await?;
    String::from_utf8(body)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "answer is not UTF-8"))
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
    async fn scripted(
        script: impl Fn(usize, &str) -> Option<String> + Send + Sync + 'static,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use walrus_core::protocol::read_frame;
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

    fn count(seen: &std::sync::atomic::AtomicUsize) -> usize {
        seen.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn given_a_put_sent_when_the_connection_drops_unanswered_should_be_outcome_unknown_never_retryable(
    ) {
        let (addr, _) = scripted(|_, _| None).await;
        let c = CliClient::new(addr);
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
        let c = CliClient::new(addr);
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
        let c = CliClient::new(addr);
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
        let c = CliClient::new(addr);
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
        let c = CliClient::new(addr);
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
        let c = CliClient::new(addr);
        c.put_retrying("logs", "x", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(count(&seen), 4);
        // An error that is neither comes back at once.
        let (addr, seen) = scripted(|_, _| Some("ERR topic not found".into())).await;
        let e = CliClient::new(addr)
            .put_retrying("logs", "x", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(!e.is_retryable() && !e.is_outcome_unknown(), "{e}");
        assert_eq!(count(&seen), 1);
    }
}
