//! The openraft type configuration and the encoding shared by the log,
//! the snapshots and the wire.

use std::io::Cursor;

use openraft::{AnyError, BasicNode, StorageError, StorageIOError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use walrus_core::{CmdResult, MetadataCmd};

/// The payload of one Raft log entry: the commands of concurrent proposals,
/// applied in order. openraft 0.9 makes each entry durable before it takes
/// the next one, so batching proposals into one entry is what lets many
/// proposers share one fsync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataBatch(pub Vec<MetadataCmd>);

openraft::declare_raft_types!(
    /// Walrus metadata over openraft: a log entry carries a [`MetadataBatch`],
    /// applying it yields one [`CmdResult`] per command.
    pub TypeConfig:
        D = MetadataBatch,
        R = Vec<CmdResult>,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// Compact binary encoding (postcard) used for log entries and messages.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(value)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Wraps any displayable failure as an openraft storage read error.
pub fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read(AnyError::error(e)).into()
}

/// Wraps any displayable failure as an openraft storage write error.
pub fn write_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write(AnyError::error(e)).into()
}
