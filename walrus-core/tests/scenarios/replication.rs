//! Replicated segments (issue 10): replica sets chosen round-robin over
//! live voters, and, for a segment with followers, acknowledgement only
//! once a majority of its replicas holds an entry.

use std::time::Duration;

use walrus_core::protocol::Response;
use walrus_core::testing::TestCluster;
use walrus_core::TopicName;

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
