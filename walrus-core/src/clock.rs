//! Time, behind a trait so tests can drive it.
//!
//! Leases are decided on a clock that keeps counting while the machine is
//! suspended ([`BootClock`], `CLOCK_BOOTTIME`), not on tokio's clock
//! (`CLOCK_MONOTONIC`), which stops during a suspend: a node that wakes up
//! must see its lease as long gone, not as valid for the rest of the second
//! it had left when it fell asleep. See docs/architecture.md, "Leases".

use std::time::Duration;

use tokio::time::Instant;

/// A monotonic clock. Leases and failover read time only through this.
///
/// Its instants are comparable only with instants of the same clock: a
/// [`BootClock`] runs ahead of tokio's clock after a suspend, so never
/// sleep until one of them (sleep for a duration and read the clock again).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// Tokio's clock: real time, or the test's paused time under
/// `#[tokio::test(start_paused = true)]`. It stops while the machine is
/// suspended, so the real server decides leases on a [`BootClock`].
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Where a [`BootClock`] reads how much time has passed.
pub trait TimeSource: Send + Sync + 'static {
    /// Time since a fixed origin (e.g. boot), counting time the machine
    /// spent suspended.
    fn elapsed(&self) -> Duration;
}

/// `CLOCK_BOOTTIME`: like `CLOCK_MONOTONIC`, but it keeps counting while the
/// machine is suspended. (A paused virtual machine is another matter: all
/// its clocks stop; docs/architecture.md says what bounds it.)
#[derive(Debug, Default, Clone, Copy)]
pub struct Boottime;

impl TimeSource for Boottime {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn elapsed(&self) -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the call's duration.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        // CLOCK_BOOTTIME exists since Linux 2.6.39; the call fails only for
        // an unknown clock or a bad pointer, neither of which can happen.
        assert_eq!(
            rc,
            0,
            "clock_gettime(CLOCK_BOOTTIME) failed: {}",
            std::io::Error::last_os_error()
        );
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// Elsewhere there is no portable suspend-counting clock: the process's
    /// monotonic clock, with the suspend caveat it implies.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn elapsed(&self) -> Duration {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN.get_or_init(std::time::Instant::now).elapsed()
    }
}

/// The real server's lease clock: instants on tokio's timeline when it is
/// created, then advancing with `CLOCK_BOOTTIME` (or any [`TimeSource`]),
/// so time spent suspended counts towards a lease's end.
pub struct BootClock<S: TimeSource = Boottime> {
    origin: Instant,
    base: Duration,
    source: S,
}

impl BootClock {
    /// A clock on `CLOCK_BOOTTIME`.
    pub fn new() -> Self {
        Self::with_source(Boottime)
    }
}

impl Default for BootClock {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: TimeSource> BootClock<S> {
    /// A clock on `source` (tests use a source whose suspends they choose).
    pub fn with_source(source: S) -> Self {
        BootClock {
            origin: Instant::now(),
            base: source.elapsed(),
            source,
        }
    }
}

impl<S: TimeSource> Clock for BootClock<S> {
    fn now(&self) -> Instant {
        self.origin + self.source.elapsed().saturating_sub(self.base)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_the_real_boottime_should_never_run_behind_the_monotonic_clock() {
        let mono = |ts: &mut libc::timespec| {
            // SAFETY: as in `Boottime::elapsed`.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, ts) };
            Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
        };
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let before = mono(&mut ts);
        let boot = Boottime.elapsed();
        assert!(boot >= before, "boottime {boot:?} < monotonic {before:?}");
        let clock = BootClock::new();
        let a = clock.now();
        std::thread::sleep(Duration::from_millis(5));
        assert!(clock.now() >= a + Duration::from_millis(5));
    }
}
