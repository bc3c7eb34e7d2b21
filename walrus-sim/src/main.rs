//! `walrus-sim`: run the simulator over many seeds, or replay one.
//!
//! ```text
//! walrus-sim --seeds 100000 --from 0 --jobs 2   # a search; prints seeds/s
//! walrus-sim --seed 4711 --trace               # replay one seed, with its trace
//! ```

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Parser;
use walrus_core::locks::MutexExt;
use walrus_sim::{run_seed, Options, Plant};

#[derive(Parser, Debug)]
#[command(about = "Deterministic simulation of a Walrus cluster under seeded faults")]
struct Args {
    /// Replay this one seed and print its report.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run this many seeds.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// The first seed of the search.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Threads (each runs whole seeds; a seed's run stays single-threaded).
    #[arg(long, default_value_t = 1)]
    jobs: u64,
    /// Operations per client (3 clients per run).
    #[arg(long, default_value_t = Options::default().ops)]
    ops: usize,
    /// Print the trace of the replayed seed.
    #[arg(long)]
    trace: bool,
    /// Plant the known lease bug (the simulator's self-test).
    #[arg(long)]
    plant: bool,
    /// No faults: a baseline.
    #[arg(long)]
    no_faults: bool,
    /// Stop at the first failing seed.
    #[arg(long)]
    stop: bool,
    /// Run every seed twice and fail the seeds whose traces differ (a
    /// check of the simulation's determinism).
    #[arg(long)]
    twice: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let opts = Options {
        ops: args.ops,
        faults: !args.no_faults,
        plant: args.plant.then_some(Plant::StoppedLeaseClock),
        trace: args.trace,
    };
    if let Some(seed) = args.seed {
        let report = run_seed(seed, &opts);
        for line in &report.trace {
            println!("{line}");
        }
        println!("{report}");
        return if report.violations.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    search(&args, &opts)
}

fn search(args: &Args, opts: &Options) -> ExitCode {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(args.from));
    let end = args.from.saturating_add(args.seeds);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let totals = Arc::new(Mutex::new([0u64; 7]));
    let workers: Vec<_> = (0..args.jobs.max(1))
        .map(|_| {
            let (next, done, failed, totals, opts) = (
                next.clone(),
                done.clone(),
                failed.clone(),
                totals.clone(),
                opts.clone(),
            );
            let (stop, twice) = (args.stop, args.twice);
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= end {
                    return;
                }
                let mut r = run_seed(seed, &opts);
                if twice {
                    let again = run_seed(seed, &opts);
                    if again.trace_hash != r.trace_hash {
                        r.violations.push(format!(
                            "not deterministic: a second run's trace hash is {:016x}",
                            again.trace_hash
                        ));
                    }
                }
                {
                    let mut t = totals.lock_or_recover();
                    let s = &r.stats;
                    for (total, n) in t.iter_mut().zip([
                        s.acked,
                        s.maybe,
                        s.not_applied,
                        s.faults,
                        s.rollovers,
                        s.failovers,
                        s.dropped_unsynced,
                    ]) {
                        *total += n;
                    }
                }
                if !r.violations.is_empty() {
                    println!("FAILED {r}");
                    failed.lock_or_recover().push(seed);
                    if stop {
                        next.store(end, Ordering::SeqCst);
                    }
                }
                let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                if n % 1000 == 0 {
                    let s = started.elapsed().as_secs_f64();
                    eprint!("\r{n} seeds, {:.1} seeds/s   ", n as f64 / s);
                    let _ = std::io::stderr().flush();
                }
            })
        })
        .collect();
    for w in workers {
        if w.join().is_err() {
            eprintln!("a worker thread panicked outside a seed's run");
        }
    }
    let n = done.load(Ordering::SeqCst);
    let secs = started.elapsed().as_secs_f64();
    let failed = failed.lock_or_recover().clone();
    let t = *totals.lock_or_recover();
    eprintln!();
    println!(
        "{n} seeds ({}..{}) in {secs:.1} s: {:.1} seeds/s with {} job(s); {} acked, {} maybe, \
         {} not applied writes, {} faults, {} rollovers, {} failovers, {} unsynced entries \
         lost; {} failed{}",
        args.from,
        args.from + n,
        n as f64 / secs,
        args.jobs.max(1),
        t[0],
        t[1],
        t[2],
        t[3],
        t[4],
        t[5],
        t[6],
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(": {failed:?}")
        }
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
