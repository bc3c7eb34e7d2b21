//! The seed's programmatic usage. Start a node first (`cargo run --bin
//! walrus-server`), then: `cargo run --example client`.

use anyhow::Result;
use distributed_walrus::cli_client::{CliClient, ReadOptions};

#[tokio::main]
async fn main() -> Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9091".into());
    let client = CliClient::new(addr);

    // Register topic first
    client.register("logs").await?;

    // Append messages
    client.put("logs", "hello world").await?;
    client.put("logs", "{\"event\":\"test\"}").await?;

    // Many at once, pipelined on the one connection.
    let batch: Vec<String> = (1..=100).map(|i| format!("message {i}")).collect();
    let failed = client
        .put_many("logs", &batch, 64)
        .await
        .into_iter()
        .filter(|r| r.is_err())
        .count();
    println!(
        "appended {} messages ({failed} failed)",
        batch.len() + 2 - failed
    );

    // Read through the topic's shared cursor.
    if let Some(entry) = client.get("logs").await? {
        println!("first unread entry: {entry}");
    }
    // Read by offset: moves no cursor; any number of readers, each at its
    // own place. `next` is where to go on.
    let (first, end) = client.offsets("logs").await?;
    let batch = client.read("logs", first, ReadOptions::default()).await?;
    for entry in batch.entries.iter().take(3) {
        println!("offset {}: {}", entry.offset, entry.payload);
    }
    println!("offsets {first}..{end}; read on from {}", batch.next);
    println!("STATE logs = {}", client.state("logs").await?);
    Ok(())
}
