//! # distributed-walrus
//!
//! The facade of the Walrus workspace: one dependency that re-exports the
//! core ([`core`]), the backends ([`backends`]) and the server pieces
//! ([`server`]), plus [`cli_client`] so that the seed's
//! `use distributed_walrus::cli_client::CliClient;` works.

pub use walrus_backends as backends;
pub use walrus_core as core;
pub use walrus_server as server;

/// The client library (see `walrus_server::client`).
pub mod cli_client {
    pub use walrus_server::client::*;
}
