//! Restart, recovery and corruption scenarios of the WAL, on real files.

use std::path::{Path, PathBuf};

use crate::wal_common::read::read_all;
use bytes::Bytes;
use walrus_backends::wal::{FsyncPolicy, WalConfig, WalStore};
use walrus_core::{Error, LogStore, SegmentInfo, SegmentKey, TopicName};

fn key(topic: &str, segment: u64) -> SegmentKey {
    SegmentKey::new(TopicName::new(topic).unwrap(), segment)
}

fn config(fsync: FsyncPolicy, file_bytes: u64) -> WalConfig {
    WalConfig {
        fsync,
        segment_file_bytes: file_bytes,
        ..WalConfig::default()
    }
}

fn payload(i: u64, len: usize) -> Bytes {
    let mut v = format!("{i}:").into_bytes();
    v.resize(len.max(v.len()), b'a' + (i % 26) as u8);
    Bytes::from(v)
}

/// Appends `payload(i, len)` for each `i` of `ids`, one append each.
async fn append_each(store: &WalStore, seg: &SegmentKey, ids: std::ops::Range<u64>, len: usize) {
    for i in ids {
        store
            .append(seg, &[payload(i, len)], u64::MAX)
            .await
            .unwrap();
    }
}

/// One run of a store: entries `0..n` of `len` bytes, one append each,
/// then a graceful close.
async fn write_and_close(dir: &Path, seg: &SegmentKey, cfg: WalConfig, n: u64, len: usize) {
    let store = WalStore::open(dir, cfg).unwrap();
    append_each(&store, seg, 0..n, len).await;
}

fn part_file(dir: &Path, seg: &SegmentKey, part: u32) -> PathBuf {
    dir.join(seg.topic.as_str())
        .join(format!("{:020}.{part:06}.wal", seg.segment))
}

/// Offsets of the records in a WAL file, from its bytes (for the tests to
/// aim corruption at).
fn record_offsets(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut off = 64;
    let mut out = Vec::new();
    while off + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap());
        let crc = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap());
        if (len == 0 && crc == 0) || len == u32::MAX {
            break;
        }
        out.push((off, len as usize));
        off += 8 + len as usize;
    }
    out
}

#[tokio::test]
async fn given_appends_across_files_when_reopened_should_have_exact_counts_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (key("orders", 1), key("orders", 2), key("logs", 7));
    let mut expected_a = Vec::new();
    {
        let store = WalStore::open(dir.path(), config(FsyncPolicy::Always, 8192)).unwrap();
        for i in 0..300u64 {
            let p = payload(i, (i as usize * 37) % 700);
            store
                .append(&a, std::slice::from_ref(&p), u64::MAX)
                .await
                .unwrap();
            expected_a.push(p);
        }
        store
            .append(&b, &[payload(1, 10), payload(2, 20)], u64::MAX)
            .await
            .unwrap();
        store.seal(&b).await.unwrap();
        store.seal(&c).await.unwrap();
    }
    assert!(
        part_file(dir.path(), &a, 5).exists(),
        "300 entries span several 8 KiB files"
    );
    let store = WalStore::open(dir.path(), config(FsyncPolicy::Always, 8192)).unwrap();
    assert_eq!(
        store.info(&a).await.unwrap(),
        Some(SegmentInfo {
            count: 300,
            sealed: false
        })
    );
    assert_eq!(
        store.info(&b).await.unwrap(),
        Some(SegmentInfo {
            count: 2,
            sealed: true
        })
    );
    assert_eq!(
        store.info(&c).await.unwrap(),
        Some(SegmentInfo {
            count: 0,
            sealed: true
        })
    );
    assert_eq!(read_all(&store, &a).await, expected_a);
    assert_eq!(
        read_all(&store, &b).await,
        vec![payload(1, 10), payload(2, 20)]
    );
    let err = store
        .append(&b, &[payload(3, 1)], u64::MAX)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::SegmentSealed(b.clone()),
        "a seal survives a restart"
    );
    let next = store
        .append(&a, &[payload(300, 5)], u64::MAX)
        .await
        .unwrap();
    assert_eq!(
        next.first_index, 300,
        "appends continue after the recovered count"
    );
    assert_eq!(store.segments().await.unwrap().len(), 3);
}

