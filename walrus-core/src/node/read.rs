//! Reads by offset: READ (with long-polling), OFFSETS and TOPICS COUNTS.
//! Nothing here moves a cursor. An offset is found from metadata alone: a
//! segment's first offset is the sum of the final counts of the segments
//! before it (`TopicState::locate`), and a final count never changes, so an
//! offset once handed out keeps naming the same entry (docs/architecture.md,
//! "Offsets and reads").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::locks::MutexExt;
use crate::metadata::{ClusterState, Location, SegmentStatus, TopicState};
use crate::protocol::Response;
use crate::transport::{NodeRequest, NodeResponse};
use crate::types::{NodeId, Offset, SegmentId, SegmentKey, TopicName};

/// The longest one forwarded read waits at a segment's holder: well inside
/// the transport's request timeout (5 s), so a long WAIT is a few calls.
const MAX_HOLDER_WAIT: Duration = Duration::from_secs(2);
/// Longest pause between attempts while a holder is out of reach.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Wakes readers waiting at the end of a segment this node leads. Only
/// segments someone waits at have an entry, so an append with no reader
/// waiting costs one map lookup.
#[derive(Default)]
pub(crate) struct AppendSignals {
    waiting: Mutex<HashMap<SegmentKey, Arc<Notify>>>,
}

impl AppendSignals {
    fn lock(&self) -> MutexGuard<'_, HashMap<SegmentKey, Arc<Notify>>> {
        // The map holds no invariant a panic could break halfway.
        self.waiting.lock_or_recover()
    }

    /// Entries were appended to `key`: readers waiting there look again.
    pub(crate) fn appended(&self, key: &SegmentKey) {
        if let Some(n) = self.lock().get(key) {
            n.notify_waiters();
        }
    }

    fn subscribe(&self, key: &SegmentKey) -> Subscription<'_> {
        let notify = self.lock().entry(key.clone()).or_default().clone();
        Subscription {
            signals: self,
            key: key.clone(),
            notify,
        }
    }
}

/// One reader's interest in a segment's appends; the last one out removes
/// the segment's entry.
struct Subscription<'a> {
    signals: &'a AppendSignals,
    key: SegmentKey,
    notify: Arc<Notify>,
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        let mut map = self.signals.lock();
        // Clones are made under the lock: two references (the map's and
        // ours) mean nobody else waits here.
        if Arc::strong_count(&self.notify) == 2 {
            map.remove(&self.key);
        }
    }
}

/// What a segment's holder answers: entries from the index asked for, its
/// visible (durable) count, and whether it sealed the segment.
pub(crate) struct Held {
    pub entries: Vec<Bytes>,
    pub count: u64,
    pub sealed: bool,
}

/// One attempt at reading an offset.
enum Step {
    Entries(Vec<Bytes>),
    /// Nothing at the offset yet. `early`: the holder stopped waiting before
    /// its time because, in its view, the segment no longer takes appends.
    AtEnd {
        early: bool,
    },
    /// Waits for this topic's segments to change (a count reported, a
    /// rollover our metadata has not applied yet); answers `Err` if they do
    /// not within the patience.
    Blocked(Error),
    /// A holder out of reach: retried until the deadline.
    Retry(Error),
}

/// Set once, when the node stops: waiting READs answer at once.
///
/// A `Notify`, not a `watch`: tokio's watch wakes its waiters in a random
/// order, which a seeded simulation (walrus-sim) could not replay; a
/// `Notify` wakes them in the order they came.
#[derive(Default)]
pub(crate) struct Stopping {
    stopped: std::sync::atomic::AtomicBool,
    wake: Notify,
}

impl Stopping {
    pub(crate) fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    pub(crate) fn is_set(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once the node stops (at once if it has).
    async fn wait(&self) {
        loop {
            // Registered before the check, so a stop in between wakes it.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.is_set() {
                return;
            }
            woken.await;
        }
    }
}

/// What changes when a topic's offsets can move on: segments added
/// (rollover, failover) and counts becoming final (a report, a loss).
fn shape(t: &TopicState) -> (usize, usize) {
    let finals = t
        .segments
        .iter()
        .filter(|s| s.status.final_count().is_some())
        .count();
    (t.segments.len(), finals)
}

