//! PUTB (a batch stored whole, in order, or not at all) and idempotent
//! producers (a retried write stored once: after a lost answer, across a
//! restart of the segment leader, across rollover and failover).

use std::time::Duration;

use bytes::Bytes;
use walrus_core::metadata::SegmentStatus;
use walrus_core::protocol::Response;
use walrus_core::testing::TestCluster;
use walrus_core::TopicName;

fn logs() -> TopicName {
    TopicName::new("logs").unwrap()
}

/// A PUTB body of `entries`, with `PRODUCER <id> <seq>` when given.
fn putb(producer: Option<(&str, u64)>, entries: &[&str]) -> Bytes {
    let mut body = format!("PUTB logs {}", entries.len());
    if let Some((id, seq)) = producer {
        body.push_str(&format!(" PRODUCER {id} {seq}"));
    }
    body.push('\n');
    for e in entries {
        body.push_str(&format!("{}\n{e}\n", e.len()));
    }
    Bytes::from(body)
}

fn stored(n: u64, first: u64) -> Response {
    Response::Stored {
        n,
        first: Some(first),
    }
}

async fn read_all(c: &TestCluster, via: u64) -> Vec<Bytes> {
    c.drain(via, "logs", Duration::from_secs(30)).await
}

fn bytes(entries: &[&str]) -> Vec<Bytes> {
    entries.iter().map(|e| Bytes::from(e.to_string())).collect()
}

#[tokio::test(start_paused = true)]
async fn given_a_batch_that_does_not_fit_the_segment_when_put_should_go_whole_into_the_next_one() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 10)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    for i in 0..3 {
        assert_eq!(c.send(1, &format!("PUT logs s{i}")).await, Response::Ok);
    }
    // 3 + 9 > 10: segment 1 is sealed at 3 and the batch, sent through a
    // node that forwards it, is stored whole in segment 2.
    let batch = ["a b", "two\nlines", " ", "é", "5", "6", "7", "8", "9"];
    assert_eq!(c.send_bytes(3, putb(None, &batch)).await, stored(9, 3));
    let state = c.metadata.committed();
    let t = state.topic(&logs()).unwrap();
    assert_eq!(
        t.segment(1).unwrap().status,
        SegmentStatus::Sealed { count: 3 }
    );
    // A batch larger than a segment fills an empty one alone.
    let big: Vec<String> = (0..15).map(|i| format!("big{i}")).collect();
    let big: Vec<&str> = big.iter().map(String::as_str).collect();
    assert_eq!(c.send_bytes(2, putb(None, &big)).await, stored(15, 12));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let state = c.metadata.committed();
    let t = state.topic(&logs()).unwrap();
    assert_eq!(
        t.segment(2).unwrap().status,
        SegmentStatus::Sealed { count: 9 }
    );
    assert_eq!(
        t.segment(3).unwrap().status,
        SegmentStatus::Sealed { count: 15 }
    );
    let mut expected = bytes(&["s0", "s1", "s2"]);
    expected.extend(bytes(&batch));
    expected.extend(bytes(&big));
    assert_eq!(read_all(&c, 2).await, expected);
}

#[tokio::test(start_paused = true)]
async fn given_a_producer_whose_answer_was_lost_when_it_retries_should_store_once_and_answer_the_same(
) {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    // Node 2 leads the segment; node 3 forwards to it.
    assert_eq!(c.send(2, "REGISTER logs").await, Response::Ok);
    assert_eq!(
        c.send_bytes(3, putb(Some(("p1", 0)), &["zero"])).await,
        stored(1, 0)
    );
    c.net.lose_next_answers(2, 1);
    let Response::Err(e) = c.send_bytes(3, putb(Some(("p1", 1)), &["a", "b"])).await else {
        panic!("a lost answer cannot be an acknowledgement")
    };
    assert!(
        e.starts_with("outcome unknown: ") && e.contains("same producer id and sequence"),
        "{e}"
    );
    // The retry (through another node, too) is answered as the original
    // would have been, and nothing is stored twice.
    for via in [3, 1, 2] {
        assert_eq!(
            c.send_bytes(via, putb(Some(("p1", 1)), &["a", "b"])).await,
            stored(2, 1),
            "via node {via}"
        );
    }
    assert_eq!(
        c.send_bytes(1, putb(Some(("p1", 2)), &["c"])).await,
        stored(1, 3)
    );
    assert_eq!(read_all(&c, 1).await, bytes(&["zero", "a", "b", "c"]));
}

