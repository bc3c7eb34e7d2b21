//! walrus-client's one test binary (a module per subject; pick one with a
//! filter, e.g. `cargo test -p walrus-client deps`).

mod deps;
