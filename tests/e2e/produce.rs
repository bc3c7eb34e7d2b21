//! PUTB and idempotent producers on three real `walrus-server` processes:
//! a batch is stored whole and byte for byte or not at all; producers
//! that resend every unknown outcome through kill -9 of the segment leader
//! (and its restart) store each batch exactly once, and a batch resent
//! after its answer was lost is answered with its original offsets.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use distributed_walrus::cli_client::{BatchAck, CliClient, Producer, ReadOptions};

/// Every entry of `topic` from offset 0, as (offset, payload).
async fn read_all(client: &CliClient, topic: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let start = Instant::now();
    loop {
        match client
            .read(topic, out.len() as u64, ReadOptions::default())
            .await
        {
            Ok(batch) if batch.entries.is_empty() => return out,
            Ok(batch) => out.extend(batch.entries.into_iter().map(|e| (e.offset, e.payload))),
            Err(e) if e.is_retryable() && start.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("READ {topic} at {}: {e}", out.len()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_batches_when_put_should_store_each_whole_and_byte_for_byte_or_not_at_all() {
    let _serial = serial().await;
    let t0 = Instant::now();
    let cluster = Cluster::start(3, ClusterOptions::default().segment_limit(10)).await;
    cluster.register(1, "batches").await;
    let client = cluster.client(2);
    for i in 0..3 {
        client.put("batches", format!("single {i}")).await.unwrap();
    }
    // 3 + 8 > 10: the batch goes whole into segment 2, none of it into 1.
    let batch = [
        "two words",
        "a\nb",
        " lead and trail ",
        "ü€😀",
        "8 3\n",
        "ENTRIES 1 2",
        "x",
        "last",
    ];
    let ack = client.put_batch("batches", &batch).await.unwrap();
    assert_eq!(
        ack,
        BatchAck {
            n: 8,
            first: Some(3)
        }
    );
    let state = client.state("batches").await.unwrap();
    assert_eq!(state["sealed_segments"]["1"], 3, "{state}");
    // Malformed batches store nothing.
    for (body, error) in [
        (
            "PUTB batches 3\n1\na\n1\nb\n",
            "PUTB announced 3 entries and has 2",
        ),
        (
            "PUTB batches 2\n1\na\n5\nb\n",
            "entry 2 of 2: the body ends before",
        ),
        (
            "PUTB batches 1\n0\n\n",
            "entry 1 of 1: an entry is 1 byte or more",
        ),
        ("PUTB nosuch 1\n1\na\n", "topic not found"),
    ] {
        let answer = client.send_raw(body).await.unwrap();
        assert!(answer.starts_with(&format!("ERR {error}")), "{answer}");
    }
    assert_eq!(client.offsets("batches").await.unwrap(), (0, 11));
    let mut expected: Vec<String> = (0..3).map(|i| format!("single {i}")).collect();
    expected.extend(batch.iter().map(|s| s.to_string()));
    let read: Vec<String> = read_all(&cluster.client(3), "batches")
        .await
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(read, expected);
    report("PUTB whole and byte for byte on 3 nodes", t0.elapsed());
}

/// A producer's writes: batch `seq` holds `p<k>-<seq>-<i>`.
fn batch_of(producer: usize, seq: u64) -> Vec<String> {
    (0..5).map(|i| format!("p{producer}-{seq}-{i}")).collect()
}

/// Writes `batches` batches as producer `k` through `client`, resending
/// every failure that is not a refusal with the same sequence number.
/// Returns each batch's acknowledgement and how many sends had an unknown
/// outcome.
async fn produce(client: CliClient, k: usize, batches: u64) -> (Vec<BatchAck>, usize) {
    let mut producer = Producer::new(format!("producer-{k}"));
    let mut acks = Vec::new();
    let mut unknown = 0;
    let start = Instant::now();
    while producer.next_seq() < batches {
        let seq = producer.next_seq();
        match client
            .put_batch_as("orders", &batch_of(k, seq), &mut producer)
            .await
        {
            Ok(ack) => acks.push(ack),
            Err(e) if e.is_retryable() || e.is_outcome_unknown() => {
                unknown += usize::from(e.is_outcome_unknown());
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "producer {k} stuck at {seq}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("producer {k} batch {seq}: {e}"),
        }
    }
    (acks, unknown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_producers_with_ids_when_the_segment_leader_is_killed_and_restarted_should_store_every_batch_once(
) {
    let _serial = serial().await;
    let t0 = Instant::now();
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
    // Node 1 leads segment 1; the producers write through nodes 2 and 3.
    cluster.register(1, "orders").await;
    const BATCHES: u64 = 300;
    let writers: Vec<_> = (0..4)
        .map(|k| {
            let client = cluster.client(2 + (k as u64 % 2));
            tokio::spawn(produce(client, k, BATCHES))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.nodes.get_mut(&1).unwrap().kill9();
    assert!(
        writers.iter().all(|w| !w.is_finished()),
        "the leader is killed while every producer writes"
    );
    // Failover moves the topic on, but the producers' last writes in
    // segment 1 are unknown until node 1 is back: their writes are refused
    // (retryably) meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.nodes.get_mut(&1).unwrap().spawn();
    cluster
        .wait_ready(&[1, 2, 3], Duration::from_secs(30))
        .await;
    let mut acks = Vec::new();
    let mut unknown = 0;
    for w in writers {
        let (a, u) = w.await.unwrap();
        acks.push(a);
        unknown += u;
    }

    // Each batch once, whole, in its producer's order, at the offsets its
    // acknowledgement gave.
    let read = read_all(&cluster.client(1), "orders").await;
    assert_eq!(read.len(), 4 * BATCHES as usize * 5, "every batch once");
    for (k, acks) in acks.iter().enumerate() {
        let mine: Vec<&(u64, String)> = read
            .iter()
            .filter(|(_, p)| p.starts_with(&format!("p{k}-")))
            .collect();
        let expected: Vec<String> = (0..BATCHES).flat_map(|s| batch_of(k, s)).collect();
        let payloads: Vec<&String> = mine.iter().map(|(_, p)| p).collect();
        assert_eq!(
            payloads,
            expected.iter().collect::<Vec<_>>(),
            "producer {k}"
        );
        for (seq, ack) in acks.iter().enumerate() {
            if let Some(first) = ack.first {
                let at = &read[first as usize..first as usize + 5];
                let got: Vec<&String> = at.iter().map(|(_, p)| p).collect();
                assert_eq!(
                    got,
                    batch_of(k, seq as u64).iter().collect::<Vec<_>>(),
                    "producer {k} batch {seq} is where its answer said"
                );
            }
        }
    }

    // A batch whose answer was lost is sent again: it is answered as it
    // was the first time and not stored again (through any node, after
    // the leader's kill and restart).
    for (k, acks) in acks.iter().enumerate() {
        let mut again = Producer::resume(format!("producer-{k}"), BATCHES - 1);
        let ack = cluster
            .client(1 + k as u64 % 3)
            .put_batch_retrying(
                "orders",
                &batch_of(k, BATCHES - 1),
                Some(&mut again),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        assert_eq!(ack, acks[BATCHES as usize - 1], "producer {k}");
    }
    assert_eq!(read_all(&cluster.client(2), "orders").await, read);
    eprintln!("{unknown} sends had an unknown outcome and were sent again");
    report(
        "producers through kill -9 of the segment leader, each batch once",
        t0.elapsed(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_file_on_stdin_when_the_cli_puts_it_as_a_producer_should_store_each_line_once_and_refuse_a_rerun_from_0(
) {
    let t0 = Instant::now();
    let cluster = Cluster::start(1, ClusterOptions::default()).await;
    cluster.register(1, "lines").await;
    let addr = cluster.nodes[&1].spec.client_addr();
    let cli = server_binary().with_file_name("walrus-cli");
    let put = |seq: &str, input: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(&cli)
            .args([
                "--addr", &addr, "put", "lines", "--file", "-", "--batch", "2",
            ])
            .args(["--producer", "cli-1", "--seq", seq])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running walrus-cli");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let file = "a b\n\nc\nd é \n";
    assert_eq!(
        put("0", file),
        (
            Some(0),
            "OK 2 0\nOK 1 2\n".into(),
            "producer cli-1 next sequence 2\n".into()
        )
    );
    // The whole file again from 0: its first batch is older than the
    // producer's last write, refused, and nothing is stored twice.
    let (code, out, err) = put("0", file);
    assert_eq!((code, out.as_str()), (Some(1), ""), "{err}");
    assert!(err.contains("older than its last stored write"), "{err}");
    // The last batch again (its answer lost): answered as the first time.
    assert_eq!(put("1", "d é \n").1, "OK 1 2\n");
    // And on from the printed number.
    assert_eq!(put("2", "e\n").1, "OK 1 3\n");
    let read: Vec<String> = read_all(&cluster.client(1), "lines")
        .await
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(read, ["a b", "c", "d é ", "e"]);
    report("walrus-cli put --file as a producer", t0.elapsed());
}
