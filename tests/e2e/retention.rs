//! Retention on three real `walrus-server` processes: closed segments past
//! a topic's retention leave every node's disk, the first offset moves
//! while a reader is reading (it is told, and goes on at the first
//! retained entry, never seeing an entry at the wrong offset), and a node
//! that was down (kill -9) while they were deleted deletes its copies when
//! it is back; retention by bytes counts what each closed segment's leader
//! reports.

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use distributed_walrus::cli_client::{ClientError, ReadOptions, RetainSetting, Retention};

/// The WAL files of segment `segment` of `topic` on node `id`.
fn segment_files(dir: &Path, id: u64, topic: &str, segment: u64) -> Vec<String> {
    let prefix = format!("{segment:020}.");
    let Ok(files) = std::fs::read_dir(data_path(dir, id).join("wal").join(topic)) else {
        return Vec::new();
    };
    files
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Waits (up to 30 s) until `check` holds.
async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < Duration::from_secs(30), "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_first(cluster: &Cluster, via: u64, want: u64) {
    let c = cluster.client(via);
    let start = Instant::now();
    loop {
        if let Ok((first, _)) = c.offsets("logs").await {
            if first == want {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the first offset of logs never became {want} on node {via}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the reader saw: (offset, payload) in order, and the jumps it was
/// told to make (from, to).
#[derive(Default)]
struct Seen {
    entries: Vec<(u64, String)>,
    jumps: Vec<(u64, u64)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_retention_when_segments_close_should_delete_them_from_every_disk_while_a_reader_reads_and_on_the_return_of_a_node_that_was_down(
) {
    let _serial = serial().await;
    let t0 = Instant::now();
    let mut opts = ClusterOptions::default().segment_limit(10);
    opts.env
        .push(("WALRUS_RETENTION_CHECK_MS".into(), "100".into()));
    let mut cluster = Cluster::start(3, opts).await;
    cluster.register(1, "logs").await;
    // Segments 1..=4 closed (leaders 1, 2, 3, 1), 5 open on node 2.
    for i in 0..40u64 {
        cluster
            .client(1 + i % 3)
            .put("logs", &format!("e{i}"))
            .await
            .unwrap();
    }
    let dir = cluster.dir.path().to_path_buf();
    for (node, segment) in [(1, 1), (2, 2), (3, 3), (1, 4)] {
        assert!(
            !segment_files(&dir, node, "logs", segment).is_empty(),
            "node {node} holds segment {segment}"
        );
    }

    // A reader on node 2, one entry at a time, slowly.
    let stop = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let reader = {
        let client = cluster.client(2);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut started = Some(started_tx);
            let mut at = 0u64;
            let options = ReadOptions {
                max_entries: 1,
                wait: Duration::from_millis(200),
                ..ReadOptions::default()
            };
            while !stop.load(Ordering::SeqCst) {
                match client.read("logs", at, options).await {
                    Ok(batch) => {
                        for e in &batch.entries {
                            seen.entries.push((e.offset, e.payload.clone()));
                        }
                        at = batch.next;
                        if at == 5 {
                            if let Some(tx) = started.take() {
                                let _ = tx.send(());
                            }
                        }
                    }
                    Err(ClientError::Server(e)) if e.starts_with("deleted: ") => {
                        let first = client.offsets("logs").await.unwrap().0;
                        assert!(first > at, "told {e} at {at}, first is {first}");
                        seen.jumps.push((at, first));
                        at = first;
                    }
                    Err(e) if e.is_retryable() => {}
                    Err(e) => panic!("READ logs {at}: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            seen
        })
    };
    started_rx.await.expect("the reader read 5 entries");

    // Node 3 is down (kill -9) while retention deletes.
    cluster.nodes.get_mut(&3).unwrap().kill9();
    let answer = cluster
        .client(1)
        .send_raw("CONFIG logs RETAIN entries=10")
        .await
        .unwrap();
    assert_eq!(answer, "OK");
    // Closed segments may hold 10 entries: 1, 2 and 3 go (40 -> 10).
    wait_first(&cluster, 1, 30).await;
    wait_until("nodes 1 and 2 delete segments 1 and 2", || {
        segment_files(&dir, 1, "logs", 1).is_empty() && segment_files(&dir, 2, "logs", 2).is_empty()
    })
    .await;
    assert!(
        !segment_files(&dir, 1, "logs", 4).is_empty(),
        "segment 4 is retained"
    );
    assert!(
        !segment_files(&dir, 3, "logs", 3).is_empty(),
        "node 3 was down: its copy is still there"
    );

    // More entries close segment 5: retention follows (4 goes too).
    for i in 40..50u64 {
        cluster
            .client(1 + i % 2)
            .put("logs", &format!("e{i}"))
            .await
            .unwrap();
    }
    wait_first(&cluster, 2, 40).await;
    wait_until("node 1 deletes segment 4", || {
        segment_files(&dir, 1, "logs", 4).is_empty()
    })
    .await;

    // Node 3 comes back and deletes what was deleted without it.
    cluster.nodes.get_mut(&3).unwrap().spawn();
    cluster.wait_ready(&[3], Duration::from_secs(30)).await;
    wait_until("node 3 deletes its copy of segment 3", || {
        segment_files(&dir, 3, "logs", 3).is_empty()
    })
    .await;
    wait_first(&cluster, 3, 40).await;

    // The reader goes on to the end, then stops.
    let end = 50;
    let c2 = cluster.client(2);
    let start = Instant::now();
    loop {
        let (_, e) = c2.offsets("logs").await.unwrap();
        if e == end {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();
    assert!(
        !seen.jumps.is_empty(),
        "the reader was never moved on by retention (read {} entries)",
        seen.entries.len()
    );
    for (offset, payload) in &seen.entries {
        assert_eq!(
            payload,
            &format!("e{offset}"),
            "an entry at the wrong offset"
        );
    }
    let offsets: Vec<u64> = seen.entries.iter().map(|(o, _)| *o).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "in order, once");
    assert_eq!(offsets.last(), Some(&(end - 1)), "read to the end");
    report(
        "retention deletes on every node, a node back from kill -9 included",
        t0.elapsed(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_retention_by_bytes_when_segments_close_should_delete_the_oldest_from_every_disk() {
    let _serial = serial().await;
    let t0 = Instant::now();
    let mut opts = ClusterOptions::default().segment_limit(10);
    opts.env
        .push(("WALRUS_RETENTION_CHECK_MS".into(), "100".into()));
    let cluster = Cluster::start(3, opts).await;
    let keep = Retention {
        max_bytes: Some(2500),
        ..Retention::default()
    };
    cluster
        .client(2)
        .register_retaining("logs", RetainSetting::Limits(keep))
        .await
        .unwrap();
    // 100-byte entries: segments 1..=4 close with 1,000 bytes each.
    let payload = |i: u64| format!("{i:03}{}", "x".repeat(97));
    for i in 0..40u64 {
        cluster
            .client(1 + i % 3)
            .put("logs", payload(i))
            .await
            .unwrap();
    }
    // 4,000 bytes closed, at most 2,500 kept: 1 and 2 go, 3 and 4 stay.
    for via in 1..=3 {
        wait_first(&cluster, via, 20).await;
    }
    let dir = cluster.dir.path().to_path_buf();
    let leaders = match cluster.client(1).state("logs").await.unwrap()["segment_leaders"].clone() {
        serde_json::Value::Object(m) => m,
        other => panic!("segment_leaders: {other}"),
    };
    let leader = |segment: u64| leaders[&segment.to_string()].as_u64().unwrap();
    wait_until("the leaders of segments 1 and 2 delete their files", || {
        segment_files(&dir, leader(1), "logs", 1).is_empty()
            && segment_files(&dir, leader(2), "logs", 2).is_empty()
    })
    .await;
    for segment in [3, 4] {
        assert!(
            !segment_files(&dir, leader(segment), "logs", segment).is_empty(),
            "segment {segment} is retained"
        );
    }
    let batch = cluster
        .client(3)
        .read("logs", 20, ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(batch.entries.len(), 10, "segment 3, whole");
    for e in &batch.entries {
        assert_eq!(e.payload, payload(e.offset));
    }
    let config = cluster.client(1).config("logs").await.unwrap();
    assert_eq!((config.retention, config.first), (Some(keep), 20));
    report("e2e retention by bytes", t0.elapsed());
}
