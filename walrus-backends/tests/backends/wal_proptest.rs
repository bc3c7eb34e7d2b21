//! Property tests of recovery: random byte flips, zeroed ranges and
//! truncations in the tail of a segment always recover to a valid prefix
//! of what was written (or, before the last synced point, to an error that
//! names the file); never to garbage and never to a panic.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use proptest::prelude::*;
use walrus_backends::wal::{FsyncPolicy, WalConfig, WalStore};
use walrus_core::{Error, LogStore, SegmentKey, TopicName};

const FILE: u64 = 8192;

#[derive(Debug, Clone)]
enum Damage {
    Flip { at: usize, mask: u8 },
    Zero { at: usize, len: usize },
    Truncate { at: usize },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0..FILE as usize, 1..=255u8).prop_map(|(at, mask)| Damage::Flip { at, mask }),
        (0..FILE as usize, 1..64usize).prop_map(|(at, len)| Damage::Zero { at, len }),
        (0..FILE as usize).prop_map(|at| Damage::Truncate { at }),
    ]
}

fn key() -> SegmentKey {
    SegmentKey::new(TopicName::new("prop").unwrap(), 1)
}

fn config(fsync: FsyncPolicy) -> WalConfig {
    WalConfig {
        fsync,
        segment_file_bytes: FILE,
        ..WalConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn parts(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("prop"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        // A next file created ahead holds no record yet: not part of the
        // written data the damage is aimed at.
        .filter(|p| std::fs::read(p).unwrap()[64..72] != [0u8; 8])
        .collect();
    v.sort();
    v
}

/// Writes `entries` one append each, returns how many entries sit in the
/// files before the last one (those the damage cannot reach).
fn write(dir: &Path, fsync: FsyncPolicy, entries: &[Bytes]) -> usize {
    let rt = runtime();
    rt.block_on(async {
        let store = WalStore::open(dir, config(fsync)).unwrap();
        for e in entries {
            store
                .append(&key(), std::slice::from_ref(e), u64::MAX)
                .await
                .unwrap();
        }
    });
    // Count entries in all but the last file by scanning their bytes.
    let files = parts(dir);
    let mut before_last = 0;
    for p in &files[..files.len() - 1] {
        let b = std::fs::read(p).unwrap();
        let mut off = 64;
        loop {
            let len = u32::from_le_bytes(b[off..off + 4].try_into().unwrap());
            if len == u32::MAX {
                break;
            }
            before_last += 1;
            off += 8 + len as usize;
        }
    }
    before_last
}

/// Applies the damage to the last file (past its header); returns the
/// smallest damaged offset.
fn apply(path: &Path, damage: &[Damage]) -> usize {
    let mut bytes = std::fs::read(path).unwrap();
    let mut lowest = usize::MAX;
    for d in damage {
        match *d {
            Damage::Flip { at, mask } => {
                let at = at.max(64).min(bytes.len() - 1);
                bytes[at] ^= mask;
                lowest = lowest.min(at);
            }
            Damage::Zero { at, len } => {
                let at = at.max(64).min(bytes.len() - 1);
                let end = (at + len).min(bytes.len());
                if bytes[at..end].iter().any(|&b| b != 0) {
                    lowest = lowest.min(at);
                }
                bytes[at..end].fill(0);
            }
            Damage::Truncate { at } => {
                let at = at.max(64).min(bytes.len());
                if at < bytes.len() {
                    lowest = lowest.min(at);
                }
                bytes.truncate(at);
            }
        }
    }
    std::fs::write(path, &bytes).unwrap();
    lowest
}

fn read_back(dir: &Path, fsync: FsyncPolicy) -> Result<Vec<Bytes>, Error> {
    runtime().block_on(async {
        let store = WalStore::open(dir, config(fsync))?;
        let count = store.info(&key()).await?.map_or(0, |i| i.count);
        let mut all = Vec::new();
        while (all.len() as u64) < count {
            let batch = store
                .read(&key(), all.len() as u64, 100, usize::MAX)
                .await?;
            assert!(
                !batch.is_empty(),
                "count {count} but read stopped at {}",
                all.len()
            );
            all.extend(batch);
        }
        // The store still takes appends after recovery, right after the prefix.
        let a = store
            .append(&key(), &[Bytes::from_static(b"after")], u64::MAX)
            .await?;
        assert_eq!(a.first_index, count);
        Ok(all)
    })
}

fn entries() -> impl Strategy<Value = Vec<Bytes>> {
    prop::collection::vec(
        prop::collection::vec(any::<u8>(), 0..600).prop_map(Bytes::from),
        1..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Without syncs nothing is known durable: any damage is a torn tail.
    #[test]
    fn given_tail_damage_without_syncs_when_reopened_should_recover_a_valid_prefix(
        written in entries(),
        damage in prop::collection::vec(damage(), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let safe = write(dir.path(), FsyncPolicy::Never, &written);
        let last = parts(dir.path()).pop().unwrap();
        apply(&last, &damage);
        let got = read_back(dir.path(), FsyncPolicy::Never).expect("tail damage is never an error");
        prop_assert!(got.len() <= written.len());
        prop_assert!(got.len() >= safe, "entries in earlier files ({safe}) were lost: {}", got.len());
        prop_assert_eq!(&got[..], &written[..got.len()]);
    }

    /// With fsync=always the header's checkpoint marks what was synced:
    /// damage behind it is reported (naming the file), damage past it is
    /// a torn tail.
    #[test]
    fn given_damage_with_syncs_when_reopened_should_recover_a_prefix_or_name_the_file(
        written in entries(),
        damage in prop::collection::vec(damage(), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), FsyncPolicy::Always, &written);
        let last = parts(dir.path()).pop().unwrap();
        let header = std::fs::read(&last).unwrap();
        let checkpoint = u64::from_le_bytes(header[32..40].try_into().unwrap()) as usize;
        let lowest = apply(&last, &damage);
        match read_back(dir.path(), FsyncPolicy::Always) {
            Ok(got) => {
                prop_assert!(got.len() <= written.len());
                prop_assert_eq!(&got[..], &written[..got.len()]);
            }
            Err(Error::Corrupt(msg)) => {
                prop_assert!(lowest < checkpoint, "damage at {lowest} is past the checkpoint {checkpoint}, yet: {msg}");
                let name = last.file_name().unwrap().to_string_lossy().into_owned();
                prop_assert!(msg.contains(&name), "{msg}");
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}
