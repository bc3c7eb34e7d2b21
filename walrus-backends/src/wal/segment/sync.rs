//! Durability: the syncer flushes what was written, publishes it to
//! readers and answers the appenders waiting for it; the first failed
//! sync fails the segment for good and rolls back its unsynced tail.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use walrus_core::{Error, Result};

use super::{AppendState, Segment, Waiter};
use crate::wal::index::Pos;
use crate::wal::segment_file::{SegmentFile, HEADER_LEN};
use crate::wal::stats::WalStats;
use walrus_core::locks::{MutexExt, RwLockExt};

impl Segment {
    /// True when entry `from` is written but not durable yet: a reader
    /// there should ask for a flush rather than take "nothing yet" for an
    /// answer for a whole interval (or forever, with `never`).
    pub fn unsynced_at(&self, from: u64) -> bool {
        from >= self.visible.load(Ordering::Acquire) && from < self.written.load(Ordering::Acquire)
    }

    /// Where the durable data ends as far as the syncer knows (part, byte
    /// offset in that part's file); `None` before the first sync.
    pub fn durable_end(&self) -> Option<(u32, u64)> {
        self.lock().synced_pos.map(|p| (p.part, p.off() as u64))
    }

    /// Adds a waiter for everything written so far to be durable; `None`
    /// if it already is.
    pub fn sync_waiter(&self) -> Option<oneshot::Receiver<Result<()>>> {
        let mut st = self.lock();
        if st.synced_count >= st.count && st.synced_pos == st.pos {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let target = st.count;
        st.waiters.push(Waiter { target, tx });
        Some(rx)
    }

    /// Called by the syncer only: makes everything written so far durable
    /// and completes the waiters it covers. Holds the append lock only to
    /// snapshot and to publish, never during the flush. Records each flush
    /// in `stats` before any waiter hears of it.
    pub fn sync_round(&self, stats: &WalStats) {
        let (from, target, target_count, parts) = {
            let mut st = self.lock();
            if self.failure.get().is_some() {
                // Nothing is flushed again: what is durable stays so, what
                // was lost was rolled back; only waiters are answered.
                self.answer_after_failure(st);
                return;
            }
            let Some(target) = st.pos else {
                let synced = st.synced_count;
                let done = take_waiters(&mut st.waiters, synced);
                drop(st);
                complete(done, Ok(()));
                return;
            };
            if st.synced_pos == Some(target) {
                let synced = st.synced_count;
                let done = take_waiters(&mut st.waiters, synced);
                drop(st);
                complete(done, Ok(()));
                return;
            }
            let first_part = st.synced_pos.map_or(0, |p| p.part) as usize;
            let parts: Vec<_> = self
                .shared
                .read_or_recover()
                .parts
                .get(first_part..=target.part as usize)
                .map(<[_]>::to_vec)
                .unwrap_or_default();
            (st.synced_pos, target, st.count, parts)
        };
        let started = Instant::now();
        let result = if self.params.health.take_injected() {
            Err(Error::Storage(format!(
                "sync of segment {} failed: injected failure (as EIO)",
                self.key
            )))
        } else {
            flush_parts(from, target, &parts, &self.last_checkpoint)
        };
        let took = started.elapsed();
        let mut st = self.lock();
        match result {
            Ok(()) => {
                st.synced_pos = Some(target);
                st.synced_count = target_count;
                self.visible.store(target_count, Ordering::Release);
                let done = take_waiters(&mut st.waiters, target_count);
                drop(st);
                stats.record_flush(took, done.len());
                complete(done, Ok(()));
            }
            Err(e) => {
                stats.record_flush(took, 0);
                let synced = st.synced_count;
                let lost = st.count - synced;
                let why = format!(
                    "segment {} takes no more appends: a sync of its files failed ({e}); entries from index {synced} on may not be on disk and a retried sync cannot tell. Its {synced} durable entries stay readable; the topic goes on in a new segment once this one is sealed. Check the disk (dmesg, SMART)",
                    self.key
                );
                tracing::error!(
                    segment = %self.key,
                    error = %e,
                    durable = synced,
                    dropped = lost,
                    "WAL sync failed: the segment refuses appends from now on and keeps only its {synced} durable entries (the {lost} written after them are dropped; under fsync=interval/never some of them were acknowledged)"
                );
                self.params.health.record_failed_sync();
                let _ = self.failure.set(why);
                // Take back everything past the durable point (zeros in the
                // map, later files removed), so that neither a later flush
                // nor a seal nor a restart from the page cache can serve
                // what the disk may not hold.
                self.rollback(&mut st);
                self.answer_after_failure(st);
            }
        }
    }

    /// Answers the waiters of a failed segment: those covered by the
    /// durable count (a seal's) succeed, the others get the failure.
    fn answer_after_failure(&self, mut st: MutexGuard<'_, AppendState>) {
        let synced = st.synced_count;
        let done = take_waiters(&mut st.waiters, synced);
        let failed = std::mem::take(&mut st.waiters);
        drop(st);
        complete(done, Ok(()));
        let why = self.failure.get().cloned().unwrap_or_default();
        complete(failed, Err(Error::Storage(why)));
    }

    /// Why the segment refuses appends, if a sync of it failed.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// Called by the syncer only, on a graceful close: writes the durable
    /// end into the current file's header (after the data it covers is on
    /// disk), so that recovery reports damage anywhere before it.
    pub fn write_final_checkpoint(&self) -> Result<()> {
        let (file, synced) = {
            let st = self.lock();
            let Some(synced) = st.synced_pos else {
                return Ok(());
            };
            if self.sealed.load(Ordering::Acquire) {
                return Ok(());
            }
            let sh = self.shared.read_or_recover();
            let Some(file) = sh.parts.get(synced.part as usize).cloned() else {
                return Ok(());
            };
            (file, synced)
        };
        if synced.off() as u64 <= file.checkpoint() {
            return Ok(());
        }
        // SAFETY: only the syncer writes headers of open files.
        unsafe { file.set_checkpoint(synced.off() as u64) };
        file.flush(0, HEADER_LEN)
    }

    fn rollback(&self, st: &mut AppendState) {
        let Some(pos) = st.pos else { return };
        let start = st.synced_pos.unwrap_or(Pos::new(0, HEADER_LEN));
        let mut sh = self.shared.write_or_recover();
        for part in start.part..=pos.part {
            let Some(f) = sh.parts.get(part as usize) else {
                break;
            };
            let from = if part == start.part {
                start.off()
            } else {
                HEADER_LEN
            };
            let to = if part == pos.part { pos.off() } else { f.len() };
            // SAFETY: beyond `visible`, under the append lock.
            unsafe { f.zero_range(from, to) };
            let _ = f.flush(from, to);
        }
        for f in sh.parts.drain(start.part as usize + 1..) {
            let _ = std::fs::remove_file(f.path());
        }
        // Numbered for the old write position: made again when needed.
        for f in st.ready.drain(..) {
            let _ = std::fs::remove_file(f.path());
        }
        sh.part_count = sh.parts.len() as u32;
        sh.index.truncate(st.synced_count);
        st.current = sh.parts.get(start.part as usize).cloned();
        st.pos = st.current.as_ref().map(|_| start);
        st.count = st.synced_count;
        self.written.store(st.count, Ordering::Release);
    }
}

/// How often at most the syncer rewrites a file's header with a new
/// checkpoint. Rewriting it on every flush costs a second write per sync
/// (the header page, apart from the data); once per interval makes that
/// negligible. The price: after an unclean stop, damage to the data synced
/// in the last interval (plus one flush) is taken for a torn tail and cut
/// instead of being reported. A crash never damages synced data, so this
/// only concerns bit rot in those last milliseconds; a graceful close
/// writes the final checkpoint ([`Segment::write_final_checkpoint`]).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

fn flush_parts(
    from: Option<Pos>,
    target: Pos,
    parts: &[Arc<SegmentFile>],
    last_checkpoint: &Mutex<Instant>,
) -> Result<()> {
    let first_part = from.map_or(0, |p| p.part);
    for (i, f) in parts.iter().enumerate() {
        let part = first_part + i as u32;
        let start = match from {
            Some(p) if p.part == part => p.off(),
            _ => HEADER_LEN,
        };
        if part == target.part {
            // The header records the end of the previous sync: durable for
            // sure, so recovery may call anything bad before it corruption.
            let mut last = last_checkpoint.lock_or_recover();
            if start as u64 > f.checkpoint() && last.elapsed() >= CHECKPOINT_EVERY {
                *last = Instant::now();
                // SAFETY: only the syncer writes headers of open files.
                unsafe { f.set_checkpoint(start as u64) };
                f.flush(0, target.off())?;
            } else {
                f.flush(start, target.off())?;
            }
        } else {
            f.flush(start, f.len())?;
        }
    }
    Ok(())
}

fn take_waiters(waiters: &mut Vec<Waiter>, durable: u64) -> Vec<Waiter> {
    let (done, rest): (Vec<_>, Vec<_>) = waiters.drain(..).partition(|w| w.target <= durable);
    *waiters = rest;
    done
}

fn complete(waiters: Vec<Waiter>, result: Result<()>) {
    for w in waiters {
        let _ = w.tx.send(result.clone());
    }
}
