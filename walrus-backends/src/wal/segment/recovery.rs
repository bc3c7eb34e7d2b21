//! Rebuilding a segment from its files: on open (a torn tail is cut,
//! other damage quarantines the segment) and, for a segment found sealed,
//! on its first read.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use walrus_core::{Error, Result, SegmentKey};

use super::append::{chunk, reserve_target};
use super::{part_path, AppendState, Damage, Segment, SegmentParams, Shared};
use crate::wal::index::{Pos, SparseIndex};
use crate::wal::segment_file::{
    scan_file, zero_tail, FileHeader, ScanEnd, SegmentFile, HEADER_LEN, RECORD_HEADER,
};
use walrus_core::locks::RwLockExt;

impl Segment {
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

    /// Scans (with `pread`) and verifies a segment found sealed on open,
    /// once. Damage quarantines it: entries before it stay readable.
    pub(super) fn ensure_index(&self) {
        if self.shared.read_or_recover().index_ready {
            return;
        }
        let mut sh = self.shared.write_or_recover();
        if sh.index_ready {
            return;
        }
        let sealed_count = self.visible.load(Ordering::Acquire);
        let mut index = SparseIndex::default();
        let mut count = 0u64;
        let mut damage = None;
        for part in 0..sh.part_count {
            if count >= sealed_count {
                // Every sealed entry was read whole; what follows (a tail
                // `seal_at` cut, records a failed sync left) is never
                // served, so damage there is no damage to this segment.
                break;
            }
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
            if count >= sealed_count {
                break;
            }
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
                (None, ScanEnd::Invalid { reason }) => Some((*reason).to_owned()),
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
            // zeros may not have reached it either), or a tail `seal_at`
            // cut: the seal is the authority, they are never served.
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

fn identity_error(h: &FileHeader, path: &Path, segment: u64, part: u32) -> Option<String> {
    (h.segment != segment || h.part != part).then(|| format!(
        "{} says it is part {} of segment {}, but its name says part {part} of segment {segment}; it was renamed or copied by hand",
        path.display(),
        h.part,
        h.segment
    ))
}
