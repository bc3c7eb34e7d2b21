//! In-memory fakes of every backend trait, a simulated network, a test
//! cluster harness, and conformance suites that any backend must pass.
//!
//! They are public so that users test their own code (and their own
//! backends) on them, behind the cargo feature `testing` (off by default,
//! so that production builds carry no test code; core's own tests, the
//! backends' and the server's tests and walrus-sim turn it on):
//!
//! ```toml
//! [dev-dependencies]
//! walrus-core = { version = "0.1", features = ["testing"] }
//! ```
//!
//!
//! - [`MemLogStore`]: a [`LogStore`](crate::LogStore) in memory.
//! - [`FakeMetadataCluster`]: one metadata log shared by in-process nodes;
//!   its leader can be moved or cut off, and a proposal can commit yet fail.
//! - [`SimNetwork`]: a [`Transport`](crate::Transport) between in-process
//!   nodes that partitions, drops, delays, loses answers, times out and
//!   crashes nodes mid-request.
//! - [`TestCluster`]: N real nodes on those fakes, driven by text requests.
//! - [`ManualClock`]: a clock that moves only when the test advances it;
//!   [`SuspendableTime`]: a time source for a machine that is suspended.
//! - `log_store_conformance`, `metadata_store_conformance`,
//!   `transport_conformance`, `lease_provider_conformance`: suites.
//!
//! Time: the fakes and the node read time through tokio, so a test under
//! `#[tokio::test(start_paused = true)]` drives leases and failover with
//! a clock that jumps instead of waiting.

pub mod cluster;
pub mod fake_metadata;
pub mod lease_provider_conformance;
pub mod log_store_conformance;
pub mod manual_clock;
pub mod mem_log_store;
pub mod metadata_store_conformance;
pub mod sim_network;
pub mod transport_conformance;

pub use cluster::{sim_info, TestCluster};
pub use fake_metadata::{FakeMetadataCluster, FakeMetadataStore};
pub use manual_clock::{ManualClock, SuspendableTime};
pub use mem_log_store::MemLogStore;
pub use sim_network::{SimNetwork, SimTransport};
