//! TcpTransport on loopback: round trips, multiplexing, errors that travel,
//! timeouts and cancellation that leave the connection usable, dead and
//! restarted peers.

use crate::tcp_common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tcp_common::*;
use tokio::net::TcpListener;
use walrus_backends::tcp::{TcpConfig, TcpTransport};
use walrus_core::{Error, NodeRequest, NodeResponse, TopicName, Transport};

/// A caller transport that knows `server` as node 2.
fn caller_for(server: &TestNode, config: TcpConfig) -> Arc<TcpTransport> {
    let caller = TcpTransport::new(config);
    caller.set_peer_address(2, &server.addr.to_string());
    caller
}

#[tokio::test]
async fn given_a_served_node_when_pinged_should_answer_done() {
    let server = TestNode::start(quick_config()).await;
    let caller = caller_for(&server, quick_config());

    let answer = caller.call(2, NodeRequest::Ping).await;

    assert_eq!(answer, Ok(NodeResponse::Done));
    assert_eq!(server.handled(), 1);
}

#[tokio::test]
async fn given_payloads_small_and_large_when_echoed_should_come_back_intact() {
    let server = TestNode::start(quick_config()).await;
    let caller = caller_for(&server, quick_config());

    for size in [0usize, 1, 1000, 100_000, 4 * 1024 * 1024] {
        let payload: Bytes = (0..size)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let answer = caller
            .call(2, NodeRequest::Consensus(payload.clone()))
            .await;
        assert_eq!(answer, Ok(NodeResponse::Consensus(payload)), "size {size}");
    }
}

#[tokio::test]
async fn given_every_request_kind_when_sent_should_arrive_unchanged() {
    let server = TestNode::start(quick_config()).await;
    let caller = caller_for(&server, quick_config());
    let topic = TopicName::new("orders").unwrap();

    // The scripted handler answers Get with TopicNotFound and the others
    // (after decoding them) with Unavailable("scripted").
    assert_eq!(
        caller.call(2, NodeRequest::Get { topic }).await,
        Err(Error::TopicNotFound)
    );
    assert_eq!(
        caller.call(2, NodeRequest::RenewLease { node: 9 }).await,
        Err(Error::Unavailable("scripted".into()))
    );
}

#[tokio::test]
async fn given_a_handler_error_when_called_should_arrive_as_the_same_error() {
    let server = TestNode::start(quick_config()).await;
    let caller = caller_for(&server, quick_config());
    let topic = TopicName::new("missing").unwrap();

    let answer = caller.call(2, NodeRequest::Get { topic }).await;

    assert_eq!(answer, Err(Error::TopicNotFound));
}

