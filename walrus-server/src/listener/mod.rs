//! The client listener: frames bytes, nothing else. Everything a request
//! means is the [`ClientHandler`]'s business (in the real server, the
//! walrus-core `Node`).
//!
//! Per connection, a reader task parses frames and starts each request as
//! soon as it is read, and a writer task sends the answers in request order.
//! A request that finds its topic idle runs in the reader until it first has
//! to wait: most (a PUT under `--fsync interval`, STATE, a GET) finish right
//! there, without a task switch; one that waits (an fsync, a forward) moves
//! to a task of its own and the reader goes on.
//! So a client may pipeline: its requests run without waiting for it to read.
//! Requests of one connection that name the same topic run one after the
//! other, in order, so a pipelined writer's entries land in the order it sent
//! them; requests on different topics run concurrently. PUTs that queue up
//! on a topic behind one in flight go to the handler together, as one batch
//! ([`ClientHandler::handle_puts`]): they share one append and one sync
//! instead of waiting for each other's.
//!
//! Each connection's reads and writes are its own: a client that stops
//! reading stalls only itself (its in-flight window fills, then its reader
//! waits), and it is dropped once a write makes no progress for the idle
//! timeout.
//!
//! Memory is bounded whatever the clients do (see [`ListenerConfig`]): the
//! request and answer bytes every connection holds come out of one global
//! budget, and a reader that finds it spent stops reading its socket until
//! answers are written out (TCP then pushes back on the client); no request
//! is refused for it. Connections are capped in total and per client
//! address, and one that sends nothing for the idle-connection timeout
//! while nothing of it is in flight is closed.
//!
//! - `accept`: the accept loop and the connection caps (total, per address).
//! - `connection`: one connection's reader (frames in) and writer (answers
//!   out, in request order).
//! - `lanes`: per-topic order within a connection, and PUT batches.
//! - `budget`: the global budget of bytes in flight.
//! - `stats`: bytes and connections counted for `/metrics`.
//! - [`auth`]: client tokens (`--auth-token-file`) and `AUTH`.

mod accept;
pub mod auth;
mod budget;
mod connection;
mod lanes;
mod stats;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use walrus_core::protocol::{Request, Response};
use walrus_core::{Node, TopicName};

use accept::{accept_loop, Limits};
use budget::Budget;
pub use budget::MIN_BYTES_IN_FLIGHT;
pub use stats::ListenerStats;

/// What answers client requests. The server gives the listener a `Node`;
/// tests and custom builds may give anything else.
#[async_trait]
pub trait ClientHandler: Send + Sync + 'static {
    async fn handle(&self, req: Request) -> Response;

    /// PUTs of one connection on one topic, in the order sent: one answer
    /// each, in the same order. A handler that can store them together
    /// overrides this; the default runs them one after the other.
    async fn handle_puts(&self, topic: TopicName, payloads: Vec<Bytes>) -> Vec<Response> {
        let mut answers = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let put = Request::Put {
                topic: topic.clone(),
                payload,
            };
            answers.push(self.handle(put).await);
        }
        answers
    }
}

#[async_trait]
impl ClientHandler for Node {
    async fn handle(&self, req: Request) -> Response {
        match req {
            // The protocol's METRICS field names are the server's to keep.
            Request::Metrics => Response::Json(crate::metrics::render(&self.metrics()).to_string()),
            req => Node::handle(self, req).await,
        }
    }

    async fn handle_puts(&self, topic: TopicName, payloads: Vec<Bytes>) -> Vec<Response> {
        let n = payloads.len();
        let (acked, error) = self.put_batch(&topic, payloads).await;
        let mut answers = vec![Response::Ok; acked];
        if let Some(e) = error {
            answers.resize(n, Response::Err(e.to_string()));
        }
        answers
    }
}

/// Limits of the client listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Connections served at once; more are answered
    /// `ERR too many connections…` and closed.
    pub max_connections: usize,
    /// Connections served at once from one client IP address; more are
    /// answered `ERR too many connections from <ip>…` and closed, so one
    /// client cannot take every slot.
    pub max_connections_per_ip: usize,
    /// A frame that has started must arrive whole within this time, and a
    /// response write must make progress within it; otherwise the
    /// connection is closed.
    pub idle_timeout: Duration,
    /// A connection that sends nothing for this long between frames, with
    /// none of its requests in flight, is closed.
    pub idle_connection_timeout: Duration,
    /// Requests of one connection in flight at once (read but not yet
    /// answered). Past it, the reader waits for the writer.
    pub max_in_flight: usize,
    /// Bytes of requests and answers held across all connections, from a
    /// request's length prefix until its answer is written to the socket.
    /// When spent, readers stop reading until answers go out. At least
    /// [`MIN_BYTES_IN_FLIGHT`].
    pub max_bytes_in_flight: usize,
    /// How long a graceful shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// The tokens clients must present with `AUTH` before anything else
    /// (`None`: no authentication, as without `--auth-token-file`).
    pub auth: Option<Arc<auth::Tokens>>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            max_connections: 4096,
            max_connections_per_ip: 1024,
            idle_timeout: Duration::from_secs(30),
            idle_connection_timeout: Duration::from_secs(600),
            max_in_flight: 1024,
            max_bytes_in_flight: 64 << 20,
            drain_timeout: Duration::from_secs(10),
            auth: None,
        }
    }
}

/// A running client listener. Dropping it does not stop it; call
/// [`ClientListener::shutdown`].
pub struct ClientListener {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
    connections: Arc<Semaphore>,
    budget: Budget,
    config: ListenerConfig,
    stats: Arc<ListenerStats>,
}

impl ClientListener {
    /// Starts serving `listener` with `handler`.
    pub fn start<H: ClientHandler + ?Sized>(
        listener: TcpListener,
        handler: Arc<H>,
        config: ListenerConfig,
    ) -> std::io::Result<ClientListener> {
        let local_addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let connections = Arc::new(Semaphore::new(config.max_connections));
        let budget = Budget::new(config.max_bytes_in_flight);
        let stats = Arc::new(ListenerStats::default());
        let accept_task = tokio::spawn(accept_loop(
            listener,
            handler,
            Limits {
                config: config.clone(),
                connections: connections.clone(),
                per_ip: Arc::default(),
                budget: budget.clone(),
                stats: stats.clone(),
            },
            stop_rx,
        ));
        Ok(ClientListener {
            local_addr,
            stop,
            accept_task,
            connections,
            budget,
            config,
            stats,
        })
    }

    /// Bytes of requests and answers held right now, out of
    /// [`ListenerConfig::max_bytes_in_flight`].
    pub fn bytes_in_flight(&self) -> usize {
        self.budget.in_use()
    }

    /// Bytes and connections this listener has counted.
    pub fn stats(&self) -> Arc<ListenerStats> {
        self.stats.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets every connection finish the requests it has
    /// read (new ones are not read), flushes their answers and closes them.
    /// Returns false if some connection did not finish within the drain
    /// timeout.
    pub async fn shutdown(self) -> bool {
        let _ = self.stop.send(true);
        let _ = self.accept_task.await;
        // Every live connection holds one permit: all permits back means
        // every connection is done.
        let all = u32::try_from(self.config.max_connections).unwrap_or(u32::MAX);
        tokio::time::timeout(
            self.config.drain_timeout,
            self.connections.acquire_many(all),
        )
        .await
        .is_ok()
    }
}
