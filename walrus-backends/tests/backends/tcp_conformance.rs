//! walrus-core's Transport conformance suite against the TCP transport on
//! loopback: real sockets, a crash is a shutdown of the receiver's
//! transport (its connections close mid-request).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpListener;
use walrus_backends::tcp::{TcpConfig, TcpTransport};
use walrus_core::testing::transport_conformance::{run, TransportFactory};
use walrus_core::{NodeId, RequestHandler, Transport};

pub(crate) fn config() -> TcpConfig {
    TcpConfig {
        connect_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_secs(1),
        reconnect_backoff_max: Duration::from_millis(100),
        ..TcpConfig::default()
    }
}

pub(crate) struct TcpFactory {
    config: TcpConfig,
    /// Each node's current transport (a crashed node's is shut down, and
    /// replaced when it starts again).
    transports: HashMap<NodeId, Arc<TcpTransport>>,
    addresses: HashMap<NodeId, String>,
    /// Each serving node's accept loop: a crash waits for it to end, so
    /// that its port is closed once `crash` returns. (Until then the
    /// kernel still completes connections into the listener's backlog,
    /// and a request written on one is reset unread: "no answer", when a
    /// crashed node must be plainly unreachable.)
    servers: HashMap<NodeId, tokio::task::JoinHandle<()>>,
}

impl TcpFactory {
    /// Every node's transport with `config`.
    pub(crate) fn new(config: TcpConfig) -> TcpFactory {
        TcpFactory {
            config,
            transports: HashMap::new(),
            addresses: HashMap::new(),
            servers: HashMap::new(),
        }
    }

    fn announce(&self, node: NodeId) {
        if let Some(addr) = self.addresses.get(&node) {
            for t in self.transports.values() {
                t.set_peer_address(node, addr);
            }
        }
    }
}

impl Drop for TcpFactory {
    fn drop(&mut self) {
        for t in self.transports.values() {
            t.shutdown();
        }
    }
}

#[async_trait]
impl TransportFactory for TcpFactory {
    async fn start(&mut self, node: NodeId, handler: Arc<dyn RequestHandler>) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("bound").to_string();
        let transport = TcpTransport::new(self.config.clone());
        let server = transport.serve(listener, handler);
        self.servers.insert(node, server);
        for (id, a) in &self.addresses {
            transport.set_peer_address(*id, a);
        }
        self.transports.insert(node, transport);
        self.addresses.insert(node, addr);
        self.announce(node);
    }

    fn transport(&mut self, node: NodeId) -> Arc<dyn Transport> {
        let transport = self
            .transports
            .entry(node)
            .or_insert_with(|| TcpTransport::new(self.config.clone()))
            .clone();
        for (id, a) in &self.addresses {
            transport.set_peer_address(*id, a);
        }
        transport
    }

    fn address(&self, node: NodeId) -> String {
        self.addresses[&node].clone()
    }

    async fn crash(&mut self, node: NodeId) {
        self.transports[&node].shutdown();
        if let Some(server) = self.servers.remove(&node) {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
    }

    async fn isolate(&mut self, node: NodeId, isolated: bool) {
        self.transports[&node].set_isolated(isolated);
    }

    fn answer_timeout(&self) -> Duration {
        self.config.request_timeout
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_tcp_transport_when_running_the_transport_suite_should_pass() {
    run(TcpFactory::new(config())).await;
}
