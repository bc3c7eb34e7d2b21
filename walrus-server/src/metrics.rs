//! The METRICS answer: a node's [`NodeMetrics`] in the field names the
//! client protocol fixes (docs/protocol.md): openraft's `RaftMetrics` at the
//! top level, as the seed's reference answered, plus `metadata_version` and
//! a `walrus` object of ours. walrus-core's types name nothing of
//! openraft's; this is the one place that speaks its names.

use serde_json::{json, Map, Value};
use walrus_core::{ConsensusRole, LogPosition, NodeMetrics};

/// Renders `m` as the METRICS JSON object.
pub fn render(m: &NodeMetrics) -> Value {
    let c = &m.consensus;
    let nodes: Map<String, Value> = c
        .membership
        .addresses
        .iter()
        .map(|(id, addr)| (id.to_string(), json!({ "addr": addr })))
        .collect();
    let replication = c.replication.as_ref().map(|r| {
        r.iter()
            .map(|(id, matched)| (id.to_string(), log_id(matched.as_ref())))
            .collect::<Map<String, Value>>()
    });
    // openraft reports a vote even before the first one (term 0, node 0).
    let (vote_term, vote_node, committed) = c
        .vote
        .map_or((0, 0, false), |v| (v.term, v.candidate, v.committed));
    json!({
        "running_state": match &c.failure {
            None => json!({ "Ok": null }),
            Some(why) => json!({ "Err": why }),
        },
        "id": c.node,
        "current_term": c.term,
        "vote": {
            "leader_id": { "term": vote_term, "node_id": vote_node },
            "committed": committed,
        },
        "last_log_index": c.last_log_index,
        "last_applied": log_id(c.last_applied.as_ref()),
        "snapshot": log_id(c.snapshot.as_ref()),
        "purged": log_id(c.purged.as_ref()),
        "state": match c.role {
            ConsensusRole::Learner => "Learner",
            ConsensusRole::Follower => "Follower",
            ConsensusRole::Candidate => "Candidate",
            ConsensusRole::Leader => "Leader",
            ConsensusRole::Shutdown => "Shutdown",
        },
        "current_leader": c.leader,
        "millis_since_quorum_ack": c.millis_since_quorum_ack,
        "membership_config": {
            "log_id": log_id(c.membership.at.as_ref()),
            "membership": {
                "configs": c.membership.configs,
                "nodes": nodes,
            },
        },
        "replication": replication,
        "metadata_version": m.metadata_version,
        "walrus": {
            "node_id": m.node,
            "topics": m.topics,
            "metadata_version": m.metadata_version,
            "write_lease_valid": m.write_lease_valid,
            "storage": {
                "failed_syncs": m.storage.failed_syncs,
                "failed_segments": m.storage.failed_segments,
                "quarantined_segments": m.storage.quarantined_segments,
            },
            "under_replicated_segments": m.under_replicated_segments,
        },
    })
}

/// openraft's `LogId`: `{"leader_id": {"term", "node_id"}, "index"}`.
fn log_id(p: Option<&LogPosition>) -> Value {
    match p {
        None => Value::Null,
        Some(p) => json!({
            "leader_id": { "term": p.term, "node_id": p.leader },
            "index": p.index,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use openraft::{
        BasicNode, CommittedLeaderId, LogId, Membership, RaftMetrics, ServerState,
        StoredMembership, Vote,
    };
    use walrus_backends::raft::metrics::consensus_metrics;
    use walrus_core::StorageMetrics;

    use super::*;

    fn log_id(term: u64, node: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    /// A leader of a joint membership with a learner, a snapshot and
    /// followers at different places: every field of `RaftMetrics` set.
    fn busy() -> RaftMetrics<u64, BasicNode> {
        let mut m = RaftMetrics::new_initial(2);
        m.current_term = 7;
        m.vote = Vote::new_committed(7, 2);
        m.last_log_index = Some(41);
        m.last_applied = Some(log_id(7, 2, 40));
        m.snapshot = Some(log_id(6, 1, 30));
        m.purged = Some(log_id(5, 1, 20));
        m.state = ServerState::Leader;
        m.current_leader = Some(2);
        m.millis_since_quorum_ack = Some(12);
        let nodes: BTreeMap<u64, BasicNode> = (1..=5)
            .map(|n| (n, BasicNode::new(format!("host-{n}:700{n}"))))
            .collect();
        let configs = vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([2, 3, 4])];
        m.membership_config = Arc::new(StoredMembership::new(
            Some(log_id(6, 1, 25)),
            Membership::new(configs, nodes),
        ));
        m.replication = Some(BTreeMap::from([
            (1, Some(log_id(7, 2, 41))),
            (3, None),
            (4, Some(log_id(6, 1, 12))),
            (5, Some(log_id(7, 2, 39))),
        ]));
        m
    }

    #[test]
    fn given_openraft_metrics_when_rendered_should_be_byte_for_byte_what_openraft_serialised() {
        for m in [RaftMetrics::new_initial(3), busy()] {
            let node = NodeMetrics {
                node: m.id,
                consensus: consensus_metrics(&m),
                topics: 4,
                metadata_version: 55,
                write_lease_valid: true,
                storage: StorageMetrics {
                    failed_syncs: 1,
                    failed_segments: 2,
                    quarantined_segments: 3,
                },
                under_replicated_segments: 5,
            };
            // What METRICS answered before core's trait was typed: openraft's
            // own serialisation, `metadata_version` beside it and ours.
            let mut before = serde_json::to_value(&m).expect("openraft metrics serialise");
            before["metadata_version"] = 55.into();
            before["walrus"] = json!({
                "node_id": m.id,
                "topics": 4,
                "metadata_version": 55,
                "write_lease_valid": true,
                "storage": {
                    "failed_syncs": 1,
                    "failed_segments": 2,
                    "quarantined_segments": 3,
                },
                "under_replicated_segments": 5,
            });
            assert_eq!(render(&node).to_string(), before.to_string());
        }
    }
}
