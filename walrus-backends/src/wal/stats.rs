//! What the syncer measures, for the server's `/metrics`: how long each
//! flush takes and how many waiting appends it answers (the group of a
//! group commit). Written by the syncer thread only, with relaxed atomics;
//! appenders never touch it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::stats::{Histogram, HistogramSnapshot};

/// Flush latency bounds, in seconds: 50 µs (a page-cache-only flush, or
/// tmpfs) to 1 s (a disk in trouble).
const SYNC_SECONDS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Group size bounds: powers of two up to 1024 waiting appends.
const GROUP_SIZE: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The syncer's figures, shared between it and [`super::WalStore::stats`].
#[derive(Debug)]
pub struct WalStats {
    flushes: AtomicU64,
    sync_seconds: Histogram,
    group_size: Histogram,
}

impl Default for WalStats {
    fn default() -> Self {
        WalStats {
            flushes: AtomicU64::new(0),
            sync_seconds: Histogram::seconds(&SYNC_SECONDS),
            group_size: Histogram::new(&GROUP_SIZE, 1.0),
        }
    }
}

/// [`WalStats`] read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct WalStatsSnapshot {
    /// Segment flushes (msync) done, one per segment per group commit.
    pub flushes: u64,
    /// How long each flush took, failed ones included.
    pub sync_seconds: HistogramSnapshot,
    /// Appends (and explicit syncs) answered by each flush that answered
    /// any: under `--fsync always`, how many writers shared one flush.
    /// Under `interval`/`never` appenders do not wait: only explicit syncs
    /// (a seal, a reader asking for unsynced entries) are counted.
    pub group_size: HistogramSnapshot,
}

impl WalStats {
    /// One flush attempt of one segment: `took` to flush, then `answered`
    /// waiters released by it. Counted before any waiter hears of it.
    pub(crate) fn record_flush(&self, took: Duration, answered: usize) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.sync_seconds.observe_duration(took);
        if answered > 0 {
            self.group_size.observe(answered as u64);
        }
    }

    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> WalStatsSnapshot {
        WalStatsSnapshot {
            flushes: self.flushes(),
            sync_seconds: self.sync_seconds.snapshot(),
            group_size: self.group_size.snapshot(),
        }
    }
}
