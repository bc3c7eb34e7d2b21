//! Reads by offset (READ, OFFSETS, TOPICS COUNTS): every entry keeps its
//! offset across rollovers, failover and restarts; a long-polling READ is
//! woken by the PUT it waits for; no read moves the shared GET cursor.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use walrus_core::protocol::Response;
use walrus_core::testing::TestCluster;
use walrus_core::NodeId;

/// A payload with the bytes a line-based encoding would trip on.
fn payload(i: usize) -> String {
    format!("entry {i}  with spaces\nand a newline\n")
}

fn entries(pairs: &[(u64, String)]) -> Vec<(u64, Bytes)> {
    pairs
        .iter()
        .map(|(o, p)| (*o, Bytes::from(p.clone())))
        .collect()
}

/// Reads `topic` via `via` from `from` to its end, `batch` entries per
/// READ, checking that each answer's `next` follows its entries.
async fn read_to_end(
    c: &TestCluster,
    via: NodeId,
    topic: &str,
    from: u64,
    batch: u32,
) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        match c.send(via, &format!("READ {topic} {next} {batch}")).await {
            Response::Entries { entries, next: n } if entries.is_empty() => {
                assert_eq!(n, next, "an empty answer says to ask at the same offset");
                return out;
            }
            Response::Entries { entries, next: n } => {
                assert!(entries.len() <= batch as usize);
                assert_eq!(entries[0].0, next, "the answer starts at the offset asked");
                assert_eq!(n, next + entries.len() as u64);
                next = n;
                out.extend(entries);
            }
            other => panic!("READ {topic} {next} via node {via}: {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn given_segments_of_seven_when_reading_by_offset_through_each_node_should_give_every_entry_at_its_offset(
) {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 7)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    let written: Vec<(u64, String)> = (0..50).map(|i| (i as u64, payload(i))).collect();
    for (i, (_, p)) in written.iter().enumerate().take(10) {
        let via = i as u64 % 3 + 1;
        assert_eq!(c.send(via, &format!("PUT logs {p}")).await, Response::Ok);
    }
    let early = read_to_end(&c, 2, "logs", 0, 4).await;
    assert_eq!(early, entries(&written[..10]));
    for (i, (_, p)) in written.iter().enumerate().skip(10) {
        let via = i as u64 % 3 + 1;
        assert_eq!(c.send(via, &format!("PUT logs {p}")).await, Response::Ok);
    }
    // Seven segments rolled over since: the first ten kept their offsets.
    for via in 1..=3 {
        assert_eq!(
            read_to_end(&c, via, "logs", 0, 4).await,
            entries(&written),
            "via node {via}"
        );
        assert_eq!(
            read_to_end(&c, via, "logs", 23, 100).await,
            entries(&written[23..]),
            "from the middle of a segment, via node {via}"
        );
    }
    let Response::Json(offsets) = c.send(3, "OFFSETS logs").await else {
        panic!("OFFSETS answers JSON");
    };
    let offsets: serde_json::Value = serde_json::from_str(&offsets).unwrap();
    assert_eq!(
        (offsets["first"].as_u64(), offsets["end"].as_u64()),
        (Some(0), Some(50))
    );
    let Response::Json(counts) = c.send(2, "TOPICS COUNTS").await else {
        panic!("TOPICS COUNTS answers JSON");
    };
    let counts: serde_json::Value = serde_json::from_str(&counts).unwrap();
    assert_eq!(
        counts,
        serde_json::json!([{"topic": "logs", "first": 0, "end": 50}])
    );
    // The end: empty there, an error past it.
    assert_eq!(
        c.send(1, "READ logs 50").await,
        Response::Entries {
            entries: vec![],
            next: 50
        }
    );
    match c.send(1, "READ logs 51").await {
        Response::Err(e) => assert!(
            e.starts_with("offset 51 is past the end of logs (50)"),
            "{e}"
        ),
        other => panic!("READ past the end answered {other:?}"),
    }
    // None of it moved the shared cursor.
    assert_eq!(
        c.send(3, "GET logs").await,
        Response::Entry(Bytes::from(payload(0)))
    );
}

