//! The calling side: one persistent, multiplexed connection per peer address.
//!
//! Every request gets an id unique on its connection. A caller registers a
//! one-shot slot under that id, sends its frame (straight into the socket
//! when the connection is idle, see [`FrameWriter`]) and waits; the connection's reader task routes each response to the
//! slot with the same id. So many requests are in flight on one connection,
//! and a caller that times out or is cancelled (openraft drops RPC futures
//! that exceed its timeout) only removes its slot: the late answer is
//! recognised by its id and dropped, and the connection stays usable.
//!
//! A connection that fails (EOF, I/O error, a frame that breaks the protocol)
//! is closed as a whole: its waiting callers learn at once that the peer is
//! unreachable, and the next call dials again. Dialling is serialised per peer
//! and backs off exponentially after failures; during the back-off calls fail
//! fast with `Unreachable` instead of piling up on a dead address.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use walrus_core::{Error, NodeId, NodeRequest, NodeResponse, Result};

use super::envelope::{self, Kind, ResponsePayload};
use super::handshake;
use super::socket;
use super::writer::{stopped, FrameWriter};
use super::TcpConfig;
use walrus_core::locks::MutexExt;

/// Read buffer per connection.
const READ_BUFFER: usize = 16 * 1024;

/// Who a call is for, to word its errors.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    Node(NodeId),
    Addr,
}

impl Target {
    fn unreachable(&self, addr: &str, why: &str) -> Error {
        tracing::debug!(?self, addr, why, "peer unreachable");
        match self {
            Target::Node(id) => Error::Unreachable(*id),
            Target::Addr => Error::Unavailable(format!(
                "cannot reach {addr} ({why}); check the address and that the node is up, then retry"
            )),
        }
    }

    fn who(&self, addr: &str) -> String {
        match self {
            Target::Node(id) => format!("node {id} at {addr}"),
            Target::Addr => addr.to_string(),
        }
    }

    /// Timed out before the request was handed to the connection: the
    /// peer never saw it.
    fn timeout(&self, addr: &str, after: Duration) -> Error {
        Error::Timeout(format!("{} after {} ms", self.who(addr), after.as_millis()))
    }

    /// The request was sent (or is partly on the wire) and no answer came:
    /// the peer may or may not have handled it.
    fn no_answer(&self, addr: &str, why: &str) -> Error {
        Error::NoAnswer(format!("no answer from {}: {why}", self.who(addr)))
    }
}

/// All outgoing connections of one transport, keyed by peer address.
pub(crate) struct Pool {
    config: TcpConfig,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    closed: AtomicBool,
}

impl Pool {
    pub(crate) fn new(config: TcpConfig) -> Self {
        Pool {
            config,
            peers: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        }
    }

    pub(crate) async fn call(
        &self,
        target: Target,
        addr: &str,
        req: &NodeRequest,
    ) -> Result<NodeResponse> {
        let peer = self.peer(addr)?;
        // A connection found dead before our frame was queued never saw the
        // request, so trying a fresh one keeps "at most once".
        for _ in 0..2 {
            let conn = peer
                .connection(&self.config)
                .await
                .map_err(|why| target.unreachable(addr, &why))?;
            if self.closed.load(Ordering::Acquire) {
                conn.close();
                return Err(Error::ShuttingDown);
            }
            match conn.request(req, &self.config).await {
                Err(Failure::NotSent) => continue,
                Err(Failure::Lost) if self.closed.load(Ordering::Acquire) => {
                    return Err(
                        target.no_answer(addr, "this node shut down after sending the request")
                    )
                }
                Err(Failure::Lost) => {
                    return Err(target.no_answer(addr, "connection lost after the request was sent"))
                }
                Err(Failure::TimedOut { sent: false }) => {
                    return Err(target.timeout(addr, self.config.request_timeout))
                }
                Err(Failure::TimedOut { sent: true }) => {
                    return Err(target.no_answer(
                        addr,
                        &format!(
                            "none within {} ms of sending the request",
                            self.config.request_timeout.as_millis()
                        ),
                    ))
                }
                Err(Failure::Refused(e)) => return Err(e),
                Ok(answer) => return answer,
            }
        }
        Err(target.unreachable(addr, "connection closed as the request was queued"))
    }

