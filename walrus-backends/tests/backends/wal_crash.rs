//! Crash test: a child process appends from several tasks and reports each
//! acknowledged entry; it is killed with SIGKILL at a random moment, 20
//! rounds on the same directory. After each kill the WAL is reopened: every
//! acknowledged entry must be there byte for byte, and every entry served
//! must be a whole entry some writer wrote (nothing past a torn tail).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use walrus_backends::wal::{WalConfig, WalStore};
use walrus_core::{LogStore, SegmentKey, TopicName};

use crate::wal_common::payload::payload;

/// `(writer, seq)` if `bytes` is exactly an entry a writer produced.
fn decode(bytes: &[u8]) -> Option<(u32, u64)> {
    if bytes.len() < 16 {
        return None;
    }
    let writer = u32::from_le_bytes(bytes[0..4].try_into().ok()?);
    let seq = u64::from_le_bytes(bytes[4..12].try_into().ok()?);
    let len = u32::from_le_bytes(bytes[12..16].try_into().ok()?) as usize;
    (len == bytes.len() && payload(writer, seq, len) == bytes).then_some((writer, seq))
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_sigkill_at_random_moments_when_reopened_should_keep_every_acknowledged_entry() {
    crash_rounds(false).await;
}

/// The same through the fallback for file systems without `fallocate`
/// (issue 14): space reserved by writing zeros, which must never overwrite
/// a record, not even one of a torn tail being recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_no_fallocate_and_sigkill_at_random_moments_when_reopened_should_keep_every_acknowledged_entry(
) {
    crash_rounds(true).await;
}

async fn crash_rounds(no_fallocate: bool) {
    let seed = std::env::var("WAL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash test seed {seed} (rerun with WAL_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    // (segment, index) -> (writer, seq, len) for every acknowledged entry.
    let mut acked: HashMap<(u64, u64), (u32, u64, usize)> = HashMap::new();
    let topic = TopicName::new("crash").unwrap();

    for round in 0..20u32 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wal-crash-child"))
            .arg(dir.path())
            .arg(round.to_string())
            .env(
                "WAL_CRASH_NO_FALLOCATE",
                if no_fallocate { "1" } else { "0" },
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn wal-crash-child");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the child to be appending, then let it run a random while.
        let started = Instant::now();
        let mut lines = Vec::new();
        while lines.is_empty() && started.elapsed() < Duration::from_secs(10) {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(10)) {
                lines.push(l);
            }
        }
        assert!(
            !lines.is_empty(),
            "round {round}: the child acknowledged nothing in 10 s"
        );
        std::thread::sleep(Duration::from_millis(rng.next() % 300));
        child.kill().expect("SIGKILL the child");
        let status = child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        assert!(
            !status.success(),
            "round {round}: the child must die by the signal"
        );

        let mut new = 0;
        for line in &lines {
            let f: Vec<&str> = line.split(' ').collect();
            // A line cut by the kill has no newline and fails to parse fully:
            // its entry counts as unacknowledged.
            let [_, seg, idx, w, s, len] = f[..] else {
                continue;
            };
            let (Ok(seg), Ok(idx), Ok(w), Ok(s), Ok(len)) =
                (seg.parse(), idx.parse(), w.parse(), s.parse(), len.parse())
            else {
                continue;
            };
            let prev = acked.insert((seg, idx), (w, s, len));
            assert!(
                prev.is_none() || prev == Some((w, s, len)),
                "round {round}: index {idx} of segment {seg} was acknowledged twice, as {prev:?} and {:?}",
                (w, s, len)
            );
            new += 1;
        }

        let config = WalConfig {
            inject_fallocate_unsupported: no_fallocate,
            ..WalConfig::default()
        };
        let store = WalStore::open(dir.path(), config).expect("reopen after kill");
        let mut served = 0;
        for seg in [1u64, 2] {
            let key = SegmentKey::new(topic.clone(), seg);
            let count = store.info(&key).await.unwrap().map_or(0, |i| i.count);
            let mut all = Vec::new();
            while (all.len() as u64) < count {
                let batch = store
                    .read(&key, all.len() as u64, 1000, usize::MAX)
                    .await
                    .unwrap();
                assert!(
                    !batch.is_empty(),
                    "round {round}: count {count} but read stopped at {}",
                    all.len()
                );
                all.extend(batch);
            }
            for (i, e) in all.iter().enumerate() {
                assert!(
                    decode(e).is_some(),
                    "round {round}: segment {seg} entry {i} ({} bytes) is not an entry anyone wrote",
                    e.len()
                );
            }
            for (&(s, idx), &(w, q, len)) in acked.iter().filter(|((s, _), _)| *s == seg) {
                assert!(
                    idx < count,
                    "round {round}: acknowledged entry {s}:{idx} lost (count {count})"
                );
                assert_eq!(
                    all[idx as usize],
                    payload(w, q, len),
                    "round {round}: acknowledged entry {s}:{idx} changed"
                );
            }
            served += all.len();
        }
        println!(
            "round {round}: {new} new acks, {} acked in total, {served} served",
            acked.len()
        );
    }
}