#[tokio::test]
async fn given_a_torn_last_record_when_reopened_should_cut_it_and_append_after_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let seg = key("torn", 1);
    write_and_close(dir.path(), &seg, config(FsyncPolicy::Never, 65536), 10, 100).await;
    let path = part_file(dir.path(), &seg, 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let (last, len) = *record_offsets(&bytes).last().unwrap();
    bytes[last + 8 + len / 2] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let store = WalStore::open(dir.path(), config(FsyncPolicy::Never, 65536)).unwrap();
    assert_eq!(
        store.info(&seg).await.unwrap().unwrap().count,
        9,
        "the torn record is cut"
    );
    let a = store
        .append(&seg, &[payload(99, 3)], u64::MAX)
        .await
        .unwrap();
    assert_eq!(a.first_index, 9);
    drop(store);
    let store = WalStore::open(dir.path(), config(FsyncPolicy::Never, 65536)).unwrap();
    let mut expected: Vec<_> = (0..9).map(|i| payload(i, 100)).collect();
    expected.push(payload(99, 3));
    assert_eq!(read_all(&store, &seg).await, expected);
}

#[tokio::test]
async fn given_stale_records_behind_a_torn_one_when_overwritten_should_never_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let seg = key("stale", 1);
    write_and_close(dir.path(), &seg, config(FsyncPolicy::Never, 65536), 3, 50).await;
    // Record 1's page never reached the disk, record 2's did.
    let path = part_file(dir.path(), &seg, 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let (second, _) = record_offsets(&bytes)[1];
    bytes[second..second + 8].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    {
        let store = WalStore::open(dir.path(), config(FsyncPolicy::Never, 65536)).unwrap();
        assert_eq!(store.info(&seg).await.unwrap().unwrap().count, 1);
        // Same size as the lost record: the next header lands where the
        // stale record 2 was.
        store
            .append(&seg, &[payload(7, 50)], u64::MAX)
            .await
            .unwrap();
    }
    let store = WalStore::open(dir.path(), config(FsyncPolicy::Never, 65536)).unwrap();
    assert_eq!(
        read_all(&store, &seg).await,
        vec![payload(0, 50), payload(7, 50)]
    );
}

