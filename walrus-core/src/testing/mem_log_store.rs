//! [`MemLogStore`]: a [`LogStore`] in memory, honouring the whole contract.
//!
//! Appends are "durable" the moment they are in the map, so contract points
//! 1 (durable before return) and 3 (visible when durable) hold trivially.
//! With [`MemLogStore::relax_syncs`] it behaves like a WAL under
//! `fsync=interval/never` instead: appends are acknowledged before they
//! are synced, only synced entries are counted and served (a read at
//! unsynced ones syncs them), and [`MemLogStore::power_cut`] drops what was
//! not synced: a power-loss model for the node's tests.
//! A test can make appends fail ([`MemLogStore::fail_appends`]) to check
//! that errors lose nothing, and can look at every append with the instant
//! it happened ([`MemLogStore::append_history`]), and can make a segment's
//! sync fail for good ([`MemLogStore::fail_sync`], contract 9), or find
//! a segment damaged as recovery would ([`MemLogStore::quarantine`],
//! contract 8) and repaired later ([`MemLogStore::repair`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::locks::MutexExt;
use crate::log_store::{
    replica_errors, Appended, LogStore, SegmentInfo, SegmentLimit, StorageHealth,
};
use crate::types::SegmentKey;

#[derive(Default)]
struct Segment {
    entries: Vec<Bytes>,
    /// Entries `0..synced` are durable (all of them unless relaxed).
    synced: usize,
    sealed: bool,
    /// A sync of it failed: appends are refused for good with this text.
    failed: Option<String>,
    /// Quarantined: entries from this index on are unreadable, with this
    /// text (file and byte); appends and seal are refused.
    damage: Option<(usize, String)>,
}

#[derive(Default)]
struct Inner {
    segments: BTreeMap<SegmentKey, Segment>,
    fail_appends: Option<String>,
    append_delay: Option<std::time::Duration>,
    history: Vec<(Instant, SegmentKey, u64)>,
    failed_syncs: u64,
    /// Appends are acknowledged before they are synced.
    relaxed: bool,
}

/// A [`LogStore`] held in memory. Cheap to create; one per simulated node.
#[derive(Default)]
pub struct MemLogStore {
    inner: Mutex<Inner>,
}

impl MemLogStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// While `Some(reason)`, every append fails with `Error::Storage(reason)`
    /// and writes nothing (a full disk, say). `None` heals it.
    pub fn fail_appends(&self, reason: Option<&str>) {
        self.lock().fail_appends = reason.map(str::to_owned);
    }

    /// While `Some(d)`, every append takes `d` before it stores its entries
    /// (a slow disk: a stalled fsync). `None` makes appends instant again.
    pub fn delay_appends(&self, delay: Option<std::time::Duration>) {
        self.lock().append_delay = delay;
    }

    /// `true`: acknowledge appends before syncing them, like a WAL under
    /// `fsync=interval/never` (see the module comment). `false` syncs
    /// everything now and every append from now on.
    pub fn relax_syncs(&self, relaxed: bool) {
        let mut inner = self.lock();
        inner.relaxed = relaxed;
        if !relaxed {
            for seg in inner.segments.values_mut() {
                seg.synced = seg.entries.len();
            }
        }
    }

    /// A power cut: every entry not synced yet is gone.
    pub fn power_cut(&self) {
        for seg in self.lock().segments.values_mut() {
            let synced = seg.synced;
            seg.entries.truncate(synced);
        }
    }

    /// The entries a [`power_cut`](Self::power_cut) would drop now (appended,
    /// not synced yet), per segment. Reading them does not sync them.
    pub fn unsynced(&self) -> Vec<(SegmentKey, Vec<Bytes>)> {
        self.lock()
            .segments
            .iter()
            .filter(|(_, s)| s.synced < s.entries.len())
            .map(|(k, s)| (k.clone(), s.entries[s.synced..].to_vec()))
            .collect()
    }

    /// As if a sync of `segment` failed (EIO): from now on every append to
    /// it fails with `Error::Storage` and [`LogStore::health`] reports it;
    /// what it holds stays readable and sealable.
    pub fn fail_sync(&self, segment: &SegmentKey) {
        let mut inner = self.lock();
        inner.failed_syncs += 1;
        let seg = inner.segments.entry(segment.clone()).or_default();
        // What the failed sync covered is never served or counted.
        let synced = seg.synced;
        seg.entries.truncate(synced);
        seg.failed = Some(format!(
            "segment {segment} takes no more appends: a sync of its files failed (simulated)"
        ));
    }

    /// As if recovery found `segment` damaged at entry `at` (contract 8):
    /// entries before it are served, reads from it on fail with
    /// `Error::Corrupt(why)`, appends and seal are refused, and
    /// [`LogStore::health`] lists it. The entries past the damage are kept,
    /// hidden, for [`MemLogStore::repair`].
    pub fn quarantine(&self, segment: &SegmentKey, at: u64, why: &str) {
        let mut inner = self.lock();
        let seg = inner.segments.entry(segment.clone()).or_default();
        let at = usize::try_from(at).unwrap_or(usize::MAX).min(seg.synced);
        seg.damage = Some((at, why.to_owned()));
    }

    /// As if an operator restored the damaged file of `segment` and the
    /// store reopened it: every entry it held is served again.
    pub fn repair(&self, segment: &SegmentKey) {
        if let Some(seg) = self.lock().segments.get_mut(segment) {
            seg.damage = None;
        }
    }

    /// Every successful append so far: when it happened (tokio's clock),
    /// the segment, and the index of its first entry.
    pub fn append_history(&self) -> Vec<(Instant, SegmentKey, u64)> {
        self.lock().history.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock_or_recover()
    }

    /// What every append meets first: the slow disk, then the full one.
    async fn admit(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        let delay = self.lock().append_delay;
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let inner = self.lock();
        match &inner.fail_appends {
            Some(reason) => Err(Error::Storage(reason.clone())),
            None => Ok(inner),
        }
    }
}

