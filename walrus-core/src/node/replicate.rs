//! Quorum acknowledgement: the leader of a replicated segment streams its
//! appends to the segment's followers and acknowledges an entry once a
//! majority of the replica set, itself included, holds it.
//!
//! Per follower one sender task and one queue. An append on the leader
//! puts its entries in every follower's queue (by index) as soon as its own
//! store took them; the sender sends everything queued from the follower's
//! count in one [`NodeRequest::Replicate`], so while one request is in
//! flight the next batch gathers behind it: one round trip carries as many
//! writers' entries as arrived meanwhile, never one entry at a time. The
//! follower answers its count; a follower that missed entries (a lost
//! request, a restart) answers a count below what was sent, and the sender
//! sends again from there, reading from the leader's own store what its
//! queue no longer holds. A follower that does not answer is retried with
//! a backoff, and does not hold anyone up while a majority answers.
//!
//! An unreplicated segment (no followers) is remembered as such once, and
//! its appends then take the path they always took.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};

use super::Node;
use crate::error::{Error, Result};
use crate::locks::MutexExt;
use crate::transport::{NodeRequest, NodeResponse, ProducerMark};
use crate::types::{NodeId, ProducerId, SegmentKey};

/// A `Replicate` request stops growing past this many entries or bytes
/// (the first batch always goes whole).
const MAX_REPLICATE_ENTRIES: usize = 4096;
const MAX_REPLICATE_BYTES: usize = 4 << 20;
/// A follower's queue holds at most this many bytes: past it the queue is
/// dropped and the follower is caught up from the leader's store, so a
/// dead follower costs no memory.
const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Backoff between attempts to reach a follower that failed to answer.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);

/// The replicated segments this node leads, and the unreplicated ones it
/// has seen (`None`: nothing to do for them).
#[derive(Default)]
pub(crate) struct Replication {
    segments: Mutex<HashMap<SegmentKey, Option<Arc<Copies>>>>,
    /// Segments a failover asked this node for its count
    /// ([`NodeRequest::Fence`]): their `Replicate`s are refused from then
    /// on, so the old leader cannot count this copy towards a majority
    /// for anything the failover did not see.
    fenced: Mutex<HashSet<SegmentKey>>,
}

/// One replicated segment on its leader.
pub(crate) struct Copies {
    key: SegmentKey,
    /// Replicas that must hold an entry before it is acknowledged, the
    /// leader included.
    quorum: usize,
    /// Each follower's count as it last answered (the order of
    /// `followers`).
    acked: watch::Sender<Vec<u64>>,
    /// Which followers answered since these copies started: until a
    /// quorum has, `acked` says nothing of what they hold (a restarted
    /// leader), and readers wait rather than see the commit point at 0.
    heard: Vec<std::sync::atomic::AtomicBool>,
    followers: Vec<Arc<Link>>,
    /// Each producer's latest idempotent write to the segment, by the
    /// index after its last entry. A `Replicate` carries the marks that
    /// end within its entries: a follower holding a write's last entry
    /// was told of it then, unless a later write of the same producer
    /// already replaced it, which happens only once this write was
    /// acknowledged (a producer's writes are serial up to the quorum), so
    /// every replica that counted towards its quorum journaled it.
    marks: Mutex<Marks>,
}

#[derive(Default)]
struct Marks {
    by_end: BTreeMap<u64, Vec<ProducerMark>>,
    end_of: HashMap<ProducerId, u64>,
}

impl Marks {
    fn note(&mut self, mark: ProducerMark) {
        if let Some(old) = self.end_of.insert(mark.producer.clone(), mark.end()) {
            if let Some(list) = self.by_end.get_mut(&old) {
                list.retain(|m| m.producer != mark.producer);
                if list.is_empty() {
                    self.by_end.remove(&old);
                }
            }
        }
        self.by_end.entry(mark.end()).or_default().push(mark);
    }

    /// The marks of writes whose last entry is in `first..end`.
    fn ending_in(&self, first: u64, end: u64) -> Vec<ProducerMark> {
        if end <= first {
            return Vec::new();
        }
        self.by_end
            .range(first + 1..=end)
            .flat_map(|(_, list)| list.iter().cloned())
            .collect()
    }
}

/// The leader's side of one follower.
struct Link {
    node: NodeId,
    state: Mutex<LinkState>,
    wake: Notify,
}

