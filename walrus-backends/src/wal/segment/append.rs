//! Appends: entries are copied into the maps under the append lock, only
//! into blocks already reserved and files already created; making that
//! room (blocking I/O) happens without the lock, ahead of time on the room
//! thread or, when an append finds none, on a blocking thread.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use bytes::Bytes;
use tokio::sync::oneshot;
use walrus_core::log_store::replica_errors;
use walrus_core::{Appended, Error, Result, SegmentLimit};

use super::{part_path, AppendState, Segment, Waiter};
use crate::durable_dir::{create_dir_durable, sync_dir};
use crate::wal::index::Pos;
use crate::wal::segment_file::{SegmentFile, HEADER_LEN, RECORD_HEADER, RESERVE_CHUNK};
use walrus_core::locks::{MutexExt, RwLockExt};

/// When the current file has less than this left, the next one is created
/// ahead (at most half a file, for small files).
const NEXT_FILE_AHEAD: usize = 4 * RESERVE_CHUNK;

/// When to create the next file: [`NEXT_FILE_AHEAD`] before the end, or
/// eight appends of the last one's size when that is more (a fast writer
/// must not reach the end before the file, header sync and directory sync
/// are done); at most half a file.
fn next_file_lead(len: usize, last_append: usize) -> usize {
    NEXT_FILE_AHEAD
        .max(last_append.saturating_mul(8))
        .min(len / 2)
}

/// The reservation step of a file of `len` bytes.
pub(super) fn chunk(len: usize) -> usize {
    RESERVE_CHUNK.min(len)
}

/// How far ahead of the write position `off` to keep blocks reserved: a
/// step for a file that holds little (what an idle topic costs), more as
/// the file fills (half of what it holds: a busy file is reserved in a few
/// large steps, not 64 small ones, each of which briefly blocks the
/// appenders' page faults), and two appends of the size of the last one
/// when that is more (a writer of 1 MiB batches would otherwise outrun the
/// room thread on every append); at most [`MAX_AHEAD`].
fn ahead(len: usize, off: usize, last_append: usize) -> usize {
    chunk(len).max((off / 2).max(last_append.saturating_mul(2)).min(MAX_AHEAD))
}

/// What the reservation step of [`ahead`] is based on: the write offset in
/// the segment's first file, and a whole file once the segment has filled
/// one (a file recovered part-way after a restart).
fn proven(len: usize, part: u32, off: usize) -> usize {
    if part > 0 {
        len
    } else {
        off
    }
}

/// What a new file of part `part` gets reserved at creation, for a first
/// write ending at `end`. The first file of a segment starts with a step
/// (what an idle topic costs); a later one is the whole file, since its
/// segment has filled one already: grown from 1 MiB again, a writer of
/// ~500 MB/s outran the room thread ~70 times a second (bench: "waits for
/// room"), and reserved whole, 2-5 times. The reservation runs on the
/// room thread, off the append path.
fn initial_reservation(len: usize, part: u32, end: usize, last_append: usize) -> usize {
    if part > 0 {
        len
    } else {
        reserve_target(end.max(ahead(len, 0, last_append)), len)
    }
}

/// The most reserved ahead of one segment's writer.
const MAX_AHEAD: usize = 8 * RESERVE_CHUNK;

/// How far to reserve so that `need` is covered, in whole steps.
pub(super) fn reserve_target(need: usize, len: usize) -> usize {
    let c = chunk(len);
    need.div_ceil(c).saturating_mul(c).min(len)
}

/// Where an append of entries of the given sizes writes, file by file: the
/// end (record bytes, plus room for a next marker) in the current file, and
/// in each new file it needs.
struct Plan {
    current_end: Option<usize>,
    new_ends: Vec<usize>,
}

