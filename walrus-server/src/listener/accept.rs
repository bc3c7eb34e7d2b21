//! Accepting connections, within the caps: connections in total and per
//! client address; one over a cap is answered `ERR` and closed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
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
            tokio::spawn(refuse(stream, text, config.idle_timeout));
            continue;
        };
        match limits.connections.clone().try_acquire_owned() {
            Ok(permit) => {
                let handler = handler.clone();
                let config = config.clone();
                let budget = limits.budget.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    serve_connection(stream, handler, config, budget, stop).await;
                    tracing::debug!(%peer, "client connection closed");
                    drop((permit, slot));
                });
            }
            Err(_) => {
                drop(slot);
                let text =
                    "too many connections: the server is at its connection limit, retry later";
                tokio::spawn(refuse(stream, text.into(), config.idle_timeout));
            }
        }
    }
}

async fn refuse(mut stream: TcpStream, text: String, timeout: Duration) {
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
