//! Consumer groups on three real `walrus-server` processes: a group
//! fetches and commits through the client library, every node is killed
//! with kill -9 and restarted, and the group resumes at its committed
//! offset: the batch it fetched and did not commit comes again, nothing
//! is skipped, and another group and the shared GET cursor never moved.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use distributed_walrus::cli_client::{CliClient, ReadBatch, ReadOptions};

/// Resends while the error says the request was not carried out (a node
/// still starting, the consensus leader being elected), for up to 30 s.
async fn fetch(client: &CliClient, group: &str, max: u32) -> ReadBatch {
    let options = ReadOptions {
        max_entries: max,
        ..ReadOptions::default()
    };
    let start = Instant::now();
    loop {
        match client.fetch(group, "orders", options).await {
            Ok(batch) => return batch,
            Err(e) if e.is_retryable() && start.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("FETCH {group} orders: {e}"),
        }
    }
}

/// A COMMIT is idempotent: every retryable failure is simply resent.
async fn commit(client: &CliClient, group: &str, offset: u64) {
    let start = Instant::now();
    loop {
        match client.commit(group, "orders", offset).await {
            Ok(()) => return,
            Err(e) if e.is_retryable() && start.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("COMMIT {group} orders {offset}: {e}"),
        }
    }
}

fn payloads(batch: &ReadBatch) -> Vec<(u64, String)> {
    batch
        .entries
        .iter()
        .map(|e| (e.offset, e.payload.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_group_that_committed_when_every_node_is_killed_and_restarted_should_resume_at_its_offset(
) {
    let _serial = serial().await;
    let t0 = Instant::now();
    let mut cluster = Cluster::start(3, ClusterOptions::default().segment_limit(10)).await;
    cluster.register(1, "orders").await;
    let written: Vec<(u64, String)> = (0..35u64).map(|i| (i, format!("order {i}"))).collect();
    for (i, p) in &written {
        cluster.client(1 + i % 3).put("orders", p).await.unwrap();
    }
    let consumer = cluster.client(2);
    let mut consumed = Vec::new();
    // Two batches processed and committed (across a rollover at 10)…
    for _ in 0..2 {
        let batch = fetch(&consumer, "billing", 10).await;
        assert_eq!(batch.entries.len(), 10);
        consumed.extend(payloads(&batch));
        commit(&consumer, "billing", batch.next).await;
    }
    assert_eq!(consumed, written[..20].to_vec());
    // …then one fetched and not committed: the consumer "crashes" with it.
    let lost = fetch(&consumer, "billing", 10).await;
    assert_eq!(payloads(&lost), written[20..30].to_vec());
    // Another group, elsewhere in the topic.
    commit(&cluster.client(3), "audit", 5).await;

    cluster.kill9_and_restart_all().await;

    // A new member, through another node, starts at the committed offset:
    // the uncommitted batch comes again, then the rest, then the end.
    let member = cluster.client(3);
    loop {
        let batch = fetch(&member, "billing", 10).await;
        if batch.entries.is_empty() {
            assert_eq!(batch.next, 35);
            break;
        }
        consumed.extend(payloads(&batch));
        commit(&member, "billing", batch.next).await;
    }
    assert_eq!(consumed, written, "every entry once, from offset 20 on");
    assert_eq!(
        payloads(&fetch(&cluster.client(1), "audit", 2).await),
        written[5..7].to_vec(),
        "the other group kept its own offset"
    );
    // No group moved the shared cursor.
    assert_eq!(
        cluster.client(1).get("orders").await.unwrap().as_deref(),
        Some("order 0")
    );
    let err = member.commit("billing", "orders", 36).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("offset 36 is outside orders (0 to 35)"),
        "{err}"
    );
    report("groups resume after kill -9 of every node", t0.elapsed());
}

/// One consumer of a group: FETCH a batch, process it, COMMIT its `next`.
/// Returns the batch's entries (empty at the end).
async fn consume_batch(
    client: &CliClient,
    group: &str,
    processed: &mut Vec<(u64, String)>,
) -> usize {
    let batch = fetch(client, group, 7).await;
    let n = batch.entries.len();
    if n > 0 {
        processed.extend(payloads(&batch));
        commit(client, group, batch.next).await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_two_groups_consuming_when_each_node_in_turn_is_killed_9_should_both_resume_without_losing_an_entry(
) {
    let _serial = serial().await;
    let t0 = Instant::now();
    let mut cluster = Cluster::start(3, ClusterOptions::default().segment_limit(10)).await;
    cluster.register(1, "orders").await;
    let written: Vec<(u64, String)> = (0..60u64).map(|i| (i, format!("order {i}"))).collect();
    for (i, p) in &written {
        cluster.client(1 + i % 3).put("orders", p).await.unwrap();
    }
    let groups = ["billing", "audit"];
    let mut processed: [Vec<(u64, String)>; 2] = Default::default();
    for victim in [1u64, 2, 3] {
        // Both groups move on by a batch, each through another node, and
        // billing fetches one more it never commits: its consumer dies
        // with the node.
        for (g, group) in groups.iter().enumerate() {
            let via = 1 + (victim + g as u64) % 3;
            consume_batch(&cluster.client(via), group, &mut processed[g]).await;
        }
        let uncommitted = fetch(&cluster.client(victim), "billing", 7).await;
        assert!(!uncommitted.entries.is_empty());
        cluster.nodes.get_mut(&victim).unwrap().kill9();
        cluster.nodes.get_mut(&victim).unwrap().spawn();
        cluster
            .wait_ready(&cluster.ids(), Duration::from_secs(30))
            .await;
    }
    // Each group resumes where it committed and reads to the end.
    for (g, group) in groups.iter().enumerate() {
        let client = cluster.client(1 + g as u64);
        while consume_batch(&client, group, &mut processed[g]).await > 0 {}
        assert_eq!(
            processed[g], written,
            "{group}: every entry once, in order, at its offset"
        );
    }
    assert_eq!(
        cluster.client(3).get("orders").await.unwrap().as_deref(),
        Some("order 0"),
        "no group moved the shared cursor"
    );
    report("two groups resume after kill -9 of each node", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_async_commits_from_the_cli_and_the_client_should_move_the_group_at_once() {
    let _serial = serial().await;
    let cluster = Cluster::start(1, ClusterOptions::default()).await;
    cluster.register(1, "orders").await;
    let client = cluster.client(1);
    for i in 0..4 {
        client.put("orders", format!("o{i}")).await.expect("PUT");
    }
    let addr = cluster.nodes[&1].spec.client_addr();
    let (code, out, err) = run_cli(&addr, &["group", "commit", "cli", "orders", "3", "--async"]);
    assert_eq!((code, out.as_str()), (Some(0), "OK\n"), "{err}");
    let batch = fetch(&client, "cli", 10).await;
    assert_eq!(batch.entries.first().map(|e| e.offset), Some(3));
    client
        .commit_async("lib", "orders", 2)
        .await
        .expect("COMMIT … ASYNC");
    let batch = fetch(&client, "lib", 10).await;
    let payloads: Vec<&str> = batch.entries.iter().map(|e| e.payload.as_str()).collect();
    assert_eq!(payloads, ["o2", "o3"]);
}