impl Inner {
    /// Appends `entries` to the (existing) `segment`, synced unless
    /// relaxed, and records the append; returns the count after it.
    fn store(&mut self, segment: &SegmentKey, entries: &[Bytes]) -> u64 {
        let relaxed = self.relaxed;
        let seg = self
            .segments
            .get_mut(segment)
            .expect("created by the caller");
        let first = seg.entries.len() as u64;
        seg.entries.extend(entries.iter().cloned());
        if !relaxed {
            seg.synced = seg.entries.len();
        }
        let count = seg.entries.len() as u64;
        self.history.push((Instant::now(), segment.clone(), first));
        count
    }
}

impl Segment {
    /// Refuses appends to a segment whose sync failed or that is damaged.
    fn writable(&self, segment: &SegmentKey) -> Result<()> {
        if let Some(why) = &self.failed {
            return Err(Error::Storage(why.clone()));
        }
        match &self.damage {
            Some((_, why)) => Err(Error::Corrupt(format!(
                "segment {segment} is quarantined and takes no appends: {why}"
            ))),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl LogStore for MemLogStore {
    async fn append_within(
        &self,
        segment: &SegmentKey,
        entries: &[Bytes],
        limit: SegmentLimit,
    ) -> Result<Appended> {
        let mut inner = self.admit().await?;
        let seg = inner.segments.entry(segment.clone()).or_default();
        let count = seg.entries.len() as u64;
        let bytes = |e: &[Bytes]| e.iter().map(|b| b.len() as u64).sum::<u64>();
        let full = count > 0
            && (count + entries.len() as u64 > limit.entries
                || (limit.bytes < u64::MAX
                    && bytes(&seg.entries).saturating_add(bytes(entries)) > limit.bytes));
        if seg.sealed || full {
            return Err(Error::SegmentSealed(segment.clone()));
        }
        seg.writable(segment)?;
        let count_after = inner.store(segment, entries);
        Ok(Appended {
            first_index: count,
            count: count_after,
        })
    }

    async fn read(
        &self,
        segment: &SegmentKey,
        from: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>> {
        let mut inner = self.lock();
        let Some(seg) = inner.segments.get_mut(segment) else {
            return Ok(Vec::new());
        };
        let start = usize::try_from(from).unwrap_or(usize::MAX);
        if start >= seg.synced && start < seg.entries.len() {
            // Contract 3: a read at unsynced entries syncs them.
            seg.synced = seg.entries.len();
        }
        let mut end = seg.synced;
        if let Some((at, why)) = &seg.damage {
            if start >= *at {
                return Err(Error::Corrupt(why.clone()));
            }
            end = end.min(*at);
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for e in seg.entries[..end].iter().skip(start).take(max_entries) {
            if !out.is_empty() && bytes + e.len() > max_bytes {
                break;
            }
            bytes += e.len();
            out.push(e.clone());
        }
        Ok(out)
    }

    async fn info(&self, segment: &SegmentKey) -> Result<Option<SegmentInfo>> {
        Ok(self.lock().segments.get(segment).map(|s| SegmentInfo {
            count: s.damage.as_ref().map_or(s.synced, |(at, _)| *at) as u64,
            sealed: s.sealed,
        }))
    }

    async fn seal(&self, segment: &SegmentKey) -> Result<u64> {
        let mut inner = self.lock();
        let seg = inner.segments.entry(segment.clone()).or_default();
        if let Some((_, why)) = seg.damage.as_ref().filter(|_| !seg.sealed) {
            return Err(Error::Corrupt(format!(
                "cannot seal a quarantined segment (its count past the damage is unknown): {why}"
            )));
        }
        if !seg.sealed {
            seg.synced = seg.entries.len();
        }
        seg.sealed = true;
        Ok(seg.synced as u64)
    }

    async fn append_at(
        &self,
        segment: &SegmentKey,
        first: u64,
        entries: &[Bytes],
    ) -> Result<Appended> {
        let mut inner = self.admit().await?;
        let end = first.saturating_add(entries.len() as u64);
        let (count, sealed) = inner
            .segments
            .get(segment)
            .map_or((0, false), |s| (s.entries.len() as u64, s.sealed));
        if sealed {
            return if end <= count {
                Ok(Appended {
                    first_index: first,
                    count,
                })
            } else {
                Err(Error::SegmentSealed(segment.clone()))
            };
        }
        if first > count {
            return Err(replica_errors::gap(segment, first, count));
        }
        // Checked before the segment is created: a refused append leaves
        // an unknown segment unknown.
        let seg = inner.segments.entry(segment.clone()).or_default();
        seg.writable(segment)?;
        // The fake checks what the WAL takes on trust (one writer per
        // index), so that a replication bug shows in core's tests.
        for (i, (held, sent)) in seg.entries[first as usize..]
            .iter()
            .zip(entries)
            .enumerate()
        {
            if held != sent {
                return Err(Error::Internal(format!(
                    "append_at of segment {segment}: entry {} differs from the one held at that index; an index has one writer, its leader, so two leaders wrote this segment",
                    first + i as u64
                )));
            }
        }
        let new = entries.get((count - first) as usize..).unwrap_or_default();
        let count = if new.is_empty() {
            count
        } else {
            inner.store(segment, new)
        };
        Ok(Appended {
            first_index: first,
            count,
        })
    }

    async fn seal_at(&self, segment: &SegmentKey, count: u64) -> Result<u64> {
        let mut inner = self.lock();
        let Some(seg) = inner.segments.get_mut(segment) else {
            if count > 0 {
                return Err(replica_errors::missing(segment, 0, count));
            }
            let seg = inner.segments.entry(segment.clone()).or_default();
            seg.sealed = true;
            return Ok(0);
        };
        if let Some((_, why)) = seg.damage.as_ref().filter(|_| !seg.sealed) {
            return Err(Error::Corrupt(format!(
                "cannot seal a quarantined segment (its count past the damage is unknown): {why}"
            )));
        }
        if seg.sealed {
            let sealed = seg.synced as u64;
            return if sealed == count {
                Ok(count)
            } else {
                Err(replica_errors::sealed_elsewhere(segment, sealed, count))
            };
        }
        let held = seg.entries.len() as u64;
        if held < count {
            return Err(replica_errors::missing(segment, held, count));
        }
        seg.entries.truncate(count as usize);
        seg.synced = seg.entries.len();
        seg.sealed = true;
        Ok(count)
    }

    async fn delete(&self, segment: &SegmentKey) -> Result<()> {
        let mut inner = self.lock();
        match inner.segments.get(segment) {
            None => Ok(()),
            Some(seg) if !seg.sealed => Err(Error::BadRequest(format!(
                "segment {segment} is not sealed: only a sealed segment can be deleted"
            ))),
            Some(_) => {
                inner.segments.remove(segment);
                Ok(())
            }
        }
    }

    async fn sync(&self) -> Result<()> {
        for seg in self.lock().segments.values_mut() {
            seg.synced = seg.entries.len();
        }
        Ok(())
    }

    fn health(&self) -> StorageHealth {
        let inner = self.lock();
        StorageHealth {
            failed_syncs: inner.failed_syncs,
            failed_segments: inner
                .segments
                .iter()
                .filter(|(_, s)| s.failed.is_some())
                .map(|(k, _)| k.clone())
                .collect(),
            quarantined_segments: inner
                .segments
                .iter()
                .filter(|(_, s)| s.damage.is_some())
                .map(|(k, _)| k.clone())
                .collect(),
        }
    }

    async fn segments(&self) -> Result<Vec<(SegmentKey, SegmentInfo)>> {
        Ok(self
            .lock()
            .segments
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    SegmentInfo {
                        count: s.synced as u64,
                        sealed: s.sealed,
                    },
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::TopicName;

    fn key(s: u64) -> SegmentKey {
        SegmentKey::new(TopicName::new("t").unwrap(), s)
    }

    #[tokio::test]
    async fn given_a_full_segment_when_appending_past_the_limit_should_refuse_and_write_nothing() {
        let store = MemLogStore::new();
        let e = [Bytes::from_static(b"a"), Bytes::from_static(b"b")];
        assert_eq!(store.append(&key(1), &e, 3).await.unwrap().count, 2);
        assert!(matches!(
            store.append(&key(1), &e, 3).await,
            Err(Error::SegmentSealed(_))
        ));
        assert_eq!(store.info(&key(1)).await.unwrap().unwrap().count, 2);
    }

    #[tokio::test]
    async fn given_a_sealed_segment_when_appending_should_refuse_and_keep_the_count() {
        let store = MemLogStore::new();
        store
            .append(&key(1), &[Bytes::from_static(b"a")], u64::MAX)
            .await
            .unwrap();
        assert_eq!(store.seal(&key(1)).await.unwrap(), 1);
        assert_eq!(store.seal(&key(1)).await.unwrap(), 1);
        assert!(store
            .append(&key(1), &[Bytes::from_static(b"b")], u64::MAX)
            .await
            .is_err());
        assert_eq!(store.seal(&key(7)).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn given_relaxed_syncs_when_listing_unsynced_entries_should_name_what_a_power_cut_drops()
    {
        let store = MemLogStore::new();
        store.relax_syncs(true);
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        store
            .append(&key(1), std::slice::from_ref(&a), u64::MAX)
            .await
            .unwrap();
        store.sync().await.unwrap();
        store
            .append(&key(1), std::slice::from_ref(&b), u64::MAX)
            .await
            .unwrap();
        assert_eq!(store.unsynced(), vec![(key(1), vec![b])]);
        assert_eq!(store.unsynced().len(), 1, "listing does not sync");
        store.power_cut();
        assert!(store.unsynced().is_empty());
        assert_eq!(
            store.read(&key(1), 0, 10, usize::MAX).await.unwrap(),
            vec![a]
        );
    }

    #[tokio::test]
    async fn given_a_different_entry_at_a_held_index_when_appending_at_should_report_two_writers() {
        let store = MemLogStore::new();
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        store
            .append_at(&key(1), 0, std::slice::from_ref(&a))
            .await
            .unwrap();
        match store.append_at(&key(1), 0, &[b, a.clone()]).await {
            Err(Error::Internal(why)) => assert!(why.contains("entry 0"), "{why}"),
            other => panic!("a second writer of index 0 should be reported, got {other:?}"),
        }
        assert_eq!(
            store.read(&key(1), 0, 10, usize::MAX).await.unwrap(),
            vec![a],
            "nothing written"
        );
    }

    #[tokio::test]
    async fn given_failing_appends_when_healed_should_keep_earlier_entries_and_accept_again() {
        let store = MemLogStore::new();
        store
            .append(&key(1), &[Bytes::from_static(b"a")], u64::MAX)
            .await
            .unwrap();
        store.fail_appends(Some("disk full"));
        assert!(store
            .append(&key(1), &[Bytes::from_static(b"b")], u64::MAX)
            .await
            .is_err());
        store.fail_appends(None);
        store
            .append(&key(1), &[Bytes::from_static(b"c")], u64::MAX)
            .await
            .unwrap();
        let all = store.read(&key(1), 0, 10, usize::MAX).await.unwrap();
        assert_eq!(
            all,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"c")]
        );
        let one = store.read(&key(1), 0, 10, 0).await.unwrap();
        assert_eq!(one.len(), 1, "at least one entry even over max_bytes");
    }
}
