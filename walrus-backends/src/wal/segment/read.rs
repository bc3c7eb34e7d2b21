//! Reads of a segment's entries by index; no lock but a moment of `shared`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use walrus_core::{Error, Result};

use super::{part_path, Segment};
use crate::wal::index::Pos;
use crate::wal::read_cache::ReadCache;
use crate::wal::segment_file::{SegmentFile, HEADER_LEN, NEXT_MARKER, RECORD_HEADER};
use walrus_core::locks::RwLockExt;

impl Segment {
    /// Reads entries `from..` (at most `max_entries`, at most `max_bytes`
    /// of payload but at least one entry). Copies only what it returns.
    pub fn read(
        &self,
        from: u64,
        max_entries: usize,
        max_bytes: usize,
        cache: &ReadCache,
    ) -> Result<Vec<Bytes>> {
        // Before `visible`: a cut lowers it first, then erases.
        let _erase = self.erase.read_or_recover();
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
            let sh = self.shared.read_or_recover();
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
        // Where each payload is (file, offset, length), then one copy into
        // one buffer that the entries share: an allocation per entry cost
        // as much as the copy in a READ of 1,000 small entries. A caller
        // that keeps one entry keeps the buffer of its read (at most
        // `max_bytes` plus one entry).
        let mut files = vec![file.clone()];
        let mut spans: Vec<(usize, usize, usize)> = Vec::with_capacity(want.min(1024));
        let mut bytes = 0usize;
        while spans.len() < want {
            // SAFETY: `pos` is the start of a published record or marker
            // (entries `< visible` and what precedes them are never written
            // again), so reading it needs no lock.
            let len = unsafe { file.record_len_at(pos.off()) };
            if len == NEXT_MARKER {
                pos = Pos::new(pos.part + 1, HEADER_LEN);
                file = file_of(pos.part)?;
                files.push(file.clone());
                continue;
            }
            let len = len as usize;
            if i >= from {
                if !spans.is_empty() && bytes + len > max_bytes {
                    break;
                }
                spans.push((files.len() - 1, pos.off() + RECORD_HEADER, len));
                bytes += len;
            }
            pos = Pos::new(pos.part, pos.off() + RECORD_HEADER + len);
            i += 1;
        }
        let mut buf = BytesMut::with_capacity(bytes);
        for &(f, off, len) in &spans {
            // SAFETY: as above; the payload is part of a published record.
            buf.extend_from_slice(unsafe { files[f].slice(off, len) });
        }
        let buf = buf.freeze();
        let mut at = 0;
        let out = spans
            .iter()
            .map(|&(_, _, len)| {
                at += len;
                buf.slice(at - len..at)
            })
            .collect();
        Ok(out)
    }
}
