//! Pipelined PUTs through the client listener into real `Node` logic on
//! walrus-core's fakes: they are batched into few appends, land in the
//! order sent, and fill segments exactly to their limit.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use walrus_core::metadata::SegmentStatus;
use walrus_core::testing::TestCluster;
use walrus_core::TopicName;
use walrus_server::listener::{ClientListener, ListenerConfig};

fn frame(body: &str) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(body.as_bytes());
    out
}

async fn read_resp(s: &mut TcpStream) -> String {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut body = vec![0; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    String::from_utf8(body).unwrap()
}

#[tokio::test]
async fn given_pipelined_puts_through_a_non_leader_should_batch_them_and_seal_exact_segments() {
    let cluster = TestCluster::start(3, |id| TestCluster::config(id, 10)).await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Node 2 forwards segment 1 (node 1) and 3 (node 3), leads segment 2.
    let listener =
        ClientListener::start(l, Arc::clone(cluster.node(2)), ListenerConfig::default()).unwrap();
    let mut s = TcpStream::connect(listener.local_addr()).await.unwrap();
    s.write_all(&frame("REGISTER logs")).await.unwrap();
    assert_eq!(read_resp(&mut s).await, "OK");

    let sent: Vec<String> = (0..95).map(|i| format!("m{i}")).collect();
    let mut bytes = Vec::new();
    for p in &sent {
        bytes.extend(frame(&format!("PUT logs {p}")));
    }
    s.write_all(&bytes).await.unwrap();
    for p in &sent {
        assert_eq!(read_resp(&mut s).await, "OK", "PUT {p}");
    }

    let appends: usize = cluster
        .logs
        .values()
        .map(|l| l.append_history().len())
        .sum();
    assert!(
        appends < sent.len(),
        "{appends} appends for {} pipelined PUTs: they were not batched",
        sent.len()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let state = cluster.metadata.committed();
    let t = state.topic(&TopicName::new("logs").unwrap()).unwrap();
    for seg in t.segments.iter().filter(|s| s.id <= 9) {
        assert_eq!(
            seg.status,
            SegmentStatus::Sealed { count: 10 },
            "segment {}",
            seg.id
        );
    }
    let read = cluster.drain(1, "logs", Duration::from_secs(10)).await;
    let read: Vec<String> = read
        .iter()
        .map(|e| String::from_utf8(e.to_vec()).unwrap())
        .collect();
    assert_eq!(read, sent);
}
