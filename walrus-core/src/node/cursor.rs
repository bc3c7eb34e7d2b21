//! The shared GET cursor: one per topic for the whole cluster, owned by
//! the consensus leader. The owner keeps the next offset and a read-ahead
//! buffer; it persists the offset through metadata (`AdvanceCursor`) in
//! batches. A new owner starts from the persisted offset, so after an
//! owner crash entries may come again (at-least-once), never skipped.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::locks::MutexExt;
use crate::metadata::{Location, MetadataCmd};
use crate::types::{Offset, SegmentKey, TopicName};

/// Persist cursors at least this often.
pub(crate) const PERSIST_EVERY: Duration = Duration::from_millis(200);
/// Persist a cursor after this many deliveries.
const PERSIST_BATCH: u64 = 64;
/// Entries fetched per read-ahead.
const READ_AHEAD: u32 = 64;

struct TopicCursor {
    /// Entries starting at the live offset (`CursorCell::next`).
    buffer: VecDeque<Bytes>,
}

struct CursorCell {
    /// `None` until loaded from the persisted offset. Held across the
    /// refill's I/O on purpose: GETs of one topic are served in order.
    state: tokio::sync::Mutex<Option<TopicCursor>>,
    /// The next offset to deliver.
    next: AtomicU64,
    /// The offset last persisted (or loaded).
    persisted: AtomicU64,
    /// A batch persist is on its way through consensus. At most one per
    /// topic: GETs far outpace commits, and one proposal per GET while a
    /// commit is pending would queue thousands of them, delaying lease
    /// renewals behind them and holding their memory.
    persisting: AtomicBool,
}

#[derive(Default)]
pub(crate) struct Cursors {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The consensus term these cursors belong to.
    term: Option<u64>,
    /// Ordered, not hashed: the cursor loop persists in this order, and a
    /// hash order would differ between runs (the simulator replays seeds).
    topics: BTreeMap<TopicName, Arc<CursorCell>>,
}

impl Cursors {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock_or_recover()
    }

    /// Drops every cursor when leadership moved on (their buffers may be
    /// stale: another owner may have delivered in between).
    fn observe_term(&self, term: Option<u64>) {
        let mut inner = self.lock();
        if inner.term != term {
            inner.term = term;
            inner.topics.clear();
        }
    }

    fn cell(&self, topic: &TopicName) -> Arc<CursorCell> {
        self.lock()
            .topics
            .entry(topic.clone())
            .or_insert_with(|| {
                Arc::new(CursorCell {
                    state: tokio::sync::Mutex::new(None),
                    next: AtomicU64::new(0),
                    persisted: AtomicU64::new(0),
                    persisting: AtomicBool::new(false),
                })
            })
            .clone()
    }

    fn all(&self) -> Vec<(TopicName, Arc<CursorCell>)> {
        self.lock()
            .topics
            .iter()
            .map(|(t, c)| (t.clone(), c.clone()))
            .collect()
    }
}

/// What a reader blocked at a pending segment of `leader` is told to do.
pub(crate) fn blocked_advice(leader: crate::types::NodeId) -> String {
    format!(
        "reads wait here and never skip it: restart node {leader} with its data; if its data \
         is lost, accept the loss with `walrus-cli node replace-storage {leader} <storage id>` \
         (the id its refused start printed); retry"
    )
}

/// What a reader waiting at `segment` of `topic`, pending on the node
/// `leader` that cannot serve more of it now, is told.
pub(crate) fn blocked(
    topic: &TopicName,
    segment: crate::types::SegmentId,
    leader: crate::types::NodeId,
) -> Error {
    Error::Unavailable(format!(
        "segment {segment} of {topic} is on node {leader}, which is down; {}",
        blocked_advice(leader)
    ))
}

/// The first offset of `segment`, the pending segment `locate` found
/// blocking `offset`: every segment before it has a final count.
pub(crate) fn pending_base(
    t: &crate::metadata::TopicState,
    topic: &TopicName,
    segment: crate::types::SegmentId,
    offset: Offset,
) -> Result<Offset> {
    t.base_offset(segment).ok_or_else(|| {
        Error::Internal(format!(
            "offset {offset} of {topic} is blocked by segment {segment}, \
             yet an earlier segment has no final count"
        ))
    })
}

