//! The memmap2 write-ahead log: [`WalStore`], a [`LogStore`] that never
//! loses an acknowledged entry.
//!
//! # On disk
//!
//! ```text
//! <dir>/<topic>/<segment:020>.<part:06>.wal   fixed-size (sparse) mapped files
//! <dir>/<topic>/<segment:020>.sealed          final count of a sealed segment
//! <dir>/<topic>/<segment:020>.deleting        a sealed segment being deleted
//! <dir>/spare-<n>.zeroed                      zero-filled spare files (opt-in)
//! ```
//!
//! A segment is a sequence of records spread over one or more fixed-size
//! files (parts); see `segment_file/format.rs` for the record format and header.
//! Files are created atomically (temporary name, full length but sparse,
//! first step of blocks reserved, header synced, rename, directory synced)
//! and grow on disk in steps of 1 MiB reserved ahead of the writer
//! (`reserve.rs`: `fallocate`, or zeros written where the file system has
//! none), so an idle topic costs about 1 MiB and a full disk is an error at
//! reservation, never a SIGBUS inside a mapped write. Reserving and creating
//! files is done ahead by the room thread (`room.rs`), off the append path;
//! an append that finds no room makes it on a blocking thread, and on a
//! full disk fails with "disk full" until space is freed, then works again.
//!
//! # Recovery
//!
//! On open every open segment is scanned with `pread` (never through the
//! map: a block the disk cannot read is an error, not a SIGBUS that kills
//! the node): the exact count is whatever valid records are found, a torn
//! tail (zeros, bad length, bad checksum after the last synced point) is
//! cut and zeroed. Later files holding only unsynced records are part of
//! the torn tail (the kernel may write them before their predecessor's
//! tail). Anything else (a bad record before the last synced point or
//! followed by a later file that was synced, an unreadable block, a bad
//! header, a missing file, a damaged seal file) quarantines that segment
//! only: its entries up to the damage are served, reads past it get
//! [`Error::Corrupt`] naming the file and byte, it takes no appends and is
//! never sealed (its true count is unknown), and its files are left as
//! found for an operator to restore; every other segment opens normally.
//! Sealed segments take their count from the seal file and are verified
//! (the same way) when first read. Records past that count (a tail cut by
//! `seal_at`, or left by a failed sync) stay in the files and are never
//! served: the seal file is the cut, written (temporary name, sync,
//! rename, directory sync) only after everything below it is durable, so
//! a crash leaves either the whole open segment or the cut one. [`LogStore::health`] lists quarantined
//! segments.
//!
//! # Deleting (retention)
//!
//! [`LogStore::delete`] of a sealed segment first renames its seal file to
//! `.deleting` (and syncs the directory): from then on the segment is
//! gone, whatever happens. Then its part files are removed, the directory
//! synced, the marker removed and the directory synced again. A crash in
//! between leaves a marker: the next open removes what is left of that
//! segment before anything else, so it never comes back in part.
//!
//! # Durability
//!
//! [`FsyncPolicy::Always`] (default): an append returns once msync covered
//! it; concurrent appends share one msync ([`group_commit`]). After each
//! flush the syncer writes zeros a step ahead of the appenders
//! ([`WalConfig::prepare_ahead`]), so that their syncs overwrite written
//! blocks instead of converting fallocated ones. `Interval`
//! and `Never` acknowledge once written to the map (the page cache survives
//! a process crash, not a machine crash). [`LogStore::sync`] flushes
//! everything whatever the policy.
//!
//! # Visibility
//!
//! Whatever the policy, an entry becomes readable (and counted by `info`)
//! only once a flush has covered it, so nothing derived from reads (the
//! GET cursor Raft saves) can point past what a power cut leaves. A read
//! that finds written but unflushed entries at its start asks the syncer
//! for a flush and waits for it: under `interval`/`never` a reader at the
//! tail costs one sync per read that catches up, instead of waiting for
//! the timer (or forever).
//!
//! # Failed syncs
//!
//! The first failed flush of a segment marks it failed for good (the
//! kernel may have dropped the pages and a retry would report success):
//! its waiting appenders get the error, later appends are refused, the
//! unsynced tail is rolled back, and its count and seal stay at the last
//! durable entry. [`LogStore::health`] reports it.