#[tokio::test(start_paused = true)]
async fn given_a_crashed_segment_leader_when_failover_and_its_restart_follow_should_keep_every_offset(
) {
    let mut c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(2, "REGISTER logs").await, Response::Ok);
    let mut written: Vec<(u64, String)> = Vec::new();
    for i in 0..5 {
        assert_eq!(
            c.send(1, &format!("PUT logs {}", payload(i))).await,
            Response::Ok
        );
        written.push((i as u64, payload(i)));
    }
    assert_eq!(read_to_end(&c, 3, "logs", 0, 2).await, entries(&written));
    c.crash(2).await;
    // Failover opens segment 2 elsewhere after lease + margin.
    let mut resumed = false;
    for _ in 0..100 {
        if c.send(1, &format!("PUT logs {}", payload(5))).await == Response::Ok {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resumed, "writes resume after the failover");
    // Segment 1's count is pending on a node that is down: readers wait at
    // it, told why, and never skip it.
    for offset in [0, 5] {
        match c.send(3, &format!("READ logs {offset}")).await {
            Response::Err(e) => assert!(
                e.starts_with("unavailable: segment 1 of logs is on node 2, which is down"),
                "{e}"
            ),
            other => panic!("READ {offset} behind a pending segment answered {other:?}"),
        }
    }
    c.restart(2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    written.push((5, payload(5)));
    for via in 1..=3 {
        assert_eq!(
            read_to_end(&c, via, "logs", 0, 3).await,
            entries(&written),
            "the entries before the failover kept their offsets, via node {via}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn given_a_reader_waiting_at_the_end_when_a_put_arrives_should_answer_with_it_at_once() {
    let c = Arc::new(TestCluster::start(3, |id| TestCluster::config(id, 3)).await);
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    // Offset 0 is in segment 1 on node 1; offset 3 in segment 2 on node 2
    // once offsets 1 and 2 fill segment 1. Readers wait through node 3.
    for (offset, earlier) in [(0u64, 0), (3, 2)] {
        for i in 0..earlier {
            assert_eq!(c.send(1, &format!("PUT logs e{i}")).await, Response::Ok);
        }
        let reader = {
            let c = c.clone();
            tokio::spawn(async move {
                let answer = c.send(3, &format!("READ logs {offset} WAIT 10000")).await;
                (answer, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !reader.is_finished(),
            "the reader waits while there is nothing"
        );
        let put_at = Instant::now();
        assert_eq!(
            c.send(2, &format!("PUT logs woke {offset}")).await,
            Response::Ok
        );
        let (answer, answered_at) = reader.await.unwrap();
        assert_eq!(
            answer,
            Response::Entries {
                entries: vec![(offset, Bytes::from(format!("woke {offset}")))],
                next: offset + 1
            }
        );
        assert!(
            answered_at - put_at < Duration::from_millis(50),
            "woken by the append, not by a timer: {:?} after the PUT",
            answered_at - put_at
        );
    }
}

#[tokio::test(start_paused = true)]
async fn given_a_read_wait_when_nothing_arrives_should_answer_empty_once_the_wait_is_over() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 100)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    let empty = Response::Entries {
        entries: vec![],
        next: 0,
    };
    let start = Instant::now();
    assert_eq!(c.send(2, "READ logs 0").await, empty);
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "no WAIT: at once"
    );
    let start = Instant::now();
    // Longer than one wait at the holder (2 s): the reader asks again.
    assert_eq!(c.send(2, "READ logs 0 WAIT 4500").await, empty);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(4500) && waited < Duration::from_millis(4700),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn given_waiting_reads_when_their_node_stops_should_answer_at_once() {
    let c = Arc::new(TestCluster::start(3, |id| TestCluster::config(id, 100)).await);
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    // Through node 2 the wait is at node 1, which holds the segment;
    // through node 1 it is local.
    for via in [2, 1] {
        let reader = {
            let c = c.clone();
            tokio::spawn(async move {
                let answer = c.send(via, "READ logs 0 WAIT 10000").await;
                (answer, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !reader.is_finished(),
            "the reader waits while there is nothing"
        );
        let stopped_at = Instant::now();
        c.node(via).stop_waiting();
        let (answer, answered_at) = reader.await.unwrap();
        assert_eq!(
            answer,
            Response::Entries {
                entries: vec![],
                next: 0
            }
        );
        assert!(
            answered_at - stopped_at < Duration::from_millis(50),
            "a stopping node does not wait out the READ's WAIT (via node {via})"
        );
    }
}
