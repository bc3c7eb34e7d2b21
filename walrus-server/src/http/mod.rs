//! `--metrics-addr`: a small read-only HTTP server.
//!
//! - `GET /metrics`: Prometheus text format ([`prometheus`]).
//! - `GET /`: the web console, one static page ([`console`]).
//! - `GET /api/cluster`, `GET /api/topic/<name>/tail?n=<N>`: the JSON the
//!   console polls.
//!
//! A minimal HTTP/1.1 responder on tokio: one request per connection
//! (`Connection: close`), GET only, the request head capped at 16 KiB and
//! its whole exchange at 10 s. No HTTP crate is in the dependency tree,
//! and four GET paths do not justify adding hyper.

pub mod console;
pub mod prometheus;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use walrus_backends::wal::WalStats;
use walrus_core::{Node, Transport};

use crate::listener::ListenerStats;
pub use prometheus::{Instrumented, RequestStats};

/// The longest request head read; a longer one is answered 431.
const MAX_HEAD: usize = 16 * 1024;
/// A client that stalls is dropped rather than held forever.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the endpoint reads from.
pub struct Sources {
    pub node: Arc<Node>,
    pub requests: Arc<RequestStats>,
    pub listener: Arc<ListenerStats>,
    /// The WAL's flush figures; `None` with another log store.
    pub wal: Option<Arc<WalStats>>,
    /// To ping the other nodes for the console's health column.
    pub transport: Arc<dyn Transport>,
}

/// Serves the endpoint on `listener` until the task is aborted.
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
                let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, answer(stream, &sources)).await;
            });
        }
    });
    Ok((addr, task))
}

/// An answer: status, content type and body (the headers are fixed).
pub(crate) struct Reply {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Reply {
    pub(crate) fn new(status: &'static str, content_type: &'static str, body: String) -> Reply {
        Reply {
            status,
            content_type,
            body,
        }
    }

    fn text(status: &'static str, body: &str) -> Reply {
        Reply::new(status, "text/plain; charset=utf-8", body.to_string())
    }

    pub(crate) fn json(status: &'static str, value: &serde_json::Value) -> Reply {
        Reply::new(status, "application/json", value.to_string())
    }
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
        if head.len() > MAX_HEAD {
            let reply = Reply::text(
                "431 Request Header Fields Too Large",
                "request head too large\n",
            );
            let _ = respond(&mut stream, reply).await;
            // Closing with the rest of the request unread would reset the
            // connection and could discard the answer before the client
            // reads it: read on (a bounded amount, briefly) first.
            let mut rest = 0usize;
            let drain = async {
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    rest += n;
                    if rest > 16 * MAX_HEAD {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
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
    let reply = route(method, target, sources).await;
    let _ = respond(&mut stream, reply).await;
}

async fn route(method: &str, target: &str, sources: &Sources) -> Reply {
    if method != "GET" {
        return Reply::text("405 Method Not Allowed", "only GET is served\n");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/metrics" => Reply::new(
            "200 OK",
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            prometheus::render(sources).await,
        ),
        "/" | "/index.html" => console::page(),
        "/api/cluster" => console::cluster(sources).await,
        _ => match console::tail_topic(path) {
            Some(topic) => console::tail(sources, topic, query).await,
            None => Reply::text(
                "404 Not Found",
                "not found: the metrics are at /metrics, the console at /\n",
            ),
        },
    }
}

async fn respond(stream: &mut TcpStream, reply: Reply) -> std::io::Result<()> {
    // The console's page and JSON are read-only and change every poll;
    // nosniff and the page's CSP keep an entry's text from ever running.
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n{}Connection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len(),
        if reply.content_type.starts_with("text/html") {
            console::CSP_HEADER
        } else {
            ""
        },
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(reply.body.as_bytes()).await?;
    stream.shutdown().await
}
