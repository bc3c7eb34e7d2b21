//! A damaged file stops only its segment: the store opens, every other
//! segment works, the damaged one serves its entries up to the damage,
//! answers reads past it with an error naming file and byte, and takes no
//! appends or seal. Nothing in its files is changed (an operator may still
//! restore them).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use walrus_backends::wal::{FsyncPolicy, WalConfig, WalStore};
use walrus_core::{Error, LogStore, SegmentKey, TopicName};

fn key(topic: &str, segment: u64) -> SegmentKey {
    SegmentKey::new(TopicName::new(topic).unwrap(), segment)
}

fn config() -> WalConfig {
    WalConfig {
        fsync: FsyncPolicy::Always,
        segment_file_bytes: 8192,
        ..WalConfig::default()
    }
}

fn entry(topic: &str, i: u64) -> Bytes {
    Bytes::from(format!("{topic} entry {i} {}", "x".repeat(200)))
}

fn part_file(dir: &Path, seg: &SegmentKey, part: u32) -> PathBuf {
    dir.join(seg.topic.as_str())
        .join(format!("{:020}.{part:06}.wal", seg.segment))
}

/// Two topics with `n` entries each (several files per segment), then a
/// graceful close (everything checkpointed: damage anywhere is damage).
async fn two_topics(dir: &Path, n: u64) {
    let store = WalStore::open(dir, config()).unwrap();
    for topic in ["good", "bad"] {
        for i in 0..n {
            store
                .append(&key(topic, 1), &[entry(topic, i)], u64::MAX)
                .await
                .unwrap();
        }
    }
}

/// Offset of record `i` in a file's bytes.
fn record_offset(bytes: &[u8], i: usize) -> usize {
    let mut off = 64;
    for _ in 0..i {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        off += 8 + len;
    }
    off
}

async fn read_all(store: &WalStore, seg: &SegmentKey) -> Result<Vec<Bytes>, Error> {
    let mut out = Vec::new();
    loop {
        let batch = store.read(seg, out.len() as u64, 3, usize::MAX).await?;
        if batch.is_empty() {
            return Ok(out);
        }
        out.extend(batch);
    }
}

async fn assert_good_topic_works(store: &WalStore, n: u64) {
    let good = key("good", 1);
    let want: Vec<Bytes> = (0..n).map(|i| entry("good", i)).collect();
    assert_eq!(read_all(store, &good).await.unwrap(), want);
    let a = store
        .append(&good, &[entry("good", n)], u64::MAX)
        .await
        .unwrap();
    assert_eq!(a.first_index, n);
}

#[tokio::test]
async fn given_a_flipped_byte_in_a_middle_file_when_opened_should_quarantine_only_that_segment() {
    let dir = tempfile::tempdir().unwrap();
    two_topics(dir.path(), 90).await;
    let bad = key("bad", 1);
    let f1 = part_file(dir.path(), &bad, 1);
    let in_f0 = {
        let b = std::fs::read(part_file(dir.path(), &bad, 0)).unwrap();
        (0..)
            .take_while(|&i| {
                let off = record_offset(&b, i);
                u32::from_le_bytes(b[off..off + 4].try_into().unwrap()) != u32::MAX
            })
            .count() as u64
    };
    let mut bytes = std::fs::read(&f1).unwrap();
    let at = record_offset(&bytes, 2);
    bytes[at + 12] ^= 0x20;
    std::fs::write(&f1, &bytes).unwrap();

    let store = WalStore::open(dir.path(), config()).expect("the store opens");
    assert_good_topic_works(&store, 90).await;
    let served = in_f0 + 2;
    assert_eq!(store.info(&bad).await.unwrap().unwrap().count, served);
    let got = store.read(&bad, 0, 1000, usize::MAX).await.unwrap();
    assert_eq!(
        got,
        (0..served).map(|i| entry("bad", i)).collect::<Vec<_>>()
    );
    let err = store.read(&bad, served, 10, usize::MAX).await.unwrap_err();
    let Error::Corrupt(msg) = &err else {
        panic!("expected Corrupt, got {err}")
    };
    assert!(
        msg.contains(&f1.display().to_string()) && msg.contains(&format!("byte {at}")),
        "the error names file and byte: {msg}"
    );
    assert!(matches!(
        store.append(&bad, &[entry("bad", 999)], u64::MAX).await,
        Err(Error::Corrupt(_))
    ));
    assert!(matches!(store.seal(&bad).await, Err(Error::Corrupt(_))));
    assert_eq!(store.health().quarantined_segments, vec![bad.clone()]);
    drop(store);
    assert_eq!(
        std::fs::read(&f1).unwrap(),
        bytes,
        "the damaged file is left as found, for an operator to restore"
    );
}

