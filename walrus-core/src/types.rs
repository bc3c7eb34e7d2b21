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

/// A consumer group's name. Same rule as a topic name (letters, digits,
/// `.`, `_`, `-`; 1 to 255 bytes; not `.` or `..`), so a group is as safe
/// to show and store as a topic.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupName(String);

impl GroupName {
    /// Validates `name`; `Err(Error::BadRequest)` saying the rule if it
    /// breaks it.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        match TopicName::new(name) {
            Ok(valid) => Ok(GroupName(valid.0)),
            Err(_) => Err(Error::BadRequest(format!(
                "invalid group name: use 1 to {MAX_TOPIC_LEN} letters, digits, '.', '_' or '-' \
                 (not \".\" or \"..\")"
            ))),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for GroupName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        GroupName::new(s)
    }
}

impl From<GroupName> for String {
    fn from(g: GroupName) -> String {
        g.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A producer's name, chosen by the client (`PUTB … PRODUCER <id> <seq>`).
/// Same rule as a topic name, so it is as safe to show and store.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProducerId(String);

impl ProducerId {
    /// Validates `name`; `Err(Error::BadRequest)` saying the rule if it
    /// breaks it.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        match TopicName::new(name) {
            Ok(valid) => Ok(ProducerId(valid.0)),
            Err(_) => Err(Error::BadRequest(format!(
                "invalid producer id: use 1 to {MAX_TOPIC_LEN} letters, digits, '.', '_' or '-' \
                 (not \".\" or \"..\")"
            ))),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ProducerId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        ProducerId::new(s)
    }
}

impl From<ProducerId> for String {
    fn from(p: ProducerId) -> String {
        p.0
    }
}

impl fmt::Display for ProducerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ProducerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// An idempotent write's identity: the producer and its sequence number.
/// A producer numbers its writes to a topic 0, 1, 2, …; each number is
/// stored at most once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProducerSeq {
    pub producer: ProducerId,
    pub seq: u64,
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

/// A random 128-bit identity, shown as 32 hex digits.
macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(u128);

        impl $name {
            /// A fresh random identity (from the OS's random source).
            pub fn random() -> Self {
                $name(rand::random())
            }

            /// A fixed identity, for tests and in-memory stores.
            pub const fn from_u128(v: u128) -> Self {
                $name(v)
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Error::BadRequest(format!(
                        concat!("invalid ", $what, " id {:?}: expected 32 hex digits"),
                        s
                    )));
                }
                u128::from_str_radix(s, 16).map($name).map_err(|e| {
                    Error::BadRequest(format!(concat!("invalid ", $what, " id {:?}: {}"), s, e))
                })
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self, Error> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(s: $name) -> String {
                s.to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:032x}", self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{self}")
            }
        }
    };
}

hex_id!(
    /// The identity of one node's storage (its Raft metadata and its log):
    /// a random number written when the storage is created and recorded in
    /// the cluster metadata when the node joins. A node whose storage was
    /// wiped or replaced comes back with another one, so the cluster can tell
    /// "the same disk, restarted" from "a new, empty disk under an old name".
    StorageId,
    "storage"
);

hex_id!(
    /// The identity of one cluster, chosen when it is bootstrapped and
    /// carried by its consensus messages, so that a node of another cluster
    /// (a wrong address, a node that bootstrapped on its own) is refused.
    ClusterId,
    "cluster"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_ids_print_as_32_hex_digits_and_parse_back() {
        let id = StorageId::from_u128(0xabc);
        assert_eq!(id.to_string(), "00000000000000000000000000000abc");
        assert_eq!(id.to_string().parse::<StorageId>(), Ok(id));
        let r = StorageId::random();
        assert_eq!(r.to_string().parse::<StorageId>(), Ok(r));
        assert!("xyz".parse::<StorageId>().is_err());
        assert!("+0000000000000000000000000000abc"
            .parse::<StorageId>()
            .is_err());
    }

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
