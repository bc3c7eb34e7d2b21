//! Accepting connections, within the caps: connections in total and per
//! client address; one over a cap is answered `ERR` and closed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use walrus_core::protocol::Response;

use super::budget::Budget;
use super::connection::serve_connection;
use super::{ClientHandler, ListenerConfig};
use walrus_core::locks::MutexExt;

/// What the accept loop shares with every connection.
pub(super) struct Limits {
    pub(super) config: ListenerConfig,
    pub(super) connections: Arc<Semaphore>,
    pub(super) per_ip: Arc<PerIp>,
    pub(super) budget: Budget,
    pub(super) stats: Arc<super::ListenerStats>,
}

pub(super) async fn accept_loop<H: ClientHandler + ?Sized>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let config = &limits.config;
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of
                // spinning; the listener itself stays usable.
                tracing::warn!(error = %e, "accepting a client connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(slot) = limits
            .per_ip
            .admit(peer.ip(), config.max_connections_per_ip)
        else {
            let text = format!(
                "too many connections from {}: at most {} per client address; close idle \
                 connections or retry later",
                peer.ip(),
                config.max_connections_per_ip
            );
            tokio::spawn(refuse(stream, peer, text, config.clone()));
            continue;
        };
        match limits.connections.clone().try_acquire_owned() {
            Ok(permit) => {
                let handler = handler.clone();
                let config = config.clone();
                let budget = limits.budget.clone();
                let stop = stop.clone();
                let stats = limits.stats.clone();
                stats.opened();
                tokio::spawn(async move {
                    let served = stats.clone();
                    match config.tls.clone() {
                        None => {
                            let (read, write) = stream.into_split();
                            serve_connection(read, write, handler, config, budget, served, stop)
                                .await;
                        }
                        Some(tls) => {
                            if let Some(s) = tls.accept(stream, peer, config.idle_timeout).await {
                                let (read, write) = tokio::io::split(s);
                                serve_connection(
                                    read, write, handler, config, budget, served, stop,
                                )
                                .await;
                            }
                        }
                    }
                    stats.closed();
                    tracing::debug!(%peer, "client connection closed");
                    drop((permit, slot));
                });
            }
            Err(_) => {
                drop(slot);
                let text =
                    "too many connections: the server is at its connection limit, retry later";
                tokio::spawn(refuse(stream, peer, text.into(), config.clone()));
            }
        }
    }
}

/// Answers `ERR <text>` and closes: over TLS once the handshake is done,
/// so that the client can read why.
async fn refuse(stream: TcpStream, peer: SocketAddr, text: String, config: ListenerConfig) {
    let timeout = config.idle_timeout;
    match config.tls {
        None => refuse_on(stream, text, timeout).await,
        Some(tls) => {
            if let Some(s) = tls.accept(stream, peer, timeout).await {
                refuse_on(s, text, timeout).await;
            }
        }
    }
}

async fn refuse_on<S: AsyncWrite + Unpin>(mut stream: S, text: String, timeout: Duration) {
    let mut out = BytesMut::new();
    Response::Err(text).encode(&mut out);
    let _ = tokio::time::timeout(timeout, stream.write_all(&out)).await;
    let _ = stream.shutdown().await;
}

/// Live connections per client IP address.
#[derive(Default)]
pub(super) struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    /// Counts one more connection from `ip`, unless it already has `cap`.
    fn admit(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<IpSlot> {
        let mut counts = self.counts.lock_or_recover();
        let n = counts.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

/// One connection's place in the per-IP count.
struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock_or_recover();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}
