//! Replicated segments (issue 10): replica sets chosen round-robin over
//! live voters, and, for a segment with followers, acknowledgement only
//! once a majority of its replicas holds an entry.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use walrus_core::protocol::Response;
use walrus_core::testing::{MemLogStore, SimNetwork, TestCluster};
use walrus_core::{LogStore, SegmentInfo, SegmentKey, TopicName};

fn topic(s: &str) -> TopicName {
    TopicName::new(s).unwrap()
}

/// Each segment's replica set, leader first, as committed.
fn replica_sets(c: &TestCluster, name: &str) -> Vec<Vec<u64>> {
    let state = c.metadata.committed();
    let t = state.topic(&topic(name)).expect("the topic exists");
    t.segments.iter().map(|s| s.replicas()).collect()
}

fn state_json(r: Response) -> serde_json::Value {
    match r {
        Response::Json(j) => serde_json::from_str(&j).unwrap(),
        other => panic!("STATE answered {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn given_rf_3_on_3_nodes_when_segments_roll_should_keep_copies_on_all_with_leaders_round_robin(
) {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 5)).await;
    assert_eq!(c.send(2, "REGISTER logs RF 3").await, Response::Ok);
    for i in 0..10 {
        assert_eq!(c.send(1, &format!("PUT logs m{i}")).await, Response::Ok);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        replica_sets(&c, "logs"),
        vec![vec![2, 3, 1], vec![3, 1, 2], vec![1, 2, 3]],
        "each leader's followers are the voters after it"
    );
    let j = state_json(c.send(3, "STATE logs").await);
    assert_eq!(j["replication_factor"], 3);
    assert_eq!(j["segment_replicas"]["2"], serde_json::json!([3, 1, 2]));
    assert_eq!(j["segment_leaders"]["2"], 3, "the reference field stays");
    // The factor is the topic's: asked again, the same is fine, another is not.
    assert_eq!(c.send(1, "REGISTER logs RF 3").await, Response::Ok);
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    match c.send(1, "REGISTER logs RF 2").await {
        Response::Err(e) => assert!(e.contains("replication factor 3"), "{e}"),
        other => panic!("a different RF was accepted: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn given_rf_3_on_5_nodes_when_segments_roll_should_spread_leaders_and_copies_evenly() {
    let c = TestCluster::start(5, |id| TestCluster::config(id, 2)).await;
    assert_eq!(c.send(1, "REGISTER logs RF 3").await, Response::Ok);
    for i in 0..10 {
        assert_eq!(c.send(1, &format!("PUT logs m{i}")).await, Response::Ok);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sets = replica_sets(&c, "logs");
    let closed = &sets[..5];
    let mut copies = [0; 6];
    let mut leads = [0; 6];
    for set in closed {
        assert_eq!(set.len(), 3, "{sets:?}");
        leads[set[0] as usize] += 1;
        for n in set {
            copies[*n as usize] += 1;
        }
    }
    assert_eq!(&leads[1..], &[1, 1, 1, 1, 1], "{sets:?}");
    assert_eq!(&copies[1..], &[3, 3, 3, 3, 3], "{sets:?}");
}

#[tokio::test(start_paused = true)]
async fn given_a_dead_voter_when_a_replicated_topic_is_registered_should_leave_it_out() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 5)).await;
    c.crash(3).await;
    assert_eq!(c.send(1, "REGISTER logs RF 3").await, Response::Ok);
    assert_eq!(replica_sets(&c, "logs"), vec![vec![1, 2]]);
}

#[tokio::test(start_paused = true)]
async fn given_the_default_factor_when_registering_plainly_should_keep_one_copy_and_the_old_command(
) {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 5)).await;
    assert_eq!(c.send(1, "REGISTER plain").await, Response::Ok);
    assert_eq!(
        c.send(1, "REGISTER three RETAIN none RF 3").await,
        Response::Ok
    );
    assert_eq!(replica_sets(&c, "plain"), vec![vec![1]]);
    assert!(c
        .metadata
        .log()
        .iter()
        .any(|cmd| matches!(cmd, walrus_core::MetadataCmd::CreateTopic { .. })));
    let state = c.metadata.committed();
    let three = state.topic(&topic("three")).unwrap();
    assert_eq!(three.rf, 3);
    assert_eq!(
        three.retention,
        Some(Default::default()),
        "RETAIN none kept"
    );
}

