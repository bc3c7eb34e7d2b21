//! The client library: `CliClient`.
