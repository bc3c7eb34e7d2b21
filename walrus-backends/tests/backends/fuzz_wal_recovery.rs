//! Fuzzing WAL recovery over randomly damaged files: append known entries
//! to several topics and segments (some sealed, some of those with a tail
//! cut by `seal_at`, some spanning several files), close, then flip, zero,
//! overwrite or truncate random bytes, or remove a file, anywhere in the
//! WAL directory (headers, records, seal files), and reopen twice.
//!
//! Oracle, whatever recovery chooses (refuse to open, quarantine the damaged
//! segment, or cut a torn tail): never a panic, and every entry any read
//! returns is the entry appended at that index: a prefix of what was
//! written, never a byte that was not. A read that fails says the data is
//! corrupt ([`Error::Corrupt`]) and names the file, never anything else (an
//! `Internal` error is a bug). A segment with a seal file is known and
//! sealed; when its seal file is intact, `info` gives the sealed count and
//! its reads go on up to that count or stop at a `Corrupt` error, never
//! end early. Long runs: see `fuzz_common` and docs/testing.md.

use crate::fuzz_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use fuzz_common::fuzz;
use proptest::prelude::*;
use walrus_backends::wal::{FsyncPolicy, WalConfig, WalStore};
use walrus_core::{Error, LogStore, SegmentKey, TopicName};

/// Small files, so that segments span several and damage meets headers.
const FILE: u64 = 8192;

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
        .expect("a current-thread runtime")
}

/// One segment's writes: batches of entries, then sealed or left open.
#[derive(Debug, Clone)]
struct SegmentPlan {
    batches: Vec<Vec<Vec<u8>>>,
    seal: bool,
    /// Sealed with `seal_at`, this many entries short (a failover cutting
    /// an unacknowledged tail, which stays in the files unserved).
    cut: usize,
}

#[derive(Debug, Clone)]
struct Plan {
    always: bool,
    /// Per topic, its segments 1, 2, ... in order.
    topics: Vec<Vec<SegmentPlan>>,
    sync_at_end: bool,
}

#[derive(Debug, Clone)]
enum Damage {
    Flip { file: usize, at: usize, mask: u8 },
    Set { file: usize, at: usize, to: u8 },
    Zero { file: usize, at: usize, len: usize },
    Truncate { file: usize, at: usize },
    Remove { file: usize },
}

fn plan() -> impl Strategy<Value = Plan> {
    let entry = prop::collection::vec(any::<u8>(), 0..700);
    let batch = prop::collection::vec(entry, 1..4);
    let cut = prop_oneof![2 => Just(0usize), 1 => 1..20usize];
    let segment = (prop::collection::vec(batch, 0..12), any::<bool>(), cut)
        .prop_map(|(batches, seal, cut)| SegmentPlan { batches, seal, cut });
    let topic = prop::collection::vec(segment, 1..3);
    (
        any::<bool>(),
        prop::collection::vec(topic, 1..3),
        any::<bool>(),
    )
        .prop_map(|(always, topics, sync_at_end)| Plan {
            always,
            topics,
            sync_at_end,
        })
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => (any::<usize>(), any::<usize>(), 1..=255u8)
            .prop_map(|(file, at, mask)| Damage::Flip { file, at, mask }),
        2 => (any::<usize>(), any::<usize>(), any::<u8>())
            .prop_map(|(file, at, to)| Damage::Set { file, at, to }),
        2 => (any::<usize>(), any::<usize>(), 1..256usize)
            .prop_map(|(file, at, len)| Damage::Zero { file, at, len }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(file, at)| Damage::Truncate { file, at }),
        1 => any::<usize>().prop_map(|file| Damage::Remove { file }),
    ]
}

fn key(topic: usize, segment: usize) -> SegmentKey {
    let name = TopicName::new(format!("t{topic}")).expect("a valid name");
    SegmentKey::new(name, segment as u64 + 1)
}

