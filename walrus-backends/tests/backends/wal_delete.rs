//! Deleting sealed segments (retention) from the WAL: the files leave the
//! disk, the deletion survives a restart, and a deletion a crash
//! interrupted is finished when the store opens, never half-served.

use std::path::Path;

use crate::wal_common::read::read_all;
use bytes::Bytes;
use walrus_backends::wal::{FsyncPolicy, WalConfig, WalStore};
use walrus_core::{Error, LogStore, SegmentKey, TopicName};

fn key(segment: u64) -> SegmentKey {
    SegmentKey::new(TopicName::new("logs").unwrap(), segment)
}

/// Small files, so that a segment spans several.
fn config() -> WalConfig {
    WalConfig {
        fsync: FsyncPolicy::Always,
        segment_file_bytes: 128 * 1024,
        ..WalConfig::default()
    }
}

fn payload(i: u64) -> Bytes {
    let mut v = format!("{i}:").into_bytes();
    v.resize(1000, b'a' + (i % 26) as u8);
    Bytes::from(v)
}

/// Segments 1 and 2 of `logs`, 400 entries of 1000 bytes each (several
/// files), segment 1 sealed, then the store closed.
async fn two_segments(dir: &Path) {
    let store = WalStore::open(dir, config()).unwrap();
    for seg in [key(1), key(2)] {
        for chunk in 0..4 {
            let batch: Vec<Bytes> = (chunk * 100..chunk * 100 + 100).map(payload).collect();
            store.append(&seg, &batch, u64::MAX).await.unwrap();
        }
    }
    assert_eq!(store.seal(&key(1)).await.unwrap(), 400);
}

/// The files of segment `segment` of `logs` on disk.
fn files_of(dir: &Path, segment: u64) -> Vec<String> {
    let prefix = format!("{segment:020}.");
    let mut names: Vec<String> = std::fs::read_dir(dir.join("logs"))
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn given_a_sealed_segment_of_several_files_when_deleted_should_remove_them_from_disk_for_good(
) {
    let tmp = tempfile::tempdir().unwrap();
    two_segments(tmp.path()).await;
    let store = WalStore::open(tmp.path(), config()).unwrap();
    // Read it first: its maps are in the read cache.
    assert_eq!(read_all(&store, &key(1)).await.len(), 400);
    let before = files_of(tmp.path(), 1);
    assert!(
        before.len() > 3,
        "several part files and a seal: {before:?}"
    );

    store.delete(&key(1)).await.unwrap();
    assert_eq!(files_of(tmp.path(), 1), Vec::<String>::new());
    assert_eq!(store.info(&key(1)).await.unwrap(), None);
    assert!(read_all(&store, &key(1)).await.is_empty());
    assert_eq!(read_all(&store, &key(2)).await.len(), 400, "untouched");
    // The open segment is refused, whole.
    assert!(matches!(
        store.delete(&key(2)).await,
        Err(Error::BadRequest(_))
    ));
    drop(store);

    let store = WalStore::open(tmp.path(), config()).unwrap();
    assert_eq!(
        store.info(&key(1)).await.unwrap(),
        None,
        "gone after a restart"
    );
    assert_eq!(files_of(tmp.path(), 1), Vec::<String>::new());
    let kept: Vec<Bytes> = (0..400).map(payload).collect();
    assert_eq!(read_all(&store, &key(2)).await, kept);
    store
        .delete(&key(1))
        .await
        .expect("deleting again is a no-op");
}

/// What the first step of deleting segment 1 leaves when a crash follows
/// it: its seal file renamed to the marker. Returns the topic directory.
fn crash_after_the_marker(dir: &Path) -> std::path::PathBuf {
    let topic = dir.join("logs");
    std::fs::rename(
        topic.join(format!("{:020}.sealed", 1)),
        topic.join(format!("{:020}.deleting", 1)),
    )
    .unwrap();
    topic
}

/// A crash after the marker and part of the removals: what a `kill -9`
/// between the steps of `delete` leaves (the marker is the seal file
/// renamed; here one part file is already gone).
#[tokio::test]
async fn given_a_delete_interrupted_by_a_crash_when_the_store_opens_should_finish_it() {
    let tmp = tempfile::tempdir().unwrap();
    two_segments(tmp.path()).await;
    let topic = crash_after_the_marker(tmp.path());
    std::fs::remove_file(topic.join(format!("{:020}.{:06}.wal", 1, 0))).unwrap();
    assert!(files_of(tmp.path(), 1).len() > 2);

    let store = WalStore::open(tmp.path(), config()).unwrap();
    assert_eq!(files_of(tmp.path(), 1), Vec::<String>::new(), "finished");
    assert_eq!(store.info(&key(1)).await.unwrap(), None);
    assert!(store.health().quarantined_segments.is_empty(), "not damage");
    let kept: Vec<Bytes> = (0..400).map(payload).collect();
    assert_eq!(read_all(&store, &key(2)).await, kept);
}

/// A crash right after the marker was made, every part file still there:
/// the segment is gone all the same, never served in part or whole.
#[tokio::test]
async fn given_a_crash_right_after_the_delete_marker_when_the_store_opens_should_not_serve_the_segment(
) {
    let tmp = tempfile::tempdir().unwrap();
    two_segments(tmp.path()).await;
    crash_after_the_marker(tmp.path());
    let store = WalStore::open(tmp.path(), config()).unwrap();
    assert_eq!(store.info(&key(1)).await.unwrap(), None);
    assert!(read_all(&store, &key(1)).await.is_empty());
    assert_eq!(files_of(tmp.path(), 1), Vec::<String>::new());
}
