//! # walrus-core
//!
//! Everything in Walrus that decides, and nothing that touches a disk or a
//! socket of a particular backend:
//!
//! - [`types`]: node ids, validated topic names, segment keys, offsets.
//! - [`metadata`]: the replicated [`ClusterState`] and its commands.
//! - The four backend traits, each with its contract: [`MetadataStore`],
//!   [`LogStore`], [`Transport`] (+ [`RequestHandler`]), [`LeaseProvider`].
//! - [`protocol`]: the client wire format (frames, requests, responses).
//! - [`locks`]: the lock policy: std locks are taken so that a panicking
//!   holder never makes later callers panic.
//! - [`node`]: the node logic, written against the traits only: routing and
//!   forwarding, lease checks, rollover, failover, the shared GET cursor.
//! - `testing` (cargo feature `testing`, off by default): in-memory fakes
//!   of every trait, a simulated network and conformance suites, for
//!   core's tests and for yours. Production builds leave it out; enable it
//!   where you test:
//!
//!   ```toml
//!   [dev-dependencies]
//!   walrus-core = { version = "0.1", features = ["testing"] }
//!   ```

pub mod clock;
pub mod error;
pub mod lease;
pub mod locks;
pub mod log_store;
pub mod metadata;
pub mod metadata_store;
pub mod node;
pub mod protocol;
pub mod secret;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod transport;
pub mod types;

pub use clock::{BootClock, Clock, SystemClock};
pub use error::{Error, Result};
pub use lease::LeaseProvider;
pub use log_store::{Appended, LogStore, SegmentInfo, SegmentLimit, StorageHealth};
pub use metadata::{ClusterState, CmdResult, MetadataCmd, NodeInfo, Retention, SegmentStatus};
pub use metadata_store::{
    ConsensusMembership, ConsensusMetrics, ConsensusRole, ConsensusStatus, ConsensusVote,
    LogPosition, MetadataStore,
};
pub use node::{Node, NodeConfig, NodeMetrics, StorageMetrics};
pub use secret::Secret;
pub use transport::{NodeRequest, NodeResponse, ProducerMark, RequestHandler, Transport};
pub use types::{
    ClusterId, GroupName, NodeId, Offset, ProducerId, ProducerSeq, SegmentId, SegmentKey,
    StorageId, TopicName,
};
