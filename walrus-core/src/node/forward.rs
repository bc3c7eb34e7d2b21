//! Forwarded writes that meet on their way to one segment leader travel
//! together.
//!
//! While one forwarded append to a segment is in flight, appends to the same
//! segment from other connections queue here. When it returns, everything
//! queued goes to the leader as one [`NodeRequest::Append`]: one frame, one
//! append and one sync on the leader, instead of one each. That is group
//! commit across the hop, and it is what keeps a non-leader close to the
//! leader's rate when many clients write through it. A segment with nothing
//! in flight forwards at once, so a lone writer waits for nobody.
//!
//! The leader stores a prefix of a combined batch (all that fits its
//! segment). Each writer gets its own share of that answer: its entries
//! that are in, or, when none of them is, `SegmentSealed`, which sends it
//! through the rollover like a single write refused by a full segment.
//! Order is kept per writer: a connection's lane has one write in flight,
//! and a writer's entries stay contiguous and in order in the batch.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::Node;
use crate::error::{Error, Result};
use crate::locks::MutexExt;
use crate::log_store::Appended;
use crate::transport::{NodeRequest, NodeResponse};
use crate::types::{NodeId, SegmentKey};

/// A combined batch stops growing past this many entries or bytes (the
/// first writer's entries always go, whatever their size).
const MAX_COMBINED_ENTRIES: usize = 1024;
const MAX_COMBINED_BYTES: usize = 1 << 20;

/// The queues of forwarded appends, one per (segment leader, segment).
#[derive(Default)]
pub(super) struct Forwards {
    queues: Mutex<HashMap<(NodeId, SegmentKey), Queue>>,
}

#[derive(Default)]
struct Queue {
    /// Writers waiting for the append in flight to return.
    waiting: Vec<Waiter>,
}

struct Waiter {
    entries: Vec<Bytes>,
    reply: oneshot::Sender<Result<Appended>>,
}

/// What a writer does on arrival: send now (nothing in flight for its
/// segment), or wait for its share of the next combined batch.
enum Turn {
    Send(Vec<Bytes>),
    Wait(oneshot::Receiver<Result<Appended>>),
}

impl Forwards {
    fn lock(&self) -> MutexGuard<'_, HashMap<(NodeId, SegmentKey), Queue>> {
        self.queues.lock_or_recover()
    }

    /// Takes the next combined batch for `slot`, or forgets the slot when
    /// nobody waits (nothing is in flight for it any more).
    fn next_batch(&self, slot: &(NodeId, SegmentKey)) -> Vec<Waiter> {
        let mut queues = self.lock();
        let Some(queue) = queues.get_mut(slot) else {
            return Vec::new();
        };
        if queue.waiting.is_empty() {
            queues.remove(slot);
            return Vec::new();
        }
        let mut entries = 0;
        let mut bytes = 0;
        let mut take = 0;
        for w in &queue.waiting {
            let size: usize = w.entries.iter().map(Bytes::len).sum();
            if take > 0
                && (entries + w.entries.len() > MAX_COMBINED_ENTRIES
                    || bytes + size > MAX_COMBINED_BYTES)
            {
                break;
            }
            entries += w.entries.len();
            bytes += size;
            take += 1;
        }
        queue.waiting.drain(..take).collect()
    }
}

impl Node {
    /// Sends `entries` to `leader`, which stores a prefix of them (all that
    /// fit its segment) and answers how many: at once when nothing is in
    /// flight to that segment, else together with the other writes that
    /// queued behind the one in flight.
    pub(super) async fn forward_append(
        &self,
        leader: NodeId,
        segment: SegmentKey,
        entries: Vec<Bytes>,
    ) -> Result<Appended> {
        let slot = (leader, segment);
        let turn = {
            let mut queues = self.forwards.lock();
            match queues.get_mut(&slot) {
                Some(queue) => {
                    let (reply, answer) = oneshot::channel();
                    queue.waiting.push(Waiter { entries, reply });
                    Turn::Wait(answer)
                }
                None => {
                    queues.insert(slot.clone(), Queue::default());
                    Turn::Send(entries)
                }
            }
        };
        match turn {
            // The batch carrying our entries was abandoned mid-flight (the
            // task sending it was cancelled): they may have reached the leader.
            Turn::Wait(answer) => answer.await.unwrap_or_else(|_| {
                Err(Error::OutcomeUnknown(format!(
                    "the forwarded write to {} was dropped unanswered; it may or may not be \
                     stored: read the topic to check before sending it again",
                    slot.1
                )))
            }),
            Turn::Send(entries) => {
                // However this ends (answer, or this future dropped), the
                // writers queued behind it are sent on.
                let _baton = Baton {
                    node: self,
                    slot: &slot,
                };
                self.send_append(slot.0, &slot.1, entries).await
            }
        }
    }

