//! Reads by offset on three real `walrus-server` processes: every entry at
//! its offset across rollovers, read through a node that is not the
//! consensus leader, payloads with spaces and newlines byte for byte, and
//! the same after kill -9 of every node and a restart; a long-polling READ
//! woken by a PUT through another node.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use distributed_walrus::cli_client::{CliClient, ReadOptions};

/// Reads `topic` from offset 0 to its end in batches of 7 (which cross
/// the segment boundaries, every 10 entries), resending READs that were
/// not carried out (a node still starting).
async fn read_all(reader: &CliClient, topic: &str) -> Vec<(u64, String)> {
    let options = ReadOptions {
        max_entries: 7,
        ..ReadOptions::default()
    };
    let start = Instant::now();
    let mut got = Vec::new();
    let mut next = 0;
    loop {
        let batch = match reader.read(topic, next, options).await {
            Ok(batch) => batch,
            Err(e) if e.is_retryable() && start.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => panic!("READ {topic} {next}: {e}"),
        };
        if batch.entries.is_empty() {
            assert_eq!(batch.next, next);
            return got;
        }
        assert_eq!(batch.entries[0].offset, next);
        next = batch.next;
        got.extend(batch.entries.into_iter().map(|e| (e.offset, e.payload)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_segments_of_ten_on_three_nodes_when_reading_by_offset_through_a_non_leader_should_get_every_entry_at_its_offset(
) {
    let _serial = serial().await;
    let t0 = Instant::now();
    let mut cluster = Cluster::start(3, ClusterOptions::default().segment_limit(10)).await;
    cluster.register(1, "offsets").await;
    let payloads: Vec<String> = (0..95)
        .map(|i| format!("entry {i} with  two spaces\nand\ta newline\n"))
        .collect();
    for (i, p) in payloads.iter().enumerate() {
        cluster
            .client(1 + i as u64 % 3)
            .put("offsets", p)
            .await
            .unwrap();
    }
    let leader = cluster.leader(1).await.expect("a consensus leader");
    let via = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let reader = cluster.client(via);
    let want: Vec<(u64, String)> = (0..).zip(payloads.iter().cloned()).collect();
    assert_eq!(
        read_all(&reader, "offsets").await,
        want,
        "every entry at its offset, byte for byte"
    );

    // kill -9 of every node, then a restart: no offset moves.
    cluster.kill9_and_restart_all().await;
    let reader = cluster.client(via);
    assert_eq!(
        read_all(&reader, "offsets").await,
        want,
        "the same entries at the same offsets after the restart"
    );
    assert_eq!(reader.offsets("offsets").await.unwrap(), (0, 95));
    let err = reader
        .read("offsets", 96, ReadOptions::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("offset 96 is past the end"),
        "{err}"
    );

    // A reader waiting at the end is answered by the next PUT, made
    // through another node to the segment leader.
    let waiting = {
        let reader = cluster.client(via);
        tokio::spawn(async move {
            let wait = ReadOptions {
                wait: Duration::from_secs(20),
                ..ReadOptions::default()
            };
            let batch = reader.read("offsets", 95, wait).await;
            (batch, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "nothing to read yet: it waits");
    let writer = cluster.client(1 + via % 3);
    let put_at = Instant::now();
    writer
        .put_retrying("offsets", "the awaited one", Duration::from_secs(30))
        .await
        .unwrap();
    let (batch, answered_at) = waiting.await.unwrap();
    let batch = batch.unwrap();
    assert_eq!(batch.next, 96);
    assert_eq!(batch.entries.len(), 1);
    assert_eq!(
        (batch.entries[0].offset, batch.entries[0].payload.as_str()),
        (95, "the awaited one")
    );
    let latency = answered_at.saturating_duration_since(put_at);
    report("e2e READ WAIT: PUT to the waiting reader's answer", latency);
    // Without the wake-up the holder would answer only at the end of its
    // 2 s wait: far more than a loaded machine's delay.
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    // Reading moved no cursor: GET starts at the first entry.
    assert_eq!(
        cluster.client(via).get("offsets").await.unwrap().as_deref(),
        Some(payloads[0].as_str())
    );
    report("e2e offsets", t0.elapsed());
}