/// Whether `key` takes appends in `state`, or will once `state` catches up
/// with the rollover that opened it (a reader may know of it first).
fn takes_appends(state: &ClusterState, key: &SegmentKey) -> bool {
    state.topic(&key.topic).is_some_and(|t| {
        let current = t.current();
        current.id < key.segment
            || (current.id == key.segment && current.status == SegmentStatus::Open)
    })
}

/// What a READ below the first retained offset is told.
pub(crate) fn deleted(topic: &TopicName, offset: Offset, first: Offset) -> Error {
    Error::BadRequest(format!(
        "deleted: offset {offset} of {topic} was deleted by retention; the first retained \
         offset is {first}: read from {first}"
    ))
}

impl super::Node {
    /// READ: up to `max_entries` entries (and about `max_bytes`) from
    /// `offset` on, within one segment. With a `wait`, a read at the end
    /// waits for the next entry (woken by its append, not by polling) up
    /// to that long; without, it answers at once.
    pub(crate) async fn read_by_offset(
        &self,
        topic: &TopicName,
        offset: Offset,
        max_entries: u32,
        max_bytes: u32,
        wait: Duration,
    ) -> Result<Response> {
        self.known_topic(topic).await?;
        let start = Instant::now();
        let deadline = if self.is_stopping() {
            start
        } else {
            start + wait
        };
        // A reader held by a count about to be reported, or by metadata a
        // moment behind a holder, gets a moment even without WAIT.
        let patience = deadline.max(start + self.config.lease_renew * 2);
        let mut watch = self.metadata.watch();
        let mut pause = Duration::from_millis(5);
        loop {
            let state = watch.borrow_and_update().clone();
            let t = state.topic(topic).ok_or(Error::TopicNotFound)?;
            let first = t.first_offset();
            if offset < first {
                return Err(deleted(topic, offset, first));
            }
            let before = shape(t);
            let step = self
                .read_step(topic, t, offset, max_entries, max_bytes, deadline)
                .await?;
            let (until, outcome) = match step {
                Step::Entries(entries) => {
                    let next = offset + entries.len() as u64;
                    let entries = (offset..).zip(entries).collect();
                    return Ok(Response::Entries { entries, next });
                }
                Step::AtEnd { early: false }
                    if Instant::now() < deadline && !self.is_stopping() =>
                {
                    continue
                }
                Step::AtEnd { .. } => (
                    deadline,
                    Ok(Response::Entries {
                        entries: Vec::new(),
                        next: offset,
                    }),
                ),
                Step::Blocked(e) => (patience, Err(e)),
                Step::Retry(e) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep_until(deadline.min(now + pause)).await;
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                    continue;
                }
            };
            if Instant::now() >= until || self.is_stopping() {
                return outcome;
            }
            let changed = async {
                watch
                    .wait_for(|s| s.topic(topic).map(shape) != Some(before))
                    .await
                    .is_ok()
            };
            // Biased: a random pick among ready branches would make two
            // runs of one simulated seed differ.
            tokio::select! {
                biased;
                ok = changed => {
                    if !ok {
                        // The store is gone: nothing will change.
                        tokio::time::sleep_until(until).await;
                    }
                }
                _ = tokio::time::sleep_until(until) => {}
                _ = self.stopping.wait() => {}
            }
        }
    }

    /// True once the node stops: no read waits any more.
    fn is_stopping(&self) -> bool {
        self.stopping.is_set()
    }

    async fn read_step(
        &self,
        topic: &TopicName,
        t: &TopicState,
        offset: Offset,
        max_entries: u32,
        max_bytes: u32,
        deadline: Instant,
    ) -> Result<Step> {
        match t.locate(offset) {
            Location::Lost { segment, leader } => Err(self.lost(topic, t, segment, leader)),
            Location::BlockedBy { segment, leader } => {
                let base = super::cursor::pending_base(t, topic, segment, offset)?;
                let key = SegmentKey::new(topic.clone(), segment);
                let index = offset - base;
                // The holder is often down: wait a moment, not a connect
                // timeout, before saying so.
                let read = tokio::time::timeout(
                    self.config.lease_renew * 2,
                    self.read_at(leader, &key, index, max_entries, max_bytes, Duration::ZERO),
                )
                .await;
                match read {
                    Ok(Ok(held)) if !held.entries.is_empty() => Ok(Step::Entries(held.entries)),
                    Ok(Ok(held)) => Ok(Step::Blocked(Error::Unavailable(format!(
                        "offsets from {} of {topic} are not numbered yet: segment {segment} on \
                         node {leader} has not reported its count, and reads wait here; retry",
                        base + held.count
                    )))),
                    Ok(Err(Error::Corrupt(why))) => {
                        Err(super::cursor::quarantined(&why, topic, segment, leader))
                    }
                    _ => Ok(Step::Blocked(super::cursor::blocked(
                        topic, segment, leader,
                    ))),
                }
            }
            Location::At {
                segment,
                leader,
                index,
                sealed_count: Some(count),
            } => {
                let key = SegmentKey::new(topic.clone(), segment);
                let replicas = t.segment(segment).map_or(vec![leader], |s| s.replicas());
                let read = self
                    .read_sealed(&key, &replicas, index, count, |node| {
                        let key = &key;
                        async move {
                            self.read_at(node, key, index, max_entries, max_bytes, Duration::ZERO)
                                .await
                                .map(|held| held.entries)
                        }
                    })
                    .await;
                match read {
                    Ok(entries) => Ok(Step::Entries(entries)),
                    Err(e) if e.is_retryable() => Ok(Step::Retry(e)),
                    Err(e) => Err(e),
                }
            }
            Location::At {
                segment,
                leader,
                index,
                sealed_count: None,
            } => {
                let key = SegmentKey::new(topic.clone(), segment);
                let wait = deadline
                    .saturating_duration_since(Instant::now())
                    .min(MAX_HOLDER_WAIT);
                let asked = Instant::now();
                let read = self.read_at(leader, &key, index, max_entries, max_bytes, wait);
                let read = if wait.is_zero() {
                    read.await
                } else {
                    tokio::select! {
                        biased;
                        read = read => read,
                        // A read changes nothing: dropping it is harmless.
                        _ = self.stopping.wait() => return Ok(Step::AtEnd { early: false }),
                    }
                };
                let held = match read {
                    Ok(held) => held,
                    Err(e) if e.is_retryable() => return Ok(Step::Retry(e)),
                    Err(e) => return Err(e),
                };
                if !held.entries.is_empty() {
                    return Ok(Step::Entries(held.entries));
                }
                if held.sealed {
                    // Sealed there, open here: our metadata has not applied
                    // the rollover yet, and the offset may be in the next
                    // segment.
                    return Ok(Step::Blocked(Error::Timeout(format!(
                        "the metadata of {topic} to catch up with the rollover of segment \
                         {segment}"
                    ))));
                }
                if index > held.count {
                    let end = offset - index + held.count;
                    return Err(Error::BadRequest(format!(
                        "offset {offset} is past the end of {topic} ({end}): read from an \
                         offset up to {end}; at {end}, WAIT for the next entry"
                    )));
                }
                Ok(Step::AtEnd {
                    early: asked.elapsed() < wait,
                })
            }
        }
    }

    /// Entries from `index` of sealed `key` (`count` entries), from the
    /// first of its `replicas` (leader first) that serves them: a closed
    /// segment's entries are the same on every replica that holds them,
    /// so a reader whose leader is down, or lacks them, or whose copy is
    /// damaged, reads a follower's. What is past `count` is dropped (a
    /// copy not settled yet may hold a longer tail).
    pub(crate) async fn read_sealed<F, Fut>(
        &self,
        key: &SegmentKey,
        replicas: &[NodeId],
        index: u64,
        count: u64,
        read: F,
    ) -> Result<Vec<Bytes>>
    where
        F: Fn(NodeId) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Bytes>>>,
    {
        let mut failed = None;
        for (i, node) in replicas.iter().enumerate() {
            let attempt = if i + 1 < replicas.len() {
                // Another replica can answer: do not wait out a transport
                // timeout on one that is cut off.
                tokio::time::timeout(self.config.lease, read(*node))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::Timeout(format!("a read of {key} from node {node}")))
                    })
            } else {
                read(*node).await
            };
            match attempt {
                Ok(mut entries) if !entries.is_empty() => {
                    entries.truncate(usize::try_from(count - index).unwrap_or(usize::MAX));
                    return Ok(entries);
                }
                Ok(_) => {
                    failed = Some(Error::Unavailable(format!(
                        "segment {key} on node {node} returned no entry at index {index} of \
                         {count}, retry"
                    )))
                }
                Err(e) => {
                    tracing::debug!(node = self.id, "reading {key} from node {node}: {e}");
                    // A retryable error says more to the caller than a
                    // replica's own problem before it.
                    if failed.is_none() || e.is_retryable() {
                        failed = Some(e);
                    }
                }
            }
        }
        Err(failed.unwrap_or_else(|| {
            Error::Unavailable(format!("segment {key} has no replica to read from, retry"))
        }))
    }

    /// The error for a read that reached a segment closed as lost.
    fn lost(&self, topic: &TopicName, t: &TopicState, segment: SegmentId, leader: NodeId) -> Error {
        let base = t.base_offset(segment).unwrap_or_default();
        let count = t
            .segment(segment)
            .and_then(|s| s.status.final_count())
            .unwrap_or_default();
        let end = base + count;
        Error::Lost(format!(
            "offsets {base} to {} of {topic} were in segment {segment}, whose entries were lost \
             with the storage of node {leader} (accepted with REPLACE-STORAGE); read on from \
             offset {end}",
            end.saturating_sub(1)
        ))
    }

    /// Reads `key` from `index` on at its holder (maybe this node), which
    /// waits up to `wait` for an entry when there is none yet.
    async fn read_at(
        &self,
        holder: NodeId,
        key: &SegmentKey,
        index: u64,
        max_entries: u32,
        max_bytes: u32,
        wait: Duration,
    ) -> Result<Held> {
        if holder == self.id {
            return self
                .read_held(key, index, max_entries, max_bytes, wait)
                .await;
        }
        let request = NodeRequest::ReadWait {
            segment: key.clone(),
            from: index,
            max_entries,
            max_bytes,
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        self.call_holder(holder, key, request).await
    }

    /// Sends a read of `key` (`Read` or `ReadWait`) to its holder.
    pub(crate) async fn call_holder(
        &self,
        holder: NodeId,
        key: &SegmentKey,
        request: NodeRequest,
    ) -> Result<Held> {
        let answer = self
            .transport
            .call(holder, request)
            .await
            // A read changes nothing: a lost answer is only a delay.
            .map_err(|e| match e {
                Error::NoAnswer(why) => {
                    Error::Unavailable(format!("reading {key} from node {holder}: {why}, retry"))
                }
                e => e,
            })?;
        match answer {
            NodeResponse::Entries {
                entries,
                count,
                sealed,
            } => Ok(Held {
                entries,
                count,
                sealed,
            }),
            other => Err(Error::Internal(format!(
                "node {holder} answered a read with {other:?}"
            ))),
        }
    }

    /// The holder's side of a read: what the local store has at `from`;
    /// when that is nothing and the segment is its topic's open one, waits
    /// (up to `wait`, at most [`MAX_HOLDER_WAIT`]) for an append to it or
    /// for the topic to move on, then looks once more.
    pub(crate) async fn read_held(
        &self,
        key: &SegmentKey,
        from: u64,
        max_entries: u32,
        max_bytes: u32,
        wait: Duration,
    ) -> Result<Held> {
        let deadline = Instant::now() + wait.min(MAX_HOLDER_WAIT);
        let subscription = (!wait.is_zero()).then(|| self.appends.subscribe(key));
        let mut watch = self.metadata.watch();
        loop {
            // Registered before looking, so an append between the look
            // and the wait still wakes us.
            let mut notified = subscription
                .as_ref()
                .map(|s| Box::pin(s.notify.clone().notified_owned()));
            if let Some(n) = notified.as_mut() {
                n.as_mut().enable();
            }
            let Held {
                entries,
                count,
                sealed,
            } = self
                .read_visible(key, from, max_entries as usize, max_bytes as usize)
                .await?;
            let open = takes_appends(&watch.borrow_and_update(), key);
            if !entries.is_empty()
                || sealed
                || !open
                || Instant::now() >= deadline
                || self.is_stopping()
            {
                return Ok(Held {
                    entries,
                    count,
                    sealed,
                });
            }
            let appended = async {
                match notified {
                    Some(n) => n.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = appended => {}
                changed = watch.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(deadline).await;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.stopping.wait() => {}
            }
        }
    }

    /// Entries `from..` of `key` in the local store as readers may see
    /// them (at most `max_entries`, about `max_bytes`), with the count they
    /// may see and whether the copy is sealed here: the leader of an open
    /// replicated segment stops at its commit point ([`Node::visible`]).
    pub(crate) async fn read_visible(
        &self,
        key: &SegmentKey,
        from: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Held> {
        // Info first: the entries read next are at least as many.
        let info = self.log.info(key).await?;
        let (held, sealed) = info.map_or((0, false), |i| (i.count, i.sealed));
        let count = self.visible(key, held).await;
        let want = if count < held {
            max_entries.min(usize::try_from(count.saturating_sub(from)).unwrap_or(usize::MAX))
        } else {
            max_entries
        };
        let entries = if want == 0 {
            Vec::new()
        } else {
            self.log.read(key, from, want, max_bytes).await?
        };
        Ok(Held {
            entries,
            count,
            sealed,
        })
    }

    /// OFFSETS: the first offset (retention deleted everything before it)
    /// and the end,
    /// one past the last entry a READ can return now.
    pub(crate) async fn topic_offsets(&self, topic: &TopicName) -> Result<(Offset, Offset)> {
        self.known_topic(topic).await?;
        let state = self.metadata.state();
        let t = state.topic(topic).ok_or(Error::TopicNotFound)?;
        Ok((t.first_offset(), self.topic_end(topic, t).await?))
    }

    /// The sum of the final counts up to the first segment without one,
    /// plus what its holder serves (offsets after a pending segment are not
    /// given out until its count is known).
    async fn topic_end(&self, topic: &TopicName, t: &TopicState) -> Result<Offset> {
        let mut base = 0;
        for seg in &t.segments {
            if let Some(count) = seg.status.final_count() {
                base += count;
                continue;
            }
            let key = SegmentKey::new(topic.clone(), seg.id);
            let held = tokio::time::timeout(
                self.config.lease_renew * 2,
                self.read_at(seg.leader, &key, 0, 0, 0, Duration::ZERO),
            )
            .await;
            return match held {
                Ok(Ok(held)) => Ok(base + held.count),
                _ if seg.status == SegmentStatus::Pending => {
                    Err(super::cursor::blocked(topic, seg.id, seg.leader))
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(Error::Unavailable(format!(
                    "node {} holds the open segment {key} and did not answer, retry",
                    seg.leader
                ))),
            };
        }
        Ok(base)
    }

    /// TOPICS COUNTS: every topic with its first offset and end (`null`
    /// with the reason when the end cannot be known now).
    pub(crate) async fn topic_counts(&self) -> serde_json::Value {
        let state = self.metadata.state();
        let ends = state.topics.iter().map(|(name, t)| async move {
            (name, t.first_offset(), self.topic_end(name, t).await)
        });
        let rows: Vec<serde_json::Value> = futures::future::join_all(ends)
            .await
            .into_iter()
            .map(|(name, first, end)| match end {
                Ok(end) => serde_json::json!({"topic": name.as_str(), "first": first, "end": end}),
                Err(e) => serde_json::json!({
                    "topic": name.as_str(),
                    "first": first,
                    "end": null,
                    "error": e.to_string(),
                }),
            })
            .collect();
        serde_json::Value::Array(rows)
    }
}
