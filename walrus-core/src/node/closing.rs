//! Closing a replicated segment from its replicas when its leader is gone
//! (docs/architecture.md, "Replication").
//!
//! The consensus leader asks every replica for its count with a
//! [`NodeRequest::Fence`]; an answering follower refuses the old leader's
//! `Replicate`s from then on, an answering leader seals its copy. With
//! answers from a majority of the replica set, the segment is closed at
//! the largest count any of them holds: an acknowledged entry is on a
//! majority, any two majorities share a replica, and a fenced replica
//! takes nothing more from the old leader, so that count includes every
//! acknowledged entry and everything the old leader's commit point ever
//! reached. The replica holding it copies the missing tail to the others
//! ([`NodeRequest::ReadCopy`], then [`NodeRequest::SealCopy`], which also
//! seals each copy at exactly that count) and, once a majority is sealed
//! there, the count is committed: the segment is Sealed, never Pending.
//!
//! A replica that did not take part (down, cut off) learns the count from
//! the metadata later and settles its copy itself ([`Node::settle_copies`]):
//! it cuts a longer tail, or copies a missing one from another replica, and
//! seals at that count.

use bytes::Bytes;

use super::Node;
use crate::error::{Error, Result};
use crate::metadata::{ProducerEntry, SegmentMeta, SegmentStatus};
use crate::transport::{NodeRequest, NodeResponse, RequestHandler};
use crate::types::{NodeId, ProducerId, SegmentKey};

/// Entries one `ReadCopy` asks for.
const COPY_CHUNK: u32 = 4096;

/// What closing a segment from its replicas came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    /// A majority of the replicas holds the segment sealed at this count.
    Sealed(u64),
    /// Fewer than a majority answered: the count cannot be known yet.
    NoQuorum,
    /// A majority answered, but fewer than a majority could be sealed at
    /// the count (a replica failed meanwhile): try again.
    Retry,
}

impl Node {
    /// Sends `req` to replica `node`, which may be this node.
    async fn call_replica(&self, node: NodeId, req: NodeRequest) -> Result<NodeResponse> {
        let call = async {
            if node == self.id {
                RequestHandler::handle(self, req).await
            } else {
                self.transport.call(node, req).await
            }
        };
        // A replica that is down must not hold the failover up for a
        // transport timeout.
        tokio::time::timeout(self.config.lease_renew * 2, call)
            .await
            .map_err(|_| Error::Timeout(format!("an answer from node {node}")))?
    }

    /// The replica's side of [`NodeRequest::Fence`].
    pub(crate) async fn on_fence(&self, key: &SegmentKey) -> Result<NodeResponse> {
        self.replication.fence(key);
        let leads = self
            .metadata
            .state()
            .topic(&key.topic)
            .and_then(|t| t.segment(key.segment))
            .is_some_and(|s| s.leader == self.id);
        let count = if leads {
            // Our lease lapsed: take no more appends. A seal syncs and
            // counts everything appended.
            self.log.seal(key).await?
        } else {
            // Acknowledgements may count entries the fsync policy has not
            // synced yet: the count must include them.
            self.log.sync().await?;
            self.log.info(key).await?.map_or(0, |i| i.count)
        };
        Ok(NodeResponse::Replicated { count })
    }

    /// The replica's side of [`NodeRequest::ReadCopy`].
    pub(crate) async fn on_read_copy(
        &self,
        key: &SegmentKey,
        from: u64,
        max_entries: u32,
    ) -> Result<NodeResponse> {
        let info = self.log.info(key).await?;
        let entries = self
            .log
            .read(
                key,
                from,
                max_entries as usize,
                super::data_path::READ_MAX_BYTES,
            )
            .await?;
        Ok(NodeResponse::Entries {
            entries,
            count: info.map_or(0, |i| i.count),
            sealed: info.is_some_and(|i| i.sealed),
        })
    }

    /// The replica's side of [`NodeRequest::SealCopy`]: answers the count
    /// it holds, `count` once sealed there.
    pub(crate) async fn on_seal_copy(
        &self,
        key: &SegmentKey,
        first: u64,
        entries: &[Bytes],
        count: u64,
    ) -> Result<NodeResponse> {
        let info = self.log.info(key).await?;
        let mut held = info.map_or(0, |i| i.count);
        if info.is_some_and(|i| i.sealed) && held == count {
            return Ok(NodeResponse::Replicated { count });
        }
        let end = first + entries.len() as u64;
        if first <= held && end > held {
            // Nothing past the count is stored: `seal_at` would cut it.
            let keep = usize::try_from(count.min(end) - first).unwrap_or(entries.len());
            held = self
                .log
                .append_at(key, first, &entries[..keep])
                .await?
                .count;
        }
        if held >= count {
            held = self.log.seal_at(key, count).await?;
        }
        Ok(NodeResponse::Replicated { count: held })
    }

