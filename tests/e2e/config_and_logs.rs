//! The real server started from a TOML config file, with flags and the
//! environment over it, logging JSON lines for a log shipper.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use distributed_walrus::cli_client::CliClient;

use crate::common::{free_port, server_binary};

#[tokio::test]
async fn given_a_config_file_with_json_logs_when_started_should_apply_it_under_env_and_flags_and_log_json_lines(
) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (client_port, raft_port, file_port) = (free_port(), free_port(), free_port());
    let config = dir.path().join("walrus.toml");
    std::fs::write(
        &config,
        format!(
            "# as an operator would write it\n\
             node-id = 7\n\
             data-dir = {:?}\n\
             client-port = {file_port}\n\
             raft_port = {raft_port}\n\
             wal-file-bytes = 1048576\n\
             log-format = \"json\"\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let stderr_path = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut child = Command::new(server_binary())
        .arg("--config")
        .arg(&config)
        // The flag wins over the file's client port...
        .args(["--client-port", &client_port.to_string()])
        // ...and the environment over the file's node id.
        .env("WALRUS_NODE_ID", "3")
        .env("RUST_LOG", "info,openraft=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawning walrus-server");
    let client = CliClient::new(format!("127.0.0.1:{client_port}"))
        .with_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(2));
    let start = Instant::now();
    let metrics = loop {
        match client.metrics().await {
            Ok(m) if m["current_leader"].is_u64() => break m,
            _ if start.elapsed() > Duration::from_secs(30) => {
                let _ = child.kill();
                panic!(
                    "the node did not come up on the flag's port: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_eq!(metrics["id"], 3, "WALRUS_NODE_ID wins over the file");
    client.register("logs").await.unwrap();
    client.put("logs", "hello").await.unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(
        dir.path().join("data/node_3").is_dir(),
        "the data directory is the file's"
    );

    let text = std::fs::read_to_string(&stderr_path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l}"))
        })
        .collect();
    let starting = lines
        .iter()
        .find(|l| l["message"] == "starting")
        .unwrap_or_else(|| panic!("no `starting` line in {text}"));
    assert_eq!(starting["level"], "INFO");
    assert_eq!(starting["node"], 3);
    assert_eq!(
        starting["client"],
        format!("127.0.0.1:{client_port}"),
        "{starting}"
    );
    assert!(starting["timestamp"].is_string(), "{starting}");
    assert!(
        lines.iter().any(|l| l["message"] == "shutting down"),
        "{text}"
    );
}

#[test]
fn given_a_config_file_with_an_unknown_setting_should_refuse_to_start_and_name_it() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("walrus.toml");
    std::fs::write(&config, "node-id = 2\nfsycn = \"never\"\n").unwrap();
    let out = Command::new(server_binary())
        .arg("--config")
        .arg(&config)
        .output()
        .expect("running walrus-server");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&config.display().to_string())
            && stderr.contains("unknown setting `fsycn`"),
        "{stderr}"
    );
}
