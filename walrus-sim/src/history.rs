//! What the clients saw, and what the cluster holds at the end: the two
//! inputs of the [checker](crate::checker).
//!
//! Times are durations since the start of the run (simulated time), so a
//! history prints and hashes the same in every replay.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

/// What a client may assume about one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `OK`: it must be read, once, in acknowledgement order.
    Acked,
    /// A "not applied" answer (`NotLeaderError`, `write lease expired`,
    /// `unavailable: …`, or the node was down): it must never be read.
    NotApplied,
    /// `outcome unknown`, `storage error`, or the node crashed while
    /// handling it: read at most once.
    Maybe,
}

impl Outcome {
    /// The class of an `ERR` text, by the contract of docs/architecture.md
    /// ("Errors: not applied, or outcome unknown"); `Err` for a text no
    /// write should get (a bug).
    pub fn of_error(text: &str) -> Result<Outcome, String> {
        const NOT_APPLIED: [&str; 3] = ["NotLeaderError", "write lease expired", "unavailable"];
        if text.starts_with("outcome unknown") {
            Ok(Outcome::Maybe)
        } else if NOT_APPLIED.iter().any(|p| text.starts_with(p)) {
            Ok(Outcome::NotApplied)
        } else if text.starts_with("storage error") || text.starts_with("corrupt data") {
            // "Failed" errors promise nothing either way.
            Ok(Outcome::Maybe)
        } else {
            Err(text.to_owned())
        }
    }
}

/// One write (a PUT, or one entry of a batch), after its last attempt.
#[derive(Debug, Clone)]
pub struct Write {
    pub topic: String,
    pub payload: Bytes,
    /// When its last attempt was sent (earlier attempts were not applied).
    pub invoked: Duration,
    pub done: Duration,
    pub outcome: Outcome,
}

/// One GET's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResult {
    Entry(Bytes),
    Empty,
    /// It may have taken an entry nobody received.
    Maybe,
    /// Not applied: it took nothing.
    NotApplied,
}

#[derive(Debug, Clone)]
pub struct Read {
    pub topic: String,
    pub result: ReadResult,
}

/// An entry a READ by offset returned.
#[derive(Debug, Clone)]
pub struct ReadAt {
    pub topic: String,
    pub offset: u64,
    pub payload: Bytes,
}

/// Everything the clients saw in one run.
#[derive(Debug, Default, Clone)]
pub struct History {
    pub writes: Vec<Write>,
    pub reads: Vec<Read>,
    /// Entries READ by offset returned (the cursor-free path).
    pub reads_at: Vec<ReadAt>,
    /// Answers no request may get (`internal error`, a panic, …).
    pub violations: Vec<String>,
}

/// One stored entry of a topic, in read order.
#[derive(Debug, Clone)]
pub struct Stored {
    pub payload: Bytes,
    pub segment: u64,
    /// When its segment leader appended it.
    pub appended: Option<Duration>,
}

/// One segment of a topic at the end of the run.
#[derive(Debug, Clone)]
pub struct SegmentTruth {
    pub id: u64,
    pub leader: u64,
    /// The first append its leader made to it.
    pub first_append: Option<Duration>,
}

/// One topic at the end of the run, read from the segment leaders' stores
/// in the order the committed metadata gives.
#[derive(Debug, Default, Clone)]
pub struct TopicTruth {
    pub entries: Vec<Stored>,
    pub segments: Vec<SegmentTruth>,
    /// The persisted shared GET cursor.
    pub cursor: u64,
}

/// The cluster's data at the end of the run.
#[derive(Debug, Default, Clone)]
pub struct Truth {
    pub topics: BTreeMap<String, TopicTruth>,
    /// What does not hold in the final state (a sealed count that is not
    /// the store's, a segment still pending after every node is back).
    pub problems: Vec<String>,
}
