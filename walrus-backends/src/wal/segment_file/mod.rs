//! One fixed-size, memory-mapped WAL file: created atomically, mapped,
//! reserved ahead of the writer, written and flushed.
//!
//! - `format`: the header and record layout (what a file holds on disk).
//! - `scan`: reading a file's records back with `pread` (recovery), and
//!   cutting a torn tail.
//!
//! A file has its full length from creation but is sparse: real blocks are
//! reserved (`reserve.rs`) from the start in steps of [`RESERVE_CHUNK`],
//! ahead of the writer, and nothing is ever written through the map past
//! [`SegmentFile::reserved`]. So a file costs the disk what was written
//! plus about one step, and a full disk shows as an error at reservation,
//! never as a SIGBUS inside a mapped write.
//!
//! The checkpoint lags the truly durable end (the syncer writes the
//! previous sync's end into the header and flushes both with one msync, at
//! most every `CHECKPOINT_EVERY`; a graceful close writes the final durable
//! end after the data), so it never claims more than the disk holds. On
//! recovery a bad record before it is corruption; after it, a torn tail.

mod format;
mod scan;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use memmap2::{MmapOptions, MmapRaw};

use super::reserve::{disk_full_or_io, Reserver};
use super::spare::SparePool;
use crate::durable_dir::sync_dir;
use walrus_core::locks::MutexExt;
use walrus_core::{Error, Result};

pub(crate) use format::{
    record_crc, FileHeader, HEADER_LEN, MIN_FILE_LEN, NEXT_MARKER, RECORD_HEADER,
};
use scan::read_header;
pub(crate) use scan::{scan_file, zero_tail, ScanEnd};

/// A mapped WAL file. The file descriptor is closed once mapped: only the
/// map (address space) is held, so many files cost no descriptors.
pub(crate) struct SegmentFile {
    path: PathBuf,
    map: MmapRaw,
    header: FileHeader,
    /// The checkpoint the header holds now (the syncer rewrites it).
    checkpoint: AtomicU64,
    /// Blocks before this offset have been written (data, or zeros by
    /// [`SegmentFile::prepare_ahead`]): a sync there overwrites, it does not
    /// convert a fallocated extent.
    prepared: AtomicUsize,
    /// The file, open while `prepare_ahead` has some of it left to do.
    prepare_fd: Mutex<Option<File>>,
    /// Bytes `[0, reserved)` have real blocks (reserved, or written by an
    /// earlier run): the only bytes the map may be written at.
    reserved: AtomicUsize,
    /// Serialises reservations of this file.
    reserve_lock: Mutex<()>,
}

/// Blocks are reserved this much at a time ahead of the writer (or the
/// whole file, when it is smaller): what an idle segment costs the disk.
pub(crate) const RESERVE_CHUNK: usize = 1 << 20;

/// How far ahead of the write position [`SegmentFile::prepare_ahead`]
/// keeps blocks written, and how much it writes per call.
pub(crate) const PREPARE_AHEAD: usize = 1 << 20;
pub(crate) const PREPARE_STEP: usize = 256 << 10;
const PAGE: usize = 4096;

fn zeros() -> &'static [u8] {
    static ZEROS: OnceLock<Box<[u8]>> = OnceLock::new();
    ZEROS.get_or_init(|| vec![0u8; PREPARE_STEP].into_boxed_slice())
}

// SAFETY: the map is plain shared memory. Writers and readers of the same
// bytes are kept apart by the segment's protocol (appenders write past the
// published end under the append lock, readers read before it, the header is
// written only by the syncer), so handing the pointer to other threads is
// sound.
unsafe impl Send for SegmentFile {}
unsafe impl Sync for SegmentFile {}

