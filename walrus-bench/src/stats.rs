//! What a run measured: per-connection counters and an HDR latency
//! histogram, merged at the end into one [`Report`].

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::verify::VerifyReport;

/// Latencies are recorded in nanoseconds, from 1 ns up to an hour, with
/// three significant digits: fine enough for a ~20 µs loopback echo and wide
/// enough that a stalled server is recorded, not clipped.
const HIST_MAX_NS: u64 = 3_600_000_000_000;

/// The counters one connection keeps (no sharing on the hot path).
#[derive(Debug, Clone)]
pub struct ConnStats {
    /// Latency of every successful request.
    pub latency: Histogram<u64>,
    /// Successful requests (`OK`, `OK <entry>` and `EMPTY`).
    pub ok: u64,
    /// GETs answered `EMPTY` (also counted in `ok`).
    pub empty: u64,
    /// Payload bytes moved by successful requests (sent by PUT, received by GET).
    pub payload_bytes: u64,
    /// Failed requests by error text.
    pub errors: BTreeMap<String, u64>,
}

impl Default for ConnStats {
    fn default() -> Self {
        ConnStats {
            latency: Histogram::new_with_bounds(1, HIST_MAX_NS, 3)
                .expect("constant histogram bounds are valid"),
            ok: 0,
            empty: 0,
            payload_bytes: 0,
            errors: BTreeMap::new(),
        }
    }
}

impl ConnStats {
    pub fn record_ok(&mut self, latency: Duration, payload_bytes: usize) {
        self.ok += 1;
        self.payload_bytes += payload_bytes as u64;
        self.latency
            .saturating_record((latency.as_nanos() as u64).clamp(1, HIST_MAX_NS));
    }

    pub fn record_error(&mut self, text: impl Into<String>, count: u64) {
        *self.errors.entry(text.into()).or_insert(0) += count;
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, other: &ConnStats) {
        self.latency
            .add(&other.latency)
            .expect("histograms with the same bounds always add");
        self.ok += other.ok;
        self.empty += other.empty;
        self.payload_bytes += other.payload_bytes;
        for (text, n) in &other.errors {
            self.record_error(text.clone(), *n);
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1e6,
        }
    }
}

/// The outcome of one run, as printed (text or `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was run (flattened: the JSON keeps one level).
    #[serde(flatten)]
    pub shape: RunShape,
    /// From the first request to the last response.
    pub elapsed_s: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub mib_per_sec: f64,
    pub empty: u64,
    pub errors_total: u64,
    pub errors: BTreeMap<String, u64>,
    /// Latency of successful requests, from the actual send; with a rate,
    /// from the intended send time for requests the server held back (no
    /// coordinated omission).
    pub latency_ms: Percentiles,
    pub verify: Option<VerifyReport>,
    /// CPU used by walrus-bench itself during the run, in % of one core:
    /// near the core count means the client, not the server, was the limit.
    pub client_cpu_pct: Option<f64>,
    /// The merged histogram, for callers that need more than percentiles.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

/// Everything about a run that is not a measurement.
#[derive(Debug, Clone, Serialize)]
pub struct RunShape {
    pub workload: String,
    pub targets: Vec<String>,
    pub connections: usize,
    pub depth: usize,
    pub payload_size: usize,
    pub topics: usize,
    /// Target rate (ops/s over all connections), when one was given.
    pub rate: Option<f64>,
    /// Whether TCP_NODELAY was set (false with `--no-nodelay`).
    pub nodelay: bool,
}

impl Report {
    pub fn new(shape: RunShape, stats: &ConnStats, elapsed: Duration) -> Report {
        let secs = elapsed.as_secs_f64().max(1e-9);
        Report {
            shape,
            elapsed_s: elapsed.as_secs_f64(),
            ops: stats.ok,
            ops_per_sec: stats.ok as f64 / secs,
            mib_per_sec: stats.payload_bytes as f64 / (1024.0 * 1024.0) / secs,
            empty: stats.empty,
            errors_total: stats.error_total(),
            errors: stats.errors.clone(),
            latency_ms: Percentiles::of(&stats.latency),
            verify: None,
            client_cpu_pct: None,
            histogram: stats.latency.clone(),
        }
    }

    /// Successful requests slower than `ms` milliseconds.
    pub fn count_slower_than_ms(&self, ms: f64) -> u64 {
        let ns = (ms * 1e6) as u64;
        self.histogram
            .count_between(ns.saturating_add(1), HIST_MAX_NS)
    }

    /// True when nothing failed: no error and, if verified, a clean read-back.
    pub fn is_clean(&self) -> bool {
        self.errors_total == 0 && self.verify.as_ref().is_none_or(|v| v.ok)
    }

