//! The runner of the fuzz targets (`fuzz_*.rs` in walrus-core and
//! walrus-backends): proptest, short by default, long on demand.
//!
//! - `cargo test` runs each target for its default number of cases
//!   (`PROPTEST_CASES` overrides it).
//! - `WALRUS_FUZZ_SECS=600 cargo test --release --test fuzz_request` runs
//!   new random cases in batches until that many seconds have passed, and
//!   prints how many it ran.
//!
//! A failure is shrunk, its seed is saved to
//! `<test file>.proptest-regressions` (commit it) and replayed first on every
//! later run; see docs/testing.md.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner};

/// Runs `test` on values of `strategy`; panics with the shrunk input on a
/// failure. `source_file` is `file!()` of the caller (where seeds are kept).
pub fn fuzz<S: Strategy>(
    source_file: &'static str,
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let long = std::env::var("WALRUS_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if long.is_some() { 2_000 } else { default_cases });
    let config = Config {
        cases,
        source_file: Some(source_file),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        // Shrinking a slow case (a WAL reopen) must not take forever.
        max_shrink_time: 60_000,
        ..Config::default()
    };
    let start = Instant::now();
    let mut ran: u64 = 0;
    loop {
        let mut runner = TestRunner::new(config.clone());
        match runner.run(&strategy, &test) {
            Ok(()) => ran += u64::from(cases),
            Err(TestError::Fail(why, value)) => panic!(
                "{name}: failed after {ran}+ cases: {why}\nminimal input: {value:#?}\n\
                 (the seed is saved in the .proptest-regressions file next to the test)"
            ),
            Err(TestError::Abort(why)) => panic!("{name}: aborted: {why}"),
        }
        match long {
            Some(limit) if start.elapsed() < limit => continue,
            _ => break,
        }
    }
    if long.is_some() {
        eprintln!(
            "fuzz {name}: {ran} cases in {:.0} s, no failure",
            start.elapsed().as_secs_f64()
        );
    }
}
