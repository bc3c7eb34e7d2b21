//! Seeded runs of replicated clusters (issue 10): 3 and 5 nodes, rf 3,
//! concurrent producers and readers, a crashed node (half the time the
//! open segment's leader), a partition, lost requests and answers, delays
//! (and so reordering) and duplicated copies. Each run checks
//! that no acknowledged entry is lost or stored twice, that an offset a
//! reader saw never names another entry, and that reads return each
//! producer's acknowledged entries in the order they were acknowledged.
//! One more producer writes batches with a producer id, each sent again
//! until it is answered as stored: each must be stored exactly once, whole,
//! and the cluster must never answer it `sequence gap` (its producers'
//! last writes survive failovers from the replicas and restarts).
//!
//! `WALRUS_SEEDS=<n>` runs `n` seeds of each size (default 100).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use walrus_core::protocol::Response;
use walrus_core::testing::{SimNetwork, TestCluster};

fn seeds() -> u64 {
    std::env::var("WALRUS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}

/// What one run saw.
#[derive(Default)]
struct Seen {
    /// Per producer, its acknowledged payloads in acknowledgement order.
    acked: BTreeMap<usize, Vec<String>>,
    /// Every offset a reader was given, with its entry.
    offsets: HashMap<u64, Bytes>,
    /// The idempotent producer's batches answered as stored, in order.
    batches: Vec<[String; 2]>,
    violations: Vec<String>,
}

/// Reads from offset 0 on via `via` until the end (or an error), checking
/// every offset against what earlier reads saw there.
async fn read_through(c: &TestCluster, via: u64, seen: &RefCell<Seen>) -> Option<Vec<Bytes>> {
    let mut out = Vec::new();
    loop {
        let line = format!("READ logs {} 100", out.len());
        match c.send(via, &line).await {
            Response::Entries { entries, .. } if entries.is_empty() => return Some(out),
            Response::Entries { entries, .. } => {
                let mut s = seen.borrow_mut();
                for (offset, e) in entries {
                    if offset != out.len() as u64 {
                        s.violations
                            .push(format!("READ gave offset {offset} at {}", out.len()));
                    }
                    let before = s.offsets.entry(offset).or_insert_with(|| e.clone()).clone();
                    if before != e {
                        s.violations.push(format!(
                            "offset {offset} was {before:?}, now {e:?}: renumbered"
                        ));
                    }
                    out.push(e);
                }
            }
            _ => return None,
        }
    }
}

async fn run(seed: u64, nodes: u64) -> (Vec<String>, usize, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let net = SimNetwork::new(seed);
    net.set_delay(Duration::ZERO, Duration::from_millis(rng.gen_range(0..8)));
    net.set_drop_rate([0.0, 0.005, 0.02][rng.gen_range(0..3)]);
    net.set_duplicate_rate([0.0, 0.05][rng.gen_range(0..2)]);
    net.set_answer_loss_rate([0.0, 0.0, 0.01][rng.gen_range(0..3)]);
    let limit = rng.gen_range(4..16);
    let mut c = TestCluster::start_with(nodes, net, |id| TestCluster::config(id, limit)).await;
    let mut registered = false;
    for _ in 0..20 {
        if c.send(rng.gen_range(1..=nodes), "REGISTER logs RF 3").await == Response::Ok {
            registered = true;
            break;
        }
    }
    assert!(registered, "seed {seed}: REGISTER kept failing");
    // Node 1 leads consensus in the fake: the victim is another one, half
    // the time the leader of the open segment when the crash comes.
    let victim = rng.gen_range(2..=nodes);
    let victim_leads = rng.gen_bool(0.5);
    let crash_after = Duration::from_millis(rng.gen_range(0..1500));
    let cut = (rng.gen_range(1..=nodes), rng.gen_range(1..=nodes));
    let cut_after = Duration::from_millis(rng.gen_range(0..2000));
    let cut_for = Duration::from_millis(rng.gen_range(0..2500));
    let producers = rng.gen_range(1..=3);
    let puts = rng.gen_range(15..40);

    let seen = RefCell::new(Seen::default());
    let produce = (0..producers).map(|p| {
        let mut rng = StdRng::seed_from_u64(seed * 31 + p as u64);
        let (c, seen) = (&c, &seen);
        async move {
            for i in 0..puts {
                let payload = format!("s{seed}-p{p}-{i}");
                let via = rng.gen_range(1..=nodes);
                if c.send(via, &format!("PUT logs {payload}")).await == Response::Ok {
                    seen.borrow_mut().acked.entry(p).or_default().push(payload);
                }
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..60))).await;
            }
        }
    });
    // One idempotent producer: each batch is sent again (same producer
    // id and sequence) until it is answered as stored, whatever happens
    // to the segment's leader in between, and must then be stored once.
    let idempotent = async {
        let mut rng = StdRng::seed_from_u64(seed * 41);
        let (c, seen) = (&c, &seen);
        for seq in 0..puts / 3 {
            let batch = [format!("s{seed}-q-{seq}-a"), format!("s{seed}-q-{seq}-b")];
            let mut body = format!("PUTB logs 2 PRODUCER q {seq}\n");
            for e in &batch {
                body.push_str(&format!("{}\n{e}\n", e.len()));
            }
            let mut stored = false;
            for _ in 0..40 {
                let via = rng.gen_range(1..=nodes);
                match c.send_bytes(via, Bytes::from(body.clone())).await {
                    Response::Stored { n: 2, .. } => {
                        stored = true;
                        break;
                    }
                    Response::Err(e)
                        if e.starts_with("sequence gap")
                            || e.contains("older than its last stored write") =>
                    {
                        // The cluster forgot (or invented) a stored write.
                        seen.borrow_mut()
                            .violations
                            .push(format!("producer q, sequence {seq}: {e}"));
                        return;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            if !stored {
                // Its outcome stays unknown: the next sequence would be a gap.
                return;
            }
            seen.borrow_mut().batches.push(batch);
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..60))).await;
        }
    };
    let read = async {
        let mut rng = StdRng::seed_from_u64(seed * 37);
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(100..600))).await;
            read_through(&c, rng.gen_range(1..=nodes), &seen).await;
        }
    };
    let faults = async {
        let (first, second) = if crash_after <= cut_after {
            (crash_after, cut_after - crash_after)
        } else {
            (cut_after, crash_after - cut_after)
        };
        let pick = || {
            let state = c.metadata.committed();
            let leader = state
                .topic(&walrus_core::TopicName::new("logs").expect("a valid name"))
                .map_or(victim, |t| t.current().leader);
            if victim_leads && leader != 1 {
                leader
            } else {
                victim
            }
        };
        tokio::time::sleep(first).await;
        let crashed = if crash_after <= cut_after {
            let crashed = pick();
            c.crash(crashed).await;
            tokio::time::sleep(second).await;
            c.net.partition(cut.0, cut.1);
            crashed
        } else {
            c.net.partition(cut.0, cut.1);
            tokio::time::sleep(second).await;
            let crashed = pick();
            c.crash(crashed).await;
            crashed
        };
        tokio::time::sleep(cut_for).await;
        c.net.heal();
        crashed
    };
    let (_, _, _, victim) =
        tokio::join!(futures::future::join_all(produce), idempotent, read, faults);

    // Everything heals and the crashed node comes back (a segment left
    // pending gets its count from it); then the whole topic is read.
    c.heal();
    c.restart(victim);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut all = None;
    for _ in 0..100 {
        all = read_through(&c, rng.gen_range(1..=nodes), &seen).await;
        if all.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.shutdown().await;
    let mut s = seen.into_inner();
    let Some(all) = all else {
        return (
            vec![format!(
                "seed {seed}: the topic could not be read to its end"
            )],
            0,
            0,
        );
    };
    let mut at: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (i, e) in all.iter().enumerate() {
        at.entry(e.as_ref()).or_default().push(i);
    }
    let mut acknowledged = 0;
    for (p, acked) in &s.acked {
        let mut last = None;
        for payload in acked {
            acknowledged += 1;
            match at.get(payload.as_bytes()).map(Vec::as_slice) {
                None | Some([]) => s
                    .violations
                    .push(format!("acknowledged {payload} was lost")),
                Some([offset]) => {
                    if last.is_some_and(|l| l > *offset) {
                        s.violations.push(format!(
                            "producer {p}'s {payload} is at offset {offset}, \
                             before an entry acknowledged earlier"
                        ));
                    }
                    last = Some(*offset);
                }
                Some(many) => s.violations.push(format!(
                    "acknowledged {payload} stored {} times",
                    many.len()
                )),
            }
        }
    }
    let mut last = None;
    for batch in &s.batches {
        acknowledged += 2;
        let places: Vec<_> = batch.iter().map(|e| at.get(e.as_bytes())).collect();
        match places.as_slice() {
            [Some(a), Some(b)] if a.len() == 1 && b.len() == 1 && b[0] == a[0] + 1 => {
                if last.is_some_and(|l| l > a[0]) {
                    s.violations
                        .push(format!("batch {} is before an earlier one", batch[0]));
                }
                last = Some(a[0]);
            }
            other => s.violations.push(format!(
                "idempotent batch {batch:?} answered as stored is at {other:?}: \
                 it must be stored exactly once, whole"
            )),
        }
    }
    for (payload, offsets) in &at {
        if offsets.len() > 1 {
            s.violations.push(format!(
                "{} stored at offsets {offsets:?}",
                String::from_utf8_lossy(payload)
            ));
        }
    }
    let violations = s
        .violations
        .iter()
        .map(|v| format!("seed {seed}: {v}"))
        .collect();
    (violations, acknowledged, s.batches.len())
}

