//! Membership: an operator removes a node for good (`REMOVE-NODE`), and a
//! node that comes back on an empty disk is accepted automatically where
//! every segment it held has another copy. Both leave segments with fewer
//! copies than their topic's `rf`; `rereplicate` brings them back.
//! See "Replication" in `docs/architecture.md`.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::metadata::{ClusterState, CmdResult, MetadataCmd, SegmentStatus};
use crate::transport::{NodeRequest, NodeResponse};
use crate::types::{NodeId, SegmentKey, StorageId};

impl super::Node {
    /// `REMOVE-NODE`: carried out by the consensus leader (it knows which
    /// voters are live). Returns how many segments are under-replicated
    /// once `node` is gone.
    pub(crate) async fn remove_node(&self, node: NodeId) -> Result<u64> {
        self.on_consensus_leader(
            "REMOVE-NODE",
            || self.remove_node_here(node),
            NodeRequest::RemoveNode { node },
            |answer| match answer {
                NodeResponse::NodeRemoved {
                    under_replicated, ..
                } => Some(under_replicated),
                _ => None,
            },
        )
        .await
    }

    /// Runs an operator command on the consensus leader: `here` when we
    /// lead, else `request` sent to it (its answer read by `answer`),
    /// trying again while leadership moves, up to `request_timeout`.
    pub(crate) async fn on_consensus_leader<T, F, Fut>(
        &self,
        what: &str,
        here: F,
        request: NodeRequest,
        answer: fn(NodeResponse) -> Option<T>,
    ) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + self.config.request_timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            let result = match self.metadata.status().leader {
                Some(l) if l == self.id => here().await,
                Some(l) => {
                    let got = self.transport.call(l, request.clone()).await?;
                    let text = format!("{got:?}");
                    answer(got).ok_or_else(|| {
                        Error::Internal(format!("node {l} answered {what} with {text}"))
                    })
                }
                None => Err(Error::Unavailable(format!(
                    "no consensus leader to carry out {what}, retry"
                ))),
            };
            match result {
                Err(Error::NotLeader) if Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    /// The consensus leader's side of `REMOVE-NODE`. Refuses what would
    /// stop consensus (too few live voters left) or lose data (checked
    /// here against the live copies, and again by `RemoveNode` itself
    /// against the metadata); then commits `RemoveNode` and takes the node
    /// out of the consensus membership. A repeat finishes what a crash
    /// interrupted.
    pub(crate) async fn remove_node_here(&self, node: NodeId) -> Result<u64> {
        let status = self.metadata.status();
        if !status.is_leader() {
            return Err(Error::NotLeader);
        }
        let state = self.metadata.state();
        if !state.removed.contains(&node) {
            if node == self.id {
                return Err(Error::Refused(format!(
                    "node {node} is the consensus leader, so it is running: stop it first (another \
                     node takes over) and run this again"
                )));
            }
            if !state.nodes.contains_key(&node) && !status.voters.contains(&node) {
                return Err(Error::Refused(format!(
                    "node {node} is not a member of this cluster (members: {:?})",
                    status.voters
                )));
            }
            self.check_majority_without(node, &status.voters)?;
            let blockers = self.unconfirmed_copies(node, &state, true).await;
            if !blockers.is_empty() {
                return Err(Error::Refused(crate::metadata::removal_refused(
                    node, &blockers,
                )));
            }
            if let CmdResult::Rejected(why) = self
                .metadata
                .propose(MetadataCmd::RemoveNode { node })
                .await?
            {
                return Err(Error::Refused(why));
            }
            tracing::warn!(
                node = self.id,
                "node {node} removed from the cluster for good; its copies are made again elsewhere"
            );
        }
        self.metadata.remove_node(node).await?;
        Ok(self.metadata.state().under_replicated_count() as u64)
    }

    /// Refuses a removal after which the voters left, or the joint
    /// configuration during the change, would have no live majority:
    /// consensus (and with it every write) would stop.
    fn check_majority_without(
        &self,
        node: NodeId,
        voters: &std::collections::BTreeSet<NodeId>,
    ) -> Result<()> {
        let now = self.clock.now();
        let threshold = self.failover_threshold();
        let live = |n: NodeId| n == self.id || self.failover.is_live(n, now, threshold);
        let remaining: Vec<NodeId> = voters.iter().copied().filter(|v| *v != node).collect();
        if remaining.is_empty() {
            return Err(Error::Refused(format!(
                "node {node} is the only voter: removing it would leave no cluster"
            )));
        }
        let live_remaining = remaining.iter().filter(|v| live(**v)).count();
        let live_before = live_remaining + usize::from(voters.contains(&node) && live(node));
        let need_after = remaining.len() / 2 + 1;
        let need_before = voters.len() / 2 + 1;
        if live_remaining < need_after || live_before < need_before {
            let down: Vec<NodeId> = remaining.iter().copied().filter(|v| !live(*v)).collect();
            return Err(Error::Refused(format!(
                "removing node {node} would leave {} voters of which {live_remaining} are live \
                 (down: {down:?}), and the membership change needs a live majority of the voters \
                 before ({need_before} of {}) and after ({need_after} of {}): consensus would \
                 stop. Start the nodes that are down, or join a new node, then run this again",
                remaining.len(),
                voters.len(),
                remaining.len()
            )));
        }
        Ok(())
    }

    /// The segments whose data would be lost without `node`'s copies: for
    /// each sealed segment it holds, another holder must answer that it
    /// holds every entry (a follower may have been behind when its leader
    /// sealed). Also what the metadata alone says (open or pending
    /// segments it leads, sole copies).
    pub(crate) async fn unconfirmed_copies(
        &self,
        node: NodeId,
        state: &ClusterState,
        for_removal: bool,
    ) -> Vec<String> {
        let mut out = state.sole_copies_on(node, for_removal);
        if !out.is_empty() {
            return out;
        }
        for (name, t) in &state.topics {
            for s in t.segments.iter().skip(t.deleted_through as usize) {
                let SegmentStatus::Sealed { count } = s.status else {
                    continue;
                };
                let holders = s.holders(&state.removed);
                if count == 0 || !holders.contains(&node) {
                    continue;
                }
                let key = SegmentKey::new(name.clone(), s.id);
                let mut found = false;
                for other in holders.iter().copied().filter(|h| *h != node) {
                    if matches!(self.copy_info(other, &key).await, Ok((held, _)) if held >= count) {
                        found = true;
                        break;
                    }
                }
                if !found {
                    out.push(format!(
                        "no other replica of segment {key} answers that it holds its {count} \
                         entries (replicas {holders:?})"
                    ));
                }
            }
        }
        out
    }

    /// `(count, sealed)` of `key` on `holder`'s store (this node's own, or
    /// asked over the transport).
    pub(crate) async fn copy_info(&self, holder: NodeId, key: &SegmentKey) -> Result<(u64, bool)> {
        if holder == self.id {
            return Ok(self
                .log
                .info(key)
                .await?
                .map_or((0, false), |i| (i.count, i.sealed)));
        }
        let req = NodeRequest::Read {
            segment: key.clone(),
            from: 0,
            max_entries: 0,
            max_bytes: 0,
        };
        let answer = tokio::time::timeout(self.config.forward_timeout, async {
            self.transport.call(holder, req).await
        })
        .await
        .map_err(|_| Error::Timeout(format!("node {holder} to say what it holds of {key}")))??;
        match answer {
            NodeResponse::Entries { count, sealed, .. } => Ok((count, sealed)),
            other => Err(Error::Internal(format!(
                "node {holder} answered a Read of {key} with {other:?}"
            ))),
        }
    }

    /// A node that claims a storage the cluster did not record for it
    /// (its disk was wiped or replaced): accepted under `storage` when
    /// every segment it held has another copy (its old copies then count
    /// as gone and are made again). The consensus leader decides (it knows
    /// whether the node is live); other members pass the claim on. While
    /// the recorded node is live, or still leads an open segment (failover
    /// has not closed it yet), the answer is retryable; where a segment's
    /// data or count is only on it, the refusal `why` stands and the
    /// operator decides (`REPLACE-STORAGE`).
    pub(crate) async fn refill_or_refuse(
        &self,
        node: NodeId,
        storage: StorageId,
        fresh: bool,
        why: String,
    ) -> Result<()> {
        let status = self.metadata.status();
        match status.leader {
            Some(l) if l == self.id => {}
            Some(l) => {
                let req = NodeRequest::ClaimStorage {
                    node,
                    storage,
                    fresh,
                };
                return self.transport.call(l, req).await.map(|_| ());
            }
            None => {
                return Err(Error::Unavailable(
                    "no consensus leader to check the storage, retry".into(),
                ))
            }
        }
        let state = self.metadata.state();
        if state.removed.contains(&node) {
            return Err(Error::Refused(why));
        }
        let threshold = self.failover_threshold();
        if self.failover.is_live(node, self.clock.now(), threshold) {
            return Err(Error::Unavailable(format!(
                "node {node} was heard from less than {threshold:?} ago with its recorded storage, \
                 so this may be another process claiming its id; if node {node} was restarted on \
                 an empty data directory and every segment it held has another copy, it is \
                 accepted once it has been silent that long. Otherwise: {why}"
            )));
        }
        let leads_open = state.topics.values().any(|t| {
            let c = t.current();
            c.leader == node && c.status == SegmentStatus::Open
        });
        if leads_open {
            return Err(Error::Unavailable(format!(
                "node {node} came back on an empty storage and still leads an open segment: \
                 waiting for failover to close it before deciding whether its data has other \
                 copies. Otherwise: {why}"
            )));
        }
        let lost = self.unconfirmed_copies(node, &state, false).await;
        if !lost.is_empty() {
            tracing::warn!(
                node = self.id,
                "node {node} came back with an empty storage {storage} and cannot be refilled: {}",
                lost.join("; ")
            );
            return Err(Error::Refused(why));
        }
        let Some(replaces) = state.storage.get(&node).copied() else {
            // Nothing recorded: `RegisterStorage` takes it; a refusal came
            // from something else.
            return Err(Error::Refused(why));
        };
        match self
            .metadata
            .propose(MetadataCmd::RefillStorage {
                node,
                storage,
                replaces,
            })
            .await?
        {
            CmdResult::Rejected(more) => {
                tracing::warn!(node = self.id, "node {node} cannot be refilled: {more}");
                Err(Error::Refused(why))
            }
            _ => {
                tracing::warn!(
                    node = self.id,
                    "node {node} came back with an empty storage {storage}; every segment it held \
                     has another copy, so it is accepted and its copies are made again"
                );
                Ok(())
            }
        }
    }

    /// Our open segments that lost a follower (removed), or opened with
    /// fewer copies than `rf` while a voter that could hold one now
    /// answers, are rolled: the leader seals them, re-replication copies
    /// them as sealed ones, and the next segment opens with a full set.
    pub(crate) async fn roll_short_segments(&self, state: &ClusterState) {
        let status = self.metadata.status();
        for (topic, t) in &state.topics {
            let current = t.current();
            if current.leader != self.id || current.status != SegmentStatus::Open {
                continue;
            }
            let replicas = current.replicas();
            let lost_follower = current.followers.iter().any(|f| state.removed.contains(f));
            let short = !lost_follower && replicas.len() < t.rf as usize && {
                let mut spare = false;
                for v in status.voters.iter() {
                    if !replicas.contains(v)
                        && !state.removed.contains(v)
                        && self.looks_alive(*v, &status).await
                    {
                        spare = true;
                        break;
                    }
                }
                spare
            };
            if lost_follower || short {
                self.spawn_rollover(SegmentKey::new(topic.clone(), current.id));
            }
        }
    }
}
