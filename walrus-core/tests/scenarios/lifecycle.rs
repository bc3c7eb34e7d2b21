//! A node's life: built by hand on the fakes, joined, crashed, restarted.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use walrus_core::metadata::SegmentStatus;
use walrus_core::protocol::{Request, Response};
use walrus_core::testing::{sim_info, FakeMetadataCluster, MemLogStore, SimNetwork, TestCluster};
use walrus_core::{Node, NodeRequest, NodeResponse, SystemClock, TopicName, Transport};

fn put(topic: &str, payload: &str) -> Request {
    Request::Put {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

#[tokio::test(start_paused = true)]
async fn given_a_node_just_started_when_a_put_arrives_should_wait_for_its_first_lease() {
    let metadata = FakeMetadataCluster::new();
    let net = SimNetwork::new(0);
    let node = Node::new(
        TestCluster::config(1, 100),
        metadata.join(1, sim_info(1)),
        Arc::new(MemLogStore::new()),
        net.transport(1),
        Arc::new(SystemClock),
    );
    net.register(1, node.clone());
    node.start();
    let topic = TopicName::new("logs").unwrap();
    assert_eq!(
        node.handle(Request::Register(topic.clone())).await,
        Response::Ok
    );
    assert_eq!(node.handle(put("logs", "first")).await, Response::Ok);
    assert_eq!(
        node.handle(Request::Get(topic)).await,
        Response::Entry("first".into())
    );
    node.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn given_a_new_node_when_it_asks_to_join_should_become_a_voter_and_take_segments() {
    let c = TestCluster::start(2, |id| TestCluster::config(id, 2)).await;
    let joiner = c.net.transport(3);
    assert_eq!(
        joiner
            .call_addr(
                "sim:1",
                NodeRequest::Join {
                    node: 3,
                    info: sim_info(3)
                }
            )
            .await,
        Ok(NodeResponse::Done)
    );
    assert!(c.metadata.committed().nodes.contains_key(&3));
    let store = c.metadata.store(3);
    let node3 = Node::new(
        TestCluster::config(3, 2),
        store,
        Arc::new(MemLogStore::new()),
        joiner,
        Arc::new(SystemClock),
    );
    c.net.register(3, node3.clone());
    node3.start();
    assert!(node3.lease().wait_valid(Duration::from_secs(1)).await);
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    for i in 0..6 {
        assert_eq!(c.send(2, &format!("PUT logs {i}")).await, Response::Ok);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let state = c.metadata.committed();
    let leaders: Vec<u64> = state
        .topic(&TopicName::new("logs").unwrap())
        .unwrap()
        .segments
        .iter()
        .map(|s| s.leader)
        .collect();
    assert_eq!(
        leaders,
        vec![1, 2, 3, 1],
        "the joined node is in the round-robin"
    );
    assert_eq!(
        c.net.transport(1).call(3, NodeRequest::Ping).await,
        Ok(NodeResponse::Done)
    );
    // A node takes no consensus messages (the wiring routes them to the
    // store before the node): the error travels back.
    assert!(c
        .net
        .transport(1)
        .call(3, NodeRequest::Consensus(Bytes::new()))
        .await
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn given_a_crashed_segment_leader_when_it_restarts_should_report_its_count_and_unblock_readers(
) {
    let mut c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(2, "REGISTER logs").await, Response::Ok);
    for i in 0..5 {
        assert_eq!(c.send(1, &format!("PUT logs a{i}")).await, Response::Ok);
    }
    c.crash(2).await;
    // Failover opens segment 2 elsewhere after lease + margin.
    let mut resumed = false;
    for _ in 0..100 {
        if c.send(1, "PUT logs b").await == Response::Ok {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resumed, "writes resume after the failover");
    let topic = TopicName::new("logs").unwrap();
    assert_eq!(
        c.metadata.committed().topic(&topic).unwrap().segments[0].status,
        SegmentStatus::Pending
    );
    match c.send(3, "GET logs").await {
        Response::Err(e) => assert!(
            e.starts_with("unavailable: segment 1 of logs is on node 2, which is down")
                && e.contains("replace-storage 2"),
            "readers are told which node holds them up and what to do: {e}"
        ),
        other => panic!("GET behind a pending segment answered {other:?}"),
    }

    c.restart(2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.metadata.committed().topic(&topic).unwrap().segments[0].status,
        SegmentStatus::Sealed { count: 5 }
    );
    let read = c.drain(3, "logs", Duration::from_secs(5)).await;
    let expected: Vec<Bytes> = ["a0", "a1", "a2", "a3", "a4", "b"]
        .into_iter()
        .map(Bytes::from)
        .collect();
    assert_eq!(read, expected);
}
