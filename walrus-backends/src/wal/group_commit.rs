//! The syncer: one thread that makes appended data durable for everyone.
//!
//! Appenders write under their segment's short lock, queue the segment
//! here and wait. The syncer takes every queued segment at once and flushes
//! each (msync of the written range, which on Linux is an fdatasync of that
//! range), so all appends that arrived during the previous flush share the
//! next one: group commit. No append lock is held during a flush.
//!
//! With `interval:<ms>` segments are queued without waking the syncer and
//! flushed on its timer; with `never` they are flushed only on request
//! (`sync`, `seal`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::segment::Segment;
use super::stats::WalStats;
use walrus_core::locks::{recover, MutexExt};

#[derive(Default)]
struct Queue {
    pending: Vec<Arc<Segment>>,
    urgent: bool,
    shutdown: bool,
    /// Urgent requests since the syncer last took the queue.
    arrivals: usize,
    /// The syncer is waiting for the rest of a group to arrive...
    gathering: bool,
    /// ...this many urgent requests in all: only the one that completes
    /// the group wakes it (each wake-up is a context switch, and a group
    /// of 64 used to cost 64 of them).
    gather_target: usize,
    /// Segments whose final checkpoint the syncer writes when it stops.
    closing: Vec<Arc<Segment>>,
}

/// Longest a flush is delayed to let more appenders join it.
const MAX_GATHER: Duration = Duration::from_millis(1);

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Flushes, their latency and group sizes (shared with the store).
    stats: Arc<WalStats>,
}

pub(crate) struct Syncer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the syncer thread; `interval` flushes queued segments
    /// periodically even when nobody asks.
    pub fn start(interval: Option<Duration>, stats: Arc<WalStats>) -> std::io::Result<Syncer> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            stats,
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("walrus-wal-sync".into())
            .spawn(move || run(&worker, interval))?;
        Ok(Syncer {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues `segment` for the next flush; `urgent` wakes the syncer now.
    ///
    /// `segment.queued` means "in `pending`, or in the batch the syncer is
    /// working through and not flushed yet" (the syncer clears it before it
    /// snapshots the segment). So it is set only under the queue lock, in
    /// the same step as the push: set before taking the lock, an urgent
    /// enqueuer could see it, skip the push and wake the syncer for a round
    /// without the segment, and the push that followed would wake nobody.
    /// Every appender and reader of that segment then waited for a flush
    /// that never came.
    pub fn enqueue(&self, segment: &Arc<Segment>, urgent: bool) {
        if !urgent && segment.queued.load(Ordering::SeqCst) {
            // Queued and not flushed yet: the flush that comes covers
            // everything written before this call.
            return;
        }
        let mut q = self.shared.queue.lock_or_recover();
        if !segment.queued.swap(true, Ordering::SeqCst) {
            q.pending.push(segment.clone());
        }
        if urgent {
            q.arrivals += 1;
            let wake = !q.urgent || (q.gathering && q.arrivals >= q.gather_target);
            q.urgent = true;
            if wake {
                self.shared.wake.notify_one();
            }
        }
    }
}

impl Syncer {
    /// Stops the syncer after a last round; it then writes the final
    /// checkpoint of every segment in `segments` (a graceful close).
    pub fn close(&self, segments: Vec<Arc<Segment>>) {
        let mut q = self.shared.queue.lock_or_recover();
        q.closing = segments;
        q.shutdown = true;
        self.shared.wake.notify_one();
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.shared.queue.lock_or_recover().shutdown = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared, interval: Option<Duration>) {
    let mut next_tick = interval.map(|d| Instant::now() + d);
    // The previous group: how many joined it and how long its flush took.
    let mut last_group = 0usize;
    let mut last_flush = Duration::ZERO;
    loop {
        let (batch, stop) = {
            let mut q = shared.queue.lock_or_recover();
            loop {
                if q.shutdown || q.urgent {
                    break;
                }
                match next_tick {
                    Some(tick) => {
                        let now = Instant::now();
                        if now >= tick {
                            next_tick = interval.map(|d| now + d);
                            break;
                        }
                        q = recover(shared.wake.wait_timeout(q, tick - now)).0;
                    }
                    None => q = recover(shared.wake.wait(q)),
                }
            }
            // Appenders released by the previous flush come back a few
            // microseconds apart; flushing for the first one alone would
            // split them into two half-sized groups. So when the last group
            // had several members, wait (one flush time at most) for
            // as many to be back.
            if q.urgent && last_group > 1 {
                let deadline = Instant::now() + last_flush.min(MAX_GATHER);
                q.gathering = true;
                q.gather_target = last_group;
                while q.arrivals < last_group && !q.shutdown {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    q = recover(shared.wake.wait_timeout(q, deadline - now)).0;
                }
                q.gathering = false;
            }
            last_group = q.arrivals;
            q.arrivals = 0;
            q.urgent = false;
            (std::mem::take(&mut q.pending), q.shutdown)
        };
        let closing = if stop {
            std::mem::take(&mut shared.queue.lock_or_recover().closing)
        } else {
            Vec::new()
        };
        let started = Instant::now();
        for segment in batch {
            // Cleared before the snapshot: an append after this point
            // queues the segment again and gets the next round.
            segment.queued.store(false, Ordering::SeqCst);
            segment.sync_round(&shared.stats);
            // Its appenders are answered; prepare the blocks they go on to.
            segment.prepare_ahead();
        }
        last_flush = started.elapsed();
        if stop {
            for segment in closing {
                if let Err(e) = segment.write_final_checkpoint() {
                    tracing::warn!(segment = %segment.key, error = %e, "cannot write the WAL's final checkpoint; recovery will treat damage in the last synced data as a torn tail");
                }
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use walrus_core::locks::MutexExt;
    use walrus_core::{SegmentKey, TopicName};

    use crate::wal::{FsyncPolicy, WalConfig, WalStore};

    /// The lost wake-up behind a rare hang of the conformance suite: a
    /// reader's enqueue flagged the segment queued, then waited for the
    /// queue lock; an appender's urgent enqueue saw the flag, skipped the
    /// push and woke the syncer, which flushed a round without the segment;
    /// the reader's push then woke nobody. With the queue lock held here,
    /// an enqueue must not be able to flag the segment without it being in
    /// the queue.
    #[test]
    fn given_the_queue_lock_held_when_a_segment_is_enqueued_should_not_flag_it_before_it_is_queued()
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = WalConfig {
            fsync: FsyncPolicy::Always,
            ..WalConfig::default()
        };
        let store = WalStore::open(dir.path(), config).expect("open WAL");
        let key = SegmentKey::new(TopicName::new("wakeup").expect("valid topic"), 1);
        let seg = store.get_or_create(&key);
        let syncer = &store.inner.syncer;
        let q = syncer.shared.queue.lock_or_recover();
        std::thread::scope(|s| {
            s.spawn(|| syncer.enqueue(&seg, false));
            // Long enough for the enqueuer to reach the lock; it cannot
            // pass it while this test holds it.
            let until = Instant::now() + Duration::from_millis(200);
            while Instant::now() < until {
                let flagged = seg.queued.load(Ordering::SeqCst);
                let in_queue = q.pending.iter().any(|p| Arc::ptr_eq(p, &seg));
                assert!(
                    !flagged || in_queue,
                    "the segment is flagged queued but is not in the queue: an urgent enqueue now would wake the syncer for a round without it"
                );
                std::thread::yield_now();
            }
            drop(q);
        });
        assert!(
            seg.queued.load(Ordering::SeqCst),
            "queued once the lock was free"
        );
    }
}