async fn run_seeds(nodes: u64, base: u64) {
    let mut violations = Vec::new();
    let mut acknowledged = 0;
    let mut batches = 0;
    let n = seeds();
    // `WALRUS_SEED=<seed>` replays one seed (3 nodes below 100000).
    let only: Option<u64> = std::env::var("WALRUS_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let range = match only {
        Some(seed) if (base..base + 100_000).contains(&seed) => seed..seed + 1,
        Some(_) => return,
        None => base..base + n,
    };
    for seed in range {
        let (v, a, b) = run(seed, nodes).await;
        violations.extend(v);
        acknowledged += a;
        batches += b;
    }
    eprintln!(
        "{nodes} nodes: {n} seeds, {acknowledged} acknowledged ({batches} idempotent \
         batches), {} violations",
        violations.len()
    );
    assert!(violations.is_empty(), "{violations:#?}");
    // Most writes get through the faults: the checks are not vacuous.
    assert!(
        only.is_some() || acknowledged as u64 > n * 15,
        "only {acknowledged} acknowledged in {n} runs"
    );
    assert!(
        only.is_some() || batches as u64 > n * 2,
        "only {batches} idempotent batches stored in {n} runs"
    );
}

#[tokio::test(start_paused = true)]
async fn given_seeded_faults_on_3_nodes_when_producing_and_reading_should_lose_and_duplicate_no_acknowledged_entry(
) {
    run_seeds(3, 0).await;
}

#[tokio::test(start_paused = true)]
async fn given_seeded_faults_on_5_nodes_when_producing_and_reading_should_lose_and_duplicate_no_acknowledged_entry(
) {
    run_seeds(5, 100_000).await;
}