/// Opens a store over a damaged segment: the store opens, the segment is
/// quarantined with its first `served` entries readable, appends and seals
/// are refused, and a read past the damage fails: returns its message.
async fn open_quarantined(dir: &Path, cfg: WalConfig, seg: &SegmentKey, served: u64) -> String {
    let store = WalStore::open(dir, cfg).expect("a damaged segment must not stop the store");
    assert_eq!(store.health().quarantined_segments, vec![seg.clone()]);
    let got = store.read(seg, 0, 1000, usize::MAX).await.unwrap();
    assert_eq!(
        got.len() as u64,
        served,
        "entries before the damage are served"
    );
    for (i, e) in got.iter().enumerate() {
        assert!(e.starts_with(format!("{i}:").as_bytes()), "entry {i}");
    }
    if !store.info(seg).await.unwrap().unwrap().sealed {
        let refused = store.append(seg, &[payload(999, 8)], u64::MAX).await;
        assert!(matches!(refused, Err(Error::Corrupt(_))), "{refused:?}");
        assert!(matches!(store.seal(seg).await, Err(Error::Corrupt(_))));
    }
    match store.read(seg, served, 10, usize::MAX).await {
        Err(Error::Corrupt(m)) => m,
        other => panic!("a read past the damage should fail as corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn given_corruption_before_the_synced_point_when_reopened_should_quarantine_it_naming_file_and_byte(
) {
    let dir = tempfile::tempdir().unwrap();
    let seg = key("bitrot", 1);
    write_and_close(dir.path(), &seg, config(FsyncPolicy::Always, 65536), 20, 64).await;
    let path = part_file(dir.path(), &seg, 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let (third, _) = record_offsets(&bytes)[2];
    bytes[third + 10] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let msg = open_quarantined(dir.path(), config(FsyncPolicy::Always, 65536), &seg, 2).await;
    assert!(msg.contains("00000000000000000001.000000.wal"), "{msg}");
    assert!(msg.contains(&format!("byte {third}")), "{msg}");
}

#[tokio::test]
async fn given_a_corrupt_sealed_segment_when_read_should_serve_up_to_the_damage_and_report_it() {
    let dir = tempfile::tempdir().unwrap();
    let seg = key("sealedrot", 1);
    {
        let store = WalStore::open(dir.path(), config(FsyncPolicy::Always, 65536)).unwrap();
        store
            .append(
                &seg,
                &[payload(0, 30), payload(1, 30), payload(2, 30)],
                u64::MAX,
            )
            .await
            .unwrap();
        store.seal(&seg).await.unwrap();
    }
    let path = part_file(dir.path(), &seg, 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let (second, _) = record_offsets(&bytes)[1];
    bytes[second + 9] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    let store = WalStore::open(dir.path(), config(FsyncPolicy::Always, 65536)).unwrap();
    assert_eq!(
        store.info(&seg).await.unwrap(),
        Some(SegmentInfo {
            count: 3,
            sealed: true
        })
    );
    assert_eq!(
        store.read(&seg, 0, 10, usize::MAX).await.unwrap(),
        vec![payload(0, 30)]
    );
    let err = store.read(&seg, 1, 10, usize::MAX).await.unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt(m) if m.contains(&format!("byte {second}"))),
        "{err}"
    );
    assert_eq!(store.health().quarantined_segments, vec![seg.clone()]);
}

#[tokio::test]
async fn given_a_truncated_file_when_reopened_should_recover_the_prefix_before_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let seg = key("cut", 1);
    write_and_close(dir.path(), &seg, config(FsyncPolicy::Never, 65536), 10, 200).await;
    let path = part_file(dir.path(), &seg, 0);
    let offsets = record_offsets(&std::fs::read(&path).unwrap());
    let (sixth, _) = offsets[6];
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(sixth as u64 + 20).unwrap();
    drop(f);

    let store = WalStore::open(dir.path(), config(FsyncPolicy::Never, 65536)).unwrap();
    let expected: Vec<_> = (0..6).map(|i| payload(i, 200)).collect();
    assert_eq!(read_all(&store, &seg).await, expected);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        65536,
        "the file is whole again"
    );
}

#[tokio::test]
async fn given_many_sealed_segments_when_all_read_should_keep_maps_and_descriptors_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let n = 300u64;
    let cfg = WalConfig {
        fsync: FsyncPolicy::Never,
        segment_file_bytes: 4096,
        max_read_maps: 8,
        spare_files: 1,
        ..WalConfig::default()
    };
    {
        let store = WalStore::open(dir.path(), cfg.clone()).unwrap();
        for s in 1..=n {
            store
                .append(&key("many", s), &[payload(s, 16)], u64::MAX)
                .await
                .unwrap();
            store.seal(&key("many", s)).await.unwrap();
        }
    }
    let fds_before = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    let store = WalStore::open(dir.path(), cfg).unwrap();
    for s in 1..=n {
        assert_eq!(
            read_all(&store, &key("many", s)).await,
            vec![payload(s, 16)]
        );
    }
    assert!(
        store.cached_read_maps() <= 8,
        "{} maps cached",
        store.cached_read_maps()
    );
    let fds_after = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        fds_after < fds_before + 20,
        "descriptors grew from {fds_before} to {fds_after}"
    );
}

#[tokio::test]
async fn given_a_foreign_file_in_a_topic_directory_when_opened_should_ignore_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("t")).unwrap();
    std::fs::write(dir.path().join("t").join("README"), "hello").unwrap();
    std::fs::create_dir_all(dir.path().join("not a topic")).unwrap();
    let store = WalStore::open(dir.path(), WalConfig::default()).unwrap();
    assert!(store.segments().await.unwrap().is_empty());
}