mod config;
mod group_commit;
mod health;
mod index;
mod open;
mod read_cache;
mod reserve;
mod room;
mod segment;
mod segment_file;
mod spare;
mod stats;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use walrus_core::{
    Appended, Error, LogStore, Result, SegmentInfo, SegmentKey, SegmentLimit, StorageHealth,
};

use crate::durable_dir::create_dir_durable;
use group_commit::Syncer;
use read_cache::ReadCache;
use reserve::Reserver;
use room::RoomMaker;
use segment::{AppendStep, SealStep, Segment, SegmentParams};
use segment_file::MIN_FILE_LEN;
use spare::SparePool;

pub use config::{FsyncPolicy, WalConfig};
use open::{finish_delete, is_part_of, lock_dir, mark_deleting, recover_all};
pub use stats::{WalStats, WalStatsSnapshot};
use walrus_core::locks::RwLockExt;

/// The memmap2 write-ahead log. Cheap to clone (shared state).
#[derive(Clone)]
pub struct WalStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    config: WalConfig,
    params: SegmentParams,
    segments: RwLock<HashMap<SegmentKey, Arc<Segment>>>,
    cache: Arc<ReadCache>,
    /// Held (flock) for the store's life: one store per directory.
    _lock: std::fs::File,
    /// Reserves and creates files ahead of the appenders.
    room: RoomMaker,
    /// Appends that found no room made ahead and waited for it.
    room_waits: AtomicU64,
    /// The syncer's flush latency and group sizes.
    stats: Arc<WalStats>,
    // Declared last: dropped after everything above (it joins its thread).
    syncer: Syncer,
}

impl Drop for Inner {
    /// A graceful close: the syncer's last round, then the final
    /// checkpoints (see `segment::CHECKPOINT_EVERY`).
    fn drop(&mut self) {
        let segments = self.segments.read_or_recover().values().cloned().collect();
        self.syncer.close(segments);
    }
}

impl fmt::Debug for WalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalStore")
            .field("dir", &self.inner.dir)
            .field("config", &self.inner.config)
            .finish()
    }
}

