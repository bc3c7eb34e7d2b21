//! TLS on both ports of the real server: the client port spoken to by a
//! client that is not ours (Python's `ssl`, i.e. OpenSSL), by walrus-cli and
//! by the client library (async and blocking); a plain-TCP client refused
//! without a byte; a 3-node cluster with mutual TLS on the inter-node port;
//! and a node whose certificate the cluster's CA did not sign kept out.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use distributed_walrus::cli_client::{CliClient, TlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{frame, server_binary, voters, Cluster, ClusterOptions, NodeSpec, ServerProc};
use crate::pki::{CertFiles, TestCa};

fn path(p: &Path) -> String {
    p.to_str().expect("test paths are UTF-8").to_string()
}

/// Node 1 alone, TLS on its client port.
fn start_tls_node(dir: &Path, files: &CertFiles) -> ServerProc {
    ServerProc::start(NodeSpec::local(
        1,
        dir,
        None,
        vec![
            ("WALRUS_TLS_CERT".into(), path(&files.cert)),
            ("WALRUS_TLS_KEY".into(), path(&files.key)),
        ],
    ))
}

fn tls_client(addr: &str, ca: &Path) -> CliClient {
    CliClient::new(addr)
        .with_tls(TlsConfig::from_ca_file(ca).expect("loading the CA"))
        .with_timeout(Duration::from_secs(10))
}

