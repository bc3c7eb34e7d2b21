//! # distributed-walrus
//!
//! The facade of the Walrus workspace: one dependency that re-exports the
//! core ([`core`]), the backends ([`backends`]), the server pieces
//! ([`server`]) and the client library ([`client`]), plus [`cli_client`]
//! so that the seed's `use distributed_walrus::cli_client::CliClient;`
//! works.
//!
//! An application that only talks to a cluster depends on `walrus-client`
//! alone: it builds none of the storage engines.

pub use walrus_backends as backends;
pub use walrus_client as client;
pub use walrus_core as core;
pub use walrus_server as server;

/// The client library under the seed's name (see [`client`]).
pub mod cli_client {
    pub use walrus_client::*;
}
