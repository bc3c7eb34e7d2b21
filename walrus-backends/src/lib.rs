//! # walrus-backends
//!
//! The concrete backends behind walrus-core's traits:
//!
//! - [`wal`]: a memmap2 write-ahead log ([`LogStore`](walrus_core::LogStore)).
//! - [`raft`]: openraft + redb ([`MetadataStore`](walrus_core::MetadataStore)).
//! - [`tcp`]: pooled TCP connections between nodes
//!   ([`Transport`](walrus_core::Transport)).
//! - [`stats`]: lock-free histograms for what Prometheus scrapes.

pub mod durable_dir;
pub mod raft;
pub mod stats;
pub mod tcp;
pub mod wal;