#[tokio::test]
async fn given_a_handler_that_panics_when_called_should_get_internal_and_keep_the_connection() {
    let server = TestNode::start(quick_config()).await;
    let proxy = CountingProxy::start(server.addr).await;
    let caller = TcpTransport::new(quick_config());
    caller.set_peer_address(2, &proxy.addr.to_string());

    let answer = caller.call(2, consensus("panic")).await;
    let next = caller.call(2, consensus("still here")).await;

    assert!(matches!(answer, Err(Error::Internal(_))), "{answer:?}");
    assert_eq!(next, Ok(echoed("still here")));
    assert_eq!(proxy.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_many_concurrent_callers_when_calling_one_peer_should_share_one_connection() {
    let server = TestNode::start(quick_config()).await;
    let proxy = CountingProxy::start(server.addr).await;
    let caller = TcpTransport::new(quick_config());
    caller.set_peer_address(2, &proxy.addr.to_string());

    // Each request sleeps a little on the server, so they overlap; answers
    // finish out of order and must still reach their own caller.
    let calls = (0..400).map(|i| {
        let caller = caller.clone();
        tokio::spawn(async move {
            let text = format!("sleep:{}:{i}", (i * 7) % 50);
            (text.clone(), caller.call(2, consensus(&text)).await)
        })
    });
    for call in futures::future::join_all(calls).await {
        let (text, answer) = call.unwrap();
        assert_eq!(answer, Ok(echoed(&text)));
    }
    assert_eq!(server.handled(), 400);
    assert_eq!(proxy.connections(), 1, "requests must share one connection");
}

#[tokio::test]
async fn given_a_request_that_times_out_when_the_next_is_sent_should_get_its_own_answer() {
    let server = TestNode::start(quick_config()).await;
    let proxy = CountingProxy::start(server.addr).await;
    let caller = TcpTransport::new(TcpConfig {
        request_timeout: Duration::from_millis(400),
        ..quick_config()
    });
    caller.set_peer_address(2, &proxy.addr.to_string());

    let slow = caller.call(2, consensus("sleep:500:slow")).await;
    // It was sent: the peer may have handled it, so not "retry".
    assert!(matches!(slow, Err(Error::NoAnswer(_))), "{slow:?}");
    let slow = slow.unwrap_err();
    assert!(slow.is_outcome_unknown() && !slow.is_retryable(), "{slow}");

    // Pending while the late answer to the slow request arrives...
    let next = caller.call(2, consensus("sleep:200:next")).await;
    assert_eq!(next, Ok(echoed("sleep:200:next")));
    // ...and sent after it.
    let after = caller.call(2, consensus("after")).await;

    assert_eq!(after, Ok(echoed("after")));
    assert_eq!(
        proxy.connections(),
        1,
        "a timeout must not cost the connection"
    );
}

#[tokio::test]
async fn given_a_cancelled_call_when_the_next_is_sent_should_get_its_own_answer() {
    let server = TestNode::start(quick_config()).await;
    let proxy = CountingProxy::start(server.addr).await;
    let caller = TcpTransport::new(quick_config());
    caller.set_peer_address(2, &proxy.addr.to_string());

    // openraft drops RPC futures that exceed its own timeout.
    let dropped = tokio::time::timeout(
        Duration::from_millis(50),
        caller.call(2, consensus("sleep:200:x")),
    )
    .await;
    assert!(dropped.is_err(), "the outer timeout should have fired");

    let next = caller.call(2, consensus("sleep:250:y")).await;

    assert_eq!(next, Ok(echoed("sleep:250:y")));
    assert_eq!(proxy.connections(), 1);
}

#[tokio::test]
async fn given_an_unknown_node_when_called_should_be_unreachable() {
    let caller = TcpTransport::new(quick_config());

    let answer = caller.call(7, NodeRequest::Ping).await;

    assert_eq!(answer, Err(Error::Unreachable(7)));
}

#[tokio::test]
async fn given_a_closed_port_when_called_should_be_unreachable_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = quick_config();
    let caller = TcpTransport::new(config.clone());
    caller.set_peer_address(3, &addr.to_string());

    let answer = tokio::time::timeout(
        config.connect_timeout * 4,
        caller.call(3, NodeRequest::Ping),
    )
    .await
    .expect("a refused dial must not hang");

    assert_eq!(answer, Err(Error::Unreachable(3)));
}

#[tokio::test]
async fn given_a_peer_that_never_accepts_when_called_should_be_unreachable_after_the_connect_timeout(
) {
    // A listener with a full accept queue: further SYNs are dropped, so a
    // dial hangs until the caller's connect timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let dial = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(100), dial).await {
            fillers.push(stream);
        }
    }
    let config = quick_config();
    let caller = TcpTransport::new(config.clone());
    caller.set_peer_address(3, &addr.to_string());

    let answer = tokio::time::timeout(
        config.connect_timeout + config.request_timeout + Duration::from_secs(1),
        caller.call(3, NodeRequest::Ping),
    )
    .await
    .expect("a dial to a silent peer must not hang");

    // With the accept queue full the dial times out (Unreachable); if the
    // kernel still completes the handshake, the request is sent and gets no
    // answer instead.
    assert!(
        matches!(answer, Err(Error::Unreachable(3)) | Err(Error::NoAnswer(_))),
        "{answer:?}"
    );
    drop(listener);
}

#[tokio::test]
async fn given_a_peer_that_restarts_when_called_again_should_reconnect() {
    let first = TestNode::start(quick_config()).await;
    let addr = first.addr;
    let caller = caller_for(&first, quick_config());
    assert_eq!(
        caller.call(2, NodeRequest::Ping).await,
        Ok(NodeResponse::Done)
    );

    drop(first); // shuts the peer down and closes its connections
                 // Refused on a fresh dial (not sent), or sent on the old connection
                 // just before its end was noticed (no answer).
    let down = caller.call(2, NodeRequest::Ping).await;
    assert!(
        down.as_ref()
            .is_err_and(|e| e.is_retryable() || e.is_outcome_unknown()),
        "{down:?}"
    );

    let second = TestNode::start_on(TcpListener::bind(addr).await.unwrap(), quick_config());
    let reconnected = eventually(Duration::from_secs(5), || async {
        caller.call(2, NodeRequest::Ping).await == Ok(NodeResponse::Done)
    })
    .await;

    assert!(
        reconnected,
        "the caller should reconnect to the restarted peer"
    );
    assert!(second.handled() >= 1);
}

