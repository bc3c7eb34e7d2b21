//! Rollover: full segments are sealed with exact counts, the next one opens
//! on the next voter round-robin, and writers never notice.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use walrus_core::metadata::SegmentStatus;
use walrus_core::protocol::Response;
use walrus_core::testing::TestCluster;
use walrus_core::TopicName;

fn topic(s: &str) -> TopicName {
    TopicName::new(s).unwrap()
}

#[tokio::test(start_paused = true)]
async fn given_limit_10_when_60_puts_go_through_a_non_leader_should_seal_6_segments_round_robin() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 10)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    for i in 0..60 {
        assert_eq!(
            c.send(2, &format!("PUT logs m{i}")).await,
            Response::Ok,
            "PUT m{i}"
        );
    }
    // The last rollover commits in the background.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let state = c.metadata.committed();
    let t = state.topic(&topic("logs")).unwrap();
    let sealed: Vec<_> = t.segments.iter().filter(|s| s.id <= 6).collect();
    assert_eq!(sealed.len(), 6);
    for s in &sealed {
        assert_eq!(
            s.status,
            SegmentStatus::Sealed { count: 10 },
            "segment {}",
            s.id
        );
        let expected_leader = (s.id - 1) % 3 + 1;
        assert_eq!(s.leader, expected_leader, "segment {} leader", s.id);
    }
    assert_eq!(t.current().id, 7, "segment 7 is open and empty");
    assert_eq!(t.current().leader, 1);
    assert_eq!(t.current().status, SegmentStatus::Open);

    for i in 0..60 {
        assert_eq!(
            c.send(3, "GET logs").await,
            Response::Entry(Bytes::from(format!("m{i}"))),
            "GET #{i}"
        );
    }
    assert_eq!(c.send(3, "GET logs").await, Response::Empty);
    assert_eq!(c.send(1, "GET logs").await, Response::Empty);
}

#[tokio::test(start_paused = true)]
async fn given_a_segment_sealed_but_not_rolled_when_the_monitor_runs_should_roll_it() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    assert_eq!(c.send(1, "PUT logs a").await, Response::Ok);
    // Simulates a leader that sealed and crashed before committing the Roll.
    let key = walrus_core::SegmentKey::new(topic("logs"), 1);
    use walrus_core::LogStore;
    assert_eq!(c.logs[&1].seal(&key).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(120)).await;
    let state = c.metadata.committed();
    let t = state.topic(&topic("logs")).unwrap();
    assert_eq!(t.segments[0].status, SegmentStatus::Sealed { count: 1 });
    assert_eq!(t.current().id, 2, "the monitor rolled the sealed segment");
    assert_eq!(t.current().leader, 2);
    assert_eq!(c.send(3, "PUT logs b").await, Response::Ok);
    assert_eq!(c.send(2, "GET logs").await, Response::Entry("a".into()));
    assert_eq!(c.send(2, "GET logs").await, Response::Entry("b".into()));
    assert_eq!(c.send(2, "GET logs").await, Response::Empty);
}

/// 8 writers × 500 unique ids through random nodes, limit 37: every
/// acknowledged id is read exactly once, and each writer's order is kept.
#[tokio::test(start_paused = true)]
async fn given_8_concurrent_writers_when_segments_roll_every_37_should_read_each_ack_once_in_writer_order(
) {
    let c = std::sync::Arc::new(TestCluster::start(3, |id| TestCluster::config(id, 37)).await);
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let c = c.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..500u64 {
                let via = (w + i) % 3 + 1;
                match c.send(via, &format!("PUT logs {w}:{i}")).await {
                    Response::Ok => acked.push(i),
                    other => panic!("writer {w} PUT {i} via {via}: {other:?}"),
                }
            }
            acked
        }));
    }
    let mut acked: HashMap<u64, Vec<u64>> = HashMap::new();
    for (w, h) in writers.into_iter().enumerate() {
        acked.insert(w as u64, h.await.unwrap());
    }
    let entries = c.drain(2, "logs", Duration::from_secs(10)).await;
    assert_eq!(entries.len(), 4000);
    let mut seen: HashMap<u64, Vec<u64>> = HashMap::new();
    for e in &entries {
        let s = std::str::from_utf8(e).unwrap();
        let (w, i) = s.split_once(':').unwrap();
        seen.entry(w.parse().unwrap())
            .or_default()
            .push(i.parse().unwrap());
    }
    assert_eq!(seen, acked, "each writer's acked ids, once each, in order");

    let state = c.metadata.committed();
    let t = state.topic(&topic("logs")).unwrap();
    for s in &t.segments[..t.segments.len() - 1] {
        assert_eq!(
            s.status,
            SegmentStatus::Sealed { count: 37 },
            "segment {}",
            s.id
        );
    }
}

