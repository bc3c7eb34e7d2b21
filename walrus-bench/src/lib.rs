//! walrus-bench: a load generator for Walrus, or for anything that speaks
//! its framing (`[u32 LE length][body]`), plus `walrus-echo`, the trivial
//! server that gives the ceiling of the network stack and the client.
//!
//! - [`run`]: one load run (workloads, connections, pipeline depth, rate).
//! - [`conn`]: one connection's send/receive loop.
//! - [`consume`]: the consumer workloads (read, fetch, tail-latency).
//! - [`stats`]: counters, the HDR latency histogram and the [`stats::Report`].
//! - [`payload`]: payloads with unique ids for `--verify`.
//! - [`verify`]: reading everything back and checking it.
//! - [`echo`]: the echo server.
//! - [`probe`]: time-to-first-write probes for start-up and failover.
//! - [`wire`]: cutting frames and sorting answers.
//! - [`cli`]: the command line.

pub mod cli;
pub mod conn;
pub mod consume;
pub mod echo;
pub mod payload;
pub mod probe;
pub mod run;
pub mod stats;
pub mod verify;
pub mod wire;
