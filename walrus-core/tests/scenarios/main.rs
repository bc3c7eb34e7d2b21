//! Scenarios of the routing, rollover, lease and failover logic, run on the
//! in-memory fakes of `walrus_core::testing`.
//!
//! One test binary, not one per file: each binary links the whole stack, and
//! forty of them filled a small CI disk. Pick a part with a filter, e.g.
//! `cargo test -p walrus-core rollover`.

mod fuzz_common;

mod batch;
mod cursor;
mod fencing;
mod fuzz_request;
mod groups;
mod identity;
mod lease_conformance;
mod lease_provider;
mod lifecycle;
mod locks;
mod log_conformance_mem;
mod membership;
mod metadata_conformance_fake;
mod metadata_repeats;
mod offsets;
mod outcome;
mod power_loss;
mod produce;
mod races;
mod replication;
mod replication_failover;
mod replication_seeded;
mod retention;
mod rollover;
mod routing;
mod storage_health;
mod suspend;
mod transport_conformance_sim;