fn plan(
    current: Option<(usize, usize)>,
    file_len: usize,
    sizes: impl Iterator<Item = usize>,
) -> Plan {
    let mut current_end = current.map(|(off, _)| off + RECORD_HEADER);
    let mut sim = current;
    let mut new_ends: Vec<usize> = Vec::new();
    for len in sizes {
        let fits = sim.is_some_and(|(off, flen)| off + 2 * RECORD_HEADER + len <= flen);
        if !fits {
            new_ends.push(HEADER_LEN);
            sim = Some((HEADER_LEN, file_len));
        }
        let (off, _) = sim.as_mut().expect("set just above");
        *off += RECORD_HEADER + len;
        let end = *off + RECORD_HEADER;
        match new_ends.last_mut() {
            Some(e) => *e = end,
            None => current_end = Some(end),
        }
    }
    Plan {
        current_end,
        new_ends,
    }
}

/// What an append found.
pub(crate) enum AppendStep {
    Done {
        appended: Appended,
        /// With group commit: completes once the entries are durable.
        durable: Option<oneshot::Receiver<Result<()>>>,
        /// The reservation or the next file should be prepared ahead.
        wants_room: bool,
    },
    /// Not enough reserved space or files: call `make_room` (blocking)
    /// with the same entries, then append again.
    NeedRoom,
}

impl Segment {
    /// Keeps the blocks ahead of the write position written (see
    /// [`SegmentFile::prepare_ahead`]): one step at most, called by the
    /// syncer after each flush. Holds the append lock only while zeros are
    /// copied into the page cache; the writeback starts after.
    pub fn prepare_ahead(&self) {
        if !self.params.prepare_ahead
            || self.sealed.load(Ordering::Acquire)
            || self.failure.get().is_some()
        {
            return;
        }
        let (file, range) = {
            let st = self.lock();
            let (Some(file), Some(pos)) = (st.current.clone(), st.pos) else {
                return;
            };
            // SAFETY: under the append lock; `pos` is the write position
            // in `current`.
            match unsafe { file.prepare_ahead(pos.off()) } {
                Ok(Some(range)) => {
                    let bytes = (range.1 - range.0) as u64;
                    self.params
                        .prepared_bytes
                        .fetch_add(bytes, Ordering::Relaxed);
                    (file, range)
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(segment = %self.key, error = %e, "cannot write WAL blocks ahead; syncs stay slower");
                    file.stop_preparing();
                    return;
                }
            }
        };
        if let Err(e) = file.start_writeback(range.0, range.1) {
            tracing::debug!(segment = %self.key, error = %e, "cannot start the writeback of WAL blocks written ahead");
            file.stop_preparing();
        }
    }

    /// Writes `entries` into the map, or says that room must be made first
    /// ([`AppendStep::NeedRoom`]): no I/O here. With group commit, returns a
    /// receiver that completes once they are durable (the caller queues the
    /// segment for the syncer). Either way they become visible only once
    /// the syncer has flushed them.
    pub fn append(&self, entries: &[Bytes], limit: SegmentLimit) -> Result<AppendStep> {
        self.check_sizes(entries)?;
        let st = self.lock();
        if self.sealed.load(Ordering::Acquire) || st.sealing.is_some() {
            return Err(Error::SegmentSealed(self.key.clone()));
        }
        self.check_writable()?;
        let n = entries.len() as u64;
        let bytes: u64 = entries.iter().map(|e| e.len() as u64).sum();
        if st.count > 0
            && (st.count.saturating_add(n) > limit.entries
                || st.bytes.saturating_add(bytes) > limit.bytes)
        {
            return Err(Error::SegmentSealed(self.key.clone()));
        }
        if n == 0 {
            let count = st.count;
            return Ok(AppendStep::Done {
                appended: Appended {
                    first_index: count,
                    count,
                },
                durable: None,
                wants_room: false,
            });
        }
        self.write(st, entries)
    }

