//! WAL throughput benchmark (issue 3), with the disk's own limit measured
//! in the same run.
//!
//! ```text
//! cargo bench -p walrus-backends --bench wal
//! WAL_BENCH_DIR=/path/on/the/disk WAL_BENCH_SECS=3 cargo bench -p walrus-backends --bench wal
//! WAL_BENCH_ROUNDS=5 WAL_BENCH_SPARES=1 cargo bench -p walrus-backends --bench wal
//! WAL_BENCH_COMPARE_SPARES=1 cargo bench -p walrus-backends --bench wal
//! WAL_BENCH_COMPARE_PREPARE=1 cargo bench -p walrus-backends --bench wal
//! WAL_BENCH_COMPARE_NO_FALLOCATE=1 cargo bench -p walrus-backends --bench wal
//! WAL_BENCH_FILE_BYTES=1048576 WAL_BENCH_NO_RAW=1 cargo bench -p walrus-backends --bench wal
//! ```
//!
//! The data goes to a temporary directory under `WAL_BENCH_DIR` (default:
//! the current directory, i.e. the package directory under `cargo bench`),
//! removed afterwards.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use walrus_backends::wal::{FsyncPolicy, WalConfig, WalStore};
use walrus_core::{LogStore, SegmentKey, TopicName};

const MIB: f64 = 1024.0 * 1024.0;

struct Row {
    case: String,
    ops: f64,
    mib: f64,
    extra: String,
}

fn print(row: &Row) {
    println!(
        "| {:<56} | {:>12.0} | {:>9.1} | {} |",
        row.case, row.ops, row.mib, row.extra
    );
}

/// How the blocks of the raw test's file were reserved.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RawFile {
    /// `fallocate`: unwritten extents, converted by the first sync that
    /// covers them (a metadata write: the extent tree, or a journal commit
    /// on a journaling file system).
    Fallocated,
    /// Zeros written and synced beforehand: every sync is a pure overwrite.
    Zeroed,
}

const RAW_ZEROED_LEN: u64 = 256 << 20;

/// Writes and syncs the zero-filled file the `Zeroed` raw cases overwrite
/// (once per run: overwriting it again keeps its extents written).
fn prepare_zeroed(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("raw-zeroed");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create zeroed raw file");
    let zeros = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < RAW_ZEROED_LEN {
        file.write_all_at(&zeros, off).expect("zero raw file");
        off += zeros.len() as u64;
    }
    file.sync_all().expect("sync zeroed raw file");
    path
}

/// Sequential pwrite + fdatasync: what the disk gives a writer that syncs
/// every `chunk` bytes, into a file of the given kind.
fn raw(dir: &Path, kind: RawFile, chunk: usize, secs: f64) -> Row {
    let (path, len, file) = match kind {
        RawFile::Fallocated => {
            let path = dir.join(format!("raw-{chunk}"));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .expect("create raw file");
            let len: u64 = 1 << 30;
            rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len)
                .expect("reserve 1 GiB for the raw test");
            (Some(path), len, file)
        }
        RawFile::Zeroed => {
            let file = OpenOptions::new()
                .write(true)
                .open(dir.join("raw-zeroed"))
                .expect("open zeroed raw file");
            (None, RAW_ZEROED_LEN, file)
        }
    };
    let buf = vec![0xa5u8; chunk];
    let start = Instant::now();
    let mut off = 0u64;
    let mut syncs = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        file.write_all_at(&buf, off).expect("raw write");
        file.sync_data().expect("raw fdatasync");
        off += chunk as u64;
        if off + chunk as u64 > len {
            off = 0;
        }
        syncs += 1;
    }
    let t = start.elapsed().as_secs_f64();
    drop(file);
    if let Some(path) = path {
        let _ = std::fs::remove_file(&path);
    }
    Row {
        case: format!(
            "raw write+fdatasync, {} KiB per sync, {}",
            chunk / 1024,
            match kind {
                RawFile::Fallocated => "fallocated",
                RawFile::Zeroed => "zero-filled",
            }
        ),
        ops: syncs as f64 / t,
        mib: (syncs as f64 * chunk as f64) / MIB / t,
        extra: format!("{:.0} µs per sync", t * 1e6 / syncs as f64),
    }
}

