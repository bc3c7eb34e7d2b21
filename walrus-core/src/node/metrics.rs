//! [`NodeMetrics`]: what a node reports about itself (METRICS).

use serde::{Deserialize, Serialize};

use crate::metadata_store::ConsensusMetrics;
use crate::types::NodeId;

/// What a node reports about itself: its consensus, as its
/// [`MetadataStore`](crate::MetadataStore) sees it, and what is ours. The
/// server renders it as the METRICS answer in the protocol's field names
/// (docs/protocol.md); [`Node::handle`](crate::Node::handle) answers METRICS
/// with this struct's own JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMetrics {
    pub node: NodeId,
    pub consensus: ConsensusMetrics,
    /// Topics in this node's applied metadata.
    pub topics: usize,
    /// The version of this node's applied metadata.
    pub metadata_version: u64,
    pub write_lease_valid: bool,
    pub storage: StorageMetrics,
    /// Segments of every topic with fewer copies than their topic's
    /// replication factor, as this node's applied metadata says
    /// ([`ClusterState::under_replicated_count`](crate::metadata::ClusterState::under_replicated_count)).
    /// (Default 0: metrics serialised before it.)
    #[serde(default)]
    pub under_replicated_segments: usize,
}

/// What the log store reports of its storage's health: non-zero means an
/// operator should look at the disk (the node's log says which segment).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageMetrics {
    pub failed_syncs: u64,
    pub failed_segments: usize,
    pub quarantined_segments: usize,
}

impl super::Node {
    /// This node's metrics, read now.
    pub fn metrics(&self) -> NodeMetrics {
        let state = self.metadata.state();
        let health = self.log.health();
        NodeMetrics {
            node: self.id,
            consensus: self.metadata.metrics(),
            topics: state.topics.len(),
            metadata_version: state.version,
            write_lease_valid: self.lease.is_valid(),
            storage: StorageMetrics {
                failed_syncs: health.failed_syncs,
                failed_segments: health.failed_segments.len(),
                quarantined_segments: health.quarantined_segments.len(),
            },
            under_replicated_segments: state.under_replicated_count(),
        }
    }
}
