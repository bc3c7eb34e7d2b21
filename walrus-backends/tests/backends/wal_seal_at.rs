//! `seal_at` on real files (LogStore contract 12): a tail cut by a seal at
//! a lower count never comes back, whether the store closes gracefully or
//! the process dies right after the cut (a copy of its files taken while
//! it is open: what a kill -9 leaves, page cache included), and a crash
//! before the cut is in place leaves the segment open and whole.

use std::path::Path;

use bytes::Bytes;
use proptest::prelude::*;
use walrus_backends::wal::{FsyncPolicy, WalConfig, WalStore};
use walrus_core::{Error, LogStore, SegmentInfo, SegmentKey, TopicName};

use crate::wal_common::read::read_all;

/// Small files, so that a segment (and its cut tail) spans several.
const FILE: u64 = 8192;

fn key(segment: u64) -> SegmentKey {
    SegmentKey::new(TopicName::new("cut").unwrap(), segment)
}

fn config(fsync: FsyncPolicy) -> WalConfig {
    WalConfig {
        fsync,
        segment_file_bytes: FILE,
        ..WalConfig::default()
    }
}

fn payload(i: usize, len: usize) -> Bytes {
    let mut v = format!("{i}:").into_bytes();
    v.resize(len.max(v.len()), b'a' + (i % 26) as u8);
    Bytes::from(v)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What a kill -9 leaves now: every file as the kernel holds it (the page
/// cache survives the process), copied to `to` while the store is open.
fn copy_as_killed(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_as_killed(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The segment holds exactly `held`, sealed: nothing past the cut is read,
/// counted, or taken again.
async fn assert_sealed_at(store: &WalStore, seg: &SegmentKey, held: &[Bytes]) {
    let n = held.len() as u64;
    assert_eq!(
        store.info(seg).await.unwrap(),
        Some(SegmentInfo {
            count: n,
            sealed: true
        })
    );
    assert_eq!(read_all(store, seg).await, held);
    assert!(store.read(seg, n, 10, usize::MAX).await.unwrap().is_empty());
    assert_eq!(store.seal_at(seg, n).await.unwrap(), n, "idempotent");
    assert!(matches!(
        store.seal_at(seg, n + 1).await,
        Err(Error::BadRequest(_))
    ));
    assert_eq!(
        store.append_at(seg, 0, held).await.unwrap().count,
        n,
        "a retransmit of held entries is Ok"
    );
    assert!(matches!(
        store.append_at(seg, n, &[payload(0, 1)]).await,
        Err(Error::SegmentSealed(_))
    ));
}

#[tokio::test]
async fn given_a_tail_cut_by_seal_at_when_killed_right_after_should_reopen_sealed_without_it() {
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
        let (live, killed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let seg = key(1);
        let all: Vec<Bytes> = (0..60).map(|i| payload(i, 300 + i * 7)).collect();
        let store = WalStore::open(live.path(), config(fsync)).unwrap();
        store.append_at(&seg, 0, &all).await.unwrap();
        // Entry 13 sits in the first file; the cut tail fills later ones.
        assert_eq!(store.seal_at(&seg, 13).await.unwrap(), 13);
        copy_as_killed(live.path(), killed.path());
        drop(store);
        for _ in 0..2 {
            let store = WalStore::open(killed.path(), config(fsync)).unwrap();
            assert_sealed_at(&store, &seg, &all[..13]).await;
        }
        let store = WalStore::open(live.path(), config(fsync)).unwrap();
        assert_sealed_at(&store, &seg, &all[..13]).await;
    }
}

#[tokio::test]
async fn given_a_crash_before_the_cut_is_in_place_when_reopened_should_keep_the_segment_open_and_whole(
) {
    let (live, killed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let seg = key(1);
    let all: Vec<Bytes> = (0..40).map(|i| payload(i, 200)).collect();
    let store = WalStore::open(live.path(), config(FsyncPolicy::Always)).unwrap();
    store.append(&seg, &all, u64::MAX).await.unwrap();
    copy_as_killed(live.path(), killed.path());
    drop(store);
    // The crash came after the new seal file was written under its
    // temporary name, before the rename that puts the cut in place.
    let mut seal = 7u64.to_le_bytes().to_vec();
    seal.extend(crc32c::crc32c(&seal).to_le_bytes());
    let tmp = killed
        .path()
        .join("cut")
        .join(format!(".{:020}.sealed.tmp", seg.segment));
    std::fs::write(&tmp, seal).unwrap();
    let store = WalStore::open(killed.path(), config(FsyncPolicy::Always)).unwrap();
    assert_eq!(
        store.info(&seg).await.unwrap(),
        Some(SegmentInfo {
            count: 40,
            sealed: false
        }),
        "an unfinished cut is no cut"
    );
    assert_eq!(read_all(&store, &seg).await, all);
    assert!(!tmp.exists(), "the unfinished seal file is removed at open");
    // The failover that asked for the cut retries it.
    assert_eq!(store.seal_at(&seg, 7).await.unwrap(), 7);
    drop(store);
    let store = WalStore::open(killed.path(), config(FsyncPolicy::Always)).unwrap();
    assert_sealed_at(&store, &seg, &all[..7]).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Any entries, any cut, any policy, killed or closed after the cut:
    /// reopened (twice), the segment is sealed with exactly the prefix.
    #[test]
    fn given_any_cut_when_the_store_comes_back_should_serve_exactly_the_prefix(
        sizes in prop::collection::vec(0..900usize, 0..50),
        cut_at in 0.0..=1.0f64,
        fsync in prop_oneof![Just(FsyncPolicy::Always), Just(FsyncPolicy::Never)],
        killed in any::<bool>(),
        batch in 1..8usize,
    ) {
        let all: Vec<Bytes> = sizes.iter().enumerate().map(|(i, &len)| payload(i, len)).collect();
        let cut = (all.len() as f64 * cut_at) as usize;
        let (live, copy) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let seg = key(3);
        runtime().block_on(async {
            let store = WalStore::open(live.path(), config(fsync)).unwrap();
            for first in (0..all.len()).step_by(batch) {
                let end = (first + batch).min(all.len());
                store.append_at(&seg, first as u64, &all[first..end]).await.unwrap();
            }
            assert_eq!(store.seal_at(&seg, cut as u64).await.unwrap(), cut as u64);
            if killed {
                copy_as_killed(live.path(), copy.path());
            }
        });
        let dir = if killed { copy.path() } else { live.path() };
        for _ in 0..2 {
            runtime().block_on(async {
                let store = WalStore::open(dir, config(fsync)).unwrap();
                assert_sealed_at(&store, &seg, &all[..cut]).await;
            });
        }
    }
}
