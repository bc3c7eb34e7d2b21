//! Authentication with real processes: a cluster that shares a secret
//! refuses a process with another secret (or none), which can neither
//! join nor read nor forward; a node with client tokens serves walrus-cli
//! given a token file and refuses it without one; and no secret or token
//! ever reaches a log, METRICS or STATE.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use distributed_walrus::cli_client::CliClient;
use walrus_backends::tcp::{TcpConfig, TcpTransport};
use walrus_core::{NodeRequest, Secret, TopicName, Transport};

use crate::common::{serial, server_binary, voters, Cluster, ClusterOptions, NodeSpec, ServerProc};

const SECRET: &str = "e2e-cluster-secret-5f2a9c0d7e1b4a36";
const OTHER_SECRET: &str = "e2e-another-secret-0b9d8c7a6f5e4d3c";
const WRITER: &str = "e2e-writer-token-1c2d3e4f5a6b7c8d";
const READER: &str = "e2e-reader-token-9f8e7d6c5b4a3921";

fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().expect("a UTF-8 temp path").to_string()
}

/// Every log file under `dir`, concatenated.
fn all_logs(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "log") {
            text.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
    text
}

fn assert_no_secret(text: &str, what: &str) {
    for s in [SECRET, OTHER_SECRET, WRITER, READER] {
        assert!(!text.contains(s), "{what} shows a secret:\n{text}");
    }
}

async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

#[tokio::test]
async fn given_a_cluster_with_a_secret_when_a_process_without_it_tries_to_join_read_or_forward_should_refuse_it(
) {
    let _serial = serial().await;
    let secrets = tempfile::tempdir().unwrap();
    let good = write_file(secrets.path(), "secret", &format!("{SECRET}\n"));
    let bad = write_file(secrets.path(), "other", OTHER_SECRET);
    let mut opts = ClusterOptions::default();
    opts.env
        .push(("WALRUS_CLUSTER_SECRET_FILE".into(), good.clone()));
    let mut cluster = Cluster::start(3, opts).await;
    cluster.register(1, "secured").await;
    let c = cluster.client(2); // forwarded between nodes: they trust each other
    c.put("secured", "first").await.unwrap();
    c.put("secured", "second").await.unwrap();

    // A 4th process with another secret and a 5th with none try to join.
    let raft1 = cluster.nodes[&1].spec.raft_addr();
    for (id, secret) in [(4, Some(bad.clone())), (5, None)] {
        let mut spec = NodeSpec::local(id, cluster.dir.path(), Some(raft1.clone()), vec![]);
        if let Some(s) = secret {
            spec.env.push(("WALRUS_CLUSTER_SECRET_FILE".into(), s));
        }
        cluster.nodes.insert(id, ServerProc::start(spec));
    }
    let dir = cluster.dir.path().to_path_buf();
    let refused = wait_until(Duration::from_secs(20), || {
        let log4 = std::fs::read_to_string(dir.join("node_4.log")).unwrap_or_default();
        let log5 = std::fs::read_to_string(dir.join("node_5.log")).unwrap_or_default();
        let members: String = (1..=3)
            .map(|id| std::fs::read_to_string(dir.join(format!("node_{id}.log"))).unwrap_or_default())
            .collect();
        log4.contains("does not know this cluster's secret")
            && log5.contains("retrying")
            && members.contains("refused a node connection: the peer did not start the cluster-secret handshake")
            && members.contains("refused a node connection: the peer closed the connection during the cluster-secret handshake")
    })
    .await;
    assert!(
        refused,
        "no refusal logged on both sides:\n{}",
        all_logs(&dir)
    );
    // Still three voters, and the outsiders never opened a client port
    // (that happens only once a node is part of its cluster).
    let m = cluster.client(1).metrics().await.unwrap();
    assert_eq!(voters(&m), vec![1, 2, 3], "{m}");
    for id in [4, 5] {
        let outsider = CliClient::new(cluster.nodes[&id].spec.client_addr())
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_secs(1));
        assert!(
            outsider.ping().await.is_err(),
            "node {id} serves clients without being a member"
        );
    }

    // Reading (a GET moves the shared cursor) or forwarding through the
    // node port without the secret gets nothing and changes nothing.
    for secret in [Some(OTHER_SECRET), None] {
        let transport = TcpTransport::new(TcpConfig {
            cluster_secret: secret.map(Secret::new),
            ..TcpConfig::default()
        });
        for id in 1..=3 {
            let raft = cluster.nodes[&id].spec.raft_addr();
            let get = NodeRequest::Get {
                topic: TopicName::new("secured").unwrap(),
            };
            let answer = transport.call_addr(&raft, get).await;
            assert!(answer.is_err(), "node {id} answered {answer:?}");
        }
        transport.shutdown();
    }
    assert_eq!(
        c.get("secured").await.unwrap().as_deref(),
        Some("first"),
        "the refused GETs moved the cursor"
    );
    c.put("secured", "third")
        .await
        .expect("the cluster works on");
    assert_eq!(c.offsets("secured").await.unwrap().1, 3);

    for id in [4, 5] {
        cluster
            .nodes
            .get_mut(&id)
            .unwrap()
            .terminate(Duration::from_secs(5));
    }
    assert_no_secret(&all_logs(&dir), "a node's log");
}

