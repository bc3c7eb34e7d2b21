//! A write whose fate this node cannot know is answered "outcome unknown",
//! never an error that invites a retry: the leader may have stored it, and
//! a client that retried would store it twice.

use std::time::Duration;

use bytes::Bytes;
use walrus_core::protocol::Response;
use walrus_core::testing::TestCluster;
use walrus_core::TopicName;

fn logs() -> TopicName {
    TopicName::new("logs").unwrap()
}

async fn read_all(c: &TestCluster, via: u64) -> Vec<Bytes> {
    c.drain(via, "logs", Duration::from_secs(30)).await
}

#[tokio::test(start_paused = true)]
async fn given_a_forwarded_put_stored_by_the_leader_when_its_answer_is_lost_should_say_outcome_unknown_never_retryable(
) {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    // Node 1 leads the segment; node 2 forwards to it. The answer is lost
    // after node 1 stored the entry: node 2 is cut off while node 1 writes.
    c.logs[&1].delay_appends(Some(Duration::from_millis(50)));
    let put = {
        let node = c.node(2).clone();
        tokio::spawn(async move { node.put_batch(&logs(), vec![Bytes::from("x")]).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    c.net.partition(1, 2);
    let (acked, error) = put.await.unwrap();
    let error = error.expect("no answer came: the PUT cannot be acknowledged");
    assert_eq!(acked, 0);
    assert!(
        error.is_outcome_unknown() && !error.is_retryable(),
        "the leader stored it, so a retry would store it twice; got `{error}`"
    );
    assert!(
        error.to_string().starts_with("outcome unknown: ")
            && error.to_string().contains("read the topic"),
        "{error}"
    );

    // The same on the wire, for a client.
    let put = {
        let c2 = c.node(2).clone();
        tokio::spawn(async move {
            c2.handle(walrus_core::protocol::Request::Put {
                topic: logs(),
                payload: Bytes::from("y"),
            })
            .await
        })
    };
    c.net.heal();
    tokio::time::sleep(Duration::from_millis(10)).await;
    c.net.partition(1, 2);
    let Response::Err(text) = put.await.unwrap() else {
        panic!("an unanswered forward cannot be acknowledged")
    };
    assert!(text.starts_with("outcome unknown: "), "{text}");

    // Both were stored: "unknown" was the honest answer.
    c.net.heal();
    c.logs[&1].delay_appends(None);
    assert_eq!(
        read_all(&c, 3).await,
        vec![Bytes::from("x"), Bytes::from("y")]
    );
}

/// The same, with the network losing the answer after delivering the
/// request (not a partition): the segment leader stored the entry, the
/// forwarding node cannot know it.
#[tokio::test(start_paused = true)]
async fn given_a_forwarded_put_whose_answer_the_network_loses_should_say_outcome_unknown_and_be_read_once(
) {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    // Node 3 leads the segment: nothing but forwarded appends goes to it
    // (renewals and GETs go to node 1, the consensus leader).
    assert_eq!(c.send(3, "REGISTER logs").await, Response::Ok);
    c.net.lose_next_answers(3, 1);
    let Response::Err(text) = c.send(2, "PUT logs lost-answer").await else {
        panic!("a PUT whose answer was lost cannot be acknowledged")
    };
    assert!(text.starts_with("outcome unknown: "), "{text}");
    assert_eq!(c.send(2, "PUT logs next").await, Response::Ok);
    assert_eq!(
        read_all(&c, 1).await,
        vec![Bytes::from("lost-answer"), Bytes::from("next")],
        "stored once, as the leader did; never resent"
    );
}

#[tokio::test(start_paused = true)]
async fn given_a_local_append_that_outlives_the_lease_should_say_outcome_unknown_never_retryable() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(2, "REGISTER logs").await, Response::Ok);
    let cfg = TestCluster::config(2, 1000);
    // Node 2 leads the segment. Its append takes longer than the lease and
    // the grace after it, and meanwhile it is cut off, so no renewal lands.
    c.logs[&2].delay_appends(Some(cfg.lease * 2 + cfg.failover_margin));
    let put = {
        let node = c.node(2).clone();
        tokio::spawn(async move { node.put_batch(&logs(), vec![Bytes::from("late")]).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    c.isolate(2);
    let (acked, error) = put.await.unwrap();
    let error = error.expect("written past the lease: not acknowledged");
    assert_eq!(acked, 0);
    assert!(
        error.is_outcome_unknown() && !error.is_retryable(),
        "the entry is stored, so a retry would store it twice; got `{error}`"
    );

    // After healing, node 2 reports its count and the entry is read.
    c.heal();
    c.logs[&2].delay_appends(None);
    assert_eq!(read_all(&c, 1).await, vec![Bytes::from("late")]);
}
