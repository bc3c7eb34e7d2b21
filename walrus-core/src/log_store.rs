//! [`LogStore`]: a node's local data, segment by segment.

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::types::SegmentKey;

/// The result of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Index (within the segment) of the first appended entry.
    pub first_index: u64,
    /// The segment's entry count after this append. Under a policy that
    /// acknowledges before syncing this may be ahead of the durable count
    /// ([`SegmentInfo::count`]): good for capacity decisions, never a place
    /// for a reader or cursor to stand.
    pub count: u64,
}

/// How full a segment may get (`WALRUS_MAX_SEGMENT_ENTRIES`,
/// `WALRUS_MAX_SEGMENT_BYTES`): see contract 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentLimit {
    /// Entries.
    pub entries: u64,
    /// Payload bytes (the entries' own bytes, not the store's framing).
    pub bytes: u64,
}

impl SegmentLimit {
    /// No limit.
    pub const NONE: SegmentLimit = SegmentLimit {
        entries: u64::MAX,
        bytes: u64::MAX,
    };

    /// A limit of `entries` entries and no byte limit.
    pub const fn entries(entries: u64) -> SegmentLimit {
        SegmentLimit {
            entries,
            bytes: u64::MAX,
        }
    }
}

/// What a store knows of one of its segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Entries visible to readers: durable (synced), whatever the policy.
    pub count: u64,
    /// A sealed segment takes no more appends; its count is final.
    pub sealed: bool,
}

/// Problems a store has found with its storage since it opened, for the
/// node's METRICS and log. Each one is also an error on the requests it
/// touches; this is the summary an operator watches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageHealth {
    /// Syncs that failed (an I/O error from fsync/msync). Each makes its
    /// segment refuse appends for good (contract 9).
    pub failed_syncs: u64,
    /// Segments that refuse appends because a sync of theirs failed.
    pub failed_segments: Vec<SegmentKey>,
    /// Segments found damaged when the store opened: served up to the
    /// damage, an error past it, never appended to (contract 8).
    pub quarantined_segments: Vec<SegmentKey>,
}