/// What a reader waiting at the damage in a quarantined pending segment
/// is told: where it is and what the operator can do.
pub(crate) fn quarantined(
    why: &str,
    topic: &TopicName,
    segment: crate::types::SegmentId,
    leader: crate::types::NodeId,
) -> Error {
    Error::Corrupt(format!(
        "{why}; segment {segment} of {topic} is quarantined on node {leader} and its count is \
         unknown, so reads wait here and never skip it: once the file is restored, restart \
         node {leader} (it then reports the count); retry"
    ))
}

impl super::Node {
    /// The next entry of `topic` for the shared cursor; this node must be
    /// the consensus leader. `None` at the end of the topic.
    pub(crate) async fn cursor_next(&self, topic: &TopicName) -> Result<Option<Bytes>> {
        let status = self.metadata.status();
        if !status.is_leader() {
            return Err(Error::NotLeader);
        }
        // An owner cut off from the quorum stops serving within its lease,
        // so a deposed owner and its successor rarely serve at once.
        if !self.lease.is_valid() && !self.lease.wait_valid(self.config.lease_renew * 2).await {
            return Err(Error::Unavailable(format!(
                "node {} owns the GET cursor but cannot reach the quorum, retry",
                self.id
            )));
        }
        self.cursors.observe_term(Some(status.term));
        let cell = self.cursors.cell(topic);
        let mut guard = cell.state.lock().await;
        if guard.is_none() {
            // Start from the persisted cursor as of our leadership: every
            // AdvanceCursor committed before is in the state we wait for.
            let version = self.metadata.confirm().await?;
            self.wait_for_version(version).await;
            let persisted = self
                .metadata
                .state()
                .topic(topic)
                .ok_or(Error::TopicNotFound)?
                .cursor;
            cell.next.store(persisted, Ordering::SeqCst);
            cell.persisted.store(persisted, Ordering::SeqCst);
            *guard = Some(TopicCursor {
                buffer: VecDeque::new(),
            });
        }
        let cursor = guard.as_mut().expect("initialised just above");
        // Retention deleted entries the cursor had not delivered yet: it
        // goes on at the first retained one, read ahead or not (a deleted
        // entry is never delivered; the cursor never waits for it).
        let first = self
            .metadata
            .state()
            .topic(topic)
            .map_or(0, |t| t.first_offset());
        if cell.next.load(Ordering::SeqCst) < first {
            cursor.buffer.clear();
            cell.next.store(first, Ordering::SeqCst);
        }
        if cursor.buffer.is_empty() {
            let next = cell.next.load(Ordering::SeqCst);
            cursor.buffer = self.read_ahead(topic, next).await?;
        }
        let Some(entry) = cursor.buffer.pop_front() else {
            return Ok(None);
        };
        let next = cell.next.fetch_add(1, Ordering::SeqCst) + 1;
        drop(guard);
        if next - cell.persisted.load(Ordering::SeqCst) >= PERSIST_BATCH
            && !cell.persisting.swap(true, Ordering::SeqCst)
        {
            if let Some(me) = self.me.upgrade() {
                let topic = topic.clone();
                tokio::spawn(async move {
                    me.persist_cursor(&topic, &cell).await;
                    cell.persisting.store(false, Ordering::SeqCst);
                });
            } else {
                cell.persisting.store(false, Ordering::SeqCst);
            }
        }
        Ok(Some(entry))
    }

    /// Fetches the entries from `offset` on, up to the end of the segment
    /// that holds it. Empty at the end of the topic.
    async fn read_ahead(&self, topic: &TopicName, offset: Offset) -> Result<VecDeque<Bytes>> {
        let state = self.metadata.state();
        let t = state.topic(topic).ok_or(Error::TopicNotFound)?;
        match t.locate(offset) {
            Location::BlockedBy { segment, leader } => {
                let base = pending_base(t, topic, segment, offset)?;
                self.read_pending(topic, segment, leader, offset - base)
                    .await
            }
            Location::Lost { segment, .. } => Err(Error::Internal(format!(
                "the cursor of {topic} is at offset {offset}, inside segment {segment} whose \
                 entries were lost; the loss was accepted behind the cursor, so this is a bug"
            ))),
            Location::At {
                segment,
                leader,
                index,
                sealed_count,
            } => {
                let key = SegmentKey::new(topic.clone(), segment);
                let Some(count) = sealed_count else {
                    let entries = self
                        .read_segment(leader, &key, index, READ_AHEAD)
                        .await?
                        .entries;
                    return Ok(entries.into());
                };
                let replicas = t.segment(segment).map_or(vec![leader], |s| s.replicas());
                let entries = self
                    .read_sealed(&key, &replicas, index, count, |node| {
                        let key = &key;
                        async move {
                            self.read_segment(node, key, index, READ_AHEAD)
                                .await
                                .map(|r| r.entries)
                        }
                    })
                    .await?;
                Ok(entries.into())
            }
        }
    }

