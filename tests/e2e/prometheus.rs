//! `--metrics-addr` (here through `WALRUS_METRICS_ADDR`): the real server's
//! `/metrics`, fetched over a socket and read by Prometheus's own Python
//! parser, not by ours.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{free_port, Cluster, ClusterOptions};

/// Prints every sample as `name{labels} value`, one per line, labels
/// sorted; fails (non-zero exit) on text the parser rejects.
const PARSE: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        print("%s %s{%s} %r" % (family.type, s.name, labels, s.value))
"#;

/// A Python that has `prometheus_client` (Debian's package installs it for
/// /usr/bin/python3, which another python3 on the PATH may not see).
fn python() -> &'static str {
    ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", "import prometheus_client"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("no python3 with prometheus_client: apt-get install -y python3-prometheus-client")
}

/// `(type, name{labels})` → value, as the Python parser read `text`.
fn parse(text: &str) -> BTreeMap<String, (String, f64)> {
    let mut child = Command::new(python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the Python parser");
    child
        .stdin
        .take()
        .expect("stdin was piped")
        .write_all(text.as_bytes())
        .expect("writing the exposition to the parser");
    let out = child.wait_with_output().expect("the parser's output");
    assert!(
        out.status.success(),
        "prometheus_client rejected the exposition: {}\n---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("the parser prints UTF-8")
        .lines()
        .map(|line| {
            let mut f = line.splitn(3, ' ');
            let (kind, sample, value) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            let value = value.parse().expect("the parser prints numbers");
            (sample.to_string(), (kind.to_string(), value))
        })
        .collect()
}

/// One HTTP/1.1 exchange: `(status line, headers and body)`.
async fn http(addr: &str, request_line: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connecting to the metrics port");
    let req = format!("{request_line}\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("the metrics endpoint answers and closes within 10 s")
        .unwrap();
    let raw = String::from_utf8(raw).expect("a text answer");
    let (status, rest) = raw.split_once("\r\n").expect("a status line");
    (status.to_string(), rest.to_string())
}

async fn scrape(addr: &str) -> BTreeMap<String, (String, f64)> {
    let (status, rest) = http(addr, "GET /metrics HTTP/1.1").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{rest}");
    let (head, body) = rest.split_once("\r\n\r\n").expect("headers, then the body");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    parse(body)
}

fn value(samples: &BTreeMap<String, (String, f64)>, key: &str) -> f64 {
    match samples.get(key) {
        Some((_, v)) => *v,
        None => panic!(
            "no sample {key}; samples: {:?}",
            samples.keys().collect::<Vec<_>>()
        ),
    }
}

#[tokio::test]
async fn given_metrics_addr_when_a_put_is_stored_should_expose_it_to_a_prometheus_parser() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut opts = ClusterOptions::default();
    opts.env
        .push(("WALRUS_METRICS_ADDR".into(), metrics.clone()));
    let cluster = Cluster::start(1, opts).await;
    cluster.register(1, "metered").await;

    let before = scrape(&metrics).await;
    cluster
        .client(1)
        .put("metered", "one entry")
        .await
        .expect("PUT");
    let after = scrape(&metrics).await;

    let put = r#"walrus_requests_total{command="put"}"#;
    assert_eq!(after[put].0, "counter");
    assert_eq!(value(&after, put) - value(&before, put), 1.0, "one PUT");
    let errors = r#"walrus_request_errors_total{command="put"}"#;
    assert_eq!(value(&after, errors), 0.0);
    let latency = r#"walrus_request_duration_seconds_count{command="put"}"#;
    assert_eq!(after[latency].0, "histogram");
    assert_eq!(value(&after, latency) - value(&before, latency), 1.0);
    let inf = r#"walrus_request_duration_seconds_bucket{command="put",le="+Inf"}"#;
    assert_eq!(value(&after, inf), value(&after, latency));
    assert!(
        value(&after, "walrus_client_received_bytes_total{}")
            > value(&before, "walrus_client_received_bytes_total{}")
    );
    assert!(value(&after, "walrus_client_sent_bytes_total{}") > 0.0);
    assert_eq!(
        value(&after, r#"walrus_topic_entries{topic="metered"}"#),
        1.0
    );
    assert_eq!(value(&after, "walrus_raft_leader{}"), 1.0);
    assert_eq!(value(&after, "walrus_raft_is_leader{}"), 1.0);
    assert!(value(&after, "walrus_raft_term{}") >= 1.0);
    assert!(value(&after, "walrus_raft_commit_index{}") >= 1.0);
    assert_eq!(value(&after, "walrus_segments_pending{}"), 0.0);
    assert!(after.contains_key("walrus_client_connections{}"));

    // The WAL's syncer: the PUT (fsync always) waited for one flush.
    let grew = |key: &str| value(&after, key) - value(&before, key);
    assert_eq!(
        after["walrus_wal_sync_duration_seconds_count{}"].0,
        "histogram"
    );
    assert!(grew("walrus_wal_sync_duration_seconds_count{}") >= 1.0);
    assert!(grew("walrus_wal_sync_duration_seconds_sum{}") > 0.0);
    assert!(grew("walrus_wal_flushes_total{}") >= 1.0);
    assert_eq!(after["walrus_wal_group_commit_size_count{}"].0, "histogram");
    assert!(grew("walrus_wal_group_commit_size_count{}") >= 1.0);
    assert!(grew("walrus_wal_group_commit_size_sum{}") >= 1.0);
    // Per topic: the PUT's 9 payload bytes; none before it.
    let bytes = r#"walrus_topic_put_bytes_total{topic="metered"}"#;
    assert!(!before.contains_key(bytes), "no bytes before the first PUT");
    assert_eq!(after[bytes], ("counter".to_string(), 9.0));
    assert_eq!(value(&after, "walrus_segments_under_replicated{}"), 0.0);
    assert!(value(&after, "process_resident_memory_bytes{}") > 0.0);
    assert!(value(&after, "walrus_process_anonymous_memory_bytes{}") > 0.0);
    assert!(
        value(&after, "walrus_process_anonymous_memory_bytes{}")
            <= value(&after, "process_resident_memory_bytes{}")
    );

    let (status, rest) = http(&metrics, "GET / HTTP/1.1").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "the console");
    assert!(rest.contains("Content-Type: text/html"), "{rest}");
    let (status, _) = http(&metrics, "GET /nothing-here HTTP/1.1").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = http(&metrics, "GET /api/topic/bad*name/tail HTTP/1.1").await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    let (status, _) = http(&metrics, "GET /api/topic/absent/tail HTTP/1.1").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, rest) = http(&metrics, "GET /api/topic/metered/tail?n=5 HTTP/1.1").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (_, body) = rest.split_once("\r\n\r\n").expect("headers, then the body");
    let tail: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(tail["entries"][0]["text"], "one entry", "{tail}");
    assert_eq!(tail["entries"][0]["offset"], 0, "{tail}");
    let long = format!("GET /metrics HTTP/1.1\r\nX-Padding: {}", "x".repeat(20_000));
    let (status, _) = http(&metrics, &long).await;
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
    let (status, _) = http(&metrics, "POST /metrics HTTP/1.1").await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
}