    /// Stores `entries` at indexes `first..` (contract 11): the part the
    /// segment holds already is skipped, the rest written as `append`
    /// writes it. The check and the write are under one lock, so racing
    /// retransmits store each index once.
    pub fn append_at(&self, first: u64, entries: &[Bytes]) -> Result<AppendStep> {
        self.check_sizes(entries)?;
        let st = self.lock();
        let end = first.saturating_add(entries.len() as u64);
        let sealed_at = if self.sealed.load(Ordering::Acquire) {
            Some(self.visible.load(Ordering::Acquire))
        } else {
            st.sealing
        };
        if let Some(sealed_at) = sealed_at {
            // A retransmit that crosses the seal is harmless; anything new
            // is not: the count is final.
            return if end <= sealed_at {
                Ok(self.held(st, first, end))
            } else {
                Err(Error::SegmentSealed(self.key.clone()))
            };
        }
        if first > st.count {
            return Err(replica_errors::gap(&self.key, first, st.count));
        }
        self.check_writable()?;
        let skip = (st.count - first) as usize;
        if skip >= entries.len() {
            return Ok(self.held(st, first, end));
        }
        Ok(match self.write(st, &entries[skip..])? {
            AppendStep::Done {
                appended,
                durable,
                wants_room,
            } => AppendStep::Done {
                appended: Appended {
                    first_index: first,
                    count: appended.count,
                },
                durable,
                wants_room,
            },
            AppendStep::NeedRoom => AppendStep::NeedRoom,
        })
    }

    fn check_sizes(&self, entries: &[Bytes]) -> Result<()> {
        let max_payload = SegmentFile::max_payload(self.params.file_len);
        match entries.iter().find(|e| e.len() > max_payload) {
            Some(big) => Err(Error::BadRequest(format!(
                "entry of {} bytes is larger than the WAL's limit of {max_payload} bytes per entry (segment_file_bytes {})",
                big.len(),
                self.params.file_len
            ))),
            None => Ok(()),
        }
    }

    /// Refuses appends to a quarantined or failed segment.
    fn check_writable(&self) -> Result<()> {
        if let Some(d) = self.damage.get() {
            return Err(Error::Corrupt(format!(
                "segment {} is quarantined and takes no appends: {}",
                self.key, d.why
            )));
        }
        if let Some(why) = self.failure.get() {
            return Err(Error::Storage(why.clone()));
        }
        Ok(())
    }

    /// The answer to an append that writes nothing: entries `first..end`
    /// are held already. With group commit it waits, like the append that
    /// wrote them, until they are durable.
    fn held(&self, mut st: MutexGuard<'_, AppendState>, first: u64, end: u64) -> AppendStep {
        let durable = (self.params.group_commit && st.synced_count < end).then(|| {
            let (tx, rx) = oneshot::channel();
            st.waiters.push(Waiter { target: end, tx });
            rx
        });
        AppendStep::Done {
            appended: Appended {
                first_index: first,
                count: st.count,
            },
            durable,
            wants_room: false,
        }
    }

