//! Replicated segments on real processes (issue 10): three nodes, `RF 3`,
//! writers running throughout, and the ways a node goes away for good:
//! - a segment leader killed and its disk wiped, then started empty: every
//!   acknowledged entry is read exactly once, and the node is re-filled
//!   (then the other two disks are replaced in turn, so at the end no
//!   original copy is left: what is read came through the refills);
//! - a node stopped for good and removed with `walrus-cli node remove`:
//!   writes and reads go on, and every segment is back at three copies on
//!   the two survivors plus a newly joined node;
//! - a segment leader cut off from its followers (network namespaces):
//!   it stops acknowledging within the lease, the others go on, and nothing
//!   it acknowledged is lost.

use crate::common;
use crate::partition::{skip, skip_reason, Netns};

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use distributed_walrus::cli_client::{CliClient, ReadOptions};

/// Small segments: the runs below roll many times, so that failover,
/// refill and re-replication meet sealed and open segments alike.
const SEGMENT_ENTRIES: u64 = 300;

/// Writers keep the payloads of a 1 KiB PUT, so that a refill moves data
/// worth the name.
fn payload_prefix(tag: &str) -> String {
    format!("{tag}{}", "x".repeat(1000))
}

async fn register_rf(cluster: &Cluster, via: u64, topic: &str, rf: u64) {
    let answer = cluster
        .client(via)
        .send_retrying(
            &format!("REGISTER {topic} RF {rf}"),
            Duration::from_secs(10),
        )
        .await
        .expect("REGISTER … RF");
    assert_eq!(answer, "OK", "REGISTER {topic} RF {rf}");
    // Every node applies the topic before the writers start.
    let start = Instant::now();
    for id in cluster.ids() {
        while cluster.client(id).state(topic).await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "node {id} never saw {topic}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Node leading the open segment of `topic`, as node `via` sees it.
async fn segment_leader(cluster: &Cluster, via: u64, topic: &str) -> u64 {
    let state = cluster.client(via).state(topic).await.expect("STATE");
    state["leader_node"]
        .as_u64()
        .expect("STATE names the segment leader")
}

/// Segment → replica set, from STATE.
fn replica_sets(state: &serde_json::Value) -> Vec<(u64, Vec<u64>)> {
    let Some(sets) = state["segment_replicas"].as_object() else {
        return Vec::new();
    };
    let mut out: Vec<(u64, Vec<u64>)> = sets
        .iter()
        .map(|(seg, nodes)| {
            let seg = seg.parse().expect("segment ids are numbers");
            let nodes = nodes
                .as_array()
                .expect("a replica set is a list")
                .iter()
                .map(|n| n.as_u64().expect("node ids are numbers"))
                .collect();
            (seg, nodes)
        })
        .collect();
    out.sort();
    out
}

/// Waits until every retained segment of `topic` has `rf` distinct
/// replicas, all in `nodes`, and STATE reports none under-replicated.
/// Returns how long that took.
async fn wait_fully_replicated(
    cluster: &Cluster,
    via: u64,
    topic: &str,
    rf: usize,
    nodes: &BTreeSet<u64>,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    let mut last = serde_json::Value::Null;
    loop {
        if let Ok(state) = cluster.client(via).state(topic).await {
            let deleted = state["deleted_segments"].as_u64().unwrap_or(0);
            let sets = replica_sets(&state);
            let full = !sets.is_empty()
                && sets
                    .iter()
                    .filter(|(seg, _)| *seg > deleted)
                    .all(|(_, set)| {
                        let distinct: BTreeSet<u64> = set.iter().copied().collect();
                        distinct.len() == rf && distinct.is_subset(nodes)
                    });
            let flagged = state["under_replicated_segments"]
                .as_array()
                .is_some_and(|a| !a.is_empty());
            if full && !flagged {
                return start.elapsed();
            }
            last = state;
        }
        assert!(
            start.elapsed() < limit,
            "{topic} did not return to {rf} copies on {nodes:?} within {limit:?}; last STATE: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads `topic` by offset from its first retained offset to its end
/// through `addr`, retrying what the server says is worth retrying (a
/// segment whose holder is down or being re-filled).
async fn read_all(addr: &str, topic: &str, limit: Duration) -> Vec<String> {
    let c = CliClient::new(addr.to_string()).with_timeout(Duration::from_secs(10));
    let start = Instant::now();
    let pause = || {
        assert!(
            start.elapsed() < limit,
            "reading {topic} took over {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100))
    };
    let (mut next, end) = loop {
        match c.offsets(topic).await {
            Ok(o) => break o,
            Err(e) if e.is_retryable() => pause().await,
            Err(e) => panic!("OFFSETS {topic} via {addr}: {e}"),
        }
    };
    let options = ReadOptions {
        max_entries: 1000,
        ..ReadOptions::default()
    };
    let mut out = Vec::new();
    while next < end {
        match c.read(topic, next, options).await {
            Ok(batch) if !batch.entries.is_empty() => {
                for (i, e) in batch.entries.iter().enumerate() {
                    assert_eq!(
                        e.offset,
                        next + i as u64,
                        "READ {topic} {next} skipped an offset"
                    );
                }
                out.extend(batch.entries.into_iter().map(|e| e.payload));
                next = batch.next;
            }
            Ok(_) => pause().await,
            Err(e) if e.is_retryable() => pause().await,
            Err(e) => panic!("READ {topic} {next} via {addr}: {e}"),
        }
    }
    out
}

fn addr(cluster: &Cluster, id: u64) -> String {
    cluster.nodes[&id].spec.client_addr()
}

fn all_addrs(cluster: &Cluster) -> Vec<String> {
    cluster
        .ids()
        .into_iter()
        .map(|i| addr(cluster, i))
        .collect()
}

/// Kills node `id`, deletes its data directory and starts it again on the
/// empty directory (same flags, as an operator replacing a disk would).
async fn wipe_and_restart(cluster: &mut Cluster, id: u64) {
    let node = cluster.nodes.get_mut(&id).expect("a node of the cluster");
    node.kill9();
    let data = data_path(cluster.dir.path(), id);
    std::fs::remove_dir_all(&data).expect("wiping the node's data directory");
    // A replaced disk is an empty directory; the node creates the rest.
    std::fs::create_dir_all(&data).expect("recreating the empty data directory");
    // A restarted node 1 would bootstrap: like every other node it joins.
    if cluster.nodes[&id].spec.join.is_none() {
        let other = cluster
            .ids()
            .into_iter()
            .find(|o| *o != id)
            .expect("another node");
        let join = cluster.nodes[&other].spec.raft_addr();
        cluster.nodes.get_mut(&id).expect("a node").spec.join = Some(join);
    }
    cluster.nodes.get_mut(&id).expect("a node").spawn();
    // Its client port opens once the cluster admitted the new storage (and
    // counted the old copies as gone): only then is "3 copies" news.
    cluster.wait_ready(&[id], Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_rf_3_when_a_segment_leader_is_killed_and_its_disk_wiped_should_lose_nothing_and_refill_it(
) {
    let _serial = serial().await;
    let t0 = Instant::now();
    let mut cluster =
        Cluster::start(3, ClusterOptions::default().segment_limit(SEGMENT_ENTRIES)).await;
    let topic = "wiped";
    register_rf(&cluster, 1, topic, 3).await;
    let victim = segment_leader(&cluster, 1, topic).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = ["A", "B"]
        .iter()
        .map(|tag| {
            tokio::spawn(writer(
                all_addrs(&cluster),
                topic.into(),
                payload_prefix(tag),
                stop.clone(),
                None,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let killed_at = Instant::now();
    wipe_and_restart(&mut cluster, victim).await;
    let everyone: BTreeSet<u64> = cluster.ids().into_iter().collect();
    let survivor = *everyone.iter().find(|i| **i != victim).expect("a survivor");
    let refill = wait_fully_replicated(
        &cluster,
        survivor,
        topic,
        3,
        &everyone,
        Duration::from_secs(60),
    )
    .await;
    report(
        "rf=3: wiped segment leader back at 3 copies (from its restart)",
        refill,
    );

    // Replace the other two disks in turn: afterwards no copy written
    // before the test's refills is left, so every entry read below came
    // through a refill.
    for other in everyone.iter().copied().filter(|i| *i != victim) {
        wipe_and_restart(&mut cluster, other).await;
        let via = *everyone
            .iter()
            .find(|i| **i != other)
            .expect("another node");
        wait_fully_replicated(&cluster, via, topic, 3, &everyone, Duration::from_secs(60)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for w in writers {
        logs.push(w.await.expect("a writer task"));
    }
    for log in &logs {
        let resumed = log
            .first_ok_after(killed_at)
            .expect("writes went on after the kill");
        report(
            "rf=3: a writer's first OK after kill -9 of the segment leader",
            resumed,
        );
    }
    wait_fully_replicated(&cluster, 1, topic, 3, &everyone, Duration::from_secs(60)).await;
    let read = read_all(&addr(&cluster, victim), topic, Duration::from_secs(60)).await;
    check_reads(&read, &logs);
    println!(
        "replication wipe test: {} acknowledged, {} unknown, {} read",
        logs.iter().map(|l| l.acked.len()).sum::<usize>(),
        logs.iter().map(|l| l.unknown.len()).sum::<usize>(),
        read.len()
    );
    report("e2e replication: wiped disks", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_rf_3_when_a_node_is_stopped_for_good_and_removed_should_go_on_and_return_to_3_copies_with_a_new_node(
) {
    let _serial = serial().await;
    let t0 = Instant::now();
    let opts = ClusterOptions::default().segment_limit(SEGMENT_ENTRIES);
    let mut cluster = Cluster::start(3, opts).await;
    let topics = ["rm-a", "rm-b"];
    // Through the CLI and through the client library.
    let (code, out, err) = run_cli(&addr(&cluster, 1), &["register", topics[0], "--rf", "3"]);
    assert_eq!((code, out.as_str()), (Some(0), "OK\n"), "{err}");
    cluster
        .client(1)
        .register_replicated(topics[1], 3)
        .await
        .expect("REGISTER … RF 3");
    for t in topics {
        let state = cluster.client(1).state(t).await.expect("STATE");
        assert_eq!(state["replication_factor"], 3, "{t}: {state}");
    }
    let victim = segment_leader(&cluster, 1, topics[0]).await;
    let survivors: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != victim).collect();
    let survivor_addrs: Vec<String> = survivors.iter().map(|i| addr(&cluster, *i)).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = topics
        .iter()
        .map(|t| {
            tokio::spawn(writer(
                survivor_addrs.clone(),
                t.to_string(),
                payload_prefix(t),
                stop.clone(),
                None,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let killed_at = Instant::now();
    cluster.nodes.get_mut(&victim).expect("the victim").kill9();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Refused while the victim still leads open segments (it may be
    // running): an operator retries once failover closed them.
    let removing = Instant::now();
    loop {
        let (code, out, err) =
            run_cli(&survivor_addrs[0], &["node", "remove", &victim.to_string()]);
        if code == Some(0) {
            break;
        }
        assert!(
            removing.elapsed() < Duration::from_secs(20) && err.contains("stop it first"),
            "walrus-cli node remove {victim}: {out} {err}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    cluster
        .wait_voters(survivors[0], 2, Duration::from_secs(10))
        .await;
    let metrics = cluster
        .client(survivors[0])
        .metrics()
        .await
        .expect("METRICS");
    assert!(
        !voters(&metrics).contains(&victim),
        "node {victim} left the membership: {metrics}"
    );
    cluster.nodes.remove(&victim);

    // A new node takes the removed one's place.
    let newcomer = 4;
    cluster.join_node(
        newcomer,
        &ClusterOptions::default().segment_limit(SEGMENT_ENTRIES),
    );
    cluster
        .wait_voters(survivors[0], 3, Duration::from_secs(30))
        .await;
    let members: BTreeSet<u64> = cluster.ids().into_iter().collect();
    for t in topics {
        let took = wait_fully_replicated(
            &cluster,
            survivors[0],
            t,
            3,
            &members,
            Duration::from_secs(60),
        )
        .await;
        report(
            &format!("rf=3: {t} back at 3 copies after the newcomer joined"),
            took,
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for w in writers {
        logs.push(w.await.expect("a writer task"));
    }
    for (t, log) in topics.iter().zip(&logs) {
        let resumed = log
            .first_ok_after(killed_at)
            .expect("writes went on after the kill");
        report(
            &format!("rf=3: {t}'s first OK after kill -9 of node {victim}"),
            resumed,
        );
        let read = read_all(&addr(&cluster, newcomer), t, Duration::from_secs(60)).await;
        check_reads(&read, std::slice::from_ref(log));
    }
    report("e2e replication: node removed", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_rf_3_when_a_segment_leader_is_cut_off_from_its_followers_should_stop_acknowledging_within_the_lease_and_lose_nothing(
) {
    if let Some(reason) = skip_reason() {
        skip(&reason);
        return;
    }
    let net = match Netns::setup(3) {
        Ok(n) => n,
        Err(e) => {
            skip(&format!("cannot create network namespaces: {e}"));
            return;
        }
    };
    let _serial = serial().await;
    let t0 = Instant::now();
    let opts = ClusterOptions {
        netns: Some(net.layout()),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(3, opts).await;
    let consensus = cluster.leader(1).await.expect("a consensus leader");
    // Registered through another node, which then leads the first segment:
    // cutting it off leaves the consensus leader with the majority.
    let cut = cluster
        .ids()
        .into_iter()
        .find(|i| *i != consensus)
        .expect("a follower");
    let topic = "cutoff";
    register_rf(&cluster, cut, topic, 3).await;
    assert_eq!(segment_leader(&cluster, cut, topic).await, cut);
    let others: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != cut).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let via_cut = tokio::spawn(writer(
        vec![addr(&cluster, cut)],
        topic.into(),
        "C".into(),
        stop.clone(),
        None,
    ));
    let via_majority = tokio::spawn(writer(
        others.iter().map(|i| addr(&cluster, *i)).collect(),
        topic.into(),
        "M".into(),
        stop.clone(),
        None,
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cut_at = Instant::now();
    net.cut(cut);
    tokio::time::sleep(Duration::from_secs(6)).await;
    net.heal(cut);
    let healed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let c = via_cut.await.expect("a writer task");
    let m = via_majority.await.expect("a writer task");
    println!(
        "cut-off leader errors: {:?}; majority: {:?}",
        c.errors, m.errors
    );

    // Its followers no longer confirm, so it acknowledges nothing past a
    // lease (1 s, plus the renewal in flight and scheduling).
    let last_cut_ok = c.last_ok_between(cut_at, healed_at);
    report(
        "rf=3 partition: cut-off segment leader's last OK after the cut",
        last_cut_ok,
    );
    assert!(
        last_cut_ok < Duration::from_millis(2000),
        "acknowledged {last_cut_ok:?} after the cut"
    );
    let resumed = m
        .first_ok_after(cut_at + last_cut_ok)
        .map(|d| d + last_cut_ok)
        .expect("the majority took writes during the cut");
    report(
        "rf=3 partition: the majority's first OK after the cut",
        resumed,
    );
    assert!(
        resumed < Duration::from_secs(6),
        "the majority waited {resumed:?}"
    );

    let read = read_all(&addr(&cluster, others[0]), topic, Duration::from_secs(60)).await;
    check_reads(&read, &[c.clone(), m.clone()]);
    println!(
        "rf=3 partition test: {} + {} acknowledged, {} unknown",
        c.acked.len(),
        m.acked.len(),
        c.unknown.len() + m.unknown.len()
    );
    report("e2e replication: partition", t0.elapsed());
}
