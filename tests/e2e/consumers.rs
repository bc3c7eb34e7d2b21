//! The consumer tools on a real `walrus-server`: walrus-bench's consumer
//! workloads (read, fetch, tail-latency) check every entry they read
//! against a real node, across segment rollovers; `walrus-cli` sets and
//! shows retention and follows a topic with long-polling reads.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use distributed_walrus::cli_client::{RetainSetting, Retention};
use walrus_bench::consume::{run as consume, ConsumeConfig, Mode};

fn short_run(mode: Mode, addr: &str, prefix: &str) -> ConsumeConfig {
    let mut cfg = ConsumeConfig::new(mode, addr);
    cfg.topic_prefix = prefix.into();
    cfg.payload_size = 200;
    cfg.fill = 2500;
    cfg.duration = Duration::from_millis(300);
    cfg.timeout = Duration::from_secs(30);
    cfg.wait = Duration::from_millis(500);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_real_node_when_running_the_consumer_bench_workloads_should_check_every_entry() {
    let t0 = Instant::now();
    // Segments of 1,000 entries: every pass crosses rollovers, where a
    // READ answers at most one segment.
    let cluster = Cluster::start(1, ClusterOptions::default().segment_limit(1000)).await;
    let addr = cluster.nodes[&1].spec.client_addr();

    let r = consume(short_run(Mode::Read, &addr, "rd")).await.unwrap();
    assert!(r.is_clean(), "{}", r.to_text());
    assert!(r.check.passes >= 1 && r.check.entries_checked >= 2500);

    let r = consume(short_run(Mode::Fetch, &addr, "fe")).await.unwrap();
    assert!(r.is_clean(), "{}", r.to_text());
    assert!(r.check.passes >= 1 && r.requests >= 25);

    for tail_fetch in [false, true] {
        let mut cfg = short_run(Mode::TailLatency, &addr, "tl");
        cfg.connections = 3;
        cfg.depth = 2;
        cfg.readers = 2;
        cfg.tail_fetch = tail_fetch;
        let r = consume(cfg).await.unwrap();
        assert!(r.is_clean(), "{}", r.to_text());
        assert_eq!(r.ops, 2 * r.puts.unwrap(), "{}", r.to_text());
    }
    report("e2e consumer bench workloads", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_tls_and_a_token_on_the_client_port_when_running_the_consumer_workloads_should_use_both(
) {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::pki::TestCa::new(dir.path(), "walrus");
    let files = ca.sign("server");
    const TOKEN: &str = "e2e-consumer-token-0123456789ab";
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN} write\n")).unwrap();
    let path = |p: &std::path::Path| p.to_str().expect("test paths are UTF-8").to_string();
    let node = ServerProc::start(NodeSpec::local(
        1,
        dir.path(),
        None,
        vec![
            ("WALRUS_TLS_CERT".into(), path(&files.cert)),
            ("WALRUS_TLS_KEY".into(), path(&files.key)),
            ("WALRUS_AUTH_TOKEN_FILE".into(), path(&tokens)),
        ],
    ));
    let addr = node.spec.client_addr();
    let secured = |mode: Mode, prefix: &str| {
        let mut cfg = short_run(mode, &addr, prefix);
        cfg.fill = 500;
        cfg.tls = Some(walrus_client::TlsConfig::from_ca_file(&ca.cert).expect("the test CA"));
        cfg.token = Some(walrus_core::Secret::new(TOKEN));
        cfg
    };
    // The node takes a moment to listen: the first run retries its start.
    let started = Instant::now();
    let r = loop {
        match consume(secured(Mode::Read, "rd")).await {
            Ok(r) => break r,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:#}\n{}", node.log_tail(30)),
        }
    };
    assert!(r.is_clean(), "{}", r.to_text());
    let mut fetch = secured(Mode::Fetch, "fe");
    fetch.commit_async = true;
    let r = consume(fetch).await.unwrap();
    assert!(r.is_clean() && r.check.passes >= 1, "{}", r.to_text());
    let mut tail = secured(Mode::TailLatency, "tl");
    tail.tail_fetch = true;
    let r = consume(tail).await.unwrap();
    assert!(r.is_clean(), "{}", r.to_text());
    // Without the token, the node refuses the run's first request.
    let mut anonymous = secured(Mode::Read, "anon");
    anonymous.token = None;
    let e = consume(anonymous).await.unwrap_err();
    assert!(format!("{e:#}").contains("REGISTER"), "{e:#}");
    report(
        "e2e consumer bench workloads over TLS with a token",
        t0.elapsed(),
    );
}

fn retention(entries: Option<u64>, age_ms: Option<u64>) -> Retention {
    Retention {
        max_entries: entries,
        max_age_ms: age_ms,
        max_bytes: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_retention_set_by_the_cli_and_the_client_should_read_back_through_config() {
    let t0 = Instant::now();
    let cluster = Cluster::start(1, ClusterOptions::default()).await;
    let addr = cluster.nodes[&1].spec.client_addr();
    let config = |topic: &str| {
        let (code, out, err) = run_cli(&addr, &["config", topic]);
        assert_eq!(code, Some(0), "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };

    let (code, out, err) = run_cli(
        &addr,
        &["register", "logs", "--retain", "entries=1000", "age=7d"],
    );
    assert_eq!((code, out.as_str()), (Some(0), "OK\n"), "{err}");
    let v = config("logs");
    assert_eq!(v["retention"]["max_entries"], 1000);
    assert_eq!(v["retention"]["max_age_ms"], 7 * 86_400_000u64);
    assert_eq!(
        run_cli(&addr, &["config", "logs", "--retain", "none"]).0,
        Some(0)
    );
    assert_eq!(
        config("logs")["retention"]["max_entries"],
        serde_json::Value::Null
    );
    assert_eq!(
        run_cli(&addr, &["config", "logs", "--retain", "default"]).0,
        Some(0)
    );
    assert_eq!(config("logs")["retention"], serde_json::Value::Null);
    // A typo is refused before anything is sent, with the server's words.
    let (code, _, err) = run_cli(&addr, &["config", "logs", "--retain", "entires=5"]);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with("--retain: unexpected \"entires=5\""),
        "{err}"
    );
    let (code, _, err) = run_cli(&addr, &["config", "nope"]);
    assert_eq!((code, err.as_str()), (Some(1), "ERR topic not found\n"));

    let client = cluster.client(1);
    let limits = RetainSetting::Limits(retention(Some(10), Some(90_000)));
    client.register_retaining("events", limits).await.unwrap();
    let c = client.config("events").await.unwrap();
    assert_eq!(c.retention, Some(retention(Some(10), Some(90_000))));
    assert_eq!(
        (c.in_force, c.first),
        (retention(Some(10), Some(90_000)), 0)
    );
    client
        .set_retention("events", RetainSetting::Default)
        .await
        .unwrap();
    assert_eq!(client.config("events").await.unwrap().retention, None);
    // The blocking client, on a thread of its own (not a runtime's).
    let blocking_addr = addr.clone();
    let got = std::thread::spawn(move || {
        let c = distributed_walrus::cli_client::blocking::Client::new(blocking_addr).unwrap();
        c.set_retention("events", RetainSetting::Limits(retention(Some(3), None)))
            .unwrap();
        c.config("events").unwrap().retention
    })
    .join()
    .unwrap();
    assert_eq!(got, Some(retention(Some(3), None)));
    report("e2e CLI and client retention settings", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_tail_follow_should_print_the_last_entries_then_new_ones_and_stop_when_told() {
    let t0 = Instant::now();
    let mut cluster = Cluster::start(1, ClusterOptions::default()).await;
    let addr = cluster.nodes[&1].spec.client_addr();
    let client = cluster.client(1);
    client.register("logs").await.unwrap();
    for p in ["one", "two", "three"] {
        client.put("logs", p).await.unwrap();
    }
    let follow = |extra: &[&str]| {
        Command::new(server_binary().with_file_name("walrus-cli"))
            .args([
                "--addr",
                &addr,
                "--retry-ms",
                "500",
                "tail",
                "-f",
                "logs",
                "-n",
                "2",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting walrus-cli tail -f")
    };

    // Ctrl-C ends it at once, saying where to go on.
    let mut child = follow(&[]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = move || lines.next().unwrap().unwrap();
    assert_eq!(next_line(), "two");
    assert_eq!(next_line(), "three");
    // Long-polling: the entry comes when it is written, not on a timer
    // (each read waits up to 30 s).
    let waiting_since = Instant::now();
    client.put("logs", "four").await.unwrap();
    assert_eq!(next_line(), "four");
    assert!(waiting_since.elapsed() < Duration::from_secs(10));
    let pid = child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).ends_with("next offset: 4\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The server going away ends it too (after --retry-ms), not a loop.
    let mut child = follow(&[]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "three");
    assert_eq!(lines.next().unwrap().unwrap(), "four");
    cluster
        .nodes
        .get_mut(&1)
        .unwrap()
        .terminate(Duration::from_secs(10));
    let stopped = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(stopped.elapsed() < Duration::from_secs(15));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.ends_with("next offset: 4\n"), "{err}");
    report("e2e walrus-cli tail -f", t0.elapsed());
}
