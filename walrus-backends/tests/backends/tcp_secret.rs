//! The cluster secret on the node port: only a peer that proves the same
//! secret is served or used, in either direction; without a secret on
//! both sides, traffic flows as before.

use std::sync::Arc;

use walrus_backends::tcp::{TcpConfig, TcpTransport};
use walrus_core::{Error, NodeRequest, NodeResponse, Secret, Transport};

use crate::tcp_common::{consensus, echoed, quick_config, TestNode};

fn with_secret(secret: Option<&str>) -> TcpConfig {
    TcpConfig {
        cluster_secret: secret.map(Secret::new),
        ..quick_config()
    }
}

async fn call_from(caller: Option<&str>, server: &TestNode) -> walrus_core::Result<NodeResponse> {
    let transport: Arc<TcpTransport> = TcpTransport::new(with_secret(caller));
    transport.set_peer_address(2, &server.addr.to_string());
    let answer = transport.call(2, consensus("vote-for-me")).await;
    transport.shutdown();
    answer
}

#[tokio::test]
async fn given_the_same_secret_on_both_nodes_should_serve_calls() {
    let server = TestNode::start(with_secret(Some("cluster-secret-0123456789"))).await;
    let answer = call_from(Some("cluster-secret-0123456789"), &server).await;
    assert_eq!(answer.unwrap(), echoed("vote-for-me"));
    assert_eq!(server.handled(), 1);
}

#[tokio::test]
async fn given_a_caller_without_the_secret_should_be_refused_before_any_request_runs() {
    let server = TestNode::start(with_secret(Some("cluster-secret-0123456789"))).await;
    for caller in [None, Some("another-secret-0123456789")] {
        let answer = call_from(caller, &server).await;
        assert!(
            matches!(
                answer,
                Err(Error::Unreachable(2) | Error::NoAnswer(_) | Error::Unavailable(_))
            ),
            "{caller:?}: {answer:?}"
        );
        // Reads and forwards are refused the same way: no frame is read.
        let transport = TcpTransport::new(with_secret(caller));
        let read = transport
            .call_addr(&server.addr.to_string(), NodeRequest::Ping)
            .await;
        assert!(read.is_err(), "{caller:?}: {read:?}");
        transport.shutdown();
    }
    assert_eq!(server.handled(), 0, "no request of a refused peer ran");
}

#[tokio::test]
async fn given_a_caller_with_a_secret_and_a_server_without_should_not_use_it() {
    let server = TestNode::start(with_secret(None)).await;
    let answer = call_from(Some("cluster-secret-0123456789"), &server).await;
    assert!(matches!(answer, Err(Error::Unreachable(2))), "{answer:?}");
    assert_eq!(server.handled(), 0);
}

#[tokio::test]
async fn given_no_secret_anywhere_should_serve_calls_as_before() {
    let server = TestNode::start(with_secret(None)).await;
    assert_eq!(
        call_from(None, &server).await.unwrap(),
        echoed("vote-for-me")
    );
}

#[test]
fn given_a_config_with_a_secret_when_debug_printed_should_not_show_it() {
    let text = format!("{:?}", with_secret(Some("cluster-secret-0123456789")));
    assert!(text.contains("<redacted>"), "{text}");
    assert!(!text.contains("cluster-secret"), "{text}");
}