#[derive(Default)]
struct LinkState {
    /// Entries to send, by the index of the first of each batch.
    queue: BTreeMap<u64, Vec<Bytes>>,
    queued_bytes: usize,
    /// The leader's count as far as appends were queued (the end of the
    /// last batch), also once the queue was dropped.
    end: u64,
    /// Where the next request starts: the follower's count as far as we
    /// know.
    next: u64,
    /// The segment was sealed on the leader at this count: the follower
    /// seals its copy there once it holds all of it.
    seal: Option<u64>,
}

impl Replication {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SegmentKey, Option<Arc<Copies>>>> {
        self.segments.lock_or_recover()
    }

    /// The copies of `key`, if it is known here; `Some(None)` for a known
    /// unreplicated segment.
    fn get(&self, key: &SegmentKey) -> Option<Option<Arc<Copies>>> {
        self.lock().get(key).cloned()
    }

    /// Forgets the segments `keep` says are done with.
    pub(crate) fn retain(&self, keep: impl Fn(&SegmentKey, Option<&Arc<Copies>>) -> bool) {
        self.lock().retain(|k, c| keep(k, c.as_ref()));
    }

    pub(crate) fn fence(&self, key: &SegmentKey) {
        self.fenced.lock_or_recover().insert(key.clone());
    }

    pub(crate) fn is_fenced(&self, key: &SegmentKey) -> bool {
        self.fenced.lock_or_recover().contains(key)
    }

    /// Forgets the fences of segments `keep` says are done with.
    pub(crate) fn retain_fences(&self, keep: impl Fn(&SegmentKey) -> bool) {
        self.fenced.lock_or_recover().retain(|k| keep(k));
    }
}

impl Copies {
    /// True when `count` entries are on a quorum (with the leader's own).
    fn has_quorum(&self, acked: &[u64], count: u64) -> bool {
        1 + acked.iter().filter(|c| **c >= count).count() >= self.quorum
    }

    /// The count a quorum holds when the leader holds everything: what
    /// `has_quorum` compares against.
    fn quorum_count(&self, acked: &[u64]) -> u64 {
        if self.quorum <= 1 {
            return u64::MAX;
        }
        let mut counts = acked.to_vec();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        counts.get(self.quorum - 2).copied().unwrap_or(0)
    }

    /// True once a quorum (the leader included) answered since the copies
    /// started.
    fn quorum_heard(&self) -> bool {
        let heard = self
            .heard
            .iter()
            .filter(|h| h.load(std::sync::atomic::Ordering::Acquire))
            .count();
        1 + heard >= self.quorum
    }

    /// The commit point: how many entries a majority of the replicas holds
    /// when the leader holds `held`.
    fn committed(&self, held: u64) -> u64 {
        let mut counts: Vec<u64> = self.acked.borrow().clone();
        counts.push(held);
        counts.sort_unstable_by(|a, b| b.cmp(a));
        counts
            .get(self.quorum.saturating_sub(1))
            .copied()
            .unwrap_or(0)
            .min(held)
    }
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock_or_recover()
    }

    /// Queues entries `first..first + entries.len()`.
    fn push(&self, first: u64, entries: &[Bytes]) {
        let mut st = self.lock();
        let end = first + entries.len() as u64;
        st.end = st.end.max(end);
        if end > st.next {
            let bytes: usize = entries.iter().map(Bytes::len).sum();
            if st.queued_bytes + bytes > MAX_QUEUED_BYTES {
                // Far behind: the follower catches up from the store.
                st.queue.clear();
                st.queued_bytes = 0;
            } else {
                st.queue.insert(first, entries.to_vec());
                st.queued_bytes += bytes;
            }
        }
        drop(st);
        self.wake.notify_one();
    }

    /// What to send next: `Some((first, entries from the queue))`, or
    /// `Some((first, empty))` when entries `first..upto` must be read from
    /// the store first (the queue lost them), with `upto`; `None` when the
    /// follower has everything queued.
    fn next_batch(&self) -> Option<(u64, Vec<Bytes>, u64)> {
        let mut st = self.lock();
        let next = st.next;
        // Drop what the follower holds already.
        while let Some((&first, batch)) = st.queue.first_key_value() {
            if first + batch.len() as u64 > next {
                break;
            }
            let bytes: usize = batch.iter().map(Bytes::len).sum();
            st.queued_bytes -= bytes;
            st.queue.pop_first();
        }
        if st.end <= next {
            return None;
        }
        let mut out: Vec<Bytes> = Vec::new();
        let mut bytes = 0;
        let mut at = next;
        for (&first, batch) in st.queue.range(..) {
            if first > at {
                break;
            }
            let skip = usize::try_from(at - first).unwrap_or(usize::MAX);
            for e in batch.get(skip..).unwrap_or_default() {
                if !out.is_empty()
                    && (out.len() >= MAX_REPLICATE_ENTRIES || bytes + e.len() > MAX_REPLICATE_BYTES)
                {
                    return Some((next, out, at));
                }
                bytes += e.len();
                out.push(e.clone());
                at += 1;
            }
        }
        if out.is_empty() {
            // A hole before the queue (dropped, or an append whose caller
            // went away before queueing it): read it from the store.
            let upto = st
                .queue
                .keys()
                .next()
                .copied()
                .unwrap_or(st.end)
                .max(next + 1);
            return Some((next, out, upto.min(st.end)));
        }
        Some((next, out, at))
    }
}

