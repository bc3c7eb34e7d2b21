//! Tests of the real backends: the WAL (`wal_*`), openraft+redb (`raft_*`),
//! the TCP transport (`tcp_*`) and the fuzzers (`fuzz_*`).
//!
//! One test binary, not one per file: each binary links the whole stack, and
//! forty of them filled a small CI disk. Pick a part with a filter, e.g.
//! `cargo test -p walrus-backends wal_crash`.

#[path = "../../../walrus-core/tests/scenarios/fuzz_common/mod.rs"]
mod fuzz_common;
mod raft_common;
mod tcp_common;
mod tmpfs;
mod wal_common {
    pub mod payload;
    pub mod read;
}

mod fuzz_envelope;
mod fuzz_wal_recovery;
mod raft_bench;
mod raft_cluster;
mod raft_conformance;
mod raft_identity;
mod raft_node_lease;
mod raft_storage_suite;
mod tcp_conformance;
mod tcp_hostile;
mod tcp_secret;
mod tcp_throughput;
mod tcp_transport;
mod wal_conformance;
mod wal_crash;
mod wal_delete;
mod wal_disk_full;
mod wal_failed_sync;
mod wal_power_loss;
mod wal_proptest;
mod wal_quarantine;
mod wal_recovery;
mod wal_seal_at;
mod wal_space;