#[tokio::test]
async fn given_a_damaged_seal_file_when_opened_should_serve_the_files_and_refuse_to_report_a_count()
{
    let dir = tempfile::tempdir().unwrap();
    two_topics(dir.path(), 10).await;
    let bad = key("bad", 1);
    {
        let store = WalStore::open(dir.path(), config()).unwrap();
        assert_eq!(store.seal(&bad).await.unwrap(), 10);
    }
    let seal = dir
        .path()
        .join("bad")
        .join(format!("{:020}.sealed", bad.segment));
    std::fs::write(&seal, b"garbage").unwrap();

    let store = WalStore::open(dir.path(), config()).expect("the store opens");
    assert_good_topic_works(&store, 10).await;
    let got = store.read(&bad, 0, 1000, usize::MAX).await.unwrap();
    assert_eq!(got, (0..10).map(|i| entry("bad", i)).collect::<Vec<_>>());
    let err = store.read(&bad, 10, 10, usize::MAX).await.unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt(m) if m.contains(".sealed")),
        "{err}"
    );
    assert!(
        store.seal(&bad).await.is_err(),
        "its final count is unknown: never reported"
    );
    assert_eq!(store.health().quarantined_segments, vec![bad]);
}

#[tokio::test]
async fn given_a_missing_middle_file_when_opened_should_serve_the_files_before_it() {
    let dir = tempfile::tempdir().unwrap();
    two_topics(dir.path(), 90).await;
    let bad = key("bad", 1);
    assert!(
        part_file(dir.path(), &bad, 2).exists(),
        "three files at least"
    );
    std::fs::remove_file(part_file(dir.path(), &bad, 1)).unwrap();

    let store = WalStore::open(dir.path(), config()).expect("the store opens");
    assert_good_topic_works(&store, 90).await;
    let served = store.info(&bad).await.unwrap().unwrap().count;
    assert!(served > 0);
    let err = store.read(&bad, served, 10, usize::MAX).await.unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt(m) if m.contains("000001.wal")),
        "{err}"
    );
}

#[tokio::test]
async fn given_a_file_with_a_foreign_header_when_opened_should_quarantine_and_name_it() {
    let dir = tempfile::tempdir().unwrap();
    two_topics(dir.path(), 10).await;
    let bad = key("bad", 1);
    let f0 = part_file(dir.path(), &bad, 0);
    let mut bytes = std::fs::read(&f0).unwrap();
    bytes[0] = b'X';
    std::fs::write(&f0, &bytes).unwrap();

    let store = WalStore::open(dir.path(), config()).expect("the store opens");
    assert_good_topic_works(&store, 10).await;
    assert_eq!(store.info(&bad).await.unwrap().unwrap().count, 0);
    let err = store.read(&bad, 0, 10, usize::MAX).await.unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt(m) if m.contains("000000.wal") && m.contains("byte 0")),
        "{err}"
    );
}

/// `two_topics` with `n` entries each, then "bad" sealed; returns how many
/// entries each of its files holds.
async fn sealed_bad_topic(dir: &Path, n: u64) -> Vec<u64> {
    two_topics(dir, n).await;
    let bad = key("bad", 1);
    {
        let store = WalStore::open(dir, config()).unwrap();
        assert_eq!(store.seal(&bad).await.unwrap(), n);
    }
    let mut per_file = Vec::new();
    for part in 0.. {
        let Ok(b) = std::fs::read(part_file(dir, &bad, part)) else {
            break;
        };
        per_file.push(
            (0..)
                .take_while(|&i| {
                    let off = record_offset(&b, i);
                    let len = u32::from_le_bytes(b[off..off + 4].try_into().unwrap());
                    len != u32::MAX && len != 0
                })
                .count() as u64,
        );
    }
    per_file
}

/// What a sealed segment with a missing file must look like: still sealed
/// with its count, quarantined, its entries before the missing file
/// served, and a read at the first entry past them answered with a
/// `Corrupt` error that names the missing file.
async fn assert_sealed_and_missing(store: &WalStore, n: u64, served: u64, missing: &Path) {
    let bad = key("bad", 1);
    assert_eq!(
        store.info(&bad).await.unwrap(),
        Some(walrus_core::SegmentInfo {
            count: n,
            sealed: true
        }),
        "a seal file with parts missing still gives the segment's final count"
    );
    assert_eq!(
        store.seal(&bad).await.unwrap(),
        n,
        "the seal file is intact: its count is known"
    );
    let got = read_all(store, &bad).await;
    let err = got.expect_err("a read past what is intact is an error, never the end");
    let Error::Corrupt(msg) = &err else {
        panic!("expected Corrupt, got {err}")
    };
    assert!(
        msg.starts_with(&missing.display().to_string()),
        "the error names the missing file first: {msg}"
    );
    let intact = store.read(&bad, 0, 1000, usize::MAX).await;
    if served == 0 {
        assert!(matches!(intact, Err(Error::Corrupt(_))), "{intact:?}");
    } else {
        assert_eq!(
            intact.unwrap(),
            (0..served).map(|i| entry("bad", i)).collect::<Vec<_>>()
        );
    }
    assert!(matches!(
        store.append(&bad, &[entry("bad", 999)], u64::MAX).await,
        Err(Error::SegmentSealed(_))
    ));
    assert_eq!(store.health().quarantined_segments, vec![bad]);
}

