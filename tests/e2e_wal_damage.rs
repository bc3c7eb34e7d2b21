//! A damaged WAL file stops only its segment: a stopped single node gets
//! one byte of one topic's WAL file flipped, restarts, serves its other
//! topics, the damaged topic's entries up to the damage and an error that
//! names the file and byte past it, and counts the quarantined segment in
//! METRICS.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

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
    let c = cluster.client(1);
    for topic in ["good", "bad"] {
        cluster.register(1, topic).await;
        for i in 0..10 {
            assert_eq!(
                c.send_raw(&format!("PUT {topic} {topic}-{i}"))
                    .await
                    .unwrap(),
                "OK"
            );
        }
    }
    assert_eq!(
        cluster
            .nodes
            .get_mut(&1)
            .unwrap()
            .terminate(Duration::from_secs(20)),
        Some(0)
    );

    let file = first_wal_file(cluster.dir.path(), "bad");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = record_offset(&bytes, 4);
    bytes[at + 9] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();

    cluster.nodes.get_mut(&1).unwrap().spawn();
    cluster.wait_ready(&[1], Duration::from_secs(30)).await;
    let c = cluster.client(1);

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
    let past = c.send_raw("GET bad").await.unwrap();
    assert!(
        past.starts_with("ERR corrupt data")
            && past.contains(&file.file_name().unwrap().to_string_lossy().to_string())
            && past.contains(&format!("byte {at}")),
        "a read past the damage names file and byte: {past}"
    );
    let refused = c.send_raw("PUT bad more").await.unwrap();
    assert!(refused.starts_with("ERR"), "{refused}");

    let metrics = c.metrics().await.unwrap();
    assert_eq!(
        metrics["walrus"]["storage"]["quarantined_segments"],
        serde_json::json!(1),
        "{metrics}"
    );
}