#[tokio::test]
async fn given_a_peer_that_dies_mid_request_when_waiting_should_fail_fast_with_no_answer() {
    let server = TestNode::start(quick_config()).await;
    let caller = TcpTransport::new(TcpConfig {
        request_timeout: Duration::from_secs(30),
        ..quick_config()
    });
    caller.set_peer_address(2, &server.addr.to_string());

    let pending = {
        let caller = caller.clone();
        tokio::spawn(async move { caller.call(2, consensus("sleep:5000:never")).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.transport.shutdown();

    let answer = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("a lost connection must fail its callers, not leave them waiting")
        .unwrap();
    // The peer was handling it when it died: the outcome is unknown.
    assert!(matches!(answer, Err(Error::NoAnswer(_))), "{answer:?}");
}

#[tokio::test]
async fn given_a_request_over_the_size_limit_when_sent_should_be_refused_and_the_connection_kept() {
    let server = TestNode::start(quick_config()).await;
    let proxy = CountingProxy::start(server.addr).await;
    let caller = TcpTransport::new(TcpConfig {
        max_message_bytes: 64 * 1024,
        ..quick_config()
    });
    caller.set_peer_address(2, &proxy.addr.to_string());
    assert_eq!(
        caller.call(2, NodeRequest::Ping).await,
        Ok(NodeResponse::Done)
    );

    let huge = NodeRequest::Consensus(Bytes::from(vec![1u8; 100 * 1024]));
    let answer = caller.call(2, huge).await;

    assert!(matches!(answer, Err(Error::BadRequest(_))), "{answer:?}");
    assert_eq!(
        caller.call(2, NodeRequest::Ping).await,
        Ok(NodeResponse::Done)
    );
    assert_eq!(proxy.connections(), 1);
}

#[tokio::test]
async fn given_an_answer_over_the_size_limit_when_called_should_get_an_error_not_a_timeout() {
    let server = TestNode::start(TcpConfig {
        max_message_bytes: 64 * 1024,
        ..quick_config()
    })
    .await;
    let caller = caller_for(&server, quick_config());

    let answer = caller.call(2, consensus("big:100000")).await;

    assert!(matches!(answer, Err(Error::BadRequest(_))), "{answer:?}");
    assert_eq!(
        caller.call(2, NodeRequest::Ping).await,
        Ok(NodeResponse::Done)
    );
}

#[tokio::test]
async fn given_an_address_when_called_by_address_should_answer() {
    let server = TestNode::start(quick_config()).await;
    let caller = TcpTransport::new(quick_config());

    let answer = caller
        .call_addr(&server.addr.to_string(), NodeRequest::Ping)
        .await;

    assert_eq!(answer, Ok(NodeResponse::Done));
}

#[tokio::test]
async fn given_a_bad_address_when_called_by_address_should_be_a_retryable_error() {
    let caller = TcpTransport::new(quick_config());

    let answer = caller.call_addr("127.0.0.1:1", NodeRequest::Ping).await;

    assert!(
        matches!(&answer, Err(Error::Unavailable(text)) if text.contains("127.0.0.1:1")),
        "{answer:?}"
    );
}

#[tokio::test]
async fn given_a_shut_down_transport_when_called_should_fail_with_shutting_down() {
    let server = TestNode::start(quick_config()).await;
    let caller = caller_for(&server, quick_config());
    assert_eq!(
        caller.call(2, NodeRequest::Ping).await,
        Ok(NodeResponse::Done)
    );

    caller.shutdown();

    assert_eq!(
        caller.call(2, NodeRequest::Ping).await,
        Err(Error::ShuttingDown)
    );
}

#[tokio::test]
async fn given_a_shut_down_server_when_dialled_should_refuse() {
    let server = TestNode::start(quick_config()).await;
    let addr = server.addr.to_string();
    server.transport.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let caller = TcpTransport::new(quick_config());
    caller.set_peer_address(2, &addr);

    let answer = caller.call(2, NodeRequest::Ping).await;

    assert_eq!(answer, Err(Error::Unreachable(2)));
}

#[tokio::test]
async fn given_two_nodes_when_each_calls_the_other_should_both_answer() {
    let a = TestNode::start(quick_config()).await;
    let b = TestNode::start(quick_config()).await;
    a.transport.set_peer_address(2, &b.addr.to_string());
    b.transport.set_peer_address(1, &a.addr.to_string());

    let (ab, ba) = tokio::join!(
        a.transport.call(2, consensus("a to b")),
        b.transport.call(1, consensus("b to a"))
    );

    assert_eq!(ab, Ok(echoed("a to b")));
    assert_eq!(ba, Ok(echoed("b to a")));
}

#[tokio::test]
async fn given_an_isolated_node_when_calling_or_called_should_be_unreachable_both_ways_until_healed(
) {
    let a = TestNode::start(quick_config()).await;
    let b = TestNode::start(quick_config()).await;
    a.transport.set_peer_address(2, &b.addr.to_string());
    b.transport.set_peer_address(1, &a.addr.to_string());
    assert_eq!(
        a.transport.call(2, NodeRequest::Ping).await,
        Ok(NodeResponse::Done)
    );
    assert_eq!(
        b.transport.call(1, NodeRequest::Ping).await,
        Ok(NodeResponse::Done)
    );
    let handled_by_a = a.handled();

    a.transport.set_isolated(true);

    assert_eq!(
        a.transport.call(2, NodeRequest::Ping).await,
        Err(Error::Unreachable(2))
    );
    // On b's open connection the request goes out before `a` closes it:
    // b cannot know `a` dropped it unhandled, so it gets no answer.
    let ba = b.transport.call(1, NodeRequest::Ping).await;
    assert!(
        matches!(ba, Err(Error::Unreachable(1)) | Err(Error::NoAnswer(_))),
        "{ba:?}"
    );
    assert_eq!(
        a.handled(),
        handled_by_a,
        "an isolated node handles nothing"
    );

    a.transport.set_isolated(false);
    let healed = eventually(Duration::from_secs(3), || async {
        a.transport.call(2, NodeRequest::Ping).await == Ok(NodeResponse::Done)
            && b.transport.call(1, NodeRequest::Ping).await == Ok(NodeResponse::Done)
    })
    .await;
    assert!(healed, "both directions should work again after healing");
}

#[tokio::test]
async fn given_a_dropped_transport_when_it_had_connections_should_close_them() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let caller = TcpTransport::new(TcpConfig {
        request_timeout: Duration::from_millis(100),
        ..quick_config()
    });
    caller.set_peer_address(2, &addr.to_string());
    // The raw listener never answers: the call times out but the
    // connection stays pooled.
    let _ = caller.call(2, NodeRequest::Ping).await;
    let (mut accepted, _) = listener.accept().await.unwrap();

    drop(caller);

    let mut buf = vec![0u8; 1024];
    let eof = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match tokio::io::AsyncReadExt::read(&mut accepted, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // the Ping frame
            }
        }
    })
    .await;
    assert!(eof.is_ok(), "the peer should see the connection closed");
}

