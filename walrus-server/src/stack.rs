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
use walrus_backends::durable_dir::create_dir_durable;
use walrus_backends::raft::{RaftConfig, RaftMetadataStore, RaftRouter};
use walrus_backends::tcp::{TcpConfig, TcpTransport};
use walrus_backends::wal::{WalStats, WalStore};
use walrus_core::{BootClock, LogStore, MetadataStore, Node, RequestHandler, StorageId};

use crate::config::ServerConfig;
use crate::http::{self, Instrumented, RequestStats};
use crate::identity;
use crate::listener::{ClientListener, ListenerConfig};

/// A running node with its ports open.
pub struct Stack {
    pub node: Arc<Node>,
    raft: Arc<RaftMetadataStore>,
    transport: Arc<TcpTransport>,
    clients: ClientListener,
    raft_server: tokio::task::JoinHandle<()>,
    /// The `--metrics-addr` endpoint, when asked for.
    metrics_server: Option<tokio::task::JoinHandle<()>>,
}

impl Stack {
    /// Opens this node's data, joins (or bootstraps, or rejoins) its
    /// cluster and opens the client port.
    pub async fn start(config: &ServerConfig) -> anyhow::Result<Stack> {
        let dir = config.node_dir();
        create_node_dir(&dir).await?;
        check_data_is_whole(&dir, config.node_id)?;
        let wal = WalStore::open(dir.join("wal"), config.wal_config())
            .with_context(|| format!("cannot open the write-ahead log in {}", dir.display()))?;
        let stats = wal.stats();
        Self::start_inner(config, Arc::new(wal), Some(stats)).await
    }

    /// Like [`Stack::start`], with `log` in place of the memmap2 WAL: the
    /// seam a custom build uses to swap the storage backend.
    pub async fn start_with_log(
        config: &ServerConfig,
        log: Arc<dyn LogStore>,
    ) -> anyhow::Result<Stack> {
        Self::start_inner(config, log, None).await
    }