    /// Closes `seg` of `key`, whose leader's lease lapsed, from its
    /// replicas (see the module's comment).
    pub(crate) async fn close_from_replicas(&self, key: &SegmentKey, seg: &SegmentMeta) -> Closing {
        let replicas = seg.replicas();
        let asked = replicas.iter().map(|r| async move {
            let answer = self
                .call_replica(
                    *r,
                    NodeRequest::Fence {
                        segment: key.clone(),
                    },
                )
                .await;
            match answer {
                Ok(NodeResponse::Replicated { count }) => Some((*r, count)),
                Ok(other) => {
                    tracing::warn!(node = self.id, "node {r} answered a Fence with {other:?}");
                    None
                }
                Err(e) => {
                    tracing::debug!(node = self.id, "node {r} did not answer a Fence: {e}");
                    None
                }
            }
        });
        let answers: Vec<(NodeId, u64)> = futures::future::join_all(asked)
            .await
            .into_iter()
            .flatten()
            .collect();
        if answers.len() < seg.quorum() {
            // Debug: the pending pass asks again every renewal period.
            tracing::debug!(
                node = self.id,
                "only {} of the {} replicas of {key} answered ({} needed): its count stays pending",
                answers.len(),
                replicas.len(),
                seg.quorum()
            );
            return Closing::NoQuorum;
        }
        let (holder, count) = answers
            .iter()
            .copied()
            .max_by_key(|(_, c)| *c)
            .expect("a quorum is at least one answer");
        let sealed = answers.iter().map(|(r, held)| async move {
            match self
                .seal_replica(key, holder, *r, *held, count, false)
                .await
            {
                Ok(()) => Some(*r),
                Err(e) => {
                    tracing::warn!(
                        node = self.id,
                        "cannot seal the copy of {key} on node {r} at {count}: {e}"
                    );
                    None
                }
            }
        });
        let sealed: Vec<NodeId> = futures::future::join_all(sealed)
            .await
            .into_iter()
            .flatten()
            .collect();
        if sealed.len() < seg.quorum() {
            return Closing::Retry;
        }
        if let Err(e) = self
            .record_replica_producers(key, &sealed, seg.quorum())
            .await
        {
            tracing::warn!(
                node = self.id,
                "cannot record the producers of {key} from its replicas (retried): {e}"
            );
            return Closing::Retry;
        }
        Closing::Sealed(count)
    }

    /// Records in metadata each producer's last write to `key`, as the
    /// replicas in `sealed` (at least `quorum` of them, their copies sealed
    /// at the segment's count) know it, before the roll that makes the
    /// count final: what the dead leader's rollover would have recorded
    /// from its own table. Every acknowledged write is journaled on a
    /// majority (see [`crate::transport::ProducerMark`]), which shares a
    /// replica with `sealed`; a replica reports only writes its sealed copy
    /// holds, and the newest report of each producer wins.
    async fn record_replica_producers(
        &self,
        key: &SegmentKey,
        sealed: &[NodeId],
        quorum: usize,
    ) -> Result<()> {
        let asked = sealed.iter().map(|r| async move {
            let req = NodeRequest::SegmentProducers {
                segment: key.clone(),
            };
            // A journal is read whole: give it the time of a request.
            let call = async {
                if *r == self.id {
                    RequestHandler::handle(self, req).await
                } else {
                    self.transport.call(*r, req).await
                }
            };
            match tokio::time::timeout(self.config.request_timeout, call).await {
                Ok(Ok(NodeResponse::Producers(found))) => Some(found),
                Ok(Ok(other)) => {
                    tracing::warn!(
                        node = self.id,
                        "node {r} answered SegmentProducers with {other:?}"
                    );
                    None
                }
                Ok(Err(e)) => {
                    tracing::debug!(
                        node = self.id,
                        "node {r} did not give the producers of {key}: {e}"
                    );
                    None
                }
                Err(_) => None,
            }
        });
        let answers: Vec<_> = futures::future::join_all(asked)
            .await
            .into_iter()
            .flatten()
            .collect();
        if answers.len() < quorum {
            return Err(Error::Unavailable(format!(
                "only {} of the replicas of {key} told their producers ({quorum} needed)",
                answers.len()
            )));
        }
        let mut newest: std::collections::BTreeMap<ProducerId, ProducerEntry> = Default::default();
        for (producer, entry) in answers.into_iter().flatten() {
            match newest.get(&producer) {
                Some(known) if known.seq >= entry.seq => {}
                _ => {
                    newest.insert(producer, entry);
                }
            }
        }
        self.propose_producers(key, newest.into_iter().collect())
            .await
    }

