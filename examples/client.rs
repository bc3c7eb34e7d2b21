//! The seed's programmatic usage, async and blocking. Start a node first
//! (`cargo run --bin walrus-server`), then: `cargo run --example client`
//! (or `cargo run --example client -- 127.0.0.1:9091,127.0.0.1:9092` to
//! give several nodes: the client fails over to the next when one is
//! down).
//!
//! An application depends on the `walrus-client` crate alone (it builds no
//! storage engine); `distributed_walrus::cli_client` is the same library
//! under the seed's path.

use anyhow::Result;
use distributed_walrus::cli_client::{CliClient, ReadOptions};
use distributed_walrus::client::blocking;

fn main() -> Result<()> {
    let arg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9091".into());
    let nodes: Vec<String> = arg.split(',').map(String::from).collect();

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async_usage(&nodes))?;
    // The blocking client must not run inside an async runtime: it owns
    // its own (current-thread) runtime.
    drop(runtime);
    blocking_usage(&nodes)
}

async fn async_usage(nodes: &[String]) -> Result<()> {
    let client = CliClient::with_nodes(nodes.iter().cloned());

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
        "appended {} messages ({failed} failed) through {}",
        batch.len() + 2 - failed,
        client.addr()
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

fn blocking_usage(nodes: &[String]) -> Result<()> {
    let client = blocking::Client::with_nodes(nodes.iter().cloned())?;
    client.put("logs", "written without async")?;
    // A consumer group: FETCH from the group's offset, process, COMMIT.
    let batch = client.fetch("example", "logs", ReadOptions::default())?;
    println!(
        "group example got {} entries; committing {}",
        batch.entries.len(),
        batch.next
    );
    client.commit("example", "logs", batch.next)?;
    match client.put("logs", "one more") {
        Ok(()) => println!("stored"),
        // Sent, answer lost: read the topic before sending it again.
        Err(e) if e.is_outcome_unknown() => println!("may or may not be stored: {e}"),
        // Certainly not stored: sending it again is safe.
        Err(e) if e.is_retryable() => println!("not stored, retry: {e}"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