#[tokio::test]
async fn given_a_sealed_one_file_segment_whose_file_is_removed_when_read_should_answer_corrupt_naming_the_file(
) {
    let dir = tempfile::tempdir().unwrap();
    let per_file = sealed_bad_topic(dir.path(), 10).await;
    assert_eq!(per_file.len(), 1, "one file");
    let bad = key("bad", 1);
    let f0 = part_file(dir.path(), &bad, 0);
    std::fs::remove_file(&f0).unwrap();

    let store = WalStore::open(dir.path(), config()).expect("the store opens");
    assert_eq!(
        store.health().quarantined_segments,
        vec![bad.clone()],
        "a missing file is seen on open: quarantined before any read"
    );
    assert_good_topic_works(&store, 10).await;
    assert_sealed_and_missing(&store, 10, 0, &f0).await;
}

#[tokio::test]
async fn given_a_sealed_segment_without_its_first_file_when_opened_should_stay_sealed_and_name_the_file(
) {
    let dir = tempfile::tempdir().unwrap();
    let per_file = sealed_bad_topic(dir.path(), 90).await;
    assert!(per_file.len() >= 3, "three files at least: {per_file:?}");
    let bad = key("bad", 1);
    let f0 = part_file(dir.path(), &bad, 0);
    std::fs::remove_file(&f0).unwrap();

    let store = WalStore::open(dir.path(), config()).expect("the store opens");
    assert_eq!(store.health().quarantined_segments, vec![bad.clone()]);
    assert_good_topic_works(&store, 90).await;
    assert_sealed_and_missing(&store, 90, 0, &f0).await;
}

#[tokio::test]
async fn given_a_sealed_segment_without_a_middle_file_when_read_should_serve_up_to_it_then_name_it()
{
    let dir = tempfile::tempdir().unwrap();
    let per_file = sealed_bad_topic(dir.path(), 90).await;
    assert!(per_file.len() >= 3, "three files at least: {per_file:?}");
    let bad = key("bad", 1);
    let f1 = part_file(dir.path(), &bad, 1);
    std::fs::remove_file(&f1).unwrap();

    let store = WalStore::open(dir.path(), config()).expect("the store opens");
    assert_eq!(store.health().quarantined_segments, vec![bad.clone()]);
    assert_good_topic_works(&store, 90).await;
    assert_sealed_and_missing(&store, 90, per_file[0], &f1).await;
}

#[tokio::test]
async fn given_a_sealed_segment_without_its_last_file_when_read_should_serve_up_to_it_then_name_it()
{
    let dir = tempfile::tempdir().unwrap();
    let per_file = sealed_bad_topic(dir.path(), 90).await;
    assert!(per_file.len() >= 3, "three files at least: {per_file:?}");
    let bad = key("bad", 1);
    let last = per_file.len() as u32 - 1;
    let gone = part_file(dir.path(), &bad, last);
    std::fs::remove_file(&gone).unwrap();

    let store = WalStore::open(dir.path(), config()).expect("the store opens");
    assert_good_topic_works(&store, 90).await;
    let served = per_file[..last as usize].iter().sum();
    assert_sealed_and_missing(&store, 90, served, &gone).await;
}

#[tokio::test]
async fn given_a_damaged_seal_file_when_opened_should_still_report_the_segment_sealed() {
    let dir = tempfile::tempdir().unwrap();
    sealed_bad_topic(dir.path(), 10).await;
    let bad = key("bad", 1);
    let seal = dir
        .path()
        .join("bad")
        .join(format!("{:020}.sealed", bad.segment));
    std::fs::write(&seal, b"garbage").unwrap();

    let store = WalStore::open(dir.path(), config()).expect("the store opens");
    let info = store.info(&bad).await.unwrap().expect("a known segment");
    assert!(
        info.sealed,
        "a seal file exists, so the segment was sealed: {info:?}"
    );
    assert!(matches!(
        store.append(&bad, &[entry("bad", 999)], u64::MAX).await,
        Err(Error::SegmentSealed(_))
    ));
    assert!(
        matches!(store.seal(&bad).await, Err(Error::Corrupt(_))),
        "its final count is unknown: never reported"
    );
    assert_eq!(store.health().quarantined_segments, vec![bad]);
}
