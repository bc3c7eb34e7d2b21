//! REMOVE-NODE over the wire, in front of real `Node` logic on core's
//! fakes: each refusal is an `ERR` that says why and what to do, and
//! changes nothing.

use std::sync::Arc;

use walrus_client::CliClient;
use walrus_core::testing::TestCluster;
use walrus_server::listener::{ClientListener, ListenerConfig};

#[tokio::test]
async fn given_remove_node_requests_that_are_malformed_or_would_lose_data_should_answer_err() {
    let cluster = TestCluster::start(3, |id| TestCluster::config(id, 3)).await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener =
        ClientListener::start(l, Arc::clone(cluster.node(3)), ListenerConfig::default()).unwrap();
    let c = CliClient::new(listener.local_addr().to_string());
    // An unreplicated topic led by node 2: its segment 1 is only there.
    assert_eq!(c.send_raw("REGISTER logs").await.unwrap(), "OK");
    let state = cluster.metadata.committed();
    let leader = state
        .topic(&walrus_core::TopicName::new("logs").unwrap())
        .unwrap()
        .current()
        .leader;
    for i in 0..3 {
        assert_eq!(c.send_raw(&format!("PUT logs m{i}")).await.unwrap(), "OK");
    }
    let answers = [
        (
            "REMOVE-NODE",
            "ERR REMOVE-NODE requires a node id".to_string(),
        ),
        (
            "REMOVE-NODE two",
            "ERR invalid node id \"two\": REMOVE-NODE requires a node id".to_string(),
        ),
        (
            "REMOVE-NODE 2 3",
            "ERR REMOVE-NODE requires a node id".to_string(),
        ),
    ];
    for (request, expected) in answers {
        assert_eq!(c.send_raw(request).await.unwrap(), expected, "{request}");
    }
    let not_member = c.send_raw("REMOVE-NODE 9").await.unwrap();
    assert!(
        not_member.starts_with("ERR refused: node 9 is not a member of this cluster"),
        "{not_member}"
    );
    let consensus_leader = c.send_raw("REMOVE-NODE 1").await.unwrap();
    assert!(
        consensus_leader.starts_with("ERR refused: node 1 is the consensus leader")
            && consensus_leader.contains("stop it first"),
        "{consensus_leader}"
    );
    // Wait for segment 1 to be sealed and the next one opened elsewhere.
    let mut sealed = false;
    for _ in 0..100 {
        let state = cluster.metadata.committed();
        let t = state
            .topic(&walrus_core::TopicName::new("logs").unwrap())
            .unwrap();
        if t.segments.len() > 1 && t.current().leader != leader {
            sealed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(sealed, "segment 1 of logs did not roll");
    let only_copy = c.send_raw(&format!("REMOVE-NODE {leader}")).await.unwrap();
    assert!(
        only_copy.starts_with(&format!(
            "ERR refused: removing node {leader} would lose data: the only copy of segment \
             logs:1 (3 entries) is on node {leader}"
        )) && only_copy.contains("replication factor 1"),
        "{only_copy}"
    );
    assert!(cluster.metadata.committed().removed.is_empty());
    cluster.shutdown().await;
}
