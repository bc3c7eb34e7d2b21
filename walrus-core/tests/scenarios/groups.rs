//! Consumer groups (FETCH, COMMIT, SEEK): each group reads a topic from
//! its own committed offset, kept in the replicated metadata, so it
//! survives failover of the consensus leader and restarts; nothing but a
//! COMMIT moves it (at-least-once), and no group touches the shared GET
//! cursor.

use std::time::Duration;

use bytes::Bytes;
use walrus_core::metadata::{ClusterState, CmdResult, MetadataCmd};
use walrus_core::protocol::Response;
use walrus_core::testing::TestCluster;
use walrus_core::{GroupName, NodeId, TopicName};

/// The payloads of `from..to`, at their offsets.
fn entries(from: u64, to: u64) -> Vec<(u64, Bytes)> {
    (from..to)
        .map(|i| (i, Bytes::from(format!("e{i}"))))
        .collect()
}

/// A cluster of three with `n` entries `e0`, `e1`, … in topic `logs`,
/// segments of `segment` entries.
async fn cluster_with(n: u64, segment: u64) -> TestCluster {
    let c = TestCluster::start(3, |id| TestCluster::config(id, segment)).await;
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    for i in 0..n {
        let via = i % 3 + 1;
        assert_eq!(c.send(via, &format!("PUT logs e{i}")).await, Response::Ok);
    }
    c
}

/// Sends `line` to `via` until it is not `ERR unavailable…` (a node still
/// finding the new consensus leader), for up to 10 s.
async fn send_settled(c: &TestCluster, via: NodeId, line: &str) -> Response {
    for _ in 0..200 {
        match c.send(via, line).await {
            Response::Err(e) if e.starts_with("unavailable") => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => return other,
        }
    }
    panic!("{line} via node {via} stayed unavailable for 10 s");
}

#[tokio::test(start_paused = true)]
async fn given_two_groups_when_one_commits_should_move_only_it_and_leave_get_alone() {
    let c = cluster_with(10, 4).await;
    let fetched = |entries: Vec<(u64, Bytes)>, next| Response::Entries { entries, next };
    // No commit yet: both start at 0.
    assert_eq!(c.send(1, "FETCH a logs 3").await, fetched(entries(0, 3), 3));
    assert_eq!(c.send(2, "FETCH b logs 3").await, fetched(entries(0, 3), 3));
    // A FETCH commits nothing: the same entries come again.
    assert_eq!(c.send(3, "FETCH a logs 3").await, fetched(entries(0, 3), 3));
    assert_eq!(c.send(1, "COMMIT a logs 3").await, Response::Ok);
    // Across the rollover at 4, from any node.
    assert_eq!(c.send(2, "FETCH a logs 3").await, fetched(entries(3, 4), 4));
    assert_eq!(c.send(3, "COMMIT a logs 4").await, Response::Ok);
    assert_eq!(
        c.send(3, "FETCH a logs 100").await,
        fetched(entries(4, 8), 8)
    );
    // Group b did not move, nor did the shared cursor.
    assert_eq!(c.send(3, "FETCH b logs 2").await, fetched(entries(0, 2), 2));
    assert_eq!(
        c.send(2, "GET logs").await,
        Response::Entry(Bytes::from("e0"))
    );
    // GETs move no group.
    assert_eq!(
        c.send(2, "GET logs").await,
        Response::Entry(Bytes::from("e1"))
    );
    assert_eq!(c.send(1, "FETCH b logs 1").await, fetched(entries(0, 1), 1));
    // The same group name on another topic is another offset.
    assert_eq!(c.send(1, "REGISTER other").await, Response::Ok);
    assert_eq!(c.send(1, "PUT other x").await, Response::Ok);
    assert_eq!(
        c.send(1, "FETCH a other").await,
        fetched(vec![(0, Bytes::from("x"))], 1)
    );
}

