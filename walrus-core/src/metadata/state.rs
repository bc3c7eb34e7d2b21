use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::types::{
    ClusterId, GroupName, NodeId, Offset, ProducerId, SegmentId, SegmentKey, StorageId, TopicName,
};

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
    /// Was pending when its leader's storage was lost, and an operator
    /// accepted the loss (`ReplaceStorage`). `count` is the number of its
    /// entries readers had already been given through the shared cursor:
    /// they keep their offsets; the entries after them are gone, and
    /// readers go on with the next segment.
    Lost { count: u64 },
}

impl SegmentMeta {
    /// The replica set: the leader first, then the followers.
    pub fn replicas(&self) -> Vec<NodeId> {
        std::iter::once(self.leader)
            .chain(self.followers.iter().copied())
            .collect()
    }

    /// The replicas that still count as copies: the replica set without
    /// the nodes removed from the cluster (`RemoveNode`), leader first.
    pub fn holders(&self, removed: &BTreeSet<NodeId>) -> Vec<NodeId> {
        self.replicas()
            .into_iter()
            .filter(|n| !removed.contains(n))
            .collect()
    }

    /// Takes `node`'s copy out of the replica set, when another copy
    /// stays: a follower is dropped; a leader is replaced by the first
    /// follower (reads of a closed segment go to its leader).
    fn drop_copy(&mut self, node: NodeId) -> bool {
        if self.leader == node {
            if self.followers.is_empty() {
                return false;
            }
            self.leader = self.followers.remove(0);
            self.moves += 1;
            return true;
        }
        let before = self.followers.len();
        self.followers.retain(|f| *f != node);
        let changed = before != self.followers.len();
        if changed {
            self.moves += 1;
        }
        changed
    }

    /// How many replicas (the leader included) must hold an entry before
    /// it is acknowledged: a majority of the replica set.
    pub fn quorum(&self) -> usize {
        let replicas = self.followers.len() + 1;
        replicas / 2 + 1
    }
}

