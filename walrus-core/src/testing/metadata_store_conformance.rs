//! A conformance suite for any [`MetadataStore`]: the contract of the trait,
//! checked on a small cluster of the backend under test.
//!
//! A backend provides a [`MetadataStoreFactory`] that opens its cluster and
//! can close it and open it again from what it persisted, then calls
//! [`run`]:
//!
//! ```ignore
//! walrus_core::testing::metadata_store_conformance::run(MyFactory::new()).await;
//! ```
//!
//! Checks (each panics with a message naming the broken rule):
//! proposal results, read-your-writes on every node (followers forward),
//! watch notification, `confirm` only on the leader and covering every
//! earlier commit, a consistent `status`, metrics that agree with it,
//! every command applied twice leaving the state as once (rule 7: a
//! proposal that failed may have committed, and is retried), and committed
//! commands surviving a restart of every node.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Error;
use crate::metadata::{CmdResult, MetadataCmd, NodeInfo};
use crate::metadata_store::{ConsensusRole, MetadataStore};
use crate::types::{ClusterId, NodeId, StorageId, TopicName};

/// How long the suite waits for something that should happen "soon"
/// (an election, replication to followers).
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Opens the cluster a backend wants checked.
#[async_trait]
pub trait MetadataStoreFactory: Send {
    /// Opens every node of the cluster (creating it the first time, from
    /// persisted data afterwards) and returns one store per node. The
    /// cluster may still be electing a leader when this returns.
    async fn open(&mut self) -> Vec<Arc<dyn MetadataStore>>;

    /// Closes every node opened by [`open`](Self::open) so that the next
    /// `open` starts from persisted data only.
    async fn close(&mut self);
}

/// Runs every check against the factory's cluster.
pub async fn run<F: MetadataStoreFactory>(mut factory: F) {
    let stores = factory.open().await;
    assert!(!stores.is_empty(), "the factory opened no node");
    let leader = wait_for_leader(&stores).await;

    proposals_report_what_they_did(&stores).await;
    every_node_reads_its_own_writes(&stores).await;
    watchers_are_told_of_new_state(&stores).await;
    confirm_succeeds_only_on_the_leader_and_covers_earlier_commits(&stores).await;
    status_agrees_on_leader_and_voters(&stores, leader).await;
    metrics_agree_with_status(&stores).await;
    every_command_applied_twice_is_applied_once(&stores).await;
    add_node_is_idempotent_for_a_member(&stores).await;
    replica_sets_are_kept_on_every_node(&stores).await;

    let before = committed_topics(&stores).await;
    drop(stores);
    factory.close().await;
    let reopened = factory.open().await;
    assert!(!reopened.is_empty(), "the factory reopened no node");
    committed_commands_survive_a_restart(&reopened, &before).await;
    drop(reopened);
    factory.close().await;
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).expect("suite topic names are valid")
}

/// Retries `propose` on retryable errors (an election in progress).
async fn propose(store: &Arc<dyn MetadataStore>, cmd: MetadataCmd) -> CmdResult {
    propose_counting_retries(store, cmd).await.0
}

