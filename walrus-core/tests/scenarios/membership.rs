//! Membership (issue 10): under-replication in STATE and METRICS, an
//! operator removing a node for good (REMOVE-NODE), re-replication of the
//! segments that lost a copy, and a node back on an empty disk refilled
//! under its new storage identity.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use walrus_core::metadata::{MetadataCmd, SegmentStatus};
use walrus_core::protocol::Response;
use walrus_core::testing::{MemLogStore, TestCluster};
use walrus_core::{
    CmdResult, Error, LogStore, MetadataStore, NodeConfig, NodeId, NodeRequest, RequestHandler,
    SegmentKey, StorageId, TopicName,
};

fn topic(s: &str) -> TopicName {
    TopicName::new(s).unwrap()
}

fn disk(node: NodeId) -> StorageId {
    StorageId::from_u128(0x2000 + node as u128)
}

const NEW_DISK: StorageId = StorageId::from_u128(0xfeed);

fn config(id: NodeId, limit: u64) -> NodeConfig {
    let mut config = TestCluster::config(id, limit);
    config.storage = Some(disk(id));
    config
}

/// `n` nodes with their storage identities recorded.
async fn cluster(n: u64, limit: u64) -> TestCluster {
    let c = TestCluster::start(n, |id| config(id, limit)).await;
    for id in 1..=n {
        let cmd = MetadataCmd::RegisterStorage {
            node: id,
            storage: disk(id),
        };
        assert_eq!(
            c.metadata.store(1).propose(cmd).await,
            Ok(CmdResult::Applied)
        );
    }
    c
}

fn json(r: Response) -> serde_json::Value {
    match r {
        Response::Json(j) => serde_json::from_str(&j).unwrap(),
        other => panic!("expected JSON, got {other:?}"),
    }
}

fn err(r: Response) -> String {
    match r {
        Response::Err(e) => e,
        other => panic!("expected ERR, got {other:?}"),
    }
}