#[tokio::test]
async fn given_calls_in_flight_when_the_caller_shuts_down_should_fail_them_with_no_answer() {
    let server = TestNode::start(quick_config()).await;
    let caller = caller_for(&server, quick_config());
    let pending = {
        let caller = caller.clone();
        tokio::spawn(async move { caller.call(2, consensus("sleep:1000:pending")).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    caller.shutdown();

    let answer = tokio::time::timeout(Duration::from_millis(500), pending)
        .await
        .expect("shutdown must not leave callers waiting")
        .unwrap();
    // It was sent before the shutdown: the peer may have handled it.
    assert!(matches!(answer, Err(Error::NoAnswer(_))), "{answer:?}");
}

#[tokio::test]
async fn given_a_failed_dial_when_called_again_within_the_back_off_should_fail_fast_without_dialling(
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let caller = TcpTransport::new(TcpConfig {
        reconnect_backoff_min: Duration::from_secs(30),
        reconnect_backoff_max: Duration::from_secs(30),
        ..quick_config()
    });
    caller.set_peer_address(2, &addr.to_string());
    assert_eq!(
        caller.call(2, NodeRequest::Ping).await,
        Err(Error::Unreachable(2))
    );

    // The peer comes up, but the caller is still backing off.
    let server = TestNode::start_on(TcpListener::bind(addr).await.unwrap(), quick_config());
    let answer = caller.call(2, NodeRequest::Ping).await;

    assert_eq!(answer, Err(Error::Unreachable(2)));
    assert_eq!(
        server.handled(),
        0,
        "no dial may happen during the back-off"
    );
    // Another caller, with no failures behind it, connects at once.
    let fresh = TcpTransport::new(quick_config());
    fresh.set_peer_address(2, &addr.to_string());
    assert_eq!(
        fresh.call(2, NodeRequest::Ping).await,
        Ok(NodeResponse::Done)
    );
}
