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

#[derive(Default)]
struct Queue {
    pending: Vec<Arc<Segment>>,
    urgent: bool,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

pub(crate) struct Syncer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the syncer thread; `interval` flushes queued segments
    /// periodically even when nobody asks.
    pub fn start(interval: Option<Duration>) -> std::io::Result<Syncer> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
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
    pub fn enqueue(&self, segment: &Arc<Segment>, urgent: bool) {
        let already = segment.queued.swap(true, Ordering::SeqCst);
        if already && !urgent {
            return;
        }
        let mut q = self.shared.queue.lock().expect("sync queue lock poisoned");
        if !already {
            q.pending.push(segment.clone());
        }
        if urgent && !q.urgent {
            q.urgent = true;
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.shared
            .queue
            .lock()
            .expect("sync queue lock poisoned")
            .shutdown = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared, interval: Option<Duration>) {
    let mut next_tick = interval.map(|d| Instant::now() + d);
    loop {
        let (batch, stop) = {
            let mut q = shared.queue.lock().expect("sync queue lock poisoned");
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
                        q = shared
                            .wake
                            .wait_timeout(q, tick - now)
                            .expect("sync queue lock poisoned")
                            .0;
                    }
                    None => q = shared.wake.wait(q).expect("sync queue lock poisoned"),
                }
            }
            q.urgent = false;
            (std::mem::take(&mut q.pending), q.shutdown)
        };
        for segment in batch {
            // Cleared before the snapshot: an append after this point
            // queues the segment again and gets the next round.
            segment.queued.store(false, Ordering::SeqCst);
            segment.sync_round();
        }
        if stop {
            return;
        }
    }
}