/// Like [`propose`], also saying whether it had to retry (a failed attempt
/// may have committed: rule 7).
async fn propose_counting_retries(
    store: &Arc<dyn MetadataStore>,
    cmd: MetadataCmd,
) -> (CmdResult, bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut retried = false;
    loop {
        match store.propose(cmd.clone()).await {
            Ok(r) => return (r, retried),
            Err(e)
                if (e.is_retryable() || e.is_outcome_unknown())
                    && tokio::time::Instant::now() < deadline =>
            {
                retried = true;
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!(
                "propose {cmd:?} on node {} failed: {e}",
                store.status().node
            ),
        }
    }
}

/// Waits until some node reports itself leader and confirms; returns it.
async fn wait_for_leader(stores: &[Arc<dyn MetadataStore>]) -> NodeId {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        for s in stores {
            if s.status().is_leader() && s.confirm().await.is_ok() {
                return s.status().node;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no node became a confirmed leader within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `cond` holds for the state of `store`.
async fn wait_state(
    store: &Arc<dyn MetadataStore>,
    what: &str,
    cond: impl Fn(&crate::ClusterState) -> bool,
) {
    let mut rx = store.watch();
    let r = tokio::time::timeout(PATIENCE, async {
        loop {
            if cond(&rx.borrow_and_update()) {
                return;
            }
            if rx.changed().await.is_err() {
                panic!(
                    "node {}: the watch closed while waiting for {what}",
                    store.status().node
                );
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "node {} did not reach {what} within {PATIENCE:?}",
        store.status().node
    );
}

async fn proposals_report_what_they_did(stores: &[Arc<dyn MetadataStore>]) {
    let s = &stores[0];
    let t = topic("conf-results");
    let create = MetadataCmd::CreateTopic {
        topic: t.clone(),
        leader: s.status().node,
    };
    assert_eq!(
        propose(s, create.clone()).await,
        CmdResult::Applied,
        "a new topic"
    );
    assert_eq!(
        propose(s, create).await,
        CmdResult::Unchanged,
        "creating an existing topic changes nothing"
    );
    let roll_missing = MetadataCmd::Roll {
        topic: topic("conf-never-created"),
        segment: 1,
        count: Some(1),
        next_leader: 1,
    };
    assert!(
        matches!(propose(s, roll_missing).await, CmdResult::Rejected(_)),
        "a command on a missing topic is rejected"
    );
}

async fn every_node_reads_its_own_writes(stores: &[Arc<dyn MetadataStore>]) {
    for s in stores {
        let node = s.status().node;
        let t = topic(&format!("conf-ryw-{node}"));
        let result = propose(
            s,
            MetadataCmd::CreateTopic {
                topic: t.clone(),
                leader: node,
            },
        )
        .await;
        assert_eq!(result, CmdResult::Applied);
        // Immediately, with no wait: rule 2 of the contract.
        assert!(
            s.state().topic(&t).is_some(),
            "node {node}: propose returned but state() does not show topic {t}"
        );
    }
}

async fn watchers_are_told_of_new_state(stores: &[Arc<dyn MetadataStore>]) {
    let mut receivers: Vec<_> = stores.iter().map(|s| s.watch()).collect();
    for rx in receivers.iter_mut() {
        rx.borrow_and_update();
    }
    let t = topic("conf-watch");
    propose(
        &stores[0],
        MetadataCmd::CreateTopic {
            topic: t.clone(),
            leader: 1,
        },
    )
    .await;
    for (s, rx) in stores.iter().zip(receivers.iter_mut()) {
        let node = s.status().node;
        let r = tokio::time::timeout(PATIENCE, async {
            loop {
                if rx.borrow_and_update().topic(&t).is_some() {
                    return;
                }
                rx.changed()
                    .await
                    .unwrap_or_else(|_| panic!("node {node}: watch closed"));
            }
        })
        .await;
        assert!(r.is_ok(), "node {node}: watch never showed topic {t}");
    }
}

async fn confirm_succeeds_only_on_the_leader_and_covers_earlier_commits(
    stores: &[Arc<dyn MetadataStore>],
) {
    let t = topic("conf-confirm");
    let last = stores.last().expect("at least one node");
    propose(
        last,
        MetadataCmd::CreateTopic {
            topic: t.clone(),
            leader: 1,
        },
    )
    .await;
    let leader = wait_for_leader(stores).await;
    let mut confirmed = None;
    for s in stores {
        let node = s.status().node;
        match s.confirm().await {
            Ok(v) => {
                assert_eq!(
                    node, leader,
                    "confirm succeeded on node {node}, not the leader"
                );
                confirmed = Some(v);
            }
            Err(Error::NotLeader) | Err(Error::Unavailable(_)) => {
                assert_ne!(node, leader, "the leader {leader} could not confirm");
            }
            Err(e) => panic!("node {node}: confirm failed with an unexpected error: {e}"),
        }
    }
    let v = confirmed.expect("the leader confirmed");
    for s in stores {
        wait_state(s, &format!("version {v}"), |st| st.version >= v).await;
        assert!(
            s.state().topic(&t).is_some(),
            "node {}: a state at the confirmed version {v} lacks topic {t} committed before confirm",
            s.status().node
        );
    }
}

async fn status_agrees_on_leader_and_voters(stores: &[Arc<dyn MetadataStore>], _first: NodeId) {
    let leader = wait_for_leader(stores).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for s in stores {
        loop {
            let st = s.status();
            if st.leader == Some(leader) {
                assert_eq!(
                    st.voters.len(),
                    stores.len(),
                    "node {}: voters {:?} are not every node",
                    st.node,
                    st.voters
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} thinks the leader is {:?}, not {leader}",
                st.node,
                st.leader
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn metrics_agree_with_status(stores: &[Arc<dyn MetadataStore>]) {
    let leader = wait_for_leader(stores).await;
    for s in stores {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        // Read twice around the metrics so that an election in between
        // shows as a difference of the two statuses, not a failure.
        let (before, m, after) = loop {
            let before = s.status();
            let m = s.metrics();
            let after = s.status();
            if before == after && after.leader == Some(leader) {
                break (before, m, after);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {}: status kept changing or never named leader {leader}",
                s.status().node
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let node = before.node;
        assert_eq!(m.node, node, "node {node}: metrics name another node");
        assert_eq!(m.leader, after.leader, "node {node}: metrics' leader");
        assert_eq!(m.term, after.term, "node {node}: metrics' term");
        let in_configs: std::collections::BTreeSet<NodeId> =
            m.membership.configs.iter().flatten().copied().collect();
        assert_eq!(
            in_configs, after.voters,
            "node {node}: the metrics' voter sets are not the status' voters"
        );
        for v in &after.voters {
            assert!(
                m.membership.addresses.contains_key(v),
                "node {node}: metrics give no address for voter {v}: {:?}",
                m.membership.addresses
            );
        }
        if node == leader {
            assert_eq!(m.role, ConsensusRole::Leader, "node {node} leads: {m:?}");
        } else {
            assert_ne!(m.role, ConsensusRole::Leader, "node {node} follows: {m:?}");
        }
        assert!(
            m.last_applied.is_some(),
            "node {node} applied commands but its metrics show none: {m:?}"
        );
    }
}

/// Rule 7: a proposal that failed may have committed, and its proposer
/// retries. Each command, proposed twice in a row, must leave what it
/// touches as the first left it, and the second must answer `Unchanged`
/// (or the first's `Rejected`). Node 99 is never started: commands about
/// it touch nothing a running node relies on.
async fn every_command_applied_twice_is_applied_once(stores: &[Arc<dyn MetadataStore>]) {
    let s = &stores[0];
    let me = s.status().node;
    let t = topic("conf-twice");
    let ghost: NodeId = 99;
    let (old, new) = (StorageId::random(), StorageId::random());
    let info = NodeInfo {
        raft_addr: "conf-twice-raft:1".into(),
        client_addr: "conf-twice-client:1".into(),
    };
    let applied = Some(CmdResult::Applied);
    let commands: Vec<(MetadataCmd, Option<CmdResult>)> = vec![
        (
            MetadataCmd::CreateTopic {
                topic: t.clone(),
                leader: me,
            },
            applied.clone(),
        ),
        (
            MetadataCmd::UpsertNode {
                node: ghost,
                info: info.clone(),
            },
            applied.clone(),
        ),
        (
            MetadataCmd::AdvanceCursor {
                topic: t.clone(),
                offset: 3,
            },
            applied.clone(),
        ),
        // A rollover: segment 1 sealed with 5, segment 2 opens on the ghost.
        (
            MetadataCmd::Roll {
                topic: t.clone(),
                segment: 1,
                count: Some(5),
                next_leader: ghost,
            },
            applied.clone(),
        ),
        (
            MetadataCmd::RegisterStorage {
                node: ghost,
                storage: old,
            },
            applied.clone(),
        ),
        // A different storage for the ghost is refused, twice alike.
        (
            MetadataCmd::RegisterStorage {
                node: ghost,
                storage: new,
            },
            None,
        ),
        // A failover: segment 2's count goes pending, 3 opens on us.
        (
            MetadataCmd::Roll {
                topic: t.clone(),
                segment: 2,
                count: None,
                next_leader: me,
            },
            applied.clone(),
        ),
        (
            MetadataCmd::ReportCount {
                topic: t.clone(),
                segment: 2,
                count: 4,
                storage: Some(old),
            },
            applied.clone(),
        ),
        // Segment 3 back to the ghost, then failed over: pending again.
        (
            MetadataCmd::Roll {
                topic: t.clone(),
                segment: 3,
                count: Some(2),
                next_leader: ghost,
            },
            applied.clone(),
        ),
        (
            MetadataCmd::Roll {
                topic: t.clone(),
                segment: 4,
                count: None,
                next_leader: me,
            },
            applied.clone(),
        ),
        (
            MetadataCmd::ReplaceStorage {
                node: ghost,
                storage: new,
                delivered: vec![(t.clone(), 12)],
            },
            applied.clone(),
        ),
        // The cluster may have been named already: only the retry matters.
        (
            MetadataCmd::InitCluster {
                id: ClusterId::random(),
            },
            None,
        ),
        (MetadataCmd::Noop, Some(CmdResult::Unchanged)),
    ];
    // What the commands touch; other members may commit their own
    // commands meanwhile (a restarted node re-registering).
    let touched = |st: &crate::ClusterState| {
        (
            st.topics.get(&t).cloned(),
            st.nodes.get(&ghost).cloned(),
            st.storage.get(&ghost).copied(),
            st.cluster,
        )
    };
    for (cmd, expected) in commands {
        let (first, retried) = propose_counting_retries(s, cmd.clone()).await;
        if let Some(expected) = expected {
            // A retried first proposal may have committed on an earlier try.
            assert!(
                first == expected || (retried && first == CmdResult::Unchanged),
                "node {me}: {cmd:?} answered {first:?}, not {expected:?}"
            );
        }
        let once = touched(&s.state());
        let (second, _) = propose_counting_retries(s, cmd.clone()).await;
        let twice = touched(&s.state());
        assert_eq!(
            once, twice,
            "node {me}: {cmd:?} applied a second time changed the state again"
        );
        match &first {
            CmdResult::Rejected(_) => assert_eq!(
                second, first,
                "node {me}: {cmd:?} again answered otherwise than the first time"
            ),
            _ => assert_eq!(
                second,
                CmdResult::Unchanged,
                "node {me}: {cmd:?} applied a second time answered {second:?}: a retried \
                 proposal that had committed would be taken for a new change"
            ),
        }
    }
    let state = s.state();
    let topic = state.topic(&t).expect("the topic was created");
    assert_eq!(
        topic.segments.len(),
        5,
        "repeated rollovers opened extra segments: {topic:?}"
    );
}

/// The replica sets of `conf-rf`, the topic
/// [`replica_sets_are_kept_on_every_node`] creates: segment 1, then 2.
const RF_REPLICAS: [[NodeId; 3]; 2] = [[1, 98, 97], [98, 97, 1]];

/// Replicated topics and rolls commit on every node with their replica
/// sets (and, checked after the restart, survive it); a repeat changes
/// nothing.
async fn replica_sets_are_kept_on_every_node(stores: &[Arc<dyn MetadataStore>]) {
    let s = &stores[0];
    let t = topic("conf-rf");
    let create = MetadataCmd::CreateReplicatedTopic {
        topic: t.clone(),
        rf: 3,
        replicas: RF_REPLICAS[0].to_vec(),
    };
    let roll = MetadataCmd::RollReplicated {
        topic: t.clone(),
        segment: 1,
        count: Some(2),
        replicas: RF_REPLICAS[1].to_vec(),
    };
    for cmd in [create, roll] {
        let first = propose(s, cmd.clone()).await;
        assert!(
            matches!(first, CmdResult::Applied | CmdResult::Unchanged),
            "{cmd:?} answered {first:?}"
        );
        assert_eq!(
            propose(s, cmd.clone()).await,
            CmdResult::Unchanged,
            "{cmd:?} applied a second time changed the state again"
        );
    }
    for store in stores {
        wait_state(store, "the replica sets of conf-rf", |st| {
            has_rf_replicas(st, &t)
        })
        .await;
    }
}

fn has_rf_replicas(st: &crate::ClusterState, t: &TopicName) -> bool {
    st.topic(t).is_some_and(|topic| {
        topic.rf == 3
            && topic.segments.len() == 2
            && topic
                .segments
                .iter()
                .zip(RF_REPLICAS)
                .all(|(seg, replicas)| seg.replicas() == replicas)
    })
}

async fn add_node_is_idempotent_for_a_member(stores: &[Arc<dyn MetadataStore>]) {
    let s = stores.last().expect("at least one node");
    let node = s.status().node;
    let info = s
        .state()
        .nodes
        .get(&node)
        .cloned()
        .unwrap_or_else(|| NodeInfo {
            raft_addr: format!("node-{node}"),
            client_addr: format!("client-{node}"),
        });
    let voters_before = s.status().voters;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match s.add_node(node, info.clone()).await {
            Ok(()) => break,
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("node {node}: add_node of itself failed: {e}"),
        }
    }
    assert_eq!(
        s.status().voters,
        voters_before,
        "re-adding a member changed the voters"
    );
}

async fn committed_topics(stores: &[Arc<dyn MetadataStore>]) -> Vec<TopicName> {
    // Everything committed so far, as the leader sees it after a confirm.
    let leader = wait_for_leader(stores).await;
    let s = stores
        .iter()
        .find(|s| s.status().node == leader)
        .expect("the leader is one of the stores");
    s.state().topics.keys().cloned().collect()
}

async fn committed_commands_survive_a_restart(
    stores: &[Arc<dyn MetadataStore>],
    before: &[TopicName],
) {
    assert!(
        !before.is_empty(),
        "the suite committed topics before the restart"
    );
    for s in stores {
        wait_state(s, "every topic committed before the restart", |st| {
            before.iter().all(|t| st.topic(t).is_some()) && has_rf_replicas(st, &topic("conf-rf"))
        })
        .await;
    }
    // And the restarted cluster still commits.
    let t = topic("conf-after-restart");
    wait_for_leader(stores).await;
    let r = propose(
        &stores[0],
        MetadataCmd::CreateTopic {
            topic: t.clone(),
            leader: 1,
        },
    )
    .await;
    assert_eq!(r, CmdResult::Applied);
    assert!(stores[0].state().topic(&t).is_some());
}
