//! # walrus-sim
//!
//! A deterministic simulator of a Walrus cluster (issue 13): 3 or 5 real
//! [`walrus_core::Node`]s on core's fakes (`FakeMetadataCluster`,
//! `SimNetwork`, `MemLogStore`), in one thread, on tokio's paused clock,
//! driven by one `u64` seed. Clients issue PUT, batched PUT and GET against
//! random nodes while faults are injected: message loss, delay and
//! reordering, duplicated reads and renewals, lost answers, partitions and
//! healing, consensus elections, crashes with power cuts, suspends and VM
//! pauses within the design's bounds, failed syncs and full disks. After
//! every run the [`checker`] verifies the log's guarantees. See
//! docs/testing.md ("The simulator").
//!
//! ```no_run
//! let report = walrus_sim::run_seed(42, &walrus_sim::Options::default());
//! assert!(report.violations.is_empty(), "{report}");
//! ```

pub mod checker;
pub mod history;
mod sim;
mod world;

use std::cell::RefCell;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

/// A known bug the simulator can plant, to show it catches one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plant {
    /// A node's write lease never runs out while it is cut off: its lease
    /// clock stops while it is isolated. It is the bug "acknowledge a
    /// write without a valid lease", planted through the fakes (the clock)
    /// instead of core's code.
    StoppedLeaseClock,
}

/// How to run a seed.
#[derive(Debug, Clone)]
pub struct Options {
    /// Operations per client (3 clients).
    pub ops: usize,
    /// Inject faults (off: a baseline run).
    pub faults: bool,
    pub plant: Option<Plant>,
    /// Keep the trace's lines in the report.
    pub trace: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ops: 12,
            faults: true,
            plant: None,
            trace: false,
        }
    }
}

/// Counts of one run.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub acked: u64,
    pub maybe: u64,
    pub not_applied: u64,
    pub gets: u64,
    pub faults: u64,
    /// Committed rollovers (a full segment sealed) and failovers (a
    /// silent leader's segment closed as pending).
    pub rollovers: u64,
    pub failovers: u64,
    /// Unsynced entries lost to power cuts and failed syncs.
    pub dropped_unsynced: u64,
    /// Simulated time the run took.
    pub sim_time: Duration,
}

/// The result of one seed.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub nodes: u64,
    /// A hash of every client answer and fault with its simulated time:
    /// equal for two runs of one seed.
    pub trace_hash: u64,
    pub violations: Vec<String>,
    pub stats: Stats,
    /// The trace's lines, when [`Options::trace`] asked for them.
    pub trace: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "seed {} ({} nodes): {} acked, {} maybe, {} not applied, {} GETs, {} faults, \
             {} rollovers, {} failovers, {} unsynced entries lost, {:.1} s simulated, \
             trace {:016x}",
            self.seed,
            self.nodes,
            s.acked,
            s.maybe,
            s.not_applied,
            s.gets,
            s.faults,
            s.rollovers,
            s.failovers,
            s.dropped_unsynced,
            s.sim_time.as_secs_f64(),
            self.trace_hash
        )?;
        for v in &self.violations {
            write!(f, "\n  VIOLATION: {v}")?;
        }
        if !self.violations.is_empty() {
            write!(f, "\n  replay: walrus-sim --seed {} --trace", self.seed)?;
        }
        Ok(())
    }
}

thread_local! {
    /// Panics in this thread's simulation, including in tasks tokio would
    /// otherwise swallow (a node's background loop).
    static PANICS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let recorded = PANICS.with(|p| match p.borrow_mut().as_mut() {
                Some(list) => {
                    list.push(info.to_string());
                    true
                }
                None => false,
            });
            if !recorded {
                previous(info);
            }
        }));
    });
}

