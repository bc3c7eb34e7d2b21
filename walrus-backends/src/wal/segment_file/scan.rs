//! Reading a file's records back with `pread`, never through the map (a
//! block the disk cannot read is an error, not a SIGBUS), and cutting a
//! torn tail. Used by recovery, before a file is mapped.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use walrus_core::{Error, Result};

use super::format::{record_crc, FileHeader, HEADER_LEN, NEXT_MARKER, RECORD_HEADER};
use crate::wal::reserve::disk_full_or_io;

/// Why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// The file ends with a next marker at this offset: the segment goes on.
    Next,
    /// No valid record at this offset (zeros, bad length or bad checksum).
    Invalid { reason: &'static str },
}

/// The outcome of scanning a file from its first record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Offset just past the last valid record (where the next one goes).
    pub end: usize,
    /// Valid records found.
    pub records: u64,
    pub stop: ScanEnd,
}

pub(super) fn read_header(file: &File, path: &Path) -> Result<FileHeader> {
    use std::os::unix::fs::FileExt;
    let mut h = [0u8; HEADER_LEN];
    let mut read = 0;
    while read < HEADER_LEN {
        match file.read_at(&mut h[read..], read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(disk_full_or_io(e, "read header of", path)),
        }
    }
    if read < HEADER_LEN {
        return Err(Error::Corrupt(format!(
            "{} is {read} bytes, too short for a WAL header; move it away if it is not needed",
            path.display()
        )));
    }
    FileHeader::decode(&h, path)
}

/// The outcome of [`scan_file`].
pub(crate) struct FileScan {
    pub header: FileHeader,
    pub scan: Scan,
    /// Reading stopped at `scan.end` on this I/O error (a bad block): damage,
    /// never a torn tail.
    pub io_error: Option<io::Error>,
}

/// Bytes read per `pread` by [`scan_file`].
const SCAN_WINDOW: usize = 1 << 20;

/// Scans a file's records from the first one with `pread`, not through a
/// map: a block the disk cannot read is an error here, where through a map
/// it would be a SIGBUS that kills the node. `on_record(index, offset)` is
/// called for each valid record. Bytes past the file's actual end read as
/// zeros (a file cut short ends its records there). Fails only when the
/// header cannot be read or is not a WAL header.
pub(crate) fn scan_file(path: &Path, mut on_record: impl FnMut(u64, usize)) -> Result<FileScan> {
    let file = File::open(path)
        .map_err(|e| Error::Storage(format!("cannot open {}: {e}", path.display())))?;
    let header = read_header(&file, path)?;
    let mut window = PreadWindow {
        file: &file,
        len: header.file_len as usize,
        start: 0,
        buf: Vec::new(),
    };
    let mut off = HEADER_LEN;
    let mut records = 0u64;
    loop {
        let stop = match window.check_record(off) {
            Ok(Ok(Some(len))) => {
                on_record(records, off);
                records += 1;
                off += RECORD_HEADER + len;
                continue;
            }
            Ok(Ok(None)) => (ScanEnd::Next, None),
            Ok(Err(reason)) => (ScanEnd::Invalid { reason }, None),
            Err(e) => (
                ScanEnd::Invalid {
                    reason: "unreadable (I/O error)",
                },
                Some(e),
            ),
        };
        return Ok(FileScan {
            header,
            scan: Scan {
                end: off,
                records,
                stop: stop.0,
            },
            io_error: stop.1,
        });
    }
}

/// A read window over a file for [`scan_file`].
struct PreadWindow<'a> {
    file: &'a File,
    /// The file's length as its header gives it (the map's length).
    len: usize,
    start: usize,
    buf: Vec<u8>,
}

impl PreadWindow<'_> {
    /// Bytes `[off, off + n)`, `off + n <= len`.
    fn get(&mut self, off: usize, n: usize) -> io::Result<&[u8]> {
        if off < self.start || off + n > self.start + self.buf.len() {
            let want = n.max(SCAN_WINDOW).min(self.len - off);
            self.buf.clear();
            self.buf.resize(want, 0);
            let mut read = 0;
            while read < want {
                match self
                    .file
                    .read_at(&mut self.buf[read..], (off + read) as u64)
                {
                    // Past the end of a file cut short: zeros.
                    Ok(0) => break,
                    Ok(k) => read += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.buf.clear();
                        return Err(e);
                    }
                }
            }
            self.start = off;
        }
        Ok(&self.buf[off - self.start..off - self.start + n])
    }

    /// Checks the record at `off`: `Ok(Some(len))` for a valid record,
    /// `Ok(None)` for a next marker, `Err(reason)` otherwise; the outer
    /// error is a failed read.
    fn check_record(
        &mut self,
        off: usize,
    ) -> io::Result<std::result::Result<Option<usize>, &'static str>> {
        if off + RECORD_HEADER > self.len {
            return Ok(Err("no room for a record header"));
        }
        let h = self.get(off, RECORD_HEADER)?;
        let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
        if len == NEXT_MARKER {
            return Ok(if crc == crc32c::crc32c(&NEXT_MARKER.to_le_bytes()) {
                Ok(None)
            } else {
                Err("next-file marker with a bad checksum")
            });
        }
        if len == 0 && crc == 0 {
            return Ok(Err("zeros (end of written data)"));
        }
        if off + 2 * RECORD_HEADER + len as usize > self.len {
            return Ok(Err("record length runs past the end of the file"));
        }
        let payload = self.get(off + RECORD_HEADER, len as usize)?;
        Ok(if record_crc(len, payload) == crc {
            Ok(Some(len as usize))
        } else {
            Err("record checksum mismatch")
        })
    }
}

