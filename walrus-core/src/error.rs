//! The one error type of Walrus. Its `Display` is the text a client sees
//! after `ERR `, so the exact texts of the protocol contract live here.
//!
//! Errors fall in three classes, and a client must be able to tell them
//! apart because a PUT is not idempotent:
//!
//! - **Not applied, safe to retry** ([`Error::is_retryable`]): the request
//!   certainly had no effect (`NotLeaderError`, `write lease expired`,
//!   `unavailable: …`).
//! - **Outcome unknown** ([`Error::is_outcome_unknown`]): the request was
//!   sent and its answer lost, or a write was stored but could not be
//!   acknowledged. It may or may not have taken effect; resending a PUT
//!   may store it twice (`outcome unknown: …`).
//! - **Failed**: everything else; retrying gives the same answer until the
//!   cause (named in the text) is fixed.

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
    /// Data or consensus is out of reach for now; the text says what. The
    /// request was not carried out: the client may retry it.
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
    /// A peer could not be reached; the request was not sent.
    #[error("unavailable: node {0} is unreachable, retry")]
    Unreachable(NodeId),
    /// Waiting for something that has not happened yet (a rollover, the
    /// metadata to catch up) took too long; nothing was carried out. A
    /// request that was sent and not answered is `NoAnswer` instead.
    #[error("unavailable: timed out waiting for {0}, retry")]
    Timeout(String),
    /// The node is shutting down; the request was not carried out.
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
    // New variants go last: the inter-node envelope encodes a variant by its
    // position, so moving one would garble errors between nodes of
    // different versions.
    /// The request may or may not have been carried out: it was sent and
    /// its answer never came, or a write was stored but could not be
    /// acknowledged. The text says which and what the client can do (read
    /// the topic to find out). Never retried blindly.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// Transport level: a request to another node was sent (wholly or in
    /// part) and no answer came (timeout, connection lost). The receiver may
    /// or may not have handled it. Callers turn it into `Unavailable` for
    /// requests that change nothing and `OutcomeUnknown` for those that do.
    /// The text says who did not answer and how (e.g. `no answer from node
    /// 2 at host:port: connection lost after the request was sent`).
    #[error("outcome unknown: {0}; the request may or may not have been carried out")]
    NoAnswer(String),
    /// A read reached offsets whose entries are gone for good: their node's
    /// storage was lost and an operator accepted it (`REPLACE-STORAGE`).
    /// The text names the range and the offset to read on from. Reading
    /// them again gives the same answer.
    #[error("lost: {0}")]
    Lost(String),
}

impl Error {
    /// True for errors that guarantee the request was not carried out, so a
    /// client (or the node on its behalf) may retry it without risk of
    /// storing a write twice. False for an unknown outcome.
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

    /// True when the request may or may not have been carried out: check
    /// (read the topic) before sending it again.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown(_) | Error::NoAnswer(_))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_the_seed_texts_should_keep_them_exactly() {
        assert_eq!(Error::NotLeader.to_string(), "NotLeaderError");
        assert_eq!(Error::LeaseExpired.to_string(), "write lease expired");
        assert_eq!(Error::TopicNotFound.to_string(), "topic not found");
    }

    #[test]
    fn given_any_error_should_be_at_most_one_of_retryable_and_outcome_unknown() {
        let key = SegmentKey::new(crate::TopicName::new("t").unwrap(), 1);
        let all = [
            Error::TopicNotFound,
            Error::InvalidTopicName,
            Error::NotLeader,
            Error::LeaseExpired,
            Error::SegmentSealed(key),
            Error::Unavailable("x".into()),
            Error::BadRequest("x".into()),
            Error::Storage("x".into()),
            Error::Corrupt("x".into()),
            Error::Unreachable(2),
            Error::Timeout("x".into()),
            Error::ShuttingDown,
            Error::Internal("x".into()),
            Error::Refused("x".into()),
            Error::OutcomeUnknown("x".into()),
            Error::NoAnswer("x".into()),
            Error::Lost("x".into()),
        ];
        for e in &all {
            assert!(!(e.is_retryable() && e.is_outcome_unknown()), "{e:?}");
            // The class is in the text's first words, for clients.
            let text = e.to_string();
            if e.is_outcome_unknown() {
                assert!(text.starts_with("outcome unknown: "), "{text}");
            }
            if text.starts_with("unavailable") {
                assert!(e.is_retryable(), "{text}");
            }
        }
    }
}
