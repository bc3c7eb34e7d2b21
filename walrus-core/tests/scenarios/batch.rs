//! `Node::put_batch`: a pipelined writer's queued PUTs stored together,
//! with every guarantee of the single PUT (exact segment limits across a
//! rollover, order, each acknowledged entry read once).

use std::time::Duration;

use bytes::Bytes;
use walrus_core::metadata::SegmentStatus;
use walrus_core::protocol::Response;
use walrus_core::testing::TestCluster;
use walrus_core::{LogStore, SegmentKey, TopicName};

fn topic(s: &str) -> TopicName {
    TopicName::new(s).unwrap()
}

/// Asserts that segments `ids` of topic `logs` are sealed with exactly
/// `count` entries each.
fn assert_sealed_exactly(c: &TestCluster, ids: std::ops::RangeInclusive<u64>, count: u64) {
    let state = c.metadata.committed();
    let t = state.topic(&topic("logs")).unwrap();
    for id in ids {
        let s = t.segment(id).unwrap();
        assert_eq!(s.status, SegmentStatus::Sealed { count }, "segment {id}");
    }
}

fn sorted(mut entries: Vec<Bytes>) -> Vec<Bytes> {
    entries.sort();
    entries
}

fn payloads(prefix: &str, n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{prefix}{i}")))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn given_limit_10_when_a_batch_of_25_crosses_two_rollovers_should_seal_exact_segments_in_order(
) {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 10)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    // 3 single PUTs first: the batch starts in a partly filled segment.
    for i in 0..3 {
        assert_eq!(c.send(1, &format!("PUT logs s{i}")).await, Response::Ok);
    }
    let batch = payloads("b", 25);
    let (acked, err) = c.node(1).put_batch(&topic("logs"), batch.clone()).await;
    assert_eq!((acked, err), (25, None));
    tokio::time::sleep(Duration::from_millis(100)).await;

    assert_sealed_exactly(&c, 1..=2, 10);
    // 3 + 25 = 28: two full segments, 8 in the third (led by node 3, so
    // its part of the batch was forwarded).
    let state = c.metadata.committed();
    let t = state.topic(&topic("logs")).unwrap();
    assert_eq!(t.current().id, 3);
    assert_eq!(t.current().leader, 3);
    let third = c.logs[&3]
        .read(&SegmentKey::new(topic("logs"), 3), 0, 100, 1 << 20)
        .await
        .unwrap();
    assert_eq!(third.len(), 8);

    let mut expected = payloads("s", 3);
    expected.extend(batch);
    assert_eq!(c.drain(2, "logs", Duration::from_secs(10)).await, expected);
}

#[tokio::test(start_paused = true)]
async fn given_a_batch_through_a_non_leader_should_forward_it_as_one_append() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    let batch = payloads("e", 40);
    let (acked, err) = c.node(2).put_batch(&topic("logs"), batch.clone()).await;
    assert_eq!((acked, err), (40, None));
    let appends = c.logs[&1].append_history();
    assert_eq!(appends.len(), 1, "one append on the leader: {appends:?}");
    assert!(c.logs[&2].append_history().is_empty());
    assert_eq!(c.drain(3, "logs", Duration::from_secs(10)).await, batch);
}

#[tokio::test(start_paused = true)]
async fn given_a_forwarded_batch_larger_than_the_leaders_segment_should_fill_it_and_follow_the_rollover(
) {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 10)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    // Sent to node 3: segment 1 (node 1) and segment 2 (node 2) are both
    // remote; segment 3 is node 3's own.
    let batch = payloads("f", 27);
    let (acked, err) = c.node(3).put_batch(&topic("logs"), batch.clone()).await;
    assert_eq!((acked, err), (27, None));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_sealed_exactly(&c, 1..=2, 10);
    assert_eq!(c.drain(1, "logs", Duration::from_secs(10)).await, batch);
}

#[tokio::test(start_paused = true)]
async fn given_an_unknown_topic_should_answer_no_entry_acked_and_topic_not_found() {
    let c = TestCluster::start(1, |id| TestCluster::config(id, 10)).await;
    let (acked, err) = c.node(1).put_batch(&topic("nope"), payloads("x", 3)).await;
    assert_eq!(acked, 0);
    assert_eq!(err, Some(walrus_core::Error::TopicNotFound));
}

#[tokio::test(start_paused = true)]
async fn given_appends_that_fail_should_ack_nothing_and_say_why() {
    let c = TestCluster::start(1, |id| TestCluster::config(id, 10)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    c.logs[&1].fail_appends(Some("disk full"));
    let (acked, err) = c.node(1).put_batch(&topic("logs"), payloads("x", 3)).await;
    assert_eq!(acked, 0);
    assert!(err.is_some());
    c.logs[&1].fail_appends(None);
    let (acked, err) = c.node(1).put_batch(&topic("logs"), payloads("y", 3)).await;
    assert_eq!((acked, err), (3, None));
    assert_eq!(
        c.drain(1, "logs", Duration::from_secs(10)).await,
        payloads("y", 3)
    );
}

/// Many connections' PUTs through one non-leader, with a slow leader: the
/// writes that queue behind the one in flight go to the leader together.
async fn put_concurrently_through(c: &TestCluster, via: u64, writers: usize) -> Vec<Response> {
    let lines: Vec<String> = (0..writers).map(|i| format!("PUT logs w{i}")).collect();
    futures::future::join_all(lines.iter().map(|line| c.send(via, line))).await
}

#[tokio::test(start_paused = true)]
async fn given_many_writers_through_a_non_leader_when_the_leader_is_slow_should_combine_their_appends(
) {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    c.logs[&1].delay_appends(Some(Duration::from_millis(5)));

    let answers = put_concurrently_through(&c, 2, 40).await;
    assert!(answers.iter().all(|a| *a == Response::Ok), "{answers:?}");

    // The first write goes alone; the other 39 queued behind it and follow
    // in one append (the cap of a combined batch is far above 39).
    let appends = c.logs[&1].append_history();
    assert_eq!(appends.len(), 2, "{appends:?}");
    let got = c.drain(3, "logs", Duration::from_secs(10)).await;
    assert_eq!(sorted(got), sorted(payloads("w", 40)));
}

#[tokio::test(start_paused = true)]
async fn given_a_combined_batch_that_overfills_the_segment_should_seal_it_exactly_and_store_every_write_once(
) {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 10)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    c.logs[&1].delay_appends(Some(Duration::from_millis(5)));

    // 25 writers, limit 10: the combined batch of 24 overfills segment 1;
    // the writers left out follow the rollover.
    let answers = put_concurrently_through(&c, 2, 25).await;
    assert!(answers.iter().all(|a| *a == Response::Ok), "{answers:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;

    assert_sealed_exactly(&c, 1..=2, 10);
    let got = c.drain(3, "logs", Duration::from_secs(10)).await;
    assert_eq!(
        sorted(got),
        sorted(payloads("w", 25)),
        "every write stored exactly once"
    );
}
