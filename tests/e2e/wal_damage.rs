//! A damaged WAL file stops only its segment: a stopped single node gets
//! one byte of one topic's WAL file flipped, restarts, serves its other
//! topics, the damaged topic's entries up to the damage and an error that
//! names the file and byte past it, and counts the quarantined segment in
//! METRICS. The damaged segment was the topic's open one: PUTs go on in a
//! new segment, read only once the file is restored and the node
//! restarted. A sealed segment whose file is removed answers reads with an
//! error naming the missing file (never an internal error).

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use distributed_walrus::cli_client::CliClient;

/// Registers `good` and `bad` on the single node, writes `n` entries to
/// each (`<topic>-<i>`) and stops the node, so that the test can damage
/// `bad`'s files.
async fn fill_and_stop(cluster: &mut Cluster, n: usize) {
    let c = cluster.client(1);
    for topic in ["good", "bad"] {
        cluster.register(1, topic).await;
        for i in 0..n {
            let answer = c.send_raw(&format!("PUT {topic} {topic}-{i}")).await;
            assert_eq!(answer.unwrap(), "OK");
        }
    }
    stop(cluster);
}

/// Stops node 1 with SIGTERM; it must exit cleanly.
fn stop(cluster: &mut Cluster) {
    let node = cluster.nodes.get_mut(&1).unwrap();
    assert_eq!(node.terminate(Duration::from_secs(20)), Some(0));
}

/// Starts node 1 again on its files; a client of it once it is ready.
async fn restart(cluster: &mut Cluster) -> CliClient {
    cluster.nodes.get_mut(&1).unwrap().spawn();
    cluster.wait_ready(&[1], Duration::from_secs(30)).await;
    cluster.client(1)
}

/// The first WAL file of `topic` on node 1.
fn first_wal_file(dir: &Path, topic: &str) -> PathBuf {
    let topic_dir = data_path(dir, 1).join("wal").join(topic);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&topic_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", topic_dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".000000.wal"))
        .collect();
    files.sort();
    files.into_iter().next().expect("the topic has a WAL file")
}

/// Offset of record `i` in a WAL file's bytes (records follow the 64-byte
/// header: u32 length, u32 checksum, payload).
fn record_offset(bytes: &[u8], i: usize) -> usize {
    let mut off = 64;
    for _ in 0..i {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        off += 8 + len;
    }
    off
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_damaged_wal_file_when_the_node_restarts_should_serve_the_rest_and_name_the_damage()
{
    let _serial = serial().await;
    let mut cluster = Cluster::start(1, ClusterOptions::default()).await;
    fill_and_stop(&mut cluster, 10).await;

    let file = first_wal_file(cluster.dir.path(), "bad");
    let original = std::fs::read(&file).unwrap();
    let mut bytes = original.clone();
    let at = record_offset(&bytes, 4);
    bytes[at + 9] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();

    let c = restart(&mut cluster).await;

    for i in 0..10 {
        assert_eq!(
            c.send_raw("GET good").await.unwrap(),
            format!("OK good-{i}")
        );
    }
    assert_eq!(c.send_raw("PUT good after").await.unwrap(), "OK");
    assert_eq!(c.send_raw("GET good").await.unwrap(), "OK after");

    for i in 0..4 {
        assert_eq!(c.send_raw("GET bad").await.unwrap(), format!("OK bad-{i}"));
    }
    let file_name = file.file_name().unwrap().to_string_lossy().to_string();
    let names_the_damage = |answer: &str| {
        answer.starts_with("ERR corrupt data")
            && answer.contains(&file_name)
            && answer.contains(&format!("byte {at}"))
            && answer.contains("restart node 1")
    };
    let past = c.send_raw("GET bad").await.unwrap();
    assert!(
        names_the_damage(&past),
        "a read past the damage names file, byte and what to do: {past}"
    );
    // The damaged segment was the topic's open one: writes go on in a new
    // segment, whose entries readers get only after bad-4..bad-9.
    assert_eq!(c.send_raw("PUT bad more").await.unwrap(), "OK");
    let still = c.send_raw("GET bad").await.unwrap();
    assert!(
        names_the_damage(&still),
        "readers wait at the damage, never skip to the new entry: {still}"
    );
    assert_eq!(c.send_raw("PUT good later").await.unwrap(), "OK");
    assert_eq!(c.send_raw("GET good").await.unwrap(), "OK later");

    let metrics = c.metrics().await.unwrap();
    assert_eq!(
        metrics["walrus"]["storage"]["quarantined_segments"],
        serde_json::json!(1),
        "{metrics}"
    );

    // The operator restores the file and restarts the node: it reports
    // the segment's full count, and readers go on through the entries
    // after the damage to the one written meanwhile.
    stop(&mut cluster);
    std::fs::write(&file, &original).unwrap();
    let c = restart(&mut cluster).await;
    let mut rest = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while rest.len() < 7 {
        let answer = c.send_raw("GET bad").await.unwrap();
        match answer.strip_prefix("OK ") {
            Some(entry) => rest.push(entry.to_string()),
            None => {
                // Until the restarted node has reported the count.
                assert!(std::time::Instant::now() < deadline, "GET bad: {answer}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let mut want: Vec<String> = (4..10).map(|i| format!("bad-{i}")).collect();
    want.push("more".into());
    assert_eq!(rest, want);
    assert_eq!(c.send_raw("GET bad").await.unwrap(), "EMPTY");
    let metrics = c.metrics().await.unwrap();
    assert_eq!(
        metrics["walrus"]["storage"]["quarantined_segments"],
        serde_json::json!(0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_sealed_segment_whose_file_is_removed_when_the_node_restarts_should_name_the_missing_file(
) {
    let _serial = serial().await;
    let mut cluster = Cluster::start(1, ClusterOptions::default().segment_limit(5)).await;
    fill_and_stop(&mut cluster, 12).await;

    // The topic's first segment: full, so sealed (5 entries, one file).
    let file = first_wal_file(cluster.dir.path(), "bad");
    let seal = file
        .to_string_lossy()
        .replace(".000000.wal", ".sealed")
        .to_string();
    assert!(Path::new(&seal).exists(), "{seal} is sealed");
    std::fs::remove_file(&file).unwrap();

    let c = restart(&mut cluster).await;
    for i in 0..12 {
        assert_eq!(
            c.send_raw("GET good").await.unwrap(),
            format!("OK good-{i}")
        );
    }
    let answer = c.send_raw("GET bad").await.unwrap();
    let file_name = file.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        answer.starts_with("ERR corrupt data")
            && answer.contains(&file_name)
            && answer.contains("the file is missing"),
        "a read of the sealed segment names the missing file, never an internal error: {answer}"
    );
    let metrics = c.metrics().await.unwrap();
    assert_eq!(
        metrics["walrus"]["storage"]["quarantined_segments"],
        serde_json::json!(1),
        "{metrics}"
    );
    assert_eq!(c.send_raw("PUT bad later").await.unwrap(), "OK");
}