/// How many replicas of the segment holding `payload` (found on its
/// leader) hold it at the same index, and that segment's quorum.
async fn copies_of(c: &TestCluster, name: &str, payload: &str) -> Option<(usize, usize)> {
    let state = c.metadata.committed();
    let t = state.topic(&topic(name))?;
    for seg in &t.segments {
        let key = SegmentKey::new(topic(name), seg.id);
        let on_leader = c.logs[&seg.leader]
            .read(&key, 0, usize::MAX, usize::MAX)
            .await
            .ok()?;
        let Some(index) = on_leader
            .iter()
            .position(|e| e.as_ref() == payload.as_bytes())
        else {
            continue;
        };
        let mut held = 0;
        for r in seg.replicas() {
            let entries = c.logs[&r]
                .read(&key, index as u64, 1, usize::MAX)
                .await
                .unwrap_or_default();
            if entries
                .first()
                .is_some_and(|e| e.as_ref() == payload.as_bytes())
            {
                held += 1;
            }
        }
        return Some((held, seg.quorum()));
    }
    None
}

/// Entries of segment `segment` of `name` in node `node`'s store.
async fn held(c: &TestCluster, node: u64, name: &str, segment: u64) -> Vec<Bytes> {
    let key = SegmentKey::new(topic(name), segment);
    c.logs[&node]
        .read(&key, 0, usize::MAX, usize::MAX)
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn given_rf_3_when_puts_are_acknowledged_should_each_be_on_a_majority_already() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 8)).await;
    assert_eq!(c.send(1, "REGISTER logs RF 3").await, Response::Ok);
    for i in 0..30 {
        let payload = format!("m{i}");
        let via = i % 3 + 1;
        assert_eq!(
            c.send(via, &format!("PUT logs {payload}")).await,
            Response::Ok
        );
        let (held, quorum) = copies_of(&c, "logs", &payload).await.expect("stored");
        assert!(
            held >= quorum,
            "{payload} acknowledged on {held} of its replicas"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn given_rf_3_and_a_dead_follower_when_writing_should_acknowledge_on_the_other_two() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(1, "REGISTER logs RF 3").await, Response::Ok);
    c.crash(3).await;
    for i in 0..20 {
        let payload = format!("m{i}");
        assert_eq!(
            c.send(1, &format!("PUT logs {payload}")).await,
            Response::Ok
        );
        assert_eq!(copies_of(&c, "logs", &payload).await, Some((2, 2)));
    }
    let state = c.metadata.committed();
    assert_eq!(
        state.topic(&topic("logs")).unwrap().segments.len(),
        1,
        "no write waited for node 3 until its segment was given up"
    );
}

#[tokio::test(start_paused = true)]
async fn given_a_follower_cut_off_for_a_while_when_healed_should_catch_up() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(1, "REGISTER logs RF 3").await, Response::Ok);
    c.net.partition(1, 3);
    for i in 0..10 {
        assert_eq!(c.send(1, &format!("PUT logs m{i}")).await, Response::Ok);
    }
    assert!(held(&c, 3, "logs", 1).await.is_empty(), "cut off");
    c.net.heal();
    assert_eq!(c.send(1, "PUT logs m10").await, Response::Ok);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = held(&c, 1, "logs", 1).await;
    assert_eq!(leader.len(), 11);
    assert_eq!(held(&c, 3, "logs", 1).await, leader);
}

#[tokio::test(start_paused = true)]
async fn given_a_follower_back_with_an_empty_disk_when_writes_go_on_should_be_refilled_from_the_leader(
) {
    let mut c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(1, "REGISTER logs RF 3").await, Response::Ok);
    for i in 0..10 {
        assert_eq!(c.send(1, &format!("PUT logs m{i}")).await, Response::Ok);
    }
    c.crash(3).await;
    c.logs.insert(3, Arc::new(MemLogStore::new()));
    c.restart(3);
    assert_eq!(c.send(1, "PUT logs m10").await, Response::Ok);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = held(&c, 1, "logs", 1).await;
    assert_eq!(leader.len(), 11);
    assert_eq!(
        held(&c, 3, "logs", 1).await,
        leader,
        "the gap before m10 was sent again"
    );
}

