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

use crate::clock::Clock;

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
        *self
            .offset
            .lock()
            .expect("clock lock poisoned: a panic while adding durations") += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start
            + *self
                .offset
                .lock()
                .expect("clock lock poisoned: a panic while adding durations")
    }
}
