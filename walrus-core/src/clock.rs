//! Time, behind a trait so tests can drive it.

use std::time::Duration;

use tokio::time::Instant;

/// A monotonic clock. Leases and failover read time only through this.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// Tokio's clock: real time, or the test's paused time under
/// `#[tokio::test(start_paused = true)]`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Default lease duration: a node that cannot confirm with the quorum for
/// this long stops acknowledging writes.
pub const DEFAULT_LEASE: Duration = Duration::from_millis(1000);
/// How often leases are renewed (the seed's 100 ms).
pub const DEFAULT_LEASE_RENEW: Duration = Duration::from_millis(100);
/// Extra wait beyond the lease before failover, for clock drift and the
/// renewal in flight.
pub const DEFAULT_FAILOVER_MARGIN: Duration = Duration::from_millis(500);
