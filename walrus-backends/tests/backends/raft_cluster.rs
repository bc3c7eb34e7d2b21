//! Three (and four) RaftMetadataStores in one process over loopback TCP.

use crate::raft_common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use raft_common::{create, topic, wait_topic, Cluster};
use walrus_core::{CmdResult, Error, MetadataStore, NodeId};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_three_nodes_when_started_should_agree_on_one_leader_and_three_voters() {
    let mut c = Cluster::start(3).await;
    let leader = c.leader().await;
    let everyone: BTreeSet<NodeId> = (1..=3).collect();
    for id in 1..=3 {
        // Node 3's join returns once a quorum has committed it as a voter;
        // nodes 1 and 2 are that quorum, so node 3's own view of the
        // membership may arrive a replication round later.
        let st = c
            .wait_status(id, Duration::from_secs(5), |st| {
                st.leader == Some(leader) && st.voters == everyone
            })
            .await;
        assert_eq!(st.leader, Some(leader), "node {id} sees another leader");
        assert_eq!(st.voters, everyone, "node {id} voters: {:?}", st.voters);
    }
    // Every node recorded its addresses in metadata.
    for id in 1..=3 {
        let nodes = c.store(c.leader().await).state().nodes.clone();
        assert_eq!(nodes[&id].raft_addr, c.nodes[&id].addr);
    }
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_a_follower_when_proposing_should_forward_to_the_leader_and_read_its_write() {
    let mut c = Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("two followers");
    let r = c.store(follower).propose(create("via-follower")).await;
    assert_eq!(r, Ok(CmdResult::Applied));
    assert!(c
        .store(follower)
        .state()
        .topic(&topic("via-follower"))
        .is_some());
    assert!(wait_topic(c.store(leader), "via-follower", Duration::from_secs(5)).await);
    // A follower cannot confirm.
    assert_eq!(c.store(follower).confirm().await, Err(Error::NotLeader));
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_the_leader_killed_when_waiting_should_elect_a_new_leader_within_two_seconds() {
    let mut c = Cluster::start(3).await;
    let old = c.leader().await;
    c.store(old)
        .propose(create("before-kill"))
        .await
        .expect("commit");
    c.stop(old).await;
    let killed_at = Instant::now();
    let new = c
        .leader_except(&[old], Duration::from_secs(2))
        .await
        .expect("a new leader within 2 s of the kill");
    let took = killed_at.elapsed();
    assert_ne!(new, old);
    eprintln!("new leader {new} confirmed {took:?} after killing {old}");
    let r = c.store(new).propose(create("after-kill")).await;
    assert_eq!(r, Ok(CmdResult::Applied));
    assert!(c.store(new).state().topic(&topic("before-kill")).is_some());
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_a_node_restarted_from_its_redb_file_when_back_should_rejoin_and_catch_up() {
    let mut c = Cluster::start(3).await;
    let leader = c.leader().await;
    let victim = (1..=3).find(|id| *id != leader).expect("a follower");
    c.store(leader)
        .propose(create("before-stop"))
        .await
        .expect("commit");
    assert!(wait_topic(c.store(victim), "before-stop", Duration::from_secs(5)).await);
    let addr = c.stop(victim).await;
    for i in 0..20 {
        c.store(leader)
            .propose(create(&format!("while-down-{i}")))
            .await
            .expect("the majority commits without the stopped node");
    }
    c.restart(victim, &addr).await;
    // Its own data is back at once (snapshot + log replay) ...
    assert!(wait_topic(c.store(victim), "before-stop", Duration::from_secs(5)).await);
    // ... and it catches up with what it missed.
    assert!(wait_topic(c.store(victim), "while-down-19", Duration::from_secs(10)).await);
    assert_eq!(c.store(victim).status().voters.len(), 3);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_a_fourth_node_when_joining_through_a_follower_should_become_a_voter() {
    let mut c = Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    c.store(leader)
        .propose(create("before-join"))
        .await
        .expect("commit");
    let via = c.nodes[&follower].addr.clone();
    c.add_joining(4, Some(via)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all_see_four = (1..=4).all(|id| c.store(id).status().voters.contains(&4));
        if all_see_four {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 4 did not become a voter everywhere"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(wait_topic(c.store(4), "before-join", Duration::from_secs(5)).await);
    let leader = c.leader().await;
    assert_eq!(
        c.store(leader)
            .state()
            .nodes
            .get(&4)
            .map(|i| i.raft_addr.clone()),
        Some(c.nodes[&4].addr.clone()),
        "node 4's address is in metadata"
    );
    // The new voter proposes too.
    assert_eq!(
        c.store(4).propose(create("from-four")).await,
        Ok(CmdResult::Applied)
    );
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_the_leader_cut_off_when_the_majority_commits_should_not_confirm_until_healed() {
    let mut c = Cluster::start(3).await;
    let old = c.leader().await;
    c.nodes[&old].cut(true);
    // The isolated leader can no longer confirm ...
    let started = Instant::now();
    let r = c.store(old).confirm().await;
    assert!(
        matches!(r, Err(Error::Unavailable(_)) | Err(Error::NotLeader)),
        "an isolated leader confirmed: {r:?}"
    );
    eprintln!(
        "isolated leader's confirm failed after {:?}",
        started.elapsed()
    );
    // ... nor propose,
    let r = c.store(old).propose(create("on-isolated")).await;
    assert!(r.is_err(), "an isolated node committed: {r:?}");
    // while the majority elects a leader and commits.
    let new = c
        .leader_except(&[old], Duration::from_secs(2))
        .await
        .expect("the majority elects a leader");
    assert_eq!(
        c.store(new).propose(create("by-majority")).await,
        Ok(CmdResult::Applied)
    );
    // Healed, the old leader follows and catches up.
    c.nodes[&old].cut(false);
    assert!(wait_topic(c.store(old), "by-majority", Duration::from_secs(10)).await);
    assert_eq!(c.store(old).confirm().await.err(), Some(Error::NotLeader));
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_frequent_snapshots_when_nodes_join_and_restart_should_rebuild_from_snapshots() {
    fn tune(c: &mut walrus_backends::raft::RaftConfig) {
        c.snapshot_every = 10;
        c.keep_behind_snapshot = 0;
    }
    let mut c = Cluster::start_tuned(3, tune).await;
    let leader = c.leader().await;
    for i in 0..50 {
        c.store(leader)
            .propose(create(&format!("snap-{i}")))
            .await
            .expect("commit");
    }
    // A new node gets the state as a snapshot (the log before it is purged).
    c.add(4).await;
    assert!(wait_topic(c.store(4), "snap-0", Duration::from_secs(10)).await);
    assert!(wait_topic(c.store(4), "snap-49", Duration::from_secs(10)).await);
    let m = c.store(leader).metrics();
    assert!(
        m.snapshot.is_some(),
        "the leader has built a snapshot: {m:?}"
    );
    // Every node restarted from snapshot + log has everything.
    let addrs = c.stop_all().await;
    for (id, addr) in &addrs {
        c.restart(*id, addr).await;
    }
    for id in 1..=4 {
        assert!(wait_topic(c.store(id), "snap-49", Duration::from_secs(10)).await);
        assert!(c.store(id).state().topic(&topic("snap-0")).is_some());
    }
    c.leader().await;
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_a_bootstrapped_single_node_when_restarted_without_join_should_keep_its_data_and_not_reinitialise(
) {
    let mut c = Cluster::start(1).await;
    assert_eq!(c.leader().await, 1);
    assert_eq!(
        c.store(1).propose(create("single")).await,
        Ok(CmdResult::Applied)
    );
    let term_before = c.store(1).status().term;
    let last_index_before = c.store(1).metrics().last_log_index;
    let addr = c.stop(1).await;
    // Restarting with no --join finds data: it must not initialise again.
    c.restart(1, &addr).await;
    assert!(wait_topic(c.store(1), "single", Duration::from_secs(5)).await);
    assert_eq!(c.leader().await, 1);
    let st = c.store(1).status();
    assert!(
        st.term >= term_before,
        "the persisted vote survived the restart"
    );
    assert_eq!(st.voters.len(), 1);
    let m = c.store(1).metrics();
    assert!(
        m.last_log_index >= last_index_before,
        "the log continues from where it was: {m:?}"
    );
    assert_eq!(
        c.store(1).propose(create("single")).await,
        Ok(CmdResult::Unchanged),
        "the topic survived the restart"
    );
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_garbage_consensus_bytes_when_handled_should_answer_bad_request_and_keep_working() {
    let mut c = Cluster::start(1).await;
    c.leader().await;
    let garbage = bytes::Bytes::from_static(b"\xff\xfe not a consensus message");
    let r = c.store(1).handle_message(garbage).await;
    assert!(matches!(r, Err(Error::BadRequest(_))), "got {r:?}");
    let empty = c.store(1).handle_message(bytes::Bytes::new()).await;
    assert!(matches!(empty, Err(Error::BadRequest(_))), "got {empty:?}");
    assert_eq!(
        c.store(1).propose(create("still-fine")).await,
        Ok(CmdResult::Applied)
    );
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_a_joined_node_when_restarted_with_its_original_join_flag_should_rejoin_as_the_same_voter(
) {
    let mut c = Cluster::start(3).await;
    c.leader().await;
    let addr = c.stop(3).await;
    c.store(1)
        .propose(create("while-3-down"))
        .await
        .expect("commit");
    let join = Some(c.nodes[&1].addr.clone());
    let node =
        raft_common::TestNode::start(3, c.dir_of(3), &addr, join, raft_common::no_tuning).await;
    c.nodes.insert(3, node);
    assert!(wait_topic(c.store(3), "while-3-down", Duration::from_secs(10)).await);
    let leader = c.leader().await;
    assert_eq!(c.store(leader).status().voters.len(), 3);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_a_member_restarted_on_a_new_address_when_back_should_re_register_and_catch_up() {
    let mut c = Cluster::start(3).await;
    let leader = c.leader().await;
    let victim = (1..=3).find(|id| *id != leader).expect("a follower");
    let old_addr = c.stop(victim).await;
    c.store(leader)
        .propose(create("while-moved"))
        .await
        .expect("commit");
    // Same data directory, another port.
    c.restart(victim, "127.0.0.1:0").await;
    let new_addr = c.nodes[&victim].addr.clone();
    assert_ne!(new_addr, old_addr);
    assert!(wait_topic(c.store(victim), "while-moved", Duration::from_secs(10)).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leader = c.leader().await;
        let recorded = c
            .store(leader)
            .state()
            .nodes
            .get(&victim)
            .map(|i| i.raft_addr.clone());
        if recorded.as_deref() == Some(new_addr.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "metadata still has {recorded:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.stop_all().await;
}