    /// Closes every connection; later calls fail with `ShuttingDown`.
    pub(crate) fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        self.close_connections();
    }

    /// Closes every open connection (failing their callers); later calls
    /// dial again.
    pub(crate) fn close_connections(&self) {
        let peers: Vec<Arc<Peer>> = self.peers.lock_or_recover().values().cloned().collect();
        for peer in peers {
            if let Some(conn) = peer.current() {
                conn.close();
            }
        }
    }

    fn peer(&self, addr: &str) -> Result<Arc<Peer>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let mut peers = self.peers.lock_or_recover();
        Ok(peers
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(Peer::new(addr.to_string())))
            .clone())
    }
}

impl Drop for Pool {
    /// The connections' tasks hold them alive; without this a dropped
    /// transport would leave its sockets open.
    fn drop(&mut self) {
        self.close_connections();
    }
}

/// One peer address: its live connection, if any, and its dial state.
struct Peer {
    addr: String,
    conn: Mutex<Option<Arc<Connection>>>,
    /// Held while dialling so that concurrent callers share one dial.
    dial: tokio::sync::Mutex<Backoff>,
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Peer {
    fn new(addr: String) -> Self {
        Peer {
            addr,
            conn: Mutex::new(None),
            dial: tokio::sync::Mutex::new(Backoff::default()),
        }
    }

    fn current(&self) -> Option<Arc<Connection>> {
        self.conn
            .lock_or_recover()
            .as_ref()
            .filter(|c| c.is_open())
            .cloned()
    }

    /// The live connection, dialling one if needed. `Err` says why not.
    async fn connection(&self, config: &TcpConfig) -> std::result::Result<Arc<Connection>, String> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let mut backoff = self.dial.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn); // another caller dialled while we waited
        }
        if let Some(at) = backoff.retry_at {
            if Instant::now() < at {
                return Err(format!(
                    "{} dial(s) failed; next attempt in {} ms",
                    backoff.failures,
                    (at - Instant::now()).as_millis()
                ));
            }
        }
        let dialled = match tokio::time::timeout(
            config.connect_timeout,
            TcpStream::connect(&self.addr),
        )
        .await
        {
            Ok(Ok(stream)) => handshake::prove(stream, config, &self.addr).await,
            Ok(Err(e)) => Err(format!("connect failed: {e}")),
            Err(_) => Err(format!(
                "connect timed out after {} ms",
                config.connect_timeout.as_millis()
            )),
        };
        match dialled {
            Ok(stream) => {
                *backoff = Backoff::default();
                socket::tune(&stream, config, &self.addr);
                let conn = Connection::start(stream, self.addr.clone(), config);
                *self.conn.lock_or_recover() = Some(conn.clone());
                Ok(conn)
            }
            Err(why) => {
                backoff.failures = backoff.failures.saturating_add(1);
                let exp = (backoff.failures - 1).min(16);
                let delay = config
                    .reconnect_backoff_min
                    .saturating_mul(1 << exp)
                    .min(config.reconnect_backoff_max);
                backoff.retry_at = Some(Instant::now() + delay);
                Err(why)
            }
        }
    }
}

/// Why a request on one connection got no answer.
enum Failure {
    /// The connection was already closed; the frame was never queued.
    NotSent,
    /// The connection died after the frame was queued: it may have reached
    /// the peer.
    Lost,
    /// No answer in time; `sent` once the frame was queued or written (a
    /// sender still waiting for queue space has sent nothing).
    TimedOut { sent: bool },
    /// The request cannot be sent at all (too large, unencodable).
    Refused(Error),
}

type Waiters = HashMap<u64, oneshot::Sender<ResponsePayload>>;

