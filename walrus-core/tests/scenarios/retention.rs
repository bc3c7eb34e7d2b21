//! Retention: closed segments past a topic's limits (entries, bytes, age; the
//! topic's own or the server default) are deleted from the metadata and
//! from every node's store, whole; the first offset moves and no offset is
//! renumbered. READ below it is refused, the GET cursor and groups below it
//! go on at it, and a node that was down deletes its copies when it is back.

use std::time::Duration;

use bytes::Bytes;
use walrus_core::protocol::Response;
use walrus_core::testing::TestCluster;
use walrus_core::{LogStore, NodeConfig, NodeId, Retention, SegmentKey, TopicName};

fn config(id: NodeId, default: Retention) -> NodeConfig {
    NodeConfig {
        retention_interval: Duration::from_millis(50),
        default_retention: default,
        ..TestCluster::config(id, 4)
    }
}

/// A cluster of three with segments of 4 entries and `n` entries
/// `e0`, `e1`, … in `topic`, registered with `register`.
async fn cluster_with(register: &str, n: u64, default: Retention) -> TestCluster {
    let c = TestCluster::start(3, |id| config(id, default)).await;
    assert_eq!(c.send(1, register).await, Response::Ok);
    let topic = register.split(' ').nth(1).unwrap();
    for i in 0..n {
        let via = i % 3 + 1;
        assert_eq!(
            c.send(via, &format!("PUT {topic} e{i}")).await,
            Response::Ok
        );
    }
    c
}

/// The `first` of OFFSETS via `via`.
async fn first(c: &TestCluster, via: NodeId, topic: &str) -> u64 {
    match c.send(via, &format!("OFFSETS {topic}")).await {
        Response::Json(j) => serde_json::from_str::<serde_json::Value>(&j).unwrap()["first"]
            .as_u64()
            .unwrap(),
        other => panic!("OFFSETS {topic}: {other:?}"),
    }
}

/// Waits (bounded) until OFFSETS via every node gives `want` as `first`.
async fn wait_first(c: &TestCluster, topic: &str, want: u64) {
    for _ in 0..500 {
        let mut all = true;
        for via in 1..=3 {
            all &= first(c, via, topic).await == want;
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the first offset of {topic} never became {want} on every node (node 1 says {})",
        first(c, 1, topic).await
    );
}

/// The segments of `topic` node `id` holds in its store (not segment 0,
/// the topic's producer journal).
async fn held(c: &TestCluster, id: NodeId, topic: &str) -> Vec<u64> {
    c.logs[&id]
        .segments()
        .await
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.topic.as_str() == topic && k.segment > 0)
        .map(|(k, _)| k.segment)
        .collect()
}

