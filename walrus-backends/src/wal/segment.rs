//! One segment of the WAL: its files, its append state, its recovery, its
//! reads and its seal.
//!
//! Concurrency protocol:
//! - Appenders take `append` (a short lock: memcpy into the map, no I/O)
//!   and write past the published end, only into bytes already reserved
//!   and files already created. Reserving and creating files is blocking
//!   I/O done without that lock by `make_room`: ahead of time on the room
//!   thread (`room.rs`), or, when an append finds no room, on a blocking
//!   thread for that appender (`WalStore::append`), never on an async
//!   worker.
//! - The syncer snapshots the written end under `append`, flushes without
//!   it, then publishes (`synced_*` and `visible`), whatever the fsync
//!   policy: an entry is visible only once it is durable, so no reader, and
//!   no cursor built from what readers saw, can stand past what a power cut
//!   would leave.
//! - Readers read only entries `< visible`; they take `shared` (parts and
//!   index) for a moment, never `append`. Published bytes are never written
//!   again, so they can be read without any lock. A reader that finds
//!   entries `written` but not yet visible asks the syncer for a flush
//!   (see `WalStore::read`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;
use walrus_core::{Appended, Error, Result, SegmentInfo, SegmentKey, SegmentLimit};

use super::health::Health;
use super::index::{Pos, SparseIndex};
use super::read_cache::ReadCache;
use super::reserve::Reserver;
use super::segment_file::{
    scan_file, zero_tail, FileHeader, ScanEnd, SegmentFile, HEADER_LEN, NEXT_MARKER, RECORD_HEADER,
    RESERVE_CHUNK,
};
use super::spare::SparePool;
use crate::durable_dir::{create_dir_durable, sync_dir};

pub(crate) fn part_path(dir: &Path, segment: u64, part: u32) -> PathBuf {
    dir.join(format!("{segment:020}.{part:06}.wal"))
}

pub(crate) fn seal_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.sealed"))
}