    /// Copies entries `held..count` of `key` from `holder` to `replica`
    /// and seals it there at `count`. `paced`: at re-replication's pace
    /// (`Node::pace`), not at once as a failover must.
    pub(crate) async fn seal_replica(
        &self,
        key: &SegmentKey,
        holder: NodeId,
        replica: NodeId,
        mut held: u64,
        count: u64,
        paced: bool,
    ) -> Result<()> {
        loop {
            let entries = if held < count {
                let want = u32::try_from(count - held)
                    .unwrap_or(u32::MAX)
                    .min(COPY_CHUNK);
                self.read_copy(holder, key, held, want).await?
            } else {
                Vec::new()
            };
            if held < count && entries.is_empty() {
                return Err(Error::Unavailable(format!(
                    "node {holder} returned no entry of {key} at index {held} of {count}"
                )));
            }
            let bytes: usize = entries.iter().map(Bytes::len).sum();
            let answer = self
                .call_replica(
                    replica,
                    NodeRequest::SealCopy {
                        segment: key.clone(),
                        first: held,
                        entries,
                        count,
                    },
                )
                .await?;
            let NodeResponse::Replicated { count: now } = answer else {
                return Err(Error::Internal(format!(
                    "node {replica} answered a SealCopy with {answer:?}"
                )));
            };
            if now == count {
                // Holding `count` entries, the replica sealed there.
                return Ok(());
            }
            if now <= held {
                return Err(Error::Unavailable(format!(
                    "node {replica} took no entry of {key} at index {held}"
                )));
            }
            held = now.min(count);
            if paced {
                self.pace(bytes).await;
            }
        }
    }

    /// Makes this node's copy of `key` (`info`) the first `count`
    /// entries, copied from `holder` as far as it lacks them. A copy
    /// sealed at another count (this node sealed it as the leader while a
    /// failover closed it elsewhere, or took the old leader's seal while
    /// cut off from the failover) is deleted and copied again whole, but
    /// only once `holder` is seen to hold all `count` entries, so that no
    /// copy is dropped for nothing.
    async fn refill_from(
        &self,
        key: &SegmentKey,
        holder: NodeId,
        info: crate::log_store::SegmentInfo,
        count: u64,
    ) -> Result<()> {
        let mut held = info.count;
        if info.sealed {
            let answer = self
                .call_replica(
                    holder,
                    NodeRequest::ReadCopy {
                        segment: key.clone(),
                        from: count,
                        max_entries: 0,
                    },
                )
                .await?;
            match answer {
                NodeResponse::Entries { count: has, .. } if has >= count => {}
                _ => {
                    return Err(Error::Unavailable(format!(
                        "node {holder} does not hold all {count} entries of {key}"
                    )))
                }
            }
            tracing::warn!(
                node = self.id,
                "the copy of {key} here is sealed at {} entries, but the segment was closed at \
                 {count}: copying it again from node {holder}",
                info.count
            );
            self.log.delete(key).await?;
            held = 0;
        }
        self.seal_replica(key, holder, self.id, held, count, false)
            .await
    }

    /// Entries `from..` of `key` as `holder` stores them.
    async fn read_copy(
        &self,
        holder: NodeId,
        key: &SegmentKey,
        from: u64,
        max_entries: u32,
    ) -> Result<Vec<Bytes>> {
        let answer = self
            .call_replica(
                holder,
                NodeRequest::ReadCopy {
                    segment: key.clone(),
                    from,
                    max_entries,
                },
            )
            .await?;
        match answer {
            NodeResponse::Entries { entries, .. } => Ok(entries),
            other => Err(Error::Internal(format!(
                "node {holder} answered a ReadCopy with {other:?}"
            ))),
        }
    }

    /// Seals this node's copies of replicated segments the metadata has
    /// sealed while this copy was not (a failover closed the segment
    /// without this replica: it was down, cut off, or the old leader): a
    /// longer tail is cut, a missing one is copied from another replica,
    /// so that this copy never serves or keeps entries past the count.
    pub(crate) async fn settle_copies(&self) {
        let Ok(local) = self.log.segments().await else {
            return;
        };
        let state = self.metadata.state();
        for (key, info) in local {
            if key.segment == 0 {
                continue;
            }
            let Some(t) = state.topic(&key.topic) else {
                continue;
            };
            // Retention deletes the copies of deleted segments.
            let Some(seg) = t
                .segment(key.segment)
                .filter(|_| key.segment > t.deleted_through)
            else {
                continue;
            };
            let SegmentStatus::Sealed { count } = seg.status else {
                continue;
            };
            if seg.followers.is_empty() || !seg.replicas().contains(&self.id) {
                continue;
            }
            if info.sealed && info.count == count {
                continue;
            }
            let mut settled = Err(Error::Unavailable(format!(
                "no other replica of {key} holds its {count} entries"
            )));
            if !info.sealed && info.count >= count {
                settled = self.log.seal_at(&key, count).await.map(|_| ());
            } else {
                let others = seg.replicas().into_iter().filter(|r| *r != self.id);
                for holder in others {
                    settled = self.refill_from(&key, holder, info, count).await;
                    if settled.is_ok() {
                        break;
                    }
                }
            }
            match settled {
                Ok(()) => tracing::info!(
                    node = self.id,
                    "sealed the copy of {key} at {count}, the count its failover closed it at"
                ),
                Err(e) => tracing::warn!(
                    node = self.id,
                    "cannot seal the copy of {key} at {count} yet (retried): {e}"
                ),
            }
        }
    }
}
