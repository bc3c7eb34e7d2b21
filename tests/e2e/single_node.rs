//! One real `walrus-server` process: the seed's examples, every error
//! text of the protocol, byte-exact payloads, bad frames.

use crate::common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_one_node_when_running_the_seed_examples_should_answer_as_documented() {
    let t0 = Instant::now();
    let cluster = Cluster::start(1, ClusterOptions::default()).await;
    let c = cluster.client(1);

    assert_eq!(c.send_raw("REGISTER logs").await.unwrap(), "OK");
    assert_eq!(
        c.send_raw("REGISTER logs").await.unwrap(),
        "OK",
        "registering twice is OK"
    );
    assert_eq!(c.send_raw("PUT logs hello world").await.unwrap(), "OK");
    assert_eq!(
        c.send_raw("PUT logs {\"event\":\"user.login\",\"user_id\":123}")
            .await
            .unwrap(),
        "OK"
    );
    assert_eq!(
        c.send_raw("PUT logs multi word payload with spaces")
            .await
            .unwrap(),
        "OK"
    );
    assert_eq!(
        c.send_raw("PUT logs line 1\nline 2\nline 3").await.unwrap(),
        "OK"
    );
    assert_eq!(
        c.send_raw("put logs  leading and trailing  \t ")
            .await
            .unwrap(),
        "OK"
    );

    assert_eq!(c.send_raw("GET logs").await.unwrap(), "OK hello world");
    assert_eq!(
        c.get("logs").await.unwrap().as_deref(),
        Some("{\"event\":\"user.login\",\"user_id\":123}")
    );
    assert_eq!(
        c.get("logs").await.unwrap().as_deref(),
        Some("multi word payload with spaces")
    );
    assert_eq!(
        c.get("logs").await.unwrap().as_deref(),
        Some("line 1\nline 2\nline 3")
    );
    assert_eq!(
        c.get("logs").await.unwrap().as_deref(),
        Some(" leading and trailing  \t ")
    );
    assert_eq!(c.send_raw("GET logs").await.unwrap(), "EMPTY");

    let state = c.state("logs").await.unwrap();
    for field in [
        "current_segment",
        "leader_node",
        "last_sealed_entry_offset",
        "sealed_segments",
        "segment_leaders",
    ] {
        assert!(state.get(field).is_some(), "STATE lacks {field}: {state}");
    }
    let metrics = c.metrics().await.unwrap();
    for field in [
        "id",
        "state",
        "current_term",
        "current_leader",
        "last_log_index",
        "last_applied",
        "membership_config",
    ] {
        assert!(
            metrics.get(field).is_some(),
            "METRICS lacks {field}: {metrics}"
        );
    }
    assert_eq!(metrics["current_leader"], 1);
    assert_eq!(voters(&metrics), vec![1]);
    assert_eq!(c.send_raw("PING").await.unwrap(), "OK PONG");
    assert!(c.topics().await.unwrap().to_string().contains("logs"));
    report("e2e single node: seed examples", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_one_node_when_sending_bad_requests_should_answer_every_contract_error() {
    let t0 = Instant::now();
    let cluster = Cluster::start(1, ClusterOptions::default()).await;
    let c = cluster.client(1);
    c.register("logs").await.unwrap();
    let cases = [
        ("PUT", "ERR PUT requires a topic"),
        ("PUT logs", "ERR PUT requires a payload"),
        ("PUT logs ", "ERR PUT requires a payload"),
        ("PUT nonexistent hello", "ERR topic not found"),
        ("REGISTER", "ERR REGISTER requires a topic"),
        ("GET", "ERR GET requires a topic"),
        ("STATE", "ERR STATE requires a topic"),
        ("GET nonexistent", "ERR topic not found"),
        ("STATE nonexistent", "ERR topic not found"),
        ("FROB logs", "ERR unknown command FROB"),
        ("REGISTER ../etc", "ERR invalid topic name"),
        ("REGISTER .", "ERR invalid topic name"),
        ("PUT a/b x", "ERR invalid topic name"),
    ];
    for (req, want) in cases {
        assert_eq!(c.send_raw(req).await.unwrap(), want, "request {req:?}");
    }
    let long = format!("REGISTER {}", "x".repeat(256));
    assert_eq!(c.send_raw(&long).await.unwrap(), "ERR invalid topic name");
    report("e2e single node: error texts", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_bad_frames_should_answer_them_while_other_connections_keep_working() {
    let t0 = Instant::now();
    let cluster = Cluster::start(1, ClusterOptions::default()).await;
    let addr = cluster.nodes[&1].spec.client_addr();
    let c = cluster.client(1);
    c.register("logs").await.unwrap();

    assert_eq!(
        raw_exchange(&addr, &0u32.to_le_bytes()).await.as_deref(),
        Some("ERR invalid frame length")
    );
    assert_eq!(
        raw_exchange(&addr, &(65_537u32).to_le_bytes())
            .await
            .as_deref(),
        Some("ERR invalid frame length")
    );
    assert_eq!(
        raw_exchange(&addr, &frame(b"PUT logs \xff\xfe"))
            .await
            .as_deref(),
        Some("ERR invalid utf-8")
    );

    // The largest frame is fine: 64 KiB body.
    let mut big = b"PUT logs ".to_vec();
    big.resize(65_536, b'z');
    assert_eq!(
        raw_exchange(&addr, &frame(&big)).await.as_deref(),
        Some("OK")
    );

    // Abrupt disconnects mid-frame, and a burst of connections.
    for _ in 0..50 {
        use tokio::io::AsyncWriteExt;
        let mut bytes = frame(b"PUT logs never finished");
        bytes.truncate(10);
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        drop(s); // gone mid-request
    }
    let mut conns = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = tokio::net::TcpStream::connect(&addr).await {
            conns.push(s);
        }
    }
    c.put("logs", "still alive").await.unwrap();
    drop(conns);

    // Pipelined: many requests before reading, answers in order.
    let mut bytes = Vec::new();
    for i in 0..100 {
        bytes.extend(frame(format!("PUT logs p{i}").as_bytes()));
    }
    bytes.extend(frame(b"PING"));
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(&bytes).await.unwrap();
    for _ in 0..100 {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.unwrap();
        let mut body = vec![0; u32::from_le_bytes(len) as usize];
        s.read_exact(&mut body).await.unwrap();
        assert_eq!(body, b"OK");
    }
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut body = vec![0; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    assert_eq!(body, b"OK PONG");

    let got = drain(&addr, "logs", Duration::from_secs(30)).await;
    let mut want = vec![
        String::from_utf8(big[9..].to_vec()).unwrap(),
        "still alive".to_string(),
    ];
    want.extend((0..100).map(|i| format!("p{i}")));
    assert_eq!(got, want);
    report("e2e single node: bad frames", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_sigterm_should_exit_zero_and_keep_every_write_after_restart() {
    let t0 = Instant::now();
    let mut cluster = Cluster::start(1, ClusterOptions::default()).await;
    let c = cluster.client(1);
    c.register("logs").await.unwrap();
    let payloads: Vec<String> = (0..200).map(|i| format!("entry {i}")).collect();
    for r in c.put_many("logs", &payloads, 64).await {
        r.unwrap();
    }
    let node = cluster.nodes.get_mut(&1).unwrap();
    assert_eq!(
        node.terminate(Duration::from_secs(15)),
        Some(0),
        "SIGTERM exits 0"
    );
    let restart = Instant::now();
    node.spawn();
    let ready = cluster.wait_ready(&[1], Duration::from_secs(30)).await;
    report("single node restart to ready", ready);
    let c = cluster.client(1);
    let wrote = loop {
        match c.put("logs", "after restart").await {
            Ok(()) => break restart.elapsed(),
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("PUT after restart: {e}"),
        }
    };
    report("single node restart to first write", wrote);
    let got = drain(
        &cluster.nodes[&1].spec.client_addr(),
        "logs",
        Duration::from_secs(30),
    )
    .await;
    let mut want = payloads.clone();
    want.push("after restart".into());
    assert_eq!(got, want);
    report("e2e single node: SIGTERM restart", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_cli_one_off_commands_should_print_answers_and_fail_on_err() {
    let t0 = Instant::now();
    let cluster = Cluster::start(1, ClusterOptions::default()).await;
    let addr = cluster.nodes[&1].spec.client_addr();
    let cli = server_binary().with_file_name("walrus-cli");
    let run = |args: &[&str]| run_cli(&addr, args);
    assert_eq!(
        run(&["register", "logs"]),
        (Some(0), "OK\n".into(), String::new())
    );
    assert_eq!(run(&["put", "logs", "hello world"]).0, Some(0));
    assert_eq!(run(&["put", "logs", "line 1\nline 2"]).0, Some(0));
    assert_eq!(run(&["get", "logs"]).1, "OK hello world\n");
    assert_eq!(run(&["get", "logs"]).1, "OK line 1\nline 2\n");
    assert_eq!(run(&["get", "logs"]).1, "EMPTY\n");
    let (code, _, err) = run(&["put", "nonexistent", "x"]);
    assert_eq!((code, err.as_str()), (Some(1), "ERR topic not found\n"));
    let (code, out, _) = run(&["state", "logs"]);
    assert_eq!(code, Some(0));
    assert!(
        serde_json::from_str::<serde_json::Value>(&out).is_ok(),
        "{out}"
    );
    assert_eq!(run(&["ping"]).1, "OK PONG\n");
    let (code, _, err) = std::process::Command::new(&cli)
        .args(["--addr", "127.0.0.1:1", "ping"])
        .output()
        .map(|o| {
            (
                o.status.code(),
                (),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    assert_eq!(code, Some(2), "unreachable node: {err}");
    // Several addresses: a node that is down is passed over.
    let out = std::process::Command::new(&cli)
        .args(["--addr", &format!("127.0.0.1:1,{addr}"), "ping"])
        .output()
        .expect("running walrus-cli");
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "OK PONG\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report("e2e single node: CLI", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_connection_cap_and_idle_timeout_flags_should_enforce_them() {
    let t0 = Instant::now();
    let mut opts = ClusterOptions::default();
    opts.env.push(("WALRUS_MAX_CONNECTIONS".into(), "4".into()));
    opts.env
        .push(("WALRUS_IDLE_TIMEOUT_MS".into(), "300".into()));
    let cluster = Cluster::start(1, opts).await;
    let addr = cluster.nodes[&1].spec.client_addr();
    // Readiness checks may still hold a slot for a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(&frame(b"PING")).await.unwrap();
        let mut buf = [0u8; 11];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf[4..], b"OK PONG");
        held.push(s);
    }
    let refused = raw_exchange(&addr, &frame(b"PING"))
        .await
        .unwrap_or_default();
    assert!(
        refused.starts_with("ERR too many connections"),
        "{refused:?}"
    );
    drop(held);

    // A half-sent frame is dropped after the idle timeout.
    let mut s = loop {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(&frame(b"PING")).await.unwrap();
        let mut buf = [0u8; 11];
        if s.read_exact(&mut buf).await.is_ok() && &buf[4..] == b"OK PONG" {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    s.write_all(&[20, 0, 0, 0, b'P']).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "closed, not answered: {closed:?}"
    );
    report(
        "e2e single node: connection cap and idle timeout",
        t0.elapsed(),
    );
}