#[tokio::test]
async fn given_an_entry_larger_than_a_file_when_appended_should_fail_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = WalStore::open(dir.path(), config(FsyncPolicy::Always, 8192)).unwrap();
    let seg = key("huge", 1);
    let err = store
        .append(&seg, &[Bytes::from(vec![0u8; 9000])], u64::MAX)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::BadRequest(m) if m.contains("segment_file_bytes")),
        "{err}"
    );
    assert_eq!(store.info(&seg).await.unwrap(), None, "nothing was written");
}

#[test]
fn given_a_bad_file_size_when_opening_should_refuse_with_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let err = WalStore::open(dir.path(), config(FsyncPolicy::Always, 100)).unwrap_err();
    assert!(err.to_string().contains("segment_file_bytes"), "{err}");
}

#[tokio::test]
async fn given_an_open_store_when_the_same_directory_is_opened_again_should_refuse_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let first = WalStore::open(dir.path(), WalConfig::default()).unwrap();
    let err = WalStore::open(dir.path(), WalConfig::default()).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    drop(first);
    WalStore::open(dir.path(), WalConfig::default()).expect("free again once dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_concurrent_appenders_with_fsync_always_when_appending_should_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let store = WalStore::open(dir.path(), WalConfig::default()).unwrap();
    let seg = key("group", 1);
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let (store, seg) = (store.clone(), seg.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                store
                    .append(&seg, &[payload(t * 100 + i, 100)], u64::MAX)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let flushes = store.flush_count();
    assert_eq!(store.info(&seg).await.unwrap().unwrap().count, 640);
    assert!(
        flushes < 640 / 2,
        "640 concurrent appends took {flushes} flushes: no group commit"
    );
    let stats = store.stats().snapshot();
    assert_eq!(stats.flushes, flushes);
    assert_eq!(stats.sync_seconds.count, flushes, "every flush is timed");
    assert!(stats.sync_seconds.sum > 0.0);
    assert_eq!(
        stats.group_size.sum, 640.0,
        "each append waited for exactly one flush"
    );
    assert!(
        stats.group_size.count <= flushes
            && stats.group_size.sum / stats.group_size.count as f64 > 2.0,
        "groups of {:?}",
        stats.group_size
    );
}

/// Writes entries of 1000 bytes into 8 KiB files until the segment has
/// three files; returns (entries written, entries in file 0).
async fn three_files(dir: &Path, seg: &SegmentKey) -> (u64, usize) {
    let store = WalStore::open(dir, config(FsyncPolicy::Always, 8192)).unwrap();
    let mut n = 0;
    while !part_file(dir, seg, 2).exists() {
        store
            .append(seg, &[payload(n, 1000)], u64::MAX)
            .await
            .unwrap();
        n += 1;
    }
    let in_first = record_offsets(&std::fs::read(part_file(dir, seg, 0)).unwrap()).len();
    (n, in_first)
}

#[tokio::test]
async fn given_a_crash_while_rolling_to_a_new_file_when_reopened_should_drop_the_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let seg = key("roll", 1);
    let (_, in_first) = three_files(dir.path(), &seg).await;
    // As if the crash came right after file 1 was created: file 0 has no
    // next marker on disk and the later files hold nothing.
    let f0 = part_file(dir.path(), &seg, 0);
    let mut bytes = std::fs::read(&f0).unwrap();
    let (last, len) = *record_offsets(&bytes).last().unwrap();
    bytes[last + 8 + len..last + 16 + len].fill(0);
    std::fs::write(&f0, &bytes).unwrap();
    for part in [1, 2] {
        let p = part_file(dir.path(), &seg, part);
        let mut b = std::fs::read(&p).unwrap();
        b[64..].fill(0);
        std::fs::write(&p, &b).unwrap();
    }
    let store = WalStore::open(dir.path(), config(FsyncPolicy::Always, 8192)).unwrap();
    let expected: Vec<_> = (0..in_first as u64).map(|i| payload(i, 1000)).collect();
    assert_eq!(read_all(&store, &seg).await, expected);
    assert!(
        !part_file(dir.path(), &seg, 2).exists(),
        "empty files past the tail are removed"
    );
    let a = store
        .append(&seg, &[payload(500, 1000)], u64::MAX)
        .await
        .unwrap();
    assert_eq!(a.first_index, in_first as u64);
}