/// One open, multiplexed connection.
struct Connection {
    addr: String,
    writer: Arc<FrameWriter>,
    /// `None` once closed: registering and closing take the same lock, so a
    /// caller never waits on a connection that has already failed.
    waiters: Mutex<Option<Waiters>>,
    next_id: AtomicU64,
    stop: watch::Sender<bool>,
}

impl Connection {
    fn start(stream: TcpStream, addr: String, config: &TcpConfig) -> Arc<Connection> {
        let (read, write) = stream.into_split();
        let (stop, _) = watch::channel(false);
        let conn = Arc::new(Connection {
            addr,
            writer: FrameWriter::new(write),
            waiters: Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(1),
            stop,
        });

        let reader = conn.clone();
        let max = config.max_message_bytes;
        let stall = config.stall_timeout;
        tokio::spawn(async move {
            let mut read = BufReader::with_capacity(READ_BUFFER, read);
            let stop = stopped(reader.stop.subscribe());
            tokio::pin!(stop);
            loop {
                let frame = tokio::select! {
                    _ = &mut stop => break,
                    frame = envelope::read_frame(&mut read, max, stall) => frame,
                };
                match frame {
                    Ok(frame) if frame.kind == Kind::Response => {
                        let answer = frame.decode::<ResponsePayload>().unwrap_or_else(|e| {
                            Err(Error::Internal(format!(
                                "undecodable response from {}: {e}; are both nodes on the same version?",
                                reader.addr
                            )))
                        });
                        match reader.take_waiter(frame.id) {
                            Some(waiter) => {
                                let _ = waiter.send(answer);
                            }
                            // Its caller timed out or was cancelled.
                            None => tracing::trace!(id = frame.id, "dropping a late response"),
                        }
                    }
                    Ok(frame) => {
                        tracing::warn!(addr = %reader.addr, kind = ?frame.kind, "peer sent a request on an outgoing connection; closing it");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(addr = %reader.addr, "connection to peer ends: {e}");
                        break;
                    }
                }
            }
            reader.close();
        });
        conn
    }

    fn is_open(&self) -> bool {
        // A failed write closes the writer first; the reader notices later.
        self.lock_waiters().is_some() && !self.writer.is_closed()
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, Option<Waiters>> {
        self.waiters.lock_or_recover()
    }

    fn take_waiter(&self, id: u64) -> Option<oneshot::Sender<ResponsePayload>> {
        self.lock_waiters().as_mut().and_then(|w| w.remove(&id))
    }

    /// Fails every waiting caller (their senders are dropped), shuts the
    /// socket down and stops the reader task. Idempotent.
    fn close(&self) {
        let waiters = self.lock_waiters().take();
        drop(waiters);
        self.writer.close();
        self.stop.send_replace(true);
    }

    async fn request(
        self: &Arc<Self>,
        req: &NodeRequest,
        config: &TcpConfig,
    ) -> std::result::Result<ResponsePayload, Failure> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = envelope::encode_request(id, req, config.max_message_bytes)
            .map_err(|e| Failure::Refused(e.into()))?;
        let (tx, rx) = oneshot::channel();
        match self.lock_waiters().as_mut() {
            Some(waiters) => waiters.insert(id, tx),
            None => return Err(Failure::NotSent),
        };
        // From here on, however this future ends (answer, timeout, or the
        // caller dropping it), the slot is removed.
        let _slot = Slot { conn: self, id };
        let sent = AtomicBool::new(false);
        let exchange = async {
            // Not sent at all (the connection closed first): safe to retry
            // on a fresh connection.
            self.writer
                .send(&frame)
                .await
                .map_err(|_| Failure::NotSent)?;
            sent.store(true, Ordering::Relaxed);
            rx.await.map_err(|_| Failure::Lost)
        };
        match tokio::time::timeout(config.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Failure::TimedOut {
                sent: sent.load(Ordering::Relaxed),
            }),
        }
    }
}

/// Removes a caller's waiter when its request ends in any way.
struct Slot<'a> {
    conn: &'a Connection,
    id: u64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.conn.take_waiter(self.id);
    }
}