#[tokio::test(start_paused = true)]
async fn given_a_producer_when_its_sequence_skips_or_goes_back_should_refuse_with_the_next_one() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    let Response::Err(e) = c.send_bytes(2, putb(Some(("p1", 5)), &["x"])).await else {
        panic!("a new producer starts at 0")
    };
    assert!(
        e.starts_with("sequence gap: producer p1 has stored nothing on logs"),
        "{e}"
    );
    assert_eq!(
        c.send_bytes(2, putb(Some(("p1", 0)), &["x"])).await,
        stored(1, 0)
    );
    assert_eq!(
        c.send_bytes(2, putb(Some(("p1", 1)), &["y"])).await,
        stored(1, 1)
    );
    let Response::Err(e) = c.send_bytes(2, putb(Some(("p1", 3)), &["z"])).await else {
        panic!("a gap is refused")
    };
    assert!(
        e.contains("last stored sequence 1") && e.contains("send 2 next"),
        "{e}"
    );
    let Response::Err(e) = c.send_bytes(2, putb(Some(("p1", 0)), &["x"])).await else {
        panic!("an old sequence is refused")
    };
    assert!(e.contains("older than its last stored write"), "{e}");
    let Response::Err(e) = c.send_bytes(2, putb(Some(("p1", 1)), &["y", "y2"])).await else {
        panic!("a retry must be the same batch")
    };
    assert!(e.contains("a retry must send the same batch"), "{e}");
    // Producers are independent, and so are topics.
    assert_eq!(
        c.send_bytes(2, putb(Some(("p2", 0)), &["q"])).await,
        stored(1, 2)
    );
    assert_eq!(read_all(&c, 3).await, bytes(&["x", "y", "q"]));
}

#[tokio::test(start_paused = true)]
async fn given_a_stored_batch_when_the_leader_restarts_and_the_producer_retries_should_not_store_it_again(
) {
    let mut c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(2, "REGISTER logs").await, Response::Ok);
    assert_eq!(
        c.send_bytes(2, putb(Some(("p1", 0)), &["a"])).await,
        stored(1, 0)
    );
    assert_eq!(c.send(2, "PUT logs other").await, Response::Ok);
    assert_eq!(
        c.send_bytes(2, putb(Some(("p1", 1)), &["b", "c"])).await,
        stored(2, 2)
    );
    // The leader crashes and comes back before failover: it knows its
    // producers only from what it stored.
    c.crash(2).await;
    c.restart(2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for via in [1, 2] {
        assert_eq!(
            c.send_bytes(via, putb(Some(("p1", 1)), &["b", "c"])).await,
            stored(2, 2),
            "via node {via}"
        );
    }
    assert_eq!(
        c.send_bytes(1, putb(Some(("p1", 2)), &["d"])).await,
        stored(1, 4)
    );
    assert_eq!(read_all(&c, 3).await, bytes(&["a", "other", "b", "c", "d"]));
}

