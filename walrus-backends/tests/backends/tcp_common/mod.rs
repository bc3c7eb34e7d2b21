//! Shared pieces of the TCP transport tests: a scriptable handler, a node
//! on a loopback port, and a counting proxy.

#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use walrus_backends::tcp::{TcpConfig, TcpTransport};
use walrus_core::{Error, NodeRequest, NodeResponse, RequestHandler, Result};

/// Answers by script:
/// - `Ping` → `Done`;
/// - `Consensus(b"sleep:<ms>:<tag>")` → sleeps, then echoes the bytes;
/// - `Consensus(b"panic")` → panics;
/// - `Consensus(b"big:<n>")` → answers `n` bytes;
/// - any other `Consensus(bytes)` → `Consensus(bytes)`;
/// - `Get { .. }` → `Err(TopicNotFound)`;
/// - everything else → `Err(Unavailable("scripted"))`.
#[derive(Default)]
pub struct ScriptedHandler {
    pub handled: AtomicU64,
}

#[async_trait]
impl RequestHandler for ScriptedHandler {
    async fn handle(&self, req: NodeRequest) -> Result<NodeResponse> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        match req {
            NodeRequest::Ping => Ok(NodeResponse::Done),
            NodeRequest::Consensus(bytes) => {
                let text = String::from_utf8_lossy(&bytes).to_string();
                if let Some(rest) = text.strip_prefix("sleep:") {
                    let ms: u64 = rest.split(':').next().unwrap().parse().unwrap();
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                } else if text == "panic" {
                    panic!("scripted panic");
                } else if let Some(n) = text.strip_prefix("big:") {
                    let n: usize = n.parse().unwrap();
                    return Ok(NodeResponse::Consensus(Bytes::from(vec![7u8; n])));
                }
                Ok(NodeResponse::Consensus(bytes))
            }
            NodeRequest::Get { .. } => Err(Error::TopicNotFound),
            _ => Err(Error::Unavailable("scripted".into())),
        }
    }
}

pub fn consensus(text: &str) -> NodeRequest {
    NodeRequest::Consensus(Bytes::copy_from_slice(text.as_bytes()))
}

pub fn echoed(text: &str) -> NodeResponse {
    NodeResponse::Consensus(Bytes::copy_from_slice(text.as_bytes()))
}

/// A transport serving a [`ScriptedHandler`] on a loopback port.
pub struct TestNode {
    pub transport: Arc<TcpTransport>,
    pub handler: Arc<ScriptedHandler>,
    pub addr: SocketAddr,
}

impl TestNode {
    pub async fn start(config: TcpConfig) -> TestNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, config)
    }

    pub fn start_on(listener: TcpListener, config: TcpConfig) -> TestNode {
        let addr = listener.local_addr().unwrap();
        let transport = TcpTransport::new(config);
        let handler = Arc::new(ScriptedHandler::default());
        transport.serve(listener, handler.clone());
        TestNode {
            transport,
            handler,
            addr,
        }
    }

    pub fn handled(&self) -> u64 {
        self.handler.handled.load(Ordering::SeqCst)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.transport.shutdown();
    }
}

/// Forwards connections to `target` and counts them, so a test can see how
/// many connections the transport really opened.
pub struct CountingProxy {
    pub addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub async fn start(target: SocketAddr) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        CountingProxy {
            addr,
            accepted,
            task,
        }
    }

    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Settings with short timeouts so failure cases finish quickly.
pub fn quick_config() -> TcpConfig {
    TcpConfig {
        connect_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_secs(2),
        stall_timeout: Duration::from_millis(300),
        ..TcpConfig::default()
    }
}

/// Retries `f` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
