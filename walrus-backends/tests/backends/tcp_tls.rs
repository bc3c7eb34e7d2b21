//! Mutual TLS on the TCP transport: the whole transport suite over TLS, and
//! peers without a certificate of the cluster's CA refused both ways.

use crate::pki::{CertFiles, TestCa};
use crate::tcp_common::*;
use crate::tcp_conformance::{config, TcpFactory};

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use walrus_backends::tcp::envelope;
use walrus_backends::tcp::tls::NodeTls;
use walrus_backends::tcp::{TcpConfig, TcpTransport};
use walrus_core::testing::transport_conformance::run;
use walrus_core::{Error, NodeRequest, NodeResponse, Transport};

fn tls_config(files: &CertFiles, ca: &TestCa) -> TcpConfig {
    TcpConfig {
        tls: Some(
            NodeTls::from_files(&files.cert, &files.key, &ca.cert).expect("loading TLS files"),
        ),
        ..config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_mutual_tls_when_running_the_transport_suite_should_pass() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "cluster");
    let node = ca.sign("node");
    run(TcpFactory::new(tls_config(&node, &ca))).await;
}

#[tokio::test]
async fn given_a_peer_whose_certificate_another_ca_signed_should_be_refused_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "cluster");
    let rogue_ca = TestCa::new(dir.path(), "rogue");
    let member = TestNode::start(tls_config(&ca.sign("member"), &ca)).await;

    // Signed by another CA, even one that trusts the cluster's CA: refused
    // by the member (it checks the caller's certificate).
    let rogue_files = rogue_ca.sign("rogue");
    let trusting = TcpConfig {
        tls: Some(NodeTls::from_files(&rogue_files.cert, &rogue_files.key, &ca.cert).unwrap()),
        ..config()
    };
    let rogue = TcpTransport::new(trusting);
    let answer = rogue
        .call_addr(&member.addr.to_string(), NodeRequest::Ping)
        .await;
    // In TLS 1.3 the caller's handshake is done before the member has
    // checked its certificate: it may send, then see the connection end.
    assert!(
        matches!(answer, Err(Error::Unavailable(_) | Error::NoAnswer(_))),
        "{answer:?}"
    );

    // The member calling a rogue server: refused by the member (it checks
    // the server's certificate).
    let rogue_server = TestNode::start(tls_config(&rogue_files, &rogue_ca)).await;
    let answer = member
        .transport
        .call_addr(&rogue_server.addr.to_string(), NodeRequest::Ping)
        .await;
    assert!(matches!(answer, Err(Error::Unavailable(_))), "{answer:?}");
    assert_eq!(rogue_server.handled(), 0);
    assert_eq!(member.handled(), 0);

    // A real member still gets through.
    let peer = TcpTransport::new(tls_config(&ca.sign("peer"), &ca));
    assert_eq!(
        peer.call_addr(&member.addr.to_string(), NodeRequest::Ping)
            .await,
        Ok(NodeResponse::Done)
    );
}

#[tokio::test]
async fn given_a_plain_tcp_peer_should_get_nothing_but_a_closed_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "cluster");
    let member = TestNode::start(tls_config(&ca.sign("member"), &ca)).await;

    // A node without TLS settings: its call fails, nothing is handled.
    let plain = TcpTransport::new(config());
    let answer = plain
        .call_addr(&member.addr.to_string(), NodeRequest::Ping)
        .await;
    assert!(answer.is_err(), "{answer:?}");
    assert_eq!(member.handled(), 0);

    // On the wire: a well-formed request frame gets not one byte back.
    let mut raw = TcpStream::connect(member.addr).await.unwrap();
    let frame = envelope::encode_request(1, &NodeRequest::Ping, 1 << 20).unwrap();
    raw.write_all(&frame).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut got))
        .await
        .expect("the member closes the connection");
    assert!(got.is_empty(), "a plain peer got {} bytes back", got.len());
    // Closed: EOF, or a reset for the bytes it left unread.
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    assert_eq!(member.handled(), 0);
}
