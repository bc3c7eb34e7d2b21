//! The shared GET cursor: one per topic for the whole cluster, owned by the
//! consensus leader, so GETs through any node never repeat or skip.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use walrus_core::protocol::Response;
use walrus_core::testing::TestCluster;
use walrus_core::TopicName;

fn entry(s: String) -> Response {
    Response::Entry(Bytes::from(s))
}

#[tokio::test(start_paused = true)]
async fn given_gets_alternating_over_three_nodes_should_never_repeat_or_skip() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 7)).await;
    assert_eq!(c.send(2, "REGISTER logs").await, Response::Ok);
    for i in 0..100 {
        assert_eq!(
            c.send(i % 3 + 1, &format!("PUT logs e{i}")).await,
            Response::Ok
        );
    }
    for i in 0..100 {
        let via = (i % 3 + 1) as u64;
        assert_eq!(
            c.send(via, "GET logs").await,
            entry(format!("e{i}")),
            "GET #{i} via {via}"
        );
        if i == 49 {
            // Writes that arrive between reads are read after the older ones.
            assert_eq!(c.send(3, "PUT logs late").await, Response::Ok);
        }
    }
    assert_eq!(c.send(1, "GET logs").await, entry("late".into()));
    for n in 1..=3 {
        assert_eq!(c.send(n, "GET logs").await, Response::Empty);
    }
}

#[tokio::test(start_paused = true)]
async fn given_concurrent_gets_on_three_nodes_should_hand_out_each_entry_once() {
    let c = Arc::new(TestCluster::start(3, |id| TestCluster::config(id, 13)).await);
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    for i in 0..300 {
        assert_eq!(
            c.send(i % 3 + 1, &format!("PUT logs e{i}")).await,
            Response::Ok
        );
    }
    let mut readers = Vec::new();
    for via in 1..=3u64 {
        let c = c.clone();
        readers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                match c.send(via, "GET logs").await {
                    Response::Entry(e) => got.push(String::from_utf8(e.to_vec()).unwrap()),
                    Response::Empty => return got,
                    other => panic!("GET via {via}: {other:?}"),
                }
            }
        }));
    }
    let mut all = Vec::new();
    for r in readers {
        all.extend(r.await.unwrap());
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 300, "every entry delivered");
    assert_eq!(unique.len(), 300, "no entry delivered twice");
}

#[tokio::test(start_paused = true)]
async fn given_the_cursor_owner_changes_should_resume_from_the_persisted_cursor_without_skipping() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    for i in 0..200 {
        assert_eq!(c.send(2, &format!("PUT logs e{i}")).await, Response::Ok);
    }
    for i in 0..100 {
        assert_eq!(c.send(3, "GET logs").await, entry(format!("e{i}")));
    }
    // The owner persists in batches; wait for its timer, then move it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let persisted = c
        .metadata
        .committed()
        .topic(&TopicName::new("logs").unwrap())
        .unwrap()
        .cursor;
    assert_eq!(persisted, 100, "the cursor persists after a quiet period");
    for i in 100..110 {
        assert_eq!(c.send(3, "GET logs").await, entry(format!("e{i}")));
    }
    // The owner is deposed before persisting 100..110: those come again
    // (at-least-once), nothing is skipped.
    c.metadata.set_leader(Some(2));
    let rest = c.drain(1, "logs", Duration::from_secs(5)).await;
    let expected: Vec<Bytes> = (100..200).map(|i| Bytes::from(format!("e{i}"))).collect();
    assert_eq!(rest, expected);
}

/// GETs far outpace metadata commits. The cursor must still be persisted
/// by at most one proposal at a time: one per GET while a commit is pending
/// queued thousands of them in the benchmark, delaying lease renewals
/// behind them (writes refused for seconds) and holding their memory.
#[tokio::test(start_paused = true)]
async fn given_slow_commits_when_gets_stream_should_persist_the_cursor_in_few_proposals() {
    let c = Arc::new(TestCluster::start(3, |id| TestCluster::config(id, 1_000_000)).await);
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    for i in 0..2000 {
        assert_eq!(c.send(1, &format!("PUT logs e{i}")).await, Response::Ok);
    }
    c.metadata.set_commit_delay(Some(Duration::from_millis(20)));
    let start = tokio::time::Instant::now();
    let mut readers = Vec::new();
    for via in 1..=3u64 {
        let c = c.clone();
        readers.push(tokio::spawn(async move {
            let mut n = 0;
            while let Response::Entry(_) = c.send(via, "GET logs").await {
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for r in readers {
        total += r.await.unwrap();
    }
    assert_eq!(total, 2000);
    // Let the last persist land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let elapsed = start.elapsed();
    let persists = c
        .metadata
        .log()
        .iter()
        .filter(|cmd| matches!(cmd, walrus_core::MetadataCmd::AdvanceCursor { .. }))
        .count();
    // One proposal in flight at a time: at most one per commit delay.
    let bound = (elapsed.as_millis() / 20) as usize + 2;
    assert!(
        persists <= bound,
        "{persists} cursor proposals in {elapsed:?} (at most {bound} with one in flight)"
    );
    assert_eq!(
        c.metadata
            .committed()
            .topic(&TopicName::new("logs").unwrap())
            .unwrap()
            .cursor,
        2000,
        "the persisted cursor reaches the end"
    );
}
