//! Hostile or broken peers: garbage, oversized frames, half-sent messages,
//! wrong versions and floods of connections cost at most their own
//! connection; every other connection keeps working.

use crate::tcp_common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tcp_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use walrus_backends::tcp::envelope::{self, Kind, ResponsePayload};
use walrus_backends::tcp::{TcpConfig, TcpTransport};
use walrus_core::{Error, NodeRequest, NodeResponse, Transport};

const MAX: usize = 1024 * 1024;

fn hostile_config() -> TcpConfig {
    TcpConfig {
        max_message_bytes: MAX,
        stall_timeout: Duration::from_millis(300),
        ..quick_config()
    }
}

/// A server plus a well-behaved caller with a connection already open.
async fn server_with_a_good_caller() -> (TestNode, CountingProxy, Arc<TcpTransport>) {
    let server = TestNode::start(hostile_config()).await;
    let proxy = CountingProxy::start(server.addr).await;
    let good = TcpTransport::new(hostile_config());
    good.set_peer_address(2, &proxy.addr.to_string());
    assert_eq!(
        good.call(2, NodeRequest::Ping).await,
        Ok(NodeResponse::Done)
    );
    (server, proxy, good)
}

/// The good caller still works on its original connection, and a new
/// caller can connect too.
async fn assert_others_unharmed(server: &TestNode, proxy: &CountingProxy, good: &TcpTransport) {
    assert_eq!(
        good.call(2, consensus("still fine")).await,
        Ok(echoed("still fine"))
    );
    assert_eq!(
        proxy.connections(),
        1,
        "the good caller's connection must survive"
    );
    let fresh = TcpTransport::new(hostile_config());
    assert_eq!(
        fresh
            .call_addr(&server.addr.to_string(), NodeRequest::Ping)
            .await,
        Ok(NodeResponse::Done)
    );
}

/// True if the server closed `stream` (EOF or reset) within `within`.
async fn closed_by_peer(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue, // e.g. an error frame; keep reading to EOF
            }
        }
    };
    tokio::time::timeout(within, read).await.unwrap_or(false)
}

#[tokio::test]
async fn given_http_garbage_when_sent_should_close_only_that_connection() {
    let (server, proxy, good) = server_with_a_good_caller().await;
    let mut raw = TcpStream::connect(server.addr).await.unwrap();

    raw.write_all(b"GET / HTTP/1.1\r\nHost: walrus\r\n\r\n")
        .await
        .unwrap();

    assert!(closed_by_peer(&mut raw, Duration::from_secs(2)).await);
    assert_others_unharmed(&server, &proxy, &good).await;
}

#[tokio::test]
async fn given_random_bytes_with_a_plausible_length_when_sent_should_close_only_that_connection() {
    let (server, proxy, good) = server_with_a_good_caller().await;
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    let mut junk = 40u32.to_be_bytes().to_vec();
    junk.extend((0..40u8).map(|i| i.wrapping_mul(37)));

    raw.write_all(&junk).await.unwrap();

    assert!(closed_by_peer(&mut raw, Duration::from_secs(2)).await);
    assert_eq!(server.handled(), 1, "garbage must never reach the handler");
    assert_others_unharmed(&server, &proxy, &good).await;
}

#[tokio::test]
async fn given_an_oversized_frame_header_when_sent_should_close_before_reading_the_body() {
    let (server, proxy, good) = server_with_a_good_caller().await;
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    let mut header = ((MAX + 1) as u32).to_be_bytes().to_vec();
    header.extend_from_slice(b"WN");

    raw.write_all(&header).await.unwrap();

    // Closed without the server waiting for (or allocating) MAX bytes.
    assert!(closed_by_peer(&mut raw, Duration::from_secs(2)).await);
    assert_others_unharmed(&server, &proxy, &good).await;
}

#[tokio::test]
async fn given_a_half_sent_frame_when_the_peer_stalls_should_close_after_the_stall_timeout() {
    let (server, proxy, good) = server_with_a_good_caller().await;
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    let frame = envelope::encode_request(1, &consensus("half"), MAX).unwrap();

    raw.write_all(&frame[..frame.len() / 2]).await.unwrap();
    // While that connection stalls, others are served.
    assert_eq!(
        good.call(2, consensus("meanwhile")).await,
        Ok(echoed("meanwhile"))
    );

    assert!(closed_by_peer(&mut raw, Duration::from_secs(3)).await);
    assert_eq!(
        server.handled(),
        2,
        "the half-sent request must not be handled"
    );
    assert_others_unharmed(&server, &proxy, &good).await;
}

