//! End-to-end tests: real `walrus-server` processes, real sockets, real disks.
//!
//! One test binary, not one per file: each binary links the whole stack, and
//! forty of them filled a small CI disk. Pick a part with a filter, e.g.
//! `cargo test --test e2e partition`.

mod common;
#[path = "../../walrus-backends/tests/backends/pki.rs"]
mod pki;
#[path = "../../walrus-backends/tests/backends/tmpfs.rs"]
mod tmpfs;

mod auth;
mod cluster;
mod config_and_logs;
mod console;
mod consumers;
mod disk;
mod groups;
mod identity;
mod limits;
mod offsets;
mod partition;
mod produce;
mod prometheus;
mod replication;
mod retention;
mod single_node;
mod tls;
mod wal_damage;
