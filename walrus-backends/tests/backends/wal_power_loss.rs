//! Power-loss model of the WAL: at some instant the machine loses power,
//! and the disk keeps exactly what was synced by then. The model takes, for
//! every file of the segment, the bytes before the store's durable end
//! (`WalStore::durable_end`, which only the syncer's flushes move) and
//! zeros for the rest, writes that image over the files once the store is
//! closed, and reopens. Whatever a reader was served before the cut (what a
//! GET cursor may have moved past) must still be there, at the same
//! indexes, whatever the fsync policy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use walrus_backends::wal::{FsyncPolicy, WalConfig, WalStore};
use walrus_core::{LogStore, SegmentKey, TopicName};

/// Bytes of a file header, synced when the file was created.
const HEADER_LEN: usize = 64;

fn key() -> SegmentKey {
    SegmentKey::new(TopicName::new("power").unwrap(), 1)
}

fn config(fsync: FsyncPolicy) -> WalConfig {
    WalConfig {
        fsync,
        // Small files, so that the segment spans several.
        segment_file_bytes: 8192,
        ..WalConfig::default()
    }
}

fn payload(i: u64) -> Bytes {
    let mut v = format!("entry {i}:").into_bytes();
    v.resize(100 + (i as usize * 37) % 900, b'a' + (i % 26) as u8);
    Bytes::from(v)
}

fn part_files(dir: &Path, seg: &SegmentKey) -> Vec<(u32, PathBuf)> {
    let topic_dir = dir.join(seg.topic.as_str());
    let prefix = format!("{:020}.", seg.segment);
    let mut out: Vec<(u32, PathBuf)> = std::fs::read_dir(&topic_dir)
        .map(|rd| {
            rd.filter_map(|e| {
                let name = e.ok()?.file_name().to_string_lossy().into_owned();
                let part = name.strip_prefix(&prefix)?.strip_suffix(".wal")?;
                Some((part.parse().ok()?, topic_dir.join(&name)))
            })
            .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// What the disk holds if the power goes now: every file cut at the durable
/// end (files past it keep only their header, synced at creation).
fn power_cut_image(store: &WalStore, seg: &SegmentKey) -> Vec<(PathBuf, Vec<u8>)> {
    let durable = store.durable_end(seg);
    part_files(store.dir(), seg)
        .into_iter()
        .map(|(part, path)| {
            let mut bytes = std::fs::read(&path).unwrap();
            let keep = match durable {
                Some((p, _)) if part < p => bytes.len(),
                Some((p, off)) if part == p => off as usize,
                _ => HEADER_LEN,
            };
            bytes[keep..].fill(0);
            (path, bytes)
        })
        .collect()
}

fn restore(image: Vec<(PathBuf, Vec<u8>)>) {
    for (path, bytes) in image {
        std::fs::write(path, bytes).unwrap();
    }
}

async fn read_from(store: &WalStore, seg: &SegmentKey, from: u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    loop {
        let batch = store
            .read(seg, from + out.len() as u64, 7, usize::MAX)
            .await
            .unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

/// Appends, reads like a GET, cuts the power, reopens: everything read must
/// survive, and entries written after the restart must show up at or past
/// the cursor, none of them behind it.
async fn read_then_power_cut(fsync: FsyncPolicy) {
    let dir = tempfile::tempdir().unwrap();
    let seg = key();
    let store = WalStore::open(dir.path(), config(fsync)).unwrap();
    for i in 0..40 {
        store.append(&seg, &[payload(i)], u64::MAX).await.unwrap();
    }
    let served = read_from(&store, &seg, 0).await;
    assert_eq!(
        served.len(),
        40,
        "a reader at the tail is served what was appended, not starved until a timer ({fsync})"
    );
    let cursor = served.len() as u64;
    let image = power_cut_image(&store, &seg);
    drop(store);
    restore(image);

    let store = WalStore::open(dir.path(), config(fsync)).unwrap();
    let count = store.info(&seg).await.unwrap().map_or(0, |i| i.count);
    assert!(
        count >= cursor,
        "{fsync}: after the power cut the segment holds {count} entries but a reader was already served {cursor}: its cursor points past durable data"
    );
    assert_eq!(
        read_from(&store, &seg, 0).await[..cursor as usize],
        served[..]
    );
    store
        .append(&seg, &[payload(1000)], u64::MAX)
        .await
        .unwrap();
    let after_cursor = read_from(&store, &seg, cursor).await;
    assert_eq!(
        after_cursor.last(),
        Some(&payload(1000)),
        "{fsync}: an entry acknowledged after the restart must be delivered to the saved cursor"
    );
}

#[tokio::test]
async fn given_fsync_never_when_power_is_cut_after_a_read_should_keep_every_entry_read() {
    read_then_power_cut(FsyncPolicy::Never).await;
}

#[tokio::test]
async fn given_fsync_interval_when_power_is_cut_after_a_read_should_keep_every_entry_read() {
    // An interval far longer than the test: only reads and seals flush.
    read_then_power_cut(FsyncPolicy::Interval(Duration::from_secs(3600))).await;
}

#[tokio::test]
async fn given_fsync_always_when_power_is_cut_after_a_read_should_keep_every_entry_read() {
    read_then_power_cut(FsyncPolicy::Always).await;
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test]
async fn given_appends_reads_and_syncs_interleaved_when_power_is_cut_repeatedly_should_never_lose_what_was_read_or_counted(
) {
    let policies = [
        FsyncPolicy::Never,
        FsyncPolicy::Interval(Duration::from_secs(3600)),
        FsyncPolicy::Always,
    ];
    for seed in 1..=12u64 {
        let fsync = policies[(seed % 3) as usize];
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let dir = tempfile::tempdir().unwrap();
        let seg = key();
        // Entries some reader was served, by index: they must survive.
        let mut served: Vec<Bytes> = Vec::new();
        let mut next_payload = 0u64;
        for cut in 0..4 {
            let store = WalStore::open(dir.path(), config(fsync)).unwrap();
            let counted = store.info(&seg).await.unwrap().map_or(0, |i| i.count);
            assert!(
                counted >= served.len() as u64,
                "seed {seed}, {fsync}, cut {cut}: count {counted} after a power cut is behind the {} entries served",
                served.len()
            );
            let now = read_from(&store, &seg, 0).await;
            assert_eq!(
                now[..served.len()],
                served[..],
                "seed {seed}, {fsync}, cut {cut}"
            );
            // Durable now (recovery flushes what it found).
            served = now;
            for _ in 0..rng.below(30) {
                match rng.below(4) {
                    0 | 1 => {
                        let n = 1 + rng.below(3);
                        let batch: Vec<Bytes> = (0..n).map(|j| payload(next_payload + j)).collect();
                        next_payload += n;
                        store.append(&seg, &batch, u64::MAX).await.unwrap();
                    }
                    2 => {
                        let batch = store
                            .read(&seg, served.len() as u64, 5, usize::MAX)
                            .await
                            .unwrap();
                        served.extend(batch);
                    }
                    _ => {
                        let info = store.info(&seg).await.unwrap();
                        // A count is as good as a read: a cursor may be
                        // built from it (a seal reports it).
                        let counted = info.map_or(0, |i| i.count);
                        if counted > served.len() as u64 {
                            let rest = read_from(&store, &seg, served.len() as u64).await;
                            served.extend(rest);
                        }
                    }
                }
            }
            let image = power_cut_image(&store, &seg);
            drop(store);
            restore(image);
        }
    }
}
