//! [`ManualClock`]: a [`Clock`] that moves only when the test says so.
//!
//! Most tests need none: under `#[tokio::test(start_paused = true)]` the
//! default [`SystemClock`](crate::SystemClock) reads tokio's paused time,
//! which jumps whenever every task waits. A `ManualClock` is for checks
//! that must hold time still while tasks run (or jump it without running
//! them), e.g. "this lease is valid until exactly t0 + lease".

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::{Clock, TimeSource};
use crate::locks::MutexExt;

pub struct ManualClock {
    start: Instant,
    offset: Mutex<Duration>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock standing at tokio's "now".
    pub fn new() -> Self {
        ManualClock {
            start: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        *self.offset.lock_or_recover() += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.offset.lock_or_recover()
    }
}

/// A [`TimeSource`] for a machine that can be suspended: it follows tokio's
/// clock (the test's paused time), and [`suspend`](Self::suspend) adds time
/// that passed while the machine slept, which tokio's clock (like
/// `CLOCK_MONOTONIC`) never sees. Give it to a
/// [`BootClock`](crate::clock::BootClock) to model `CLOCK_BOOTTIME`.
#[derive(Clone)]
pub struct SuspendableTime {
    start: Instant,
    slept: std::sync::Arc<Mutex<Duration>>,
}

impl Default for SuspendableTime {
    fn default() -> Self {
        Self::new()
    }
}

impl SuspendableTime {
    pub fn new() -> Self {
        SuspendableTime {
            start: Instant::now(),
            slept: Default::default(),
        }
    }

    /// The machine was suspended for `d` and has just resumed: no timer
    /// fired and tokio's clock did not move, but `d` has passed.
    pub fn suspend(&self, d: Duration) {
        *self.slept.lock_or_recover() += d;
    }
}

impl TimeSource for SuspendableTime {
    fn elapsed(&self) -> Duration {
        self.start.elapsed() + *self.slept.lock_or_recover()
    }
}