#[tokio::test]
async fn given_a_damaged_earlier_file_when_later_files_hold_data_should_quarantine_at_the_hole() {
    let dir = tempfile::tempdir().unwrap();
    let seg = key("hole", 1);
    three_files(dir.path(), &seg).await;
    let f0 = part_file(dir.path(), &seg, 0);
    let mut bytes = std::fs::read(&f0).unwrap();
    let (last, _) = *record_offsets(&bytes).last().unwrap();
    let before = record_offsets(&bytes).len() as u64 - 1;
    bytes[last + 20] ^= 0x10;
    std::fs::write(&f0, &bytes).unwrap();
    let msg = open_quarantined(dir.path(), config(FsyncPolicy::Always, 8192), &seg, before).await;
    assert!(
        msg.contains(&format!("byte {last}")) && msg.contains("000000.wal"),
        "{msg}"
    );
}

#[tokio::test]
async fn given_fsync_never_when_synced_should_flush_only_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let store = WalStore::open(dir.path(), config(FsyncPolicy::Never, 65536)).unwrap();
    let seg = key("lazy", 1);
    store
        .append(&seg, &[payload(0, 10)], u64::MAX)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(
        store.flush_count(),
        0,
        "fsync=never does not flush by itself"
    );
    store.sync().await.unwrap();
    assert_eq!(store.flush_count(), 1, "sync flushes the dirty segment");
    store.sync().await.unwrap();
    assert_eq!(store.flush_count(), 1, "nothing new: nothing to flush");
}

#[tokio::test]
async fn given_fsync_interval_when_time_passes_should_flush_without_being_asked() {
    let dir = tempfile::tempdir().unwrap();
    let fsync = FsyncPolicy::Interval(std::time::Duration::from_millis(10));
    let store = WalStore::open(dir.path(), config(fsync, 65536)).unwrap();
    let seg = key("timer", 1);
    store
        .append(&seg, &[payload(0, 10)], u64::MAX)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while store.flush_count() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        store.flush_count(),
        1,
        "the interval flush ran once for the one append"
    );
}

fn spares_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("spare-"))
        .collect();
    v.sort();
    v
}