/// Rule 7 of `MetadataStore`: a proposal that failed may commit later. The
/// leader's `Roll` times out, the monitor proposes it again, and then the
/// first one commits too: the repeat must change nothing.
#[tokio::test(start_paused = true)]
async fn given_a_roll_that_fails_then_commits_late_when_the_monitor_rolls_again_should_open_one_segment(
) {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 3)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    c.metadata.fail_then_commit(
        1,
        walrus_core::Error::Unavailable("no quorum: the proposal timed out, retry".into()),
        Duration::from_millis(500),
    );
    for i in 0..3 {
        assert_eq!(c.send(2, &format!("PUT logs m{i}")).await, Response::Ok);
    }
    // The monitor (every 50 ms) rolls again; the late commit lands after.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rolls = c
        .metadata
        .log()
        .into_iter()
        .filter(|cmd| matches!(cmd, walrus_core::MetadataCmd::Roll { segment: 1, .. }))
        .count();
    assert_eq!(rolls, 2, "the Roll committed twice, as the test means");
    let state = c.metadata.committed();
    let t = state.topic(&topic("logs")).unwrap();
    assert_eq!(t.segments.len(), 2, "one new segment: {:?}", t.segments);
    assert_eq!(t.segments[0].status, SegmentStatus::Sealed { count: 3 });
    assert_eq!(t.current().status, SegmentStatus::Open);

    assert_eq!(c.send(3, "PUT logs m3").await, Response::Ok);
    let read = c.drain(3, "logs", Duration::from_secs(10)).await;
    let expected: Vec<Bytes> = (0..4).map(|i| Bytes::from(format!("m{i}"))).collect();
    assert_eq!(read, expected);
}

/// Rollover by bytes: a segment is sealed when the next entry would take
/// it past `max_segment_bytes`, with single PUTs and with a pipelined
/// batch, whichever limit (entries or bytes) comes first.
#[tokio::test(start_paused = true)]
async fn given_a_byte_limit_of_10_when_putting_should_seal_each_segment_before_it_passes_10_bytes()
{
    let c = TestCluster::start(3, |id| walrus_core::NodeConfig {
        max_segment_bytes: 10,
        ..TestCluster::config(id, 4)
    })
    .await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    // 4 + 4 = 8; 4 more would be 12: segment 2. Then "a" x5 entries: the
    // entry limit (4) comes first. Then one 12-byte entry alone.
    let singles = [
        "aaaa",
        "bbbb",
        "cccc",
        "d",
        "e",
        "f",
        "g",
        "h",
        "twelve-bytes",
        "i",
    ];
    for p in singles {
        assert_eq!(c.send(2, &format!("PUT logs {p}")).await, Response::Ok);
    }
    let batch: Vec<Bytes> = ["jjjjj", "kkkkk", "lllll"]
        .into_iter()
        .map(Bytes::from)
        .collect();
    let (stored, err) = c.node(3).put_batch(&topic("logs"), batch).await;
    assert_eq!((stored, err), (3, None));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let state = c.metadata.committed();
    let t = state.topic(&topic("logs")).unwrap();
    let counts: Vec<Option<u64>> = t.segments.iter().map(|s| s.status.final_count()).collect();
    // [aaaa bbbb] [cccc d e f] [g h] [twelve-bytes] [i jjjjj] [kkkkk lllll] (open)
    assert_eq!(
        counts,
        vec![Some(2), Some(4), Some(2), Some(1), Some(2), None]
    );
    let mut all: Vec<Bytes> = singles.iter().map(|p| Bytes::from(*p)).collect();
    all.extend(["jjjjj", "kkkkk", "lllll"].into_iter().map(Bytes::from));
    for (i, want) in all.iter().enumerate() {
        assert_eq!(
            c.send(1, "GET logs").await,
            Response::Entry(want.clone()),
            "#{i}"
        );
    }
}