    /// Sends the combined batches queued for `slot` until none is left.
    async fn drain_forwards(&self, slot: (NodeId, SegmentKey)) {
        loop {
            let batch = self.forwards.next_batch(&slot);
            if batch.is_empty() {
                return;
            }
            let total: usize = batch.iter().map(|w| w.entries.len()).sum();
            let mut entries = Vec::with_capacity(total);
            let mut replies = Vec::with_capacity(batch.len());
            for w in batch {
                replies.push((w.entries.len(), w.reply));
                entries.extend(w.entries);
            }
            let result = self.send_append(slot.0, &slot.1, entries).await;
            share_out(&slot.1, result, replies);
        }
    }

    /// One forwarded append, bounded by the forward timeout.
    ///
    /// An append that was sent and not answered may have been stored: the
    /// writer is told the outcome is unknown, never a retryable error, or
    /// a client that follows the advice would store it twice. Errors that
    /// prove it was not sent (`Unreachable`, `ShuttingDown` before sending)
    /// and the leader's own refusals pass through as they are.
    async fn send_append(
        &self,
        leader: NodeId,
        segment: &SegmentKey,
        entries: Vec<Bytes>,
    ) -> Result<Appended> {
        let call = self.transport.call(
            leader,
            NodeRequest::Append {
                segment: segment.clone(),
                entries,
            },
        );
        let unknown = |why: String| {
            Error::OutcomeUnknown(format!(
                "the write was sent to node {leader}, the leader of {segment}: {why}; it may or \
                 may not be stored: read the topic to check before sending it again"
            ))
        };
        let answer = match tokio::time::timeout(self.config.forward_timeout, call).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(Error::NoAnswer(why))) => return Err(unknown(why)),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(unknown(format!(
                    "no answer within {:?}",
                    self.config.forward_timeout
                )))
            }
        };
        match answer {
            NodeResponse::Appended { first_index, count } => Ok(Appended { first_index, count }),
            other => Err(Error::Internal(format!(
                "node {leader} answered an append with {other:?}"
            ))),
        }
    }
}

/// Gives each writer of a combined batch its share of the answer: the
/// leader stored `count - first_index` entries from the front.
fn share_out(
    segment: &SegmentKey,
    result: Result<Appended>,
    replies: Vec<(usize, oneshot::Sender<Result<Appended>>)>,
) {
    let Appended { first_index, count } = match result {
        Ok(a) => a,
        Err(e) => {
            for (_, reply) in replies {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
    };
    let mut next = first_index;
    for (n, reply) in replies {
        let stored = (n as u64).min(count.saturating_sub(next));
        let share = if stored == 0 {
            // The segment filled up before this writer's entries.
            Err(Error::SegmentSealed(segment.clone()))
        } else {
            Ok(Appended {
                first_index: next,
                count: next + stored,
            })
        };
        next += stored;
        let _ = reply.send(share); // its writer may have gone; nothing to do
    }
}

/// Held by the writer whose append is in flight for a slot; when it is
/// done (or dropped), the writes queued behind it go out from a task of
/// their own, so that this writer's answer is not held up by theirs.
struct Baton<'a> {
    node: &'a Node,
    slot: &'a (NodeId, SegmentKey),
}

impl Drop for Baton<'_> {
    fn drop(&mut self) {
        let more = {
            let mut queues = self.node.forwards.lock();
            match queues.get(self.slot) {
                Some(queue) if !queue.waiting.is_empty() => true,
                // Nobody queued: nothing is in flight for the slot any more.
                _ => {
                    queues.remove(self.slot);
                    false
                }
            }
        };
        if !more {
            return;
        }
        let slot = self.slot.clone();
        match (
            self.node.me.upgrade(),
            tokio::runtime::Handle::try_current(),
        ) {
            (Some(node), Ok(runtime)) => {
                runtime.spawn(async move { node.drain_forwards(slot).await });
            }
            // The node is going away: the queued writers were never sent.
            _ => {
                let queue = self.node.forwards.lock().remove(&slot);
                for w in queue.into_iter().flat_map(|q| q.waiting) {
                    let _ = w.reply.send(Err(Error::ShuttingDown));
                }
            }
        }
    }
}