/// PUTs `count` entries `{prefix}{i}` via `via`, retrying until each is
/// acknowledged; returns them.
async fn put_all(c: &TestCluster, via: &[NodeId], prefix: &str, count: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    for i in 0..count {
        let payload = format!("{prefix}{i}");
        let mut done = false;
        for attempt in 0..400 {
            let node = via[(i + attempt) % via.len()];
            if c.send(node, &format!("PUT logs {payload}")).await == Response::Ok {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(done, "PUT {payload} never succeeded");
        out.push(Bytes::from(payload));
    }
    out
}

/// Writes until the open segment of `logs` is led by `leader`.
async fn roll_until_led_by(c: &TestCluster, via: NodeId, leader: NodeId) {
    for i in 0..100 {
        let state = c.metadata.committed();
        if state.topic(&topic("logs")).unwrap().current().leader == leader {
            return;
        }
        assert_eq!(c.send(via, &format!("PUT logs pad{i}")).await, Response::Ok);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the open segment never went to node {leader}");
}

/// Waits until no segment of any topic is under-replicated, then checks
/// that every sealed segment is held, sealed at its count, by every
/// replica in its set, and that no set names a removed node.
async fn wait_for_full_replication(c: &TestCluster, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let state = c.metadata.committed();
        if state.under_replicated_count() == 0
            && state.topics.values().all(|t| {
                t.segments
                    .iter()
                    .all(|s| s.holders(&state.removed) == s.replicas())
            })
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still under-replicated after {limit:?}: {:?}",
            state
                .topics
                .values()
                .map(|t| t.segments.iter().map(|s| s.replicas()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state = c.metadata.committed();
    for (name, t) in &state.topics {
        for s in &t.segments {
            let SegmentStatus::Sealed { count } = s.status else {
                continue;
            };
            assert_eq!(s.replicas().len(), t.rf as usize, "{name}:{}", s.id);
            if count == 0 {
                // An empty segment has nothing to copy (its leader never
                // started copies of it).
                continue;
            }
            let key = SegmentKey::new(name.clone(), s.id);
            for r in s.replicas() {
                let info = c.logs[&r].info(&key).await.unwrap();
                assert!(
                    info.is_some_and(|i| i.sealed && i.count == count),
                    "replica {r} of {key} holds {info:?}, not {count} sealed"
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn given_a_replica_set_short_at_opening_when_reading_state_and_metrics_should_show_it_under_replicated(
) {
    let c = cluster(3, 5).await;
    c.crash(3).await;
    assert_eq!(c.send(1, "REGISTER logs RF 3").await, Response::Ok);
    assert_eq!(c.send(1, "REGISTER plain").await, Response::Ok);
    let j = json(c.send(2, "STATE logs").await);
    assert_eq!(j["segment_replicas"]["1"], serde_json::json!([1, 2]));
    assert_eq!(j["under_replicated_segments"], serde_json::json!([1]));
    let plain = json(c.send(2, "STATE plain").await);
    assert_eq!(plain["under_replicated_segments"], serde_json::json!([]));
    assert_eq!(c.node(1).metrics().under_replicated_segments, 1);
}

#[tokio::test(start_paused = true)]
async fn given_remove_requests_that_would_lose_data_or_quorum_should_refuse_and_change_nothing() {
    let c = cluster(3, 3).await;
    // An unreplicated topic whose sealed segment 1 is only on node 2.
    assert_eq!(c.send(2, "REGISTER logs").await, Response::Ok);
    put_all(&c, &[1], "a", 3).await;
    roll_until_led_by(&c, 1, 3).await;
    let e = err(c.send(1, "REMOVE-NODE 2").await);
    assert!(
        e.starts_with("refused: removing node 2 would lose data")
            && e.contains("the only copy of segment logs:1 (3 entries) is on node 2"),
        "{e}"
    );
    let e = err(c.send(1, "REMOVE-NODE 3").await);
    assert!(e.contains("node 3 leads the open segment logs:"), "{e}");
    assert!(e.contains("stop it first"), "{e}");
    let e = err(c.send(2, "REMOVE-NODE 1").await);
    assert!(e.contains("node 1 is the consensus leader"), "{e}");
    let e = err(c.send(2, "REMOVE-NODE 9").await);
    assert!(e.contains("node 9 is not a member"), "{e}");
    let e = err(c.send(2, "REMOVE-NODE").await);
    assert_eq!(e, "REMOVE-NODE requires a node id");
    // Node 3 down: removing node 2 leaves {1, 3} with one live voter.
    c.crash(3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let e = err(c.send(1, "REMOVE-NODE 2").await);
    assert!(
        e.contains("would leave 2 voters of which 1 are live (down: [3])"),
        "{e}"
    );
    let state = c.metadata.committed();
    assert!(state.removed.is_empty());
    assert_eq!(c.node(1).metadata().status().voters.len(), 3);
}

/// Four nodes, topic `logs` with rf 3 and segments of 4 entries; node 3
/// is down for good and no longer leads the open segment. Returns the
/// acknowledged entries.
async fn four_nodes_with_node_3_down(rate: Option<u64>) -> (TestCluster, Vec<Bytes>) {
    let c = TestCluster::start(4, |id| {
        let mut config = config(id, 4);
        if let Some(rate) = rate {
            config.rereplication_rate = rate;
        }
        config
    })
    .await;
    assert_eq!(c.send(1, "REGISTER logs RF 3").await, Response::Ok);
    let mut acked = put_all(&c, &[1, 2, 4], "m", 22).await;
    roll_until_led_by(&c, 1, 1).await;
    c.crash(3).await;
    acked.extend(put_all(&c, &[1, 2, 4], "n", 3).await);
    // The failover delay passes: node 3 is silent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    (c, acked)
}

/// Every acknowledged entry, read through the shared cursor, in order.
/// (A PUT retried after "outcome unknown" may be stored twice, and the
/// pads written to move the open segment come along: both are left out.)
async fn check_all_read(c: &TestCluster, via: NodeId, acked: &[Bytes]) {
    let read = c.drain(via, "logs", Duration::from_secs(20)).await;
    let mut read: Vec<Bytes> = read
        .into_iter()
        .filter(|e| !e.starts_with(b"pad"))
        .collect();
    read.dedup();
    assert_eq!(read, acked);
}

#[tokio::test(start_paused = true)]
async fn given_a_node_down_for_good_when_removed_should_leave_consensus_and_every_segment_return_to_rf(
) {
    let (c, acked) = four_nodes_with_node_3_down(None).await;
    let before = c.metadata.committed();
    assert!(
        before.under_replicated_count() == 0,
        "node 3 is down, not removed"
    );
    let j = json(c.send(2, "REMOVE-NODE 3").await);
    assert_eq!(j["node"], 3);
    assert!(j["under_replicated_segments"].as_u64().unwrap() > 0, "{j}");
    assert!(!c.node(1).metadata().status().voters.contains(&3));
    assert!(c.metadata.committed().removed.contains(&3));
    // Again: nothing more to do.
    assert_eq!(json(c.send(1, "REMOVE-NODE 3").await)["node"], 3);
    wait_for_full_replication(&c, Duration::from_secs(20)).await;
    // Writes go on, never to node 3.
    let mut all = acked;
    all.extend(put_all(&c, &[1, 2, 4], "o", 10).await);
    let state = c.metadata.committed();
    let t = state.topic(&topic("logs")).unwrap();
    assert!(t.segments.iter().all(|s| !s.replicas().contains(&3)));
    check_all_read(&c, 4, &all).await;
    // A removed node cannot come back.
    let node1: &dyn RequestHandler = &**c.node(1);
    let join = NodeRequest::ClaimStorage {
        node: 3,
        storage: NEW_DISK,
        fresh: true,
    };
    match node1.handle(join).await {
        Err(Error::Refused(why)) => assert!(why.contains("removed from this cluster"), "{why}"),
        other => panic!("a removed node was let back: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn given_seeded_crashes_during_rereplication_should_lose_no_entry_and_end_at_rf() {
    for seed in 0..12u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        // Slow copies (about 200 ms a segment), so the crash lands inside.
        let (mut c, acked) = four_nodes_with_node_3_down(Some(60)).await;
        assert!(matches!(
            c.send(1, "REMOVE-NODE 3").await,
            Response::Json(_)
        ));
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1500))).await;
        let victim = [1, 2, 4][rng.gen_range(0..3)];
        c.crash(victim).await;
        if victim == 1 {
            c.metadata.set_leader(Some(2));
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..2000))).await;
        c.restart(victim);
        wait_for_full_replication(&c, Duration::from_secs(60)).await;
        let via = [1, 2, 4][rng.gen_range(0..3)];
        check_all_read(&c, via, &acked).await;
        c.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn given_a_wiped_node_whose_segments_have_other_copies_when_it_claims_a_new_storage_should_be_accepted_and_refilled(
) {
    let c = cluster(3, 4).await;
    assert_eq!(c.send(1, "REGISTER logs RF 3").await, Response::Ok);
    let acked = put_all(&c, &[1, 2], "m", 14).await;
    roll_until_led_by(&c, 1, 1).await;
    c.crash(3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut c = c;
    // Node 3 comes back on an empty disk and claims it.
    c.logs.insert(3, Arc::new(MemLogStore::new()));
    c.configs.get_mut(&3).unwrap().storage = Some(NEW_DISK);
    let claim = NodeRequest::ClaimStorage {
        node: 3,
        storage: NEW_DISK,
        fresh: true,
    };
    let node2: &dyn RequestHandler = &**c.node(2);
    assert_eq!(
        node2.handle(claim).await.map(|_| ()),
        Ok(()),
        "passed on to the consensus leader, which accepts it"
    );
    let state = c.metadata.committed();
    assert_eq!(state.storage[&3], NEW_DISK);
    assert!(
        state.under_replicated_count() > 0,
        "its old copies count as gone"
    );
    c.restart(3);
    wait_for_full_replication(&c, Duration::from_secs(20)).await;
    let state = c.metadata.committed();
    let t = state.topic(&topic("logs")).unwrap();
    let sealed_on_3 = t
        .segments
        .iter()
        .filter(|s| s.status != SegmentStatus::Open && s.replicas().contains(&3))
        .count();
    assert!(sealed_on_3 > 0, "node 3 was refilled");
    check_all_read(&c, 3, &acked).await;
}

#[tokio::test(start_paused = true)]
async fn given_a_wiped_node_with_the_only_copy_of_a_segment_when_it_claims_a_new_storage_should_be_refused_as_before(
) {
    let c = cluster(3, 3).await;
    assert_eq!(c.send(3, "REGISTER logs").await, Response::Ok);
    put_all(&c, &[1], "a", 3).await;
    roll_until_led_by(&c, 1, 1).await;
    c.crash(3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let claim = NodeRequest::ClaimStorage {
        node: 3,
        storage: NEW_DISK,
        fresh: true,
    };
    let node1: &dyn RequestHandler = &**c.node(1);
    match node1.handle(claim).await {
        Err(Error::Refused(why)) => assert!(
            why.contains(&format!("walrus-cli node replace-storage 3 {NEW_DISK}")),
            "{why}"
        ),
        other => panic!("a wiped sole copy was accepted: {other:?}"),
    }
    assert_eq!(c.metadata.committed().storage[&3], disk(3));
}

#[test]
fn given_membership_commands_when_repeated_should_change_nothing_the_second_time() {
    use walrus_core::metadata::ClusterState;
    let mut s = ClusterState::default();
    for node in 1..=3 {
        let info = walrus_core::testing::sim_info(node);
        s.apply(&MetadataCmd::UpsertNode { node, info });
    }
    s.apply(&MetadataCmd::CreateReplicatedTopic {
        topic: topic("t"),
        rf: 2,
        replicas: vec![2, 3],
    });
    s.apply(&MetadataCmd::RollReplicated {
        topic: topic("t"),
        segment: 1,
        count: Some(5),
        replicas: vec![3, 1],
    });
    let remove = MetadataCmd::RemoveNode { node: 2 };
    assert_eq!(s.apply(&remove), CmdResult::Applied);
    assert_eq!(s.apply(&remove), CmdResult::Unchanged);
    let t = s.topic(&topic("t")).unwrap();
    assert_eq!(t.segments[0].replicas(), vec![3], "node 3 leads it now");
    assert_eq!(t.under_replicated(&s.removed), vec![1]);
    let set = MetadataCmd::SetReplicas {
        topic: topic("t"),
        segment: 1,
        expected: vec![3],
        moves: 1,
        replicas: vec![3, 1],
    };
    assert_eq!(s.apply(&set), CmdResult::Applied);
    assert_eq!(s.apply(&set), CmdResult::Unchanged);
    let stale = MetadataCmd::SetReplicas {
        topic: topic("t"),
        segment: 1,
        expected: vec![3],
        moves: 1,
        replicas: vec![3, 4],
    };
    assert!(matches!(s.apply(&stale), CmdResult::Rejected(_)));
    let open = MetadataCmd::SetReplicas {
        topic: topic("t"),
        segment: 2,
        expected: vec![3, 1],
        moves: 0,
        replicas: vec![1],
    };
    assert!(matches!(s.apply(&open), CmdResult::Rejected(_)), "open");
    for node in 1..=3 {
        s.apply(&MetadataCmd::RegisterStorage {
            node,
            storage: disk(node),
        });
    }
    let refill = MetadataCmd::RefillStorage {
        node: 1,
        storage: NEW_DISK,
        replaces: disk(1),
    };
    // Node 3 leads the open segment 2: its data is only there.
    let wipe_3 = MetadataCmd::RefillStorage {
        node: 3,
        storage: NEW_DISK,
        replaces: disk(3),
    };
    assert!(matches!(s.apply(&wipe_3), CmdResult::Rejected(_)));
    assert_eq!(s.apply(&refill), CmdResult::Applied);
    assert_eq!(s.apply(&refill), CmdResult::Unchanged);
    // Wiped again and refilled: a late repeat of the first changes nothing.
    let again = MetadataCmd::RefillStorage {
        node: 1,
        storage: disk(9),
        replaces: NEW_DISK,
    };
    assert_eq!(s.apply(&again), CmdResult::Applied);
    assert!(matches!(s.apply(&refill), CmdResult::Rejected(_)));
    assert_eq!(
        s.topic(&topic("t")).unwrap().segments[0].replicas(),
        vec![3]
    );
    assert_eq!(
        s.removed,
        BTreeSet::from([2]),
        "a removed node stays removed"
    );
    assert!(matches!(
        s.apply(&MetadataCmd::RegisterStorage {
            node: 2,
            storage: NEW_DISK
        }),
        CmdResult::Rejected(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn given_no_replication_factor_set_when_registering_should_keep_min_of_3_and_the_voters() {
    for (nodes, rf) in [(1, 1), (2, 2), (3, 3), (4, 3)] {
        let c = TestCluster::start(nodes, |id| NodeConfig {
            replication_factor: None,
            ..TestCluster::config(id, 10)
        })
        .await;
        assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
        let state = c.metadata.committed();
        let t = state.topic(&topic("logs")).unwrap();
        assert_eq!(t.rf, rf, "{nodes} nodes");
        assert_eq!(t.current().replicas().len(), rf as usize, "{nodes} nodes");
        c.shutdown().await;
    }
}
