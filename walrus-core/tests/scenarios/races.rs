//! Races: writes racing rollovers (on the append path, and seals that come
//! out of band like a monitor's) over random network delays are never lost
//! and never read twice; with messages lost, an answer that says "not
//! applied" (`unavailable: …`) is never a write that was applied, only
//! "outcome unknown" may be. A property test over random interleavings; a
//! failing case prints its seed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use walrus_core::protocol::Response;
use walrus_core::testing::{SimNetwork, TestCluster};
use walrus_core::{LogStore, SegmentKey, TopicName};

#[derive(Debug, Clone)]
struct Case {
    seed: u64,
    limit: u64,
    writers: u64,
    writes: u64,
    max_delay_us: u64,
    seals: u64,
    /// Per-mille of messages lost while writing.
    drops: u32,
    /// Microseconds followers apply metadata after the leader.
    lag_us: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        1u64..8,
        1u64..5,
        1u64..30,
        0u64..3000,
        0u64..6,
        prop_oneof![Just(0u32), 1u32..50],
        prop_oneof![Just(0u64), 1u64..5000],
    )
        .prop_map(
            |(seed, limit, writers, writes, max_delay_us, seals, drops, lag_us)| Case {
                seed,
                limit,
                writers,
                writes,
                max_delay_us,
                seals,
                drops,
                lag_us,
            },
        )
}

/// Runs the case; `Err` describes the broken rule.
async fn run(case: Case) -> Result<(), String> {
    let net = SimNetwork::new(case.seed);
    net.set_delay(Duration::ZERO, Duration::from_micros(case.max_delay_us));
    let lossy = net.clone();
    let c =
        Arc::new(TestCluster::start_with(3, net, |id| TestCluster::config(id, case.limit)).await);
    c.metadata.set_lag(Some(Duration::from_micros(case.lag_us)));
    if c.send(1 + case.seed % 3, "REGISTER t").await != Response::Ok {
        return Err("REGISTER failed".into());
    }
    lossy.set_drop_rate(f64::from(case.drops) / 1000.0);
    let mut tasks = Vec::new();
    for w in 0..case.writers {
        let c = c.clone();
        let mut rng = StdRng::seed_from_u64(case.seed ^ (w + 1));
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut unknown = Vec::new();
            let mut refused = Vec::new();
            for i in 0..case.writes {
                let via = rng.gen_range(1..=3);
                match c.send(via, &format!("PUT t {w}:{i}")).await {
                    Response::Ok => acked.push(i),
                    // A lost message: the write may or may not have landed.
                    Response::Err(e) if case.drops > 0 && e.starts_with("outcome unknown: ") => {
                        unknown.push(i)
                    }
                    // Says it was not applied: it must never be read.
                    Response::Err(e) if case.drops > 0 && e.starts_with("unavailable") => {
                        refused.push((i, e))
                    }
                    other => return Err(format!("writer {w} PUT {i} via {via}: {other:?}")),
                }
                if rng.gen_bool(0.3) {
                    tokio::time::sleep(Duration::from_micros(rng.gen_range(0..2000))).await;
                }
            }
            Ok((w, acked, unknown, refused))
        }));
    }
    // Out-of-band seals of whatever segment is current, racing the writers.
    let sealer = {
        let c = c.clone();
        let mut rng = StdRng::seed_from_u64(case.seed.rotate_left(17));
        tokio::spawn(async move {
            for _ in 0..case.seals {
                tokio::time::sleep(Duration::from_micros(rng.gen_range(0..5000))).await;
                let state = c.metadata.committed();
                let topic = TopicName::new("t").unwrap();
                let current = state.topic(&topic).unwrap().current().clone();
                let key = SegmentKey::new(topic, current.id);
                let _ = c.logs[&current.leader].seal(&key).await;
            }
        })
    };
    let mut acked: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut unknown: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut refused: HashMap<u64, Vec<(u64, String)>> = HashMap::new();
    for t in tasks {
        let (w, ids, maybe, not_applied) = t.await.map_err(|e| e.to_string())??;
        acked.insert(w, ids);
        unknown.insert(w, maybe);
        refused.insert(w, not_applied);
    }
    sealer.await.map_err(|e| e.to_string())?;
    // A lost GET answer would lose its entry for good (GET has no ack), so
    // reads run on a reliable network.
    lossy.set_drop_rate(0.0);
    let entries = c.drain(2, "t", Duration::from_secs(10)).await;
    let mut seen: HashMap<u64, Vec<u64>> = HashMap::new();
    for e in &entries {
        let s = std::str::from_utf8(e).map_err(|e| e.to_string())?;
        let (w, i) = s.split_once(':').ok_or(format!("bad entry {s:?}"))?;
        seen.entry(w.parse().unwrap())
            .or_default()
            .push(i.parse().unwrap());
    }
    for (w, ids) in &acked {
        let read = seen.get(w).cloned().unwrap_or_default();
        // Each writer's entries in its order, none twice (strictly rising)...
        if read.windows(2).any(|p| p[0] >= p[1]) {
            return Err(format!("writer {w}: read out of order or twice: {read:?}"));
        }
        // ...every acknowledged one among them...
        if let Some(lost) = ids.iter().find(|i| !read.contains(i)) {
            return Err(format!(
                "writer {w}: acked {lost} never read; read {read:?}"
            ));
        }
        // ...and nothing but acks on a reliable network.
        if case.drops == 0 && &read != ids {
            return Err(format!("writer {w}: read {read:?}, acked {ids:?}"));
        }
        // With losses, only writes whose outcome was unknown may be read
        // unacknowledged: "unavailable" promised nothing was written.
        if let Some((i, e)) = refused[w].iter().find(|(i, _)| read.contains(i)) {
            return Err(format!(
                "writer {w}: PUT {i} was answered `{e}` (not applied) but is read"
            ));
        }
        if let Some(i) = read
            .iter()
            .find(|i| !ids.contains(i) && !unknown[w].contains(i))
        {
            return Err(format!(
                "writer {w}: read {i}, which was never sent or refused"
            ));
        }
    }
    if seen.keys().any(|w| !acked.contains_key(w)) {
        return Err(format!("entries of an unknown writer: {seen:?}"));
    }
    // Exact counts: every sealed segment holds what its leader wrote.
    let state = c.metadata.committed();
    for s in &state.topic(&TopicName::new("t").unwrap()).unwrap().segments {
        if let walrus_core::SegmentStatus::Sealed { count } = s.status {
            if count > case.limit {
                return Err(format!("segment {} sealed with {count} > limit", s.id));
            }
        }
    }
    c.shutdown().await;
    Ok(())
}

proptest! {
    // 24 cases by default (the suite stays fast); PROPTEST_CASES=1000 digs deeper.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]

    #[test]
    fn given_writes_racing_rollovers_should_never_lose_or_double_an_entry(case in case()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a test runtime");
        let seed = case.seed;
        let result = rt.block_on(run(case.clone()));
        prop_assert!(result.is_ok(), "seed {seed} ({case:?}): {}", result.unwrap_err());
    }
}