impl Node {
    /// After entries `first..` of `key` went into this node's store: queues
    /// them for the segment's followers, if it has any.
    /// `mark`: the idempotent write these entries are, told to the
    /// followers with them.
    pub(crate) fn replicate(
        &self,
        key: &SegmentKey,
        first: u64,
        entries: &[Bytes],
        mark: Option<ProducerMark>,
    ) {
        let copies = match self.replication.get(key) {
            Some(None) => return,
            Some(Some(c)) => c,
            None => match self.start_copies(key, first + entries.len() as u64) {
                Some(c) => c,
                None => return,
            },
        };
        if let Some(mark) = mark {
            // Before the entries are queued: no batch holding them goes
            // out without it.
            copies.marks.lock_or_recover().note(mark);
        }
        for link in &copies.followers {
            link.push(first, entries);
        }
    }

    /// Registers `key`, starting a sender per follower when it has some
    /// and is open. `held`: this node holds that many entries of it (a
    /// restarted leader catches its followers up from its store).
    fn start_copies(&self, key: &SegmentKey, held: u64) -> Option<Arc<Copies>> {
        let state = self.metadata.state();
        let seg = state.topic(&key.topic)?.segment(key.segment)?;
        let mut segments = self.replication.lock();
        if let Some(known) = segments.get(key) {
            return known.clone();
        }
        if seg.leader != self.id || seg.followers.is_empty() {
            segments.insert(key.clone(), None);
            return None;
        }
        if seg.status != crate::metadata::SegmentStatus::Open {
            // Closed before this node (re)started leading it: its copies
            // are settled by the rollover or failover that closed it.
            return None;
        }
        let followers: Vec<Arc<Link>> = seg
            .followers
            .iter()
            .map(|node| {
                Arc::new(Link {
                    node: *node,
                    state: Mutex::new(LinkState {
                        end: held,
                        ..LinkState::default()
                    }),
                    wake: Notify::new(),
                })
            })
            .collect();
        let copies = Arc::new(Copies {
            key: key.clone(),
            quorum: seg.quorum(),
            acked: watch::channel(vec![0; followers.len()]).0,
            heard: followers.iter().map(|_| Default::default()).collect(),
            followers,
            marks: Mutex::default(),
        });
        segments.insert(key.clone(), Some(copies.clone()));
        drop(segments);
        let mut tasks = self.tasks_lock();
        tasks.retain(|t| !t.is_finished());
        for (i, link) in copies.followers.iter().enumerate() {
            tasks.push(tokio::spawn(send_loop(
                self.me.clone(),
                copies.clone(),
                link.clone(),
                i,
            )));
        }
        Some(copies)
    }

    /// Starts copying `key`, an open segment this node leads, if nothing
    /// did since this node started: a restarted leader learns what its
    /// followers hold (and so its commit point) without waiting for an
    /// append or a reader.
    pub(crate) async fn ensure_copies(&self, key: &SegmentKey) {
        if self.replication.get(key).is_some() {
            return;
        }
        if let Ok(info) = self.log.info(key).await {
            self.start_copies(key, info.map_or(0, |i| i.count));
        }
    }

