//! The sparse entry index of a segment: the position of every
//! [`STRIDE`]-th entry. A read starts at the nearest indexed entry and hops
//! over at most `STRIDE - 1` record headers, so memory stays at 8 bytes per
//! `STRIDE` entries even for thousands of large sealed segments.

/// Entries between two index points.
pub(crate) const STRIDE: u64 = 256;

/// Where a record starts: which file of the segment and the byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub part: u32,
    pub off: u32,
}

impl Pos {
    pub fn new(part: u32, off: usize) -> Pos {
        Pos {
            part,
            off: u32::try_from(off).expect("WAL files are at most 4 GiB (checked at open)"),
        }
    }

    pub fn off(&self) -> usize {
        self.off as usize
    }
}

#[derive(Debug, Default, Clone)]
pub(crate) struct SparseIndex {
    points: Vec<Pos>,
}

impl SparseIndex {
    /// Records where entry `index` starts; only every `STRIDE`-th is kept.
    /// Entries must be recorded in order.
    pub fn record(&mut self, index: u64, pos: Pos) {
        if index.is_multiple_of(STRIDE) {
            debug_assert_eq!(
                self.points.len() as u64,
                index / STRIDE,
                "entries recorded out of order"
            );
            self.points.push(pos);
        }
    }

    /// Drops the points of entries `count..` (after a rollback).
    pub fn truncate(&mut self, count: u64) {
        self.points.truncate(count.div_ceil(STRIDE) as usize);
    }

    /// The indexed entry at or before `index`, and where it starts.
    pub fn seek(&self, index: u64) -> Option<(u64, Pos)> {
        let i = ((index / STRIDE) as usize).min(self.points.len().checked_sub(1)?);
        Some((i as u64 * STRIDE, self.points[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_recorded_entries_when_seeking_should_return_the_nearest_point_before() {
        let mut idx = SparseIndex::default();
        for i in 0..(STRIDE * 2 + 5) {
            idx.record(i, Pos::new(0, 64 + i as usize));
        }
        assert_eq!(idx.seek(0), Some((0, Pos::new(0, 64))));
        assert_eq!(
            idx.seek(STRIDE + 3),
            Some((STRIDE, Pos::new(0, 64 + STRIDE as usize)))
        );
        assert_eq!(idx.seek(STRIDE * 9).unwrap().0, STRIDE * 2);
        idx.truncate(STRIDE);
        assert_eq!(idx.seek(STRIDE * 2).unwrap().0, 0);
    }

    #[test]
    fn given_an_empty_index_when_seeking_should_return_none() {
        assert_eq!(SparseIndex::default().seek(3), None);
    }
}
