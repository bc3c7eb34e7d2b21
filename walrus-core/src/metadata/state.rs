use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, Offset, SegmentId, SegmentKey, TopicName};

/// Where a node can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Inter-node address (`host:port`): Raft and forwarded requests.
    pub raft_addr: String,
    /// Client address (`host:port`) for the text protocol.
    pub client_addr: String,
}

/// The entry count of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SegmentStatus {
    /// The segment takes appends on its leader.
    Open,
    /// Sealed with an exact, final entry count.
    Sealed { count: u64 },
    /// Its leader failed before the count was known. The leader reports the
    /// count when it comes back; readers wait here, never skip.
    Pending,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub id: SegmentId,
    pub leader: NodeId,
    pub status: SegmentStatus,
}

/// One topic: its segments in order (the last one is the current one) and
/// its shared GET cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicState {
    pub segments: Vec<SegmentMeta>,
    /// The persisted shared GET cursor: entries before it were delivered.
    /// It may lag the live cursor (persisted in batches): after a crash some
    /// entries are delivered again, none skipped.
    pub cursor: Offset,
}

/// Where a logical offset lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// In `segment` at entry `index`, held by `leader`. `sealed_count` is
    /// `Some` for a sealed segment (then `index < count`).
    At {
        segment: SegmentId,
        leader: NodeId,
        index: u64,
        sealed_count: Option<u64>,
    },
    /// Behind a segment whose count is still pending: reads wait there.
    BlockedBy { segment: SegmentId, leader: NodeId },
}

impl TopicState {
    pub fn current(&self) -> &SegmentMeta {
        self.segments
            .last()
            .expect("a topic always has at least one segment (created with one)")
    }

    pub fn segment(&self, id: SegmentId) -> Option<&SegmentMeta> {
        // Segment ids are 1, 2, 3, … in order.
        self.segments.get(id.checked_sub(1)? as usize)
    }

    /// The logical offset of the first entry of `id`, or `None` when an
    /// earlier segment's count is pending.
    pub fn base_offset(&self, id: SegmentId) -> Option<Offset> {
        let mut base = 0;
        for seg in &self.segments {
            if seg.id == id {
                return Some(base);
            }
            match seg.status {
                SegmentStatus::Sealed { count } => base += count,
                _ => return None,
            }
        }
        None
    }

    /// Sum of the sealed counts before the current segment (the reference's
    /// `last_sealed_entry_offset`); pending segments count as 0 here.
    pub fn last_sealed_entry_offset(&self) -> Offset {
        self.segments
            .iter()
            .map(|s| match s.status {
                SegmentStatus::Sealed { count } => count,
                _ => 0,
            })
            .sum()
    }

    /// Finds the segment and index that hold logical `offset`.
    pub fn locate(&self, offset: Offset) -> Location {
        let mut base = 0;
        for seg in &self.segments {
            match seg.status {
                SegmentStatus::Sealed { count } => {
                    if offset < base + count {
                        return Location::At {
                            segment: seg.id,
                            leader: seg.leader,
                            index: offset - base,
                            sealed_count: Some(count),
                        };
                    }
                    base += count;
                }
                SegmentStatus::Pending => {
                    return Location::BlockedBy {
                        segment: seg.id,
                        leader: seg.leader,
                    }
                }
                SegmentStatus::Open => {
                    return Location::At {
                        segment: seg.id,
                        leader: seg.leader,
                        index: offset - base,
                        sealed_count: None,
                    }
                }
            }
        }
        unreachable!("the last segment of a topic is always open")
    }
}

/// A change to the cluster metadata, committed through consensus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCmd {
    /// Creates `topic` with segment 1 led by `leader`. Idempotent.
    CreateTopic { topic: TopicName, leader: NodeId },
    /// Closes segment `segment` of `topic` and opens `segment + 1` on
    /// `next_leader`. `count: Some(n)` is a normal rollover (the leader has
    /// sealed the segment locally with `n` entries); `None` is a failover
    /// (the leader is unreachable, its count becomes pending). A command
    /// naming a segment that is no longer current changes nothing, so a
    /// stale or repeated rollover is harmless.
    Roll {
        topic: TopicName,
        segment: SegmentId,
        count: Option<u64>,
        next_leader: NodeId,
    },
    /// The leader of a pending segment reports its final count.
    ReportCount {
        topic: TopicName,
        segment: SegmentId,
        count: u64,
    },
    /// Adds a node or updates its addresses.
    UpsertNode { node: NodeId, info: NodeInfo },
    /// Moves the persisted GET cursor forward (never backward).
    AdvanceCursor { topic: TopicName, offset: Offset },
    /// Does nothing. Used to confirm a leader's commit index.
    Noop,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmdResult {
    /// The state changed.
    Applied,
    /// The command was valid but changed nothing (repeat, stale rollover,
    /// existing topic).
    Unchanged,
    /// The command refers to something that does not exist.
    Rejected(String),
}

