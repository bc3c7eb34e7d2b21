//! The node logic, written against the traits only: routing and forwarding,
//! lease checks, rollover, failover and the shared GET cursor.
//! See `docs/architecture.md` for the design.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, DEFAULT_FAILOVER_MARGIN, DEFAULT_LEASE, DEFAULT_LEASE_RENEW};
use crate::log_store::LogStore;
use crate::metadata_store::MetadataStore;
use crate::protocol::{Request, Response};
use crate::transport::Transport;
use crate::types::NodeId;

/// Settings of one node's logic.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// Entries per segment before rollover (`WALRUS_MAX_SEGMENT_ENTRIES`).
    pub max_segment_entries: u64,
    /// Backstop rollover check period (`WALRUS_MONITOR_CHECK_MS`).
    pub monitor_interval: Duration,
    /// Write-lease duration.
    pub lease: Duration,
    /// Lease renewal period (the seed's 100 ms).
    pub lease_renew: Duration,
    /// Failover waits `lease + failover_margin` after last hearing from a node.
    pub failover_margin: Duration,
    /// How long a request waits for a rollover or failover before answering
    /// a retryable error.
    pub request_timeout: Duration,
}

impl NodeConfig {
    pub fn new(node_id: NodeId) -> Self {
        NodeConfig {
            node_id,
            max_segment_entries: 1_000_000,
            monitor_interval: Duration::from_millis(1000),
            lease: DEFAULT_LEASE,
            lease_renew: DEFAULT_LEASE_RENEW,
            failover_margin: DEFAULT_FAILOVER_MARGIN,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// One Walrus node: answers client [`Request`]s and other nodes'
/// [`NodeRequest`](crate::NodeRequest)s (it is the [`RequestHandler`](crate::RequestHandler)
/// to give the transport's receiving side).
pub struct Node {
    _private: (),
}

impl Node {
    /// Builds a node over one stack of backends. Call [`Node::start`] to run
    /// its background loops (lease renewal, rollover monitor, failover,
    /// cursor persistence).
    pub fn new(
        _config: NodeConfig,
        _metadata: Arc<dyn MetadataStore>,
        _log: Arc<dyn LogStore>,
        _transport: Arc<dyn Transport>,
        _clock: Arc<dyn Clock>,
    ) -> Arc<Node> {
        todo!("node logic: issue 2")
    }

    /// Spawns the background loops on the current tokio runtime.
    pub fn start(self: &Arc<Self>) {
        todo!("node logic: issue 2")
    }

    /// Answers one client request.
    pub async fn handle(&self, _req: Request) -> Response {
        todo!("node logic: issue 2")
    }

    /// Stops the background loops, persists the GET cursors and syncs the
    /// log store. In-flight requests finish first (the server stops
    /// accepting before calling this).
    pub async fn shutdown(&self) {
        todo!("node logic: issue 2")
    }
}