    /// Writes non-empty `entries` at the end of the segment (the caller
    /// checked that it takes them).
    fn write(&self, mut st: MutexGuard<'_, AppendState>, entries: &[Bytes]) -> Result<AppendStep> {
        let n = entries.len() as u64;
        let bytes: u64 = entries.iter().map(|e| e.len() as u64).sum();
        // Plan: which files this append writes and how far, so that it
        // writes only into reserved bytes of files that exist. Anything
        // missing is made by `make_room`, without this lock.
        let plan = self.plan(&st, entries.iter().map(|e| e.len()));
        let room = plan.new_ends.len() <= st.ready.len()
            && plan
                .current_end
                .is_none_or(|end| st.current.as_ref().is_some_and(|f| f.reserved() >= end))
            && plan
                .new_ends
                .iter()
                .zip(&st.ready)
                .all(|(&end, f)| f.reserved() >= end);
        if !room {
            return Ok(AppendStep::NeedRoom);
        }
        let created: Vec<Arc<SegmentFile>> = st.ready.drain(..plan.new_ends.len()).collect();

        // Write: memcpy into the maps, no I/O. A file that is left behind
        // gets its next marker; the syncer flushes it before its successor
        // (parts in order), so nothing in the successor is acknowledged
        // (fsync=always) or checkpointed before the old file is complete.
        // Until then the kernel may write the successor's pages first; a
        // crash then leaves a torn old file and data in a later file whose
        // header has no checkpoint, which recovery cuts as one torn tail.
        let first_index = st.count;
        let mut cur: Option<(Arc<SegmentFile>, u32, usize)> = st
            .current
            .clone()
            .zip(st.pos)
            .map(|(f, p)| (f, p.part, p.off()));
        let mut new_files = created.iter();
        let mut points = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if !cur
                .as_ref()
                .is_some_and(|(f, _, off)| f.fits(*off, e.len()))
            {
                let next = new_files
                    .next()
                    .expect("the plan created every file needed")
                    .clone();
                let part = match cur.take() {
                    Some((f, part, off)) => {
                        // SAFETY: past the published end, under the append lock.
                        unsafe { f.write_next_marker(off) };
                        part + 1
                    }
                    None => 0,
                };
                cur = Some((next, part, HEADER_LEN));
            }
            let (f, part, off) = cur.as_mut().expect("a file was just ensured");
            // SAFETY: past the published end, under the append lock.
            unsafe { f.write_record(*off, e) };
            let index = first_index + i as u64;
            if index.is_multiple_of(crate::wal::index::STRIDE) {
                points.push((index, Pos::new(*part, *off)));
            }
            *off += RECORD_HEADER + e.len();
        }

