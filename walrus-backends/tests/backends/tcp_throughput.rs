//! Round trips per second of TcpTransport on loopback: a measurement, not a
//! test (ignored by default; nothing is asserted about speed).
//!
//! ```text
//! CARGO_TARGET_DIR=... cargo test --release -p walrus-backends --test backends tcp_throughput:: -- --ignored --nocapture
//! ```

use crate::tcp_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tcp_common::*;
use walrus_backends::tcp::{TcpConfig, TcpTransport};
use walrus_core::{NodeRequest, NodeResponse, Transport};

const RUN_FOR: Duration = Duration::from_secs(3);

/// Runs `callers` tasks that each send Pings back to back for `RUN_FOR`;
/// returns (round trips, elapsed, per-call latencies in µs, sorted).
async fn run(caller: &Arc<TcpTransport>, callers: usize) -> (u64, Duration, Vec<u64>) {
    let start = Instant::now();
    let tasks = (0..callers).map(|_| {
        let caller = caller.clone();
        tokio::spawn(async move {
            let mut lat = Vec::new();
            while start.elapsed() < RUN_FOR {
                let t = Instant::now();
                let answer = caller.call(2, NodeRequest::Ping).await;
                assert_eq!(answer, Ok(NodeResponse::Done));
                lat.push(t.elapsed().as_micros() as u64);
            }
            lat
        })
    });
    let mut all: Vec<u64> = Vec::new();
    for t in futures::future::join_all(tasks).await {
        all.extend(t.unwrap());
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    (all.len() as u64, elapsed, all)
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --release -- --ignored --nocapture"]
async fn measure_ping_round_trips_per_second() {
    let server = TestNode::start(TcpConfig::default()).await;
    let caller = TcpTransport::new(TcpConfig::default());
    caller.set_peer_address(2, &server.addr.to_string());
    // Warm up: connect and let the allocator settle.
    run(&caller, 4).await;

    println!("| callers | round trips/s | p50 µs | p99 µs |");
    println!("|--------:|--------------:|-------:|-------:|");
    for callers in [1usize, 16] {
        let (n, elapsed, lat) = run(&caller, callers).await;
        println!(
            "| {callers} | {:.0} | {} | {} |",
            n as f64 / elapsed.as_secs_f64(),
            pct(&lat, 0.50),
            pct(&lat, 0.99)
        );
    }
}
