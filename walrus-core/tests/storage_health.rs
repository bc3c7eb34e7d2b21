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
            v["walrus"]["storage"].clone()
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
