//! Three real `walrus-server` processes on loopback: routing, rollover,
//! concurrent writers, kill -9, SIGTERM and kill -9 restarts of every node.
//! Every acknowledged write is checked, not a sample.

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn addrs(c: &Cluster, ids: &[u64]) -> Vec<String> {
    ids.iter()
        .map(|id| c.nodes[id].spec.client_addr())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_three_nodes_when_writing_through_one_should_read_through_another() {
    let _serial = serial().await;
    let t0 = Instant::now();
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    report("3-node cluster start", t0.elapsed());
    let (c1, c2, c3) = (cluster.client(1), cluster.client(2), cluster.client(3));
    c2.register("logs").await.unwrap();
    let payloads: Vec<String> = (0..50).map(|i| format!("hello {i}")).collect();
    for p in &payloads {
        c2.put("logs", p).await.unwrap();
    }
    let got = drain(
        &cluster.nodes[&3].spec.client_addr(),
        "logs",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(got, payloads);
    // The topic's metadata is the same on every node.
    let s1 = c1.state("logs").await.unwrap();
    assert_eq!(
        s1["leader_node"], 2,
        "REGISTER through node 2 makes it the leader: {s1}"
    );
    for c in [&c2, &c3] {
        let s = c.state("logs").await.unwrap();
        assert_eq!(s["current_segment"], s1["current_segment"]);
    }
    assert_eq!(
        c3.send_raw("PUT nonexistent x").await.unwrap(),
        "ERR topic not found"
    );
    report("e2e 3 nodes: route and read", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_segments_of_ten_should_seal_exactly_ten_on_every_node_and_read_in_order() {
    let _serial = serial().await;
    let t0 = Instant::now();
    let cluster = Cluster::start(3, ClusterOptions::default().segment_limit(10)).await;
    cluster.register(1, "roll").await;
    let payloads: Vec<String> = (0..95).map(|i| format!("r{i}")).collect();
    for (i, p) in payloads.iter().enumerate() {
        cluster
            .client(1 + (i as u64 % 3))
            .put("roll", p)
            .await
            .unwrap();
    }
    for id in cluster.ids() {
        let state = cluster.client(id).state("roll").await.unwrap();
        let sealed = state["sealed_segments"]
            .as_object()
            .expect("sealed_segments is an object");
        assert_eq!(sealed.len(), 9, "node {id}: {state}");
        for (seg, count) in sealed {
            assert_eq!(count, 10, "node {id} segment {seg}: {state}");
        }
        assert_eq!(state["last_sealed_entry_offset"], 90, "node {id}: {state}");
        let leaders: Vec<u64> = state["segment_leaders"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(|v| v.as_u64())
            .collect();
        for n in 1..=3 {
            assert!(leaders.contains(&n), "round-robin uses every node: {state}");
        }
    }
    let got = drain(
        &cluster.nodes[&2].spec.client_addr(),
        "roll",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(got, payloads);
    report("e2e 3 nodes: rollover by 10", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_four_writers_through_different_nodes_across_rollovers_should_lose_and_duplicate_nothing(
) {
    let _serial = serial().await;
    let t0 = Instant::now();
    let cluster = Cluster::start(3, ClusterOptions::default().segment_limit(25)).await;
    cluster.register(1, "many").await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let node = 1 + w % 3;
        tasks.push(tokio::spawn(writer(
            addrs(&cluster, &[node]),
            "many".into(),
            format!("w{w}"),
            stop.clone(),
            Some(150),
        )));
    }
    let mut logs = Vec::new();
    for t in tasks {
        logs.push(t.await.unwrap());
    }
    let acked: usize = logs.iter().map(|l| l.acked.len()).sum();
    let errors: Vec<_> = logs.iter().map(|l| &l.errors).collect();
    assert_eq!(
        acked, 600,
        "no node was down: every write is acknowledged; errors: {errors:?}"
    );
    let got = drain(
        &cluster.nodes[&3].spec.client_addr(),
        "many",
        Duration::from_secs(60),
    )
    .await;
    check_reads(&got, &logs);
    assert_eq!(got.len(), 600);
    let state = cluster.client(2).state("many").await.unwrap();
    for (seg, count) in state["sealed_segments"].as_object().unwrap() {
        assert_eq!(count, 25, "segment {seg}: {state}");
    }
    report("e2e 3 nodes: 4 writers, 600 writes", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_segment_leader_killed_while_writing_should_resume_within_5s_and_keep_every_ack()
{
    let _serial = serial().await;
    let t0 = Instant::now();
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
    // The segment leader is the node that registers; pick one that is not
    // the consensus leader, so the cluster keeps its quorum leader.
    let consensus = cluster.leader(1).await.expect("a leader");
    let victim = cluster
        .ids()
        .into_iter()
        .find(|id| *id != consensus)
        .unwrap();
    cluster.register(victim, "crash").await;
    let others: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != victim)
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(writer(
        addrs(&cluster, &others),
        "crash".into(),
        "k".into(),
        stop.clone(),
        None,
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    cluster.nodes.get_mut(&victim).unwrap().kill9();
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let log = w.await.unwrap();

    // The write pause the kill caused: the longest gap between two OKs
    // after the kill (counted from the kill for the first one).
    let mut prev = killed_at;
    let mut pause = Duration::ZERO;
    for t in log.ack_times.iter().filter(|t| **t > killed_at) {
        pause = pause.max(*t - prev);
        prev = *t;
    }
    assert!(
        prev > killed_at,
        "writes resumed after the kill; errors: {:?}",
        log.errors
    );
    report(
        "failover: kill -9 segment leader, longest write pause",
        pause,
    );
    println!("kill -9 test errors: {:?}", log.errors);
    assert!(pause < Duration::from_secs(5), "writes paused {pause:?}");

    cluster.nodes.get_mut(&victim).unwrap().spawn();
    let back = cluster.wait_ready(&[victim], Duration::from_secs(30)).await;
    report("killed node back to ready", back);
    let got = drain(
        &cluster.nodes[&consensus].spec.client_addr(),
        "crash",
        Duration::from_secs(60),
    )
    .await;
    check_reads(&got, std::slice::from_ref(&log));
    println!(
        "kill -9 test: {} acknowledged, {} unknown",
        log.acked.len(),
        log.unknown.len()
    );
    report("e2e 3 nodes: kill -9 segment leader", t0.elapsed());
}

async fn restart_all_and_check(kill: bool) {
    let t0 = Instant::now();
    let mut cluster = Cluster::start(3, ClusterOptions::default().segment_limit(20)).await;
    let mut written: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, topic) in ["alpha", "beta"].iter().enumerate() {
        let c = cluster.client(1 + i as u64);
        c.register(topic).await.unwrap();
        let payloads: Vec<String> = (0..70).map(|j| format!("{topic}-{j}")).collect();
        for r in c.put_many(topic, &payloads, 16).await {
            r.unwrap();
        }
        written.insert(topic.to_string(), payloads);
    }
    for id in cluster.ids() {
        let node = cluster.nodes.get_mut(&id).unwrap();
        if kill {
            node.kill9();
        } else {
            assert_eq!(
                node.terminate(Duration::from_secs(15)),
                Some(0),
                "node {id} exits 0 on SIGTERM"
            );
        }
    }
    let restart = Instant::now();
    for id in cluster.ids() {
        cluster.nodes.get_mut(&id).unwrap().spawn();
    }
    let ids = cluster.ids();
    cluster.wait_ready(&ids, Duration::from_secs(30)).await;
    let ready = restart.elapsed();
    // Writable again: through every node.
    for id in cluster.ids() {
        let c = cluster.client(id);
        loop {
            match c.put("alpha", &format!("after-{id}")).await {
                Ok(()) => break,
                Err(e) if e.is_retryable() => {
                    assert!(
                        restart.elapsed() < Duration::from_secs(30),
                        "not writable: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("PUT after restart through node {id}: {e}"),
            }
        }
        written
            .get_mut("alpha")
            .unwrap()
            .push(format!("after-{id}"));
    }
    let writable = restart.elapsed();
    let how = if kill { "kill -9" } else { "SIGTERM" };
    report(&format!("{how} all 3 nodes: restart to ready"), ready);
    report(
        &format!("{how} all 3 nodes: restart to writable via every node"),
        writable,
    );
    assert!(ready < Duration::from_secs(5), "ready after {ready:?}");
    for (topic, want) in &written {
        let got = drain(
            &cluster.nodes[&3].spec.client_addr(),
            topic,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(&got, want, "topic {topic}");
    }
    report(&format!("e2e 3 nodes: {how} all and restart"), t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_all_nodes_stopped_with_sigterm_when_restarted_should_be_ready_within_5s_with_all_data(
) {
    let _serial = serial().await;
    restart_all_and_check(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_all_nodes_killed_when_restarted_should_be_ready_within_5s_with_all_data() {
    let _serial = serial().await;
    restart_all_and_check(true).await;
}
