//! The replicated cluster metadata: [`ClusterState`] and the commands that
//! change it. `apply` is plain deterministic code, so every
//! [`MetadataStore`](crate::MetadataStore) backend applies commands identically.

mod state;

pub use state::*;