/// Zeros `[from, len)` of the file wherever it is not zero yet, with
/// `pread`/`pwrite` (a bad block is an error, not a SIGBUS), and syncs:
/// cuts a torn tail so that no stale record behind it can ever be read
/// again. For recovery, before the file is mapped.
pub(crate) fn zero_tail(path: &Path, from: usize, len: usize) -> Result<()> {
    const CHUNK: usize = 64 * 1024;
    let io = |e: io::Error| {
        Error::Storage(format!(
            "cannot cut the torn tail of {}: {e}",
            path.display()
        ))
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let actual = file.metadata().map_err(io)?.len() as usize;
    let zeros = [0u8; CHUNK];
    let mut buf = vec![0u8; CHUNK];
    let mut dirty = false;
    let mut off = from;
    while off < len.min(actual) {
        let n = CHUNK.min(len.min(actual) - off);
        let mut read = 0;
        while read < n {
            match file.read_at(&mut buf[read..n], (off + read) as u64) {
                Ok(0) => break,
                Ok(k) => read += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        if buf[..read].iter().any(|&b| b != 0) {
            file.write_all_at(&zeros[..read], off as u64).map_err(io)?;
            dirty = true;
        }
        off += n;
    }
    if dirty {
        file.sync_data().map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::segment_file::tests::new_file;

    #[test]
    fn given_written_records_when_scanned_should_find_them_and_stop_at_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let f = new_file(dir.path(), 8192);
        let mut off = HEADER_LEN;
        for p in [&b"a"[..], b"", b"hello"] {
            unsafe { f.write_record(off, p) };
            off += RECORD_HEADER + p.len();
        }
        let scan = scan_file(f.path(), |_, _| {}).unwrap().scan;
        assert_eq!(scan.records, 3);
        assert_eq!(scan.end, off);
        assert!(matches!(scan.stop, ScanEnd::Invalid { .. }));
    }

    #[test]
    fn given_a_flipped_payload_byte_when_scanned_should_stop_before_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let f = new_file(dir.path(), 8192);
        unsafe {
            f.write_record(HEADER_LEN, b"first");
            f.write_record(HEADER_LEN + 13, b"second");
            f.write(HEADER_LEN + 13 + RECORD_HEADER, b"X");
        }
        let scan = scan_file(f.path(), |_, _| {}).unwrap().scan;
        assert_eq!(scan.records, 1);
        assert_eq!(
            scan.stop,
            ScanEnd::Invalid {
                reason: "record checksum mismatch"
            }
        );
    }

    #[test]
    fn given_records_across_read_windows_when_scanned_with_pread_should_find_every_one() {
        let dir = tempfile::tempdir().unwrap();
        let f = new_file(dir.path(), 4 << 20);
        let mut off = HEADER_LEN;
        let mut starts = Vec::new();
        // Sizes that put record boundaries, headers and payloads astride
        // the 1 MiB windows, and one payload larger than a window.
        for (i, len) in [300_000usize, 700_000, 5, 1_500_000, 17, 900_000]
            .into_iter()
            .enumerate()
        {
            let payload = vec![i as u8 + 1; len];
            unsafe { f.write_record(off, &payload) };
            starts.push(off);
            off += RECORD_HEADER + len;
        }
        let mut seen = Vec::new();
        let fs = scan_file(f.path(), |_, at| seen.push(at)).unwrap();
        assert_eq!(seen, starts);
        assert_eq!((fs.scan.records, fs.scan.end), (6, off));
        assert!(fs.io_error.is_none());
    }

    #[test]
    fn given_a_file_cut_short_when_scanned_with_pread_should_stop_at_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let f = new_file(dir.path(), 8192);
        unsafe {
            f.write_record(HEADER_LEN, b"kept");
            f.write_record(HEADER_LEN + 12, b"cut in the middle");
        }
        f.flush(0, 8192).unwrap();
        let path = f.path().to_path_buf();
        drop(f);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len((HEADER_LEN + 12 + 10) as u64)
            .unwrap();
        let fs = scan_file(&path, |_, _| {}).unwrap();
        assert_eq!((fs.scan.records, fs.scan.end), (1, HEADER_LEN + 12));
    }

    #[test]
    fn given_a_next_marker_when_scanned_should_report_next() {
        let dir = tempfile::tempdir().unwrap();
        let f = new_file(dir.path(), 8192);
        unsafe {
            f.write_record(HEADER_LEN, b"x");
            f.write_next_marker(HEADER_LEN + 9);
        }
        let scan = scan_file(f.path(), |_, _| {}).unwrap().scan;
        assert_eq!((scan.records, scan.stop), (1, ScanEnd::Next));
    }
}