/// Runs one seed: the same seed gives the same run (see docs/testing.md
/// for what could still make two runs differ).
pub fn run_seed(seed: u64, opts: &Options) -> Report {
    install_panic_hook();
    PANICS.with(|p| *p.borrow_mut() = Some(Vec::new()));
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime builds without I/O");
        runtime.block_on(sim::simulate(seed, opts))
    }));
    let panics = PANICS.with(|p| p.borrow_mut().take()).unwrap_or_default();
    let mut report = result.unwrap_or_else(|_| Report {
        seed,
        nodes: 0,
        trace_hash: 0,
        violations: Vec::new(),
        stats: Stats::default(),
        trace: Vec::new(),
    });
    report
        .violations
        .extend(panics.into_iter().map(|p| format!("panic: {p}")));
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeds `from..from + n`; panics naming every failing seed.
    fn sweep(from: u64, n: u64, opts: &Options) {
        let failed: Vec<String> = (from..from + n)
            .map(|seed| run_seed(seed, opts))
            .filter(|r| !r.violations.is_empty())
            .map(|r| r.to_string())
            .collect();
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    /// The CI budget, split in two so that libtest runs the halves on
    /// both cores.
    const CI_SEEDS: u64 = 500;

    #[test]
    fn given_the_ci_seeds_first_half_when_simulated_should_keep_every_guarantee() {
        sweep(0, CI_SEEDS, &Options::default());
    }

    #[test]
    fn given_the_ci_seeds_second_half_when_simulated_should_keep_every_guarantee() {
        sweep(CI_SEEDS, CI_SEEDS, &Options::default());
    }

    /// Seeds whose two runs differed before the write lease woke its
    /// waiters through a `Notify`, the simulator gave every metadata
    /// subscriber its own channel (tokio's watch wakes waiters in a
    /// random order), and READ's `select!`s were biased: with a fix
    /// undone, some of them differ again.
    const ONCE_DIVERGENT: [u64; 13] = [15, 43, 51, 55, 56, 78, 81, 137, 155, 193, 197, 199, 207];

    #[test]
    fn given_one_seed_when_run_twice_should_replay_the_same_trace() {
        let opts = Options {
            trace: true,
            ..Options::default()
        };
        let a = run_seed(7, &opts);
        let b = run_seed(7, &opts);
        assert!(a.stats.faults > 0 && a.stats.acked > 0, "{a}");
        assert_eq!(a.trace, b.trace, "seed 7 replayed differently");
        let opts = Options::default();
        let differ: Vec<u64> = ONCE_DIVERGENT
            .into_iter()
            .filter(|s| run_seed(*s, &opts).trace_hash != run_seed(*s, &opts).trace_hash)
            .collect();
        assert!(differ.is_empty(), "seeds {differ:?} replayed differently");
    }

    /// Seeds the long search once failed: 14219 and 43162 (a COMMIT
    /// refused by a node behind on metadata, fixed in core); 385870,
    /// 542717 and 969693 (a suspend ended early by "heal all" left the
    /// node's clock stopped: fixed in the simulator).
    const ONCE_FAILED: [u64; 5] = [14219, 43162, 385870, 542717, 969693];

    #[test]
    fn given_seeds_that_once_failed_when_simulated_should_keep_every_guarantee() {
        let failed: Vec<String> = ONCE_FAILED
            .into_iter()
            .map(|seed| run_seed(seed, &Options::default()))
            .filter(|r| !r.violations.is_empty())
            .map(|r| r.to_string())
            .collect();
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    #[test]
    fn given_a_planted_lease_bug_when_searching_should_catch_it_within_the_bound() {
        const BOUND: u64 = 500;
        let opts = Options {
            plant: Some(Plant::StoppedLeaseClock),
            ..Options::default()
        };
        let caught = (0..BOUND).find_map(|seed| {
            let r = run_seed(seed, &opts);
            (!r.violations.is_empty()).then_some(r)
        });
        let r = caught.unwrap_or_else(|| panic!("the planted bug survived {BOUND} seeds"));
        assert!(
            r.violations
                .iter()
                .any(|v| v.contains("leases overlapped") || v.contains("read before")),
            "caught, but not as a lease violation: {r}"
        );
    }
}