    /// The human-readable summary.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let shape = &self.shape;
        let rate = match shape.rate {
            Some(r) => format!(", target rate {r:.0}/s"),
            None => String::new(),
        };
        s.push_str(&format!(
            "{} to {}: {} conn x depth {}, {} B payload, {} topic(s){}{}\n",
            shape.workload,
            shape.targets.join(","),
            shape.connections,
            shape.depth,
            shape.payload_size,
            shape.topics,
            rate,
            if shape.nodelay {
                ""
            } else {
                ", no TCP_NODELAY"
            },
        ));
        s.push_str(&format!(
            "  {} ok in {:.2} s: {:.0} ops/s, {:.2} MiB/s",
            self.ops, self.elapsed_s, self.ops_per_sec, self.mib_per_sec
        ));
        if self.empty > 0 {
            s.push_str(&format!(" ({} EMPTY)", self.empty));
        }
        s.push('\n');
        let latency = if shape.rate.is_some() {
            "latency ms (held-back requests from their intended time)"
        } else {
            "latency ms"
        };
        push_summary(
            &mut s,
            latency,
            &self.latency_ms,
            self.client_cpu_pct,
            &self.errors,
        );
        if let Some(v) = &self.verify {
            s.push_str(&v.to_text());
        }
        s
    }
}

/// The lines of a text report after its rates: latency percentiles under
/// `latency`, the client's CPU, the errors by text.
pub fn push_summary(
    s: &mut String,
    latency: &str,
    l: &Percentiles,
    client_cpu_pct: Option<f64>,
    errors: &BTreeMap<String, u64>,
) {
    s.push_str(&format!(
        "  {latency}: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}\n",
        l.p50, l.p90, l.p99, l.p999, l.max, l.mean
    ));
    if let Some(cpu) = client_cpu_pct {
        s.push_str(&format!("  client CPU: {cpu:.0}% of one core\n"));
    }
    let total: u64 = errors.values().sum();
    if total == 0 {
        s.push_str("  errors: none\n");
    } else {
        s.push_str(&format!("  errors: {total}\n"));
        for (text, n) in errors {
            s.push_str(&format!("    {n:>10}  {text}\n"));
        }
    }
}

/// CPU time (user + system) this process has used so far.
pub fn process_cpu_time() -> Option<Duration> {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Some(tv(usage.ru_utime) + tv(usage.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn given_1_to_1000_ms_when_summarised_should_report_percentiles_within_hdr_precision() {
        let mut s = ConnStats::default();
        for v in 1..=1000 {
            s.record_ok(ms(v), 10);
        }
        let p = Percentiles::of(&s.latency);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.002 + 1e-6;
        assert!(close(p.p50, 500.0), "p50 {}", p.p50);
        assert!(close(p.p90, 900.0), "p90 {}", p.p90);
        assert!(close(p.p99, 990.0), "p99 {}", p.p99);
        assert!(close(p.p999, 999.0), "p99.9 {}", p.p999);
        assert!(close(p.max, 1000.0), "max {}", p.max);
        assert!(close(p.mean, 500.5), "mean {}", p.mean);
        assert_eq!(s.ok, 1000);
        assert_eq!(s.payload_bytes, 10_000);
    }

    #[test]
    fn given_one_stall_among_fast_requests_when_summarised_should_show_it_only_in_the_tail() {
        let mut s = ConnStats::default();
        for _ in 0..9_999 {
            s.record_ok(Duration::from_micros(100), 0);
        }
        s.record_ok(Duration::from_secs(5), 0);
        let p = Percentiles::of(&s.latency);
        assert!(p.p999 < 0.2, "p99.9 {}", p.p999);
        assert!((p.max - 5000.0).abs() < 5.0, "max {}", p.max);
    }

    #[test]
    fn given_two_connections_when_merged_should_add_counts_errors_and_latencies() {
        let mut a = ConnStats::default();
        a.record_ok(ms(1), 100);
        a.record_error("topic not found", 2);
        let mut b = ConnStats::default();
        b.record_ok(ms(3), 100);
        b.empty += 1;
        b.record_error("topic not found", 1);
        b.record_error("write lease expired", 4);

        a.merge(&b);
        assert_eq!(a.ok, 2);
        assert_eq!(a.empty, 1);
        assert_eq!(a.payload_bytes, 200);
        assert_eq!(a.errors["topic not found"], 3);
        assert_eq!(a.errors["write lease expired"], 4);
        assert_eq!(a.error_total(), 7);
        assert_eq!(a.latency.len(), 2);
    }

    #[test]
    fn given_a_run_when_reported_should_compute_rates_over_elapsed_time() {
        let mut s = ConnStats::default();
        for _ in 0..2048 {
            s.record_ok(ms(1), 1024);
        }
        let shape = RunShape {
            workload: "put".into(),
            targets: vec!["127.0.0.1:1".into()],
            connections: 1,
            depth: 1,
            payload_size: 1024,
            topics: 1,
            rate: None,
            nodelay: true,
        };
        let r = Report::new(shape, &s, Duration::from_secs(2));
        assert_eq!(r.ops, 2048);
        assert!((r.ops_per_sec - 1024.0).abs() < 1e-9);
        assert!((r.mib_per_sec - 1.0).abs() < 1e-9);
        assert!(r.is_clean());
        let text = r.to_text();
        assert!(text.contains("1024 ops/s"), "{text}");
        assert!(text.contains("errors: none"), "{text}");
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["ops"], 2048);
        // The run's shape stays at the top level (scripts/bench_table.py).
        assert_eq!(json["connections"], 1);
        assert_eq!(json["payload_size"], 1024);
        assert!(json["latency_ms"]["p99"].as_f64().unwrap() > 0.9);
    }

    #[test]
    fn given_no_successful_request_when_summarised_should_report_zeros_not_panic() {
        let s = ConnStats::default();
        assert_eq!(Percentiles::of(&s.latency).max, 0.0);
    }
}
