//! # walrus-server
//!
//! The reference server (one concrete stack), the client library and the CLI.

pub mod client;