    /// After `key` was sealed here at `count`: waits a moment (two
    /// renewal periods) for a majority of its replicas to hold all of it,
    /// and says whether one does (always, for an unreplicated segment).
    /// Followers usually lag by the round trip in flight; one that does
    /// not answer must not hold the topic up, so past that the rollover
    /// has the segment closed from its replicas instead.
    pub(crate) async fn await_copies(&self, key: &SegmentKey, count: u64) -> bool {
        let copies = match self.replication.get(key) {
            Some(Some(copies)) => copies,
            Some(None) => return true,
            None => {
                let replicated = self
                    .metadata
                    .state()
                    .topic(&key.topic)
                    .and_then(|t| t.segment(key.segment))
                    .is_some_and(|s| !s.followers.is_empty());
                if !replicated {
                    return true;
                }
                // Sealed before this life copied anything: learn what the
                // followers hold (and send them what they lack).
                let Some(copies) = self.start_copies(key, count) else {
                    return false;
                };
                self.seal_copies(key, count);
                copies
            }
        };
        let mut acked = copies.acked.subscribe();
        tokio::time::timeout(
            self.config.lease_renew * 2,
            acked.wait_for(|a| copies.has_quorum(a, count)),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    /// Waits until entries `..count` of `key` are on a quorum of its
    /// replicas (at once for an unreplicated segment). When no quorum
    /// answers in a lease's time, the entries are stored here but cannot
    /// be vouched for: the answer is "outcome unknown", and the segment is
    /// rolled so that the topic goes on with live replicas.
    pub(crate) async fn await_quorum(&self, key: &SegmentKey, count: u64) -> Result<()> {
        let Some(Some(copies)) = self.replication.get(key) else {
            return Ok(());
        };
        let mut acked = copies.acked.subscribe();
        let reached = tokio::time::timeout(
            self.config.lease,
            acked.wait_for(|a| copies.has_quorum(a, count)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        match reached {
            true => Ok(()),
            false => {
                self.spawn_rollover(key.clone());
                let held = 1 + copies
                    .acked
                    .borrow()
                    .iter()
                    .filter(|c| **c >= count)
                    .count();
                Err(Error::OutcomeUnknown(format!(
                    "only {held} of the {} replicas of {key} confirmed the write within {:?} \
                     ({} needed); it is stored on its leader, node {}, and may be read: read \
                     the topic to check before sending it again",
                    copies.followers.len() + 1,
                    self.config.lease,
                    copies.quorum,
                    self.id
                )))
            }
        }
    }

    /// `key` was sealed here at `count`: each follower seals its copy
    /// there once it holds all of it.
    pub(crate) fn seal_copies(&self, key: &SegmentKey, count: u64) {
        if let Some(Some(copies)) = self.replication.get(key) {
            for link in &copies.followers {
                let mut st = link.lock();
                st.seal = Some(count);
                st.end = st.end.max(count);
                drop(st);
                link.wake.notify_one();
            }
        }
    }

    /// A follower's side of [`NodeRequest::Replicate`]: stores the entries
    /// at their indexes (what it holds already is skipped), seals at
    /// `seal` once it holds that many, and answers its count. A gap (it
    /// missed earlier entries) stores nothing and answers the count it
    /// holds, from which the leader sends again.
    pub(crate) async fn on_replicate(
        &self,
        segment: &SegmentKey,
        first: u64,
        entries: &[Bytes],
        seal: Option<u64>,
        marks: &[ProducerMark],
    ) -> Result<NodeResponse> {
        if self.replication.is_fenced(segment) {
            // The old leader's last seal, at the count the failover sealed
            // this copy at too: nothing to refuse, and its sender stops.
            if let (Some(n), true) = (seal, entries.is_empty()) {
                if self
                    .log
                    .info(segment)
                    .await?
                    .is_some_and(|i| i.sealed && i.count == n)
                {
                    return Ok(NodeResponse::Replicated { count: n });
                }
            }
            return Err(fenced(segment, self.id));
        }
        if !marks.is_empty() {
            // Journaled before the entries, as on the leader: a copy that
            // holds a write also knows whose it is.
            self.journal_marks(segment, marks).await?;
        }
        // The store decides what is a gap and what is held, under its own
        // lock, from the count it has *written*. `info` gives the count a
        // reader may see, which under `--fsync interval` trails the written
        // one until the next sync: checking against it made every second
        // `Replicate` of a stream look like a gap and sent it again.
        let mut count = if entries.is_empty() {
            self.log.info(segment).await?.map_or(0, |i| i.count)
        } else {
            match self.log.append_at(segment, first, entries).await {
                Ok(a) => a.count,
                // A gap: nothing stored; answer what is held, the leader
                // sends again from there (what it sends twice is skipped).
                Err(Error::BadRequest(_)) => self.log.info(segment).await?.map_or(0, |i| i.count),
                Err(e) => return Err(e),
            }
        };
        if let Some(n) = seal {
            if count >= n {
                count = self.log.seal_at(segment, n).await?;
            }
        }
        if self.replication.is_fenced(segment) {
            // Fenced while storing: the failover may not have counted
            // these entries, so the old leader must not either (the
            // failover's seal cuts them if they are past its count).
            return Err(fenced(segment, self.id));
        }
        Ok(NodeResponse::Replicated { count })
    }

    /// The entries of `key` that readers may see here when this node holds
    /// `held`: all of them, except on the leader of an open replicated
    /// segment, where only the commit point (what a majority holds), so
    /// that no reader sees an entry a failover could cut. When the copies
    /// started so recently (this node restarted) that a quorum has not
    /// answered yet, it first waits for that, up to two renewal periods,
    /// so that a reader is not told the segment ends at 0 while the
    /// followers hold what was acknowledged before the restart.
    pub(crate) async fn visible(&self, key: &SegmentKey, held: u64) -> u64 {
        let copies = {
            let state = self.metadata.state();
            let Some(seg) = state.topic(&key.topic).and_then(|t| t.segment(key.segment)) else {
                return held;
            };
            if seg.status != crate::metadata::SegmentStatus::Open
                || seg.leader != self.id
                || seg.followers.is_empty()
            {
                return held;
            }
            match self.replication.get(key) {
                Some(Some(c)) => c,
                Some(None) => return held,
                None => match self.start_copies(key, held) {
                    Some(c) => c,
                    None => return held,
                },
            }
        };
        if held > 0 && !copies.quorum_heard() {
            let mut acked = copies.acked.subscribe();
            let _ = tokio::time::timeout(
                self.config.lease_renew * 2,
                acked.wait_for(|_| copies.quorum_heard()),
            )
            .await;
        }
        copies.committed(held)
    }

    /// Entries `from..upto` of `key` from this node's store (a follower
    /// that the queue no longer covers).
    async fn read_for_copy(&self, key: &SegmentKey, from: u64, upto: u64) -> Result<Vec<Bytes>> {
        let want = usize::try_from(upto.saturating_sub(from))
            .unwrap_or(usize::MAX)
            .min(MAX_REPLICATE_ENTRIES);
        self.log.read(key, from, want, MAX_REPLICATE_BYTES).await
    }
}

/// Sends `link`'s queue to its follower until the segment is sealed on it,
/// or nobody needs it any more (the node stopped, the segment is closed
/// without a seal here: a failover).
async fn send_loop(node: Weak<Node>, copies: Arc<Copies>, link: Arc<Link>, index: usize) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let Some(n) = node.upgrade() else { return };
        let (first, mut entries, upto) = match link.next_batch() {
            Some(batch) => batch,
            None => {
                let seal = {
                    let st = link.lock();
                    st.seal.filter(|count| st.next >= *count)
                };
                if let Some(count) = seal {
                    let sealed = n
                        .send_copy(&copies, &link, index, count, Vec::new(), Some(count))
                        .await;
                    if sealed.is_ok() || n.copies_abandoned(&copies.key, Some(count)) {
                        return;
                    }
                    let pause = backoff.min(n.config.lease_renew);
                    drop(n);
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                    continue;
                }
                let seal = link.lock().seal;
                if n.copies_abandoned(&copies.key, seal) {
                    return;
                }
                let patience = n.config.lease_renew;
                drop(n);
                let _ = tokio::time::timeout(patience, link.wake.notified()).await;
                continue;
            }
        };
        if entries.is_empty() && upto > first {
            match n.read_for_copy(&copies.key, first, upto).await {
                Ok(read) => entries = read,
                Err(e) => tracing::warn!(
                    node = n.id,
                    "cannot read {} from {first} to copy it to node {}: {e}",
                    copies.key,
                    link.node
                ),
            }
            if entries.is_empty() {
                drop(n);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
                continue;
            }
        }
        let seal = link.lock().seal;
        match n
            .send_copy(&copies, &link, index, first, entries, seal)
            .await
        {
            Ok(()) => backoff = FIRST_BACKOFF,
            Err(_) if n.copies_abandoned(&copies.key, seal) => return,
            Err(_) => {
                let pause = backoff.min(n.config.lease_renew);
                drop(n);
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
        }
    }
}

impl Node {
    /// One `Replicate` to `link`'s follower; its answer moves the link on.
    async fn send_copy(
        &self,
        copies: &Copies,
        link: &Link,
        index: usize,
        first: u64,
        entries: Vec<Bytes>,
        seal: Option<u64>,
    ) -> Result<()> {
        let marks = copies
            .marks
            .lock_or_recover()
            .ending_in(first, first + entries.len() as u64);
        let request = NodeRequest::Replicate {
            segment: copies.key.clone(),
            first,
            entries,
            seal,
            marks,
        };
        match self.transport.call(link.node, request).await? {
            NodeResponse::Replicated { count } => {
                link.lock().next = count;
                let first_answer =
                    !copies.heard[index].swap(true, std::sync::atomic::Ordering::AcqRel);
                // Waiters (every writer of the batch) are woken only when
                // what a quorum holds moved: the second follower's answer
                // to the same batch usually moves nothing, and waking every
                // writer for it again cost the leader a context switch each.
                copies.acked.send_if_modified(|acked| {
                    let before = copies.quorum_count(acked);
                    acked[index] = count;
                    first_answer || copies.quorum_count(acked) != before
                });
                // The commit point may have moved: readers waiting at it
                // look again.
                self.appends.appended(&copies.key);
                Ok(())
            }
            other => Err(Error::Internal(format!(
                "node {} answered a Replicate of {} with {other:?}",
                link.node, copies.key
            ))),
        }
    }

    /// True when `key` no longer needs copying from here (`link` seals
    /// at `seal`, if this node sealed it): it is not ours, or it was
    /// closed by a failover (its count is settled elsewhere: the metadata
    /// names another count than ours, or none yet).
    fn copies_abandoned(&self, key: &SegmentKey, seal: Option<u64>) -> bool {
        let state = self.metadata.state();
        state
            .topic(&key.topic)
            .and_then(|t| t.segment(key.segment))
            .is_none_or(|s| {
                s.leader != self.id
                    || match s.status {
                        crate::metadata::SegmentStatus::Open => false,
                        crate::metadata::SegmentStatus::Sealed { count } => seal != Some(count),
                        _ => true,
                    }
            })
    }
}

/// What a fenced replica answers the old leader's `Replicate`.
fn fenced(segment: &SegmentKey, node: NodeId) -> Error {
    Error::Refused(format!(
        "node {node} no longer takes copies of {segment} from its leader: a failover is \
         closing the segment from its replicas"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        Link {
            node: 2,
            state: Mutex::new(LinkState::default()),
            wake: Notify::new(),
        }
    }

    fn entries(names: &[&'static str]) -> Vec<Bytes> {
        names
            .iter()
            .map(|n| Bytes::from_static(n.as_bytes()))
            .collect()
    }

    #[test]
    fn given_appends_queued_while_a_request_is_out_should_send_them_in_one_batch() {
        let l = link();
        // Two writers' appends finished out of order.
        l.push(2, &entries(&["c", "d"]));
        l.push(0, &entries(&["a", "b"]));
        l.push(4, &entries(&["e"]));
        assert_eq!(
            l.next_batch(),
            Some((0, entries(&["a", "b", "c", "d", "e"]), 5))
        );
        l.lock().next = 3;
        assert_eq!(l.next_batch(), Some((3, entries(&["d", "e"]), 5)));
        l.lock().next = 5;
        assert_eq!(l.next_batch(), None, "the follower holds everything");
        assert_eq!(l.lock().queued_bytes, 0, "what it holds is dropped");
    }

    #[test]
    fn given_a_follower_behind_the_queue_should_ask_for_a_read_of_the_gap() {
        let l = link();
        l.push(0, &entries(&["a", "b"]));
        l.push(2, &entries(&["c"]));
        l.lock().next = 3;
        l.next_batch();
        // The follower lost its disk: it answers 0, the queue starts at 3.
        l.push(3, &entries(&["d"]));
        l.lock().next = 0;
        assert_eq!(l.next_batch(), Some((0, Vec::new(), 3)), "read 0..3");
        l.lock().next = 3;
        assert_eq!(l.next_batch(), Some((3, entries(&["d"]), 4)));
    }
}
