//! A local 3-node cluster in one command:
//!
//! ```text
//! cargo run --example local_cluster
//! ```
//!
//! Builds `walrus-server` if needed, starts nodes 1–3 (clients on
//! 127.0.0.1:9091–9093, Raft on 9191–9193, data under ./data), and stops
//! them with SIGTERM on Ctrl-C. Talk to it with
//! `cargo run --bin walrus-cli -- --addr 127.0.0.1:9092`.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use distributed_walrus::cli_client::CliClient;

fn server_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/local_cluster → target/<profile>/walrus-server
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .context("cannot locate the target directory")?
        .join("walrus-server");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "-p", "walrus-server", "--bin", "walrus-server"])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let built = build.status().map(|s| s.success()).unwrap_or(false);
    if !bin.exists() {
        bail!("{} is missing and building it failed", bin.display());
    }
    if !built {
        eprintln!(
            "warning: could not rebuild walrus-server; using {}",
            bin.display()
        );
    }
    Ok(bin)
}

fn start(bin: &PathBuf, id: u16) -> Result<Child> {
    let mut cmd = Command::new(bin);
    cmd.args(["--node-id", &id.to_string()])
        .args(["--data-dir", "./data"])
        .args(["--client-port", &(9090 + id).to_string()])
        .args(["--raft-port", &(9190 + id).to_string()]);
    if id != 1 {
        cmd.args(["--join", "127.0.0.1:9191"]);
    }
    cmd.spawn()
        .with_context(|| format!("cannot start node {id} ({})", bin.display()))
}

async fn wait_for(addr: &str, voters: Option<usize>) -> Result<()> {
    let client = CliClient::new(addr).with_timeout(Duration::from_secs(2));
    for _ in 0..300 {
        if let Ok(m) = client.metrics().await {
            let n = m["membership_config"]["membership"]["configs"]
                .as_array()
                .and_then(|c| c.last())
                .and_then(|c| c.as_array())
                .map_or(0, |c| c.len());
            if m["current_leader"].is_u64() && voters.is_none_or(|v| n >= v) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{addr} did not become ready in 30 s")
}

#[tokio::main]
async fn main() -> Result<()> {
    let bin = server_binary()?;
    let mut nodes = Vec::new();
    for id in 1..=3u16 {
        nodes.push(start(&bin, id)?);
        // Node 1 bootstraps; the others join one at a time.
        wait_for("127.0.0.1:9091", Some(id as usize)).await?;
    }
    println!("\n3-node cluster up: clients on 127.0.0.1:9091, :9092, :9093");
    println!("try: cargo run --bin walrus-cli -- --addr 127.0.0.1:9092 register logs");
    println!("Ctrl-C stops every node.\n");
    tokio::signal::ctrl_c().await?;
    for n in &nodes {
        let _ = Command::new("kill")
            .args(["-TERM", &n.id().to_string()])
            .status();
    }
    for mut n in nodes {
        let _ = n.wait();
    }
    Ok(())
}
