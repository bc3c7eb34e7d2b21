//! In-memory fakes of every backend trait, a simulated network, a clock
//! the test drives, and conformance suites that any backend must pass.
//!
//! They are public so that users test their own code (and their own
//! backends) on them:
//!
//! - `MemLogStore`: a [`LogStore`](crate::LogStore) in memory.
//! - `FakeMetadataCluster`: one metadata state shared by in-process nodes;
//!   its leader can be moved or cut off.
//! - `SimNetwork`: a [`Transport`](crate::Transport) between in-process
//!   nodes that partitions, drops and delays.
//! - `log_store_conformance`, `metadata_store_conformance`: suites.

pub mod fake_metadata;
pub mod log_store_conformance;
pub mod mem_log_store;
pub mod metadata_store_conformance;
pub mod sim_network;