/// Every entry is tagged with where it was written, so a misplaced entry
/// cannot pass for the right one.
fn tagged(k: &SegmentKey, i: usize, body: &[u8]) -> Bytes {
    let mut e = format!("{}/{}/{i}:", k.topic.as_str(), k.segment).into_bytes();
    e.extend_from_slice(body);
    Bytes::from(e)
}

/// Writes the plan; returns what each segment holds, in order.
fn write(dir: &Path, plan: &Plan) -> BTreeMap<SegmentKey, Vec<Bytes>> {
    let fsync = if plan.always {
        FsyncPolicy::Always
    } else {
        FsyncPolicy::Never
    };
    let mut written = BTreeMap::new();
    runtime().block_on(async {
        let store = WalStore::open(dir, config(fsync)).expect("a fresh WAL opens");
        for (t, segments) in plan.topics.iter().enumerate() {
            for (s, seg) in segments.iter().enumerate() {
                let k = key(t, s);
                let mut entries: Vec<Bytes> = Vec::new();
                for batch in &seg.batches {
                    let batch: Vec<Bytes> = batch
                        .iter()
                        .enumerate()
                        .map(|(j, b)| tagged(&k, entries.len() + j, b))
                        .collect();
                    store
                        .append(&k, &batch, u64::MAX)
                        .await
                        .expect("appending to an undamaged WAL");
                    entries.extend(batch);
                }
                if seg.seal && !entries.is_empty() {
                    let keep = entries.len().saturating_sub(seg.cut).max(1);
                    let n = if keep < entries.len() {
                        store.seal_at(&k, keep as u64).await.expect("sealing at")
                    } else {
                        store.seal(&k).await.expect("sealing")
                    };
                    assert_eq!(n, keep as u64);
                    entries.truncate(keep);
                }
                if !entries.is_empty() {
                    written.insert(k, entries);
                }
            }
        }
        if plan.sync_at_end {
            store.sync().await.expect("syncing");
        }
    });
    written
}

