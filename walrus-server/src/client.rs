//! The client library: [`CliClient`].
//!
//! ```no_run
//! use walrus_server::client::CliClient; // or distributed_walrus::cli_client::CliClient
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = CliClient::new("127.0.0.1:9091");
//! client.register("logs").await?;
//! client.put("logs", "hello world").await?;
//! assert_eq!(client.get("logs").await?.as_deref(), Some("hello world"));
//! # Ok(()) }
//! ```
//!
//! One connection is kept open and reused; when it breaks, the call that
//! saw it fails and the next call connects again. A call is never resent
//! on its own: after a broken connection a PUT may or may not have been
//! applied, and only the caller can decide whether to retry.

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
    /// The connection could not be made or broke.
    #[error("connection to {addr} failed: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// No answer within the client's timeout.
    #[error("no answer from {0} within the timeout")]
    Timeout(String),
    /// The request cannot be sent as one frame (empty or over 64 KiB).
    #[error("request is {0} bytes; a request must be 1 to 65536 bytes")]
    TooLarge(usize),
    /// The answer did not have the expected form.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl ClientError {
    /// True for `ERR NotLeaderError`, `ERR write lease expired` and
    /// `ERR unavailable: …`, which the protocol says to retry.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Server(t) => {
                t == "NotLeaderError" || t == "write lease expired" || t.starts_with("unavailable")
            }
            ClientError::Io { .. } | ClientError::Timeout(_) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

struct Conn {
    stream: BufReader<TcpStream>,
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
        let mut out = self.exchange(&[request.as_bytes()]).await?;
        out.pop()
            .ok_or_else(|| ClientError::Protocol("no answer".into()))
    }

    /// Appends every payload to `topic` over the one connection, pipelined
    /// (up to `window` requests in flight). Entries land in the order given.
    /// Returns one outcome per payload; if the connection breaks, the
    /// payloads without an answer get `Err(ClientError::Io)` and may or may
    /// not have been applied.
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
            match self.exchange(&refs).await {
                Ok(answers) => outcomes.extend(answers.into_iter().map(expect_ok)),
                Err(e) => {
                    let text = e.to_string();
                    outcomes.push(Err(e));
                    while outcomes.len() < payloads.len() {
                        outcomes.push(Err(ClientError::Io {
                            addr: self.addr.clone(),
                            source: std::io::Error::other(text.clone()),
                        }));
                    }
                    return outcomes;
                }
            }
        }
        outcomes
    }

    /// Writes all `requests` in one go, then reads one answer per request.
    async fn exchange(&self, requests: &[&[u8]]) -> Result<Vec<String>> {
        let mut out = BytesMut::new();
        for r in requests {
            if r.is_empty() || r.len() > MAX_FRAME {
                return Err(ClientError::TooLarge(r.len()));
            }
            encode_frame(&mut out, r);
        }
        let mut guard = self.conn.lock().await;
        let conn = match guard.as_mut() {
            Some(c) => c,
            None => guard.insert(self.connect().await?),
        };
        let result = tokio::time::timeout(self.timeout, async {
            conn.stream.get_mut().write_all(&out).await?;
            let mut answers = Vec::with_capacity(requests.len());
            for _ in requests {
                answers.push(read_answer(&mut conn.stream).await?);
            }
            Ok::<_, std::io::Error>(answers)
        })
        .await;
        match result {
            Ok(Ok(answers)) => Ok(answers),
            Ok(Err(e)) => {
                *guard = None; // broken: reconnect on the next call
                Err(ClientError::Io {
                    addr: self.addr.clone(),
                    source: e,
                })
            }
            Err(_) => {
                // Answers may still arrive later and would be read by the
                // next call: drop the connection.
                *guard = None;
                Err(ClientError::Timeout(self.addr.clone()))
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
    use crate::listener::{ClientHandler, ClientListener, ListenerConfig};
    use std::sync::Arc;
    use walrus_core::protocol::{Request, Response};

    /// A one-topic in-memory log, enough to drive the client.
    #[derive(Default)]
    struct Mini {
        log: std::sync::Mutex<(Vec<bytes::Bytes>, usize)>,
    }

    #[async_trait::async_trait]
    impl ClientHandler for Mini {
        async fn handle(&self, req: Request) -> Response {
            let mut log = self.log.lock().unwrap();
            match req {
                Request::Register(_) => Response::Ok,
                Request::Put { topic, payload } if topic.as_str() == "logs" => {
                    log.0.push(payload);
                    Response::Ok
                }
                Request::Put { .. } => Response::Err("topic not found".into()),
                Request::Get(_) => {
                    let (entries, cursor) = &mut *log;
                    match entries.get(*cursor) {
                        Some(e) => {
                            *cursor += 1;
                            Response::Entry(e.clone())
                        }
                        None => Response::Empty,
                    }
                }
                Request::State(_) | Request::Metrics | Request::Topics => {
                    Response::Json(format!("{{\"count\":{}}}", log.0.len()))
                }
                Request::Ping => Response::Pong,
                Request::ReplaceStorage { .. } => Response::Err("not here".into()),
            }
        }
    }

    async fn server() -> ClientListener {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        ClientListener::start(l, Arc::new(Mini::default()), ListenerConfig::default()).unwrap()
    }

    #[tokio::test]
    async fn given_the_seed_example_should_round_trip() {
        let s = server().await;
        let c = CliClient::new(s.local_addr().to_string());
        c.register("logs").await.unwrap();
        c.put("logs", "hello world").await.unwrap();
        c.put("logs", "{\"event\":\"test\"}").await.unwrap();
        assert_eq!(c.get("logs").await.unwrap().as_deref(), Some("hello world"));
        assert_eq!(
            c.get("logs").await.unwrap().as_deref(),
            Some("{\"event\":\"test\"}")
        );
        assert_eq!(c.get("logs").await.unwrap(), None);
        assert_eq!(c.state("logs").await.unwrap()["count"], 2);
        c.ping().await.unwrap();
    }

    #[tokio::test]
    async fn given_an_err_answer_should_carry_the_server_text() {
        let s = server().await;
        let c = CliClient::new(s.local_addr().to_string());
        let e = c.put("nope", "x").await.unwrap_err();
        assert_eq!(e.to_string(), "topic not found");
        assert_eq!(
            c.send_raw("PUT nope x").await.unwrap(),
            "ERR topic not found"
        );
        assert!(matches!(
            c.send_raw("").await,
            Err(ClientError::TooLarge(0))
        ));
    }

    #[tokio::test]
    async fn given_a_bulk_put_should_pipeline_in_order() {
        let s = server().await;
        let c = CliClient::new(s.local_addr().to_string());
        let payloads: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
        let outcomes = c.put_many("logs", &payloads, 128).await;
        assert!(outcomes.iter().all(|o| o.is_ok()));
        for p in &payloads {
            assert_eq!(c.get("logs").await.unwrap().as_ref(), Some(p));
        }
    }

    #[tokio::test]
    async fn given_a_restarted_server_should_reconnect_on_the_next_call() {
        let s = server().await;
        let addr = s.local_addr();
        let c = CliClient::new(addr.to_string()).with_timeout(Duration::from_secs(2));
        c.ping().await.unwrap();
        assert!(s.shutdown().await);
        assert!(c.ping().await.is_err(), "the old connection is gone");
        let l = tokio::net::TcpListener::bind(addr).await.unwrap();
        let _s2 =
            ClientListener::start(l, Arc::new(Mini::default()), ListenerConfig::default()).unwrap();
        c.ping().await.unwrap();
    }
}