async fn wait_for_spares(store: &WalStore, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.spare_files() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the spare pool never filled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn given_ready_spares_when_segments_roll_should_take_them_and_recover_everything() {
    let dir = tempfile::tempdir().unwrap();
    let seg = key("spares", 1);
    let cfg = WalConfig {
        spare_files: 2,
        ..config(FsyncPolicy::Always, 8192)
    };
    let mut written = Vec::new();
    {
        let store = WalStore::open(dir.path(), cfg.clone()).unwrap();
        wait_for_spares(&store, 2).await;
        let before = spares_in(dir.path());
        for i in 0..30 {
            store
                .append(&seg, &[payload(i, 1000)], u64::MAX)
                .await
                .unwrap();
            written.push(payload(i, 1000));
        }
        assert!(
            part_file(dir.path(), &seg, 3).exists(),
            "30 KB of entries span several 8 KiB files"
        );
        let after = spares_in(dir.path());
        assert!(
            before.iter().all(|s| !after.contains(s)),
            "the ready spares {before:?} were taken (now {after:?})"
        );
        assert_eq!(read_all(&store, &seg).await, written);
    }
    let store = WalStore::open(dir.path(), cfg).unwrap();
    assert_eq!(read_all(&store, &seg).await, written);
    let topics = store.segments().await.unwrap();
    assert_eq!(
        topics.len(),
        1,
        "spares are never taken for topics: {topics:?}"
    );
    wait_for_spares(&store, 2).await;
    let spare = dir.path().join(&spares_in(dir.path())[0]);
    assert!(std::fs::read(&spare).unwrap().iter().all(|&b| b == 0));
}

#[tokio::test]
async fn given_spares_of_another_size_when_reopened_should_discard_them() {
    let dir = tempfile::tempdir().unwrap();
    let with_spares = |file_bytes| WalConfig {
        spare_files: 1,
        ..config(FsyncPolicy::Always, file_bytes)
    };
    {
        let store = WalStore::open(dir.path(), with_spares(8192)).unwrap();
        wait_for_spares(&store, 1).await;
    }
    let store = WalStore::open(dir.path(), with_spares(16384)).unwrap();
    wait_for_spares(&store, 1).await;
    for name in spares_in(dir.path()) {
        let len = std::fs::metadata(dir.path().join(&name)).unwrap().len();
        assert_eq!(len, 16384, "{name} has the old size");
    }
    let seg = key("resized", 1);
    store
        .append(&seg, &[payload(1, 10_000)], u64::MAX)
        .await
        .unwrap();
    assert_eq!(read_all(&store, &seg).await, vec![payload(1, 10_000)]);
}

fn header_checkpoint(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize
}

fn end_of_records(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    let (last, len) = *record_offsets(&bytes).last().unwrap();
    last + 8 + len
}

#[tokio::test]
async fn given_synced_appends_when_closed_gracefully_should_checkpoint_all_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let seg = key("closed", 1);
    write_and_close(dir.path(), &seg, config(FsyncPolicy::Always, 65536), 20, 64).await;
    let path = part_file(dir.path(), &seg, 0);
    assert_eq!(
        header_checkpoint(&path),
        end_of_records(&path),
        "after a graceful close everything synced is behind the checkpoint"
    );
    // So damage to the very last record is reported, not cut.
    let mut bytes = std::fs::read(&path).unwrap();
    let (last, _) = *record_offsets(&bytes).last().unwrap();
    bytes[last + 9] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let msg = open_quarantined(dir.path(), config(FsyncPolicy::Always, 65536), &seg, 19).await;
    assert!(msg.contains(&format!("byte {last}")), "{msg}");
}

#[tokio::test]
async fn given_syncs_spread_over_time_when_still_open_should_advance_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let seg = key("ticking", 1);
    let store = WalStore::open(dir.path(), config(FsyncPolicy::Always, 65536)).unwrap();
    let path = part_file(dir.path(), &seg, 0);
    append_each(&store, &seg, 0..5, 64).await;
    let first_five = end_of_records(&path);
    // Past the checkpoint interval, the next flush records where the
    // previous one ended: a crash from here on reports damage before it.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    store
        .append(&seg, &[payload(5, 64)], u64::MAX)
        .await
        .unwrap();
    assert_eq!(header_checkpoint(&path), first_five);
}

#[tokio::test]
async fn given_fsync_never_when_closed_should_not_checkpoint_unsynced_data() {
    let dir = tempfile::tempdir().unwrap();
    let seg = key("unsynced", 1);
    write_and_close(dir.path(), &seg, config(FsyncPolicy::Never, 65536), 5, 64).await;
    assert_eq!(
        header_checkpoint(&part_file(dir.path(), &seg, 0)),
        64,
        "nothing was synced, so nothing is known durable"
    );
}

#[tokio::test]
async fn given_a_torn_earlier_file_when_later_files_hold_only_unsynced_data_should_cut_it_all_as_tail(
) {
    // As after a crash while rolling: the kernel wrote the new files'
    // pages before the old file's tail, nothing was synced since.
    let dir = tempfile::tempdir().unwrap();
    let seg = key("reordered", 1);
    write_and_close(dir.path(), &seg, config(FsyncPolicy::Never, 8192), 30, 1000).await;
    assert!(part_file(dir.path(), &seg, 2).exists());
    let f0 = part_file(dir.path(), &seg, 0);
    let mut bytes = std::fs::read(&f0).unwrap();
    let offsets = record_offsets(&bytes);
    let (last, _) = *offsets.last().unwrap();
    bytes[last + 20] ^= 0x10;
    std::fs::write(&f0, &bytes).unwrap();

    let store = WalStore::open(dir.path(), config(FsyncPolicy::Never, 8192)).unwrap();
    let kept = offsets.len() as u64 - 1;
    let expected: Vec<_> = (0..kept).map(|i| payload(i, 1000)).collect();
    assert_eq!(read_all(&store, &seg).await, expected);
    assert!(
        !part_file(dir.path(), &seg, 1).exists(),
        "files past the torn tail are removed"
    );
    let a = store
        .append(&seg, &[payload(99, 1000)], u64::MAX)
        .await
        .unwrap();
    assert_eq!(a.first_index, kept, "appends go on right after the tear");
}

