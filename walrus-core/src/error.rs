//! The one error type of Walrus. Its `Display` is the text a client sees
//! after `ERR `, so the exact texts of the protocol contract live here.

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, SegmentKey};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// The topic was never registered.
    #[error("topic not found")]
    TopicNotFound,
    /// The topic name breaks the protocol's naming rule.
    #[error("invalid topic name")]
    InvalidTopicName,
    /// This node does not lead the segment and the write could not be forwarded.
    #[error("NotLeaderError")]
    NotLeader,
    /// This node led the segment but could not confirm its lease with the quorum.
    #[error("write lease expired")]
    LeaseExpired,
    /// The segment no longer takes appends (sealed, or full and about to be
    /// sealed). Internal: the node waits for the next segment and retries.
    #[error("segment {0} is sealed; retry")]
    SegmentSealed(SegmentKey),
    /// Data or consensus is out of reach for now; the text says what and the
    /// client should retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request was malformed; the text says how.
    #[error("{0}")]
    BadRequest(String),
    /// Local storage failed (disk full, I/O error). Nothing acknowledged is lost.
    #[error("storage error: {0}")]
    Storage(String),
    /// Stored data failed its checksum before the tail: never served.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A peer could not be reached.
    #[error("unavailable: node {0} is unreachable, retry")]
    Unreachable(NodeId),
    /// A request to another node took too long.
    #[error("unavailable: timed out waiting for {0}, retry")]
    Timeout(String),
    /// The node is shutting down.
    #[error("unavailable: node is shutting down, retry on another node")]
    ShuttingDown,
    /// A bug or an invariant broken elsewhere; the text says which.
    #[error("internal error: {0}")]
    Internal(String),
    /// Refused for good, not a passing condition: e.g. a node whose storage
    /// is not the one the cluster recorded for it. The text says what
    /// happened and what the operator can do. Retrying changes nothing.
    #[error("refused: {0}")]
    Refused(String),
}

impl Error {
    /// True for errors a client (or the node on its behalf) may retry safely.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader
                | Error::LeaseExpired
                | Error::SegmentSealed(_)
                | Error::Unavailable(_)
                | Error::Unreachable(_)
                | Error::Timeout(_)
                | Error::ShuttingDown
        )
    }

    pub fn storage(e: impl std::fmt::Display) -> Self {
        Error::Storage(e.to_string())
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Storage(e.to_string())
    }
}