async fn wait_ping(client: &CliClient, node: &ServerProc) {
    let start = Instant::now();
    while let Err(e) = client.ping().await {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node never answered over TLS: {e}\n{}",
            node.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TLS client that is not ours: Python's `ssl` (OpenSSL), verifying the
/// server against the CA and the name `127.0.0.1`. Prints the TLS version,
/// then each answer on a line.
const PYTHON_CLIENT: &str = r#"
import socket, ssl, struct, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
def recv(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise SystemExit("connection closed mid-answer")
        out += chunk
    return out
def request(s, body):
    body = body.encode()
    s.sendall(struct.pack("<I", len(body)) + body)
    (n,) = struct.unpack("<I", recv(s, 4))
    return recv(s, n).decode()
with socket.create_connection((host, port)) as raw:
    with ctx.wrap_socket(raw, server_hostname=host) as s:
        print(s.version())
        for body in sys.argv[4:]:
            print(request(s, body))
"#;

fn python(args: &[&str]) -> std::process::Output {
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", "import ssl"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("no python3 with the ssl module: apt-get install -y python3");
    Command::new(python)
        .arg("-c")
        .arg(PYTHON_CLIENT)
        .args(args)
        .output()
        .expect("running the Python TLS client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_tls_on_the_client_port_when_a_python_ssl_client_puts_and_gets_should_answer_over_verified_tls(
) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "walrus");
    let node = start_tls_node(dir.path(), &ca.sign("server"));
    let addr = node.spec.client_addr();
    wait_ping(&tls_client(&addr, &ca.cert), &node).await;

    let port = node.spec.client_port.to_string();
    let out = python(&[
        "127.0.0.1",
        &port,
        &path(&ca.cert),
        "REGISTER secure",
        "PUT secure hello over tls",
        "GET secure",
        "GET secure",
    ]);
    assert!(
        out.status.success(),
        "python ssl client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(lines[0].starts_with("TLSv1."), "{lines:?}");
    assert_eq!(lines[1..], ["OK", "OK", "OK hello over tls", "EMPTY"]);

    // The same client trusting another CA refuses the server.
    let other = TestCa::new(dir.path(), "other");
    let out = python(&["127.0.0.1", &port, &path(&other.cert), "GET secure"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CERTIFICATE_VERIFY_FAILED"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_tls_on_the_client_port_when_a_plain_tcp_client_sends_a_request_should_get_only_a_closed_connection(
) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "walrus");
    let node = start_tls_node(dir.path(), &ca.sign("server"));
    let addr = node.spec.client_addr();
    let client = tls_client(&addr, &ca.cert);
    wait_ping(&client, &node).await;
    client.register("secure").await.unwrap();

    let mut raw = TcpStream::connect(&addr).await.unwrap();
    raw.write_all(&frame(b"PUT secure plaintext"))
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut got))
        .await
        .expect("the server closes a plain connection");
    assert!(
        got.is_empty(),
        "a plain-TCP client got {} bytes: {:?}",
        got.len(),
        String::from_utf8_lossy(&got)
    );
    // Closed: EOF, or a reset for the request it left unread.
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    // Nothing was stored, and TLS clients are still served.
    assert_eq!(client.get("secure").await.unwrap(), None);
    // The library without TLS settings gets an error, not an answer.
    let plain = CliClient::new(&addr).with_timeout(Duration::from_secs(5));
    assert!(plain.ping().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_tls_on_the_client_port_when_walrus_cli_and_the_blocking_client_use_the_ca_should_work_and_refuse_a_wrong_name(
) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "walrus");
    let node = start_tls_node(dir.path(), &ca.sign("server"));
    let addr = node.spec.client_addr();
    wait_ping(&tls_client(&addr, &ca.cert), &node).await;

    let cli = server_binary().with_file_name("walrus-cli");
    let run = |args: &[&str]| {
        let out = Command::new(&cli)
            .args(["--addr", &addr, "--retry-ms", "0"])
            .args(args)
            .output()
            .expect("running walrus-cli");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ca_file = path(&ca.cert);
    let with_ca = |args: &[&str]| {
        let mut all = vec!["--tls-ca", ca_file.as_str()];
        all.extend_from_slice(args);
        run(&all)
    };
    assert_eq!(with_ca(&["register", "cli"]).0, Some(0));
    assert_eq!(with_ca(&["put", "cli", "from walrus-cli"]).0, Some(0));
    let (code, out, err) = with_ca(&["get", "cli"]);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "OK from walrus-cli"),
        "{err}"
    );

    // localhost is in the certificate too; a name that is not, is refused.
    let (code, _, err) = with_ca(&["--tls-server-name", "localhost", "state", "cli"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = with_ca(&["--tls-server-name", "walrus.example", "state", "cli"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("TLS handshake failed"), "{err}");
    // Without --tls-ca, no answer comes.
    let (code, out, _) = run(&["state", "cli"]);
    assert_ne!(code, Some(0), "{out}");

    // The blocking client, over the async client with TLS set.
    let ca_path = ca.cert.clone();
    let addr2 = addr.clone();
    // A thread of its own: the blocking client refuses to run inside the
    // test's runtime.
    let got = std::thread::spawn(move || {
        let client =
            distributed_walrus::cli_client::blocking::Client::wrap(tls_client(&addr2, &ca_path))
                .expect("a runtime");
        client.put("cli", "from the blocking client")?;
        client.get("cli")
    })
    .join()
    .expect("the blocking client's thread")
    .expect("the blocking client over TLS");
    assert_eq!(got.as_deref(), Some("from the blocking client"));
}

/// Mutual TLS on every node's inter-node port, all signed by `ca`; plain
/// client ports (so the harness's clients work).
fn node_tls_options(ca: &TestCa, files: &CertFiles) -> ClusterOptions {
    let mut opts = ClusterOptions::default();
    opts.env.extend([
        ("WALRUS_NODE_TLS_CA".to_string(), path(&ca.cert)),
        ("WALRUS_NODE_TLS_CERT".to_string(), path(&files.cert)),
        ("WALRUS_NODE_TLS_KEY".to_string(), path(&files.key)),
    ]);
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_mutual_tls_on_the_node_port_when_three_nodes_form_a_cluster_should_replicate_and_forward(
) {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new(pki.path(), "cluster");
    let cluster = Cluster::start(3, node_tls_options(&ca, &ca.sign("node"))).await;
    assert_eq!(voters(&cluster.client(1).metrics().await.unwrap()).len(), 3);
    cluster.register(2, "tls-topic").await;
    // Writes through every node: the followers forward to the topic's
    // leader over the TLS node port.
    for id in cluster.ids() {
        cluster
            .client(id)
            .put("tls-topic", format!("via node {id}"))
            .await
            .unwrap_or_else(|e| panic!("PUT via node {id}: {e}"));
    }
    let mut read = Vec::new();
    while let Some(e) = cluster.client(3).get("tls-topic").await.unwrap() {
        read.push(e);
    }
    assert_eq!(read, ["via node 1", "via node 2", "via node 3"]);
    for id in cluster.ids() {
        let log = cluster.nodes[&id].log_tail(200);
        assert!(log.contains("tls=true"), "node {id}: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_mutual_tls_on_the_node_port_when_a_node_with_a_certificate_of_another_ca_joins_should_be_refused(
) {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new(pki.path(), "cluster");
    let mut cluster = Cluster::start(1, node_tls_options(&ca, &ca.sign("node"))).await;
    let join = cluster.nodes[&1].spec.raft_addr();

    // Node 2 trusts the cluster's CA, but its own certificate is another
    // CA's: the cluster refuses its connections, so it cannot join.
    let rogue_ca = TestCa::new(pki.path(), "rogue");
    let rogue = rogue_ca.sign("node-2");
    let env = node_tls_options(&ca, &rogue).env;
    let spec = NodeSpec::local(2, cluster.dir.path(), Some(join), env);
    cluster.nodes.insert(2, ServerProc::start(spec));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let metrics = cluster.client(1).metrics().await.unwrap();
    assert_eq!(voters(&metrics), [1], "{metrics}");
    let members = metrics["membership_config"]["membership"]["nodes"].to_string();
    assert!(
        !members.contains("\"2\""),
        "node 2 became a member: {members}"
    );
    let log = cluster.nodes[&1].log_tail(200);
    assert!(log.contains("refused a node connection"), "{log}");
}
