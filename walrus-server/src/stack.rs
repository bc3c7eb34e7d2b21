//! Wires the reference stack: TCP transport → openraft+redb metadata →
//! memmap2 WAL → `Node`, then the inter-node port, cluster membership, the
//! node's loops and finally the client port.
//!
//! The order matters: the transport must serve the node (Raft messages and
//! forwarded requests) before the store bootstraps or joins, since joining
//! needs the cluster to reach us; the client port opens last, so a client
//! that gets an answer talks to a node that is fully up.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use walrus_backends::raft::{RaftConfig, RaftMetadataStore};
use walrus_backends::tcp::{TcpConfig, TcpTransport};
use walrus_backends::wal::WalStore;
use walrus_core::{LogStore, MetadataStore, Node, RequestHandler, SystemClock};

use crate::config::ServerConfig;
use crate::listener::ClientListener;

/// A running node with its ports open.
pub struct Stack {
    pub node: Arc<Node>,
    raft: Arc<RaftMetadataStore>,
    transport: Arc<TcpTransport>,
    clients: ClientListener,
    raft_server: tokio::task::JoinHandle<()>,
}

impl Stack {
    /// Opens this node's data, joins (or bootstraps, or rejoins) its
    /// cluster and opens the client port.
    pub async fn start(config: &ServerConfig) -> anyhow::Result<Stack> {
        let dir = config.node_dir();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        check_data_is_whole(&dir, config.node_id)?;
        let wal = WalStore::open(dir.join("wal"), config.wal_config())
            .with_context(|| format!("cannot open the write-ahead log in {}", dir.display()))?;
        Self::start_with_log(config, Arc::new(wal)).await
    }

    /// Like [`Stack::start`], with `log` in place of the memmap2 WAL: the
    /// seam a custom build uses to swap the storage backend.
    pub async fn start_with_log(
        config: &ServerConfig,
        log: Arc<dyn LogStore>,
    ) -> anyhow::Result<Stack> {
        let dir = config.node_dir();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;

        // Bind both ports first: a port in use fails fast, before any data
        // is opened.
        let raft_listener = TcpListener::bind(config.raft_bind_addr())
            .await
            .with_context(|| {
                format!(
                    "cannot listen on the inter-node address {} (is another node using it? pick another --raft-port)",
                    config.raft_bind_addr()
                )
            })?;
        let client_listener = TcpListener::bind(config.client_bind_addr())
            .await
            .with_context(|| {
                format!(
                    "cannot listen on the client address {} (is another node using it? pick another --client-port)",
                    config.client_bind_addr()
                )
            })?;

        let transport = TcpTransport::new(TcpConfig::default());

        let raft_config = RaftConfig::new(
            config.node_id,
            dir.join("raft"),
            config.raft_advertise_addr(),
            config.client_advertise_addr(),
        );
        let raft = RaftMetadataStore::open(raft_config, transport.clone())
            .await
            .context("cannot open the metadata store")?;

        let metadata: Arc<dyn MetadataStore> = raft.clone();
        let node = Node::new(
            config.node_config(),
            metadata,
            log,
            transport.clone(),
            Arc::new(SystemClock),
        );
        let handler: Arc<dyn RequestHandler> = node.clone();
        let raft_server = transport.serve(raft_listener, handler);
        tracing::info!(node = config.node_id, addr = %config.raft_bind_addr(), "inter-node port open");

        raft.bootstrap_or_join(config.join.clone())
            .await
            .context("cannot join the cluster (is --join pointing at a running member?)")?;
        tracing::info!(node = config.node_id, "cluster membership established");

        node.start();
        let clients =
            ClientListener::start(client_listener, node.clone(), config.listener_config())
                .context("cannot start the client listener")?;
        tracing::info!(node = config.node_id, addr = %clients.local_addr(), "client port open; node ready");
        Ok(Stack {
            node,
            raft,
            transport,
            clients,
            raft_server,
        })
    }

    /// Stops accepting clients, finishes in-flight requests, stops the
    /// node's loops (persisting cursors, syncing the log), then consensus
    /// and the transport.
    pub async fn shutdown(self) {
        if !self.clients.shutdown().await {
            tracing::warn!("some client requests did not finish within the drain timeout");
        }
        tracing::info!("client port closed");
        self.node.shutdown().await;
        tracing::info!("node stopped; log synced");
        self.raft.shutdown().await;
        self.transport.shutdown();
        self.raft_server.abort();
        tracing::info!("stopped");
    }
}

/// Refuses to start a node whose data directory holds only half of its
/// state. A member whose log was lost would report its pending segments as
/// empty (their entries gone for good); a log without its metadata would
/// make node 1 bootstrap a second cluster. Either is an operator's decision,
/// never something a restart does silently.
fn check_data_is_whole(dir: &std::path::Path, node_id: u64) -> anyhow::Result<()> {
    let (raft, wal) = (dir.join("raft"), dir.join("wal"));
    if raft.exists() && !wal.exists() {
        anyhow::bail!(
            "node {node_id} has its Raft metadata in {} but its write-ahead log {} is missing: \
             its entries were lost, and starting would report its segments as empty. \
             Restore {} from a backup; or, to accept the loss, create it empty (mkdir) and start again",
            raft.display(),
            wal.display(),
            wal.display()
        );
    }
    // A log directory holding no topic yet is what a first start that
    // stopped early leaves behind: nothing to lose there.
    let wal_has_entries = std::fs::read_dir(&wal)
        .map(|entries| entries.flatten().any(|e| e.path().is_dir()))
        .unwrap_or(false);
    if wal_has_entries && !raft.exists() {
        anyhow::bail!(
            "node {node_id} has a write-ahead log in {} but no Raft metadata in {}: \
             starting would make it a new member (node 1 would bootstrap a second cluster). \
             Restore {} from a backup; or, to discard this node's data, remove {}",
            wal.display(),
            raft.display(),
            raft.display(),
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_data_is_whole;

    #[test]
    fn given_a_node_dir_missing_half_its_state_should_refuse_to_start() {
        let dir = tempfile::tempdir().expect("a temp dir for the test");
        assert!(
            check_data_is_whole(dir.path(), 1).is_ok(),
            "a new node starts"
        );
        std::fs::create_dir(dir.path().join("raft")).unwrap();
        let err = check_data_is_whole(dir.path(), 1).unwrap_err().to_string();
        assert!(
            err.contains("write-ahead log") && err.contains("missing"),
            "{err}"
        );
        std::fs::create_dir(dir.path().join("wal")).unwrap();
        assert!(
            check_data_is_whole(dir.path(), 1).is_ok(),
            "a whole node starts"
        );
        std::fs::remove_dir(dir.path().join("raft")).unwrap();
        assert!(
            check_data_is_whole(dir.path(), 1).is_ok(),
            "an empty log is no loss"
        );
        std::fs::create_dir(dir.path().join("wal").join("logs")).unwrap();
        let err = check_data_is_whole(dir.path(), 1).unwrap_err().to_string();
        assert!(err.contains("no Raft metadata"), "{err}");
    }
}
