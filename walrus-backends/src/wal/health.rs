//! Store-wide record of storage failures: how many syncs failed, and the
//! test seam that makes the next ones fail.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub(crate) struct Health {
    failed_syncs: AtomicU64,
    /// Flushes still to fail on purpose ([`super::WalStore::inject_sync_failures`]).
    injected: AtomicU64,
}

impl Health {
    pub fn record_failed_sync(&self) {
        self.failed_syncs.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed_syncs(&self) -> u64 {
        self.failed_syncs.load(Ordering::Relaxed)
    }

    pub fn inject(&self, n: u64) {
        self.injected.store(n, Ordering::SeqCst);
    }

    /// True if this flush is to fail on purpose. One load per flush (a
    /// syscall's worth of work), nothing per append.
    pub fn take_injected(&self) -> bool {
        self.injected.load(Ordering::Relaxed) > 0
            && self
                .injected
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
    }
}
