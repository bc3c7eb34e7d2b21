//! A segment leader suspended in the middle of a write (laptop lid, host
//! sleep): tokio's clock stops, the cluster fails its topic over, and on
//! resume the node must not acknowledge the write on the strength of a
//! lease that, counted in real time, ran out long ago.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use walrus_core::metadata::MetadataCmd;
use walrus_core::protocol::{Request, Response};
use walrus_core::testing::{
    sim_info, FakeMetadataCluster, MemLogStore, SimNetwork, SuspendableTime, TestCluster,
};
use walrus_core::{BootClock, MetadataStore, Node, SystemClock, TopicName};

fn put(payload: &str) -> Request {
    Request::Put {
        topic: TopicName::new("logs").unwrap(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

#[tokio::test(start_paused = true)]
async fn given_a_leader_suspended_mid_write_when_it_resumes_should_not_acknowledge_it() {
    let metadata = FakeMetadataCluster::new();
    let net = SimNetwork::new(0);
    let (s1, s2) = (metadata.join(1, sim_info(1)), metadata.join(2, sim_info(2)));
    // A third voter, so that nodes 1 and 3 are a quorum without node 2.
    let _s3 = metadata.join(3, sim_info(3));
    let node1 = Node::new(
        TestCluster::config(1, 1000),
        s1.clone(),
        Arc::new(MemLogStore::new()),
        net.transport(1),
        Arc::new(SystemClock),
    );
    net.register(1, node1.clone());
    node1.start();
    // Node 2 decides its lease the way the real server does: on a clock
    // that counts time spent suspended.
    let time = SuspendableTime::new();
    let log2 = Arc::new(MemLogStore::new());
    let node2 = Node::new(
        TestCluster::config(2, 1000),
        s2,
        log2.clone(),
        net.transport(2),
        Arc::new(BootClock::with_source(time.clone())),
    );
    net.register(2, node2.clone());
    node2.start();
    assert!(node2.lease().wait_valid(Duration::from_secs(5)).await);
    assert_eq!(
        node2
            .handle(Request::Register(TopicName::new("logs").unwrap()))
            .await,
        Response::Ok
    );
    assert_eq!(node2.handle(put("before")).await, Response::Ok);

    // Node 2 starts a write and falls asleep for 10 s before it finishes.
    log2.delay_appends(Some(Duration::from_millis(50)));
    let during = {
        let node2 = node2.clone();
        tokio::spawn(async move { node2.handle(put("during")).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    net.isolate(2);
    metadata.cut_off(2);
    time.suspend(Duration::from_secs(10));
    // Meanwhile the cluster heard nothing from it and moved the topic on.
    s1.propose(MetadataCmd::Roll {
        topic: TopicName::new("logs").unwrap(),
        segment: 1,
        count: None,
        next_leader: 1,
    })
    .await
    .unwrap();

    // It wakes up; its append completes.
    let answer = during.await.unwrap();
    let Response::Err(text) = answer else {
        panic!("acknowledged after a 10 s suspend, into a segment failover closed: {answer:?}")
    };
    assert!(text.starts_with("outcome unknown: "), "{text}");

    // Once it is back, it reports what it wrote and nothing is lost.
    net.heal();
    metadata.reconnect(2);
    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match node1
            .handle(Request::Get(TopicName::new("logs").unwrap()))
            .await
        {
            Response::Entry(e) => read.push(e),
            Response::Empty => break,
            Response::Err(e) if tokio::time::Instant::now() < deadline => {
                assert!(e.starts_with("unavailable"), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("GET: {other:?}"),
        }
    }
    assert_eq!(read, vec![Bytes::from("before"), Bytes::from("during")]);
    node1.shutdown().await;
    node2.shutdown().await;
}