/// A node's local write-ahead log, one append-only sequence of entries per
/// segment. It knows nothing of leaders, leases or topics' other segments.
///
/// # Contract
///
/// 1. **Durable before return.** `append` returns only once its entries are
///    durable under the store's fsync policy (for the default policy: on
///    disk). Concurrent appends may share one sync (group commit).
/// 2. **All or nothing.** An append adds all of its entries, contiguously,
///    in order, or none (and returns `Err`).
/// 3. **Visible when durable.** `read` returns, and `info`/`seal` count,
///    only entries that are durable: synced to disk, whatever the fsync
///    policy, so they survive a power cut. Under a policy that acknowledges
///    before syncing, an appended entry stays invisible until the next
///    sync; a `read` starting at such an entry asks for that sync and waits
///    for it (it is not left empty for an interval), so a reader at the
///    tail pays one sync. Hence nothing derived from reads or counts (a
///    consumer's cursor) can point past what a power cut leaves.
/// 4. **Exact counts.** `info` gives the exact count, also after a crash or
///    restart: entries are numbered `0..count` with no holes.
/// 5. **Capacity.** `append_within` with `limit` fails with
///    [`Error::SegmentSealed`](crate::Error::SegmentSealed) when the segment is
///    non-empty and `count + entries.len() > limit.entries`, or non-empty
///    and its payload bytes plus those of `entries` pass `limit.bytes`;
///    nothing is written then. So a segment never holds more than either
///    limit, except that an empty segment takes one append whatever its
///    size. The payload bytes of a segment are counted across restarts
///    like its entries. (`append` is `append_within` with an entry limit
///    only.)
/// 6. **Seal is final.** After `seal` returns `n`, the count stays `n` and
///    every later `append` fails with `Error::SegmentSealed`. Sealing is
///    idempotent and works on a segment the store has never seen (count 0).
/// 7. **Errors lose nothing.** A failed append (disk full, I/O error) leaves
///    every earlier entry readable; the store accepts appends again once
///    the cause is gone.
/// 8. **Recovery.** On open, a torn or corrupt tail is cut off and never
///    served; corruption before the tail is never skipped silently: the
///    segment is quarantined (entries before the damage are served, a read
///    past it is [`Error::Corrupt`](crate::Error::Corrupt) naming file and
///    position, appends and seal are refused) and the store opens with
///    every other segment.
/// 9. **A failed sync is never forgotten.** After a sync fails (the kernel
///    may then drop the unwritten data and report the next sync as a
///    success), the segment refuses every later append with
///    [`Error::Storage`](crate::Error::Storage), appends waiting for that
///    sync get an error, and the segment's count (and so its seal) stays at
///    what was durable before the failure: entries written after it are
///    never served. [`LogStore::health`] reports it for the store's life.
/// 10. **Delete is whole and final.** [`LogStore::delete`] removes a sealed
///    segment: once it returns `Ok`, `info` is `None`, `read` is empty,
///    `segments` does not list it, and that stays so after a crash or
///    restart (the removal is durable). A crash during the delete leaves
///    the segment either whole (as sealed) or gone after the store opens
///    again, never partly served; deleting it again finishes the job.
///    Deleting a segment the store does not hold is `Ok` (nothing to do); a
///    segment that is not sealed is refused with
///    [`Error::BadRequest`](crate::Error::BadRequest) and left whole, so an
///    open segment is never lost by mistake. Other segments are untouched.
/// 11. **Append at an index (replication).** [`LogStore::append_at`]
///    stores entries at the indexes the segment's leader gave them, so
///    that every replica of a segment holds the same entry at the same
///    index. A segment index has exactly one writer ever (its leader), so
///    an entry already held at an index equals the one sent there again:
///    the overlap is skipped, only the new tail is written. A gap (`first`
///    past the count) is refused with
///    [`Error::BadRequest`](crate::Error::BadRequest) and writes nothing.
///    Otherwise it behaves as `append` (1, 2, 7, 9; no limit, 5): durable
///    before return, all or nothing, refused on a sealed segment with
///    `Error::SegmentSealed` (whatever `first` is) unless every entry it
///    carries is held already: a retransmit that crosses the seal is `Ok`.
/// 12. **Seal at a count (failover).** [`LogStore::seal_at`] seals a
///    segment with exactly `count` entries: entries `count..` (an
///    unacknowledged tail this replica holds beyond what a majority
///    holds) are cut, never served or counted again, also after a crash
///    or restart: the cut and the seal are one durable step, done before
///    it returns. It never invents entries: holding fewer than `count`
///    (written, synced or not) is refused with `Error::BadRequest` and
///    changes nothing. Sealing again at the same count is `Ok` (also after
///    a restart, and after a plain `seal` that ended at that count); a
///    sealed segment asked for another count is refused with
///    `Error::BadRequest`. A segment never seen takes `count == 0`. A
///    quarantined segment is refused as `seal` refuses it (8).
///
/// # Invariants (what replication builds on)
///
/// - An index holds at most one entry for the segment's life: `append`,
///   `append_at` and a restart never change an entry once it was counted.
/// - After `seal_at(s, n)` returns, `info(s)` is `{ count: n, sealed }`
///   and `read(s, i, ..)` is empty for every `i >= n`, forever (until
///   `delete`).
/// - `append_at(s, first, e)` returning `Ok` means entries
///   `0..first + e.len()` are held (durable per the policy), in order.
///
/// The conformance suite in `testing::log_store_conformance` (cargo
/// feature `testing`) checks 1–6 and 10–12 for any implementation
/// (12 across a restart for a store that can be reopened).
#[async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// Appends `entries` to `segment` (creating it on first use), with an
    /// entry limit only (`u64::MAX` for none): see contract 5.
    async fn append(
        &self,
        segment: &SegmentKey,
        entries: &[Bytes],
        limit: u64,
    ) -> Result<Appended> {
        self.append_within(segment, entries, SegmentLimit::entries(limit))
            .await
    }

    /// Appends `entries` to `segment` (creating it on first use) unless
    /// that takes it past `limit` (contract 5).
    async fn append_within(
        &self,
        segment: &SegmentKey,
        entries: &[Bytes],
        limit: SegmentLimit,
    ) -> Result<Appended>;

    /// `append_within`, calling `written` with the first entry's index as
    /// soon as the entries have their indexes and are written, which may
    /// be before they are durable: the leader of a replicated segment sends
    /// them to its followers while its own sync runs, so that an
    /// acknowledgement waits for one sync and a round trip, not two syncs
    /// and a round trip in series. `written` is called at most once, never
    /// when nothing was written; the append may still fail after it (a
    /// failed sync, contract 9: those entries are then never served here).
    /// This default calls it once `append_within` returned.
    async fn append_within_then(
        &self,
        segment: &SegmentKey,
        entries: &[Bytes],
        limit: SegmentLimit,
        written: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Appended> {
        let appended = self.append_within(segment, entries, limit).await?;
        written(appended.first_index);
        Ok(appended)
    }

    /// Reads entries `from..` of `segment`: at most `max_entries`, and no
    /// more than `max_bytes` of payload except that at least one entry is
    /// returned when one exists. Empty when `from >= count` or the segment
    /// is unknown.
    async fn read(
        &self,
        segment: &SegmentKey,
        from: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>>;

    /// The segment's count and seal status; `None` if the store has never
    /// seen it.
    async fn info(&self, segment: &SegmentKey) -> Result<Option<SegmentInfo>>;

    /// Seals `segment` and returns its final count.
    async fn seal(&self, segment: &SegmentKey) -> Result<u64>;

    /// Follower append (replication, contract 11): stores `entries` at
    /// indexes `first..first + entries.len()` of `segment`, creating it on
    /// first use. `first < count`: the overlapping entries are already
    /// there (equal: one writer per index) and are skipped; the rest is
    /// appended. `first > count`: refused with `Error::BadRequest` naming
    /// the gap; nothing written. Durable before return as `append`
    /// (contract 1), all or nothing (2), no segment limit; refused on a
    /// sealed segment with `Error::SegmentSealed` unless every entry is
    /// already present (then `Ok`: a retransmit after the seal is
    /// harmless). Returns `first_index: first` and the count after it.
    async fn append_at(
        &self,
        segment: &SegmentKey,
        first: u64,
        entries: &[Bytes],
    ) -> Result<Appended>;

    /// Seals `segment` with exactly `count` entries (failover closes a
    /// replicated segment at the count a majority holds; contract 12):
    /// entries at `count..` are cut and never served again, also after a
    /// crash or restart (the cut is durable before return). Holding fewer
    /// than `count`: refused with `Error::BadRequest` (missing entries
    /// `held..count`: copy them first), nothing changes. Idempotent:
    /// sealing again at the same count is `Ok`; a sealed segment asked to
    /// seal at a different count is refused with `Error::BadRequest`.
    /// Works on a segment never seen when `count == 0`. Returns `count`.
    async fn seal_at(&self, segment: &SegmentKey, count: u64) -> Result<u64>;

    /// Deletes the sealed `segment` with its files (retention): see
    /// contract 10.
    async fn delete(&self, segment: &SegmentKey) -> Result<()>;

    /// Makes everything appended so far durable, whatever the policy
    /// (graceful shutdown).
    async fn sync(&self) -> Result<()>;

    /// Every segment the store holds, with its info.
    async fn segments(&self) -> Result<Vec<(SegmentKey, SegmentInfo)>>;

    /// The payload bytes (the entries' own bytes) of the sealed `segment`;
    /// `None` when the store has never seen it. What retention by bytes
    /// counts. This default reads the segment through; a store that counts
    /// its bytes anyway (for [`SegmentLimit::bytes`]) answers from that.
    async fn payload_bytes(&self, segment: &SegmentKey) -> Result<Option<u64>> {
        let Some(info) = self.info(segment).await? else {
            return Ok(None);
        };
        let (mut from, mut total) = (0, 0u64);
        while from < info.count {
            let entries = self.read(segment, from, 10_000, 16 << 20).await?;
            if entries.is_empty() {
                break;
            }
            from += entries.len() as u64;
            total += entries.iter().map(|e| e.len() as u64).sum::<u64>();
        }
        Ok(Some(total))
    }

    /// Storage problems found so far (failed syncs, damaged segments). A
    /// store that cannot detect any reports none.
    fn health(&self) -> StorageHealth {
        StorageHealth::default()
    }
}

/// The refusals of contracts 11 and 12, worded alike by every store.
pub mod replica_errors {
    use super::Error;
    use crate::types::SegmentKey;

    /// `append_at` past the count.
    pub fn gap(segment: &SegmentKey, first: u64, count: u64) -> Error {
        Error::BadRequest(format!(
            "segment {segment} holds {count} entries: cannot store entries from index {first} (entries {count}..{first} are missing); send them first"
        ))
    }

    /// `seal_at` past what the store holds.
    pub fn missing(segment: &SegmentKey, held: u64, count: u64) -> Error {
        Error::BadRequest(format!(
            "cannot seal segment {segment} at {count} entries: it holds {held}, missing entries {held}..{count}: copy them first"
        ))
    }

    /// `seal_at` of a segment sealed at another count.
    pub fn sealed_elsewhere(segment: &SegmentKey, sealed: u64, count: u64) -> Error {
        Error::BadRequest(format!(
            "cannot seal segment {segment} at {count} entries: it is sealed at {sealed} already, and a seal is final"
        ))
    }
}