/// Blocks written ahead of the appenders (fsync=always) are zeros past the
/// write position only: many appenders crossing several files, with and
/// without it, read back every entry intact, before and after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_blocks_written_ahead_when_many_appenders_cross_files_should_keep_every_entry() {
    for prepare_ahead in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WalConfig {
            prepare_ahead,
            // Several steps of 256 KiB per file, and several files.
            ..config(FsyncPolicy::Always, 1 << 20)
        };
        let seg = key("ahead", 1);
        let store = std::sync::Arc::new(WalStore::open(dir.path(), cfg.clone()).unwrap());
        let writers: Vec<_> = (0..8u64)
            .map(|w| {
                let store = store.clone();
                let seg = seg.clone();
                tokio::spawn(async move {
                    for i in 0..300u64 {
                        let id = w * 1000 + i;
                        store
                            .append(&seg, &[payload(id, 1000 + (id % 3000) as usize)], u64::MAX)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        assert_eq!(
            store.prepared_bytes() > 0,
            prepare_ahead,
            "prepared {} bytes with prepare_ahead {prepare_ahead}",
            store.prepared_bytes()
        );
        let check = |entries: Vec<Bytes>| {
            assert_eq!(entries.len(), 8 * 300);
            let mut ids: Vec<u64> = entries
                .iter()
                .map(|e| {
                    let text = std::str::from_utf8(e).unwrap();
                    let (id, _) = text.split_once(':').unwrap();
                    let id: u64 = id.parse().unwrap();
                    assert_eq!(*e, payload(id, 1000 + (id % 3000) as usize), "entry {id}");
                    id
                })
                .collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), 8 * 300, "every entry exactly once");
        };
        check(read_all(&store, &seg).await);
        assert!(
            part_file(dir.path(), &seg, 2).exists(),
            "the entries span several files"
        );
        drop(store);
        let store = WalStore::open(dir.path(), cfg).unwrap();
        check(read_all(&store, &seg).await);
    }
}

/// Contract 5 across a restart: the byte limit counts the payload bytes
/// recovered from files (several of them here), not only this run's.
#[tokio::test]
async fn given_a_byte_limit_when_the_store_reopens_should_count_the_bytes_written_before() {
    let tmp = tempfile::tempdir().unwrap();
    let seg = key("bytes", 1);
    // 300 entries of 100 bytes over 8 KiB files: 30,000 payload bytes.
    write_and_close(
        tmp.path(),
        &seg,
        config(FsyncPolicy::Always, 8192),
        300,
        100,
    )
    .await;
    assert!(part_file(tmp.path(), &seg, 2).exists(), "several files");
    let store = WalStore::open(tmp.path(), config(FsyncPolicy::Always, 8192)).unwrap();
    let limit = |bytes| walrus_core::SegmentLimit {
        entries: u64::MAX,
        bytes,
    };
    assert!(matches!(
        store
            .append_within(&seg, &[payload(300, 1)], limit(30_000))
            .await,
        Err(Error::SegmentSealed(_))
    ));
    let a = store
        .append_within(&seg, &[payload(300, 100)], limit(30_100))
        .await
        .unwrap();
    assert_eq!(a.first_index, 300);
    assert!(matches!(
        store
            .append_within(&seg, &[payload(301, 1)], limit(30_100))
            .await,
        Err(Error::SegmentSealed(_))
    ));
}