#[tokio::test(start_paused = true)]
async fn given_a_stored_batch_when_its_leader_fails_over_should_refuse_retries_until_its_count_is_known_then_answer_the_original(
) {
    let mut c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(2, "REGISTER logs").await, Response::Ok);
    assert_eq!(
        c.send_bytes(1, putb(Some(("p1", 0)), &["a", "b"])).await,
        stored(2, 0)
    );
    c.crash(2).await;
    // Failover opens segment 2 on another node; segment 1's count, and so
    // its producers, are pending: a producer's retry is refused, retryably,
    // rather than risk storing it twice. Writes without a producer go on.
    let mut moved = false;
    for _ in 0..100 {
        if c.send(1, "PUT logs plain").await == Response::Ok {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(moved, "writes resume after the failover");
    let Response::Err(e) = c.send_bytes(1, putb(Some(("p1", 0)), &["a", "b"])).await else {
        panic!("the producer's last write is unknown while segment 1 is pending")
    };
    assert!(
        e.starts_with(
            "unavailable: the producers of logs are not known yet: segment 1 is on node 2"
        ),
        "{e}"
    );
    c.restart(2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.send_bytes(3, putb(Some(("p1", 0)), &["a", "b"])).await,
        stored(2, 0),
        "the retry answers the original's offsets"
    );
    assert_eq!(
        c.send_bytes(3, putb(Some(("p1", 1)), &["c"])).await,
        stored(1, 3)
    );
    assert_eq!(read_all(&c, 1).await, bytes(&["a", "b", "plain", "c"]));
}

#[tokio::test(start_paused = true)]
async fn given_a_producer_when_the_topic_rolls_over_should_carry_its_last_write_to_the_next_leader()
{
    let c = TestCluster::start(3, |id| TestCluster::config(id, 4)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    assert_eq!(
        c.send_bytes(3, putb(Some(("p1", 0)), &["a", "b"])).await,
        stored(2, 0)
    );
    // Fill segment 1: the topic moves on to node 2.
    assert_eq!(c.send_bytes(3, putb(None, &["c", "d"])).await, stored(2, 2));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let state = c.metadata.committed();
    assert_eq!(state.topic(&logs()).unwrap().current().leader, 2);
    assert_eq!(
        c.send_bytes(3, putb(Some(("p1", 0)), &["a", "b"])).await,
        stored(2, 0),
        "the new leader knows the write from segment 1"
    );
    assert_eq!(
        c.send_bytes(3, putb(Some(("p1", 1)), &["e"])).await,
        stored(1, 4)
    );
    assert_eq!(read_all(&c, 1).await, bytes(&["a", "b", "c", "d", "e"]));
}

#[tokio::test(start_paused = true)]
async fn given_rf_3_when_the_segment_leader_dies_should_learn_its_producers_from_the_replicas_and_store_each_write_once(
) {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    // Node 2 leads segment 1, nodes 3 and 1 follow.
    assert_eq!(c.send(2, "REGISTER logs RF 3").await, Response::Ok);
    assert_eq!(
        c.send_bytes(2, putb(Some(("p1", 0)), &["a", "b"])).await,
        stored(2, 0)
    );
    assert_eq!(
        c.send_bytes(3, putb(Some(("p2", 0)), &["x"])).await,
        stored(1, 2)
    );
    // Node 3 misses p1's next write: only node 1 journals it.
    c.net.partition(2, 3);
    assert_eq!(
        c.send_bytes(2, putb(Some(("p1", 1)), &["c"])).await,
        stored(1, 3)
    );
    assert_eq!(c.send(2, "PUT logs d").await, Response::Ok);
    // The leader dies for good: the failover closes segment 1 from nodes 1
    // and 3, not pending, and records its producers from them.
    c.crash(2).await;
    c.net.heal();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let state = c.metadata.committed();
    let t = state.topic(&logs()).unwrap();
    assert_eq!(t.segments[0].status, SegmentStatus::Sealed { count: 5 });
    // Retries answer where the writes are, and the next writes go on.
    assert_eq!(
        c.send_bytes(3, putb(Some(("p1", 1)), &["c"])).await,
        stored(1, 3),
        "a retry of p1's last write, which node 3 had no mark of"
    );
    assert_eq!(
        c.send_bytes(1, putb(Some(("p2", 0)), &["x"])).await,
        stored(1, 2)
    );
    assert_eq!(
        c.send_bytes(1, putb(Some(("p1", 2)), &["e"])).await,
        stored(1, 5)
    );
    assert_eq!(
        c.send_bytes(3, putb(Some(("p2", 1)), &["y"])).await,
        stored(1, 6)
    );
    assert_eq!(
        read_all(&c, 3).await,
        bytes(&["a", "b", "x", "c", "d", "e", "y"])
    );
}
