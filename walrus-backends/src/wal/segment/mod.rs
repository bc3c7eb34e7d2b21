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
//!
//! The files under `segment/`, by what they do to a segment:
//! - `recovery`: rebuilding it from its files on open (torn tails cut,
//!   damage quarantined) and verifying a sealed one on first read.
//! - `append`: writing entries into the maps, and the room (reserved
//!   blocks, files created ahead) they need.
//! - `sync`: making written entries durable and visible; a failed sync.
//! - `seal`: sealing, and the seal file.
//! - `read`: reading entries by index.

mod append;
mod read;
mod recovery;
mod seal;
mod sync;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Instant;

use tokio::sync::oneshot;
use walrus_core::{Result, SegmentInfo, SegmentKey};

use super::health::Health;
use super::index::{Pos, SparseIndex};
use super::reserve::Reserver;
use super::segment_file::SegmentFile;
use super::spare::SparePool;
use walrus_core::locks::{MutexExt, RwLockExt};

pub(crate) use append::AppendStep;
pub(crate) use seal::{read_seal_file, SealStep};

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
    /// A seal to this count is in progress: appends are refused (a
    /// retransmit of entries below it is answered as held).
    sealing: Option<u64>,
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
            sealing: None,
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
    /// Held (shared) by every read while it copies entries; taken alone by
    /// a `seal_at` cut before it erases the records past its count.
    erase: RwLock<()>,
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
            erase: RwLock::new(()),
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

    /// Why the segment is quarantined, if it is.
    pub fn damage(&self) -> Option<&str> {
        self.damage.get().map(|d| d.why.as_str())
    }

    fn lock(&self) -> MutexGuard<'_, AppendState> {
        self.append.lock_or_recover()
    }

    /// Payload bytes appended (counted across restarts, for the byte
    /// limit): exact for a sealed segment whose syncs all succeeded.
    pub fn payload_bytes(&self) -> u64 {
        self.lock().bytes
    }

    pub fn info(&self) -> Option<SegmentInfo> {
        let sealed = self.sealed.load(Ordering::Acquire);
        let count = self.visible.load(Ordering::Acquire);
        let has_files = self.shared.read_or_recover().part_count > 0;
        (sealed || has_files || count > 0).then_some(SegmentInfo { count, sealed })
    }
}
