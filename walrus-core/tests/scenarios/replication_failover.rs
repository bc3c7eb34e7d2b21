//! Failover of replicated segments (issue 10): reads stop at the commit
//! point, a segment whose leader is gone is closed from its replicas at a
//! count that holds every acknowledged entry (Sealed, never Pending), and
//! closed segments are read from any replica.

use std::time::Duration;

use bytes::Bytes;
use walrus_core::protocol::Response;
use walrus_core::testing::TestCluster;
use walrus_core::{
    LogStore, NodeRequest, NodeResponse, RequestHandler, SegmentInfo, SegmentKey, SegmentStatus,
    TopicName,
};

fn topic(s: &str) -> TopicName {
    TopicName::new(s).unwrap()
}

fn key(segment: u64) -> SegmentKey {
    SegmentKey::new(topic("logs"), segment)
}

/// Every segment's status and replica set, as committed.
fn segments(c: &TestCluster) -> Vec<(SegmentStatus, Vec<u64>)> {
    let state = c.metadata.committed();
    let t = state.topic(&topic("logs")).expect("the topic exists");
    t.segments
        .iter()
        .map(|s| (s.status, s.replicas()))
        .collect()
}

/// Reads the whole topic by offset via node `via` (retrying what is
/// retryable), up to the end.
async fn read_all(c: &TestCluster, via: u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let line = format!("READ logs {} 100", out.len());
        match c.send(via, &line).await {
            Response::Entries { entries, .. } if entries.is_empty() => return out,
            Response::Entries { entries, .. } => out.extend(entries.into_iter().map(|(_, e)| e)),
            Response::Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "READ via node {via} kept failing: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("READ answered {other:?}"),
        }
    }
}

/// Writes `m{i}` for each `i` of `range` to `logs` through node `via`, each acknowledged.
async fn put_acked(c: &TestCluster, via: u64, range: std::ops::Range<usize>) {
    for i in range {
        assert_eq!(c.send(via, &format!("PUT logs m{i}")).await, Response::Ok);
    }
}

fn payloads(names: impl IntoIterator<Item = String>) -> Vec<Bytes> {
    names.into_iter().map(Bytes::from).collect()
}

/// REGISTER through node 2 makes node 2 the first segment's leader, with
/// followers 3 and 1 (node 1 leads consensus).
async fn cluster_led_by_2() -> TestCluster {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(2, "REGISTER logs RF 3").await, Response::Ok);
    assert_eq!(segments(&c)[0].1, vec![2, 3, 1]);
    c
}

