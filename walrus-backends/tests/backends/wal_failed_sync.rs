//! A failed sync is never forgotten: after a flush fails (EIO, after which
//! Linux marks the pages clean and a retried sync "succeeds"), the segment
//! refuses appends for good, waiting appenders get the error, and its count
//! and seal never include what was written after its last good sync. The
//! failure is injected with `WalStore::inject_sync_failures`.

use std::time::Duration;

use bytes::Bytes;
use walrus_backends::wal::{FsyncPolicy, WalConfig, WalStore};
use walrus_core::{Error, LogStore, SegmentKey, TopicName};

fn key(topic: &str) -> SegmentKey {
    SegmentKey::new(TopicName::new(topic).unwrap(), 1)
}

fn config(fsync: FsyncPolicy) -> WalConfig {
    WalConfig {
        fsync,
        segment_file_bytes: 8192,
        ..WalConfig::default()
    }
}

fn entry(i: u64) -> Bytes {
    Bytes::from(format!("entry {i}"))
}

async fn append(store: &WalStore, seg: &SegmentKey, i: u64) -> walrus_core::Result<u64> {
    store
        .append(seg, &[entry(i)], u64::MAX)
        .await
        .map(|a| a.count)
}

async fn read_all(store: &WalStore, seg: &SegmentKey) -> Vec<Bytes> {
    store.read(seg, 0, 1000, usize::MAX).await.unwrap()
}

fn assert_storage_error(r: walrus_core::Result<u64>, what: &str) {
    match r {
        Err(Error::Storage(why)) => assert!(
            why.contains("sync") && why.contains("no more appends"),
            "{what}: the error should say a sync failed and appends are refused: {why}"
        ),
        other => panic!("{what}: expected a storage error, got {other:?}"),
    }
}

#[tokio::test]
async fn given_fsync_always_when_a_sync_fails_should_fail_the_waiting_append_and_refuse_every_later_one(
) {
    let dir = tempfile::tempdir().unwrap();
    let seg = key("eio-always");
    let store = WalStore::open(dir.path(), config(FsyncPolicy::Always)).unwrap();
    for i in 0..3 {
        append(&store, &seg, i).await.unwrap();
    }
    store.inject_sync_failures(1);
    assert_storage_error(
        append(&store, &seg, 3).await,
        "the append whose sync failed",
    );
    // The next sync would succeed: the segment must not believe it.
    assert_storage_error(append(&store, &seg, 4).await, "an append after the failure");

    assert_eq!(
        read_all(&store, &seg).await,
        (0..3).map(entry).collect::<Vec<_>>()
    );
    assert_eq!(store.info(&seg).await.unwrap().unwrap().count, 3);
    let health = store.health();
    assert_eq!(health.failed_syncs, 1);
    assert_eq!(health.failed_segments, vec![seg.clone()]);
    assert_eq!(
        store.seal(&seg).await.unwrap(),
        3,
        "sealed at the durable count"
    );

    // Other segments are not affected.
    let other = key("eio-other");
    assert_eq!(append(&store, &other, 0).await.unwrap(), 1);
    drop(store);
    let store = WalStore::open(dir.path(), config(FsyncPolicy::Always)).unwrap();
    let info = store.info(&seg).await.unwrap().unwrap();
    assert_eq!((info.count, info.sealed), (3, true));
    assert_eq!(
        read_all(&store, &seg).await,
        (0..3).map(entry).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn given_fsync_interval_when_a_sync_fails_should_never_count_or_seal_the_unsynced_entries() {
    let dir = tempfile::tempdir().unwrap();
    let seg = key("eio-interval");
    let fsync = FsyncPolicy::Interval(Duration::from_secs(3600));
    let store = WalStore::open(dir.path(), config(fsync)).unwrap();
    for i in 0..3 {
        append(&store, &seg, i).await.unwrap();
    }
    store.sync().await.unwrap();
    // Acknowledged under the interval policy, not synced yet.
    for i in 3..5 {
        append(&store, &seg, i).await.unwrap();
    }
    store.inject_sync_failures(1);
    assert!(
        store.seal(&seg).await.is_err(),
        "the seal's sync failed: no seal"
    );
    assert_storage_error(append(&store, &seg, 5).await, "an append after the failure");
    // A retried seal's sync would "succeed" over pages the kernel dropped.
    assert_eq!(
        store.seal(&seg).await.unwrap(),
        3,
        "the seal must not count entries written after the last good sync"
    );
    assert_eq!(
        read_all(&store, &seg).await,
        (0..3).map(entry).collect::<Vec<_>>()
    );
    drop(store);
    let store = WalStore::open(dir.path(), config(fsync)).unwrap();
    assert_eq!(store.info(&seg).await.unwrap().unwrap().count, 3);
    assert_eq!(
        read_all(&store, &seg).await,
        (0..3).map(entry).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn given_fsync_never_when_the_flush_a_reader_asked_for_fails_should_serve_nothing_unsynced() {
    let dir = tempfile::tempdir().unwrap();
    let seg = key("eio-never");
    let store = WalStore::open(dir.path(), config(FsyncPolicy::Never)).unwrap();
    append(&store, &seg, 0).await.unwrap();
    assert_eq!(read_all(&store, &seg).await, vec![entry(0)]);
    append(&store, &seg, 1).await.unwrap();
    store.inject_sync_failures(1);
    assert!(
        store.read(&seg, 1, 10, usize::MAX).await.is_err(),
        "the read's flush failed"
    );
    assert!(
        store
            .read(&seg, 1, 10, usize::MAX)
            .await
            .unwrap()
            .is_empty(),
        "entry 1 was never durable: never served"
    );
    assert_storage_error(append(&store, &seg, 2).await, "an append after the failure");
    store.sync().await.unwrap();
    assert_eq!(store.info(&seg).await.unwrap().unwrap().count, 1);
    assert_eq!(store.health().failed_syncs, 1);
}
