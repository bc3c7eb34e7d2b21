//! # walrus-server
//!
//! The reference server (one concrete stack), the client library and the CLI.
//!
//! - [`listener`]: the client listener (framing, pipelining, limits), generic
//!   over a [`listener::ClientHandler`].
//! - [`config`]: the server's flags and environment.
//! - [`stack`]: wires the reference backends into a running node.
//! - [`client`]: [`client::CliClient`], the client library.
//! - [`identity`]: the node's storage identity file.
//! - [`metrics`]: the METRICS answer, rendered from core's `NodeMetrics`.

pub mod client;
pub mod config;
pub mod identity;
pub mod listener;
pub mod metrics;
pub mod stack;
