//! Fencing and failover: a partitioned segment leader stops acknowledging
//! within its lease, the majority opens a new segment after `lease +
//! margin`, the two never acknowledge at the same time, and after healing
//! the pending count resolves and nothing acknowledged is lost or doubled.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use walrus_core::metadata::SegmentStatus;
use walrus_core::protocol::Response;
use walrus_core::testing::TestCluster;
use walrus_core::TopicName;

#[derive(Debug, Clone)]
struct Attempt {
    at: Instant,
    id: String,
    resp: Response,
}

/// PUTs `"{prefix}{i}"` via `node` every 10 ms until `until`.
async fn writer(
    c: Arc<TestCluster>,
    node: u64,
    prefix: &'static str,
    until: Instant,
) -> Vec<Attempt> {
    let mut out = Vec::new();
    let mut i = 0;
    while Instant::now() < until {
        let id = format!("{prefix}{i}");
        let resp = c.send(node, &format!("PUT logs {id}")).await;
        out.push(Attempt {
            at: Instant::now(),
            id,
            resp,
        });
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out
}

fn acked(attempts: &[Attempt]) -> Vec<&Attempt> {
    attempts.iter().filter(|a| a.resp == Response::Ok).collect()
}

#[tokio::test(start_paused = true)]
async fn given_a_partitioned_segment_leader_should_fence_it_fail_over_and_lose_nothing() {
    let c = Arc::new(TestCluster::start(3, |id| TestCluster::config(id, 1_000_000)).await);
    let cfg = TestCluster::config(2, 0);
    assert_eq!(c.send(2, "REGISTER logs").await, Response::Ok);
    for i in 0..5 {
        assert_eq!(c.send(3, &format!("PUT logs pre{i}")).await, Response::Ok);
    }

    // Node 2 leads segment 1; cut it off from everyone.
    let t0 = Instant::now();
    c.isolate(2);
    let until = t0 + Duration::from_secs(4);
    let minority = tokio::spawn(writer(c.clone(), 2, "a", until));
    let majority = tokio::spawn(writer(c.clone(), 1, "b", until));

    // While segment 1 is pending, readers wait at it, naming the node.
    tokio::time::sleep(Duration::from_secs(3)).await;
    match c.send(3, "GET logs").await {
        Response::Err(e) => assert!(
            e.starts_with("unavailable: segment 1 of logs is on node 2, which is down")
                && e.contains("replace-storage 2"),
            "readers are told which node holds them up and what to do: {e}"
        ),
        other => panic!("GET behind a pending segment answered {other:?}"),
    }
    let minority = minority.await.unwrap();
    let majority = majority.await.unwrap();

    // The minority leader stops acknowledging within its lease...
    let first_expired = minority
        .iter()
        .find(|a| a.resp == Response::Err("write lease expired".into()))
        .expect("the cut-off leader answers `write lease expired`");
    assert!(
        first_expired.at <= t0 + cfg.lease + cfg.lease_renew * 3,
        "fenced {:?} after the partition, lease is {:?}",
        first_expired.at - t0,
        cfg.lease
    );
    assert!(
        minority
            .iter()
            .filter(|a| a.at >= first_expired.at)
            .all(|a| a.resp != Response::Ok),
        "no acknowledgement after the first `write lease expired`"
    );
    // ...and the majority takes over and accepts writes.
    let minority_acks = acked(&minority);
    let majority_acks = acked(&majority);
    assert!(
        !minority_acks.is_empty(),
        "the leader kept acking within its lease"
    );
    assert!(!majority_acks.is_empty(), "the majority accepted writes");
    let last_minority = minority_acks.last().unwrap().at;
    eprintln!(
        "fenced after {:?}; {} acks on node 2, {} on the majority",
        first_expired.at - t0,
        minority_acks.len(),
        majority_acks.len()
    );
    let first_majority = majority_acks.first().unwrap().at;
    assert!(
        last_minority < first_majority,
        "two writers at once: node 2 acked at {:?}, the majority at {:?}",
        last_minority - t0,
        first_majority - t0
    );
    assert!(
        first_majority <= t0 + cfg.lease + cfg.failover_margin + Duration::from_millis(500),
        "writes resumed only after {:?}",
        first_majority - t0
    );
    // The storage agrees: node 2's last append to the topic precedes the
    // first append of the new leader.
    let new_leader = c
        .metadata
        .committed()
        .topic(&TopicName::new("logs").unwrap())
        .unwrap()
        .segments[1]
        .leader;
    assert_ne!(new_leader, 2);
    let old_appends = c.logs[&2].append_history();
    let new_appends = c.logs[&new_leader].append_history();
    assert!(old_appends.last().unwrap().0 < new_appends.first().unwrap().0);

    // Healing: node 2 reports its count, readers pass the segment.
    c.heal();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = c.metadata.committed();
    let t = state.topic(&TopicName::new("logs").unwrap()).unwrap();
    let expected_count = 5 + minority_acks.len() as u64;
    assert_eq!(
        t.segments[0].status,
        SegmentStatus::Sealed {
            count: expected_count
        }
    );
    assert!(state.pending_segments_of(2).is_empty());
    assert_eq!(c.send(2, "PUT logs after").await, Response::Ok);

    let entries = c.drain(1, "logs", Duration::from_secs(5)).await;
    let read: Vec<&str> = entries
        .iter()
        .map(|e| std::str::from_utf8(e).unwrap())
        .collect();
    let unique: HashSet<&str> = read.iter().copied().collect();
    assert_eq!(
        unique.len(),
        read.len(),
        "an entry was read twice: {read:?}"
    );
    let mut expected: Vec<String> = (0..5).map(|i| format!("pre{i}")).collect();
    expected.extend(minority_acks.iter().map(|a| a.id.clone()));
    expected.extend(majority_acks.iter().map(|a| a.id.clone()));
    expected.push("after".into());
    // Unacknowledged writes never reached a log here (the lease check
    // comes before the append), so the read is exactly the acks, in order.
    assert_eq!(read, expected);
}

#[tokio::test(start_paused = true)]
async fn given_the_consensus_leader_leads_the_segment_when_it_is_cut_off_should_fail_over_to_the_new_leader(
) {
    let c = Arc::new(TestCluster::start(3, |id| TestCluster::config(id, 1_000_000)).await);
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    assert_eq!(c.send(2, "PUT logs x").await, Response::Ok);
    let t0 = Instant::now();
    c.isolate(1);
    c.metadata.set_leader(Some(2));
    let majority = tokio::spawn(writer(c.clone(), 3, "b", t0 + Duration::from_secs(3)));
    let minority = tokio::spawn(writer(c.clone(), 1, "a", t0 + Duration::from_secs(3)));
    let majority = majority.await.unwrap();
    let minority = minority.await.unwrap();
    let last_minority = acked(&minority).last().map(|a| a.at);
    let first_majority = acked(&majority)
        .first()
        .expect("writes resume on the majority")
        .at;
    if let Some(last) = last_minority {
        assert!(last < first_majority);
    }
    c.heal();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let entries = c.drain(3, "logs", Duration::from_secs(5)).await;
    let mut expected = vec!["x".to_string()];
    expected.extend(acked(&minority).iter().map(|a| a.id.clone()));
    expected.extend(acked(&majority).iter().map(|a| a.id.clone()));
    let read: Vec<String> = entries
        .iter()
        .map(|e| String::from_utf8(e.to_vec()).unwrap())
        .collect();
    assert_eq!(read, expected);
}

/// Five nodes, two of them cut off at once while they lead topics: the
/// majority of three keeps every topic writable, and after healing every
/// acknowledged write is read once, in order.
#[tokio::test(start_paused = true)]
async fn given_five_nodes_when_two_segment_leaders_are_cut_off_should_keep_every_topic_writable() {
    let c = Arc::new(TestCluster::start(5, |id| TestCluster::config(id, 4)).await);
    for n in 1..=5 {
        assert_eq!(c.send(n, &format!("REGISTER t{n}")).await, Response::Ok);
    }
    let mut acked: Vec<Vec<String>> = vec![Vec::new(); 6];
    for round in 0..10 {
        for n in 1..=5u64 {
            let id = format!("r{round}");
            assert_eq!(
                c.send(round % 5 + 1, &format!("PUT t{n} {id}")).await,
                Response::Ok
            );
            acked[n as usize].push(id);
        }
    }
    c.isolate(4);
    c.isolate(5);
    // Writes through the majority: retried by the client until OK.
    for round in 10..20 {
        for n in 1..=5u64 {
            let id = format!("r{round}");
            let mut tries = 0;
            while c.send(round % 3 + 1, &format!("PUT t{n} {id}")).await != Response::Ok {
                tries += 1;
                assert!(tries < 100, "t{n} stayed unwritable");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            acked[n as usize].push(id);
        }
    }
    // The cut-off nodes were handed nothing new.
    let state = c.metadata.committed();
    for n in 1..=5 {
        let t = state
            .topic(&TopicName::new(format!("t{n}")).unwrap())
            .unwrap();
        assert!(
            ![4, 5].contains(&t.current().leader),
            "t{n} still led by a cut-off node"
        );
    }
    c.heal();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(c.metadata.committed().pending_segments_of(4).is_empty());
    assert!(c.metadata.committed().pending_segments_of(5).is_empty());
    for n in 1..=5u64 {
        let read = c
            .drain(n % 5 + 1, &format!("t{n}"), Duration::from_secs(5))
            .await;
        let read: Vec<String> = read
            .iter()
            .map(|e| String::from_utf8(e.to_vec()).unwrap())
            .collect();
        assert_eq!(read, acked[n as usize], "topic t{n}");
    }
}

/// The duplicate found by the end-to-end partition test: an entry written
/// under a valid lease whose append outlives the lease is stored (and will
/// be read), so its answer must not be the retry-safe `write lease
/// expired`: a client retrying it would store it twice.
#[tokio::test(start_paused = true)]
async fn given_an_append_that_outlives_the_lease_should_not_invite_a_retry_and_be_read_once() {
    let c = Arc::new(TestCluster::start(3, |id| TestCluster::config(id, 1_000_000)).await);
    let cfg = TestCluster::config(2, 0);
    assert_eq!(c.send(2, "REGISTER logs").await, Response::Ok);
    assert_eq!(c.send(2, "PUT logs before").await, Response::Ok);

    // Node 2's disk stalls for longer than a lease plus the margin, and
    // node 2 is cut off while the append is in flight.
    c.logs[&2].delay_appends(Some(cfg.lease + cfg.failover_margin));
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { c.send(2, "PUT logs slow").await })
    };
    tokio::time::sleep(Duration::from_millis(1)).await;
    c.isolate(2);
    let answer = slow.await.unwrap();
    let Response::Err(text) = &answer else {
        panic!("a write that outlived its lease was acknowledged: {answer:?}");
    };
    assert!(
        text != "write lease expired" && text != "NotLeaderError",
        "a stored write was answered with a retry-safe error: {text}"
    );
    assert!(text.contains("do not send it again"), "{text}");

    // The majority moves on; after healing, the stored entry is read once.
    c.logs[&2].delay_appends(None);
    assert_eq!(c.send(1, "PUT logs after").await, Response::Ok);
    c.heal();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let entries = c.drain(3, "logs", Duration::from_secs(5)).await;
    assert_eq!(entries, vec!["before", "slow", "after"]);
}

