//! What a node does when its log store reports a storage failure: it says
//! so in METRICS and its log, and moves the topic off the failed segment.

use std::time::Duration;

use bytes::Bytes;
use walrus_core::protocol::Response;
use walrus_core::testing::TestCluster;
use walrus_core::{SegmentKey, TopicName};

fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

async fn storage_metrics(c: &TestCluster, node: u64) -> serde_json::Value {
    match c.send(node, "METRICS").await {
        Response::Json(j) => {
            let v: serde_json::Value = serde_json::from_str(&j).unwrap();
            v["storage"].clone()
        }
        other => panic!("METRICS answered {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn given_a_failed_sync_when_writers_go_on_should_report_it_in_metrics_and_roll_to_a_new_segment(
) {
    let c = TestCluster::start(1, |id| TestCluster::config(id, 100)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    assert_eq!(
        storage_metrics(&c, 1).await,
        serde_json::json!({"failed_syncs": 0, "failed_segments": 0, "quarantined_segments": 0})
    );
    for i in 0..2 {
        assert_eq!(c.send(1, &format!("PUT logs a{i}")).await, Response::Ok);
    }
    let first = c
        .metadata
        .committed()
        .topic(&topic("logs"))
        .unwrap()
        .current()
        .id;
    c.logs[&1].fail_sync(&SegmentKey::new(topic("logs"), first));

    assert_eq!(
        storage_metrics(&c, 1).await,
        serde_json::json!({"failed_syncs": 1, "failed_segments": 1, "quarantined_segments": 0})
    );
    match c.send(1, "PUT logs refused").await {
        Response::Err(e) => assert!(e.contains("sync"), "{e}"),
        other => panic!("a PUT into the failed segment answered {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let state = c.metadata.committed();
    let t = state.topic(&topic("logs")).unwrap();
    assert!(t.current().id > first, "the topic moved to a new segment");
    assert_eq!(c.send(1, "PUT logs b0").await, Response::Ok);
    assert_eq!(
        c.drain(1, "logs", Duration::from_secs(10)).await,
        vec![
            Bytes::from_static(b"a0"),
            Bytes::from_static(b"a1"),
            Bytes::from_static(b"b0")
        ]
    );
}

async fn get(c: &TestCluster, node: u64, topic: &str) -> Response {
    c.send(node, &format!("GET {topic}")).await
}

#[tokio::test(start_paused = true)]
async fn given_a_quarantined_open_segment_when_the_node_restarts_should_take_puts_in_a_new_segment_and_hold_readers_at_the_damage_until_repaired(
) {
    let mut c = TestCluster::start(1, |id| TestCluster::config(id, 100)).await;
    for t in ["logs", "other"] {
        assert_eq!(c.send(1, &format!("REGISTER {t}")).await, Response::Ok);
    }
    for i in 0..4 {
        assert_eq!(c.send(1, &format!("PUT logs a{i}")).await, Response::Ok);
    }
    assert_eq!(c.send(1, "PUT other o0").await, Response::Ok);
    let damaged = SegmentKey::new(topic("logs"), 1);
    let why = "logs/00000001.000000.wal at byte 100: bad checksum; restore the file";

    // The node restarts and its store finds segment 1 damaged after a1:
    // a2 and a3 were acknowledged but cannot be read.
    c.crash(1).await;
    c.logs[&1].quarantine(&damaged, 2, why);
    c.restart(1);
    c.wait_for_leases(Duration::from_secs(10)).await;

    assert_eq!(
        c.send(1, "PUT logs b0").await,
        Response::Ok,
        "the topic takes PUTs in a new segment"
    );
    let state = c.metadata.committed();
    let t = state.topic(&topic("logs")).unwrap();
    assert_eq!(
        t.segment(1).unwrap().status,
        walrus_core::SegmentStatus::Pending,
        "the damaged segment's count stays unknown: sealing it at the damage would drop a2, a3"
    );
    assert!(t.current().id > 1);

    assert_eq!(get(&c, 1, "logs").await, Response::Entry("a0".into()));
    assert_eq!(get(&c, 1, "logs").await, Response::Entry("a1".into()));
    for _ in 0..2 {
        match get(&c, 1, "logs").await {
            Response::Err(e) => assert!(
                e.contains("at byte 100") && e.contains("node 1"),
                "a reader at the damage hears file, byte and what to do: {e}"
            ),
            other => panic!("a read past the damage answered {other:?}"),
        }
    }
    assert_eq!(get(&c, 1, "other").await, Response::Entry("o0".into()));
    assert_eq!(c.send(1, "PUT other o1").await, Response::Ok);
    assert_eq!(get(&c, 1, "other").await, Response::Entry("o1".into()));
    assert_eq!(
        storage_metrics(&c, 1).await["quarantined_segments"],
        serde_json::json!(1)
    );

    // The operator restores the file and restarts: the node reports the
    // segment's full count and readers go on through a2, a3 to b0.
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.crash(1).await;
    c.logs[&1].repair(&damaged);
    c.restart(1);
    c.wait_for_leases(Duration::from_secs(10)).await;
    assert_eq!(
        c.drain(1, "logs", Duration::from_secs(10)).await,
        vec![
            Bytes::from_static(b"a2"),
            Bytes::from_static(b"a3"),
            Bytes::from_static(b"b0")
        ]
    );
    let state = c.metadata.committed();
    assert_eq!(
        state
            .topic(&topic("logs"))
            .unwrap()
            .segment(1)
            .unwrap()
            .status,
        walrus_core::SegmentStatus::Sealed { count: 4 }
    );
}

#[tokio::test(start_paused = true)]
async fn given_a_quarantined_open_segment_on_another_node_when_writing_and_reading_elsewhere_should_roll_and_name_the_damage(
) {
    let mut c = TestCluster::start(3, |id| TestCluster::config(id, 100)).await;
    assert_eq!(c.send(2, "REGISTER logs").await, Response::Ok);
    let first = c
        .metadata
        .committed()
        .topic(&topic("logs"))
        .unwrap()
        .current()
        .clone();
    assert_eq!(first.leader, 2, "the topic starts on node 2");
    for i in 0..3 {
        assert_eq!(c.send(1, &format!("PUT logs a{i}")).await, Response::Ok);
    }
    let damaged = SegmentKey::new(topic("logs"), first.id);
    c.crash(2).await;
    c.logs[&2].quarantine(&damaged, 1, "logs/1.wal at byte 80: bad checksum");
    c.restart(2);
    c.wait_for_leases(Duration::from_secs(10)).await;

    assert_eq!(c.send(1, "PUT logs b0").await, Response::Ok);
    assert_eq!(get(&c, 3, "logs").await, Response::Entry("a0".into()));
    match get(&c, 3, "logs").await {
        Response::Err(e) => assert!(
            e.contains("at byte 80") && e.contains("restart node 2"),
            "{e}"
        ),
        other => panic!("a read past the damage answered {other:?}"),
    }
}
