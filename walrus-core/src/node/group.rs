//! Consumer groups: COMMIT (and SEEK) stores a group's offset in the
//! replicated metadata; FETCH is a READ from it. Nothing here commits on
//! its own: a group moves only when its consumer says it is done with the
//! entries, so an entry fetched and not committed is fetched again
//! (at-least-once; docs/architecture.md, "Consumer groups").
//!
//! `COMMIT … ASYNC` is applied at once in this node's memory (its FETCHes
//! read from it) and made durable behind the consumer's back: one flusher
//! task per group and topic proposes the latest such offset, one proposal
//! in flight at a time, so a consumer that commits every batch costs at
//! most one consensus round per round trip of consensus, not one per
//! batch. Until the proposal is applied the offset is in this node's
//! memory only: a crash of this node, or a FETCH on another node, goes on
//! from the last durable commit, which redelivers (at-least-once still
//! holds). docs/protocol.md, "Asynchronous commits".

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::locks::MutexExt;
use crate::metadata::MetadataCmd;
use crate::protocol::Response;
use crate::types::{GroupName, Offset, TopicName};
use crate::CmdResult;

/// The longest pause of a flusher between failed proposals.
const MAX_FLUSH_PAUSE: Duration = Duration::from_secs(1);

type GroupKey = (GroupName, TopicName);

/// Asynchronous commits this node took and has not made durable yet.
/// A group and topic has a slot from its first `COMMIT … ASYNC` until its
/// flusher finds nothing left to propose; the flusher alone removes it.
#[derive(Default)]
pub(crate) struct AsyncCommits {
    slots: Mutex<HashMap<GroupKey, Slot>>,
}

struct Slot {
    /// The offset committed asynchronously here and not yet known applied
    /// by consensus: what this node's FETCHes of the group read from.
    pending: Option<Offset>,
    /// Held around each proposal of the group's offset from this node
    /// (the flusher's and a durable COMMIT's), so they land in the order
    /// they were taken.
    proposing: Arc<tokio::sync::Mutex<()>>,
}

impl AsyncCommits {
    fn lock(&self) -> MutexGuard<'_, HashMap<GroupKey, Slot>> {
        // Every change to the map is one assignment: nothing half done.
        self.slots.lock_or_recover()
    }

    /// The offset of a commit of `group` on `topic` taken here and not yet
    /// durable.
    pub(crate) fn pending(&self, group: &GroupName, topic: &TopicName) -> Option<Offset> {
        self.lock()
            .get(&(group.clone(), topic.clone()))
            .and_then(|s| s.pending)
    }

    /// Whether nothing waits to be made durable (for a graceful stop).
    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl super::Node {
    /// `COMMIT … ASYNC`: `group` reads `topic` from `offset` next on this
    /// node at once; the offset is proposed to consensus in the background
    /// (the latest one, with one proposal in flight per group and topic).
    pub(crate) async fn commit_offset_async(
        &self,
        group: &GroupName,
        topic: &TopicName,
        offset: Offset,
    ) -> Result<()> {
        self.check_commit_range(topic, offset).await?;
        let key = (group.clone(), topic.clone());
        let start_flusher = {
            let mut slots = self.async_commits.lock();
            match slots.get_mut(&key) {
                Some(slot) => {
                    slot.pending = Some(offset);
                    false
                }
                None => {
                    slots.insert(
                        key.clone(),
                        Slot {
                            pending: Some(offset),
                            proposing: Arc::default(),
                        },
                    );
                    true
                }
            }
        };
        if start_flusher {
            let me = self.me.clone();
            tokio::spawn(flush_group(me, key));
        }
        Ok(())
    }

    /// Waits (up to the request timeout) until every asynchronous commit
    /// taken here is durable or given up: a graceful stop loses none.
    pub(crate) async fn flush_async_commits(&self) {
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        while !self.async_commits.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !self.async_commits.is_empty() {
            tracing::warn!(
                node = self.id,
                "stopping with asynchronous commits not yet durable: their groups will \
                 fetch again from their last durable commit"
            );
        }
    }

    /// Refuses an offset outside the topic as the quorum knows it.
    async fn check_commit_range(&self, topic: &TopicName, offset: Offset) -> Result<()> {
        let (mut first, mut end) = self.topic_offsets(topic).await?;
        if offset < first || offset > end {
            // Our metadata may lag (a segment another node already rolled
            // still looks open here, so the end looks short): refuse only
            // what is outside the topic as the quorum knows it.
            self.catch_up().await?;
            (first, end) = self.topic_offsets(topic).await?;
        }
        if offset < first || offset > end {
            return Err(Error::BadRequest(format!(
                "offset {offset} is outside {topic} ({first} to {end}): commit an offset from \
                 {first} to {end} (the end: every entry read)"
            )));
        }
        Ok(())
    }

    /// Proposes `group`'s offset on `topic` to consensus.
    async fn propose_commit(
        &self,
        group: &GroupName,
        topic: &TopicName,
        offset: Offset,
    ) -> Result<()> {
        let cmd = MetadataCmd::CommitOffset {
            group: group.clone(),
            topic: topic.clone(),
            offset,
        };
        match self.metadata.propose(cmd).await {
            Ok(CmdResult::Rejected(why)) => Err(Error::BadRequest(why)),
            Ok(_) => Ok(()),
            // Setting an offset twice is setting it once: a client may
            // simply send the COMMIT again, so say so.
            Err(e) if e.is_outcome_unknown() => Err(Error::Unavailable(format!(
                "the commit of {group} on {topic} may or may not be stored ({e}); sending the \
                 same COMMIT again is safe"
            ))),
            Err(e) => Err(e),
        }
    }

    /// COMMIT: `group` reads `topic` from `offset` next. Any offset from
    /// the first to the end moves it, backwards too (a seek). It replaces
    /// an asynchronous commit of the group taken here and not yet durable,
    /// and lands after it.
    pub(crate) async fn commit_offset(
        &self,
        group: &GroupName,
        topic: &TopicName,
        offset: Offset,
    ) -> Result<()> {
        self.check_commit_range(topic, offset).await?;
        let proposing = {
            let mut slots = self.async_commits.lock();
            slots.get_mut(&(group.clone(), topic.clone())).map(|slot| {
                slot.pending = None;
                slot.proposing.clone()
            })
        };
        let _turn = match &proposing {
            Some(p) => Some(p.lock().await),
            None => None,
        };
        self.propose_commit(group, topic, offset).await
    }

    /// FETCH: a READ from the offset `group` committed for `topic` (0 when
    /// none; the first retained offset when retention deleted it): the one
    /// of an asynchronous commit taken here and not yet durable, else the
    /// durable one, after catching up with the quorum so that a commit
    /// acknowledged by any node is seen here.
    pub(crate) async fn fetch(
        &self,
        group: &GroupName,
        topic: &TopicName,
        max_entries: u32,
        max_bytes: u32,
        wait: Duration,
    ) -> Result<Response> {
        self.known_topic(topic).await?;
        // An asynchronous commit taken here and not yet durable is newer
        // than anything consensus holds for the group (its flusher will
        // write it over that): no need to ask the quorum.
        let pending = self.async_commits.pending(group, topic);
        if pending.is_none() {
            self.catch_up().await?;
        }
        let state = self.metadata.state();
        // A committed offset that retention has deleted since reads from
        // the first retained entry: the answer's first offset shows the
        // jump. The commit stays as it was until the consumer commits.
        let first = state.topic(topic).map_or(0, |t| t.first_offset());
        let committed = pending.or_else(|| state.committed_offset(group, topic));
        let offset = committed.unwrap_or(0).max(first);
        drop(state);
        self.read_by_offset(topic, offset, max_entries, max_bytes, wait)
            .await
    }
}

