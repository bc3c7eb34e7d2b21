//! Measures metadata proposals on a 3-node RaftMetadataStore cluster over
//! loopback TCP. Ignored by default (timings belong here, not in tests):
//!
//! ```text
//! CARGO_TARGET_DIR=... cargo test --release -p walrus-backends --test backends raft_bench:: -- --ignored --nocapture
//! ```
//!
//! Each proposer commits `AdvanceCursor` on its own topic (the state stays
//! small); latency is from `propose` call to return (committed by a quorum,
//! durable, applied on the proposing node).

use crate::raft_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_common::{create, topic, Cluster};
use walrus_backends::raft::RaftMetadataStore;
use walrus_core::{MetadataCmd, MetadataStore};

const RUN: Duration = Duration::from_secs(5);

struct Figures {
    proposals: usize,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

async fn measure(store: &Arc<RaftMetadataStore>, proposers: usize) -> Figures {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..proposers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let t = topic(&format!("bench-{p}"));
            let mut latencies = Vec::new();
            let mut offset = 0;
            while start.elapsed() < RUN {
                offset += 1;
                let cmd = MetadataCmd::AdvanceCursor {
                    topic: t.clone(),
                    offset,
                };
                let t0 = Instant::now();
                store.propose(cmd).await.expect("a healthy cluster commits");
                latencies.push(t0.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a proposer task"));
    }
    let elapsed = start.elapsed();
    all.sort();
    let pct = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Figures {
        proposals: all.len(),
        per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: run with --ignored --nocapture (in --release)"]
async fn measure_metadata_proposals_on_a_three_node_loopback_cluster() {
    let nodes: u64 = std::env::var("BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut c = Cluster::start(nodes).await;
    let leader = c.leader().await;
    let follower = (1..=nodes).find(|id| *id != leader).unwrap_or(leader);
    for p in 0..16 {
        c.store(leader)
            .propose(create(&format!("bench-{p}")))
            .await
            .expect("create bench topics");
    }
    println!("| proposed on | proposers | proposals | proposals/s | p50 | p99 |");
    println!("|---|---|---|---|---|---|");
    for (role, id) in [("leader", leader), ("follower (forwarded)", follower)] {
        for proposers in [1, 16] {
            let f = measure(c.store(id), proposers).await;
            println!(
                "| {role} | {proposers} | {} | {:.0} | {:.2} ms | {:.2} ms |",
                f.proposals,
                f.per_sec,
                f.p50.as_secs_f64() * 1000.0,
                f.p99.as_secs_f64() * 1000.0
            );
        }
    }
    // Leadership confirmations (what every lease renewal costs the leader).
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < RUN {
        let t0 = Instant::now();
        c.store(leader)
            .confirm()
            .await
            .expect("the leader confirms");
        latencies.push(t0.elapsed());
    }
    latencies.sort();
    let pct = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "\nconfirm() on the leader, sequential: {} in {:?}, p50 {:.2} ms, p99 {:.2} ms",
        latencies.len(),
        RUN,
        pct(0.5).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0
    );
    c.stop_all().await;
}