/// The consensus leader decides to fail node 2 over, and while its `Roll`
/// commits, a renewal from node 2 reaches it. Confirming that renewal
/// would hand node 2 a fresh lease on metadata that predates the `Roll`:
/// node 2, lagging behind on metadata, would go on acknowledging into
/// segment 1 after segment 2 took writes, and readers would see entries
/// out of acknowledgement order.
#[tokio::test(start_paused = true)]
async fn given_a_renewal_arriving_while_its_failover_commits_when_the_old_leader_lags_should_not_ack_after_the_next_segment(
) {
    let c = TestCluster::start(3, |id| TestCluster::config(id, 1_000_000)).await;
    let cfg = TestCluster::config(2, 0);
    let logs = TopicName::new("logs").unwrap();
    assert_eq!(c.send(2, "REGISTER logs").await, Response::Ok);
    assert_eq!(c.send(2, "PUT logs before").await, Response::Ok);
    let segments = |c: &TestCluster| c.metadata.committed().topic(&logs).unwrap().segments.len();

    // Node 2's renewals stop reaching the consensus leader (node 1), and
    // every proposal now takes a second to commit.
    c.metadata.set_commit_delay(Some(Duration::from_secs(1)));
    c.net.isolate(2);
    // Node 1 decides the failover within a loop pass of `lease + margin`
    // of silence; just after, node 2's renewals get through again, while
    // the `Roll` is still in flight. Node 2 applies no more metadata (a
    // follower far behind) and so learns of the `Roll` late.
    tokio::time::sleep(cfg.lease + cfg.failover_margin + cfg.lease_renew * 2).await;
    assert_eq!(segments(&c), 1, "the failover's Roll is still committing");
    c.net.heal();
    c.metadata.cut_off(2);
    let deadline = Instant::now() + Duration::from_secs(3);
    while segments(&c) < 2 {
        assert!(Instant::now() < deadline, "node 1 never failed node 2 over");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut next = c.send(1, "PUT logs next").await;
    while next != Response::Ok {
        assert!(
            Instant::now() < deadline,
            "segment 2 takes no writes: {next:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        next = c.send(1, "PUT logs next").await;
    }

    let late = c.send(2, "PUT logs late").await;
    assert_ne!(
        late,
        Response::Ok,
        "node 2 acknowledged into segment 1 after segment 2 took a write"
    );

    c.metadata.set_commit_delay(None);
    c.heal();
    let read = c.drain(3, "logs", Duration::from_secs(5)).await;
    assert_eq!(read, vec!["before", "next"]);
}
