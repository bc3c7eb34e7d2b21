//! openraft's `RaftMetrics` as core's [`ConsensusMetrics`]: every field
//! kept, so the server renders METRICS exactly as openraft serialised it.

use openraft::{BasicNode, RaftMetrics, ServerState};
use walrus_core::{
    ConsensusMembership, ConsensusMetrics, ConsensusRole, ConsensusVote, LogPosition,
};

use super::types::{LogId, NodeId};

/// Converts one snapshot of openraft's metrics.
pub fn consensus_metrics(m: &RaftMetrics<NodeId, BasicNode>) -> ConsensusMetrics {
    let membership = m.membership_config.membership();
    ConsensusMetrics {
        node: m.id,
        role: match m.state {
            ServerState::Learner => ConsensusRole::Learner,
            ServerState::Follower => ConsensusRole::Follower,
            ServerState::Candidate => ConsensusRole::Candidate,
            ServerState::Leader => ConsensusRole::Leader,
            ServerState::Shutdown => ConsensusRole::Shutdown,
        },
        term: m.current_term,
        vote: Some(ConsensusVote {
            term: m.vote.leader_id.term,
            candidate: m.vote.leader_id.node_id,
            committed: m.vote.committed,
        }),
        leader: m.current_leader,
        last_log_index: m.last_log_index,
        last_applied: m.last_applied.as_ref().map(position),
        snapshot: m.snapshot.as_ref().map(position),
        purged: m.purged.as_ref().map(position),
        millis_since_quorum_ack: m.millis_since_quorum_ack,
        membership: ConsensusMembership {
            at: m.membership_config.log_id().as_ref().map(position),
            configs: membership.get_joint_config().clone(),
            addresses: membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect(),
        },
        replication: m.replication.as_ref().map(|r| {
            r.iter()
                .map(|(id, matched)| (*id, matched.as_ref().map(position)))
                .collect()
        }),
        failure: m.running_state.as_ref().err().map(|e| e.to_string()),
    }
}

fn position(id: &LogId) -> LogPosition {
    LogPosition {
        term: id.leader_id.term,
        leader: id.leader_id.node_id,
        index: id.index,
    }
}