    /// `wal`: the WAL's flush figures for `/metrics`, when `log` is the WAL.
    async fn start_inner(
        config: &ServerConfig,
        log: Arc<dyn LogStore>,
        wal: Option<Arc<WalStats>>,
    ) -> anyhow::Result<Stack> {
        let dir = config.node_dir();
        create_node_dir(&dir).await?;
        let existing = identity::load(&dir, config.node_id)?;
        if existing.is_some() && !dir.join("raft").exists() {
            anyhow::bail!(
                "node {id} has a storage identity in {dir} but no Raft metadata in {raft}: its data \
                 was removed and only the identity file is left. Restore {raft} from a backup; or, \
                 to start on empty storage, remove {dir} entirely: the cluster then refuses the \
                 node until an operator accepts the loss with `walrus-cli node replace-storage {id} \
                 <the new storage id it prints>`",
                id = config.node_id,
                dir = dir.display(),
                raft = dir.join("raft").display(),
            );
        }
        // A new storage gets its identity now; it is written once the
        // consensus directory exists, so an identity file always names a
        // storage that has (or had) one.
        let storage = existing.unwrap_or_else(StorageId::random);

        // Credentials are read before anything opens: a bad token file
        // stops the node at once, not after it joined its cluster.
        let auth_tokens = config.auth_tokens()?;
        let cluster_secret = config.cluster_secret()?;

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
        let metrics_listener = match &config.metrics_addr {
            None => None,
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!(
                    "cannot listen on the metrics address {addr} (is something else using it? pick another --metrics-addr)"
                )
            })?),
        };
        let client_listener = TcpListener::bind(config.client_bind_addr())
            .await
            .with_context(|| {
                format!(
                    "cannot listen on the client address {} (is another node using it? pick another --client-port)",
                    config.client_bind_addr()
                )
            })?;

        let transport = TcpTransport::new(TcpConfig {
            cluster_secret,
            ..TcpConfig::default()
        });

        let mut raft_config = RaftConfig::new(
            config.node_id,
            dir.join("raft"),
            config.raft_advertise_addr(),
            config.client_advertise_addr(),
        );
        raft_config.storage = Some(storage);
        let raft = RaftMetadataStore::open(raft_config, transport.clone())
            .await
            .context("cannot open the metadata store")?;
        if existing.is_none() {
            let (d, id) = (dir.clone(), config.node_id);
            tokio::task::spawn_blocking(move || identity::create(&d, id, storage)).await??;
            tracing::info!(node = config.node_id, %storage, "new storage identity written");
        }

        let metadata: Arc<dyn MetadataStore> = raft.clone();
        let mut node_config = config.node_config();
        node_config.storage = Some(storage);
        let node = Node::new(
            node_config,
            metadata,
            log,
            transport.clone(),
            // Leases and failover count time the machine spent suspended
            // (CLOCK_BOOTTIME): tokio's clock stops then, and a node that
            // wakes up would trust a lease the cluster has long moved past.
            Arc::new(BootClock::new()),
        );
        // Raft's own messages go to the store, everything else to the node.
        let handler: Arc<dyn RequestHandler> = RaftRouter::new(raft.clone(), node.clone());
        let raft_server = transport.serve(raft_listener, handler);
        tracing::info!(node = config.node_id, addr = %config.raft_bind_addr(), "inter-node port open");

        if let Err(e) = raft.bootstrap_or_join(config.join.clone()).await {
            transport.shutdown();
            raft_server.abort();
            raft.shutdown().await;
            return Err(e.context(format!(
                "node {} (storage {storage}) could not become part of its cluster",
                config.node_id
            )));
        }
        tracing::info!(node = config.node_id, "cluster membership established");

        node.start();
        let requests = Arc::new(RequestStats::default());
        let handler = Arc::new(Instrumented::new(node.clone(), requests.clone()));
        let listener_config = ListenerConfig {
            auth: auth_tokens,
            ..config.listener_config()
        };
        let clients = ClientListener::start(client_listener, handler, listener_config)
            .context("cannot start the client listener")?;
        let metrics_server = match metrics_listener {
            None => None,
            Some(l) => {
                let sources = http::Sources {
                    node: node.clone(),
                    requests,
                    listener: clients.stats(),
                    wal,
                    transport: transport.clone(),
                };
                let (addr, task) =
                    http::serve(l, sources).context("cannot start the metrics endpoint")?;
                tracing::info!(node = config.node_id, %addr, "metrics endpoint open: GET /metrics, console at /");
                Some(task)
            }
        };
        tracing::info!(node = config.node_id, addr = %clients.local_addr(), "client port open; node ready");
        Ok(Stack {
            node,
            raft,
            transport,
            clients,
            raft_server,
            metrics_server,
        })
    }

    /// Resolves when the cluster refuses this node's storage after it has
    /// started (a member restarting on a data directory the cluster no
    /// longer recognises), with the reason: the node must stop.
    pub async fn refused(&self) -> String {
        let mut rx = self.raft.refusals();
        let why = match rx.wait_for(|r| r.is_some()).await {
            Ok(r) => r.clone().unwrap_or_default(),
            // The store is gone: nothing will be refused any more.
            Err(_) => return std::future::pending().await,
        };
        why
    }

    /// Stops accepting clients, finishes in-flight requests, stops the
    /// node's loops (persisting cursors, syncing the log), then consensus
    /// and the transport.
    pub async fn shutdown(self) {
        self.node.stop_waiting();
        if !self.clients.shutdown().await {
            tracing::warn!("some client requests did not finish within the drain timeout");
        }
        tracing::info!("client port closed");
        self.node.shutdown().await;
        tracing::info!("node stopped; log synced");
        self.raft.shutdown().await;
        self.transport.shutdown();
        self.raft_server.abort();
        if let Some(m) = self.metrics_server {
            m.abort();
        }
        tracing::info!("stopped");
    }
}

/// Creates `<data-dir>/node_<id>` durably (each new directory fsynced in
/// its parent) before anything is written inside it.
async fn create_node_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || create_dir_durable(&d))
        .await?
        .with_context(|| format!("cannot create the data directory {}", dir.display()))
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

    #[tokio::test]
    async fn given_an_identity_file_without_its_raft_data_should_refuse_to_start() {
        use clap::Parser;
        let dir = tempfile::tempdir().expect("a temp dir for the test");
        let config = crate::config::ServerConfig::parse_from([
            "walrus-server",
            "--node-id",
            "3",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--client-port",
            "0",
            "--raft-port",
            "0",
        ]);
        let node_dir = config.node_dir();
        std::fs::create_dir_all(&node_dir).unwrap();
        crate::identity::create(&node_dir, 3, walrus_core::StorageId::random()).unwrap();
        let err = match super::Stack::start(&config).await {
            Ok(_) => panic!("a node whose data was removed around its identity started"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("only the identity file is left"), "{err}");
    }
}