#[tokio::test(start_paused = true)]
async fn given_a_commit_when_fetching_should_return_the_entries_after_it_and_seek_anywhere_in_range(
) {
    let c = cluster_with(12, 5).await;
    assert_eq!(c.send(2, "COMMIT g logs 7").await, Response::Ok);
    assert_eq!(
        c.send(3, "FETCH g logs 2").await,
        Response::Entries {
            entries: entries(7, 9),
            next: 9
        }
    );
    // SEEK is COMMIT: back to an earlier offset, the entries come again.
    assert_eq!(c.send(1, "SEEK g logs 1").await, Response::Ok);
    assert_eq!(
        c.send(2, "FETCH g logs 2").await,
        Response::Entries {
            entries: entries(1, 3),
            next: 3
        }
    );
    // At the end: an empty answer, and a FETCH with WAIT gets the next PUT.
    assert_eq!(c.send(1, "COMMIT g logs 12").await, Response::Ok);
    assert_eq!(
        c.send(1, "FETCH g logs").await,
        Response::Entries {
            entries: vec![],
            next: 12
        }
    );
    let waiting = {
        let node = c.node(3).clone();
        tokio::spawn(async move {
            let req =
                walrus_core::protocol::Request::parse(Bytes::from("FETCH g logs 5 WAIT 5000"))
                    .expect("a well-formed FETCH");
            node.handle(req).await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(c.send(2, "PUT logs e12").await, Response::Ok);
    assert_eq!(
        waiting.await.unwrap(),
        Response::Entries {
            entries: entries(12, 13),
            next: 13
        }
    );
    // Past the end: refused, the offset stays.
    match c.send(1, "COMMIT g logs 14").await {
        Response::Err(e) => assert!(
            e.starts_with("offset 14 is outside logs (0 to 13): commit an offset from 0 to 13"),
            "{e}"
        ),
        other => panic!("COMMIT past the end answered {other:?}"),
    }
    assert_eq!(
        c.send(1, "FETCH g logs").await,
        Response::Entries {
            entries: entries(12, 13),
            next: 13
        }
    );
    // Bad names and unknown topics.
    assert_eq!(
        c.send(1, "COMMIT g nope 0").await,
        Response::Err("topic not found".into())
    );
    assert_eq!(
        c.send(1, "FETCH g nope").await,
        Response::Err("topic not found".into())
    );
    match c.send(1, "FETCH a/b logs").await {
        Response::Err(e) => assert!(e.starts_with("invalid group name"), "{e}"),
        other => panic!("a bad group name answered {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn given_committed_offsets_when_the_consensus_leader_fails_over_and_every_node_restarts_should_resume_there(
) {
    let mut c = cluster_with(9, 4).await;
    assert_eq!(c.send(2, "COMMIT a logs 5").await, Response::Ok);
    assert_eq!(c.send(3, "COMMIT b logs 2").await, Response::Ok);
    // The consensus leader (node 1) crashes; node 2 is elected.
    let leader = c.metadata.leader().expect("a consensus leader");
    c.crash(leader).await;
    let next = leader % 3 + 1;
    c.metadata.set_leader(Some(next));
    let via = next % 3 + 1;
    assert_eq!(
        send_settled(&c, via, "FETCH a logs 2").await,
        Response::Entries {
            entries: entries(5, 7),
            next: 7
        }
    );
    assert_eq!(send_settled(&c, via, "COMMIT a logs 7").await, Response::Ok);
    c.restart(leader);
    // Every node crashes and comes back: committed offsets are metadata.
    for id in 1..=3 {
        c.crash(id).await;
    }
    for id in 1..=3 {
        c.restart(id);
    }
    for id in 1..=3 {
        assert_eq!(
            // One READ stays within a segment: 7 is the last of 4..8.
            send_settled(&c, id, "FETCH a logs 100").await,
            Response::Entries {
                entries: entries(7, 8),
                next: 8
            },
            "group a via node {id}"
        );
        assert_eq!(
            send_settled(&c, id, "FETCH b logs 1").await,
            Response::Entries {
                entries: entries(2, 3),
                next: 3
            },
            "group b via node {id}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn given_a_commit_retried_when_applied_twice_should_change_the_state_once() {
    // A proposal that timed out may have committed: its retry is the same
    // command again, and must change nothing.
    let mut state = ClusterState::default();
    let topic = TopicName::new("logs").unwrap();
    let group = GroupName::new("g").unwrap();
    state.apply(&MetadataCmd::CreateTopic {
        topic: topic.clone(),
        leader: 1,
    });
    let commit = MetadataCmd::CommitOffset {
        group: group.clone(),
        topic: topic.clone(),
        offset: 3,
    };
    assert_eq!(state.apply(&commit), CmdResult::Applied);
    let once = state.clone();
    assert_eq!(state.apply(&commit), CmdResult::Unchanged);
    state.version = once.version;
    assert_eq!(state, once);
    assert_eq!(state.committed_offset(&group, &topic), Some(3));
    let missing = MetadataCmd::CommitOffset {
        group,
        topic: TopicName::new("nope").unwrap(),
        offset: 0,
    };
    assert!(matches!(state.apply(&missing), CmdResult::Rejected(_)));

    // On the wire: the same COMMIT twice is OK twice and one offset.
    let c = cluster_with(6, 100).await;
    assert_eq!(c.send(1, "COMMIT g logs 4").await, Response::Ok);
    assert_eq!(c.send(2, "COMMIT g logs 4").await, Response::Ok);
    let commits: Vec<MetadataCmd> = c
        .metadata
        .log()
        .into_iter()
        .filter(|cmd| matches!(cmd, MetadataCmd::CommitOffset { .. }))
        .collect();
    assert_eq!(commits.len(), 2, "both were proposed");
    assert_eq!(
        c.metadata
            .committed()
            .committed_offset(&GroupName::new("g").unwrap(), &topic),
        Some(4)
    );
    assert_eq!(
        c.send(3, "FETCH g logs").await,
        Response::Entries {
            entries: entries(4, 6),
            next: 6
        }
    );
}

/// Found by the simulator (seed 14219): a node behind on metadata still
/// saw an older segment as the open one and counted the topic's end from
/// it, so it refused to commit the offset a FETCH had just returned.
#[tokio::test(start_paused = true)]
async fn given_a_node_behind_on_metadata_when_committing_a_fetched_offset_should_accept_it() {
    // Node 4 leads segment 1; its rollover wraps round to node 1, the
    // consensus leader, which applies the Roll at once.
    let c = TestCluster::start(4, |id| TestCluster::config(id, 2)).await;
    assert_eq!(c.send(4, "REGISTER logs").await, Response::Ok);
    c.metadata.set_lag(Some(Duration::from_secs(1)));
    for p in ["a", "b", "c"] {
        assert_eq!(
            send_settled(&c, 1, &format!("PUT logs {p}")).await,
            Response::Ok
        );
    }
    assert_eq!(
        c.send(1, "READ logs 2").await,
        Response::Entries {
            entries: vec![(2, Bytes::from("c"))],
            next: 3
        }
    );
    // Node 3 has not applied the Roll yet: to it, segment 1 is still open.
    assert_eq!(c.send(3, "COMMIT g logs 3").await, Response::Ok);
    assert_eq!(
        c.send(2, "COMMIT g logs 4").await,
        Response::Err(
            "offset 4 is outside logs (0 to 3): commit an offset from 0 to 3 (the end: every \
             entry read)"
                .into()
        ),
        "past the end stays refused"
    );
}

/// Waits (up to 10 s) until consensus holds `offset` for group `g` on `logs`.
async fn wait_committed(c: &TestCluster, offset: u64) {
    let (g, logs) = (
        GroupName::new("g").unwrap(),
        TopicName::new("logs").unwrap(),
    );
    for _ in 0..1000 {
        if c.metadata.committed().committed_offset(&g, &logs) == Some(offset) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "consensus holds {:?} for g on logs, not {offset}",
        c.metadata.committed().committed_offset(&g, &logs)
    );
}

fn fetched(from: u64, to: u64) -> Response {
    Response::Entries {
        entries: entries(from, to),
        next: to,
    }
}

#[tokio::test(start_paused = true)]
async fn given_an_async_commit_when_fetching_should_read_from_it_at_once_there_and_everywhere_once_durable(
) {
    let c = cluster_with(10, 100).await;
    // Node 2 out of consensus: what it commits asynchronously stays in its
    // memory, and its own FETCHes read from it.
    c.metadata.cut_off(2);
    assert_eq!(c.send(2, "COMMIT g logs 3 ASYNC").await, Response::Ok);
    assert_eq!(c.send(2, "FETCH g logs 2").await, fetched(3, 5));
    assert_eq!(c.send(2, "COMMIT g logs 5 async").await, Response::Ok);
    assert_eq!(c.send(2, "FETCH g logs 2").await, fetched(5, 7));
    // Not durable yet: another node reads from the last durable commit.
    assert_eq!(c.send(3, "FETCH g logs 2").await, fetched(0, 2));
    // Outside the topic: refused at once, like a durable COMMIT.
    match c.send(2, "COMMIT g logs 11 ASYNC").await {
        Response::Err(e) => assert!(e.starts_with("offset 11 is outside logs"), "{e}"),
        other => panic!("an async COMMIT past the end answered {other:?}"),
    }
    // Back in consensus: the latest is made durable, and read everywhere.
    c.metadata.reconnect(2);
    wait_committed(&c, 5).await;
    for via in 1..=3 {
        assert_eq!(
            c.send(via, "FETCH g logs 2").await,
            fetched(5, 7),
            "via {via}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn given_an_async_commit_not_yet_durable_when_its_node_crashes_should_be_fetched_again_elsewhere(
) {
    let c = cluster_with(10, 100).await;
    assert_eq!(c.send(2, "COMMIT g logs 2").await, Response::Ok);
    c.metadata.cut_off(2);
    assert_eq!(c.send(2, "COMMIT g logs 6 ASYNC").await, Response::Ok);
    c.crash(2).await;
    // At-least-once: entries 2.. come again from the last durable commit.
    assert_eq!(send_settled(&c, 3, "FETCH g logs 2").await, fetched(2, 4));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        c.metadata.committed().committed_offset(
            &GroupName::new("g").unwrap(),
            &TopicName::new("logs").unwrap()
        ),
        Some(2),
        "the stopped node's flusher must not land the commit it dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn given_an_async_commit_then_a_durable_one_when_both_are_taken_should_keep_the_durable_one()
{
    let c = cluster_with(10, 100).await;
    c.metadata.cut_off(2);
    assert_eq!(c.send(2, "COMMIT g logs 6 ASYNC").await, Response::Ok);
    c.metadata.reconnect(2);
    // The durable COMMIT replaces the pending one and lands after it.
    assert_eq!(c.send(2, "COMMIT g logs 1").await, Response::Ok);
    wait_committed(&c, 1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    wait_committed(&c, 1).await;
    for via in 1..=3 {
        assert_eq!(
            c.send(via, "FETCH g logs 2").await,
            fetched(1, 3),
            "via {via}"
        );
    }
}