/// `WAL_BENCH_SPARES`: the store's spare_files (default: the default).
fn spare_files() -> usize {
    std::env::var("WAL_BENCH_SPARES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(WalConfig::default().spare_files)
}

/// `WAL_BENCH_FILE_BYTES`: the stores' segment_file_bytes (default: the
/// default). Small files put a file boundary every few milliseconds.
fn file_bytes() -> u64 {
    std::env::var("WAL_BENCH_FILE_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(WalConfig::default().segment_file_bytes)
}

/// `appenders` tasks each appending `batch` entries of `size` bytes per
/// call to one segment, for `secs`.
async fn wal(dir: &Path, case: WalCase, secs: f64) -> Row {
    let WalCase {
        fsync,
        size,
        appenders,
        batch,
        spares,
        prepare,
        no_fallocate,
    } = case;
    let sub = dir.join(
        format!("wal-{fsync}-{size}-{appenders}-{batch}-{spares}-{prepare}-{no_fallocate}")
            .replace(':', "_"),
    );
    let store = Arc::new(
        WalStore::open(
            &sub,
            WalConfig {
                fsync,
                spare_files: spares,
                prepare_ahead: prepare,
                segment_file_bytes: file_bytes(),
                inject_fallocate_unsupported: no_fallocate,
                ..WalConfig::default()
            },
        )
        .expect("open WAL"),
    );
    // A long-running store keeps its spare files ready; wait for them so
    // that the case starts in that steady state.
    let ready_by = Instant::now() + Duration::from_secs(60);
    while store.spare_files() < store.config().spare_files && Instant::now() < ready_by {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seg = SegmentKey::new(TopicName::new("bench").expect("valid"), 1);
    let entries: Vec<Bytes> = (0..batch)
        .map(|_| Bytes::from(vec![0x5au8; size]))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..appenders {
        let (store, seg, entries, stop) =
            (store.clone(), seg.clone(), entries.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                store
                    .append(&seg, &entries, u64::MAX)
                    .await
                    .expect("append");
                lat.push(t.elapsed().as_micros() as u32);
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("appender"));
    }
    let t = start.elapsed().as_secs_f64();
    // Entries are counted once durable, whatever the policy: sync first.
    store.sync().await.expect("sync");
    let count = store
        .info(&seg)
        .await
        .expect("info")
        .expect("segment")
        .count;
    assert_eq!(
        count,
        (lat.len() * batch) as u64,
        "every acknowledged entry is counted"
    );
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let files = std::fs::read_dir(sub.join("bench"))
        .map(|d| d.filter(|e| e.is_ok()).count())
        .unwrap_or(0);
    let entries_per_s = count as f64 / t;
    let flushes = store.flush_count();
    let room_waits = store.room_waits();
    let group = if flushes > 0 && fsync == FsyncPolicy::Always {
        format!(
            ", {:.1} appends per flush",
            lat.len() as f64 / flushes as f64
        )
    } else {
        String::new()
    };
    drop(store);
    let _ = std::fs::remove_dir_all(&sub);
    Row {
        case: format!(
            "fsync={fsync}, {size} B, {appenders} appender{}{}",
            if appenders == 1 { "" } else { "s" },
            if batch > 1 {
                format!(", batches of {batch}")
            } else {
                String::new()
            }
        ) + &if spares != spare_files() {
            format!(", {spares} spare files")
        } else {
            String::new()
        } + if prepare != WalConfig::default().prepare_ahead && fsync == FsyncPolicy::Always {
            if prepare {
                ", blocks written ahead"
            } else {
                ", no blocks written ahead"
            }
        } else {
            ""
        } + if no_fallocate {
            ", no fallocate (zeros)"
        } else {
            ""
        },
        ops: entries_per_s,
        mib: entries_per_s * size as f64 / MIB,
        extra: format!(
            "append latency p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs, {files} files, {room_waits} waits for room{group}",
            pct(0.5),
            pct(0.99),
            pct(0.999),
            lat.last().copied().unwrap_or(0)
        ),
    }
}

#[derive(Clone, Copy)]
enum Case {
    Raw(RawFile, usize),
    Wal(WalCase),
}

/// One WAL case: the policy, the load and the store's tuning.
#[derive(Clone, Copy)]
struct WalCase {
    fsync: FsyncPolicy,
    size: usize,
    appenders: usize,
    batch: usize,
    spares: usize,
    prepare: bool,
    /// Through the reservation fallback for file systems without
    /// `fallocate` (the injected EOPNOTSUPP).
    no_fallocate: bool,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let secs: f64 = std::env::var("WAL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let rounds: usize = std::env::var("WAL_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let base = std::env::var("WAL_BENCH_DIR").unwrap_or_else(|_| ".".into());
    let dir = tempfile::Builder::new()
        .prefix(".wal-bench-")
        .tempdir_in(&base)
        .expect("temporary directory under WAL_BENCH_DIR");
    let fs = std::process::Command::new("df")
        .args(["-hT"])
        .arg(dir.path())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .last()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    println!(
        "WAL benchmark in {} ({rounds} rounds of {secs} s per case, cases interleaved; medians)",
        dir.path().display()
    );
    println!("file system: {fs}");
    println!("WAL file size (segment_file_bytes): {}", file_bytes());

    let always = |size, appenders| {
        Case::Wal(WalCase {
            fsync: FsyncPolicy::Always,
            size,
            appenders,
            batch: 1,
            spares: spare_files(),
            prepare: WalConfig::default().prepare_ahead,
            no_fallocate: false,
        })
    };
    let never = |size, batch| {
        Case::Wal(WalCase {
            fsync: FsyncPolicy::Never,
            size,
            appenders: 1,
            batch,
            spares: spare_files(),
            prepare: WalConfig::default().prepare_ahead,
            no_fallocate: false,
        })
    };
    let cases = [
        Case::Raw(RawFile::Fallocated, 4 << 10),
        Case::Raw(RawFile::Fallocated, 64 << 10),
        Case::Raw(RawFile::Fallocated, 1 << 20),
        Case::Raw(RawFile::Zeroed, 4 << 10),
        Case::Raw(RawFile::Zeroed, 64 << 10),
        Case::Raw(RawFile::Zeroed, 1 << 20),
        always(100, 1),
        always(100, 16),
        always(100, 64),
        always(1024, 1),
        always(1024, 16),
        always(1024, 64),
        never(100, 1000),
        never(1024, 1000),
        never(100, 1),
        Case::Wal(WalCase {
            fsync: FsyncPolicy::Interval(Duration::from_millis(200)),
            size: 100,
            appenders: 1,
            batch: 1000,
            spares: spare_files(),
            prepare: WalConfig::default().prepare_ahead,
            no_fallocate: false,
        }),
        // 64 KiB per synced append: with WAL_BENCH_FILE_BYTES=1048576 every
        // 16th append crosses into a new file, so p99 is the latency of
        // the appends at file boundaries.
        always(64 << 10, 1),
    ];
    // WAL_BENCH_COMPARE_SPARES=<n>: the 1 KiB fsync=always cases again with
    // n spare files, interleaved with the others (same disk moods).
    let compare: Option<usize> = std::env::var("WAL_BENCH_COMPARE_SPARES")
        .ok()
        .and_then(|s| s.parse().ok());
    let mut cases = cases.to_vec();
    if let Some(spares) = compare {
        for appenders in [1, 16, 64] {
            cases.push(Case::Wal(WalCase {
                fsync: FsyncPolicy::Always,
                size: 1024,
                appenders,
                batch: 1,
                spares,
                prepare: WalConfig::default().prepare_ahead,
                no_fallocate: false,
            }));
        }
    }
    // WAL_BENCH_COMPARE_PREPARE=1: the fsync=always cases again with the
    // opposite of the default `prepare_ahead`, interleaved.
    if std::env::var("WAL_BENCH_COMPARE_PREPARE").is_ok_and(|v| v == "1") {
        for size in [100, 1024] {
            for appenders in [1, 16, 64] {
                cases.push(Case::Wal(WalCase {
                    fsync: FsyncPolicy::Always,
                    size,
                    appenders,
                    batch: 1,
                    spares: spare_files(),
                    prepare: !WalConfig::default().prepare_ahead,
                    no_fallocate: false,
                }));
            }
        }
    }
    // WAL_BENCH_COMPARE_NO_FALLOCATE=1: the WAL cases again through the
    // fallback for file systems without fallocate (zeros written), in the
    // same run.
    if std::env::var("WAL_BENCH_COMPARE_NO_FALLOCATE").is_ok_and(|v| v == "1") {
        let base: Vec<WalCase> = cases
            .iter()
            .filter_map(|c| match c {
                Case::Wal(w)
                    if w.spares == spare_files()
                        && w.prepare == WalConfig::default().prepare_ahead =>
                {
                    Some(*w)
                }
                _ => None,
            })
            .collect();
        for w in base {
            cases.push(Case::Wal(WalCase {
                no_fallocate: true,
                ..w
            }));
        }
    }
    // WAL_BENCH_NO_RAW=1: skip the raw disk cases (and the summary that
    // compares against them).
    let no_raw = std::env::var("WAL_BENCH_NO_RAW").is_ok_and(|v| v == "1");
    if no_raw {
        cases.retain(|c| !matches!(c, Case::Raw(..)));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if !no_raw {
        prepare_zeroed(dir.path());
    }
    // Interleaved rounds: a shared disk's mood swings hit every case alike.
    let mut results: Vec<Vec<Row>> = cases.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        eprintln!("round {} of {rounds}", round + 1);
        for (case, out) in cases.iter().zip(results.iter_mut()) {
            out.push(match *case {
                Case::Raw(kind, chunk) => raw(dir.path(), kind, chunk, secs),
                Case::Wal(case) => rt.block_on(wal(dir.path(), case, secs)),
            });
        }
    }
    println!(
        "| {:<56} | {:>12} | {:>9} | notes (last round) |",
        "case", "entries/s", "MiB/s"
    );
    println!("|{:-<58}|{:->14}|{:->11}|-------|", "", "", "");
    let mut medians = Vec::new();
    for rows in &results {
        let mut ops: Vec<f64> = rows.iter().map(|r| r.ops).collect();
        let mut mib: Vec<f64> = rows.iter().map(|r| r.mib).collect();
        let last = rows.last().expect("at least one round");
        let row = Row {
            case: last.case.clone(),
            ops: median(&mut ops),
            mib: median(&mut mib),
            extra: format!(
                "{}; entries/s over rounds {:.0}..{:.0}",
                last.extra,
                ops[0],
                ops[ops.len() - 1]
            ),
        };
        print(&row);
        medians.push(row);
    }
    if no_raw {
        return;
    }
    let m = |i: usize| &medians[i];
    println!();
    println!(
        "group commit, 16 vs 1 appender: 100 B {:.1}x, 1 KiB {:.1}x (target >= 10x)",
        m(7).ops / m(6).ops,
        m(10).ops / m(9).ops
    );
    for (raw, what) in [
        (1, "fallocated 64 KiB"),
        (2, "fallocated 1 MiB"),
        (4, "zero-filled 64 KiB"),
        (5, "zero-filled 1 MiB"),
    ] {
        println!(
            "fsync=always, 64 appenders x 1 KiB: {:.0}% of raw {what}-per-sync bandwidth (target >= 50%)",
            100.0 * m(11).mib / m(raw).mib
        );
    }
    println!(
        "fsync=never, 100 B batches of 1000: {:.2} M entries/s (target >= 1 M)",
        m(12).ops / 1e6
    );
}