/// The whole replicated metadata. Cloned cheaply enough: it holds segment
/// metadata, never data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Number of commands applied (including no-ops): a version for
    /// "at least as new as" comparisons.
    pub version: u64,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    pub topics: BTreeMap<TopicName, TopicState>,
}

impl ClusterState {
    /// Applies one committed command. Deterministic: the same commands in
    /// the same order give the same state on every node.
    pub fn apply(&mut self, cmd: &MetadataCmd) -> CmdResult {
        self.version += 1;
        match cmd {
            MetadataCmd::CreateTopic { topic, leader } => {
                if self.topics.contains_key(topic) {
                    return CmdResult::Unchanged;
                }
                self.topics.insert(
                    topic.clone(),
                    TopicState {
                        segments: vec![SegmentMeta {
                            id: 1,
                            leader: *leader,
                            status: SegmentStatus::Open,
                        }],
                        cursor: 0,
                    },
                );
                CmdResult::Applied
            }
            MetadataCmd::Roll {
                topic,
                segment,
                count,
                next_leader,
            } => {
                let Some(t) = self.topics.get_mut(topic) else {
                    return CmdResult::Rejected(format!("topic {topic} does not exist"));
                };
                let current = t
                    .segments
                    .last_mut()
                    .expect("a topic always has at least one segment");
                if current.id != *segment {
                    return CmdResult::Unchanged;
                }
                current.status = match count {
                    Some(n) => SegmentStatus::Sealed { count: *n },
                    None => SegmentStatus::Pending,
                };
                let id = segment + 1;
                t.segments.push(SegmentMeta {
                    id,
                    leader: *next_leader,
                    status: SegmentStatus::Open,
                });
                CmdResult::Applied
            }
            MetadataCmd::ReportCount {
                topic,
                segment,
                count,
            } => {
                let Some(t) = self.topics.get_mut(topic) else {
                    return CmdResult::Rejected(format!("topic {topic} does not exist"));
                };
                let Some(seg) = segment
                    .checked_sub(1)
                    .and_then(|i| t.segments.get_mut(i as usize))
                else {
                    return CmdResult::Rejected(format!(
                        "segment {topic}:{segment} does not exist"
                    ));
                };
                if seg.status != SegmentStatus::Pending {
                    return CmdResult::Unchanged;
                }
                seg.status = SegmentStatus::Sealed { count: *count };
                CmdResult::Applied
            }
            MetadataCmd::UpsertNode { node, info } => {
                if self.nodes.get(node) == Some(info) {
                    return CmdResult::Unchanged;
                }
                self.nodes.insert(*node, info.clone());
                CmdResult::Applied
            }
            MetadataCmd::AdvanceCursor { topic, offset } => {
                let Some(t) = self.topics.get_mut(topic) else {
                    return CmdResult::Rejected(format!("topic {topic} does not exist"));
                };
                if *offset <= t.cursor {
                    return CmdResult::Unchanged;
                }
                t.cursor = *offset;
                CmdResult::Applied
            }
            MetadataCmd::Noop => CmdResult::Unchanged,
        }
    }

    pub fn topic(&self, topic: &TopicName) -> Option<&TopicState> {
        self.topics.get(topic)
    }

    /// The node that leads the current segment of `topic`.
    pub fn current_segment(&self, topic: &TopicName) -> Option<SegmentKey> {
        let t = self.topics.get(topic)?;
        Some(SegmentKey::new(topic.clone(), t.current().id))
    }

    /// Segments led by `node` whose count is pending: the node reports them
    /// when it is back.
    pub fn pending_segments_of(&self, node: NodeId) -> Vec<SegmentKey> {
        let mut out = Vec::new();
        for (name, t) in &self.topics {
            for s in &t.segments {
                if s.leader == node && s.status == SegmentStatus::Pending {
                    out.push(SegmentKey::new(name.clone(), s.id));
                }
            }
        }
        out
    }