impl SegmentStatus {
    /// The entries the segment occupies in the topic's offsets, once final.
    pub fn final_count(&self) -> Option<u64> {
        match self {
            SegmentStatus::Sealed { count } | SegmentStatus::Lost { count } => Some(*count),
            SegmentStatus::Open | SegmentStatus::Pending => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub id: SegmentId,
    pub leader: NodeId,
    /// The nodes that keep copies of the segment besides its leader
    /// (`rf - 1` of them when enough voters were live at its opening). The
    /// leader acknowledges an entry once a majority of `leader + followers`
    /// holds it. Empty for an unreplicated segment (and in snapshots from
    /// before replication), which keeps those snapshots byte for byte.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub followers: Vec<NodeId>,
    pub status: SegmentStatus,
    /// When the consensus leader first saw the segment closed (ms since
    /// the Unix epoch, `StampClosed`): what retention by age counts from.
    /// `None` until stamped (and in snapshots from before retention).
    #[serde(default)]
    pub closed_at_ms: Option<u64>,
    /// Payload bytes of the closed segment, as its leader reports them
    /// from its store (`RecordSegmentBytes`): what retention by bytes
    /// counts. `None` until reported (and in snapshots from before it;
    /// not written then, which keeps such snapshots as they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// How many times the replica set changed after the segment closed
    /// (`RemoveNode`, `RefillStorage`, `SetReplicas`): `SetReplicas`
    /// names the count it was decided at, so a late repeat never moves
    /// copies back to a set that was changed since. (Not written while 0,
    /// which keeps older snapshots as they were.)
    #[serde(default, skip_serializing_if = "is_zero")]
    pub moves: u32,
    /// An open replicated segment its leader must not close (or append to)
    /// by itself: the consensus leader closes it from a majority of its
    /// replicas at once, as a failover would. Set when its leader started
    /// again (`NodeStarted`: its copy may be shorter than its followers',
    /// what it had not synced is gone, and appending there would give one
    /// index two entries), or when its leader sealed it and no majority
    /// took its count in time (`CloseFromReplicas`: committing that count
    /// would leave entries on the leader only). (Not written while false.)
    #[serde(default, skip_serializing_if = "is_false")]
    pub close_from_replicas: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// How much of a topic retention keeps. Each limit that is `Some` deletes
/// the oldest closed segments, whole, that are past it; `None` keeps
/// everything as far as that limit goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Keep closed segments holding at most this many entries in all: the
    /// oldest closed segment is deleted while the closed segments after the
    /// deleted ones hold more. The open segment is never deleted and not
    /// counted.
    pub max_entries: Option<u64>,
    /// Delete a closed segment once it was closed more than this long ago
    /// (ms).
    pub max_age_ms: Option<u64>,
    /// Keep closed segments holding at most this many payload bytes in
    /// all, as `max_entries` counts entries. A closed segment whose bytes
    /// are not reported yet counts as empty, so retention never deletes
    /// more than the limit asks. (Default: none, for snapshots from before
    /// it.)
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// The retention that `SetRetention` log entries carry: `Retention` before
/// `max_bytes`. Log entries encode fields by position, so those written
/// before keep this shape; `SetTopicRetention` carries the whole one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntriesAgeRetention {
    pub max_entries: Option<u64>,
    pub max_age_ms: Option<u64>,
}

impl From<EntriesAgeRetention> for Retention {
    fn from(r: EntriesAgeRetention) -> Retention {
        Retention {
            max_entries: r.max_entries,
            max_age_ms: r.max_age_ms,
            max_bytes: None,
        }
    }
}

impl Retention {
    /// True when nothing is ever deleted.
    pub fn keeps_everything(&self) -> bool {
        self.max_entries.is_none() && self.max_age_ms.is_none() && self.max_bytes.is_none()
    }

    /// Last segment (by id) of `t` that this retention deletes at `now_ms`:
    /// a stretch of closed segments from the first retained one on, never
    /// past a segment whose count is not final. `t.deleted_through` when
    /// nothing more is due.
    pub fn deletes_through(&self, t: &TopicState, now_ms: u64) -> SegmentId {
        let first = t.deleted_through;
        let closed: Vec<&SegmentMeta> = t
            .segments
            .iter()
            .skip(first as usize)
            .take_while(|s| s.status.final_count().is_some())
            .collect();
        let mut through = first;
        if let Some(max) = self.max_entries {
            let mut held: u64 = closed.iter().filter_map(|s| s.status.final_count()).sum();
            for s in &closed {
                if held <= max {
                    break;
                }
                held -= s.status.final_count().unwrap_or(0);
                through = through.max(s.id);
            }
        }
        if let Some(max) = self.max_bytes {
            let bytes = |s: &SegmentMeta| s.bytes.unwrap_or(0);
            let mut held: u64 = closed.iter().map(|s| bytes(s)).sum();
            for s in &closed {
                if held <= max {
                    break;
                }
                held -= bytes(s);
                through = through.max(s.id);
            }
        }
        if let Some(age) = self.max_age_ms {
            for s in &closed {
                match s.closed_at_ms {
                    Some(at) if at.saturating_add(age) <= now_ms => through = through.max(s.id),
                    _ => break,
                }
            }
        }
        through
    }
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
    /// The topic's own retention (`REGISTER … RETAIN`, `CONFIG`); `None`:
    /// the server default of the node that drives retention.
    #[serde(default)]
    pub retention: Option<Retention>,
    /// Segments `1..=deleted_through` were deleted by retention. They keep
    /// their counts here, so offsets are never renumbered; their entries
    /// are gone (`first_offset`).
    #[serde(default)]
    pub deleted_through: SegmentId,
    /// Each producer's last stored write to this topic, as the leaders of
    /// sealed segments recorded it (`RecordProducers`): what the next
    /// segment's leader starts from. (Default: none, for snapshots taken
    /// before producer ids.)
    #[serde(default)]
    pub producers: BTreeMap<ProducerId, ProducerEntry>,
    /// How many copies of each segment the topic asks for (its leader
    /// included), fixed when it was created: `REGISTER … RF <n>` or the
    /// registering node's `replication_factor`. A segment gets fewer when
    /// fewer voters are live at its opening. (Default 1: snapshots from
    /// before replication.)
    #[serde(default = "one")]
    pub rf: u32,
}

fn one() -> u32 {
    1
}

/// A producer's last stored write to a topic: its sequence number, its
/// entry count and where they are: `segment`, from index `first_index`
/// (`None`, and `n` 0, when a restarted leader knows the write was stored
/// in `segment` but not where: it found that the write after it was not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    pub seq: u64,
    pub n: u64,
    pub segment: SegmentId,
    pub first_index: Option<u64>,
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
    /// In a segment whose entries were lost (an operator accepted it).
    Lost { segment: SegmentId, leader: NodeId },
}

impl TopicState {
    /// The segments (not deleted by retention, not lost) with fewer copies
    /// than the topic's `rf`: a replica set that was short when it opened
    /// (fewer live voters than `rf`), or a copy on a node that was removed
    /// (a wiped node's copies leave the set when it is refilled,
    /// `RefillStorage`). Re-replication brings closed ones back to `rf`.
    pub fn under_replicated(&self, removed: &BTreeSet<NodeId>) -> Vec<SegmentId> {
        self.segments
            .iter()
            .skip(self.deleted_through as usize)
            .filter(|s| !matches!(s.status, SegmentStatus::Lost { .. }))
            .filter(|s| s.holders(removed).len() < self.rf as usize)
            .map(|s| s.id)
            .collect()
    }

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
            match seg.status.final_count() {
                Some(count) => base += count,
                None => return None,
            }
        }
        None
    }

    /// The first offset a read can start at: the base of the first segment
    /// retention did not delete (0 while nothing was deleted).
    pub fn first_offset(&self) -> Offset {
        self.segments
            .iter()
            .take(self.deleted_through as usize)
            .map(|s| s.status.final_count().unwrap_or(0))
            .sum()
    }

    /// Sum of the sealed counts before the current segment (the reference's
    /// `last_sealed_entry_offset`); pending segments count as 0 here.
    pub fn last_sealed_entry_offset(&self) -> Offset {
        self.segments
            .iter()
            .map(|s| s.status.final_count().unwrap_or(0))
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
                SegmentStatus::Lost { count } => {
                    if offset < base + count {
                        return Location::Lost {
                            segment: seg.id,
                            leader: seg.leader,
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
    /// The leader of a pending segment reports its final count, read from
    /// `storage`. Refused when that is not the storage the cluster recorded
    /// for the leader: a wiped disk would report its segments as empty.
    /// `None` (a node run without a storage identity) is accepted only
    /// while none is recorded.
    ReportCount {
        topic: TopicName,
        segment: SegmentId,
        count: u64,
        storage: Option<StorageId>,
    },
    /// Adds a node or updates its addresses.
    UpsertNode { node: NodeId, info: NodeInfo },
    /// Moves the persisted GET cursor forward (never backward).
    AdvanceCursor { topic: TopicName, offset: Offset },
    /// Does nothing. Used to confirm a leader's commit index.
    Noop,
    /// Records `storage` as the storage of `node` (when it bootstraps,
    /// joins or restarts). The first record stays: the same one again
    /// changes nothing, a different one is rejected (the node's data was
    /// wiped or replaced; only `ReplaceStorage` accepts that).
    RegisterStorage { node: NodeId, storage: StorageId },
    /// The operator accepts that `node` lost its storage: `storage` becomes
    /// its recorded storage and each of its pending segments becomes
    /// `Lost`, keeping the entries readers were already given: per topic,
    /// the cursor is the larger of the persisted one and `delivered` (the
    /// live cursor of the owner, which proposes this). Rejected while the
    /// node leads an open segment (it may be alive, and failover has not
    /// closed it yet). Repeating it changes nothing.
    ReplaceStorage {
        node: NodeId,
        storage: StorageId,
        delivered: Vec<(TopicName, Offset)>,
    },
    /// Names the cluster. The first one stays; any later one changes
    /// nothing (every member proposes one when it finds none).
    InitCluster { id: ClusterId },
    /// Sets the offset `group` reads `topic` from next (COMMIT, SEEK): any
    /// offset, forward or back; the node checks the range before it
    /// proposes. The same command again changes nothing, so a proposal
    /// that timed out after it committed may be proposed again. Rejected
    /// when the topic does not exist.
    CommitOffset {
        group: GroupName,
        topic: TopicName,
        offset: Offset,
    },
    // New variants go last: log entries encode a variant by its position.
    /// The leader of `segment`, once it takes no more appends, records the
    /// last write of each producer that wrote to it, before the `Roll` or
    /// `ReportCount` that makes its count final. Merged into the topic's
    /// table keeping each producer's highest sequence, so a repeat or a
    /// late record changes nothing. Rejected when the topic does not exist.
    RecordProducers {
        topic: TopicName,
        segment: SegmentId,
        producers: Vec<(ProducerId, ProducerEntry)>,
    },
    /// Sets `topic`'s retention, limits by entries and age only (`None`:
    /// back to the server default). Setting the same one again changes
    /// nothing. Rejected when the topic does not exist. Proposed before
    /// retention by bytes; now `SetTopicRetention` is.
    SetRetention {
        topic: TopicName,
        retention: Option<EntriesAgeRetention>,
    },
    /// Records `at_ms` as the time every closed segment without one was
    /// closed (the consensus leader proposes it when it sees such
    /// segments; retention by age counts from it). Segments stamped
    /// before keep their time, so a repeat changes nothing.
    StampClosed { at_ms: u64 },
    /// Retention deleted segments `..=through` of `topic`: they stay in the
    /// metadata with their counts (offsets never change), their entries
    /// are gone and every node deletes their files. Only a stretch of
    /// closed segments (final counts) may go: rejected when one of them is
    /// open or pending. A `through` at or below what was deleted changes
    /// nothing.
    DeleteSegments {
        topic: TopicName,
        through: SegmentId,
    },
    /// `CreateTopic` for a topic with replication factor `rf`: segment 1
    /// is kept on `replicas`, its leader first. Idempotent like
    /// `CreateTopic` (an existing topic keeps its `rf` and segments).
    /// Rejected when `replicas` is empty, names a node twice, or `rf` is 0.
    CreateReplicatedTopic {
        topic: TopicName,
        rf: u32,
        replicas: Vec<NodeId>,
    },
    /// `Roll` opening the next segment on `replicas`, its leader first;
    /// the same rules otherwise (stale or repeated rolls change nothing).
    /// Rejected when `replicas` is empty or names a node twice.
    RollReplicated {
        topic: TopicName,
        segment: SegmentId,
        count: Option<u64>,
        replicas: Vec<NodeId>,
    },
    /// Sets `topic`'s whole retention (`None`: back to the server
    /// default), as `SetRetention` does.
    SetTopicRetention {
        topic: TopicName,
        retention: Option<Retention>,
    },
    /// The leader of closed segment `segment` reports its payload bytes,
    /// read from its store. The first report stays (a closed segment's
    /// bytes do not change), so a repeat changes nothing. Rejected for a
    /// segment that is unknown or has no final count yet (so that a
    /// repeat after it closes cannot change what the first did not), and
    /// when the topic does not exist.
    RecordSegmentBytes {
        topic: TopicName,
        segment: SegmentId,
        bytes: u64,
    },
    /// The operator removes `node` for good (`REMOVE-NODE`): it is never
    /// chosen again as a leader or replica, its address and storage are
    /// forgotten, it cannot join again, and its copies of closed segments
    /// leave their replica sets (a closed segment it led is led by its
    /// first follower). Rejected when that would lose data: it leads an
    /// open segment (it may be running: failover must close it first), a
    /// pending one (only it knows the count), or holds the only copy of a
    /// sealed one. Removing a removed node changes nothing.
    RemoveNode { node: NodeId },
    /// A pending replicated segment closed from a majority of its
    /// replicas once they answered (its leader gone): Sealed at `count`.
    /// Rejected for an open segment (only a failover closes one) and for a
    /// segment without followers (only its leader knows its count); a
    /// segment no longer pending changes nothing.
    SealPending {
        topic: TopicName,
        segment: SegmentId,
        count: u64,
    },
    /// The leader of open replicated segment `segment` sealed it but no
    /// majority of its replicas holds its count: `close_from_replicas` is
    /// set, for the consensus leader to close it from a majority. Rejected
    /// when the segment is not its topic's open replicated one (a late
    /// repeat after the roll changes nothing).
    CloseFromReplicas {
        topic: TopicName,
        segment: SegmentId,
    },
    /// `node` started a new life (`incarnation`: larger than any before
    /// it, its start time in ns): every open replicated segment it leads
    /// is flagged `close_from_replicas`, for the consensus leader to close
    /// from its replicas. A node appends to its replicated segments only
    /// once its own `NodeStarted` is applied. An older or equal
    /// incarnation (a late repeat) changes nothing.
    NodeStarted { node: NodeId, incarnation: u64 },
    /// `node` came back on an empty storage `storage` (wiped or replaced)
    /// and every segment it held has another copy: `storage` becomes its
    /// recorded storage and its old copies of closed segments leave their
    /// replica sets, for re-replication to refill. Rejected, changing
    /// nothing, where a segment's data or count was only on it (it leads
    /// an open or pending segment, or held the only copy of a sealed one):
    /// that takes the operator's `ReplaceStorage`. A compare-and-set:
    /// only while `replaces` is its recorded storage (a late repeat after
    /// another change is rejected); the same storage again changes nothing.
    RefillStorage {
        node: NodeId,
        storage: StorageId,
        replaces: StorageId,
    },
    /// Re-replication: the replica set of sealed segment `segment` becomes
    /// `replicas` (leader first), if it is `expected` and the set moved
    /// `moves` times so far (a compare-and-set: a stale copy decision, or
    /// a late repeat, never overwrites a newer set). Proposed only
    /// once every node in `replicas` holds the segment sealed at its count.
    /// Rejected when the segment is not sealed, the set changed meanwhile,
    /// or `replicas` is empty, names a node twice or a removed node; the
    /// set already being `replicas` changes nothing.
    SetReplicas {
        topic: TopicName,
        segment: SegmentId,
        expected: Vec<NodeId>,
        moves: u32,
        replicas: Vec<NodeId>,
    },
}

/// Why a replica set cannot be used, if it cannot: it needs a leader and no
/// node twice (a node holds one copy of a segment).
fn invalid_replicas(replicas: &[NodeId]) -> Option<String> {
    if replicas.is_empty() {
        return Some("a replica set needs at least its leader".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in replicas {
        if !seen.insert(*r) {
            return Some(format!(
                "replica set {replicas:?} names node {r} twice: a node holds one copy of a segment"
            ));
        }
    }
    None
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
    /// The recorded storage identity of each node. (Default: snapshots
    /// taken before identities existed have none.)
    #[serde(default)]
    pub storage: BTreeMap<NodeId, StorageId>,
    /// This cluster's identity, set once (`InitCluster`); `None` until then.
    #[serde(default)]
    pub cluster: Option<ClusterId>,
    /// Each consumer group's committed offset per topic (`CommitOffset`).
    /// (Default: snapshots taken before groups existed have none.)
    #[serde(default)]
    pub groups: BTreeMap<GroupName, BTreeMap<TopicName, Offset>>,
    /// Nodes removed for good (`RemoveNode`). (Default: none; not written
    /// while empty, which keeps older snapshots as they were.)
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub removed: BTreeSet<NodeId>,
    /// Storages that were recorded for a node and then replaced
    /// (`RefillStorage`, `ReplaceStorage`): never accepted again by
    /// `RefillStorage`, so a late repeat cannot bring one back. (Default:
    /// none; not written while empty.)
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub retired_storage: BTreeSet<StorageId>,
    /// Each node's current life (`NodeStarted`). (Default: none; not
    /// written while empty.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub incarnations: BTreeMap<NodeId, u64>,
}

impl ClusterState {
    /// `NodeStarted`.
    fn node_started(&mut self, node: NodeId, incarnation: u64) -> CmdResult {
        if self
            .incarnations
            .get(&node)
            .is_some_and(|known| *known >= incarnation)
        {
            return CmdResult::Unchanged;
        }
        self.incarnations.insert(node, incarnation);
        for t in self.topics.values_mut() {
            let current = t
                .segments
                .last_mut()
                .expect("a topic always has at least one segment");
            if current.leader == node
                && current.status == SegmentStatus::Open
                && !current.followers.is_empty()
            {
                current.close_from_replicas = true;
            }
        }
        CmdResult::Applied
    }

    /// `SetRetention`, `SetTopicRetention`.
    fn set_retention(&mut self, topic: &TopicName, retention: Option<Retention>) -> CmdResult {
        let Some(t) = self.topics.get_mut(topic) else {
            return CmdResult::Rejected(format!("topic {topic} does not exist"));
        };
        if t.retention == retention {
            return CmdResult::Unchanged;
        }
        t.retention = retention;
        CmdResult::Applied
    }

    /// Applies one committed command. Deterministic: the same commands in
    /// the same order give the same state on every node.
    pub fn apply(&mut self, cmd: &MetadataCmd) -> CmdResult {
        self.version += 1;
        match cmd {
            MetadataCmd::CreateTopic { topic, leader } => self.create_topic(topic, 1, *leader, &[]),
            MetadataCmd::CreateReplicatedTopic {
                topic,
                rf,
                replicas,
            } => {
                if let Some(why) = invalid_replicas(replicas) {
                    return CmdResult::Rejected(why);
                }
                if *rf == 0 {
                    return CmdResult::Rejected("a replication factor is at least 1".into());
                }
                self.create_topic(topic, *rf, replicas[0], &replicas[1..])
            }
            MetadataCmd::Roll {
                topic,
                segment,
                count,
                next_leader,
            } => self.roll(topic, *segment, *count, *next_leader, &[]),
            MetadataCmd::RollReplicated {
                topic,
                segment,
                count,
                replicas,
            } => {
                if let Some(why) = invalid_replicas(replicas) {
                    return CmdResult::Rejected(why);
                }
                self.roll(topic, *segment, *count, replicas[0], &replicas[1..])
            }
            MetadataCmd::ReportCount {
                topic,
                segment,
                count,
                storage,
            } => {
                let seg = match segment_mut(&mut self.topics, topic, *segment) {
                    Ok(seg) => seg,
                    Err(rejected) => return rejected,
                };
                if seg.status == SegmentStatus::Open {
                    // Counts are reported only for segments failover
                    // closed: a late repeat must not seal a later failover.
                    return CmdResult::Rejected(format!(
                        "segment {topic}:{segment} is open: only a segment closed by failover                          gets its count reported"
                    ));
                }
                if seg.status != SegmentStatus::Pending {
                    return CmdResult::Unchanged;
                }
                if let Some(recorded) = self.storage.get(&seg.leader) {
                    if storage.as_ref() != Some(recorded) {
                        return CmdResult::Rejected(format!(
                            "the count report for segment {topic}:{segment} comes from {}, \
                             not from the storage recorded for its leader: {}",
                            storage.map_or("a node without a storage identity".into(), |s| {
                                format!("storage {s}")
                            }),
                            storage_mismatch(seg.leader, *recorded, *storage)
                        ));
                    }
                }
                seg.status = SegmentStatus::Sealed { count: *count };
                CmdResult::Applied
            }
            MetadataCmd::UpsertNode { node, info } => {
                if self.removed.contains(node) {
                    return CmdResult::Rejected(removed_for_good(*node));
                }
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
            MetadataCmd::RegisterStorage { node, .. } if self.removed.contains(node) => {
                CmdResult::Rejected(removed_for_good(*node))
            }
            MetadataCmd::RegisterStorage { node, storage } => match self.storage.get(node) {
                None => {
                    self.storage.insert(*node, *storage);
                    CmdResult::Applied
                }
                Some(recorded) if recorded == storage => CmdResult::Unchanged,
                Some(recorded) => {
                    CmdResult::Rejected(storage_mismatch(*node, *recorded, Some(*storage)))
                }
            },
            MetadataCmd::ReplaceStorage {
                node,
                storage,
                delivered,
            } => self.replace_storage(*node, *storage, delivered),
            MetadataCmd::InitCluster { id } => match self.cluster {
                None => {
                    self.cluster = Some(*id);
                    CmdResult::Applied
                }
                Some(_) => CmdResult::Unchanged,
            },
            MetadataCmd::CommitOffset {
                group,
                topic,
                offset,
            } => {
                if !self.topics.contains_key(topic) {
                    return CmdResult::Rejected(format!("topic {topic} does not exist"));
                }
                let offsets = self.groups.entry(group.clone()).or_default();
                match offsets.insert(topic.clone(), *offset) {
                    Some(before) if before == *offset => CmdResult::Unchanged,
                    _ => CmdResult::Applied,
                }
            }
            MetadataCmd::RecordProducers {
                topic, producers, ..
            } => {
                let Some(t) = self.topics.get_mut(topic) else {
                    return CmdResult::Rejected(format!("topic {topic} does not exist"));
                };
                let mut changed = false;
                for (producer, entry) in producers {
                    if merge_producer(&mut t.producers, producer, *entry) {
                        changed = true;
                    }
                }
                if changed {
                    CmdResult::Applied
                } else {
                    CmdResult::Unchanged
                }
            }
            MetadataCmd::SetRetention { topic, retention } => {
                self.set_retention(topic, retention.map(Retention::from))
            }
            MetadataCmd::SetTopicRetention { topic, retention } => {
                self.set_retention(topic, *retention)
            }
            MetadataCmd::RecordSegmentBytes {
                topic,
                segment,
                bytes,
            } => {
                let Some(t) = self.topics.get_mut(topic) else {
                    return CmdResult::Rejected(format!("topic {topic} does not exist"));
                };
                match segment
                    .checked_sub(1)
                    .and_then(|i| t.segments.get_mut(i as usize))
                {
                    Some(s) if s.status.final_count().is_none() => CmdResult::Rejected(format!(
                        "segment {segment} of {topic} is not closed with a final count"
                    )),
                    Some(s) if s.bytes.is_some() => CmdResult::Unchanged,
                    Some(s) => {
                        s.bytes = Some(*bytes);
                        CmdResult::Applied
                    }
                    None => CmdResult::Rejected(format!("{topic} has no segment {segment}")),
                }
            }
            MetadataCmd::StampClosed { at_ms } => {
                let mut changed = false;
                for t in self.topics.values_mut() {
                    for s in &mut t.segments {
                        if s.closed_at_ms.is_none() && s.status.final_count().is_some() {
                            s.closed_at_ms = Some(*at_ms);
                            changed = true;
                        }
                    }
                }
                if changed {
                    CmdResult::Applied
                } else {
                    CmdResult::Unchanged
                }
            }
            MetadataCmd::RemoveNode { node } => self.remove_node(*node),
            MetadataCmd::SealPending {
                topic,
                segment,
                count,
            } => {
                let seg = match segment_mut(&mut self.topics, topic, *segment) {
                    Ok(seg) => seg,
                    Err(rejected) => return rejected,
                };
                match seg.status {
                    SegmentStatus::Open => CmdResult::Rejected(format!(
                        "segment {topic}:{segment} is open: a failover closes it first"
                    )),
                    SegmentStatus::Pending if seg.followers.is_empty() => {
                        CmdResult::Rejected(format!(
                            "segment {topic}:{segment} has one copy: only its leader knows its count"
                        ))
                    }
                    SegmentStatus::Pending => {
                        seg.status = SegmentStatus::Sealed { count: *count };
                        CmdResult::Applied
                    }
                    _ => CmdResult::Unchanged,
                }
            }
            MetadataCmd::CloseFromReplicas { topic, segment } => {
                let current = match current_segment_mut(&mut self.topics, topic) {
                    Ok(current) => current,
                    Err(rejected) => return rejected,
                };
                if current.id != *segment || current.status != SegmentStatus::Open {
                    return CmdResult::Unchanged;
                }
                if current.followers.is_empty() {
                    return CmdResult::Rejected(format!(
                        "segment {topic}:{segment} has one copy: there are no replicas to close it from"
                    ));
                }
                if current.close_from_replicas {
                    return CmdResult::Unchanged;
                }
                current.close_from_replicas = true;
                CmdResult::Applied
            }
            MetadataCmd::NodeStarted { node, incarnation } => {
                self.node_started(*node, *incarnation)
            }
            MetadataCmd::RefillStorage {
                node,
                storage,
                replaces,
            } => self.refill_storage(*node, *storage, *replaces),
            MetadataCmd::SetReplicas {
                topic,
                segment,
                expected,
                moves,
                replicas,
            } => self.set_replicas(topic, *segment, (expected, *moves), replicas),
            MetadataCmd::DeleteSegments { topic, through } => {
                let Some(t) = self.topics.get_mut(topic) else {
                    return CmdResult::Rejected(format!("topic {topic} does not exist"));
                };
                if *through <= t.deleted_through {
                    return CmdResult::Unchanged;
                }
                let stretch = t
                    .segments
                    .iter()
                    .skip(t.deleted_through as usize)
                    .take((*through - t.deleted_through) as usize);
                let mut seen = t.deleted_through;
                for s in stretch {
                    if s.status.final_count().is_none() {
                        return CmdResult::Rejected(format!(
                            "segment {topic}:{} is not closed with a final count, so retention \
                             cannot delete it",
                            s.id
                        ));
                    }
                    seen = s.id;
                }
                if seen != *through {
                    return CmdResult::Rejected(format!(
                        "segment {topic}:{through} does not exist"
                    ));
                }
                t.deleted_through = *through;
                CmdResult::Applied
            }
        }
    }

    fn create_topic(
        &mut self,
        topic: &TopicName,
        rf: u32,
        leader: NodeId,
        followers: &[NodeId],
    ) -> CmdResult {
        if self.topics.contains_key(topic) {
            return CmdResult::Unchanged;
        }
        self.topics.insert(
            topic.clone(),
            TopicState {
                segments: vec![SegmentMeta {
                    id: 1,
                    leader,
                    followers: followers.to_vec(),
                    status: SegmentStatus::Open,
                    closed_at_ms: None,
                    bytes: None,
                    moves: 0,
                    close_from_replicas: false,
                }],
                cursor: 0,
                retention: None,
                deleted_through: 0,
                producers: BTreeMap::new(),
                rf,
            },
        );
        CmdResult::Applied
    }

    fn roll(
        &mut self,
        topic: &TopicName,
        segment: SegmentId,
        count: Option<u64>,
        leader: NodeId,
        followers: &[NodeId],
    ) -> CmdResult {
        let Some(t) = self.topics.get_mut(topic) else {
            return CmdResult::Rejected(format!("topic {topic} does not exist"));
        };
        let current = t
            .segments
            .last_mut()
            .expect("a topic always has at least one segment");
        if segment > current.id {
            // Nobody can have seen this segment: a late repeat of
            // this command must not roll it once it exists.
            return CmdResult::Rejected(format!("segment {topic}:{segment} does not exist yet"));
        }
        if current.id != segment {
            return CmdResult::Unchanged;
        }
        current.status = match count {
            Some(n) => SegmentStatus::Sealed { count: n },
            None => SegmentStatus::Pending,
        };
        t.segments.push(SegmentMeta {
            id: segment + 1,
            leader,
            followers: followers.to_vec(),
            status: SegmentStatus::Open,
            closed_at_ms: None,
            bytes: None,
            moves: 0,
            close_from_replicas: false,
        });
        CmdResult::Applied
    }

    /// What keeps `node`'s copies from being given up, one line each:
    /// segments whose data or count only it has. `for_removal`: the
    /// operator removes it (else it came back empty).
    pub fn sole_copies_on(&self, node: NodeId, for_removal: bool) -> Vec<String> {
        let mut out = Vec::new();
        for (name, t) in &self.topics {
            for s in t.segments.iter().skip(t.deleted_through as usize) {
                match s.status {
                    SegmentStatus::Open if s.leader == node => out.push(if for_removal {
                        format!(
                            "node {node} leads the open segment {name}:{}, so it may be running: \
                             stop it first; once it has been silent for the failover delay \
                             (lease + margin, 1.5 s by default) its segments are closed, and this \
                             can run",
                            s.id
                        )
                    } else {
                        format!(
                            "node {node} still leads the open segment {name}:{} (failover has not \
                             closed it yet)",
                            s.id
                        )
                    }),
                    SegmentStatus::Pending if s.leader == node => out.push(format!(
                        "segment {name}:{} is pending: its count is known only to node {node}, \
                         its leader",
                        s.id
                    )),
                    SegmentStatus::Sealed { count }
                        if count > 0 && s.holders(&self.removed) == [node] =>
                    {
                        out.push(format!(
                            "the only copy of segment {name}:{} ({count} entries) is on node {node}",
                            s.id
                        ))
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// Drops `node`'s copies of every segment that is not open (an open
    /// one's leader rolls it, or streams the copy again).
    fn drop_copies_of(&mut self, node: NodeId) {
        for t in self.topics.values_mut() {
            for s in &mut t.segments {
                if s.status != SegmentStatus::Open {
                    s.drop_copy(node);
                }
            }
        }
    }

    fn remove_node(&mut self, node: NodeId) -> CmdResult {
        if self.removed.contains(&node) {
            return CmdResult::Unchanged;
        }
        if !self.nodes.contains_key(&node) {
            return CmdResult::Rejected(format!("node {node} is not a member of this cluster"));
        }
        let blockers = self.sole_copies_on(node, true);
        if !blockers.is_empty() {
            return CmdResult::Rejected(removal_refused(node, &blockers));
        }
        self.removed.insert(node);
        self.nodes.remove(&node);
        self.storage.remove(&node);
        self.drop_copies_of(node);
        CmdResult::Applied
    }

    fn refill_storage(
        &mut self,
        node: NodeId,
        storage: StorageId,
        replaces: StorageId,
    ) -> CmdResult {
        if self.removed.contains(&node) {
            return CmdResult::Rejected(removed_for_good(node));
        }
        if self.retired_storage.contains(&storage) {
            return CmdResult::Rejected(format!(
                "storage {storage} was node {node}'s once and was replaced since"
            ));
        }
        match self.storage.get(&node) {
            Some(s) if *s == storage => return CmdResult::Unchanged,
            Some(s) if *s == replaces => {}
            recorded => {
                return CmdResult::Rejected(format!(
                    "node {node}'s recorded storage is {}, not {replaces}: it changed meanwhile",
                    recorded.map_or("none".to_string(), |s| s.to_string())
                ))
            }
        }
        let blockers = self.sole_copies_on(node, false);
        if !blockers.is_empty() {
            return CmdResult::Rejected(format!(
                "node {node}'s lost storage held data found nowhere else: {}",
                summarize(&blockers)
            ));
        }
        self.retired_storage.insert(replaces);
        self.storage.insert(node, storage);
        self.drop_copies_of(node);
        CmdResult::Applied
    }

    fn set_replicas(
        &mut self,
        topic: &TopicName,
        segment: SegmentId,
        (expected, moves): (&[NodeId], u32),
        replicas: &[NodeId],
    ) -> CmdResult {
        if let Some(why) = invalid_replicas(replicas) {
            return CmdResult::Rejected(why);
        }
        if let Some(r) = replicas.iter().find(|r| self.removed.contains(r)) {
            return CmdResult::Rejected(removed_for_good(*r));
        }
        let seg = match segment_mut(&mut self.topics, topic, segment) {
            Ok(seg) => seg,
            Err(rejected) => return rejected,
        };
        if !matches!(seg.status, SegmentStatus::Sealed { .. }) {
            return CmdResult::Rejected(format!(
                "segment {topic}:{segment} is not sealed: only a sealed segment's copies move"
            ));
        }
        let current = seg.replicas();
        if current == replicas {
            return CmdResult::Unchanged;
        }
        if current != expected || seg.moves != moves {
            return CmdResult::Rejected(format!(
                "the replicas of segment {topic}:{segment} changed meanwhile: {current:?} after \
                 {} moves, not {expected:?} after {moves}",
                seg.moves
            ));
        }
        seg.leader = replicas[0];
        seg.followers = replicas[1..].to_vec();
        seg.moves += 1;
        CmdResult::Applied
    }

    /// Under-replicated segments in every topic (see
    /// [`TopicState::under_replicated`]).
    pub fn under_replicated_count(&self) -> usize {
        self.topics
            .values()
            .map(|t| t.under_replicated(&self.removed).len())
            .sum()
    }

    /// Closed segments not yet stamped with the time they were closed.
    pub fn has_unstamped_closed(&self) -> bool {
        self.topics.values().any(|t| {
            t.segments
                .iter()
                .any(|s| s.closed_at_ms.is_none() && s.status.final_count().is_some())
        })
    }

    /// The offset `group` committed for `topic`, if it ever did.
    pub fn committed_offset(&self, group: &GroupName, topic: &TopicName) -> Option<Offset> {
        self.groups.get(group)?.get(topic).copied()
    }

    fn replace_storage(
        &mut self,
        node: NodeId,
        storage: StorageId,
        delivered: &[(TopicName, Offset)],
    ) -> CmdResult {
        if !self.nodes.contains_key(&node) {
            return CmdResult::Rejected(format!("node {node} is not a member of this cluster"));
        }
        for (name, t) in &self.topics {
            let current = t.current();
            if current.leader == node && current.status == SegmentStatus::Open {
                return CmdResult::Rejected(format!(
                    "node {node} still leads the open segment {name}:{}, so it may be running: \
                     stop it first; once it has been silent for the failover delay (lease + margin, \
                     1.5 s by default) its segments are closed and this command can run",
                    current.id
                ));
            }
        }
        if self.storage.get(&node) == Some(&storage) {
            return CmdResult::Unchanged;
        }
        if self.retired_storage.contains(&storage) {
            // Only a late repeat names a storage that was replaced since:
            // a refused node prints a new, random one.
            return CmdResult::Rejected(format!(
                "storage {storage} was replaced since; a wiped node names a new storage id"
            ));
        }
        if let Some(old) = self.storage.insert(node, storage) {
            self.retired_storage.insert(old);
        }
        let delivered: BTreeMap<&TopicName, Offset> =
            delivered.iter().map(|(t, o)| (t, *o)).collect();
        for (name, t) in self.topics.iter_mut() {
            let cursor = t.cursor.max(delivered.get(name).copied().unwrap_or(0));
            // The offset where the segment starts, while every segment
            // before it has a final count.
            let mut base = Some(0u64);
            let mut touched = false;
            for seg in t.segments.iter_mut() {
                if seg.leader == node && seg.status == SegmentStatus::Pending {
                    // Readers got the entries before the cursor; the segment
                    // keeps exactly those. Behind another pending segment the
                    // cursor cannot have reached it: none.
                    let count = base.map_or(0, |b| cursor.saturating_sub(b));
                    seg.status = SegmentStatus::Lost { count };
                    touched = true;
                }
                base = match (base, seg.status.final_count()) {
                    (Some(b), Some(c)) => Some(b + c),
                    _ => None,
                };
            }
            if touched {
                t.cursor = cursor;
            }
        }
        CmdResult::Applied
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
    /// `sealed_segments`, `segment_leaders`) plus `pending_segments`,
    /// `cursor`, `replication_factor`, `segment_replicas` (each segment's
    /// replica set, leader first) and more of ours.
    pub fn topic_json(&self, topic: &TopicName) -> Option<serde_json::Value> {
        let t = self.topics.get(topic)?;
        let mut sealed = serde_json::Map::new();
        let mut leaders = serde_json::Map::new();
        let mut replicas = serde_json::Map::new();
        let mut pending = Vec::new();
        let mut lost = Vec::new();
        for s in &t.segments {
            leaders.insert(s.id.to_string(), s.leader.into());
            replicas.insert(s.id.to_string(), s.replicas().into());
            match s.status {
                // A lost segment's count holds offsets like a sealed one's.
                SegmentStatus::Sealed { count } | SegmentStatus::Lost { count } => {
                    sealed.insert(s.id.to_string(), count.into());
                }
                SegmentStatus::Pending => pending.push(s.id),
                SegmentStatus::Open => {}
            }
            if matches!(s.status, SegmentStatus::Lost { .. }) {
                lost.push(s.id);
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
            "lost_segments": lost,
            "cursor": t.cursor,
            "first_offset": t.first_offset(),
            "deleted_segments": t.deleted_through,
            "retention": t.retention,
            "replication_factor": t.rf,
            "segment_replicas": replicas,
            "under_replicated_segments": t.under_replicated(&self.removed),
        }))
    }
}

/// The current (last) segment of `topic`, or the rejection naming what
/// is missing.
fn current_segment_mut<'a>(
    topics: &'a mut BTreeMap<TopicName, TopicState>,
    topic: &TopicName,
) -> Result<&'a mut SegmentMeta, CmdResult> {
    let Some(t) = topics.get_mut(topic) else {
        return Err(CmdResult::Rejected(format!("topic {topic} does not exist")));
    };
    Ok(t.segments
        .last_mut()
        .expect("a topic always has at least one segment"))
}

/// Segment `segment` of `topic`, or the rejection naming what is missing.
fn segment_mut<'a>(
    topics: &'a mut BTreeMap<TopicName, TopicState>,
    topic: &TopicName,
    segment: SegmentId,
) -> Result<&'a mut SegmentMeta, CmdResult> {
    let Some(t) = topics.get_mut(topic) else {
        return Err(CmdResult::Rejected(format!("topic {topic} does not exist")));
    };
    segment
        .checked_sub(1)
        .and_then(|i| t.segments.get_mut(i as usize))
        .ok_or_else(|| CmdResult::Rejected(format!("segment {topic}:{segment} does not exist")))
}

/// Why a removed node cannot come back.
pub fn removed_for_good(node: NodeId) -> String {
    format!(
        "node {node} was removed from this cluster for good (`walrus-cli node remove {node}`): \
         it cannot join again; start the machine as a new node, with another id and an empty \
         data directory"
    )
}

/// Why removing `node` is refused (`blockers`, from
/// [`ClusterState::sole_copies_on`] and live checks), and what to do.
pub fn removal_refused(node: NodeId, blockers: &[String]) -> String {
    format!(
        "removing node {node} would lose data: {}. A node leading an open segment: stop it and \
         wait for failover. A pending segment: start node {node} so it reports the count (if its \
         disk is gone, `walrus-cli node replace-storage {node} <new-storage-id>` closes it as \
         lost). An only copy: keep node {node} (restart it, restore its disk; a topic with \
         replication factor 1 has no other copy), or start the other replicas so that their \
         copies can be checked",
        summarize(blockers)
    )
}

/// The first few of `lines`, and how many more.
fn summarize(lines: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut out = lines
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if lines.len() > SHOWN {
        out.push_str(&format!("; and {} more", lines.len() - SHOWN));
    }
    out
}

/// What an operator reads when a node's storage is not the recorded one.
pub fn storage_mismatch(node: NodeId, recorded: StorageId, found: Option<StorageId>) -> String {
    let new_id = found.map_or("<its new storage id>".to_string(), |s| s.to_string());
    let found = found.map_or("no storage identity".to_string(), |s| {
        format!("storage {s}")
    });
    format!(
        "node {node} came back with {found}, but the cluster recorded storage {recorded} for it: \
         its data directory was wiped or replaced, and the segments it led may hold acknowledged \
         entries that exist nowhere else. Restore its original data directory and start it \
         again; or, to accept the loss, run `walrus-cli node replace-storage {node} {new_id}` \
         against a running member (readers then skip what was lost), then start it again \
         with --join"
    )
}

/// Keeps `entry` for `producer` in `table` if it is newer (a higher
/// sequence) than what is there, or tells where an entry of the same
/// sequence is. True when the table changed.
pub fn merge_producer(
    table: &mut BTreeMap<ProducerId, ProducerEntry>,
    producer: &ProducerId,
    entry: ProducerEntry,
) -> bool {
    match table.get_mut(producer) {
        Some(old) if old.seq > entry.seq => false,
        Some(old) if old.seq == entry.seq => {
            if old.first_index.is_none() && entry.first_index.is_some() {
                *old = entry;
                return true;
            }
            false
        }
        _ => {
            table.insert(producer.clone(), entry);
            true
        }
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
    fn given_closed_segments_when_retention_deletes_should_keep_offsets_and_never_pass_a_pending_one(
    ) {
        let mut s = ClusterState::default();
        s.apply(&MetadataCmd::CreateTopic {
            topic: topic("t"),
            leader: 1,
        });
        s.apply(&roll("t", 1, Some(4), 2));
        s.apply(&roll("t", 2, Some(4), 3));
        s.apply(&roll("t", 3, None, 1)); // 3 pending
        s.apply(&roll("t", 4, Some(4), 2));
        let delete = |through| MetadataCmd::DeleteSegments {
            topic: topic("t"),
            through,
        };
        assert!(matches!(s.apply(&delete(3)), CmdResult::Rejected(_)));
        assert_eq!(s.apply(&delete(2)), CmdResult::Applied);
        assert_eq!(s.apply(&delete(2)), CmdResult::Unchanged, "idempotent");
        assert_eq!(s.apply(&delete(1)), CmdResult::Unchanged, "never back");
        let t = s.topic(&topic("t")).unwrap();
        assert_eq!(t.first_offset(), 8);
        assert_eq!(t.base_offset(3), Some(8), "not renumbered");
        // By entries: only the stretch before the pending segment counts.
        let keep = |n| Retention {
            max_entries: Some(n),
            ..Retention::default()
        };
        assert_eq!(keep(0).deletes_through(t, 0), 2, "blocked by segment 3");
        // By age: from the stamp, which StampClosed sets once.
        assert_eq!(
            s.apply(&MetadataCmd::StampClosed { at_ms: 1_000 }),
            CmdResult::Applied
        );
        assert_eq!(
            s.apply(&MetadataCmd::StampClosed { at_ms: 5_000 }),
            CmdResult::Unchanged
        );
        s.apply(&MetadataCmd::ReportCount {
            topic: topic("t"),
            segment: 3,
            count: 2,
            storage: None,
        });
        assert!(s.has_unstamped_closed(), "3 closed after the stamp");
        s.apply(&MetadataCmd::StampClosed { at_ms: 9_000 });
        let t = s.topic(&topic("t")).unwrap();
        let age = Retention {
            max_age_ms: Some(5_000),
            ..Retention::default()
        };
        assert_eq!(
            age.deletes_through(t, 8_000),
            2,
            "4 closed at 1000, 3 at 9000"
        );
        assert_eq!(age.deletes_through(t, 14_000), 4);
        assert_eq!(keep(4).deletes_through(t, 0), 3, "2 + 4 entries > 4");
    }

    #[test]
    fn given_segment_bytes_when_retention_by_bytes_should_delete_the_oldest_while_the_rest_hold_more(
    ) {
        let mut s = ClusterState::default();
        s.apply(&MetadataCmd::CreateTopic {
            topic: topic("t"),
            leader: 1,
        });
        let bytes = |segment, bytes| MetadataCmd::RecordSegmentBytes {
            topic: topic("t"),
            segment,
            bytes,
        };
        assert!(
            matches!(s.apply(&bytes(1, 100)), CmdResult::Rejected(_)),
            "open"
        );
        for segment in 1..=4 {
            s.apply(&roll("t", segment, Some(10), 1));
        }
        let keep = |n| Retention {
            max_bytes: Some(n),
            ..Retention::default()
        };
        let t = s.topic(&topic("t")).unwrap();
        assert_eq!(keep(0).deletes_through(t, 0), 0, "nothing reported yet");
        for segment in 1..=4 {
            assert_eq!(s.apply(&bytes(segment, 100)), CmdResult::Applied);
        }
        assert_eq!(s.apply(&bytes(2, 999)), CmdResult::Unchanged, "first stays");
        assert!(
            matches!(s.apply(&bytes(9, 1)), CmdResult::Rejected(_)),
            "no segment 9"
        );
        assert!(matches!(
            s.apply(&MetadataCmd::RecordSegmentBytes {
                topic: topic("nope"),
                segment: 1,
                bytes: 1,
            }),
            CmdResult::Rejected(_)
        ));
        let t = s.topic(&topic("t")).unwrap();
        assert_eq!(t.segment(2).unwrap().bytes, Some(100));
        // 400 bytes closed: keep 250 deletes 1 and 2 (the rest hold 200).
        assert_eq!(keep(250).deletes_through(t, 0), 2);
        assert_eq!(keep(400).deletes_through(t, 0), 0);
        assert_eq!(keep(0).deletes_through(t, 0), 4, "the open one stays");
        // With entries too: whichever deletes more.
        let both = Retention {
            max_entries: Some(10),
            ..keep(250)
        };
        assert_eq!(both.deletes_through(t, 0), 3);
    }

    #[test]
    fn given_retention_set_by_the_old_or_new_command_should_be_the_same_setting() {
        let mut s = ClusterState::default();
        s.apply(&MetadataCmd::CreateTopic {
            topic: topic("t"),
            leader: 1,
        });
        let old = EntriesAgeRetention {
            max_entries: Some(5),
            max_age_ms: Some(7),
        };
        s.apply(&MetadataCmd::SetRetention {
            topic: topic("t"),
            retention: Some(old),
        });
        let new = Retention::from(old);
        assert_eq!(s.topic(&topic("t")).unwrap().retention, Some(new));
        let set = MetadataCmd::SetTopicRetention {
            topic: topic("t"),
            retention: Some(new),
        };
        assert_eq!(s.apply(&set), CmdResult::Unchanged);
        // A snapshot from before bytes reads with none.
        let json = r#"{"max_entries":5,"max_age_ms":7}"#;
        assert_eq!(serde_json::from_str::<Retention>(json).unwrap(), new);
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
            storage: None,
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

    fn node_info() -> NodeInfo {
        NodeInfo {
            raft_addr: "a:1".into(),
            client_addr: "a:2".into(),
        }
    }

    #[test]
    fn given_a_recorded_storage_when_another_registers_for_the_node_should_reject_it() {
        let (a, b) = (StorageId::from_u128(1), StorageId::from_u128(2));
        let mut s = ClusterState::default();
        let reg = |storage| MetadataCmd::RegisterStorage { node: 2, storage };
        assert_eq!(s.apply(&reg(a)), CmdResult::Applied);
        assert_eq!(s.apply(&reg(a)), CmdResult::Unchanged, "idempotent");
        let CmdResult::Rejected(why) = s.apply(&reg(b)) else {
            panic!("a second storage was accepted for node 2");
        };
        assert!(
            why.contains("replace-storage 2 00000000000000000000000000000002"),
            "{why}"
        );
        assert_eq!(s.storage[&2], a, "the first record stays");
    }

    #[test]
    fn given_pending_segments_when_their_storage_is_replaced_should_keep_exactly_what_was_delivered(
    ) {
        let (old, new) = (StorageId::from_u128(1), StorageId::from_u128(2));
        let mut s = ClusterState::default();
        s.apply(&MetadataCmd::UpsertNode {
            node: 2,
            info: node_info(),
        });
        s.apply(&MetadataCmd::RegisterStorage {
            node: 2,
            storage: old,
        });
        for t in ["t", "u"] {
            s.apply(&MetadataCmd::CreateTopic {
                topic: topic(t),
                leader: 1,
            });
            s.apply(&roll(t, 1, Some(3), 2));
            s.apply(&roll(t, 2, None, 3)); // segment 2 (node 2) pending
        }
        s.apply(&MetadataCmd::AdvanceCursor {
            topic: topic("t"),
            offset: 4,
        });
        let replace = MetadataCmd::ReplaceStorage {
            node: 2,
            storage: new,
            delivered: vec![(topic("t"), 5)],
        };
        let mut replica = s.clone();
        assert_eq!(s.apply(&replace), CmdResult::Applied);
        assert_eq!(replica.apply(&replace), CmdResult::Applied);
        assert_eq!(s, replica, "deterministic");
        let t = s.topic(&topic("t")).unwrap();
        assert_eq!(t.segments[1].status, SegmentStatus::Lost { count: 2 });
        assert_eq!(t.cursor, 5);
        assert_eq!(
            t.locate(5),
            Location::At {
                segment: 3,
                leader: 3,
                index: 0,
                sealed_count: None
            }
        );
        assert_eq!(
            t.locate(4),
            Location::Lost {
                segment: 2,
                leader: 2
            }
        );
        let u = s.topic(&topic("u")).unwrap();
        assert_eq!(
            u.segments[1].status,
            SegmentStatus::Lost { count: 0 },
            "never read"
        );
        assert_eq!(s.storage[&2], new);
        assert_eq!(
            s.apply(&replace),
            CmdResult::Unchanged,
            "a repeat changes nothing"
        );
        let j = s.topic_json(&topic("t")).unwrap();
        assert_eq!(j["lost_segments"][0], 2);
        assert_eq!(j["last_sealed_entry_offset"], 5);
        // The new storage reports; the old one cannot.
        s.apply(&roll("t", 3, None, 1));
        let report = |storage| MetadataCmd::ReportCount {
            topic: topic("t"),
            segment: 3,
            count: 1,
            storage,
        };
        s.storage.insert(3, new);
        assert!(matches!(
            s.apply(&report(Some(old))),
            CmdResult::Rejected(_)
        ));
        assert!(matches!(s.apply(&report(None)), CmdResult::Rejected(_)));
        assert_eq!(s.apply(&report(Some(new))), CmdResult::Applied);
    }

    #[test]
    fn given_a_named_cluster_when_named_again_should_keep_the_first_name() {
        let mut s = ClusterState::default();
        let (a, b) = (ClusterId::from_u128(1), ClusterId::from_u128(2));
        assert_eq!(
            s.apply(&MetadataCmd::InitCluster { id: a }),
            CmdResult::Applied
        );
        assert_eq!(
            s.apply(&MetadataCmd::InitCluster { id: b }),
            CmdResult::Unchanged
        );
        assert_eq!(s.cluster, Some(a));
    }

    fn roll_on(
        t: &str,
        segment: SegmentId,
        count: Option<u64>,
        replicas: &[NodeId],
    ) -> MetadataCmd {
        MetadataCmd::RollReplicated {
            topic: topic(t),
            segment,
            count,
            replicas: replicas.to_vec(),
        }
    }

    #[test]
    fn given_a_pending_segment_should_be_sealed_from_replicas_only_when_it_has_copies() {
        let mut s = ClusterState::default();
        s.apply(&MetadataCmd::CreateReplicatedTopic {
            topic: topic("copied"),
            rf: 3,
            replicas: vec![2, 3, 1],
        });
        s.apply(&MetadataCmd::CreateTopic {
            topic: topic("single"),
            leader: 2,
        });
        let seal = |t: &str, count| MetadataCmd::SealPending {
            topic: topic(t),
            segment: 1,
            count,
        };
        assert!(
            matches!(s.apply(&seal("copied", 4)), CmdResult::Rejected(_)),
            "open: a failover closes it first"
        );
        s.apply(&roll_on("copied", 1, None, &[3, 1, 2]));
        s.apply(&roll("single", 1, None, 3));
        assert!(
            matches!(s.apply(&seal("single", 4)), CmdResult::Rejected(_)),
            "one copy: only its leader knows the count"
        );
        assert_eq!(s.apply(&seal("copied", 4)), CmdResult::Applied);
        assert_eq!(
            s.apply(&seal("copied", 9)),
            CmdResult::Unchanged,
            "sealed once"
        );
        assert_eq!(
            s.topic(&topic("copied")).unwrap().segments[0].status,
            SegmentStatus::Sealed { count: 4 }
        );
    }

    #[test]
    fn given_a_node_started_again_should_flag_only_the_open_replicated_segments_it_leads_once() {
        let mut s = ClusterState::default();
        for (name, replicas) in [("copied", vec![2, 3, 1]), ("elsewhere", vec![3, 1, 2])] {
            s.apply(&MetadataCmd::CreateReplicatedTopic {
                topic: topic(name),
                rf: 3,
                replicas,
            });
        }
        s.apply(&MetadataCmd::CreateTopic {
            topic: topic("single"),
            leader: 2,
        });
        let started = |incarnation| MetadataCmd::NodeStarted {
            node: 2,
            incarnation,
        };
        assert_eq!(s.apply(&started(10)), CmdResult::Applied);
        let flagged =
            |s: &ClusterState, t: &str| s.topic(&topic(t)).unwrap().current().close_from_replicas;
        assert!(flagged(&s, "copied"), "node 2 leads it with copies");
        assert!(!flagged(&s, "elsewhere"), "led by node 3");
        assert!(!flagged(&s, "single"), "one copy: nothing to diverge from");
        // The failover rolls it: the next segment is not flagged, and a
        // late repeat of the same start (or an older one) flags nothing.
        s.apply(&roll_on("copied", 1, Some(4), &[2, 3, 1]));
        assert!(!flagged(&s, "copied"));
        assert_eq!(s.apply(&started(10)), CmdResult::Unchanged);
        assert_eq!(s.apply(&started(9)), CmdResult::Unchanged);
        assert!(!flagged(&s, "copied"));
        assert_eq!(s.incarnations.get(&2), Some(&10));
        assert_eq!(s.apply(&started(11)), CmdResult::Applied);
        assert!(flagged(&s, "copied"), "a new life flags it again");
        // A leader that sealed without a majority flags its own.
        let abandon = |t: &str| MetadataCmd::CloseFromReplicas {
            topic: topic(t),
            segment: 1,
        };
        assert_eq!(s.apply(&abandon("elsewhere")), CmdResult::Applied);
        assert!(flagged(&s, "elsewhere"));
        assert!(matches!(
            s.apply(&abandon("single")),
            CmdResult::Rejected(_)
        ));
        assert_eq!(
            s.apply(&abandon("copied")),
            CmdResult::Unchanged,
            "segment 1 of copied is closed"
        );
    }

    #[test]
    fn given_replicated_commands_when_applied_should_keep_each_segments_replica_set() {
        let mut s = ClusterState::default();
        let create = MetadataCmd::CreateReplicatedTopic {
            topic: topic("t"),
            rf: 3,
            replicas: vec![2, 3, 1],
        };
        assert_eq!(s.apply(&create), CmdResult::Applied);
        assert_eq!(s.apply(&create), CmdResult::Unchanged, "idempotent");
        assert_eq!(
            s.apply(&roll_on("t", 1, Some(4), &[3, 1, 2])),
            CmdResult::Applied
        );
        assert_eq!(
            s.apply(&roll_on("t", 1, Some(4), &[3, 1, 2])),
            CmdResult::Unchanged,
            "a repeated roll changes nothing"
        );
        assert!(matches!(
            s.apply(&roll_on("t", 5, None, &[1])),
            CmdResult::Rejected(_)
        ));
        // An old-style roll opens an unreplicated segment.
        assert_eq!(s.apply(&roll("t", 2, None, 1)), CmdResult::Applied);
        let t = s.topic(&topic("t")).unwrap();
        assert_eq!(t.rf, 3);
        assert_eq!(t.segments[0].replicas(), vec![2, 3, 1]);
        assert_eq!(t.segments[0].quorum(), 2);
        assert_eq!(t.segments[1].leader, 3);
        assert_eq!(t.segments[1].followers, vec![1, 2]);
        assert_eq!(t.segments[2].replicas(), vec![1]);
        assert_eq!(t.segments[2].quorum(), 1);
        let j = s.topic_json(&topic("t")).unwrap();
        assert_eq!(j["replication_factor"], 3);
        assert_eq!(j["segment_replicas"]["2"], serde_json::json!([3, 1, 2]));
        assert_eq!(j["segment_leaders"]["2"], 3, "the reference field stays");
    }

    #[test]
    fn given_a_bad_replica_set_should_reject_it_and_change_nothing() {
        let mut s = ClusterState::default();
        for replicas in [vec![], vec![1, 2, 1]] {
            let create = MetadataCmd::CreateReplicatedTopic {
                topic: topic("t"),
                rf: 3,
                replicas: replicas.clone(),
            };
            assert!(matches!(s.apply(&create), CmdResult::Rejected(_)));
        }
        let zero = MetadataCmd::CreateReplicatedTopic {
            topic: topic("t"),
            rf: 0,
            replicas: vec![1],
        };
        assert!(matches!(s.apply(&zero), CmdResult::Rejected(_)));
        assert!(s.topics.is_empty());
        s.apply(&MetadataCmd::CreateTopic {
            topic: topic("t"),
            leader: 1,
        });
        assert!(matches!(
            s.apply(&roll_on("t", 1, Some(1), &[2, 2])),
            CmdResult::Rejected(_)
        ));
        assert_eq!(s.topic(&topic("t")).unwrap().segments.len(), 1);
    }

    #[test]
    fn given_a_snapshot_from_before_replication_should_load_as_rf_1_and_write_the_same_json() {
        let mut s = ClusterState::default();
        s.apply(&MetadataCmd::CreateTopic {
            topic: topic("t"),
            leader: 2,
        });
        let mut json = serde_json::to_value(&s).unwrap();
        assert!(
            json["topics"]["t"]["segments"][0]
                .get("followers")
                .is_none(),
            "unreplicated segments write no new field"
        );
        json["topics"]["t"].as_object_mut().unwrap().remove("rf");
        let old: ClusterState = serde_json::from_value(json).unwrap();
        let t = old.topic(&topic("t")).unwrap();
        assert_eq!(t.rf, 1);
        assert_eq!(t.current().replicas(), vec![2]);
    }

    #[test]
    fn given_a_snapshot_from_before_storage_identities_should_load_with_none_recorded() {
        let json = r#"{"version":3,"nodes":{},"topics":{}}"#;
        let s: ClusterState = serde_json::from_str(json).unwrap();
        assert!(s.storage.is_empty());
        assert!(s.cluster.is_none());
    }
}