/// How a segment is stored, shared by all segments of a store.
#[derive(Clone)]
pub(crate) struct SegmentParams {
    pub file_len: u64,
    /// fsync=always: entries become visible only once synced.
    pub group_commit: bool,
    /// Zero-filled files to take before falling back to `fallocate`.
    pub spares: Arc<SparePool>,
    /// The syncer writes blocks ahead of the appenders (fsync=always).
    pub prepare_ahead: bool,
    /// Bytes it wrote so far, over all segments.
    pub prepared_bytes: Arc<AtomicU64>,
    /// Failed syncs over all segments (and the fault-injection seam).
    pub health: Arc<Health>,
    /// How this data directory reserves blocks.
    pub reserver: Arc<Reserver>,
}

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
fn chunk(len: usize) -> usize {
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
fn reserve_target(need: usize, len: usize) -> usize {
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

struct Waiter {
    target: u64,
    tx: oneshot::Sender<Result<()>>,
}

struct AppendState {
    /// Entries written (with group commit, possibly not yet synced).
    count: u64,
    /// Their payload bytes, for the byte limit of appends. (After a failed
    /// sync rolls written entries back it is left high: that segment takes
    /// no appends again.)
    bytes: u64,
    /// Where the next record goes; `None` before the first file exists.
    pos: Option<Pos>,
    /// The file `pos` is in.
    current: Option<Arc<SegmentFile>>,
    /// Durable end and count as far as the syncer (or recovery) knows.
    synced_pos: Option<Pos>,
    synced_count: u64,
    /// A seal is in progress: appends are refused.
    sealing: bool,
    /// Files created ahead for the parts after `pos.part` (in order), not
    /// written yet: the next appends that cross a file boundary take them.
    ready: Vec<Arc<SegmentFile>>,
    /// Bytes the last append wrote: how far ahead to reserve.
    last_append: usize,
    waiters: Vec<Waiter>,
}

impl AppendState {
    /// The state of a segment just created or recovered: `count` entries,
    /// all durable, the next record at `pos` in `current` (`None`: no file
    /// open yet, or none to write to), nothing in flight.
    fn recovered(
        count: u64,
        bytes: u64,
        pos: Option<Pos>,
        current: Option<Arc<SegmentFile>>,
    ) -> AppendState {
        AppendState {
            count,
            bytes,
            pos,
            current,
            synced_pos: pos,
            synced_count: count,
            sealing: false,
            ready: Vec::new(),
            last_append: 0,
            waiters: Vec::new(),
        }
    }
}

struct Shared {
    /// Maps of the files while the segment is open; empty once sealed
    /// (its files are then read through the store's read cache).
    parts: Vec<Arc<SegmentFile>>,
    part_count: u32,
    index: SparseIndex,
    /// False for a segment found sealed on open until its first read
    /// scans (and verifies) it.
    index_ready: bool,
}

pub(crate) struct Segment {
    pub key: SegmentKey,
    dir: PathBuf,
    params: SegmentParams,
    /// Entries durable and readable.
    visible: AtomicU64,
    /// Entries written into the maps (`AppendState::count`), for readers to
    /// tell "nothing there" from "there but not synced yet" without the
    /// append lock.
    written: AtomicU64,
    sealed: AtomicBool,
    /// In the syncer's queue (avoids queueing twice).
    pub queued: AtomicBool,
    /// Set for good by the first failed sync: the kernel may have dropped
    /// the unwritten pages and marked them clean, so a later sync would
    /// "succeed" without them. The text is the error appends get.
    failure: OnceLock<String>,
    /// Set when the segment's files were found damaged (on open, or at the
    /// first read of a sealed segment): quarantined.
    damage: OnceLock<Damage>,
    append: Mutex<AppendState>,
    shared: RwLock<Shared>,
    /// When the syncer last rewrote the current file's checkpoint (only
    /// the syncer takes this lock).
    last_checkpoint: Mutex<Instant>,
    /// Serialises `make_room` and the seal's last steps: a file is never
    /// created for a segment being sealed.
    grow: Mutex<()>,
    /// In the room thread's queue (avoids queueing twice).
    pub room_queued: AtomicBool,
}

/// Where a quarantined segment's files are damaged.
struct Damage {
    /// Entries `0..at` are readable; reading any later one fails.
    at: u64,
    /// The error (file, byte offset, what to do).
    why: String,
    /// An intact seal file gave the final count (a sealed segment whose
    /// parts are damaged or missing): `seal` may report it. Otherwise the
    /// count past the damage is unknown and is never reported.
    count_known: bool,
}

/// What `begin_seal` found.
pub(crate) enum SealStep {
    /// Already sealed with this count.
    Done(u64),
    /// Appends are now refused; once `count` entries are durable the seal
    /// can be written.
    SyncTo(u64),
    /// Quarantined: its true count is unknown, so it is never sealed.
    Refused(Error),
}

impl Segment {
    fn with_state(
        key: SegmentKey,
        dir: PathBuf,
        params: SegmentParams,
        state: AppendState,
        shared: Shared,
        visible: u64,
        sealed: bool,
    ) -> Segment {
        Segment {
            key,
            dir,
            params,
            visible: AtomicU64::new(visible),
            written: AtomicU64::new(state.count),
            sealed: AtomicBool::new(sealed),
            queued: AtomicBool::new(false),
            failure: OnceLock::new(),
            damage: OnceLock::new(),
            append: Mutex::new(state),
            shared: RwLock::new(shared),
            last_checkpoint: Mutex::new(Instant::now()),
            grow: Mutex::new(()),
            room_queued: AtomicBool::new(false),
        }
    }

    /// A segment that has no file yet.
    pub fn new_empty(key: SegmentKey, dir: PathBuf, params: SegmentParams) -> Segment {
        let state = AppendState::recovered(0, 0, None, None);
        let shared = Shared {
            parts: Vec::new(),
            part_count: 0,
            index: SparseIndex::default(),
            index_ready: true,
        };
        Segment::with_state(key, dir, params, state, shared, 0, false)
    }

    /// A segment found sealed on open: its count comes from the (intact)
    /// seal file, its files (`present`: the part numbers found, ascending)
    /// are scanned and verified on first read, or right away when one is
    /// missing already (a gap, or none for a non-empty segment), so that
    /// the quarantine shows in `health` from the start. It stays sealed
    /// with its count whatever its files hold: the seal is the authority,
    /// damage only limits what can be served.
    pub fn new_sealed(
        key: SegmentKey,
        dir: PathBuf,
        params: SegmentParams,
        count: u64,
        present: &[u32],
    ) -> Segment {
        let part_count = present.last().map_or(0, |&last| last + 1);
        let missing = present.len() < part_count as usize || (count > 0 && part_count == 0);
        let state = AppendState::recovered(count, 0, None, None);
        let shared = Shared {
            parts: Vec::new(),
            part_count,
            index: SparseIndex::default(),
            index_ready: count == 0,
        };
        let seg = Segment::with_state(key, dir, params, state, shared, count, true);
        if missing {
            seg.ensure_index();
        }
        seg
    }

    /// Recovers an open segment from its files (`paths[i]` is part `i`):
    /// scans them with `pread` (a bad block is an error, not a SIGBUS) and
    /// cuts a torn tail. Damage that is not a tear (a bad record before the
    /// last synced point, a hole before synced data, an unreadable block or
    /// header) quarantines the segment instead: the rest of the store opens.
    /// Errs only when a torn tail cannot be cut.
    pub fn recover(
        key: SegmentKey,
        dir: PathBuf,
        params: SegmentParams,
        paths: &[PathBuf],
    ) -> Result<Segment> {
        let mut index = SparseIndex::default();
        let mut count = 0u64;
        // Payload bytes: records are back to back after the header, each
        // a record header and its payload.
        let mut bytes = 0u64;
        let mut end = Pos::new(0, HEADER_LEN);
        let mut keep = paths.len();
        let mut written_ends = Vec::with_capacity(paths.len());
        let parts = paths.len() as u32;
        let quarantine = |index, count, why| {
            Ok(Segment::quarantined(
                key.clone(),
                dir.clone(),
                params.clone(),
                parts,
                index,
                count,
                why,
                false,
            ))
        };
        for (i, path) in paths.iter().enumerate() {
            let base = count;
            let fs = match scan_file(path, |j, off| index.record(base + j, Pos::new(i as u32, off))) {
                Ok(fs) => fs,
                Err(e) => {
                    return quarantine(index, count, format!(
                        "{} at byte 0: {e}; the segment {key} cannot be served past entry {count}. Restore the file from a replica or backup",
                        path.display()
                    ))
                }
            };
            if let Some(why) = identity_error(&fs.header, path, key.segment, i as u32) {
                return quarantine(index, count, why);
            }
            let scan = fs.scan;
            count += scan.records;
            bytes += (scan.end - HEADER_LEN - scan.records as usize * RECORD_HEADER) as u64;
            end = Pos::new(i as u32, scan.end);
            // Written by an earlier run, so backed by blocks.
            written_ends.push(match scan.stop {
                ScanEnd::Next => scan.end + RECORD_HEADER,
                ScanEnd::Invalid { .. } => scan.end,
            });
            let reason = match scan.stop {
                ScanEnd::Next if i + 1 < paths.len() => continue,
                // A marker with no file after it: the file was being rolled;
                // the next append writes over the marker or rolls again.
                ScanEnd::Next => break,
                ScanEnd::Invalid { reason } => reason,
            };
            if let Some(e) = fs.io_error {
                return quarantine(index, count, format!(
                    "{} at byte {}: cannot read it ({e}); the segment {key} cannot be served past entry {count}. Check the disk; restore the file from a replica or backup",
                    path.display(),
                    scan.end
                ));
            }
            if (scan.end as u64) < fs.header.checkpoint {
                return quarantine(index, count, format!(
                    "{} at byte {}: {reason}, before the last synced point {}; the segment {key} cannot be served past entry {count}. Restore the file from a replica or backup",
                    path.display(),
                    scan.end,
                    fs.header.checkpoint
                ));
            }
            for later in &paths[i + 1..] {
                // A later file with a checkpoint was synced after this one
                // was complete (the syncer flushes parts in order): this
                // file's damage is not a tear. Without one, its records
                // were never acknowledged as durable behind a complete
                // predecessor: the kernel wrote them first, then the crash
                // came; they are part of the torn tail.
                let hole = match scan_file(later, |_, _| {}) {
                    Ok(l) if l.io_error.is_none() => (l.scan.records > 0
                        && l.header.checkpoint > HEADER_LEN as u64)
                        .then(|| format!("holds {} records synced after it", l.scan.records)),
                    Ok(l) => Some(format!(
                        "cannot be read past byte {} ({})",
                        l.scan.end,
                        l.io_error.expect("checked just above")
                    )),
                    Err(e) => Some(format!("cannot be read ({e})")),
                };
                if let Some(what) = hole {
                    return quarantine(index, count, format!(
                        "{} at byte {}: {reason}, but the later file {} {what}; the segment {key} has a hole after entry {count}. Restore the file from a replica or backup",
                        path.display(),
                        scan.end,
                        later.display()
                    ));
                }
            }
            zero_tail(path, scan.end, fs.header.file_len as usize)?;
            if reason != "zeros (end of written data)" {
                tracing::warn!(file = %path.display(), at = scan.end, reason, "cut the torn tail of a WAL file");
            }
            keep = i + 1;
            break;
        }
        for extra in &paths[keep..] {
            tracing::warn!(file = %extra.display(), "removing a WAL file past a torn tail (empty, or holding only unsynced records)");
            std::fs::remove_file(extra)
                .map_err(|e| Error::Storage(format!("cannot remove {}: {e}", extra.display())))?;
        }
        let mut files = Vec::with_capacity(keep);
        for (path, &written) in paths[..keep].iter().zip(&written_ends) {
            let f = SegmentFile::open_rw(path)?;
            f.mark_written(written);
            files.push(Arc::new(f));
        }
        // What was recovered may sit only in the page cache (the writer was
        // killed, the machine was not): make it durable before serving it.
        for f in &files {
            f.flush(0, f.len())?;
        }
        let current = files.last().cloned();
        if let Some(f) = &current {
            // Room ahead for the first appends; if this fails (a full
            // disk), the first append that needs the room reports it.
            let target = reserve_target(end.off() + chunk(f.len()), f.len());
            if let Err(e) = f.reserve_to(target, &params.reserver) {
                tracing::warn!(file = %f.path().display(), error = %e, "cannot reserve WAL space ahead after recovery");
            }
        }
        let pos = current.as_ref().map(|_| end);
        let state = AppendState::recovered(count, bytes, pos, current);
        let shared = Shared {
            part_count: files.len() as u32,
            parts: files,
            index,
            index_ready: true,
        };
        Ok(Segment::with_state(
            key, dir, params, state, shared, count, false,
        ))
    }

    /// A segment whose files are damaged: entries `0..count` (indexed in
    /// `index`) are served, reads past them get `why`, nothing is ever
    /// appended, sealed or written (its files are read through the read
    /// cache, read-only), so the damage stays for an operator to repair.
    /// `sealed`: a seal file exists (damaged: the final count is unknown).
    #[allow(clippy::too_many_arguments)]
    fn quarantined(
        key: SegmentKey,
        dir: PathBuf,
        params: SegmentParams,
        part_count: u32,
        index: SparseIndex,
        count: u64,
        why: String,
        sealed: bool,
    ) -> Segment {
        tracing::error!(segment = %key, served = count, damage = %why, "WAL segment quarantined: serving its entries up to the damage, refusing reads past it and every append");
        let state = AppendState::recovered(count, 0, None, None);
        let shared = Shared {
            parts: Vec::new(),
            part_count,
            index,
            index_ready: true,
        };
        let seg = Segment::with_state(key, dir, params, state, shared, count, sealed);
        let _ = seg.damage.set(Damage {
            at: count,
            why,
            count_known: false,
        });
        seg
    }

    /// Quarantines a segment whose files cannot be trusted as a whole (a
    /// damaged seal file, a missing part of an open segment): serves the
    /// records its files (`paths`, parts `0..`) hold in order up to the
    /// first stop. `sealed`: a (damaged) seal file exists, so the segment
    /// was sealed and takes no appends, though its final count is unknown.
    pub fn recover_quarantined(
        key: SegmentKey,
        dir: PathBuf,
        params: SegmentParams,
        paths: &[PathBuf],
        why: String,
        sealed: bool,
    ) -> Segment {
        let mut index = SparseIndex::default();
        let mut count = 0u64;
        for (i, path) in paths.iter().enumerate() {
            let base = count;
            let Ok(fs) = scan_file(path, |j, off| {
                index.record(base + j, Pos::new(i as u32, off))
            }) else {
                break;
            };
            if identity_error(&fs.header, path, key.segment, i as u32).is_some() {
                break;
            }
            count += fs.scan.records;
            if fs.scan.stop != ScanEnd::Next {
                break;
            }
        }
        let why = format!("{why}; the segment {key} cannot be served past entry {count}");
        Segment::quarantined(
            key,
            dir,
            params,
            paths.len() as u32,
            index,
            count,
            why,
            sealed,
        )
    }

    /// Why the segment is quarantined, if it is.
    pub fn damage(&self) -> Option<&str> {
        self.damage.get().map(|d| d.why.as_str())
    }

    fn lock(&self) -> MutexGuard<'_, AppendState> {
        self.append.lock().expect("segment append lock poisoned")
    }

    pub fn info(&self) -> Option<SegmentInfo> {
        let sealed = self.sealed.load(Ordering::Acquire);
        let count = self.visible.load(Ordering::Acquire);
        let has_files = self
            .shared
            .read()
            .expect("segment lock poisoned")
            .part_count
            > 0;
        (sealed || has_files || count > 0).then_some(SegmentInfo { count, sealed })
    }

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
        let max_payload = SegmentFile::max_payload(self.params.file_len);
        if let Some(big) = entries.iter().find(|e| e.len() > max_payload) {
            return Err(Error::BadRequest(format!(
                "entry of {} bytes is larger than the WAL's limit of {max_payload} bytes per entry (segment_file_bytes {})",
                big.len(),
                self.params.file_len
            )));
        }
        let mut st = self.lock();
        if self.sealed.load(Ordering::Acquire) || st.sealing {
            return Err(Error::SegmentSealed(self.key.clone()));
        }
        if let Some(d) = self.damage.get() {
            return Err(Error::Corrupt(format!(
                "segment {} is quarantined and takes no appends: {}",
                self.key, d.why
            )));
        }
        if let Some(why) = self.failure.get() {
            return Err(Error::Storage(why.clone()));
        }
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
            if index.is_multiple_of(super::index::STRIDE) {
                points.push((index, Pos::new(*part, *off)));
            }
            *off += RECORD_HEADER + e.len();
        }

        // Publish to readers' structures, then to the counters.
        let (file, part, off) = cur.expect("at least one entry was written");
        {
            let mut sh = self.shared.write().expect("segment lock poisoned");
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
        let _grow = self
            .grow
            .lock()
            .expect("segment grow lock poisoned: a panic while making WAL room");
        let (current, pos, ready, plan, last_append) = {
            let st = self.lock();
            if self.sealed.load(Ordering::Acquire) || st.sealing {
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
        if expected != first_part || st.sealing || self.sealed.load(Ordering::Acquire) {
            drop(st);
            self.discard(&created);
            return Ok(());
        }
        st.ready.extend(created);
        Ok(())
    }

    /// Deletes files created ahead that will not be used, durably: a
    /// leftover empty part after a seal would read as damage.
    fn discard(&self, files: &[Arc<SegmentFile>]) {
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
    /// snapshot and to publish, never during the flush. Counts each flush
    /// in `flushes` before any waiter hears of it.
    pub fn sync_round(&self, flushes: &AtomicU64) {
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
                .read()
                .expect("segment lock poisoned")
                .parts
                .get(first_part..=target.part as usize)
                .map(<[_]>::to_vec)
                .unwrap_or_default();
            (st.synced_pos, target, st.count, parts)
        };
        let result = if self.params.health.take_injected() {
            Err(Error::Storage(format!(
                "sync of segment {} failed: injected failure (as EIO)",
                self.key
            )))
        } else {
            flush_parts(from, target, &parts, &self.last_checkpoint)
        };
        flushes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        match result {
            Ok(()) => {
                st.synced_pos = Some(target);
                st.synced_count = target_count;
                self.visible.store(target_count, Ordering::Release);
                let done = take_waiters(&mut st.waiters, target_count);
                drop(st);
                complete(done, Ok(()));
            }
            Err(e) => {
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
            let sh = self.shared.read().expect("segment lock poisoned");
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
        let mut sh = self.shared.write().expect("segment lock poisoned");
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

    pub fn begin_seal(&self) -> SealStep {
        let mut st = self.lock();
        if let Some(d) = self.damage.get().filter(|d| !d.count_known) {
            return SealStep::Refused(Error::Corrupt(format!(
                "cannot seal a quarantined segment (its count past the damage is unknown): {}",
                d.why
            )));
        }
        if self.sealed.load(Ordering::Acquire) {
            return SealStep::Done(self.visible.load(Ordering::Acquire));
        }
        st.sealing = true;
        SealStep::SyncTo(st.count)
    }

    pub fn abort_seal(&self) {
        self.lock().sealing = false;
    }

    /// Writes the seal file (blocking I/O) and releases the file maps: from
    /// now on reads go through the read cache and take no append lock.
    pub fn finish_seal(&self, count: u64) -> Result<()> {
        // No file is created for this segment from now on, and those
        // created ahead go before the seal exists: a sealed segment's
        // files are exactly the ones its count covers.
        let _grow = self
            .grow
            .lock()
            .expect("segment grow lock poisoned: a panic while making WAL room");
        let unused = std::mem::take(&mut self.lock().ready);
        self.discard(&unused);
        // A segment this node never wrote gets its topic directory here.
        create_dir_durable(&self.dir)?;
        write_seal_file(&seal_path(&self.dir, self.key.segment), count)?;
        let mut st = self.lock();
        self.visible.store(count, Ordering::Release);
        self.sealed.store(true, Ordering::Release);
        st.current = None;
        self.shared
            .write()
            .expect("segment lock poisoned")
            .parts
            .clear();
        Ok(())
    }

    /// Reads entries `from..` (at most `max_entries`, at most `max_bytes`
    /// of payload but at least one entry). Copies only what it returns.
    pub fn read(
        &self,
        from: u64,
        max_entries: usize,
        max_bytes: usize,
        cache: &ReadCache,
    ) -> Result<Vec<Bytes>> {
        let visible = self.visible.load(Ordering::Acquire);
        if max_entries == 0 {
            return Ok(Vec::new());
        }
        if from < visible {
            self.ensure_index();
        }
        // A quarantined segment: entries before the damage are served,
        // none after it, and a reader there hears why.
        let limit = match self.damage.get() {
            Some(d) if from >= d.at => return Err(Error::Corrupt(d.why.clone())),
            Some(d) => d.at.min(visible),
            None => visible,
        };
        if from >= limit {
            return Ok(Vec::new());
        }
        let want = (limit - from).min(max_entries as u64) as usize;
        let (parts, (mut i, mut pos)) = {
            let sh = self.shared.read().expect("segment lock poisoned");
            let seek = sh.index.seek(from).ok_or_else(|| {
                Error::Internal(format!("segment {} has entries but no index", self.key))
            })?;
            (sh.parts.clone(), seek)
        };
        let file_of = |part: u32| -> Result<Arc<SegmentFile>> {
            match parts.get(part as usize) {
                Some(f) => Ok(f.clone()),
                None => cache.get(&part_path(&self.dir, self.key.segment, part)),
            }
        };
        let mut file = file_of(pos.part)?;
        let mut out = Vec::with_capacity(want.min(1024));
        let mut bytes = 0usize;
        while out.len() < want {
            // SAFETY: `pos` is the start of a published record or marker
            // (entries `< visible` and what precedes them are never written
            // again), so reading it needs no lock.
            let len = unsafe { file.record_len_at(pos.off()) };
            if len == NEXT_MARKER {
                pos = Pos::new(pos.part + 1, HEADER_LEN);
                file = file_of(pos.part)?;
                continue;
            }
            let len = len as usize;
            if i >= from {
                if !out.is_empty() && bytes + len > max_bytes {
                    break;
                }
                // SAFETY: as above; the payload is part of a published record.
                let payload = unsafe { file.slice(pos.off() + RECORD_HEADER, len) };
                out.push(Bytes::copy_from_slice(payload));
                bytes += len;
            }
            pos = Pos::new(pos.part, pos.off() + RECORD_HEADER + len);
            i += 1;
        }
        Ok(out)
    }

    /// Scans (with `pread`) and verifies a segment found sealed on open,
    /// once. Damage quarantines it: entries before it stay readable.
    fn ensure_index(&self) {
        if self
            .shared
            .read()
            .expect("segment lock poisoned")
            .index_ready
        {
            return;
        }
        let mut sh = self.shared.write().expect("segment lock poisoned");
        if sh.index_ready {
            return;
        }
        let sealed_count = self.visible.load(Ordering::Acquire);
        let mut index = SparseIndex::default();
        let mut count = 0u64;
        let mut damage = None;
        for part in 0..sh.part_count {
            let path = part_path(&self.dir, self.key.segment, part);
            if !path.exists() {
                damage = Some(format!("{} at byte 0: the file is missing", path.display()));
                break;
            }
            let base = count;
            let fs = match scan_file(&path, |j, off| index.record(base + j, Pos::new(part, off))) {
                Ok(fs) => fs,
                Err(e) => {
                    damage = Some(format!("{} at byte 0: {e}", path.display()));
                    break;
                }
            };
            if let Some(why) = identity_error(&fs.header, &path, self.key.segment, part) {
                damage = Some(why);
                break;
            }
            count += fs.scan.records;
            let last = part + 1 == sh.part_count;
            let bad = match (&fs.io_error, &fs.scan.stop) {
                (Some(e), _) => Some(format!("cannot read it ({e})")),
                (None, ScanEnd::Next) if !last => None,
                (None, ScanEnd::Next) => {
                    // The segment goes on in a file that is not there:
                    // name that one, it is what the operator must restore.
                    damage = Some(format!(
                        "{} at byte 0: the file is missing ({} at byte {} continues into it)",
                        part_path(&self.dir, self.key.segment, part + 1).display(),
                        path.display(),
                        fs.scan.end
                    ));
                    break;
                }
                (None, ScanEnd::Invalid { reason }) if !last || count < sealed_count => {
                    Some((*reason).to_owned())
                }
                (None, ScanEnd::Invalid { .. }) => None,
            };
            if let Some(reason) = bad {
                damage = Some(format!(
                    "{} at byte {}: {reason}",
                    path.display(),
                    fs.scan.end
                ));
                break;
            }
        }
        if count > sealed_count {
            // Records a failed sync left behind on disk (the rollback's
            // zeros may not have reached it either): the seal is the
            // authority, they are never served.
            tracing::warn!(segment = %self.key, sealed_count, found = count, "ignoring WAL records past the sealed count");
        } else if count < sealed_count && damage.is_none() {
            // Only when no file at all is left (the loop catches a short
            // last file and a marker into a missing one).
            damage = Some(format!(
                "{} at byte 0: the file is missing",
                part_path(&self.dir, self.key.segment, sh.part_count).display()
            ));
        }
        if let Some(why) = damage {
            let why = format!(
                "{why}; segment {} was sealed with {sealed_count} entries, only {count} are readable. Restore the file from a replica or backup",
                self.key
            );
            tracing::error!(segment = %self.key, served = count, damage = %why, "sealed WAL segment quarantined: serving its entries up to the damage, refusing reads past it");
            let _ = self.damage.set(Damage {
                at: count,
                why,
                count_known: true,
            });
        }
        sh.index = index;
        sh.index_ready = true;
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
            let mut last = last_checkpoint
                .lock()
                .expect("segment checkpoint lock poisoned");
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

fn identity_error(h: &FileHeader, path: &Path, segment: u64, part: u32) -> Option<String> {
    (h.segment != segment || h.part != part).then(|| format!(
        "{} says it is part {} of segment {}, but its name says part {part} of segment {segment}; it was renamed or copied by hand",
        path.display(),
        h.part,
        h.segment
    ))
}

fn write_seal_file(path: &Path, count: u64) -> Result<()> {
    use std::io::Write;
    let mut buf = [0u8; 12];
    buf[0..8].copy_from_slice(&count.to_le_bytes());
    let crc = crc32c::crc32c(&buf[0..8]);
    buf[8..12].copy_from_slice(&crc.to_le_bytes());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let io = |e: std::io::Error| {
        Error::Storage(format!("cannot write seal file {}: {e}", path.display()))
    };
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&buf).and_then(|_| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

pub(crate) fn read_seal_file(path: &Path) -> Result<u64> {
    let buf = std::fs::read(path)
        .map_err(|e| Error::Storage(format!("cannot read seal file {}: {e}", path.display())))?;
    if buf.len() != 12 || crc32c::crc32c(&buf[0..8]).to_le_bytes() != buf[8..12] {
        return Err(Error::Corrupt(format!(
            "seal file {} is damaged (bad length or checksum); the segment's final count is unknown",
            path.display()
        )));
    }
    Ok(u64::from_le_bytes(buf[0..8].try_into().expect("8 bytes")))
}