#[tokio::test]
async fn given_client_tokens_in_the_config_file_when_walrus_cli_uses_a_token_file_should_work_and_refuse_without(
) {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_file(
        dir.path(),
        "tokens",
        &format!("# e2e tokens\n{WRITER} write\n{READER} read\n"),
    );
    let secret = write_file(dir.path(), "secret", SECRET);
    let config = write_file(
        dir.path(),
        "walrus.toml",
        &format!("auth-token-file = {tokens:?}\ncluster-secret-file = {secret:?}\n"),
    );
    let writer_file = write_file(dir.path(), "writer-token", &format!("{WRITER}\n"));
    let spec = NodeSpec::local(1, dir.path(), None, vec![("WALRUS_CONFIG".into(), config)]);
    let addr = spec.client_addr();
    let mut node = ServerProc::start(spec);
    let admin = CliClient::new(addr.clone())
        .with_auth(WRITER)
        .with_timeout(Duration::from_secs(5));
    let start = Instant::now();
    while !matches!(admin.metrics().await, Ok(m) if m["current_leader"].is_u64()) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the node did not come up: {}",
            node.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let cli = server_binary().with_file_name("walrus-cli");
    let args = |a: &[&str]| -> Vec<String> { a.iter().map(|s| s.to_string()).collect() };
    let run = |args: &[String], env: &[(&str, &str)]| {
        let out = Command::new(&cli)
            .args(["--addr", &addr, "--retry-ms", "0"])
            .args(args)
            .env_remove("WALRUS_TOKEN")
            .env_remove("WALRUS_TOKEN_FILE")
            .envs(env.iter().copied())
            .output()
            .expect("running walrus-cli");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_no_secret(&text, "walrus-cli's output");
        (out.status.code(), text)
    };
    let with_file = |cmd: &[&'static str]| -> Vec<String> {
        ["--token-file", &writer_file]
            .iter()
            .chain(cmd)
            .map(|s| s.to_string())
            .collect()
    };

    assert_eq!(run(&with_file(&["register", "jobs"]), &[]).0, Some(0));
    let put = run(&with_file(&["put", "jobs", "hello", "auth"]), &[]);
    assert_eq!(put.0, Some(0), "{}", put.1);
    // The read-only token, from the environment: reads, never writes.
    let reader = [("WALRUS_TOKEN", READER)];
    let read = run(&args(&["read", "jobs"]), &reader);
    assert_eq!(read.0, Some(0), "{}", read.1);
    assert!(read.1.contains("hello auth"), "{}", read.1);
    let denied = run(&args(&["put", "jobs", "nope"]), &reader);
    assert_eq!(denied.0, Some(1), "{}", denied.1);
    assert!(denied.1.contains("permission denied"), "{}", denied.1);
    // No token, and a wrong one.
    let none = run(&args(&["offsets", "jobs"]), &[]);
    assert_eq!(none.0, Some(1), "{}", none.1);
    assert!(none.1.contains("authentication required"), "{}", none.1);
    let wrong = run(
        &args(&["ping"]),
        &[("WALRUS_TOKEN", "e2e-wrong-token-000000000000")],
    );
    assert_eq!(wrong.0, Some(1), "{}", wrong.1);
    assert!(wrong.1.contains("authentication failed"), "{}", wrong.1);
    assert_eq!(admin.offsets("jobs").await.unwrap(), (0, 1), "one entry");

    let metrics = admin.metrics().await.unwrap().to_string();
    let state = admin.state("jobs").await.unwrap().to_string();
    assert_no_secret(&format!("{metrics}{state}"), "METRICS or STATE");
    node.terminate(Duration::from_secs(10));
    let log = all_logs(dir.path());
    assert!(
        log.contains("client_auth=true") && log.contains("unknown token"),
        "the log says auth is on and saw the wrong token:\n{log}"
    );
    assert_no_secret(&log, "the node's log");
}