#[tokio::test]
async fn given_a_peer_that_disconnects_mid_frame_when_served_should_harm_nothing() {
    let (server, proxy, good) = server_with_a_good_caller().await;
    let frame = envelope::encode_request(1, &consensus("cut short"), MAX).unwrap();

    for cut in [1, 3, 4, 10, frame.len() - 1] {
        let mut raw = TcpStream::connect(server.addr).await.unwrap();
        raw.write_all(&frame[..cut]).await.unwrap();
        drop(raw);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    assert_eq!(server.handled(), 1);
    assert_others_unharmed(&server, &proxy, &good).await;
}

#[tokio::test]
async fn given_a_future_protocol_version_when_sent_should_close_that_connection() {
    let (server, proxy, good) = server_with_a_good_caller().await;
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    let mut frame = envelope::encode_request(1, &NodeRequest::Ping, MAX)
        .unwrap()
        .to_vec();
    frame[envelope::LEN_BYTES + 2] = envelope::VERSION + 1;

    raw.write_all(&frame).await.unwrap();

    assert!(closed_by_peer(&mut raw, Duration::from_secs(2)).await);
    assert_others_unharmed(&server, &proxy, &good).await;
}

#[tokio::test]
async fn given_a_response_frame_sent_to_a_server_should_close_that_connection() {
    let (server, proxy, good) = server_with_a_good_caller().await;
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    let frame = envelope::encode_response(1, &Ok(NodeResponse::Done), MAX).unwrap();

    raw.write_all(&frame).await.unwrap();

    assert!(closed_by_peer(&mut raw, Duration::from_secs(2)).await);
    assert_others_unharmed(&server, &proxy, &good).await;
}

#[tokio::test]
async fn given_a_well_framed_but_undecodable_request_should_answer_bad_request_and_keep_serving() {
    let (server, proxy, good) = server_with_a_good_caller().await;
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    // A valid header around a payload naming a request variant that does
    // not exist (as a newer node might send).
    let mut frame = 0u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&envelope::MAGIC);
    frame.push(envelope::VERSION);
    frame.push(Kind::Request as u8);
    frame.extend_from_slice(&77u64.to_be_bytes());
    frame.extend_from_slice(&[0x7f, 1, 2, 3]);
    let len = (frame.len() - envelope::LEN_BYTES) as u32;
    frame[..4].copy_from_slice(&len.to_be_bytes());

    raw.write_all(&frame).await.unwrap();
    let answer = envelope::read_frame(&mut raw, MAX, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!((answer.kind, answer.id), (Kind::Response, 77));
    let payload: ResponsePayload = answer.decode().unwrap();
    assert!(matches!(payload, Err(Error::BadRequest(_))), "{payload:?}");

    // The same connection still carries good requests.
    let ping = envelope::encode_request(78, &NodeRequest::Ping, MAX).unwrap();
    raw.write_all(&ping).await.unwrap();
    let answer = envelope::read_frame(&mut raw, MAX, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(answer.id, 78);
    assert_eq!(
        answer.decode::<ResponsePayload>().unwrap(),
        Ok(NodeResponse::Done)
    );
    assert_others_unharmed(&server, &proxy, &good).await;
}

#[tokio::test]
async fn given_a_flood_of_idle_and_garbage_connections_should_keep_serving_others() {
    let (server, proxy, good) = server_with_a_good_caller().await;
    let mut flood = Vec::new();
    for i in 0..200 {
        let mut raw = TcpStream::connect(server.addr).await.unwrap();
        if i % 2 == 0 {
            let _ = raw.write_all(&[0xde, 0xad, 0xbe, 0xef, 0, 0]).await;
        }
        flood.push(raw);
    }

    assert_others_unharmed(&server, &proxy, &good).await;
    drop(flood);
}

#[tokio::test]
async fn given_a_peer_answering_garbage_when_called_should_fail_fast_with_no_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(b"\x00\x00\x00\x10garbage garbage!").await;
            });
        }
    });
    let caller = TcpTransport::new(TcpConfig {
        request_timeout: Duration::from_secs(30),
        ..hostile_config()
    });
    caller.set_peer_address(4, &addr.to_string());

    let answer = tokio::time::timeout(Duration::from_secs(5), caller.call(4, NodeRequest::Ping))
        .await
        .expect("a garbage answer must fail the call, not leave it waiting");

    // The peer read the request before it answered garbage: it may have
    // handled it.
    assert!(matches!(answer, Err(Error::NoAnswer(_))), "{answer:?}");
}

#[tokio::test]
async fn given_a_peer_answering_unknown_ids_when_called_should_time_out_without_harm() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                while envelope::read_frame(&mut stream, MAX, Duration::from_secs(5))
                    .await
                    .is_ok()
                {
                    let stray =
                        envelope::encode_response(u64::MAX, &Ok(NodeResponse::Done), MAX).unwrap();
                    if stream.write_all(&stray).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let caller = TcpTransport::new(TcpConfig {
        request_timeout: Duration::from_millis(200),
        ..hostile_config()
    });
    caller.set_peer_address(4, &addr.to_string());

    let answer = caller
        .call(4, NodeRequest::Consensus(Bytes::from_static(b"x")))
        .await;

    assert!(matches!(answer, Err(Error::NoAnswer(_))), "{answer:?}");
}

#[tokio::test]
async fn given_a_server_at_its_connection_limit_when_another_dials_should_refuse_it_and_recover() {
    let server = TestNode::start(TcpConfig {
        max_connections: 2,
        ..hostile_config()
    })
    .await;
    let mut hogs = Vec::new();
    for _ in 0..2 {
        let mut raw = TcpStream::connect(server.addr).await.unwrap();
        // A full round trip proves the server accepted (and counts) it.
        let ping = envelope::encode_request(1, &NodeRequest::Ping, MAX).unwrap();
        raw.write_all(&ping).await.unwrap();
        envelope::read_frame(&mut raw, MAX, Duration::from_secs(2))
            .await
            .unwrap();
        hogs.push(raw);
    }
    let caller = TcpTransport::new(hostile_config());
    caller.set_peer_address(2, &server.addr.to_string());

    // Closed before the frame could be written (not sent), or just after
    // (no answer): the kernel decides which.
    let refused = caller.call(2, NodeRequest::Ping).await;
    assert!(
        matches!(
            refused,
            Err(Error::Unreachable(2)) | Err(Error::NoAnswer(_))
        ),
        "{refused:?}"
    );

    drop(hogs);
    let recovered = eventually(Duration::from_secs(3), || async {
        caller.call(2, NodeRequest::Ping).await == Ok(NodeResponse::Done)
    })
    .await;
    assert!(recovered, "a freed connection slot must be usable again");
}
