//! WAL throughput benchmark (issue 3), with the disk's own limit measured
//! in the same run.
//!
//! ```text
//! cargo bench -p walrus-backends --bench wal
//! WAL_BENCH_DIR=/path/on/the/disk WAL_BENCH_SECS=3 cargo bench -p walrus-backends --bench wal
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
        "| {:<44} | {:>12.0} | {:>9.1} | {} |",
        row.case, row.ops, row.mib, row.extra
    );
}

/// Sequential pwrite + fdatasync into a preallocated file: what the disk
/// gives a writer that syncs every `chunk` bytes.
fn raw(dir: &Path, chunk: usize, secs: f64) -> Row {
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
    let buf = vec![0xa5u8; chunk];
    let start = Instant::now();
    let mut off = 0u64;
    let mut syncs = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        file.write_all_at(&buf, off).expect("raw write");
        file.sync_data().expect("raw fdatasync");
        off = (off + chunk as u64) % (len - chunk as u64);
        syncs += 1;
    }
    let t = start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Row {
        case: format!("raw write+fdatasync, {} KiB per sync", chunk / 1024),
        ops: syncs as f64 / t,
        mib: (syncs as f64 * chunk as f64) / MIB / t,
        extra: format!("{:.0} µs per sync", t * 1e6 / syncs as f64),
    }
}

/// `appenders` tasks each appending `batch` entries of `size` bytes per
/// call to one segment, for `secs`.
async fn wal(
    dir: &Path,
    fsync: FsyncPolicy,
    size: usize,
    appenders: usize,
    batch: usize,
    secs: f64,
) -> Row {
    let sub = dir.join(format!("wal-{fsync}-{size}-{appenders}-{batch}").replace(':', "_"));
    let store = Arc::new(
        WalStore::open(
            &sub,
            WalConfig {
                fsync,
                ..WalConfig::default()
            },
        )
        .expect("open WAL"),
    );
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
    let entries_per_s = count as f64 / t;
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
        ),
        ops: entries_per_s,
        mib: entries_per_s * size as f64 / MIB,
        extra: format!("append latency p50 {} µs, p99 {} µs", pct(0.5), pct(0.99)),
    }
}

fn main() {
    let secs: f64 = std::env::var("WAL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
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
        "WAL benchmark in {} ({secs} s per case)",
        dir.path().display()
    );
    println!("file system: {fs}");
    println!(
        "| {:<44} | {:>12} | {:>9} | notes |",
        "case", "entries/s", "MiB/s"
    );
    println!("|{:-<46}|{:->14}|{:->11}|-------|", "", "", "");

    for chunk in [4 << 10, 64 << 10, 1 << 20] {
        print(&raw(dir.path(), chunk, secs));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for size in [100, 1024] {
            for appenders in [1, 16, 64] {
                print(&wal(dir.path(), FsyncPolicy::Always, size, appenders, 1, secs).await);
            }
        }
        for size in [100, 1024] {
            print(&wal(dir.path(), FsyncPolicy::Never, size, 1, 1000, secs).await);
        }
        print(&wal(dir.path(), FsyncPolicy::Never, 100, 1, 1, secs).await);
        print(
            &wal(
                dir.path(),
                FsyncPolicy::Interval(Duration::from_millis(200)),
                100,
                1,
                1000,
                secs,
            )
            .await,
        );
    });
}