#[tokio::test(start_paused = true)]
async fn given_rf_3_when_a_segment_rolls_should_seal_every_copy_at_its_count() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 5)).await;
    assert_eq!(c.send(1, "REGISTER logs RF 3").await, Response::Ok);
    for i in 0..7 {
        assert_eq!(c.send(2, &format!("PUT logs m{i}")).await, Response::Ok);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let key = SegmentKey::new(topic("logs"), 1);
    for node in 1..=3 {
        let info = c.logs[&node].info(&key).await.unwrap();
        assert_eq!(
            info,
            Some(SegmentInfo {
                count: 5,
                sealed: true
            }),
            "node {node}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn given_rf_1_when_writing_through_another_node_should_copy_nothing() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    for i in 0..10 {
        assert_eq!(c.send(2, &format!("PUT logs m{i}")).await, Response::Ok);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(held(&c, 1, "logs", 1).await.len(), 10);
    for node in [2, 3] {
        assert!(c.logs[&node].segments().await.unwrap().is_empty());
    }
}

/// Seeds of the randomized run: each a 3-node cluster with its own
/// message loss, delays, writers and (maybe) a crash.
const SEEDS: u64 = 200;

#[tokio::test(start_paused = true)]
async fn given_seeded_faults_and_crashes_when_puts_are_acknowledged_should_each_be_on_a_majority() {
    let mut violations = Vec::new();
    let mut acknowledged = 0;
    for seed in 0..SEEDS {
        let mut rng = StdRng::seed_from_u64(seed);
        let net = SimNetwork::new(seed);
        net.set_delay(Duration::ZERO, Duration::from_millis(rng.gen_range(0..6)));
        net.set_drop_rate([0.0, 0.01, 0.05][rng.gen_range(0..3)]);
        let c = TestCluster::start_with(3, net, |id| TestCluster::config(id, 6)).await;
        let mut registered = false;
        for _ in 0..20 {
            if c.send(1, "REGISTER logs RF 3").await == Response::Ok {
                registered = true;
                break;
            }
        }
        assert!(registered, "seed {seed}: REGISTER kept failing");
        let crash_at = rng.gen_range(0..60);
        let victim = rng.gen_range(2..=3);
        let mut live: Vec<u64> = vec![1, 2, 3];
        for i in 0..40 {
            if i == crash_at {
                c.crash(victim).await;
                live.retain(|n| *n != victim);
            }
            let via = live[rng.gen_range(0..live.len())];
            let payload = format!("s{seed}-{i}");
            if c.send(via, &format!("PUT logs {payload}")).await != Response::Ok {
                continue;
            }
            acknowledged += 1;
            match copies_of(&c, "logs", &payload).await {
                Some((held, quorum)) if held >= quorum => {}
                other => violations.push(format!("seed {seed}: {payload}: {other:?}")),
            }
        }
        c.shutdown().await;
    }
    assert!(violations.is_empty(), "{violations:#?}");
    // Most writes get through the faults: the check is not vacuous.
    assert!(
        acknowledged > SEEDS * 30,
        "only {acknowledged} acknowledged"
    );
}

#[tokio::test(start_paused = true)]
async fn given_many_concurrent_puts_when_replicating_should_carry_them_in_few_requests() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(1, "REGISTER logs RF 3").await, Response::Ok);
    assert_eq!(c.send(1, "PUT logs warm-up").await, Response::Ok);
    c.net
        .set_delay(Duration::from_millis(5), Duration::from_millis(5));
    let lines: Vec<String> = (0..64).map(|i| format!("PUT logs m{i}")).collect();
    let before = c.net.calls();
    let answers = futures::future::join_all(lines.iter().map(|line| c.send(1, line))).await;
    let calls = c.net.calls() - before;
    assert!(answers.iter().all(|a| *a == Response::Ok), "{answers:?}");
    // One entry per round trip would be 128 requests (64 to each
    // follower); batches behind the one in flight make a handful.
    assert!(calls <= 12, "{calls} calls for 64 PUTs");
}

#[tokio::test(start_paused = true)]
async fn given_followers_that_sync_later_when_puts_follow_one_another_should_send_each_entry_once()
{
    // Under `--fsync interval` a store counts (`info`) only what it has
    // synced, while it holds more: a follower must judge gaps by what it
    // holds, or every second `Replicate` looks like a gap and is sent again.
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    for node in 1..=3 {
        c.logs[&node].relax_syncs(true);
    }
    assert_eq!(c.send(1, "REGISTER logs RF 3").await, Response::Ok);
    assert_eq!(c.send(1, "PUT logs warm-up").await, Response::Ok);
    let before = c.net.calls();
    for i in 0..20 {
        let line = format!("PUT logs m{i}");
        let answer = tokio::time::timeout(Duration::from_secs(10), c.send(1, &line)).await;
        assert_eq!(answer, Ok(Response::Ok), "PUT m{i}");
    }
    let calls = c.net.calls() - before;
    // One `Replicate` per follower per PUT, and nothing sent twice.
    assert!(calls <= 40, "{calls} calls for 20 PUTs to 2 followers");
    let leader = held(&c, 1, "logs", 1).await;
    assert_eq!(leader.len(), 21);
    for follower in [2, 3] {
        assert_eq!(held(&c, follower, "logs", 1).await, leader);
    }
}
