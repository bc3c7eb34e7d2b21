//! A histogram of atomic buckets, for figures recorded on a hot path and
//! read by a scraper (Prometheus): recording one value is two relaxed
//! `fetch_add`s and a short scan of the bounds, never a lock.
//!
//! A reader may see a value in a bucket before it is in the sum (or the
//! other way round): each scrape is off by at most the observations in
//! flight, which Prometheus's rates smooth over anyway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counts observations into buckets with fixed upper bounds.
///
/// Values are recorded as whole multiples of `unit` (nanoseconds for a
/// latency, 1 for a count), so the sum is an exact integer.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds, ascending, in the reported unit (seconds, members).
    bounds: &'static [f64],
    /// What one recorded unit is worth in the reported unit.
    unit: f64,
    /// Observations per bucket, not cumulative; the last is `+Inf`.
    buckets: Box<[AtomicU64]>,
    /// Sum of the observations, in recorded units.
    sum: AtomicU64,
}

/// What a [`Histogram`] held when read.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of the observations, in the reported unit.
    pub sum: f64,
    pub count: u64,
    /// `(upper bound, observations in this bucket alone)`, ascending, the
    /// last bound `+Inf`. Not cumulative: Prometheus encoders add them up.
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// `bounds` must ascend; a value above the last lands in `+Inf`.
    pub fn new(bounds: &'static [f64], unit: f64) -> Histogram {
        debug_assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "histogram bounds must ascend"
        );
        Histogram {
            bounds,
            unit,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// A latency histogram: `bounds` in seconds, recorded in nanoseconds.
    pub fn seconds(bounds: &'static [f64]) -> Histogram {
        Histogram::new(bounds, 1e-9)
    }

    /// Records `units` (whole multiples of this histogram's unit).
    pub fn observe(&self, units: u64) {
        let value = units as f64 * self.unit;
        let i = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(units, Ordering::Relaxed);
    }

    /// Records a duration in a histogram made by [`Histogram::seconds`].
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
                (bound, n.load(Ordering::Relaxed))
            })
            .collect();
        HistogramSnapshot {
            sum: self.sum.load(Ordering::Relaxed) as f64 * self.unit,
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_values_when_observed_should_land_in_the_first_bucket_whose_bound_holds_them() {
        static BOUNDS: [f64; 3] = [1.0, 2.0, 4.0];
        let h = Histogram::new(&BOUNDS, 1.0);
        for v in [1, 2, 3, 4, 5, 100] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(
            s.buckets,
            vec![(1.0, 1), (2.0, 1), (4.0, 2), (f64::INFINITY, 2)]
        );
        assert_eq!((s.count, s.sum), (6, 115.0));
    }

    #[test]
    fn given_a_latency_histogram_when_a_duration_is_observed_should_report_seconds() {
        static BOUNDS: [f64; 2] = [0.001, 0.01];
        let h = Histogram::seconds(&BOUNDS);
        h.observe_duration(Duration::from_millis(5));
        let s = h.snapshot();
        assert_eq!(s.buckets[1], (0.01, 1));
        assert!((s.sum - 0.005).abs() < 1e-12, "{}", s.sum);
    }
}
