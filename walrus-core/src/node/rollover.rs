//! Rollover: a full segment is sealed on its leader first (exact count),
//! then `Roll` commits that count and opens the next segment on the next
//! voter round-robin. The append path triggers it; the monitor loop is the
//! backstop (a failed proposal, a restart between seal and commit).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::locks::MutexExt;
use crate::metadata::{CmdResult, MetadataCmd};
use crate::transport::NodeRequest;
use crate::types::{NodeId, SegmentKey};

/// The segments whose rollover is in flight on this node: one at a time each.
#[derive(Default)]
pub(crate) struct Rollovers {
    in_flight: Mutex<HashSet<SegmentKey>>,
}

impl Rollovers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<SegmentKey>> {
        self.in_flight.lock_or_recover()
    }

    fn begin(&self, key: &SegmentKey) -> bool {
        self.lock().insert(key.clone())
    }

    fn end(&self, key: &SegmentKey) {
        self.lock().remove(key);
    }
}

impl super::Node {
    /// Starts the rollover of `key` in the background, unless one is running.
    pub(crate) fn spawn_rollover(&self, key: SegmentKey) {
        let Some(me) = self.me.upgrade() else { return };
        if !self.rollover.begin(&key) {
            return;
        }
        tokio::spawn(async move {
            if let Err(e) = me.roll(&key).await {
                tracing::warn!(
                    node = me.id,
                    "rollover of {key} failed (the monitor retries): {e}"
                );
            }
            me.rollover.end(&key);
        });
    }

    async fn roll(&self, key: &SegmentKey) -> Result<()> {
        let state = self.metadata.state();
        let Some(topic) = state.topic(&key.topic) else {
            return Ok(());
        };
        let current = topic.current();
        if current.id != key.segment || current.leader != self.id {
            return Ok(());
        }
        // A quarantined segment's count is unknown: sealing it at the
        // damage would drop the acknowledged entries after it from every
        // reader. It is left Pending, as failover leaves a dead leader's,
        // and reported once the file is restored (`report_pending`).
        let count = if self.log.health().quarantined_segments.contains(key) {
            tracing::error!(
                node = self.id,
                "segment {key} is quarantined (a damaged WAL file): rolling {} to a new segment and leaving the count of {key} pending; readers wait at it until its file is restored and this node restarted",
                key.topic
            );
            None
        } else {
            let count = self.log.seal(key).await?;
            self.seal_copies(key, count);
            if !self.await_copies(key, count).await {
                // Committing `count` would leave its last entries on this
                // node only (never acknowledged, but then counted, and
                // waited for by readers while this node is down). The
                // consensus leader closes it from a majority instead.
                tracing::warn!(
                    node = self.id,
                    "no majority of the replicas of {key} holds its {count} entries: asking for it to be closed from its replicas"
                );
                self.metadata
                    .propose(MetadataCmd::CloseFromReplicas {
                        topic: key.topic.clone(),
                        segment: key.segment,
                    })
                    .await?;
                return Ok(());
            }
            // Its producers' last writes are final now, and must be in
            // metadata before its count is (the next leader starts from
            // them). A quarantined segment stays Pending, which holds
            // producer writes back until it is reported.
            self.record_producers(key).await?;
            Some(count)
        };
        let cmd = self.roll_cmd(key, count, topic.rf).await;
        self.metadata.propose(cmd).await?;
        Ok(())
    }

    /// The command that closes `key` (with `count`, or pending) and opens
    /// the next segment on the next live voter after `key`'s leader, with
    /// `rf - 1` copies on the live voters after that one. An unreplicated
    /// topic rolls as it always did.
    pub(crate) async fn roll_cmd(
        &self,
        key: &SegmentKey,
        count: Option<u64>,
        rf: u32,
    ) -> MetadataCmd {
        let state = self.metadata.state();
        let current = state
            .topic(&key.topic)
            .and_then(|t| t.segment(key.segment))
            .map_or(self.id, |s| s.leader);
        let next_leader = self.next_leader(current).await;
        if rf <= 1 {
            return MetadataCmd::Roll {
                topic: key.topic.clone(),
                segment: key.segment,
                count,
                next_leader,
            };
        }
        MetadataCmd::RollReplicated {
            topic: key.topic.clone(),
            segment: key.segment,
            count,
            replicas: self.replicas_led_by(next_leader, rf).await,
        }
    }

    /// `leader` and up to `rf - 1` followers: the voters after it in id
    /// order that look alive, so that as leaders go round-robin the copies
    /// go round with them and every node holds about as many. Fewer when
    /// fewer voters are live: the segment is under-replicated, never
    /// waiting on a dead node.
    pub(crate) async fn replicas_led_by(&self, leader: NodeId, rf: u32) -> Vec<NodeId> {
        let status = self.metadata.status();
        let voters = self.eligible_voters(&status);
        let ring = voters
            .iter()
            .filter(|v| **v > leader)
            .chain(voters.iter().filter(|v| **v < leader));
        let mut replicas = vec![leader];
        for &candidate in ring {
            if replicas.len() >= rf as usize {
                break;
            }
            if self.looks_alive(candidate, &status).await {
                replicas.push(candidate);
            }
        }
        replicas
    }

    /// The voters in id order, without removed nodes (`REMOVE-NODE`
    /// commits before the consensus membership changes: in between, a
    /// removed node still votes but is never chosen).
    pub(crate) fn eligible_voters(&self, status: &crate::ConsensusStatus) -> Vec<NodeId> {
        let state = self.metadata.state();
        status
            .voters
            .iter()
            .copied()
            .filter(|v| !state.removed.contains(v))
            .collect()
    }

