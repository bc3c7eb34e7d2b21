//! The client listener on core's fakes: framing, pipelining, batching.
//!
//! One test binary, not one per file: each binary links the whole stack, and
//! forty of them filled a small CI disk. Pick a part with a filter, e.g.
//! `cargo test -p walrus-server pipelined`.

mod auth;
mod client;
mod listener_on_fakes;
mod pipelined_batches;
mod remove_node;
