//! Retention: closed segments past a topic's limits are deleted, whole,
//! from the metadata and from every node's disk; offsets never change.
//!
//! The consensus leader drives it: every `retention_interval` it stamps
//! newly closed segments with the time (`StampClosed`, what age counts
//! from) and proposes `DeleteSegments` for each topic with segments due.
//! Every node, on the same loop, deletes the files of segments the
//! metadata it applied says are deleted; a node that was down does so on
//! its first pass after it starts (docs/architecture.md, "Retention").

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::error::Error;
use crate::locks::MutexExt;
use crate::metadata::{CmdResult, MetadataCmd, Retention, SegmentStatus};
use crate::types::{SegmentId, SegmentKey, TopicName};

/// Per topic, the segments this node has deleted from its store
/// (`..=id`): a pass does work only when the metadata moved past it.
#[derive(Default)]
pub(crate) struct LocalDeletions {
    done: Mutex<BTreeMap<TopicName, SegmentId>>,
}

impl LocalDeletions {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<TopicName, SegmentId>> {
        self.done.lock_or_recover()
    }
}

impl super::Node {
    /// One pass of the retention loop (the first runs at start).
    pub(crate) async fn retention_tick(&self) {
        self.delete_local().await;
        self.report_segment_bytes().await;
        if self.metadata.status().is_leader() {
            self.propose_retention().await;
        }
    }

    /// The retention in force for a topic whose own setting is `own`.
    pub(crate) fn effective_retention(&self, own: Option<Retention>) -> Retention {
        own.unwrap_or(self.config.default_retention)
    }

    /// On the consensus leader: stamp closed segments, then delete what is
    /// due. Proposals that fail are proposed again at the next pass; each
    /// command is idempotent, so one that committed after all is harmless.
    async fn propose_retention(&self) {
        let now = self.wall_ms();
        if self.metadata.state().has_unstamped_closed() {
            if let Err(e) = self
                .metadata
                .propose(MetadataCmd::StampClosed { at_ms: now })
                .await
            {
                tracing::debug!(node = self.id, "cannot stamp closed segments: {e}");
                return;
            }
        }
        let state = self.metadata.state();
        for (topic, t) in &state.topics {
            let retention = self.effective_retention(t.retention);
            if retention.keeps_everything() {
                continue;
            }
            let through = retention.deletes_through(t, now);
            if through <= t.deleted_through {
                continue;
            }
            let cmd = MetadataCmd::DeleteSegments {
                topic: topic.clone(),
                through,
            };
            match self.metadata.propose(cmd).await {
                Ok(CmdResult::Rejected(why)) => {
                    tracing::warn!(node = self.id, "retention of {topic} refused: {why}")
                }
                Ok(_) => tracing::info!(
                    node = self.id,
                    "retention deleted segments {}..={through} of {topic}",
                    t.deleted_through + 1
                ),
                Err(e) => tracing::debug!(node = self.id, "retention of {topic}: {e}"),
            }
        }
    }

    /// Deletes from the local store every segment the applied metadata
    /// says retention deleted. Only topics whose deletions moved since the
    /// last pass are looked at; at start every such topic is.
    async fn delete_local(&self) {
        let state = self.metadata.state();
        let due: Vec<(TopicName, SegmentId)> = {
            let done = self.retention_done.lock();
            state
                .topics
                .iter()
                .filter(|(name, t)| {
                    t.deleted_through > done.get(*name).copied().unwrap_or_default()
                })
                .map(|(name, t)| (name.clone(), t.deleted_through))
                .collect()
        };
        if due.is_empty() {
            return;
        }
        let held = match self.log.segments().await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(node = self.id, "retention cannot list local segments: {e}");
                return;
            }
        };
        for (topic, through) in due {
            let mut all_gone = true;
            // Segments 1..=through: segment 0 is the topic's producer
            // journal (node/produce.rs), never a segment of entries.
            let doomed = held
                .iter()
                .map(|(k, _)| k)
                .filter(|k| k.topic == topic && (1..=through).contains(&k.segment));
            for key in doomed {
                if let Err(e) = self.delete_segment(key).await {
                    all_gone = false;
                    tracing::warn!(
                        node = self.id,
                        "retention cannot delete {key} here (retried at the next pass): {e}"
                    );
                }
            }
            if all_gone {
                self.retention_done.lock().insert(topic, through);
            }
        }
    }

    /// Reports the payload bytes of each sealed segment this node holds
    /// a copy of whose bytes the metadata does not know yet (retention by
    /// bytes counts them), from a copy sealed at its count. The leader
    /// reports at once; a follower once the segment has been closed for two
    /// passes without a report (its leader is down, maybe for good: a
    /// segment closed from its replicas would otherwise never be counted).
    /// The first report stays. A segment closed as lost is never reported
    /// (its leader lost the copy) and counts as empty.
    async fn report_segment_bytes(&self) {
        let state = self.metadata.state();
        let patience =
            u64::try_from(self.config.retention_interval.as_millis() * 2).unwrap_or(u64::MAX);
        let now = self.wall_ms();
        let mut due = Vec::new();
        for (topic, t) in &state.topics {
            for s in t.segments.iter().skip(t.deleted_through as usize) {
                let SegmentStatus::Sealed { count } = s.status else {
                    continue;
                };
                if s.bytes.is_some() {
                    continue;
                }
                let follower_due = s.followers.contains(&self.id)
                    && s.closed_at_ms
                        .is_some_and(|at| now.saturating_sub(at) > patience);
                if s.leader == self.id || follower_due {
                    due.push((SegmentKey::new(topic.clone(), s.id), count));
                }
            }
        }
        for (key, count) in due {
            match self.log.info(&key).await {
                Ok(Some(info)) if info.sealed && info.count == count => {}
                _ => continue,
            }
            let Ok(Some(bytes)) = self.log.payload_bytes(&key).await else {
                continue;
            };
            let cmd = MetadataCmd::RecordSegmentBytes {
                topic: key.topic.clone(),
                segment: key.segment,
                bytes,
            };
            if let Err(e) = self.metadata.propose(cmd).await {
                // Proposed again at the next pass.
                tracing::debug!(node = self.id, "cannot report the bytes of {key}: {e}");
                return;
            }
        }
    }

    /// Deletes `key`, closed for good in the metadata. A copy this node
    /// never sealed (it crashed before it could, and the segment was
    /// closed without it) is sealed first: every reader has moved past it.
    async fn delete_segment(&self, key: &SegmentKey) -> crate::Result<()> {
        match self.log.delete(key).await {
            Err(Error::BadRequest(_)) => {
                self.log.seal(key).await?;
                self.log.delete(key).await
            }
            other => other,
        }
    }
}
