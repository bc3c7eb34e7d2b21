//! TCP transport: node-to-node requests over persistent, multiplexed
//! connections on one inter-node port.
//!
//! - [`envelope`]: the versioned, length-prefixed binary frame.
//! - `client`: the calling side (pooled connections, request ids, timeouts,
//!   reconnect with back-off).
//! - `server`: the receiving side (accept loop; requests answered inline
//!   when they need not wait, in a task of their own when they must).
//! - [`handshake`]: proof of the cluster secret when a connection opens
//!   (only with [`TcpConfig::cluster_secret`]).
//! - `writer`: one connection's frames into its socket, straight from the
//!   sender when the connection is idle, batched when it is busy.
//!
//! ```no_run
//! # async fn demo(handler: std::sync::Arc<dyn walrus_core::RequestHandler>) -> anyhow::Result<()> {
//! use walrus_backends::tcp::{TcpConfig, TcpTransport};
//! use walrus_core::{NodeRequest, Transport};
//!
//! let transport = TcpTransport::new(TcpConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let _server = transport.serve(listener, handler);
//! transport.set_peer_address(2, "127.0.0.1:6002");
//! let answer = transport.call(2, NodeRequest::Ping).await;
//! # Ok(()) }
//! ```

pub mod envelope;
pub mod handshake;

mod client;
mod server;
mod socket;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use walrus_core::{Error, NodeId, NodeRequest, NodeResponse, RequestHandler, Result, Transport};

use client::{Pool, Target};
use walrus_core::locks::RwLockExt;

/// Settings of a [`TcpTransport`]. Every node of a cluster should use the
/// same `max_message_bytes`.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// How long dialling a peer may take before the call fails with
    /// `Unreachable`.
    pub connect_timeout: Duration,
    /// How long a call waits for its answer (after connecting) before it
    /// fails with `Timeout`.
    pub request_timeout: Duration,
    /// The largest frame sent or accepted, header included. Larger requests
    /// fail with `BadRequest`; a peer announcing a larger frame is
    /// disconnected.
    pub max_message_bytes: usize,
    /// Once a frame has begun, the rest of it must arrive within this time
    /// or the connection is closed (a peer that died mid-message).
    pub stall_timeout: Duration,
    /// Requests from one connection handled at once; beyond that the server
    /// stops reading from it until some finish.
    pub max_in_flight_per_connection: usize,
    /// Wait before redialling a peer after the first failed dial; doubles
    /// per further failure up to `reconnect_backoff_max`. Calls made while
    /// waiting fail fast with `Unreachable`.
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    /// TCP keepalive period (`None`: off). A peer that vanished without
    /// closing its connections is noticed after about 5 × this.
    pub keepalive: Option<Duration>,
    /// Connections a server accepts at once; further ones are closed at
    /// once, so a flood of connections cannot exhaust the node.
    pub max_connections: usize,
    /// The cluster's shared secret (`--cluster-secret-file`). With it,
    /// every connection, in and out, starts with the [`handshake`] and a
    /// peer that fails it is never served or used. `None`: plain frames,
    /// as before. Every node of a cluster must have the same setting.
    pub cluster_secret: Option<walrus_core::Secret>,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(5),
            max_message_bytes: 16 * 1024 * 1024,
            stall_timeout: Duration::from_secs(10),
            max_in_flight_per_connection: 1024,
            reconnect_backoff_min: Duration::from_millis(20),
            reconnect_backoff_max: Duration::from_secs(1),
            keepalive: Some(Duration::from_secs(1)),
            max_connections: 1024,
            cluster_secret: None,
        }
    }
}

/// A [`Transport`] over TCP. Create it with [`TcpTransport::new`], give it
/// the node's handler with [`TcpTransport::serve`] once the node exists,
/// and tell it where peers listen with
/// [`set_peer_address`](Transport::set_peer_address).
pub struct TcpTransport {
    config: TcpConfig,
    peers: RwLock<HashMap<NodeId, String>>,
    pool: Pool,
    stop: watch::Sender<bool>,
    /// Fault injection: see [`set_isolated`](Self::set_isolated).
    isolated: Arc<AtomicBool>,
}

impl TcpTransport {
    pub fn new(config: TcpConfig) -> Arc<TcpTransport> {
        let (stop, _) = watch::channel(false);
        Arc::new(TcpTransport {
            pool: Pool::new(config.clone()),
            config,
            peers: RwLock::new(HashMap::new()),
            stop,
            isolated: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn config(&self) -> &TcpConfig {
        &self.config
    }

    /// Answers requests arriving on `listener` with `handler` until
    /// [`shutdown`](Self::shutdown). The task ends when accepting stops;
    /// connections already accepted are closed by `shutdown` too.
    pub fn serve(
        self: &Arc<Self>,
        listener: TcpListener,
        handler: Arc<dyn RequestHandler>,
    ) -> JoinHandle<()> {
        tokio::spawn(server::accept_loop(
            listener,
            handler,
            self.config.clone(),
            self.stop.subscribe(),
            self.isolated.clone(),
        ))
    }

    /// Stops serving, closes every connection in both directions and fails
    /// calls in flight; later calls fail with `ShuttingDown`. Final: a shut
    /// down transport does not serve or call again (create a new one).
    /// Dropping the last `Arc` of a transport has the same effect.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
        self.pool.shutdown();
    }

    /// Cuts this node off the network (for fault-injection tests), or
    /// reconnects it. While isolated, its calls fail with `Unreachable` and
    /// every incoming connection or request closes the connection it came
    /// on, so peers see this node as unreachable too (or get no answer to a
    /// request they had already sent); open connections in
    /// both directions are dropped. Serving resumes when isolation ends.
    pub fn set_isolated(&self, isolated: bool) {
        self.isolated.store(isolated, Ordering::Release);
        if isolated {
            self.pool.close_connections();
        }
    }

    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::Acquire)
    }

    /// Where `node` listens, if known.
    pub fn peer_address(&self, node: NodeId) -> Option<String> {
        self.peers.read_or_recover().get(&node).cloned()
    }
}

#[async_trait]
impl Transport for TcpTransport {
    async fn call(&self, to: NodeId, req: NodeRequest) -> Result<NodeResponse> {
        if self.is_isolated() {
            return Err(Error::Unreachable(to));
        }
        let addr = self.peer_address(to).ok_or(Error::Unreachable(to))?;
        self.pool.call(Target::Node(to), &addr, &req).await
    }

    async fn call_addr(&self, addr: &str, req: NodeRequest) -> Result<NodeResponse> {
        if self.is_isolated() {
            return Err(Error::Unavailable(format!(
                "cannot reach {addr}: this node is isolated"
            )));
        }
        self.pool.call(Target::Addr, addr, &req).await
    }

    fn set_peer_address(&self, node: NodeId, addr: &str) {
        self.peers.write_or_recover().insert(node, addr.to_string());
    }
}
