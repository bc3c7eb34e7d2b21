//! The room thread: reserves disk blocks ahead of the appenders and creates
//! each segment's next file before the current one is full.
//!
//! Why a thread of its own: reserving (a `fallocate`, or writing zeros
//! where it is missing) and creating a file (header sync, rename, directory
//! fsync) are blocking I/O of milliseconds. Done inside an append they ran
//! on a tokio worker under the segment's lock, stalling every other
//! appender of the segment and, on a small machine, Raft's heartbeats; done
//! on the syncer they would delay group commits. Here they overlap with
//! both. An append that still finds no room (a burst faster than this
//! thread, or a full disk) makes it itself on a blocking thread.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::segment::Segment;
use walrus_core::locks::{recover, MutexExt};

#[derive(Default)]
struct Queue {
    pending: Vec<Arc<Segment>>,
    shutdown: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

pub(crate) struct RoomMaker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl RoomMaker {
    pub fn start() -> std::io::Result<RoomMaker> {
        let shared = Arc::new(Shared::default());
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("walrus-wal-room".into())
            .spawn(move || run(&worker))?;
        Ok(RoomMaker {
            shared,
            thread: Some(thread),
        })
    }

    /// Asks for room ahead in `segment` (once, however often asked before
    /// the thread gets to it).
    pub fn enqueue(&self, segment: &Arc<Segment>) {
        if segment.room_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared
            .queue
            .lock_or_recover()
            .pending
            .push(segment.clone());
        self.shared.wake.notify_one();
    }
}

impl Drop for RoomMaker {
    fn drop(&mut self) {
        self.shared.queue.lock_or_recover().shutdown = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared) {
    // Warn once per run of failures: on a full disk every append near the
    // end of its reservation asks again.
    let mut failing = false;
    loop {
        let batch = {
            let mut q = shared.queue.lock_or_recover();
            while q.pending.is_empty() && !q.shutdown {
                q = recover(shared.wake.wait(q));
            }
            if q.shutdown {
                return;
            }
            std::mem::take(&mut q.pending)
        };
        for segment in batch {
            segment.room_queued.store(false, Ordering::Release);
            match segment.make_room(None) {
                Ok(()) => failing = false,
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(segment = %segment.key, error = %e, "cannot reserve WAL space ahead; appends that need it will fail until there is room");
                    }
                }
            }
        }
    }
}
