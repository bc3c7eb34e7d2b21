//! Real `walrus-server` processes under abusive load: memory and
//! connection slots stay bounded, and other clients keep being served.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

async fn read_resp(s: &mut TcpStream) -> Option<String> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let mut body = vec![0; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).await.ok()?;
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// A connection from `ip`: any 127.x.y.z is a distinct local address on
/// Linux loopback, so 127.0.0.2 is a second client.
async fn connect_from(ip: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{ip}:0").parse().expect("an IPv4 address"))?;
    socket.connect(to).await
}

/// This test holds thousands of sockets: lift its own open-files limit.
fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed in.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    assert!(
        lim.rlim_cur >= want,
        "this test needs {want} open files; the hard limit is {}: raise `ulimit -Hn`",
        lim.rlim_max
    );
}

/// `VmHWM` (peak resident memory) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_4096_idle_connections_from_one_address_should_still_serve_a_second_address() {
    raise_fd_limit(4096 + 1024);
    // Default caps: 4,096 connections in all, 1,024 per address.
    let cluster = Cluster::start(1, ClusterOptions::default()).await;
    let addr: SocketAddr = cluster.nodes[&1].spec.client_addr().parse().unwrap();

    let mut idle = Vec::new();
    for _ in 0..4096 {
        idle.push(connect_from("127.0.0.1", addr).await.expect("connecting"));
    }
    let mut other = connect_from("127.0.0.2", addr).await.unwrap();
    other.write_all(&frame(b"PING")).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(10), read_resp(&mut other)).await;
    assert_eq!(
        pong.expect("the second address is served in time")
            .as_deref(),
        Some("OK PONG")
    );
    // The last one is past the per-address cap: told so, then closed.
    let last = idle.last_mut().unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), read_resp(last))
        .await
        .expect("a connection over the per-address cap is answered at once");
    let refused = refused.expect("an answer before the close");
    assert!(
        refused.starts_with("ERR too many connections from 127.0.0.1"),
        "{refused}"
    );

    // The first address still has its own 1,024 slots working.
    let first = &mut idle[0];
    first.write_all(&frame(b"PING")).await.unwrap();
    assert_eq!(read_resp(first).await.as_deref(), Some("OK PONG"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_flood_of_large_pipelined_puts_to_a_stopped_leader_should_keep_the_node_under_its_budget(
) {
    const BUDGET: u64 = 8 << 20;
    let opts = ClusterOptions {
        env: vec![
            ("WALRUS_MONITOR_CHECK_MS".into(), "100".into()),
            ("WALRUS_MAX_BYTES_IN_FLIGHT".into(), BUDGET.to_string()),
        ],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(2, opts).await;
    // Registered through node 2: node 2 leads the topic's segment.
    cluster.register(2, "flood").await;
    let state = cluster.client(1).state("flood").await.unwrap();
    assert_eq!(state["leader_node"], 2, "{state}");

    let node1 = cluster.nodes[&1].pid().expect("node 1 runs");
    let before = peak_rss(node1);
    // The leader is as slow as it gets: stopped. Node 1 forwards to it and
    // waits; every PUT it reads stays with it until the forward times out.
    cluster.nodes[&2].signal("-STOP");

    let addr: SocketAddr = cluster.nodes[&1].spec.client_addr().parse().unwrap();
    let mut flooders = Vec::new();
    for _ in 0..8 {
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut r, mut w) = s.into_split();
        // Drain the answers (timeouts, eventually) so only the server's
        // reading is in question.
        tokio::spawn(async move {
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        flooders.push(tokio::spawn(async move {
            let mut body = b"PUT flood ".to_vec();
            body.resize(60_000, b'x');
            let one = frame(&body);
            // 2,000 x 60 KB = 120 MB per connection, about 1 GB in all.
            for _ in 0..2000 {
                let sent = tokio::time::timeout(Duration::from_secs(2), w.write_all(&one)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return; // the server stopped reading: backpressure
                }
            }
        }));
    }
    for f in flooders {
        let _ = tokio::time::timeout(Duration::from_secs(60), f).await;
    }
    let after = peak_rss(node1);
    cluster.nodes[&2].signal("-CONT");

    let grew = after.saturating_sub(before);
    eprintln!(
        "node 1 peak RSS: {} MiB before the flood, {} MiB after (+{} MiB; budget {} MiB)",
        before >> 20,
        after >> 20,
        grew >> 20,
        BUDGET >> 20
    );
    // The budget, plus what each held byte costs on its way (the request,
    // its copy in the forwarded message) and per-connection buffers.
    assert!(
        grew <= 4 * BUDGET + (16 << 20),
        "node 1's peak RSS grew by {} MiB under a {} MiB budget",
        grew >> 20,
        BUDGET >> 20
    );
    // And it still answers.
    let c = cluster.client(1);
    c.ping().await.expect("node 1 answers after the flood");
}