    /// The STATE JSON of `topic`: the reference's fields
    /// (`current_segment`, `leader_node`, `last_sealed_entry_offset`,
    /// `sealed_segments`, `segment_leaders`) plus `pending_segments` and
    /// `cursor` of ours.
    pub fn topic_json(&self, topic: &TopicName) -> Option<serde_json::Value> {
        let t = self.topics.get(topic)?;
        let mut sealed = serde_json::Map::new();
        let mut leaders = serde_json::Map::new();
        let mut pending = Vec::new();
        for s in &t.segments {
            leaders.insert(s.id.to_string(), s.leader.into());
            match s.status {
                SegmentStatus::Sealed { count } => {
                    sealed.insert(s.id.to_string(), count.into());
                }
                SegmentStatus::Pending => pending.push(s.id),
                SegmentStatus::Open => {}
            }
        }
        let current = t.current();
        Some(serde_json::json!({
            "topic": topic.as_str(),
            "current_segment": current.id,
            "leader_node": current.leader,
            "last_sealed_entry_offset": t.last_sealed_entry_offset(),
            "sealed_segments": sealed,
            "segment_leaders": leaders,
            "pending_segments": pending,
            "cursor": t.cursor,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> TopicName {
        TopicName::new(s).unwrap()
    }

    fn roll(t: &str, segment: SegmentId, count: Option<u64>, next: NodeId) -> MetadataCmd {
        MetadataCmd::Roll {
            topic: topic(t),
            segment,
            count,
            next_leader: next,
        }
    }

    #[test]
    fn given_a_topic_when_rolled_twice_for_the_same_segment_should_roll_once() {
        let mut s = ClusterState::default();
        s.apply(&MetadataCmd::CreateTopic {
            topic: topic("logs"),
            leader: 1,
        });
        assert_eq!(s.apply(&roll("logs", 1, Some(10), 2)), CmdResult::Applied);
        assert_eq!(s.apply(&roll("logs", 1, Some(10), 2)), CmdResult::Unchanged);
        let t = s.topic(&topic("logs")).unwrap();
        assert_eq!(t.segments.len(), 2);
        assert_eq!(t.current().leader, 2);
        assert_eq!(t.last_sealed_entry_offset(), 10);
    }

    #[test]
    fn given_a_pending_segment_when_locating_past_it_should_block_until_reported() {
        let mut s = ClusterState::default();
        s.apply(&MetadataCmd::CreateTopic {
            topic: topic("t"),
            leader: 1,
        });
        s.apply(&roll("t", 1, Some(3), 2));
        s.apply(&roll("t", 2, None, 3));
        let t = s.topic(&topic("t")).unwrap();
        assert_eq!(
            t.locate(2),
            Location::At {
                segment: 1,
                leader: 1,
                index: 2,
                sealed_count: Some(3)
            }
        );
        assert_eq!(
            t.locate(3),
            Location::BlockedBy {
                segment: 2,
                leader: 2
            }
        );
        assert_eq!(s.pending_segments_of(2).len(), 1);
        s.apply(&MetadataCmd::ReportCount {
            topic: topic("t"),
            segment: 2,
            count: 4,
        });
        let t = s.topic(&topic("t")).unwrap();
        assert_eq!(
            t.locate(7),
            Location::At {
                segment: 3,
                leader: 3,
                index: 0,
                sealed_count: None
            }
        );
        assert_eq!(t.base_offset(3), Some(7));
    }

    #[test]
    fn state_json_has_the_reference_fields() {
        let mut s = ClusterState::default();
        s.apply(&MetadataCmd::CreateTopic {
            topic: topic("logs"),
            leader: 1,
        });
        s.apply(&roll("logs", 1, Some(5), 2));
        let j = s.topic_json(&topic("logs")).unwrap();
        assert_eq!(j["current_segment"], 2);
        assert_eq!(j["leader_node"], 2);
        assert_eq!(j["last_sealed_entry_offset"], 5);
        assert_eq!(j["sealed_segments"]["1"], 5);
        assert_eq!(j["segment_leaders"]["2"], 2);
    }

    #[test]
    fn cursor_never_moves_backward() {
        let mut s = ClusterState::default();
        s.apply(&MetadataCmd::CreateTopic {
            topic: topic("t"),
            leader: 1,
        });
        s.apply(&MetadataCmd::AdvanceCursor {
            topic: topic("t"),
            offset: 5,
        });
        assert_eq!(
            s.apply(&MetadataCmd::AdvanceCursor {
                topic: topic("t"),
                offset: 3
            }),
            CmdResult::Unchanged
        );
        assert_eq!(s.topic(&topic("t")).unwrap().cursor, 5);
    }
}
