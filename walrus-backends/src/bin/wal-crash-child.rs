//! Test helper for the WAL crash test (`tests/backends/wal_crash.rs`), not a tool:
//! appends to a WAL from several tasks forever and prints one line per
//! acknowledged entry, `ACK <segment> <index> <writer> <seq> <len>`, until
//! it is killed.
//!
//! Usage: `wal-crash-child <dir> <round>`; with `WAL_CRASH_NO_FALLOCATE=1`
//! the store reserves space as on a file system without `fallocate`.

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use walrus_backends::wal::{FsyncPolicy, WalConfig, WalStore};
use walrus_core::locks::MutexExt;
use walrus_core::{LogStore, SegmentKey, TopicName};

#[path = "../../tests/backends/wal_common/payload.rs"]
mod crash_payload;
use crash_payload::payload;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(round)) = (args.next(), args.next()) else {
        eprintln!("usage: wal-crash-child <dir> <round>");
        std::process::exit(2);
    };
    let round: u32 = round.parse().expect("round is a number");
    let config = WalConfig {
        fsync: FsyncPolicy::Always,
        segment_file_bytes: 64 * 1024,
        inject_fallocate_unsupported: std::env::var("WAL_CRASH_NO_FALLOCATE")
            .is_ok_and(|v| v == "1"),
        ..WalConfig::default()
    };
    let store = Arc::new(WalStore::open(&dir, config).unwrap_or_else(|e| {
        eprintln!("cannot open WAL: {e}");
        std::process::exit(1);
    }));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let mut tasks = Vec::new();
    for w in 0..8u32 {
        let writer = round * 100 + w;
        let store = store.clone();
        let out = out.clone();
        tasks.push(tokio::spawn(async move {
            let topic = TopicName::new("crash").expect("valid topic");
            let mut rng = (writer as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut seq = 0u64;
            loop {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let segment = 1 + rng % 2;
                let n = 1 + (rng >> 8) % 3;
                let batch: Vec<(u64, Bytes)> = (0..n)
                    .map(|k| {
                        let len = ((rng >> (16 + 4 * k)) % 3000) as usize;
                        let s = seq + k;
                        (s, payload(writer, s, len))
                    })
                    .collect();
                seq += n;
                let entries: Vec<Bytes> = batch.iter().map(|(_, p)| p.clone()).collect();
                let key = SegmentKey::new(topic.clone(), segment);
                match store.append(&key, &entries, u64::MAX).await {
                    Ok(a) => {
                        let mut text = String::new();
                        for (i, (s, p)) in batch.iter().enumerate() {
                            text.push_str(&format!(
                                "ACK {segment} {} {writer} {s} {}\n",
                                a.first_index + i as u64,
                                p.len()
                            ));
                        }
                        let mut o = out.lock_or_recover();
                        o.write_all(text.as_bytes()).expect("parent reads stdout");
                        o.flush().expect("parent reads stdout");
                    }
                    Err(e) => {
                        eprintln!("append failed: {e}");
                        std::process::exit(1);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