#[tokio::test(start_paused = true)]
async fn given_an_entry_not_yet_on_a_majority_when_reading_the_leader_should_not_serve_it() {
    // Node 1 leads the segment and owns the GET cursor.
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(1, "REGISTER logs RF 3").await, Response::Ok);
    assert_eq!(segments(&c)[0].1, vec![1, 2, 3]);
    assert_eq!(c.send(1, "PUT logs m0").await, Response::Ok);
    // Both followers stop taking copies: m1 is on the leader only.
    c.net.partition(1, 2);
    c.net.partition(1, 3);
    let put = c.send(1, "PUT logs m1");
    let reads = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stored = c.logs[&1].read(&key(1), 0, 10, 1 << 20).await.unwrap();
        assert_eq!(stored.len(), 2, "m1 is stored on the leader");
        let read = c.send(1, "READ logs 0 10").await;
        let get = c.send(1, "GET logs").await;
        let at_end = c.send(1, "READ logs 1 10").await;
        (read, get, at_end)
    };
    let (put, (read, get, at_end)) = tokio::join!(put, reads);
    assert!(
        matches!(put, Response::Err(ref e) if e.starts_with("outcome unknown")),
        "{put:?}"
    );
    match read {
        Response::Entries { entries, next } => {
            assert_eq!(entries, vec![(0, Bytes::from("m0"))]);
            assert_eq!(next, 1, "m1 is past the commit point");
        }
        other => panic!("READ answered {other:?}"),
    }
    assert_eq!(get, Response::Entry(Bytes::from("m0")));
    match at_end {
        Response::Entries { entries, .. } => assert!(entries.is_empty(), "{entries:?}"),
        other => panic!("READ at the commit point answered {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn given_rf_3_when_the_segment_leader_is_killed_mid_stream_should_seal_from_the_replicas_and_go_on(
) {
    let c = cluster_led_by_2().await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let p = format!("m{i}");
        assert_eq!(c.send(2, &format!("PUT logs {p}")).await, Response::Ok);
        acked.push(p);
    }
    c.crash(2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let segs = segments(&c);
    assert_eq!(
        segs[0].0,
        SegmentStatus::Sealed { count: 20 },
        "closed at what the replicas hold, not pending: {segs:?}"
    );
    assert!(
        !segs[1].1.contains(&2),
        "the next segment skips the dead node: {segs:?}"
    );
    for i in 20..25 {
        let p = format!("m{i}");
        assert_eq!(c.send(1, &format!("PUT logs {p}")).await, Response::Ok);
        acked.push(p);
    }
    assert_eq!(read_all(&c, 3).await, payloads(acked.clone()));
    assert_eq!(
        c.drain(1, "logs", Duration::from_secs(10)).await,
        payloads(acked),
        "GET reads the closed segment from a follower"
    );
    for node in [1, 3] {
        assert_eq!(
            c.logs[&node].info(&key(1)).await.unwrap(),
            Some(SegmentInfo {
                count: 20,
                sealed: true
            }),
            "node {node}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn given_a_follower_behind_when_the_leader_dies_should_copy_it_the_tail_before_sealing() {
    let c = cluster_led_by_2().await;
    put_acked(&c, 2, 0..5).await;
    // Node 3 misses m5..m9; node 1 keeps the majority.
    c.net.partition(2, 3);
    put_acked(&c, 2, 5..10).await;
    assert_eq!(c.logs[&3].info(&key(1)).await.unwrap().unwrap().count, 5);
    c.crash(2).await;
    c.net.heal();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(segments(&c)[0].0, SegmentStatus::Sealed { count: 10 });
    let on_1 = c.logs[&1].read(&key(1), 0, 100, 1 << 20).await.unwrap();
    assert_eq!(on_1, payloads((0..10).map(|i| format!("m{i}"))));
    assert_eq!(
        c.logs[&3].read(&key(1), 0, 100, 1 << 20).await.unwrap(),
        on_1,
        "the tail was copied to node 3"
    );
    assert_eq!(
        c.logs[&3].info(&key(1)).await.unwrap(),
        Some(SegmentInfo {
            count: 10,
            sealed: true
        })
    );
}

#[tokio::test(start_paused = true)]
async fn given_a_leader_partitioned_from_its_followers_when_writing_should_stop_acknowledging_within_the_lease_and_lose_nothing_it_acknowledged(
) {
    let mut c = cluster_led_by_2().await;
    let mut acked = Vec::new();
    for i in 0..10 {
        let p = format!("m{i}");
        assert_eq!(c.send(2, &format!("PUT logs {p}")).await, Response::Ok);
        acked.push(p);
    }
    c.isolate(2);
    let cut_at = tokio::time::Instant::now();
    let mut last_ok = None;
    for i in 10..40 {
        let p = format!("m{i}");
        if c.send(2, &format!("PUT logs {p}")).await == Response::Ok {
            last_ok = Some(tokio::time::Instant::now());
            acked.push(p);
        }
    }
    if let Some(at) = last_ok {
        assert!(
            at.duration_since(cut_at) <= c.configs[&2].lease,
            "acknowledged {:?} after the partition",
            at.duration_since(cut_at)
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let segs = segments(&c);
    assert!(
        matches!(segs[0].0, SegmentStatus::Sealed { .. }),
        "closed from nodes 1 and 3: {segs:?}"
    );
    for i in 40..45 {
        let p = format!("m{i}");
        assert_eq!(c.send(3, &format!("PUT logs {p}")).await, Response::Ok);
        acked.push(p);
    }
    let read = read_all(&c, 1).await;
    let acked = payloads(acked);
    assert_eq!(read, acked, "every acknowledged entry, once, in order");
    // The old leader comes back: it learns the count and keeps nothing
    // past it.
    let SegmentStatus::Sealed { count } = segs[0].0 else {
        unreachable!()
    };
    c.heal();
    c.crash(2).await;
    c.restart(2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        c.logs[&2].info(&key(1)).await.unwrap(),
        Some(SegmentInfo {
            count,
            sealed: true
        }),
        "the old leader's copy is cut to the count"
    );
    assert_eq!(read_all(&c, 2).await, acked);
}

#[tokio::test(start_paused = true)]
async fn given_a_majority_of_replicas_down_when_the_leader_dies_should_leave_the_count_pending_until_a_majority_answers(
) {
    let c = cluster_led_by_2().await;
    put_acked(&c, 2, 0..5).await;
    // Node 1 (consensus) alone cannot know what node 3 acknowledged.
    c.net.partition(1, 3);
    c.crash(2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let segs = segments(&c);
    assert_eq!(segs[0].0, SegmentStatus::Pending, "{segs:?}");
    assert_eq!(c.send(1, "PUT logs m5").await, Response::Ok, "writes go on");
    // Node 3 is back in reach, node 2 never comes back: a majority of the
    // replicas answers, and readers no longer wait for node 2.
    c.net.heal();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let segs = segments(&c);
    assert_eq!(segs[0].0, SegmentStatus::Sealed { count: 5 }, "{segs:?}");
    assert_eq!(
        read_all(&c, 3).await,
        payloads((0..6).map(|i| format!("m{i}")))
    );
}

#[tokio::test(start_paused = true)]
async fn given_the_leader_of_a_sealed_segment_down_when_reading_should_read_a_follower() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 5)).await;
    assert_eq!(c.send(2, "REGISTER logs RF 3").await, Response::Ok);
    let all: Vec<String> = (0..12).map(|i| format!("m{i}")).collect();
    for p in &all {
        assert_eq!(c.send(1, &format!("PUT logs {p}")).await, Response::Ok);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        segments(&c)[0],
        (SegmentStatus::Sealed { count: 5 }, vec![2, 3, 1])
    );
    c.crash(2).await;
    assert_eq!(
        c.send(3, "READ logs 0 5").await,
        Response::Entries {
            entries: (0..5).map(|i| (i, Bytes::from(format!("m{i}")))).collect(),
            next: 5
        }
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(read_all(&c, 1).await, payloads(all.clone()));
    assert_eq!(
        c.drain(3, "logs", Duration::from_secs(10)).await,
        payloads(all)
    );
}

#[tokio::test(start_paused = true)]
async fn given_replicas_fenced_by_a_failover_when_the_old_leader_goes_on_should_count_nothing_they_refuse(
) {
    let c = cluster_led_by_2().await;
    put_acked(&c, 2, 0..3).await;
    let fence = |node: u64| {
        let n = c.node(node).clone();
        async move { RequestHandler::handle(&*n, NodeRequest::Fence { segment: key(1) }).await }
    };
    assert_eq!(
        fence(3).await.unwrap(),
        NodeResponse::Replicated { count: 3 }
    );
    // Node 1 still makes a majority with the leader; node 3 takes nothing.
    put_acked(&c, 2, 3..6).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.logs[&3].info(&key(1)).await.unwrap().unwrap().count, 3);
    assert_eq!(c.logs[&1].info(&key(1)).await.unwrap().unwrap().count, 6);
    // With both followers fenced nothing is acknowledged any more.
    assert_eq!(
        fence(1).await.unwrap(),
        NodeResponse::Replicated { count: 6 }
    );
    match c.send(2, "PUT logs late").await {
        Response::Err(e) => assert!(e.starts_with("outcome unknown"), "{e}"),
        other => panic!("acknowledged without a majority: {other:?}"),
    }
    // The leader, fenced, seals its copy and answers all it holds.
    let Ok(NodeResponse::Replicated { count }) = fence(2).await else {
        panic!("the leader did not answer its count")
    };
    assert!(count >= 6, "{count}");
    let info = c.logs[&2].info(&key(1)).await.unwrap().unwrap();
    assert_eq!((info.count, info.sealed), (count, true));
}

#[tokio::test(start_paused = true)]
async fn given_a_replicated_topic_when_retention_deletes_segments_should_delete_every_copy() {
    let c = TestCluster::start(3, |id| walrus_core::NodeConfig {
        retention_interval: Duration::from_millis(50),
        ..TestCluster::config(id, 5)
    })
    .await;
    assert_eq!(
        c.send(2, "REGISTER logs RETAIN entries=5 RF 3").await,
        Response::Ok
    );
    put_acked(&c, 1, 0..17).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deleted = c
        .metadata
        .committed()
        .topic(&topic("logs"))
        .unwrap()
        .deleted_through;
    assert!(deleted >= 2, "deleted through {deleted}");
    for node in 1..=3 {
        for segment in 1..=deleted {
            assert_eq!(
                c.logs[&node].info(&key(segment)).await.unwrap(),
                None,
                "node {node} keeps deleted segment {segment}"
            );
        }
        assert!(c.logs[&node]
            .info(&key(deleted + 1))
            .await
            .unwrap()
            .is_some());
    }
}

#[tokio::test(start_paused = true)]
async fn given_followers_with_slow_disks_when_a_segment_rolls_should_commit_its_count_once_a_majority_holds_it(
) {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 3)).await;
    assert_eq!(c.send(2, "REGISTER logs RF 3").await, Response::Ok);
    // Slow follower disks: their copies land 100 ms after they arrive.
    for node in [1, 3] {
        c.logs[&node].delay_appends(Some(Duration::from_millis(100)));
    }
    let mut watch = c.node(1).metadata().watch();
    let on_commit = async {
        // What the followers hold when the count becomes final.
        watch
            .wait_for(|s| {
                s.topic(&topic("logs"))
                    .is_some_and(|t| t.segments[0].status != SegmentStatus::Open)
            })
            .await
            .unwrap();
        let mut held = Vec::new();
        for node in [3, 1] {
            held.push(
                c.logs[&node]
                    .info(&key(1))
                    .await
                    .unwrap()
                    .map_or(0, |i| i.count),
            );
        }
        held
    };
    // The fourth PUT finds the segment full and starts the rollover at
    // once, while the copies of the first three are on their way.
    let lines: Vec<String> = (0..4).map(|i| format!("PUT logs m{i}")).collect();
    let puts = futures::future::join_all(lines.iter().map(|line| c.send(2, line)));
    let (answers, held) = tokio::join!(puts, on_commit);
    assert!(answers.iter().all(|a| *a == Response::Ok), "{answers:?}");
    assert_eq!(segments(&c)[0].0, SegmentStatus::Sealed { count: 3 });
    assert!(
        held.iter().any(|h| *h >= 3),
        "the count was committed while only the leader held it: followers held {held:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn given_a_leader_that_lost_its_unsynced_tail_when_it_restarts_should_close_its_segment_from_the_replicas_not_append_after_it(
) {
    let mut c = cluster_led_by_2().await;
    // Node 2 acknowledges before syncing (`--fsync interval`); its
    // followers hold m0..m4 durably.
    c.logs[&2].relax_syncs(true);
    put_acked(&c, 2, 0..5).await;
    // Power cut on node 2, back before any failover would notice: its copy
    // of segment 1 lost every entry the followers acknowledged with it.
    c.logs[&2].power_cut();
    c.crash(2).await;
    c.restart(2);
    assert!(
        c.logs[&2]
            .info(&key(1))
            .await
            .unwrap()
            .map_or(0, |i| i.count)
            < 5,
        "the power cut took entries from node 2's copy"
    );
    // Appending after its short copy would give indexes 0..5 two entries
    // each. The segment is closed from the replicas instead.
    put_acked(&c, 1, 5..10).await;
    let segs = segments(&c);
    assert_eq!(segs[0].0, SegmentStatus::Sealed { count: 5 }, "{segs:?}");
    let all = payloads((0..10).map(|i| format!("m{i}")));
    for via in [1, 2, 3] {
        assert_eq!(read_all(&c, via).await, all, "read via node {via}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        c.logs[&2].read(&key(1), 0, 100, 1 << 20).await.unwrap(),
        payloads((0..5).map(|i| format!("m{i}"))),
        "node 2's copy is refilled from the replicas"
    );
}

#[tokio::test(start_paused = true)]
async fn given_a_leader_cut_off_from_its_followers_but_not_from_consensus_when_it_rolls_should_not_commit_entries_only_it_holds(
) {
    // Node 1 leads consensus; segment 1 is on nodes 2 (leader), 3 and 4.
    let c = TestCluster::start(4, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(2, "REGISTER logs RF 3").await, Response::Ok);
    assert_eq!(segments(&c)[0].1, vec![2, 3, 4]);
    put_acked(&c, 2, 0..3).await;
    // Node 2 still renews its lease with node 1, but its copies go nowhere.
    c.net.partition(2, 3);
    c.net.partition(2, 4);
    let unconfirmed = c.send(2, "PUT logs m3").await;
    assert!(
        matches!(unconfirmed, Response::Err(ref e) if e.starts_with("outcome unknown")),
        "{unconfirmed:?}"
    );
    // The rollover that follows cannot vouch for m3: the segment is closed
    // from a majority of its replicas instead, which copies m3 from node 2
    // (relayed by node 1) rather than leave it there alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let segs = segments(&c);
    let SegmentStatus::Sealed { count } = segs[0].0 else {
        panic!("segment 1 is closed: {segs:?}")
    };
    // Node 2 goes for good: nothing committed waits for it.
    c.crash(2).await;
    let read = read_all(&c, 3).await;
    assert!(count == 3 || count == 4, "m0..m2, and m3 if kept: {count}");
    assert_eq!(read.len() as u64, count, "every committed entry is read");
    assert_eq!(
        read[..3],
        payloads((0..3).map(|i| format!("m{i}")))[..],
        "every acknowledged entry"
    );
    for node in [3, 4] {
        let info = c.logs[&node].info(&key(1)).await.unwrap().unwrap();
        assert_eq!(
            (info.count, info.sealed),
            (count, true),
            "node {node} holds all of segment 1 as committed"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn given_a_segment_closed_from_its_replicas_when_its_leader_stays_down_should_count_its_bytes_from_a_replica(
) {
    let c = TestCluster::start(3, |id| walrus_core::NodeConfig {
        retention_interval: Duration::from_millis(50),
        ..TestCluster::config(id, 1000)
    })
    .await;
    assert_eq!(c.send(2, "REGISTER logs RF 3").await, Response::Ok);
    put_acked(&c, 2, 0..4).await;
    // The leader dies before it could report anything: the failover
    // closes segment 1 from nodes 3 and 1.
    c.crash(2).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let state = c.metadata.committed();
    let seg = &state.topic(&topic("logs")).unwrap().segments[0];
    assert_eq!(seg.status, SegmentStatus::Sealed { count: 4 });
    assert_eq!(
        seg.bytes,
        Some(8),
        "m0..m3 are 2 bytes each: retention by bytes can count the segment"
    );
}