fn files(dir: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

fn apply(dir: &Path, damage: &[Damage]) {
    for d in damage {
        let all = files(dir);
        if all.is_empty() {
            return;
        }
        let pick = |file: usize| &all[file % all.len()];
        let edit = |file: usize, f: &mut dyn FnMut(&mut Vec<u8>)| {
            let p = pick(file);
            let mut bytes = std::fs::read(p).expect("reading a WAL file");
            f(&mut bytes);
            std::fs::write(p, &bytes).expect("writing the damage");
        };
        match *d {
            Damage::Flip { file, at, mask } => edit(file, &mut |b| {
                if !b.is_empty() {
                    let n = b.len();
                    b[at % n] ^= mask;
                }
            }),
            Damage::Set { file, at, to } => edit(file, &mut |b| {
                if !b.is_empty() {
                    let n = b.len();
                    b[at % n] = to;
                }
            }),
            Damage::Zero { file, at, len } => edit(file, &mut |b| {
                if !b.is_empty() {
                    let start = at % b.len();
                    let end = (start + len).min(b.len());
                    b[start..end].fill(0);
                }
            }),
            Damage::Truncate { file, at } => edit(file, &mut |b| {
                let n = b.len() + 1;
                b.truncate(at % n);
            }),
            Damage::Remove { file } => {
                std::fs::remove_file(pick(file)).expect("removing a WAL file");
            }
        }
    }
}

fn seal_file(dir: &Path, k: &SegmentKey) -> PathBuf {
    dir.join(k.topic.as_str())
        .join(format!("{:020}.sealed", k.segment))
}

/// The count in an intact seal file (the format the WAL writes: count,
/// then the CRC32C of its bytes); `None` when it is missing or damaged.
fn intact_seal(path: &Path) -> Option<u64> {
    let b = std::fs::read(path).ok()?;
    (b.len() == 12 && crc32c::crc32c(&b[..8]).to_le_bytes() == b[8..12])
        .then(|| u64::from_le_bytes(b[..8].try_into().expect("8 bytes")))
}

/// A read error on damaged data must say so and name the file.
fn check_read_error(dir: &Path, k: &SegmentKey, at: usize, e: &Error) -> Result<(), TestCaseError> {
    match e {
        Error::Corrupt(msg) => prop_assert!(
            msg.contains(&dir.display().to_string()),
            "{k:?}: a read at {at} answered Corrupt without naming a file: {msg}"
        ),
        other => prop_assert!(
            false,
            "{k:?}: a read at {at} answered {other:?}, not Corrupt naming a file"
        ),
    }
    Ok(())
}

/// Opens the damaged WAL and reads everything it offers; checks each entry.
fn reopen_and_check(
    dir: &Path,
    always: bool,
    written: &BTreeMap<SegmentKey, Vec<Bytes>>,
) -> Result<(), TestCaseError> {
    let fsync = if always {
        FsyncPolicy::Always
    } else {
        FsyncPolicy::Never
    };
    runtime().block_on(async {
        let store = match WalStore::open(dir, config(fsync)) {
            Ok(s) => s,
            // Refusing to open is allowed; it must only say why.
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                return Ok(());
            }
        };
        if let Ok(listed) = store.segments().await {
            for (k, _) in &listed {
                prop_assert!(written.contains_key(k), "a segment never written: {k:?}");
            }
        }
        for (k, entries) in written {
            let info = store.info(k).await;
            prop_assert!(info.is_ok(), "{k:?}: info failed: {info:?}");
            let info = info.unwrap_or_default();
            let seal = seal_file(dir, k);
            let sealed_count = intact_seal(&seal);
            if seal.exists() {
                prop_assert!(
                    info.is_some_and(|i| i.sealed),
                    "{k:?} has a seal file, but info says {info:?}"
                );
            }
            if let Some(n) = sealed_count {
                prop_assert_eq!(n, entries.len() as u64, "{:?}: the seal file's count", k);
                prop_assert_eq!(
                    info.map(|i| i.count),
                    Some(n),
                    "{:?}: an intact seal file gives the count",
                    k
                );
            }
            // In batches from the start, then one by one from the middle:
            // both must agree with what was appended.
            let mut at = 0usize;
            loop {
                let batch = match store.read(k, at as u64, 7, 4096).await {
                    Ok(b) => b,
                    Err(e) => {
                        check_read_error(dir, k, at, &e)?;
                        break;
                    }
                };
                if batch.is_empty() {
                    // A sealed count is a promise: reads end there, or say
                    // why they cannot go on.
                    if let Some(n) = sealed_count {
                        prop_assert_eq!(at as u64, n, "{:?}: reads ended early", k);
                    }
                    break;
                }
                for e in &batch {
                    prop_assert!(
                        at < entries.len(),
                        "{k:?}: entry {at} returned, only {} were appended",
                        entries.len()
                    );
                    prop_assert_eq!(e, &entries[at], "{:?}: entry {} differs", k, at);
                    at += 1;
                }
            }
            let mid = entries.len() / 2;
            match store.read(k, mid as u64, 1, usize::MAX).await {
                Ok(one) => {
                    if let Some(e) = one.first() {
                        prop_assert_eq!(e, &entries[mid], "{:?}: entry {} differs", k, mid);
                    }
                }
                Err(e) => check_read_error(dir, k, mid, &e)?,
            }
        }
        Ok(())
    })
}

#[test]
fn given_a_wal_damaged_anywhere_when_reopened_should_return_only_appended_entries() {
    let input = (plan(), prop::collection::vec(damage(), 1..5));
    fuzz(file!(), "wal recovery", 48, input, |(plan, damage)| {
        // tmpfs where there is one: the cases are many, the fsyncs cheap.
        let dir = match tempfile::Builder::new().tempdir_in("/dev/shm") {
            Ok(d) => d,
            Err(_) => tempfile::tempdir().expect("a temp dir"),
        };
        let written = write(dir.path(), &plan);
        apply(dir.path(), &damage);
        // Twice: what the first recovery leaves must recover the same way.
        reopen_and_check(dir.path(), plan.always, &written)?;
        reopen_and_check(dir.path(), plan.always, &written)
    });
}