/// Makes the asynchronous commits of one group and topic durable: proposes
/// the latest until none is left, then removes the slot. A failed proposal
/// is retried (the offset stays pending and served here) until the node
/// is gone; one that consensus refuses (the topic was deleted) is dropped.
async fn flush_group(node: std::sync::Weak<super::Node>, key: GroupKey) {
    let (group, topic) = &key;
    let mut pause = Duration::from_millis(10);
    loop {
        let Some(me) = node.upgrade() else { return };
        let proposing = {
            let mut slots = me.async_commits.lock();
            match slots.get(&key) {
                Some(Slot {
                    pending: Some(_),
                    proposing,
                }) => proposing.clone(),
                // Nothing left (or a durable COMMIT took over): done. The
                // check and the removal are one step under the lock, so
                // an asynchronous commit either finds the slot (and this
                // flusher proposes it) or starts a new flusher.
                _ => {
                    slots.remove(&key);
                    return;
                }
            }
        };
        let turn = proposing.lock().await;
        // Read under our turn: a durable COMMIT may have replaced it.
        let Some(offset) = me.async_commits.pending(group, topic) else {
            continue;
        };
        let result = me.propose_commit(group, topic, offset).await;
        drop(turn);
        let settled = match &result {
            Ok(()) => true,
            Err(e @ (Error::BadRequest(_) | Error::TopicNotFound)) => {
                tracing::warn!(
                    node = me.id,
                    "the asynchronous commit of {group} on {topic} at {offset} was refused and \
                     is dropped: {e}"
                );
                true
            }
            Err(_) => false,
        };
        if settled {
            pause = Duration::from_millis(10);
            let mut slots = me.async_commits.lock();
            if let Some(slot) = slots.get_mut(&key) {
                // A newer one came meanwhile: it goes next.
                if slot.pending == Some(offset) {
                    slot.pending = None;
                }
            }
            continue;
        }
        if me.stopping.is_set() {
            // A stopping node gives up: its groups fetch again from their
            // last durable commit (at-least-once).
            me.async_commits.lock().remove(&key);
            tracing::warn!(
                node = me.id,
                "stopping: the asynchronous commit of {group} on {topic} at {offset} is not \
                 durable and is dropped"
            );
            return;
        }
        if let Err(e) = result {
            tracing::debug!(
                node = me.id,
                "the asynchronous commit of {group} on {topic} at {offset} is not durable yet, \
                 retrying: {e}"
            );
        }
        drop(me);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_FLUSH_PAUSE);
    }
}