/// Waits (bounded) until no node holds a segment of `topic` up to `through`.
async fn wait_deleted_everywhere(c: &TestCluster, topic: &str, through: u64) {
    for _ in 0..500 {
        let mut gone = true;
        for id in c.nodes.keys() {
            gone &= held(c, *id, topic).await.iter().all(|s| *s > through);
        }
        if gone {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("segments ..={through} of {topic} stayed on some node's store");
}

fn entries(from: u64, to: u64) -> Response {
    Response::Entries {
        entries: (from..to)
            .map(|i| (i, Bytes::from(format!("e{i}"))))
            .collect(),
        next: to,
    }
}

#[tokio::test(start_paused = true)]
async fn given_a_topic_retaining_8_entries_when_segments_close_should_delete_the_oldest_everywhere_and_move_readers_to_the_first(
) {
    // 20 entries: segments 1..=5 closed with 4 each, 6 open and empty.
    let c = cluster_with("REGISTER logs", 20, Retention::default()).await;
    assert_eq!(c.send(2, "COMMIT old logs 2").await, Response::Ok);
    assert_eq!(c.send(3, "GET logs").await, Response::Entry("e0".into()));
    assert_eq!(first(&c, 1, "logs").await, 0, "nothing retained yet");

    assert_eq!(
        c.send(2, "CONFIG logs RETAIN entries=8").await,
        Response::Ok
    );
    // Closed segments may hold 8 entries: 1, 2 and 3 go (20 -> 8).
    wait_first(&c, "logs", 12).await;
    wait_deleted_everywhere(&c, "logs", 3).await;
    for id in 1..=3 {
        let segs = held(&c, id, "logs").await;
        assert!(segs.iter().all(|s| *s >= 4), "node {id} holds {segs:?}");
    }

    // Offsets are not renumbered: 12 is still e12.
    assert_eq!(c.send(1, "READ logs 12 2").await, entries(12, 14));
    assert_eq!(
        c.send(3, "READ logs 11").await,
        Response::Err(
            "deleted: offset 11 of logs was deleted by retention; the first retained offset \
             is 12: read from 12"
                .into()
        )
    );
    // The shared cursor and a group below the first go on at it.
    assert_eq!(c.send(2, "GET logs").await, Response::Entry("e12".into()));
    assert_eq!(c.send(1, "FETCH old logs 2").await, entries(12, 14));
    assert_eq!(c.send(1, "FETCH new logs 1").await, entries(12, 13));
    // A commit below the first is refused, one at it is taken.
    match c.send(2, "COMMIT old logs 5").await {
        Response::Err(e) => assert!(e.starts_with("offset 5 is outside logs (12 to 20)"), "{e}"),
        other => panic!("a commit below the first was taken: {other:?}"),
    }
    assert_eq!(c.send(2, "COMMIT old logs 14").await, Response::Ok);
    assert_eq!(c.send(3, "FETCH old logs 1").await, entries(14, 15));
    match c.send(1, "STATE logs").await {
        Response::Json(j) => {
            let j: serde_json::Value = serde_json::from_str(&j).unwrap();
            assert_eq!(j["first_offset"], 12);
            assert_eq!(j["deleted_segments"], 3);
            assert_eq!(j["retention"]["max_entries"], 8);
        }
        other => panic!("STATE: {other:?}"),
    }

    // New entries close new segments; retention follows them.
    for i in 20..28 {
        assert_eq!(c.send(1, &format!("PUT logs e{i}")).await, Response::Ok);
    }
    wait_first(&c, "logs", 20).await;
    assert_eq!(c.send(2, "READ logs 20 100").await, entries(20, 24));
}

#[tokio::test(start_paused = true)]
async fn given_a_node_down_while_retention_deletes_when_it_returns_should_delete_its_copies() {
    // Segments 1..=5 (leaders 1, 2, 3, 1, 2), 6 open on node 3.
    let mut c = cluster_with("REGISTER logs", 20, Retention::default()).await;
    // The rollover of segment 5 (on node 2) runs after the PUT that filled
    // it: let it commit before node 2 goes.
    let mut watch = c.node(1).metadata().watch();
    let logs = TopicName::new("logs").unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        watch.wait_for(|s| s.topic(&logs).is_some_and(|t| t.current().id == 6)),
    )
    .await
    .expect("segment 6 opens")
    .unwrap();
    assert_eq!(held(&c, 2, "logs").await, vec![2, 5]);
    c.crash(2).await;
    assert_eq!(
        c.send(1, "CONFIG logs RETAIN entries=4").await,
        Response::Ok
    );
    // 1..=4 go (20 -> 4) while node 2 is down: it keeps its copy of 2.
    for _ in 0..500 {
        if first(&c, 1, "logs").await == 16 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(first(&c, 1, "logs").await, 16);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in [1, 3] {
        let segs = held(&c, id, "logs").await;
        assert!(segs.iter().all(|s| *s > 4), "node {id} holds {segs:?}");
    }
    assert_eq!(held(&c, 2, "logs").await, vec![2, 5], "down: untouched");

    c.restart(2);
    for _ in 0..500 {
        if held(&c, 2, "logs").await == vec![5] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        held(&c, 2, "logs").await,
        vec![5],
        "back, it deletes segment 2 and keeps 5"
    );
    assert_eq!(c.send(2, "READ logs 16 4").await, entries(16, 20));
}

#[tokio::test(start_paused = true)]
async fn given_a_topic_retaining_10s_when_segments_age_should_delete_each_once_10s_after_it_closed()
{
    let c = cluster_with("REGISTER logs RETAIN age=10s", 8, Retention::default()).await;
    // Segments 1 and 2 closed now; 3 closes 5 s later.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for i in 8..12 {
        assert_eq!(c.send(1, &format!("PUT logs e{i}")).await, Response::Ok);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(first(&c, 1, "logs").await, 0, "9 s old: kept");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(first(&c, 2, "logs").await, 8, "11 s old: deleted");
    wait_deleted_everywhere(&c, "logs", 2).await;
    assert_eq!(held(&c, 3, "logs").await, vec![3], "segment 3 is 6 s old");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(first(&c, 3, "logs").await, 12);
    assert_eq!(c.send(1, "READ logs 12").await, entries(12, 12));
}

#[tokio::test(start_paused = true)]
async fn given_a_server_default_when_topics_set_their_own_or_none_should_apply_the_right_one() {
    let default = Retention {
        max_entries: Some(4),
        ..Retention::default()
    };
    let c = cluster_with("REGISTER dflt", 12, default).await;
    assert_eq!(c.send(1, "REGISTER kept RETAIN none").await, Response::Ok);
    assert_eq!(
        c.send(1, "REGISTER own RETAIN entries=8").await,
        Response::Ok
    );
    for topic in ["kept", "own"] {
        for i in 0..12 {
            assert_eq!(c.send(1, &format!("PUT {topic} e{i}")).await, Response::Ok);
        }
    }
    wait_first(&c, "dflt", 8).await;
    wait_first(&c, "own", 4).await;
    assert_eq!(first(&c, 1, "kept").await, 0);
    match c.send(2, "CONFIG own").await {
        Response::Json(j) => {
            let j: serde_json::Value = serde_json::from_str(&j).unwrap();
            assert_eq!(j["retention"]["max_entries"], 8);
            assert_eq!(j["first"], 4);
        }
        other => panic!("CONFIG own: {other:?}"),
    }
    // Back to the default: 4 entries.
    assert_eq!(c.send(3, "CONFIG own RETAIN default").await, Response::Ok);
    wait_first(&c, "own", 8).await;
    assert_eq!(
        c.send(1, "CONFIG nope RETAIN none").await,
        Response::Err("topic not found".into())
    );
    wait_deleted_everywhere(&c, "dflt", 2).await;
    let key = SegmentKey::new(TopicName::new("dflt").unwrap(), 3);
    assert!(c.logs[&3].info(&key).await.unwrap().is_some(), "kept");
}

#[tokio::test(start_paused = true)]
async fn given_a_topic_retaining_20_bytes_when_segments_close_should_count_the_bytes_their_leaders_report(
) {
    // Payloads e0..e19: segments 1..=5 hold 8, 8, 10, 12 and 12 bytes.
    let c = cluster_with("REGISTER logs RETAIN bytes=20", 20, Retention::default()).await;
    // 50 bytes closed: 1..=4 go, 5 (12 bytes) stays.
    wait_first(&c, "logs", 16).await;
    wait_deleted_everywhere(&c, "logs", 4).await;
    assert_eq!(c.send(2, "READ logs 16 4").await, entries(16, 20));
    let logs = TopicName::new("logs").unwrap();
    let state = c.node(3).metadata().state();
    let t = state.topic(&logs).unwrap();
    let bytes: Vec<Option<u64>> = t.segments.iter().map(|s| s.bytes).collect();
    assert_eq!(
        bytes,
        vec![Some(8), Some(8), Some(10), Some(12), Some(12), None],
        "each closed segment's leader reported it; the open one has none"
    );
    match c.send(1, "CONFIG logs").await {
        Response::Json(j) => {
            let j: serde_json::Value = serde_json::from_str(&j).unwrap();
            assert_eq!(j["retention"]["max_bytes"], 20);
            assert_eq!(j["in_force"]["max_bytes"], 20);
        }
        other => panic!("CONFIG logs: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn given_idempotent_writes_when_retention_deletes_their_segments_should_keep_the_producer_journals(
) {
    let c = cluster_with("REGISTER logs", 0, Retention::default()).await;
    // Producer p writes e0..e7: segment 1 on node 1, 2 on node 2, each
    // leader journaling p's writes in segment 0 of its store.
    for i in 0..8u64 {
        let body = format!(
            "PUTB logs 1 PRODUCER p {i}\n{}\ne{i}\n",
            format!("e{i}").len()
        );
        assert!(
            matches!(c.send(1, &body).await, Response::Stored { n: 1, .. }),
            "write {i}"
        );
    }
    let journal = SegmentKey::new(TopicName::new("logs").unwrap(), 0);
    for id in [1, 2] {
        assert!(c.logs[&id].info(&journal).await.unwrap().is_some());
    }
    assert_eq!(
        c.send(2, "CONFIG logs RETAIN entries=0").await,
        Response::Ok
    );
    wait_first(&c, "logs", 8).await;
    wait_deleted_everywhere(&c, "logs", 2).await;
    for id in [1, 2] {
        let info = c.logs[&id].info(&journal).await.unwrap();
        assert!(
            info.is_some_and(|i| !i.sealed && i.count > 0),
            "node {id}'s producer journal was deleted with the segments: {info:?}"
        );
    }
    // p goes on, and a retry of its last write is still known.
    let body = "PUTB logs 1 PRODUCER p 8\n2\ne8\n";
    assert!(matches!(
        c.send(3, body).await,
        Response::Stored { n: 1, .. }
    ));
    assert!(matches!(
        c.send(1, body).await,
        Response::Stored { n: 1, .. }
    ));
    assert_eq!(c.send(2, "READ logs 8").await, entries(8, 9));
}
