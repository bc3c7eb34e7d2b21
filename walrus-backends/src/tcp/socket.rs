//! Socket options every inter-node connection gets, on both sides.

use std::fmt::Display;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use super::TcpConfig;

/// Probes sent without an answer before a silent peer is declared dead.
#[cfg(any(target_os = "linux", target_os = "android"))]
const KEEPALIVE_PROBES: u32 = 4;

/// Sets TCP_NODELAY (frames are written whole, so Nagle only adds latency)
/// and, if configured, keepalive: a peer that vanished without a FIN or RST
/// (power loss, partition) is noticed after about 5 × `keepalive`, which
/// closes the connection and fails its callers at once instead of leaving
/// every later request to time out on it.
pub(crate) fn tune(stream: &TcpStream, config: &TcpConfig, peer: &dyn Display) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::warn!(%peer, "cannot set TCP_NODELAY: {e}");
    }
    let Some(every) = config.keepalive else {
        return;
    };
    let sock = SockRef::from(stream);
    let params = TcpKeepalive::new().with_time(every).with_interval(every);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let params = params.with_retries(KEEPALIVE_PROBES);
    if let Err(e) = sock.set_tcp_keepalive(&params) {
        tracing::warn!(%peer, "cannot enable TCP keepalive: {e}");
    }
    // Keepalive only runs on an idle connection; this bounds how long sent
    // data may stay unacknowledged before the kernel gives up.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = sock.set_tcp_user_timeout(Some(every * (KEEPALIVE_PROBES + 1))) {
        tracing::warn!(%peer, "cannot set TCP_USER_TIMEOUT: {e}");
    }
}
