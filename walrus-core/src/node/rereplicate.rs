//! Re-replication: the consensus leader gives every sealed segment with
//! fewer copies than its topic's `rf` (a copy on a removed node, a wiped
//! node's old copy, a set that was short when the segment opened) a new
//! copy on a live voter that holds none, until it is back at `rf`.
//!
//! A copy is streamed from a live replica that holds the whole segment:
//! batches read from it (`NodeRequest::ReadCopy`) go to the new node as
//! `NodeRequest::SealCopy` (stored with `LogStore::append_at`, sealed with
//! `seal_at` once all are there: failover's copy, `seal_replica`), paced to
//! `rereplication_rate` bytes per second so that producers keep the disks
//! and the network. Only once the new copy is sealed at the segment's
//! count does `SetReplicas` put the node in the replica set: metadata never
//! names a replica that lacks the data. Everything is driven from metadata: after a crash of any node
//! (the consensus leader included) the next pass finds the same segments
//! short, and the new node's count says where its copy resumes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::metadata::{CmdResult, MetadataCmd, SegmentStatus};
use crate::types::{NodeId, SegmentKey};

/// One re-replication pass at a time on this node.
#[derive(Default)]
pub(crate) struct Rereplication {
    running: AtomicBool,
}

impl super::Node {
    /// One pass of the membership loop. On every node: roll our open
    /// segments that are short of copies (`roll_short_segments`). On the consensus leader:
    /// finish removals a crash interrupted (a removed node still voting),
    /// and start a re-replication pass unless one runs.
    pub(crate) async fn membership_tick(&self) {
        let state = self.metadata.state();
        self.roll_short_segments(&state).await;
        let status = self.metadata.status();
        if !status.is_leader() {
            return;
        }
        for node in state.removed.intersection(&status.voters) {
            if let Err(e) = self.metadata.remove_node(*node).await {
                tracing::warn!(
                    node = self.id,
                    "cannot take removed node {node} out of the consensus yet: {e}"
                );
            }
        }
        if state.under_replicated_count() == 0
            && !state.topics.values().any(|t| {
                t.segments
                    .iter()
                    .any(|s| s.holders(&state.removed).len() != s.replicas().len())
            })
        {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        if self.rereplication.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let task = tokio::spawn(async move {
            me.rereplicate_pass().await;
            me.rereplication.running.store(false, Ordering::Release);
        });
        let mut tasks = self.tasks_lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Walks every sealed segment once, copying those short of `rf`
    /// (one at a time: the pace is the whole node's).
    async fn rereplicate_pass(&self) {
        let state = self.metadata.state();
        let status = self.metadata.status();
        // Copies per node, to put new ones where there are fewest.
        let mut load: BTreeMap<NodeId, usize> = status.voters.iter().map(|v| (*v, 0)).collect();
        for t in state.topics.values() {
            for s in t.segments.iter().skip(t.deleted_through as usize) {
                for r in s.replicas() {
                    *load.entry(r).or_default() += 1;
                }
            }
        }
        for (name, t) in &state.topics {
            for seg in t.segments.iter().skip(t.deleted_through as usize) {
                let SegmentStatus::Sealed { count } = seg.status else {
                    continue;
                };
                let replicas = seg.replicas();
                let mut holders = seg.holders(&state.removed);
                if holders.is_empty() || (holders.len() >= t.rf as usize && holders == replicas) {
                    continue;
                }
                if !self.metadata.status().is_leader() {
                    return;
                }
                let key = SegmentKey::new(name.clone(), seg.id);
                while holders.len() < t.rf as usize {
                    let Some(target) = self.copy_target(&load, &holders, &state.removed).await
                    else {
                        break;
                    };
                    match self.copy_segment(&key, count, &holders, target).await {
                        Ok(()) => {
                            holders.push(target);
                            *load.entry(target).or_default() += 1;
                        }
                        Err(e) => {
                            tracing::warn!(
                                node = self.id,
                                "cannot copy segment {key} to node {target} yet (the next pass \
                                 retries): {e}"
                            );
                            break;
                        }
                    }
                }
                if holders == replicas {
                    continue;
                }
                let cmd = MetadataCmd::SetReplicas {
                    topic: key.topic.clone(),
                    segment: key.segment,
                    expected: replicas,
                    moves: seg.moves,
                    replicas: holders.clone(),
                };
                match self.metadata.propose(cmd).await {
                    Ok(CmdResult::Rejected(why)) => {
                        tracing::warn!(
                            node = self.id,
                            "the new copies of {key} were refused: {why}"
                        )
                    }
                    Ok(_) => {
                        tracing::info!(node = self.id, "segment {key} is now kept on {holders:?}")
                    }
                    Err(e) => tracing::warn!(
                        node = self.id,
                        "recording the new copies of {key} failed (the next pass retries): {e}"
                    ),
                }
            }
        }
    }

    /// A live voter without a copy, removed never, with the fewest copies.
    async fn copy_target(
        &self,
        load: &BTreeMap<NodeId, usize>,
        holders: &[NodeId],
        removed: &std::collections::BTreeSet<NodeId>,
    ) -> Option<NodeId> {
        let status = self.metadata.status();
        let mut candidates: Vec<NodeId> = status
            .voters
            .iter()
            .copied()
            .filter(|v| !holders.contains(v) && !removed.contains(v))
            .collect();
        candidates.sort_by_key(|v| (load.get(v).copied().unwrap_or(0), *v));
        for candidate in candidates {
            if self.looks_alive(candidate, &status).await {
                return Some(candidate);
            }
        }
        None
    }

    /// Copies sealed segment `key` (`count` entries) from one of
    /// `holders` to `target`, resuming from what `target` holds, and
    /// returns once `target` holds it sealed at `count`.
    pub(crate) async fn copy_segment(
        &self,
        key: &SegmentKey,
        count: u64,
        holders: &[NodeId],
        target: NodeId,
    ) -> Result<()> {
        let mut source = None;
        for h in holders {
            if matches!(self.copy_info(*h, key).await, Ok((held, _)) if held >= count) {
                source = Some(*h);
                break;
            }
        }
        let source = source.ok_or_else(|| {
            Error::Unavailable(format!(
                "no replica of {key} among {holders:?} answers that it holds its {count} entries"
            ))
        })?;
        let (held, _) = self.copy_info(target, key).await?;
        self.seal_replica(key, source, target, held.min(count), count, true)
            .await?;
        match self.copy_info(target, key).await? {
            (n, true) if n == count => Ok(()),
            (n, sealed) => Err(Error::Unavailable(format!(
                "node {target} holds {n} entries of {key} (sealed: {sealed}) after the copy, \
                 not {count} sealed"
            ))),
        }
    }

    /// Sleeps as long as `bytes` take at `rereplication_rate`.
    pub(crate) async fn pace(&self, bytes: usize) {
        let rate = self.config.rereplication_rate.max(1);
        let micros = (bytes as u64).saturating_mul(1_000_000) / rate;
        if micros > 0 {
            tokio::time::sleep(Duration::from_micros(micros)).await;
        }
    }
}
