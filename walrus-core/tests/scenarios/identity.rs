//! Storage identity on the fakes: a node that comes back with a wiped or
//! replaced disk is refused (its claim, its count reports), readers wait at
//! its segments, and only the operator's REPLACE-STORAGE accepts the loss.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use walrus_core::metadata::{MetadataCmd, SegmentStatus};
use walrus_core::protocol::Response;
use walrus_core::testing::{MemLogStore, TestCluster};
use walrus_core::{
    CmdResult, Error, MetadataStore, NodeId, NodeRequest, RequestHandler, StorageId, TopicName,
};

fn disk(node: NodeId) -> StorageId {
    StorageId::from_u128(0x1000 + node as u128)
}

const NEW_DISK: StorageId = StorageId::from_u128(0xbeef);

/// Three nodes, each with a storage identity recorded in metadata.
async fn cluster() -> TestCluster {
    let c = TestCluster::start(3, |id| {
        let mut config = TestCluster::config(id, 1000);
        config.storage = Some(disk(id));
        config
    })
    .await;
    for id in 1..=3 {
        let cmd = MetadataCmd::RegisterStorage {
            node: id,
            storage: disk(id),
        };
        assert_eq!(
            c.metadata.store(1).propose(cmd).await,
            Ok(CmdResult::Applied)
        );
    }
    c
}