impl WalStore {
    /// Opens (creating if needed) the WAL in `dir`, recovering every
    /// segment found there. Give it a directory of its own (e.g.
    /// `<data-dir>/node_<id>/wal`): every subdirectory is taken for a topic.
    pub fn open(dir: impl AsRef<Path>, config: WalConfig) -> Result<WalStore> {
        let dir = dir.as_ref().to_path_buf();
        if !(MIN_FILE_LEN..=u32::MAX as u64).contains(&config.segment_file_bytes) {
            return Err(Error::BadRequest(format!(
                "segment_file_bytes {} is out of range: use {MIN_FILE_LEN} ..= {}",
                config.segment_file_bytes,
                u32::MAX
            )));
        }
        create_dir_durable(&dir)?;
        let lock = lock_dir(&dir)?;
        let reserver = Reserver::new(&dir, config.inject_fallocate_unsupported);
        reserver.probe();
        let spares = SparePool::start(&dir, config.segment_file_bytes, config.spare_files)
            .map_err(|e| {
                Error::Storage(format!(
                    "cannot start the WAL's spare-file pool in {}: {e}",
                    dir.display()
                ))
            })?;
        let params = SegmentParams {
            file_len: config.segment_file_bytes,
            group_commit: config.fsync == FsyncPolicy::Always,
            spares: Arc::new(spares),
            prepare_ahead: config.prepare_ahead && config.fsync == FsyncPolicy::Always,
            prepared_bytes: Arc::new(AtomicU64::new(0)),
            health: Arc::new(health::Health::default()),
            reserver: Arc::new(reserver),
        };
        let segments = recover_all(&dir, &params)?;
        let interval = match config.fsync {
            FsyncPolicy::Interval(d) => Some(d),
            _ => None,
        };
        let stats = Arc::new(WalStats::default());
        let syncer = Syncer::start(interval, stats.clone())
            .map_err(|e| Error::Storage(format!("cannot start the WAL sync thread: {e}")))?;
        let room = RoomMaker::start()
            .map_err(|e| Error::Storage(format!("cannot start the WAL room thread: {e}")))?;
        Ok(WalStore {
            inner: Arc::new(Inner {
                cache: Arc::new(ReadCache::new(config.max_read_maps)),
                dir,
                config,
                params,
                segments: RwLock::new(segments),
                _lock: lock,
                room,
                room_waits: AtomicU64::new(0),
                stats,
                syncer,
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn config(&self) -> &WalConfig {
        &self.inner.config
    }

    /// Read maps currently cached (for tests of the bound).
    pub fn cached_read_maps(&self) -> usize {
        self.inner.cache.len()
    }

    /// Zero-filled spare files ready now (for tests and the benchmark).
    pub fn spare_files(&self) -> usize {
        self.inner.params.spares.ready()
    }

    /// Bytes of zeros written ahead of the appenders so far
    /// ([`WalConfig::prepare_ahead`]).
    pub fn prepared_bytes(&self) -> u64 {
        self.inner.params.prepared_bytes.load(Ordering::Relaxed)
    }

    /// Where the durable data of `segment` ends, as (part, byte offset in
    /// that part's file): everything before it has been synced, nothing
    /// after it is promised to survive a power cut. `None` for an unknown
    /// segment or one never synced. For power-loss tests and diagnostics.
    pub fn durable_end(&self, segment: &SegmentKey) -> Option<(u32, u64)> {
        self.get(segment).and_then(|s| s.durable_end())
    }

    /// Whether this store reserves space by writing zeros (its file system
    /// has no `fallocate`).
    pub fn reserves_with_zeros(&self) -> bool {
        self.inner.params.reserver.writes_zeros()
    }

    /// Makes the next `n` flushes fail as an I/O error would (a test seam
    /// for failed syncs; costs one atomic load per flush, none per append).
    #[doc(hidden)]
    pub fn inject_sync_failures(&self, n: u64) {
        self.inner.params.health.inject(n);
    }

    /// Appends so far that found no room reserved or file created ahead and
    /// made it themselves (on a blocking thread): the room thread fell
    /// behind, or the disk was full. For the benchmark.
    pub fn room_waits(&self) -> u64 {
        self.inner.room_waits.load(Ordering::Relaxed)
    }

    /// Flushes (msync) done by the syncer so far, one per segment per group
    /// commit: fewer than appends when appends share them.
    pub fn flush_count(&self) -> u64 {
        self.inner.stats.flushes()
    }

    /// The syncer's figures (flush latency, group commit sizes), live: read
    /// [`WalStats::snapshot`] whenever a scrape asks. Holds no lock.
    pub fn stats(&self) -> Arc<WalStats> {
        self.inner.stats.clone()
    }

    fn get(&self, key: &SegmentKey) -> Option<Arc<Segment>> {
        self.inner.segments.read_or_recover().get(key).cloned()
    }

    fn get_or_create(&self, key: &SegmentKey) -> Arc<Segment> {
        if let Some(s) = self.get(key) {
            return s;
        }
        let mut map = self.inner.segments.write_or_recover();
        map.entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Segment::new_empty(
                    key.clone(),
                    self.inner.dir.join(key.topic.as_str()),
                    self.inner.params.clone(),
                ))
            })
            .clone()
    }

    /// Appends with `step` (`Segment::append` or `Segment::append_at` of
    /// `entries`) and waits as the fsync policy says.
    async fn append_with(
        &self,
        segment: &SegmentKey,
        entries: &[Bytes],
        step: impl Fn(&Segment) -> Result<AppendStep> + Send + Sync,
        written: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Appended> {
        let seg = self.get_or_create(segment);
        let (appended, rx) = self.append_with_room(&seg, entries, step).await?;
        if !entries.is_empty() && appended.count > appended.first_index {
            // Numbered and in the map: whoever waits for them may start
            // now, while the sync runs.
            written(appended.first_index);
        }
        match (rx, self.inner.config.fsync) {
            (Some(rx), _) => {
                self.inner.syncer.enqueue(&seg, true);
                Self::wait(rx).await?;
            }
            (None, FsyncPolicy::Interval(_)) if !entries.is_empty() => {
                self.inner.syncer.enqueue(&seg, false)
            }
            _ => {}
        }
        Ok(appended)
    }

    /// Appends, making room first when the segment has none: on a blocking
    /// thread, so that neither this async worker nor the segment's lock
    /// waits for the disk. Normally the room thread made it already.
    async fn append_with_room(
        &self,
        seg: &Arc<Segment>,
        entries: &[Bytes],
        step: impl Fn(&Segment) -> Result<AppendStep> + Send + Sync,
    ) -> Result<(Appended, Option<tokio::sync::oneshot::Receiver<Result<()>>>)> {
        // Each round makes room for this append; only other appenders
        // taking it first can send it round again.
        for _ in 0..64 {
            match step(seg)? {
                AppendStep::Done {
                    appended,
                    durable,
                    wants_room,
                } => {
                    if wants_room {
                        self.inner.room.enqueue(seg);
                    }
                    return Ok((appended, durable));
                }
                AppendStep::NeedRoom => {
                    self.inner.room_waits.fetch_add(1, Ordering::Relaxed);
                    let s = seg.clone();
                    let sizes: Vec<usize> = entries.iter().map(Bytes::len).collect();
                    tokio::task::spawn_blocking(move || s.make_room(Some(&sizes)))
                        .await
                        .map_err(|e| Error::Internal(format!("WAL room task failed: {e}")))??;
                }
            }
        }
        Err(Error::Unavailable(format!(
            "segment {} is contended: its room was taken by other appenders 64 times in a row; retry",
            seg.key
        )))
    }

    /// `seal` (`at: None`) and `seal_at`: refuse appends, make everything
    /// written durable, then write the seal file with the final count (one
    /// rename: the seal, and a `seal_at` cut, are whole or absent after a
    /// crash).
    async fn seal_to(&self, segment: &SegmentKey, at: Option<u64>) -> Result<u64> {
        let seg = self.get_or_create(segment);
        let count = match seg.begin_seal(at) {
            SealStep::Done(n) => return Ok(n),
            SealStep::Refused(e) => return Err(e),
            SealStep::SyncTo(n) => n,
        };
        if let Some(rx) = seg.sync_waiter() {
            self.inner.syncer.enqueue(&seg, true);
            if let Err(e) = Self::wait(rx).await {
                seg.abort_seal();
                return Err(e);
            }
        }
        let s = seg.clone();
        let result = tokio::task::spawn_blocking(move || s.finish_seal(count))
            .await
            .map_err(|e| Error::Internal(format!("WAL seal task failed: {e}")))
            .and_then(|r| r);
        if result.is_err() {
            seg.abort_seal();
        }
        result.map(|()| count)
    }

    async fn wait(rx: tokio::sync::oneshot::Receiver<Result<()>>) -> Result<()> {
        rx.await.map_err(|_| Error::ShuttingDown)?
    }
}

#[async_trait]
impl LogStore for WalStore {
    async fn append_within(
        &self,
        segment: &SegmentKey,
        entries: &[Bytes],
        limit: SegmentLimit,
    ) -> Result<Appended> {
        self.append_with(segment, entries, |seg| seg.append(entries, limit), &|_| {})
            .await
    }

    async fn append_within_then(
        &self,
        segment: &SegmentKey,
        entries: &[Bytes],
        limit: SegmentLimit,
        written: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Appended> {
        self.append_with(segment, entries, |seg| seg.append(entries, limit), written)
            .await
    }

    async fn append_at(
        &self,
        segment: &SegmentKey,
        first: u64,
        entries: &[Bytes],
    ) -> Result<Appended> {
        self.append_with(
            segment,
            entries,
            |seg| seg.append_at(first, entries),
            &|_| {},
        )
        .await
    }

    async fn read(
        &self,
        segment: &SegmentKey,
        from: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>> {
        let Some(seg) = self.get(segment) else {
            return Ok(Vec::new());
        };
        if max_entries > 0 && seg.unsynced_at(from) {
            // Entries are there but not durable (interval/never): serving
            // them now could let a cursor pass data a power cut takes back;
            // answering "nothing" would starve the reader for an interval.
            // So the reader pays for one flush (shared with any appenders).
            // With group commit the appenders of those entries have woken
            // the syncer already: the reader only joins their flush, and
            // does not count as an arrival of the group.
            if let Some(rx) = seg.sync_waiter() {
                self.inner
                    .syncer
                    .enqueue(&seg, !self.inner.params.group_commit);
                Self::wait(rx).await?;
            }
        }
        let cache = self.inner.cache.clone();
        // Page faults on a cold map are disk reads: keep them off the
        // async threads.
        tokio::task::spawn_blocking(move || seg.read(from, max_entries, max_bytes, &cache))
            .await
            .map_err(|e| Error::Internal(format!("WAL read task failed: {e}")))?
    }

    async fn info(&self, segment: &SegmentKey) -> Result<Option<SegmentInfo>> {
        Ok(self.get(segment).and_then(|s| s.info()))
    }

    async fn seal(&self, segment: &SegmentKey) -> Result<u64> {
        self.seal_to(segment, None).await
    }

    async fn seal_at(&self, segment: &SegmentKey, count: u64) -> Result<u64> {
        self.seal_to(segment, Some(count)).await
    }

    async fn delete(&self, segment: &SegmentKey) -> Result<()> {
        let Some(seg) = self.get(segment) else {
            return Ok(());
        };
        if !seg.info().is_some_and(|i| i.sealed) {
            return Err(Error::BadRequest(format!(
                "segment {segment} is not sealed: only a sealed segment can be deleted"
            )));
        }
        let dir = self.inner.dir.join(segment.topic.as_str());
        let id = segment.segment;
        let marked = {
            let d = dir.clone();
            tokio::task::spawn_blocking(move || mark_deleting(&d, id))
                .await
                .map_err(|e| Error::Internal(format!("WAL delete task failed: {e}")))?
        };
        marked?;
        // Marked: the segment is gone for readers now, and after a crash.
        self.inner.segments.write_or_recover().remove(segment);
        self.inner.cache.forget(&dir, |name| is_part_of(name, id));
        tokio::task::spawn_blocking(move || finish_delete(&dir, id))
            .await
            .map_err(|e| Error::Internal(format!("WAL delete task failed: {e}")))?
    }

    async fn sync(&self) -> Result<()> {
        let segments: Vec<_> = self
            .inner
            .segments
            .read_or_recover()
            .values()
            .cloned()
            .collect();
        let mut waits = Vec::new();
        for seg in segments {
            if let Some(rx) = seg.sync_waiter() {
                self.inner.syncer.enqueue(&seg, true);
                waits.push(rx);
            }
        }
        for rx in waits {
            Self::wait(rx).await?;
        }
        Ok(())
    }

    fn health(&self) -> StorageHealth {
        let map = self.inner.segments.read_or_recover();
        let mut failed_segments: Vec<SegmentKey> = map
            .iter()
            .filter(|(_, s)| s.failure().is_some())
            .map(|(k, _)| k.clone())
            .collect();
        failed_segments.sort();
        let mut quarantined_segments: Vec<SegmentKey> = map
            .iter()
            .filter(|(_, s)| s.damage().is_some())
            .map(|(k, _)| k.clone())
            .collect();
        quarantined_segments.sort();
        StorageHealth {
            failed_syncs: self.inner.params.health.failed_syncs(),
            failed_segments,
            quarantined_segments,
        }
    }

    async fn payload_bytes(&self, segment: &SegmentKey) -> Result<Option<u64>> {
        Ok(self
            .get(segment)
            .and_then(|s| s.info().map(|_| s.payload_bytes())))
    }

    async fn segments(&self) -> Result<Vec<(SegmentKey, SegmentInfo)>> {
        let map = self.inner.segments.read_or_recover();
        let mut out: Vec<_> = map
            .iter()
            .filter_map(|(k, s)| s.info().map(|i| (k.clone(), i)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable_dir;
    use walrus_core::TopicName;

    #[test]
    fn given_a_new_nested_wal_directory_when_opened_should_make_each_new_name_durable() {
        let tmp = tempfile::tempdir().unwrap();
        let wal = tmp.path().join("node_1").join("wal");
        let _store = WalStore::open(&wal, WalConfig::default()).unwrap();
        assert_eq!(
            durable_dir::record::count(tmp.path()),
            1,
            "node_1 in its parent"
        );
        assert_eq!(
            durable_dir::record::count(&tmp.path().join("node_1")),
            1,
            "wal in node_1"
        );
    }

    fn key(topic: &str) -> SegmentKey {
        SegmentKey::new(TopicName::new(topic).unwrap(), 1)
    }

    #[tokio::test]
    async fn given_a_segment_never_written_here_when_sealed_should_make_its_topic_directory_durable(
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let store = WalStore::open(tmp.path(), WalConfig::default()).unwrap();
        let before = durable_dir::record::count(tmp.path());
        assert_eq!(store.seal(&key("never")).await.unwrap(), 0);
        assert!(tmp.path().join("never").is_dir());
        assert!(
            durable_dir::record::count(tmp.path()) > before,
            "the topic directory's name must be synced in the WAL root before the seal is acknowledged"
        );
    }

    #[tokio::test]
    async fn given_a_seal_at_in_progress_when_another_seal_or_a_retransmit_comes_should_answer_from_its_count(
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let store = WalStore::open(tmp.path(), WalConfig::default()).unwrap();
        let seg = key("racing");
        let all: Vec<Bytes> = (0..5u8).map(|i| Bytes::from(vec![i; 3])).collect();
        store.append(&seg, &all, u64::MAX).await.unwrap();
        let s = store.get(&seg).unwrap();
        // As if a seal_at(3) had begun and waits for its sync.
        assert!(matches!(s.begin_seal(Some(3)), SealStep::SyncTo(3)));
        assert!(
            matches!(
                s.begin_seal(Some(4)),
                SealStep::Refused(Error::Unavailable(_))
            ),
            "two seals at different counts must not both write a seal file"
        );
        assert!(
            matches!(s.begin_seal(None), SealStep::SyncTo(3)),
            "a plain seal joins it"
        );
        assert_eq!(
            store
                .append_at(&seg, 1, &all[1..3])
                .await
                .unwrap()
                .first_index,
            1,
            "entries below the seal's count are held"
        );
        assert!(matches!(
            store.append_at(&seg, 2, &all[2..4]).await,
            Err(Error::SegmentSealed(_))
        ));
        s.finish_seal(3).unwrap();
        assert_eq!(store.seal_at(&seg, 3).await.unwrap(), 3);
        assert_eq!(store.append_at(&seg, 0, &all[0..3]).await.unwrap().count, 3);
    }

    #[tokio::test]
    async fn given_a_new_topic_when_first_appended_should_make_its_directory_durable_before_the_ack(
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let store = WalStore::open(tmp.path(), WalConfig::default()).unwrap();
        let before = durable_dir::record::count(tmp.path());
        store
            .append(&key("fresh"), &[Bytes::from_static(b"x")], u64::MAX)
            .await
            .unwrap();
        assert!(durable_dir::record::count(tmp.path()) > before);
    }
}
