//! What the WAL costs the disk (issue 9, item 7) and where it does the
//! blocking work of growing (item 6): files are sparse and reserved in
//! steps just ahead of the writer, and the next file is created before the
//! current one is full, off the append path.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use walrus_backends::wal::{FsyncPolicy, WalConfig, WalStore};
use walrus_core::{LogStore, SegmentKey, TopicName};

const MIB: u64 = 1 << 20;

/// Bytes of disk the files under `dir` hold (blocks, not lengths).
fn allocated(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            allocated(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

fn key(topic: &str) -> SegmentKey {
    SegmentKey::new(TopicName::new(topic).unwrap(), 1)
}

#[tokio::test]
async fn given_a_topic_with_one_entry_when_synced_should_cost_the_disk_about_one_mib() {
    let dir = tempfile::tempdir().unwrap();
    let store = WalStore::open(dir.path(), WalConfig::default()).unwrap();
    store
        .append(&key("idle"), &[Bytes::from_static(b"one entry")], u64::MAX)
        .await
        .unwrap();
    store.sync().await.unwrap();
    let used = allocated(&dir.path().join("idle"));
    assert!(
        used <= MIB + 64 * 1024,
        "an idle topic holds {used} bytes of disk; at most about one reservation step (1 MiB) expected"
    );
}

#[tokio::test]
async fn given_a_growing_segment_when_written_should_reserve_in_steps_just_ahead_of_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = WalStore::open(
        dir.path(),
        WalConfig {
            fsync: FsyncPolicy::Never,
            ..WalConfig::default()
        },
    )
    .unwrap();
    let batch: Vec<Bytes> = (0..100).map(|_| Bytes::from(vec![7u8; 1024])).collect();
    for _ in 0..50 {
        store.append(&key("grow"), &batch, u64::MAX).await.unwrap();
    }
    store.sync().await.unwrap();
    let written = 50 * 100 * (1024 + 8) as u64;
    let used = allocated(&dir.path().join("grow"));
    // Reserved ahead: a step, or half of what the file holds once that is
    // more (a busy file grows in a few big steps), plus the step rounding.
    assert!(
        used >= written && used <= written + written / 2 + 2 * MIB,
        "{written} bytes written hold {used} bytes of disk; expected at most half again ahead"
    );
    let read = store
        .read(&key("grow"), 0, 10_000, usize::MAX)
        .await
        .unwrap();
    assert_eq!(read.len(), 5000);
    assert!(read.iter().all(|e| e[..] == [7u8; 1024][..]));
}

#[tokio::test]
async fn given_a_nearly_full_file_when_appended_should_have_the_next_file_created_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let file_bytes = 256 * 1024;
    let store = WalStore::open(
        dir.path(),
        WalConfig {
            segment_file_bytes: file_bytes,
            ..WalConfig::default()
        },
    )
    .unwrap();
    // Past half the file, without crossing into the next one.
    let batch: Vec<Bytes> = (0..20).map(|_| Bytes::from(vec![1u8; 8 * 1024])).collect();
    store.append(&key("roll"), &batch, u64::MAX).await.unwrap();
    let next = dir
        .path()
        .join("roll")
        .join("00000000000000000001.000001.wal");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !next.exists() {
        assert!(
            Instant::now() < deadline,
            "the next file was not created ahead: an append crossing into it would create it on the append path"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The append that crosses uses it, and what was created ahead but not
    // used is gone once the segment is sealed.
    store.append(&key("roll"), &batch, u64::MAX).await.unwrap();
    assert_eq!(store.seal(&key("roll")).await.unwrap(), 40);
    drop(store);
    let store = WalStore::open(
        dir.path(),
        WalConfig {
            segment_file_bytes: file_bytes,
            ..WalConfig::default()
        },
    )
    .unwrap();
    let read = store.read(&key("roll"), 0, 100, usize::MAX).await.unwrap();
    assert_eq!(
        read.len(),
        40,
        "a sealed segment with files made ahead reads back whole"
    );
}

#[tokio::test]
async fn given_a_segment_that_filled_a_file_when_its_next_file_is_made_should_reserve_it_whole() {
    // A segment that has filled a file is busy: its next file is reserved
    // whole at creation, not in 1 MiB steps that a fast writer outruns
    // again and again while they grow.
    let dir = tempfile::tempdir().unwrap();
    let file_bytes = 4 * MIB;
    let store = WalStore::open(
        dir.path(),
        WalConfig {
            fsync: FsyncPolicy::Never,
            segment_file_bytes: file_bytes,
            ..WalConfig::default()
        },
    )
    .unwrap();
    let batch: Vec<Bytes> = (0..4).map(|_| Bytes::from(vec![3u8; 16 * 1024])).collect();
    let next = dir
        .path()
        .join("busy")
        .join("00000000000000000001.000001.wal");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !next.exists() {
        assert!(Instant::now() < deadline, "the next file was never made");
        store.append(&key("busy"), &batch, u64::MAX).await.unwrap();
    }
    let reserved = std::fs::metadata(&next).unwrap().blocks() * 512;
    assert!(
        reserved >= file_bytes,
        "the busy segment's next file holds {reserved} bytes of disk at its start; expected the whole file"
    );
}
