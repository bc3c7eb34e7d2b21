//! # walrus-server
//!
//! The reference server (one concrete stack) and the CLI (`walrus-cli`, over
//! the `walrus-client` crate).
//!
//! - [`listener`]: the client listener (framing, pipelining, limits), generic
//!   over a [`listener::ClientHandler`].
//! - [`config`]: the server's flags and environment.
//! - [`stack`]: wires the reference backends into a running node.
//! - [`identity`]: the node's storage identity file.
//! - [`metrics`]: the METRICS answer, rendered from core's `NodeMetrics`.
//! - [`http`]: `--metrics-addr`: `GET /metrics` for Prometheus and the web
//!   console at `/`.

pub mod config;
pub mod http;
pub mod identity;
pub mod listener;
pub mod metrics;
pub mod stack;