impl SegmentFile {
    /// Creates a new file atomically: it appears under `path` only once its
    /// first `reserve` bytes have blocks and its header is on disk. Takes a
    /// zero-filled spare from `spares` if one is ready (all blocks real,
    /// cheaper syncs later), else creates a sparse file and reserves.
    pub fn create(
        path: &Path,
        segment: u64,
        part: u32,
        file_len: u64,
        reserve: usize,
        spares: &SparePool,
        reserver: &Reserver,
    ) -> Result<SegmentFile> {
        let tmp = tmp_path(path);
        if let Some(spare) = spares.take() {
            match Self::adopt_spare(&spare, spares.root(), &tmp, path, segment, part, file_len) {
                Ok(f) => return Ok(f),
                Err(e) => {
                    tracing::warn!(spare = %spare.display(), error = %e, "cannot use a zero-filled spare WAL file; fallocating a new one");
                    let _ = std::fs::remove_file(&spare);
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        }
        let result = Self::create_at(&tmp, path, segment, part, file_len, reserve, reserver);
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Moves a spare (zeros written and synced: real blocks, written
    /// extents) to `tmp` beside `path`, then finishes it like a new file.
    fn adopt_spare(
        spare: &Path,
        spare_dir: &Path,
        tmp: &Path,
        path: &Path,
        segment: u64,
        part: u32,
        file_len: u64,
    ) -> Result<SegmentFile> {
        std::fs::rename(spare, tmp).map_err(|e| disk_full_or_io(e, "rename spare file", spare))?;
        // The spare's old name must be gone for good before the file
        // becomes a segment's: the pool must never hand it out twice.
        sync_dir(spare_dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(tmp)
            .map_err(|e| disk_full_or_io(e, "open", tmp))?;
        let actual = file
            .metadata()
            .map_err(|e| disk_full_or_io(e, "stat", tmp))?
            .len();
        if actual != file_len {
            return Err(Error::Storage(format!(
                "spare file {} is {actual} bytes, expected {file_len}",
                spare.display()
            )));
        }
        // Zeros written and synced: every block is real already.
        Self::finish(file, tmp, path, segment, part, file_len, file_len as usize)
    }

    fn create_at(
        tmp: &Path,
        path: &Path,
        segment: u64,
        part: u32,
        file_len: u64,
        reserve: usize,
        reserver: &Reserver,
    ) -> Result<SegmentFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)
            .map_err(|e| disk_full_or_io(e, "create", tmp))?;
        // Full length, sparse: the map never changes size; blocks come with
        // the reservations.
        file.set_len(file_len)
            .map_err(|e| disk_full_or_io(e, "size", tmp))?;
        let reserve = reserve.clamp(HEADER_LEN, file_len as usize);
        reserver.reserve(&file, 0, reserve as u64, tmp)?;
        let f = Self::finish(file, tmp, path, segment, part, file_len, HEADER_LEN)?;
        f.reserved.store(reserve, Ordering::Release);
        Ok(f)
    }

    /// Writes the header of a file whose blocks exist, syncs it and gives
    /// the file its name.
    fn finish(
        file: File,
        tmp: &Path,
        path: &Path,
        segment: u64,
        part: u32,
        file_len: u64,
        prepared: usize,
    ) -> Result<SegmentFile> {
        let header = FileHeader {
            part,
            segment,
            file_len,
            checkpoint: HEADER_LEN as u64,
        };
        let map = Self::map(&file, file_len, tmp)?;
        let f = SegmentFile {
            path: path.to_path_buf(),
            map,
            header,
            checkpoint: AtomicU64::new(header.checkpoint),
            prepared: AtomicUsize::new(prepared),
            prepare_fd: Mutex::new(None),
            // A spare's zeros are all real blocks; `create_at` sets its own.
            reserved: AtomicUsize::new(prepared),
            reserve_lock: Mutex::new(()),
        };
        // SAFETY: nobody else knows this map yet.
        unsafe { f.write(0, &header.encode()) };
        f.map
            .flush_range(0, HEADER_LEN)
            .map_err(|e| disk_full_or_io(e, "write header of", tmp))?;
        std::fs::rename(tmp, path).map_err(|e| disk_full_or_io(e, "rename", tmp))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(f)
    }

    /// Opens an existing file for appending. A file shorter than its header
    /// says (truncated behind our back) is extended with zeros: what was cut
    /// off is a torn tail for the scan to find.
    pub fn open_rw(path: &Path) -> Result<SegmentFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| disk_full_or_io(e, "open", path))?;
        let header = read_header(&file, path)?;
        let actual = file
            .metadata()
            .map_err(|e| disk_full_or_io(e, "stat", path))?
            .len();
        if actual < header.file_len {
            tracing::warn!(path = %path.display(), actual, expected = header.file_len, "WAL file is shorter than created; extending it, the cut-off records count as torn tail");
            file.set_len(header.file_len)
                .map_err(|e| disk_full_or_io(e, "extend", path))?;
        }
        let map = Self::map(&file, header.file_len, path)?;
        Ok(SegmentFile {
            path: path.to_path_buf(),
            map,
            header,
            checkpoint: AtomicU64::new(header.checkpoint),
            // Unknown past the records: prepare_ahead starts at the write
            // position.
            prepared: AtomicUsize::new(HEADER_LEN),
            prepare_fd: Mutex::new(None),
            // Unknown past the records too: recovery marks what it found
            // written (`mark_written`) and reserves ahead of it.
            reserved: AtomicUsize::new(HEADER_LEN),
            reserve_lock: Mutex::new(()),
        })
    }

    /// Opens a file of a sealed segment for reading only.
    pub fn open_ro(path: &Path) -> Result<SegmentFile> {
        let file = File::open(path).map_err(|e| disk_full_or_io(e, "open", path))?;
        let header = read_header(&file, path)?;
        let actual = file
            .metadata()
            .map_err(|e| disk_full_or_io(e, "stat", path))?
            .len();
        if actual < header.file_len {
            return Err(Error::Corrupt(format!(
                "{} is {actual} bytes, shorter than the {} it was created with",
                path.display(),
                header.file_len
            )));
        }
        let map = MmapOptions::new()
            .len(header.file_len as usize)
            .map_raw_read_only(&file)
            .map_err(|e| disk_full_or_io(e, "map", path))?;
        Ok(SegmentFile {
            path: path.to_path_buf(),
            map,
            header,
            checkpoint: AtomicU64::new(header.checkpoint),
            // Sealed: never written again.
            prepared: AtomicUsize::new(header.file_len as usize),
            prepare_fd: Mutex::new(None),
            reserved: AtomicUsize::new(header.file_len as usize),
            reserve_lock: Mutex::new(()),
        })
    }

    fn map(file: &File, len: u64, path: &Path) -> Result<MmapRaw> {
        MmapOptions::new()
            .len(len as usize)
            .map_raw(file)
            .map_err(|e| disk_full_or_io(e, "map", path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    #[cfg(test)]
    pub fn header(&self) -> FileHeader {
        self.header
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Bytes from the start that have real blocks: writes through the map
    /// must end at or before this.
    pub fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Acquire)
    }

    /// Records that `[0, end)` holds data written by an earlier run (so it
    /// has blocks), found by recovery.
    pub fn mark_written(&self, end: usize) {
        self.reserved
            .fetch_max(end.min(self.len()), Ordering::AcqRel);
    }

    /// Reserves blocks up to `to` (at most the file's length). Blocking
    /// I/O: call it off the async workers and without the append lock; the
    /// appenders keep writing below the old reservation meanwhile.
    pub fn reserve_to(&self, to: usize, reserver: &Reserver) -> Result<()> {
        let to = to.min(self.len());
        if self.reserved() >= to {
            return Ok(());
        }
        let _one = self.reserve_lock.lock_or_recover();
        let from = self.reserved();
        if from >= to {
            return Ok(());
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| disk_full_or_io(e, "open", &self.path))?;
        // Past every record: zeros (a fresh file's holes, or a recovered
        // file's tail that recovery zeroed), so writing zeros there, where
        // fallocate is missing, changes no content.
        reserver.reserve(&file, from as u64, to as u64, &self.path)?;
        self.reserved.store(to, Ordering::Release);
        Ok(())
    }

    /// # Safety
    /// No other thread may read or write `[off, off + data.len())` meanwhile.
    pub unsafe fn write(&self, off: usize, data: &[u8]) {
        assert!(
            off + data.len() <= self.len(),
            "WAL write past the end of the map"
        );
        std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(off), data.len());
    }

    /// # Safety
    /// No other thread may write `[off, off + len)` while the slice lives.
    pub unsafe fn slice(&self, off: usize, len: usize) -> &[u8] {
        assert!(off + len <= self.len(), "WAL read past the end of the map");
        std::slice::from_raw_parts(self.map.as_ptr().add(off), len)
    }

    /// Writes one record at `off`; the caller checked that it fits.
    /// The payload goes first so that a record is only complete once its
    /// header (and checksum) is there.
    ///
    /// # Safety
    /// Same as [`SegmentFile::write`] for the record's bytes.
    pub unsafe fn write_record(&self, off: usize, payload: &[u8]) {
        let len = payload.len() as u32;
        self.write(off + RECORD_HEADER, payload);
        let crc = record_crc(len, payload);
        let mut h = [0u8; RECORD_HEADER];
        h[0..4].copy_from_slice(&len.to_le_bytes());
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        self.write(off, &h);
    }

    /// # Safety
    /// Same as [`SegmentFile::write`] for the marker's 8 bytes.
    pub unsafe fn write_next_marker(&self, off: usize) {
        let mut h = [0u8; RECORD_HEADER];
        h[0..4].copy_from_slice(&NEXT_MARKER.to_le_bytes());
        h[4..8].copy_from_slice(&crc32c::crc32c(&NEXT_MARKER.to_le_bytes()).to_le_bytes());
        self.write(off, &h);
    }

    /// Whether a record of `len` bytes fits at `off`, leaving room for the
    /// next marker.
    pub fn fits(&self, off: usize, len: usize) -> bool {
        off + RECORD_HEADER + len + RECORD_HEADER <= self.len()
    }

    /// The largest payload one file can hold.
    pub fn max_payload(file_len: u64) -> usize {
        (file_len as usize).saturating_sub(HEADER_LEN + 2 * RECORD_HEADER)
    }

    /// Length of the record at `off`, known to be valid (published).
    ///
    /// # Safety
    /// `off` must be the start of a published record or next marker.
    pub unsafe fn record_len_at(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.slice(off, 4).try_into().expect("4 bytes"))
    }

    /// Zeros `[from, to)` without flushing (undoing unpublished writes).
    ///
    /// # Safety
    /// Same as [`SegmentFile::write`] for that range.
    pub unsafe fn zero_range(&self, from: usize, to: usize) {
        // Past the reservation there is nothing but holes (zeros), and a
        // store there could fault on a full disk.
        let to = to.min(self.reserved());
        if from < to {
            std::ptr::write_bytes(self.map.as_mut_ptr().add(from), 0, to - from);
        }
    }

    /// Writes zeros over the next [`PREPARE_STEP`] bytes past the prepared
    /// end, when that end is less than [`PREPARE_AHEAD`] past `end`, and
    /// returns the range written (pass it to [`SegmentFile::start_writeback`]
    /// once the append lock is released).
    ///
    /// Why: the blocks of a new file are reserved with `fallocate`, as
    /// unwritten extents. The first sync that covers such a block must
    /// convert it, which writes file-system metadata too (the extent tree; a
    /// journal commit on a journaling ext4), and that made every group-commit
    /// sync about twice as slow as an overwrite. Zeros written and sent to
    /// disk ahead of the appenders convert a whole step at once, so their
    /// syncs mostly overwrite (docs/wal-performance.md).
    ///
    /// # Safety
    /// The caller holds the segment's append lock and `end` is the write
    /// position in this file: nobody writes past it meanwhile. Everything
    /// past the write position is zeros (a fresh file, or a recovered one
    /// whose torn tail was zeroed), so writing zeros there changes no
    /// content.
    pub unsafe fn prepare_ahead(&self, end: usize) -> io::Result<Option<(usize, usize)>> {
        let len = self.len();
        let prepared = self.prepared.load(Ordering::Acquire);
        if prepared >= len || prepared >= end.saturating_add(PREPARE_AHEAD) {
            return Ok(None);
        }
        // May run past the reservation: these are plain writes (`pwrite`),
        // which a full disk answers with an error, never a SIGBUS, and
        // their blocks are then real like reserved ones. Keeping them a
        // full PREPARE_AHEAD ahead is what makes the syncs cheap.
        let from = prepared.max(end.div_ceil(PAGE) * PAGE);
        let to = from.saturating_add(PREPARE_STEP).min(len);
        if from >= to {
            self.prepared.store(len, Ordering::Release);
            return Ok(None);
        }
        let mut fd = self.prepare_fd.lock_or_recover();
        if fd.is_none() {
            *fd = Some(OpenOptions::new().write(true).open(&self.path)?);
        }
        let file = fd.as_ref().expect("opened just above");
        file.write_all_at(&zeros()[..to - from], from as u64)?;
        self.prepared.store(to, Ordering::Release);
        Ok(Some((from, to)))
    }

    /// Starts writing `[from, to)` back without waiting for it, so that its
    /// blocks are converted before the appenders reach them. Closes the
    /// file once all of it is prepared.
    pub fn start_writeback(&self, from: usize, to: usize) -> io::Result<()> {
        let mut fd = self.prepare_fd.lock_or_recover();
        let result = match fd.as_ref() {
            Some(file) => start_writeback(file, from, to - from),
            None => Ok(()),
        };
        if to >= self.len() || result.is_err() {
            *fd = None;
        }
        result
    }

    /// Gives up preparing this file (after an error: it is only an
    /// optimisation).
    pub fn stop_preparing(&self) {
        self.prepared.store(self.len(), Ordering::Release);
        *self.prepare_fd.lock_or_recover() = None;
    }

    /// Flushes `[from, to)` to disk (msync MS_SYNC): the durability point.
    pub fn flush(&self, from: usize, to: usize) -> Result<()> {
        if to <= from {
            return Ok(());
        }
        self.map
            .flush_range(from, to - from)
            .map_err(|e| disk_full_or_io(e, "sync", &self.path))
    }

    /// Writes a new checkpoint into the header (not flushed: the caller
    /// flushes it together with the data).
    ///
    /// # Safety
    /// Only one thread may write the header at a time (the syncer, or the
    /// appender holding the append lock while it rolls to a new file).
    pub unsafe fn set_checkpoint(&self, checkpoint: u64) {
        let header = FileHeader {
            checkpoint,
            ..self.header
        };
        self.write(0, &header.encode());
        self.checkpoint.store(checkpoint, Ordering::Relaxed);
    }

    /// The checkpoint last written into the header (maybe not flushed yet).
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint.load(Ordering::Relaxed)
    }
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: queue the dirty pages of the
/// range for writing, without waiting and without a cache flush.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: usize, len: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor; no memory is passed.
    let r = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Elsewhere the kernel's own writeback takes the zeros out.
#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: usize, _len: usize) -> io::Result<()> {
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn new_file(dir: &Path, len: u64) -> SegmentFile {
        let no_spares = SparePool::start(dir, len, 0).unwrap();
        let reserver = Reserver::new(dir, false);
        SegmentFile::create(
            &dir.join("f.wal"),
            7,
            0,
            len,
            len as usize,
            &no_spares,
            &reserver,
        )
        .unwrap()
    }

    #[test]
    fn given_a_checkpoint_when_reopened_should_read_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = new_file(dir.path(), 8192);
        unsafe { f.set_checkpoint(100) };
        f.flush(0, HEADER_LEN).unwrap();
        drop(f);
        let f = SegmentFile::open_rw(&dir.path().join("f.wal")).unwrap();
        assert_eq!(f.header().checkpoint, 100);
        assert_eq!(f.header().segment, 7);
    }

    #[test]
    fn given_a_foreign_file_when_opened_should_name_it_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.wal");
        std::fs::write(&path, vec![1u8; 5000]).unwrap();
        let err = SegmentFile::open_rw(&path).err().unwrap();
        assert!(
            matches!(&err, Error::Corrupt(m) if m.contains("junk.wal")),
            "{err}"
        );
    }
}
