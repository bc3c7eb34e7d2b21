//! A custom build that swaps one backend: the reference stack (openraft +
//! redb metadata, TCP transport) with walrus-core's in-memory `MemLogStore`
//! in place of the memmap2 WAL. Any type that implements `LogStore` plugs in
//! the same way (likewise `MetadataStore` and `Transport` through `Node::new`).
//!
//! ```text
//! cargo run --example custom_backend -- --client-port 9095 --raft-port 9195 --data-dir /tmp/walrus-mem
//! ```
//!
//! It takes the same flags as `walrus-server`. Entries live in memory only:
//! a restart loses them (metadata survives), so this is for tests and demos.

use std::sync::Arc;

use clap::Parser;
use distributed_walrus::core::testing::MemLogStore;
use distributed_walrus::server::config::ServerConfig;
use distributed_walrus::server::stack::Stack;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .init();
    let config = ServerConfig::parse();
    let stack = Stack::start_with_log(&config, Arc::new(MemLogStore::new())).await?;
    println!(
        "node {} with an in-memory log on {}; Ctrl-C to stop",
        config.node_id,
        config.client_bind_addr()
    );
    tokio::signal::ctrl_c().await?;
    stack.shutdown().await;
    Ok(())
}
