//! What the listener counts of its own traffic, for `/metrics`: plain
//! atomics, bumped once per frame read, per write and per connection, so
//! counting costs no lock on the request path.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one client listener since it started.
#[derive(Debug, Default)]
pub struct ListenerStats {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connections_open: AtomicU64,
    connections_accepted: AtomicU64,
}

impl ListenerStats {
    /// Bytes of request frames read (length prefixes included).
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Bytes of answers written to sockets.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    /// Connections being served now.
    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    /// Connections admitted since start (refused ones are not counted).
    pub fn connections_accepted(&self) -> u64 {
        self.connections_accepted.load(Ordering::Relaxed)
    }

    pub(super) fn read(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(super) fn wrote(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(super) fn opened(&self) {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}
