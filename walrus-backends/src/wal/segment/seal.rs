//! Sealing a segment, and its seal file (the final count, checksummed).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use walrus_core::log_store::replica_errors;
use walrus_core::{Error, Result};

use super::{seal_path, Segment};
use crate::durable_dir::{create_dir_durable, sync_dir};
use crate::wal::index::Pos;
use crate::wal::segment_file::{SegmentFile, HEADER_LEN, NEXT_MARKER, RECORD_HEADER};
use walrus_core::locks::{MutexExt, RwLockExt};

/// What `begin_seal` found.
pub(crate) enum SealStep {
    /// Already sealed with this count.
    Done(u64),
    /// Appends are now refused; once everything written is durable the
    /// seal file can be written with this count.
    SyncTo(u64),
    /// Quarantined: its true count is unknown, so it is never sealed.
    Refused(Error),
}

impl Segment {
    /// Starts a seal: at whatever count the segment has (`at: None`,
    /// `seal`), or at exactly `at` (`seal_at`, contract 12: a longer tail
    /// is cut when the seal file is written).
    pub fn begin_seal(&self, at: Option<u64>) -> SealStep {
        let mut st = self.lock();
        if let Some(d) = self.damage.get().filter(|d| !d.count_known) {
            return SealStep::Refused(Error::Corrupt(format!(
                "cannot seal a quarantined segment (its count past the damage is unknown): {}",
                d.why
            )));
        }
        if self.sealed.load(Ordering::Acquire) {
            let sealed = self.visible.load(Ordering::Acquire);
            return match at {
                Some(count) if count != sealed => {
                    SealStep::Refused(replica_errors::sealed_elsewhere(&self.key, sealed, count))
                }
                _ => SealStep::Done(sealed),
            };
        }
        // A plain seal during a seal in progress joins it, at its count.
        let target = at.or(st.sealing).unwrap_or(st.count);
        match st.sealing {
            // Two seals at different counts racing: the seal file would
            // end up with whichever renamed last.
            Some(other) if other != target => {
                return SealStep::Refused(Error::Unavailable(format!(
                    "segment {} is being sealed at {other} entries by another call; retry to see its outcome",
                    self.key
                )))
            }
            _ => {}
        }
        if st.count < target {
            return SealStep::Refused(replica_errors::missing(&self.key, st.count, target));
        }
        st.sealing = Some(target);
        SealStep::SyncTo(target)
    }

    pub fn abort_seal(&self) {
        self.lock().sealing = None;
    }

    /// Writes the seal file (blocking I/O) and releases the file maps: from
    /// now on reads go through the read cache and take no append lock.
    pub fn finish_seal(&self, count: u64) -> Result<()> {
        // No file is created for this segment from now on, and those
        // created ahead go before the seal exists: a sealed segment's
        // files are exactly the ones its count covers.
        let _grow = self.grow.lock_or_recover();
        let unused = std::mem::take(&mut self.lock().ready);
        self.discard(&unused);
        // A segment this node never wrote gets its topic directory here.
        create_dir_durable(&self.dir)?;
        write_seal_file(&seal_path(&self.dir, self.key.segment), count)?;
        let mut st = self.lock();
        // The cut (`seal_at`): from here on the seal file is the authority
        // (`ensure_index` ignores records past it after a restart); the
        // records are then erased too, so that even a seal file lost to
        // damage later cannot bring them back.
        let cut = (count < st.count)
            .then(|| {
                st.pos
                    .map(|end| (end, self.shared.read_or_recover().parts.clone()))
            })
            .flatten();
        if count < st.count {
            st.count = count;
            self.written.store(count, Ordering::Release);
        }
        self.visible.store(count, Ordering::Release);
        self.sealed.store(true, Ordering::Release);
        st.current = None;
        self.shared.write_or_recover().parts.clear();
        drop(st);
        if let Some((end, parts)) = cut {
            if let Err(e) = self.erase_past(count, end, &parts) {
                tracing::warn!(segment = %self.key, count, error = %e, "cannot erase the WAL records past a seal_at cut; the seal file keeps them unserved");
            }
        }
        Ok(())
    }

    /// Erases the records from entry `count` to the old write end `end`:
    /// zeros in the file holding entry `count`, later files removed (last
    /// first: a crash never leaves a gap before a file that is still
    /// there). Called once the segment is sealed at `count`, so nothing
    /// writes there and no new reader goes there; it waits for readers
    /// that started before.
    fn erase_past(&self, count: u64, end: Pos, parts: &[Arc<SegmentFile>]) -> Result<()> {
        let _readers_gone = self.erase.write_or_recover();
        let part = |p: u32| {
            parts.get(p as usize).cloned().ok_or_else(|| {
                Error::Internal(format!("segment {} has no map of part {p}", self.key))
            })
        };
        let (mut i, mut pos) =
            self.shared
                .read_or_recover()
                .index
                .seek(count)
                .ok_or_else(|| {
                    Error::Internal(format!("segment {} has entries but no index", self.key))
                })?;
        let mut file = part(pos.part)?;
        while i < count {
            // SAFETY: records before the old write end were published
            // (synced before the seal) and are never written again.
            let len = unsafe { file.record_len_at(pos.off()) };
            if len == NEXT_MARKER {
                pos = Pos::new(pos.part + 1, HEADER_LEN);
                file = part(pos.part)?;
                continue;
            }
            pos = Pos::new(pos.part, pos.off() + RECORD_HEADER + len as usize);
            i += 1;
        }
        for later in parts
            .get(pos.part as usize + 1..)
            .unwrap_or_default()
            .iter()
            .rev()
        {
            std::fs::remove_file(later.path()).map_err(|e| {
                Error::Storage(format!("cannot remove {}: {e}", later.path().display()))
            })?;
        }
        let to = if pos.part == end.part {
            end.off()
        } else {
            file.len()
        };
        // SAFETY: past the sealed count: no writer (sealed), no reader
        // (none started before the seal is left, none starts there).
        unsafe { file.zero_range(pos.off(), to) };
        file.flush(pos.off(), to)?;
        sync_dir(&self.dir)?;
        let mut sh = self.shared.write_or_recover();
        sh.part_count = pos.part + 1;
        sh.index.truncate(count);
        Ok(())
    }
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
