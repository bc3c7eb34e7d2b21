//! Reserving real disk blocks for a range of a WAL file before anything is
//! written there through the map.
//!
//! Why: a store through a shared map into a hole must allocate a block at
//! fault time, and on a full disk that is a SIGBUS, not an error. So every
//! byte the appenders write lies in a range reserved here first, where a
//! full disk is an ordinary `ENOSPC`.
//!
//! `fallocate` reserves without writing. File systems without it (ZFS
//! before 2.2, FUSE, some network file systems) answer `EOPNOTSUPP` (or
//! `ENOSYS`); there the range is reserved by writing zeros, as
//! `posix_fallocate` does. Which one a data directory needs is found once
//! (at open, or at the first reservation that finds out) and logged once.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use rustix::io::Errno;
use walrus_core::{Error, Result};

/// Zeros are written this much at a time where `fallocate` is missing.
const ZERO_BLOCK: usize = 1 << 20;

fn zero_block() -> &'static [u8] {
    static ZEROS: OnceLock<Box<[u8]>> = OnceLock::new();
    ZEROS.get_or_init(|| vec![0u8; ZERO_BLOCK].into_boxed_slice())
}

/// How one data directory reserves blocks.
pub(crate) struct Reserver {
    dir: PathBuf,
    /// Test seam: every `fallocate` answers `EOPNOTSUPP`, as on a file
    /// system without it.
    inject_unsupported: bool,
    /// `fallocate` answered "not supported": zeros are written instead.
    write_zeros: AtomicBool,
}

impl Reserver {
    pub fn new(dir: &Path, inject_unsupported: bool) -> Reserver {
        Reserver {
            dir: dir.to_path_buf(),
            inject_unsupported,
            write_zeros: AtomicBool::new(false),
        }
    }

    /// Finds out now, at open, whether the directory's file system has
    /// `fallocate`, so that the log says it at startup and no request pays
    /// for the discovery. Any other failure (a full disk) is left for the
    /// first real reservation to report.
    pub fn probe(&self) {
        let path = self.dir.join(".reserve-probe.tmp");
        let probe = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .and_then(|f| {
                f.set_len(4096)?;
                Ok(f)
            });
        if let Ok(file) = probe {
            let _ = self.reserve(&file, 0, 4096, &path);
        }
        let _ = std::fs::remove_file(&path);
    }

    /// Whether this directory reserves by writing zeros.
    pub fn writes_zeros(&self) -> bool {
        self.write_zeros.load(Ordering::Relaxed)
    }

    /// Reserves blocks for `[from, to)` of `file` (named `path` in errors).
    /// The range must hold only zeros (past every record): where zeros are
    /// written, they overwrite it. Blocking I/O: never call it on an async
    /// worker or under the append lock.
    pub fn reserve(&self, file: &File, from: u64, to: u64, path: &Path) -> Result<()> {
        if to <= from {
            return Ok(());
        }
        if !self.writes_zeros() {
            match self.fallocate(file, from, to - from) {
                Ok(()) => return Ok(()),
                Err(e) if e == Errno::OPNOTSUPP || e == Errno::NOSYS => {
                    if !self.write_zeros.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            dir = %self.dir.display(),
                            error = %io::Error::from(e),
                            "the file system of the WAL directory has no fallocate; reserving WAL space by writing zeros instead (same guarantees, files grow at the cost of one extra write)"
                        );
                    }
                }
                Err(e) => return Err(disk_full_or_io(e.into(), "reserve space for", path)),
            }
        }
        let mut off = from;
        while off < to {
            let n = (to - off).min(ZERO_BLOCK as u64) as usize;
            file.write_all_at(&zero_block()[..n], off)
                .map_err(|e| disk_full_or_io(e, "reserve space (writing zeros) for", path))?;
            off += n as u64;
        }
        Ok(())
    }

    fn fallocate(&self, file: &File, offset: u64, len: u64) -> std::result::Result<(), Errno> {
        if self.inject_unsupported {
            return Err(Errno::OPNOTSUPP);
        }
        // Mode 0 within the file's length: allocates, never changes the
        // length (files are created at their full length, sparse).
        rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), offset, len)
    }
}

/// A storage error that says plainly when the disk is full and what to do.
pub(crate) fn disk_full_or_io(e: io::Error, what: &str, path: &Path) -> Error {
    if e.raw_os_error() == Some(Errno::NOSPC.raw_os_error()) {
        Error::Storage(format!(
            "disk full: cannot {what} {}; free space on the data disk (writes resume as soon as there is room)",
            path.display()
        ))
    } else {
        Error::Storage(format!("cannot {what} {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn given_fallocate_unsupported_when_reserving_should_write_zeros_over_the_range_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(8 << 20).unwrap();
        file.write_all_at(b"data", 0).unwrap();
        let r = Reserver::new(dir.path(), true);
        assert!(!r.writes_zeros());
        r.reserve(&file, 4096, 3 << 20, &path).unwrap();
        assert!(r.writes_zeros(), "detected on first use");
        let mut head = [0u8; 4];
        file.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(&head, b"data", "nothing before the range is touched");
        file.sync_all().unwrap();
        let allocated = file.metadata().unwrap().blocks() * 512;
        assert!(
            allocated >= (3 << 20) - 4096,
            "the range has real blocks: {allocated} bytes allocated"
        );
        assert!(allocated < 4 << 20, "only the range: {allocated}");
    }

    #[test]
    fn given_a_probe_when_fallocate_is_unsupported_should_switch_to_zeros_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reserver::new(dir.path(), true);
        r.probe();
        assert!(r.writes_zeros());
        assert!(!dir.path().join(".reserve-probe.tmp").exists());
    }
}