    /// Reads at `index` of `segment`, whose count is pending. Its offsets
    /// are fixed (every earlier count is final) and its leader serves
    /// only durable entries, all of which its count will include, so what
    /// a live leader returns is delivered. A leader that cannot answer,
    /// or has nothing there yet, holds readers here; one whose segment is
    /// quarantined (a damaged file) holds them with the damage's place
    /// and what the operator can do.
    async fn read_pending(
        &self,
        topic: &TopicName,
        segment: crate::types::SegmentId,
        leader: crate::types::NodeId,
        index: u64,
    ) -> Result<VecDeque<Bytes>> {
        let key = SegmentKey::new(topic.clone(), segment);
        // The leader is often down: a reader waits a moment, not a
        // connect timeout, before it hears so.
        let read = tokio::time::timeout(
            self.config.lease_renew * 2,
            self.read_segment(leader, &key, index, READ_AHEAD),
        )
        .await;
        match read {
            Ok(Ok(read)) if !read.entries.is_empty() => Ok(read.entries.into()),
            Ok(Err(Error::Corrupt(why))) => Err(quarantined(&why, topic, segment, leader)),
            _ => Err(blocked(topic, segment, leader)),
        }
    }

    async fn persist_cursor(&self, topic: &TopicName, cell: &CursorCell) {
        let next = cell.next.load(Ordering::SeqCst);
        if next <= cell.persisted.load(Ordering::SeqCst) {
            return;
        }
        let cmd = MetadataCmd::AdvanceCursor {
            topic: topic.clone(),
            offset: next,
        };
        match self.metadata.propose(cmd).await {
            Ok(_) => {
                cell.persisted.fetch_max(next, Ordering::SeqCst);
            }
            Err(e) => tracing::debug!(node = self.id, "cannot persist the cursor of {topic}: {e}"),
        }
    }

    /// Runs `f` with the live cursors of `topics` held still (their GETs
    /// wait), passing it the offset each was delivered up to; afterwards
    /// empties their read-ahead buffers, which `f` may have made stale (a
    /// segment closed as lost: its offsets now belong to the next one).
    /// This node must be the consensus leader, which owns the cursors.
    pub(crate) async fn with_cursors_held<T, F, Fut>(&self, topics: &[TopicName], f: F) -> T
    where
        F: FnOnce(Vec<(TopicName, Offset)>) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        self.cursors.observe_term(Some(self.metadata.status().term));
        let cells: Vec<(TopicName, Arc<CursorCell>)> = topics
            .iter()
            .map(|t| (t.clone(), self.cursors.cell(t)))
            .collect();
        // In topic order, one at a time each: GETs hold one cell at most.
        let mut guards = Vec::with_capacity(cells.len());
        let mut delivered = Vec::new();
        for (topic, cell) in &cells {
            let guard = cell.state.lock().await;
            if guard.is_some() {
                delivered.push((topic.clone(), cell.next.load(Ordering::SeqCst)));
            }
            guards.push(guard);
        }
        let out = f(delivered).await;
        for guard in &mut guards {
            if let Some(cursor) = guard.as_mut() {
                cursor.buffer.clear();
            }
        }
        out
    }

    /// Persists every cursor that moved (the cursor loop; shutdown).
    pub(crate) async fn persist_cursors(&self) {
        let status = self.metadata.status();
        if !status.is_leader() {
            self.cursors.observe_term(None);
            return;
        }
        self.cursors.observe_term(Some(status.term));
        for (topic, cell) in self.cursors.all() {
            self.persist_cursor(&topic, &cell).await;
        }
    }
}