    /// This node; or a node the consensus leader heard from lately (when
    /// we lead) that answers a ping.
    pub(crate) async fn looks_alive(
        &self,
        candidate: NodeId,
        status: &crate::ConsensusStatus,
    ) -> bool {
        if candidate == self.id {
            return true;
        }
        let threshold = self.failover_threshold();
        if status.is_leader()
            && !self
                .failover
                .is_live(candidate, self.clock.now(), threshold)
        {
            return false;
        }
        self.ping(candidate).await.is_ok()
    }

    /// The voter after `current` in id order that looks alive: the
    /// consensus leader skips nodes it has not heard from; every node skips
    /// nodes that do not answer a ping. Falls back to this node.
    pub(crate) async fn next_leader(&self, current: NodeId) -> NodeId {
        let status = self.metadata.status();
        let voters = self.eligible_voters(&status);
        let ring = voters
            .iter()
            .filter(|v| **v > current)
            .chain(voters.iter().filter(|v| **v <= current));
        for &candidate in ring {
            if self.looks_alive(candidate, &status).await {
                return candidate;
            }
        }
        self.id
    }

    async fn ping(&self, node: NodeId) -> Result<()> {
        tokio::time::timeout(
            self.config.lease_renew,
            self.transport.call(node, NodeRequest::Ping),
        )
        .await
        .map_err(|_| Error::Timeout(format!("a ping of node {node}")))?
        .map(|_| ())
    }

    /// One pass of the monitor loop (the first runs at start): roll any
    /// open segment of ours that is full, already sealed locally,
    /// quarantined (its count left pending), or refusing appends after a
    /// failed sync (sealing it keeps only its durable entries; the topic
    /// goes on in a new segment, maybe on another node).
    pub(crate) async fn monitor_tick(&self) {
        self.record_life().await;
        let state = self.metadata.state();
        // Segments rolled away whose copies are done (their senders
        // ended) need no entry any more.
        self.replication.retain(|key, copies| {
            state
                .topic(&key.topic)
                .is_some_and(|t| t.current().id == key.segment)
                || copies.is_some_and(|c| Arc::strong_count(c) > 1)
        });
        if state.topics.values().any(|t| t.rf > 1) {
            self.replication.retain_fences(|key| {
                state.topic(&key.topic).is_some_and(|t| {
                    key.segment > t.deleted_through && t.segment(key.segment).is_some()
                })
            });
            self.settle_copies().await;
        }
        let health = self.log.health();
        for (topic, t) in &state.topics {
            let current = t.current();
            if current.leader != self.id {
                continue;
            }
            let key = SegmentKey::new(topic.clone(), current.id);
            if !current.followers.is_empty() {
                self.ensure_copies(&key).await;
            }
            if current.close_from_replicas {
                // Closed from its replicas by the consensus leader, never
                // rolled at this node's own count, which may be short.
                continue;
            }
            if health.quarantined_segments.contains(&key) {
                self.spawn_rollover(key);
                continue;
            }
            if health.failed_segments.contains(&key) {
                tracing::error!(
                    node = self.id,
                    "segment {key} refuses appends after a failed sync of its files; sealing it at its durable count and rolling {topic} to a new segment. Check this node's disk"
                );
                self.spawn_rollover(key);
                continue;
            }
            match self.log.info(&key).await {
                Ok(Some(info)) if info.sealed || info.count >= self.config.max_segment_entries => {
                    self.spawn_rollover(key)
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(node = self.id, "monitor cannot read {key}: {e}"),
            }
        }
    }

    /// Seals and reports every segment of ours whose count is pending
    /// (failed over while we were unreachable). The report names our
    /// storage: the cluster refuses one from storage that is not the one it
    /// recorded for us, so a wiped disk never reports its segments empty.
    pub(crate) async fn report_pending(&self) {
        let state = self.metadata.state();
        let quarantined = self.log.health().quarantined_segments;
        for key in state.pending_segments_of(self.id) {
            let replicated = state
                .topic(&key.topic)
                .and_then(|t| t.segment(key.segment))
                .is_some_and(|s| !s.followers.is_empty());
            if replicated {
                // Closed from a majority of its replicas by the consensus
                // leader (this copy may be short: lost unsynced entries).
                continue;
            }
            if quarantined.contains(&key) {
                // Its count is unknown until the file is restored; the
                // store logged the damage when it opened.
                continue;
            }
            let result = async {
                let count = self.log.seal(&key).await?;
                self.record_producers(&key).await?;
                self.metadata
                    .propose(MetadataCmd::ReportCount {
                        topic: key.topic.clone(),
                        segment: key.segment,
                        count,
                        storage: self.config.storage,
                    })
                    .await
            }
            .await;
            match result {
                Ok(CmdResult::Rejected(why)) => {
                    // Every renewal comes back here: say it once.
                    if !self.count_refused.swap(true, Ordering::Relaxed) {
                        tracing::error!(
                            node = self.id,
                            "the cluster refused the count of pending segment {key}: {why}"
                        );
                    }
                }
                Ok(_) => tracing::info!(
                    node = self.id,
                    "reported the count of pending segment {key}"
                ),
                Err(e) => {
                    tracing::warn!(node = self.id, "cannot report pending segment {key}: {e}")
                }
            }
        }
    }
}