async fn put_until_ok(c: &TestCluster, via: NodeId, line: &str) {
    for _ in 0..200 {
        if c.send(via, line).await == Response::Ok {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{line} via node {via} never succeeded");
}

fn segment_status(c: &TestCluster, topic: &str, segment: usize) -> SegmentStatus {
    let topic = TopicName::new(topic).unwrap();
    c.metadata.committed().topic(&topic).unwrap().segments[segment].status
}

async fn expect_blocked_at_node_2(c: &TestCluster) {
    match c.send(3, "GET logs").await {
        Response::Err(e) => assert!(
            e.starts_with("unavailable: segment 1 of logs is on node 2, which is down")
                && e.contains("replace-storage 2"),
            "{e}"
        ),
        other => panic!("a reader passed the pending segment of the wiped node: {other:?}"),
    }
}

/// Segment 1 (node 2) holds a0..a3, of which the readers got a0 and a1
/// (a1 from the owner's read-ahead after node 2 died); node 2 is killed and
/// segment 2 on another node holds b0..b2.
async fn wiped_segment_leader() -> TestCluster {
    let c = cluster().await;
    assert_eq!(c.send(2, "REGISTER logs").await, Response::Ok);
    for p in ["a0", "a1"] {
        assert_eq!(c.send(1, &format!("PUT logs {p}")).await, Response::Ok);
    }
    assert_eq!(c.send(3, "GET logs").await, Response::Entry("a0".into()));
    for p in ["a2", "a3"] {
        assert_eq!(c.send(1, &format!("PUT logs {p}")).await, Response::Ok);
    }
    c.crash(2).await;
    for p in ["b0", "b1", "b2"] {
        put_until_ok(&c, 1, &format!("PUT logs {p}")).await;
    }
    assert_eq!(segment_status(&c, "logs", 0), SegmentStatus::Pending);
    assert_eq!(c.send(3, "GET logs").await, Response::Entry("a1".into()));
    expect_blocked_at_node_2(&c).await;
    c
}

#[tokio::test(start_paused = true)]
async fn given_a_wiped_segment_leader_when_it_restarts_should_have_its_count_refused_and_readers_wait(
) {
    let mut c = wiped_segment_leader().await;

    // Node 2 comes back on an empty disk: a new log, a new storage identity.
    c.logs.insert(2, Arc::new(MemLogStore::new()));
    c.configs.get_mut(&2).unwrap().storage = Some(NEW_DISK);
    c.restart(2);
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert_eq!(
        segment_status(&c, "logs", 0),
        SegmentStatus::Pending,
        "a count read from an empty disk must not close the segment"
    );
    expect_blocked_at_node_2(&c).await;
}

#[tokio::test(start_paused = true)]
async fn given_a_wiped_segment_leader_when_the_operator_replaces_its_storage_should_keep_what_readers_got_and_skip_nothing_else(
) {
    let mut c = wiped_segment_leader().await;

    let answer = c.send(3, &format!("REPLACE-STORAGE 2 {NEW_DISK}")).await;
    let Response::Json(json) = answer else {
        panic!("REPLACE-STORAGE answered {answer:?}");
    };
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["lost_segments"][0]["segment"], 1);
    assert_eq!(
        json["lost_segments"][0]["kept_entries"], 2,
        "the segment keeps the two entries readers were given"
    );
    assert_eq!(
        segment_status(&c, "logs", 0),
        SegmentStatus::Lost { count: 2 }
    );
    let rest = c.drain(3, "logs", Duration::from_secs(5)).await;
    let expected: Vec<Bytes> = ["b0", "b1", "b2"].into_iter().map(Bytes::from).collect();
    assert_eq!(rest, expected, "nothing after the lost segment is skipped");
    // By offset: the lost segment keeps offsets 0 and 1, gone for good;
    // the next segment's entries follow them.
    match c.send(1, "READ logs 1").await {
        Response::Err(e) => assert_eq!(
            e,
            "lost: offsets 0 to 1 of logs were in segment 1, whose entries were lost with the \
             storage of node 2 (accepted with REPLACE-STORAGE); read on from offset 2"
        ),
        other => panic!("READ of a lost offset answered {other:?}"),
    }
    assert_eq!(
        c.send(1, "READ logs 2").await,
        Response::Entries {
            entries: (2..).zip(expected.iter().cloned()).collect(),
            next: 5
        }
    );

    // The accepted storage is the node's now: it comes back and writes.
    c.logs.insert(2, Arc::new(MemLogStore::new()));
    c.configs.get_mut(&2).unwrap().storage = Some(NEW_DISK);
    c.restart(2);
    assert_eq!(
        c.send(2, &format!("REPLACE-STORAGE 2 {NEW_DISK}")).await,
        Response::Json(format!(
            "{{\"lost_segments\":[],\"node\":2,\"storage\":\"{NEW_DISK}\"}}"
        )),
        "repeating the command changes nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn given_a_member_when_another_storage_claims_its_id_should_refuse_it_and_say_what_to_do() {
    let c = cluster().await;
    let claim = |storage| NodeRequest::ClaimStorage {
        node: 2,
        storage,
        fresh: true,
    };
    let node1: &dyn RequestHandler = &**c.node(1);
    // Node 2 holds no segment, so a wiped node 2 would be refilled (issue
    // 10), but it is live: another process claims its id, and waits.
    match node1.handle(claim(NEW_DISK)).await {
        Err(Error::Unavailable(why)) => {
            assert!(why.contains("node 2 was heard from"), "{why}");
            assert!(why.contains(&disk(2).to_string()), "{why}");
            assert!(
                why.contains(&format!("walrus-cli node replace-storage 2 {NEW_DISK}")),
                "{why}"
            );
        }
        other => panic!("a replaced disk claimed node 2 and got {other:?}"),
    }
    assert!(node1.handle(claim(disk(2))).await.is_ok(), "its own disk");
}

#[tokio::test(start_paused = true)]
async fn given_a_live_segment_leader_when_the_operator_replaces_its_storage_should_refuse() {
    let c = cluster().await;
    assert_eq!(c.send(2, "REGISTER logs").await, Response::Ok);
    match c.send(1, &format!("REPLACE-STORAGE 2 {NEW_DISK}")).await {
        Response::Err(e) => assert!(
            e.starts_with("refused: node 2 still leads the open segment logs:1"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    match c.send(2, &format!("REPLACE-STORAGE 1 {NEW_DISK}")).await {
        Response::Err(e) => assert!(e.contains("consensus leader"), "{e}"),
        other => panic!("{other:?}"),
    }
}
