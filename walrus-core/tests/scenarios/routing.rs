//! Routing and forwarding: any node answers any request, and every bad
//! request gets the exact error text of the protocol contract.

use std::time::Duration;

use bytes::Bytes;
use walrus_core::protocol::Response;
use walrus_core::testing::TestCluster;

fn ok_entry(s: &str) -> Response {
    Response::Entry(Bytes::copy_from_slice(s.as_bytes()))
}

fn err(s: &str) -> Response {
    Response::Err(s.into())
}

#[tokio::test(start_paused = true)]
async fn given_three_nodes_when_each_registers_puts_and_gets_should_route_every_request() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    // Topic t<n> is registered on node n, so each node leads one topic.
    for n in 1..=3 {
        assert_eq!(c.send(n, &format!("REGISTER t{n}")).await, Response::Ok);
    }
    for topic in 1..=3 {
        for via in 1..=3 {
            assert_eq!(
                c.send(via, &format!("PUT t{topic} from {via}")).await,
                Response::Ok,
                "PUT t{topic} via node {via}"
            );
        }
    }
    for topic in 1..=3u64 {
        let state = c.metadata.committed();
        let t = state
            .topic(&walrus_core::TopicName::new(format!("t{topic}")).unwrap())
            .unwrap();
        assert_eq!(
            t.current().leader,
            topic,
            "REGISTER on a voter makes it leader"
        );
        for via in 1..=3 {
            // GETs alternate over nodes, the shared cursor keeps PUT order.
            let get_via = (via % 3) + 1;
            assert_eq!(
                c.send(get_via, &format!("GET t{topic}")).await,
                ok_entry(&format!("from {via}"))
            );
        }
        assert_eq!(
            c.send(topic, &format!("GET t{topic}")).await,
            Response::Empty
        );
    }
    // The entries live only on the segment leader's log.
    for n in 1..=3u64 {
        let segments = c.logs[&n].append_history();
        assert_eq!(segments.len(), 3, "node {n} holds its own topic only");
    }
}

#[tokio::test(start_paused = true)]
async fn given_any_node_when_sending_bad_requests_should_answer_the_contract_texts() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    for n in 1..=3 {
        assert_eq!(c.send(n, "PUT").await, err("PUT requires a topic"));
        assert_eq!(c.send(n, "PUT logs").await, err("PUT requires a payload"));
        assert_eq!(c.send(n, "PUT logs ").await, err("PUT requires a payload"));
        assert_eq!(
            c.send(n, "PUT nonexistent hello").await,
            err("topic not found")
        );
        assert_eq!(
            c.send(n, "REGISTER").await,
            err("REGISTER requires a topic")
        );
        assert_eq!(c.send(n, "GET").await, err("GET requires a topic"));
        assert_eq!(c.send(n, "STATE").await, err("STATE requires a topic"));
        assert_eq!(c.send(n, "GET nonexistent").await, err("topic not found"));
        assert_eq!(c.send(n, "STATE nonexistent").await, err("topic not found"));
        assert_eq!(c.send(n, "FROB x").await, err("unknown command FROB"));
        assert_eq!(c.send(n, "PUT ../etc x").await, err("invalid topic name"));
        assert_eq!(c.send(n, "REGISTER a/b").await, err("invalid topic name"));
        assert_eq!(
            c.send_bytes(n, Bytes::from_static(b"PUT logs \xff")).await,
            err("invalid utf-8")
        );
        assert_eq!(c.send(n, "PING").await, Response::Pong);
        // Registering again is OK, on any node.
        assert_eq!(c.send(n, "REGISTER logs").await, Response::Ok);
    }
}

#[tokio::test(start_paused = true)]
async fn given_a_topic_when_asking_state_metrics_and_topics_should_answer_json() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 2)).await;
    assert_eq!(c.send(2, "REGISTER logs").await, Response::Ok);
    assert_eq!(c.send(1, "REGISTER audit").await, Response::Ok);
    for i in 0..3 {
        assert_eq!(c.send(3, &format!("PUT logs m{i}")).await, Response::Ok);
    }
    // The rollover commits in the background; STATE shows it shortly.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for n in 1..=3 {
        let Response::Json(state) = c.send(n, "STATE logs").await else {
            panic!("STATE is JSON")
        };
        let j: serde_json::Value = serde_json::from_str(&state).unwrap();
        assert_eq!(j["current_segment"], 2);
        assert_eq!(j["leader_node"], 3);
        assert_eq!(j["last_sealed_entry_offset"], 2);
        assert_eq!(j["sealed_segments"]["1"], 2);
        assert_eq!(j["segment_leaders"]["1"], 2);

        let Response::Json(metrics) = c.send(n, "METRICS").await else {
            panic!("METRICS is JSON")
        };
        let m: walrus_core::NodeMetrics = serde_json::from_str(&metrics).unwrap();
        assert_eq!(m.node, n);
        assert_eq!(m.consensus.node, n);
        assert_eq!(m.consensus.leader, Some(1));
        assert_eq!(
            m.consensus.membership.configs,
            vec![std::collections::BTreeSet::from([1, 2, 3])]
        );
        assert_eq!(m.topics, 2);

        assert_eq!(
            c.send(n, "TOPICS").await,
            Response::Json(r#"["audit","logs"]"#.into())
        );
    }
}

#[tokio::test(start_paused = true)]
async fn given_a_put_through_a_node_cut_off_from_the_leader_should_answer_a_retryable_error() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1000)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    c.net.partition(2, 1);
    let Response::Err(e) = c.send(2, "PUT logs x").await else {
        panic!("a PUT that cannot reach the leader must fail")
    };
    assert_eq!(e, "unavailable: node 1 is unreachable, retry");
    c.heal();
    assert_eq!(c.send(2, "PUT logs x").await, Response::Ok);
    assert_eq!(c.send(3, "GET logs").await, ok_entry("x"));
}

#[tokio::test(start_paused = true)]
async fn given_lagging_followers_when_a_topic_was_just_registered_elsewhere_should_still_find_it() {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 3)).await;
    c.metadata.set_lag(Some(Duration::from_millis(30)));
    assert_eq!(c.send(1, "REGISTER fresh").await, Response::Ok);
    // Node 2 has not applied the REGISTER yet: it catches up first.
    assert_eq!(c.send(2, "PUT fresh a").await, Response::Ok);
    assert_eq!(c.send(3, "REGISTER other").await, Response::Ok);
    assert_eq!(c.send(2, "STATE other").await, {
        let state = c.metadata.committed();
        Response::Json(
            state
                .topic_json(&walrus_core::TopicName::new("other").unwrap())
                .unwrap()
                .to_string(),
        )
    });
    for i in 0..10 {
        assert_eq!(
            c.send(i % 3 + 1, &format!("PUT fresh b{i}")).await,
            Response::Ok
        );
    }
    assert_eq!(c.send(3, "GET fresh").await, ok_entry("a"));
    for i in 0..10 {
        assert_eq!(
            c.send(i % 3 + 1, "GET fresh").await,
            ok_entry(&format!("b{i}"))
        );
    }
    assert_eq!(c.send(2, "GET nonexistent").await, err("topic not found"));
}
