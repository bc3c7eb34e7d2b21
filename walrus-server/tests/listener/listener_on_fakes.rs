//! The client listener and `CliClient` in front of real `Node` logic on
//! walrus-core's in-memory fakes: the protocol end to end, in one process.

use std::sync::Arc;

use walrus_client::CliClient;
use walrus_core::testing::TestCluster;
use walrus_server::listener::{ClientListener, ListenerConfig};

async fn cluster_with_listeners(n: u64, limit: u64) -> (TestCluster, Vec<ClientListener>) {
    let cluster = TestCluster::start(n, |id| TestCluster::config(id, limit)).await;
    let mut listeners = Vec::new();
    for id in 1..=n {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listeners.push(
            ClientListener::start(l, Arc::clone(cluster.node(id)), ListenerConfig::default())
                .unwrap(),
        );
    }
    (cluster, listeners)
}

#[tokio::test]
async fn given_the_seed_session_should_answer_as_the_seed_shows() {
    let (_cluster, ls) = cluster_with_listeners(1, 1000).await;
    let c = CliClient::new(ls[0].local_addr().to_string());
    assert_eq!(c.send_raw("REGISTER logs").await.unwrap(), "OK");
    assert_eq!(c.send_raw("PUT logs hello world").await.unwrap(), "OK");
    assert_eq!(
        c.send_raw("PUT logs {\"event\":\"user.login\",\"user_id\":123}")
            .await
            .unwrap(),
        "OK"
    );
    assert_eq!(c.send_raw("PUT").await.unwrap(), "ERR PUT requires a topic");
    assert_eq!(
        c.send_raw("PUT logs").await.unwrap(),
        "ERR PUT requires a payload"
    );
    assert_eq!(
        c.send_raw("PUT nonexistent hello").await.unwrap(),
        "ERR topic not found"
    );
    assert_eq!(c.get("logs").await.unwrap().as_deref(), Some("hello world"));
    let state = c.state("logs").await.unwrap();
    assert!(state.get("current_segment").is_some(), "{state}");
    c.ping().await.unwrap();
}

#[tokio::test]
async fn given_three_nodes_when_writing_through_each_should_read_everything_in_order() {
    let (_cluster, ls) = cluster_with_listeners(3, 10).await;
    let clients: Vec<CliClient> = ls
        .iter()
        .map(|l| CliClient::new(l.local_addr().to_string()))
        .collect();
    clients[0].register("t").await.unwrap();
    let payloads: Vec<String> = (0..45).map(|i| format!("entry {i}")).collect();
    for (i, p) in payloads.iter().enumerate() {
        clients[i % 3].put("t", p).await.unwrap();
    }
    let mut got = Vec::new();
    while let Some(e) = clients[1].get("t").await.unwrap() {
        got.push(e);
    }
    assert_eq!(got, payloads);
}