        // Publish to readers' structures, then to the counters.
        let (file, part, off) = cur.expect("at least one entry was written");
        {
            let mut sh = self.shared.write_or_recover();
            sh.part_count += created.len() as u32;
            sh.parts.extend(created.iter().cloned());
            for (index, pos) in points {
                sh.index.record(index, pos);
            }
        }
        st.current = Some(file);
        st.pos = Some(Pos::new(part, off));
        st.count += n;
        st.bytes += bytes;
        self.written.store(st.count, Ordering::Release);
        let appended = Appended {
            first_index,
            count: st.count,
        };
        st.last_append = entries.iter().map(|e| RECORD_HEADER + e.len()).sum();
        let wants_room = self.wants_room(&st);
        let durable = if self.params.group_commit {
            let (tx, rx) = oneshot::channel();
            let target = st.count;
            st.waiters.push(Waiter { target, tx });
            Some(rx)
        } else {
            // Acknowledged under a relaxed policy, but not visible: the
            // syncer publishes it once it is durable.
            None
        };
        Ok(AppendStep::Done {
            appended,
            durable,
            wants_room,
        })
    }

    fn plan(&self, st: &AppendState, sizes: impl Iterator<Item = usize>) -> Plan {
        let current = st
            .current
            .as_ref()
            .zip(st.pos)
            .map(|(f, p)| (p.off(), f.len()));
        plan(current, self.params.file_len as usize, sizes)
    }

    /// Whether the room thread should reserve ahead of the write position
    /// (less than half a step left) or create the next file (the current
    /// one is nearly full and none is ready).
    fn wants_room(&self, st: &AppendState) -> bool {
        let (Some(f), Some(pos)) = (&st.current, st.pos) else {
            return false;
        };
        let (len, off) = (f.len(), pos.off());
        let step = ahead(len, proven(len, pos.part, off), st.last_append);
        f.reserved() < (off + step / 2).min(len)
            || (st.ready.is_empty() && len - off < next_file_lead(len, st.last_append))
    }

    /// Makes room (blocking I/O, without the append lock): reserves ahead
    /// in the current file and creates the next one when it is nearly
    /// full; with `sizes`, also whatever an append of entries of those
    /// sizes needs right now. Called by the room thread ahead of time, and
    /// by an appender that found no room (`AppendStep::NeedRoom`).
    pub fn make_room(&self, sizes: Option<&[usize]>) -> Result<()> {
        let _grow = self.grow.lock_or_recover();
        let (current, pos, ready, plan, last_append) = {
            let st = self.lock();
            if self.sealed.load(Ordering::Acquire) || st.sealing.is_some() {
                return match sizes {
                    Some(_) => Err(Error::SegmentSealed(self.key.clone())),
                    None => Ok(()),
                };
            }
            if let Some(why) = self.failure.get() {
                return match sizes {
                    Some(_) => Err(Error::Storage(why.clone())),
                    None => Ok(()),
                };
            }
            // Never a file over a quarantined segment's damaged ones.
            if let Some(d) = self.damage.get() {
                return match sizes {
                    Some(_) => Err(Error::Corrupt(format!(
                        "segment {} is quarantined and takes no appends: {}",
                        self.key, d.why
                    ))),
                    None => Ok(()),
                };
            }
            let plan = self.plan(&st, sizes.unwrap_or(&[]).iter().copied());
            let last_append = st.last_append;
            (
                st.current.clone(),
                st.pos,
                st.ready.clone(),
                plan,
                last_append,
            )
        };
        let len = self.params.file_len as usize;
        // The current file: what the append needs, and a step ahead.
        if let (Some(f), Some(pos)) = (&current, pos) {
            let need = plan.current_end.unwrap_or(pos.off()).max(pos.off())
                + ahead(len, proven(len, pos.part, pos.off()), last_append);
            f.reserve_to(reserve_target(need, len), &self.params.reserver)?;
        }
        // The files after it: those the append needs, or one ahead when the
        // current file is nearly full (or missing).
        let mut ends = plan.new_ends;
        let near_end = pos.is_none_or(|p| len - p.off() < next_file_lead(len, last_append));
        if ends.is_empty() && near_end {
            ends.push(HEADER_LEN);
        }
        for (f, &end) in ready.iter().zip(&ends) {
            f.reserve_to(reserve_target(end, len), &self.params.reserver)?;
        }
        if ends.len() <= ready.len() {
            return Ok(());
        }
        if current.is_none() && ready.is_empty() {
            create_dir_durable(&self.dir)?;
        }
        let first_part = pos.map_or(0, |p| p.part + 1) + ready.len() as u32;
        let mut created = Vec::new();
        for (i, &end) in ends[ready.len()..].iter().enumerate() {
            let part = first_part + i as u32;
            let made = SegmentFile::create(
                &part_path(&self.dir, self.key.segment, part),
                self.key.segment,
                part,
                self.params.file_len,
                // Its first appends find their room too.
                initial_reservation(len, part, end, last_append),
                &self.params.spares,
                &self.params.reserver,
            );
            match made {
                Ok(f) => created.push(Arc::new(f)),
                Err(e) => {
                    self.discard(&created);
                    return Err(e);
                }
            }
        }
        let mut st = self.lock();
        // A rollback (failed sync) may have moved the write position back
        // meanwhile and dropped the ready files: these are numbered for the
        // old position.
        let expected = st.pos.map_or(0, |p| p.part + 1) + st.ready.len() as u32;
        if expected != first_part || st.sealing.is_some() || self.sealed.load(Ordering::Acquire) {
            drop(st);
            self.discard(&created);
            return Ok(());
        }
        st.ready.extend(created);
        Ok(())
    }

    /// Deletes files created ahead that will not be used, durably: a
    /// leftover empty part after a seal would read as damage.
    pub(super) fn discard(&self, files: &[Arc<SegmentFile>]) {
        if files.is_empty() {
            return;
        }
        for f in files {
            let _ = std::fs::remove_file(f.path());
        }
        if let Err(e) = sync_dir(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot sync the WAL directory after removing unused files");
        }
    }
}
