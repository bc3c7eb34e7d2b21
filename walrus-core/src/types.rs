//! Domain types shared by every layer: node ids, validated topic names,
//! segment ids and keys, logical offsets.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A node's stable identity. Persisted; never reused for another machine.
pub type NodeId = u64;

/// A segment's number within its topic. The first segment of a topic is 1.
pub type SegmentId = u64;

/// A per-topic logical offset: entries are numbered 0, 1, 2, … across all
/// of the topic's segments, with no holes.
pub type Offset = u64;

/// The longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

/// A topic name that has been validated: 1 to 255 bytes of
/// `A-Z a-z 0-9 . _ -`, and not `.` or `..`.
///
/// Because the only way to get a `TopicName` is through [`TopicName::new`],
/// code that builds file names from it never sees a path separator.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicName(String);

impl TopicName {
    /// Validates `name`; `Err(Error::InvalidTopicName)` if it breaks the rule.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        let valid_chars = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if name.is_empty()
            || name.len() > MAX_TOPIC_LEN
            || !valid_chars
            || name == "."
            || name == ".."
        {
            return Err(Error::InvalidTopicName);
        }
        Ok(TopicName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TopicName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        TopicName::new(s)
    }
}

impl From<TopicName> for String {
    fn from(t: TopicName) -> String {
        t.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// One segment of one topic, shown as `topic:segment` (the seed's lease-key
/// form). The unit of leadership, sealing and local storage.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SegmentKey {
    pub topic: TopicName,
    pub segment: SegmentId,
}

impl SegmentKey {
    pub fn new(topic: TopicName, segment: SegmentId) -> Self {
        SegmentKey { topic, segment }
    }
}

impl fmt::Display for SegmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.topic, self.segment)
    }
}

impl fmt::Debug for SegmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.topic, self.segment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_the_protocol_rule() {
        for ok in ["logs", "a", "A-b_c.d", "0", &"x".repeat(255), "..."] {
            assert!(TopicName::new(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../etc",
            "a b",
            "é",
            &"x".repeat(256),
            "a\0",
        ] {
            assert_eq!(TopicName::new(bad), Err(Error::InvalidTopicName), "{bad:?}");
        }
    }

    #[test]
    fn segment_keys_display_as_topic_colon_segment() {
        let key = SegmentKey::new(TopicName::new("logs").unwrap(), 3);
        assert_eq!(key.to_string(), "logs:3");
    }
}
