//! Client requests: routing, the PUT path with its lease checks, and
//! reads of segments wherever they live.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::log_store::Appended;
use crate::metadata::{MetadataCmd, SegmentStatus};
use crate::protocol::{Request, Response};
use crate::transport::{NodeRequest, NodeResponse};
use crate::types::{NodeId, SegmentKey, TopicName};

/// Largest payload a segment read returns at once (a read-ahead batch).
pub(crate) const READ_MAX_BYTES: usize = 1 << 20;
/// Longest pause between re-routing attempts of a PUT.
const MAX_REROUTE_PAUSE: Duration = Duration::from_millis(100);

/// A segment's entries as read from its holder.
pub(crate) struct SegmentRead {
    pub entries: Vec<Bytes>,
}

impl super::Node {
    pub(crate) async fn route(&self, req: Request) -> Result<Response> {
        match req {
            Request::Register(topic) => {
                self.register_with(topic, None).await.map(|()| Response::Ok)
            }
            Request::RegisterRetaining { topic, retain, rf } => {
                self.register_with(topic.clone(), rf).await?;
                match retain {
                    Some(retain) => self
                        .set_retention(&topic, retain.as_topic_retention())
                        .await
                        .map(|()| Response::Ok),
                    None => Ok(Response::Ok),
                }
            }
            Request::Config {
                topic,
                retain: Some(retain),
            } => {
                self.known_topic(&topic).await?;
                self.set_retention(&topic, retain.as_topic_retention())
                    .await
                    .map(|()| Response::Ok)
            }
            Request::Config {
                topic,
                retain: None,
            } => {
                self.known_topic(&topic).await?;
                let state = self.metadata.state();
                let t = state.topic(&topic).ok_or(Error::TopicNotFound)?;
                Ok(Response::Json(
                    serde_json::json!({
                        "topic": topic.as_str(),
                        "retention": t.retention,
                        "in_force": self.effective_retention(t.retention),
                        "first": t.first_offset(),
                    })
                    .to_string(),
                ))
            }
            Request::Put { topic, payload } => {
                self.put(&topic, payload).await.map(|()| Response::Ok)
            }
            Request::PutBatch {
                topic,
                entries,
                producer,
            } => self.put_whole(&topic, entries, producer).await,
            Request::Get(topic) => Ok(match self.get(&topic).await? {
                Some(entry) => Response::Entry(entry),
                None => Response::Empty,
            }),
            Request::State(topic) => {
                self.known_topic(&topic).await?;
                self.metadata
                    .state()
                    .topic_json(&topic)
                    .map(|j| Response::Json(j.to_string()))
                    .ok_or(Error::TopicNotFound)
            }
            // The server answers METRICS in the protocol's field names;
            // a node on its own answers its metrics' own JSON.
            Request::Metrics => serde_json::to_string(&self.metrics())
                .map(Response::Json)
                .map_err(Error::internal),
            Request::Ping => Ok(Response::Pong),
            Request::ReplaceStorage { node, storage } => {
                let lost = self.replace_storage(node, storage).await?;
                let lost: Vec<serde_json::Value> = lost
                    .iter()
                    .map(|(key, kept)| {
                        serde_json::json!({
                            "topic": key.topic.as_str(),
                            "segment": key.segment,
                            "kept_entries": kept,
                        })
                    })
                    .collect();
                Ok(Response::Json(
                    serde_json::json!({
                        "node": node,
                        "storage": storage.to_string(),
                        "lost_segments": lost,
                    })
                    .to_string(),
                ))
            }
            Request::RemoveNode { node } => {
                let under_replicated = self.remove_node(node).await?;
                Ok(Response::Json(
                    serde_json::json!({
                        "node": node,
                        "removed": true,
                        "under_replicated_segments": under_replicated,
                    })
                    .to_string(),
                ))
            }
            Request::Topics => {
                let state = self.metadata.state();
                let names: Vec<&str> = state.topics.keys().map(TopicName::as_str).collect();
                Ok(Response::Json(serde_json::json!(names).to_string()))
            }
            Request::TopicCounts => Ok(Response::Json(self.topic_counts().await.to_string())),
            Request::Read {
                topic,
                offset,
                max_entries,
                max_bytes,
                wait_ms,
            } => {
                self.read_by_offset(
                    &topic,
                    offset,
                    max_entries,
                    max_bytes,
                    Duration::from_millis(wait_ms),
                )
                .await
            }
            Request::Fetch {
                group,
                topic,
                max_entries,
                max_bytes,
                wait_ms,
            } => {
                self.fetch(
                    &group,
                    &topic,
                    max_entries,
                    max_bytes,
                    Duration::from_millis(wait_ms),
                )
                .await
            }
            Request::Commit {
                group,
                topic,
                offset,
                asynchronous,
            } => {
                if asynchronous {
                    self.commit_offset_async(&group, &topic, offset).await?;
                } else {
                    self.commit_offset(&group, &topic, offset).await?;
                }
                Ok(Response::Ok)
            }
            Request::Offsets(topic) => {
                let (first, end) = self.topic_offsets(&topic).await?;
                Ok(Response::Json(
                    serde_json::json!({"topic": topic.as_str(), "first": first, "end": end})
                        .to_string(),
                ))
            }
        }
    }

    /// REGISTER: the first segment is led by this node if it votes, else
    /// by the lowest voter, and copied to the `rf - 1` live voters after
    /// it (`rf`: the request's, else this node's default, else `min(3,
    /// voters)`). A topic that
    /// exists keeps its own factor: asking for another one is an error.
    async fn register_with(&self, topic: TopicName, rf: Option<u32>) -> Result<()> {
        let status = self.metadata.status();
        let leader = if status.voters.is_empty() || status.voters.contains(&self.id) {
            self.id
        } else {
            *status.voters.first().expect("voters is not empty here")
        };
        let factor = rf
            .or(self.config.replication_factor)
            .unwrap_or_else(|| {
                // `min(3, voters)`: three copies survive losing any one
                // node and keep a majority for acknowledgement.
                let voters = self.eligible_voters(&status).len();
                u32::try_from(voters.clamp(1, 3)).unwrap_or(1)
            })
            .max(1);
        let cmd = if factor == 1 {
            MetadataCmd::CreateTopic {
                topic: topic.clone(),
                leader,
            }
        } else {
            MetadataCmd::CreateReplicatedTopic {
                topic: topic.clone(),
                rf: factor,
                replicas: self.replicas_led_by(leader, factor).await,
            }
        };
        if let crate::CmdResult::Rejected(why) = self.metadata.propose(cmd).await? {
            return Err(Error::BadRequest(why));
        }
        let state = self.metadata.state();
        match (rf, state.topic(&topic)) {
            (Some(asked), Some(t)) if t.rf != asked => Err(Error::BadRequest(format!(
                "topic {topic} exists with replication factor {}, fixed when it was created; \
                 REGISTER it without RF, or register a new topic with RF {asked}",
                t.rf
            ))),
            _ => Ok(()),
        }
    }

    /// Sets `topic`'s retention through consensus (idempotent: a retry
    /// after a lost answer sets the same thing).
    async fn set_retention(
        &self,
        topic: &TopicName,
        retention: Option<crate::metadata::Retention>,
    ) -> Result<()> {
        let cmd = MetadataCmd::SetTopicRetention {
            topic: topic.clone(),
            retention,
        };
        match self.metadata.propose(cmd).await? {
            crate::CmdResult::Rejected(why) => Err(Error::BadRequest(why)),
            _ => Ok(()),
        }
    }

    /// PUT: one entry, through [`Node::put_batch`].
    async fn put(&self, topic: &TopicName, payload: Bytes) -> Result<()> {
        match self.put_batch(topic, vec![payload]).await {
            (_, Some(e)) => Err(e),
            (_, None) => Ok(()),
        }
    }

    /// PUT of several entries in order (a pipelined writer's queued PUTs):
    /// each stretch that fits the current segment goes in with one append
    /// (one sync) here or one forwarded request to the segment leader.
    /// Answers how many entries, from the first, were acknowledged, and
    /// the error that stopped the rest (none of which was acknowledged).
    ///
    /// Every entry keeps the single PUT's guarantees: the lease is checked
    /// before and after its append; segments fill exactly to their limit,
    /// the remainder following the rollover into the next one. When the
    /// segment is sealed under us or the leader says it does not lead, the
    /// metadata is about to move: wait for it (bounded) and route again.
    /// Only errors that guarantee nothing was written are retried here.
    pub async fn put_batch(
        &self,
        topic: &TopicName,
        payloads: Vec<Bytes>,
    ) -> (usize, Option<Error>) {
        if let Err(e) = self.known_topic(topic).await {
            return (0, Some(e));
        }
        let mut done = 0;
        let mut deadline = Instant::now() + self.config.request_timeout;
        let mut watch = self.metadata.watch();
        let mut pause = Duration::from_millis(2);
        while done < payloads.len() {
            let current = {
                let state = watch.borrow_and_update();
                match state.topic(topic) {
                    Some(t) => (t.current().id, t.current().leader),
                    None => return (done, Some(Error::TopicNotFound)),
                }
            };
            let (segment, leader) = current;
            let key = SegmentKey::new(topic.clone(), segment);
            let rest = payloads[done..].to_vec();
            let result = if leader == self.id {
                self.append_local(&key, rest).await
            } else {
                self.forward_append(leader, key, rest).await
            };
            let err = match result {
                Ok(a) => {
                    let stored = a.count.saturating_sub(a.first_index) as usize;
                    if stored == 0 || stored > payloads.len() - done {
                        return (
                            done,
                            Some(Error::Internal(format!(
                                "an append of {} entries to segment {segment} of {topic} \
                                 reported {a:?}",
                                payloads.len() - done
                            ))),
                        );
                    }
                    done += stored;
                    // Each entry gets the full wait for the next rollover.
                    deadline = Instant::now() + self.config.request_timeout;
                    pause = Duration::from_millis(2);
                    continue;
                }
                Err(e @ (Error::NotLeader | Error::SegmentSealed(_))) => e,
                Err(e) => return (done, Some(e)),
            };
            if let Err(e) = reroute_wait(&mut watch, deadline, &mut pause, err).await {
                return (done, Some(e));
            }
        }
        (done, None)
    }

    /// A local append to a segment this node leads: lease check, append,
    /// lease check again before acknowledging.
    ///
    /// Of several entries it stores the longest prefix that fits the
    /// segment (`count - first_index` of the answer says how many), so
    /// segments fill exactly to the limit: the store would refuse the
    /// whole batch when it passes the limit, or take all of it into an
    /// empty segment. Only a refused single entry means the segment is
    /// full (or sealed) and starts the rollover.
    pub(crate) async fn append_local(
        &self,
        key: &SegmentKey,
        entries: Vec<Bytes>,
    ) -> Result<Appended> {
        let appended = self.append_stored(key, &entries, false, None).await?;
        let partial = (appended.count - appended.first_index) < entries.len() as u64;
        self.await_quorum(key, appended.count).await?;
        self.acknowledge(key, appended.count, partial)?;
        Ok(appended)
    }

    /// The lease check and the store's append, without the check before
    /// acknowledging ([`Node::acknowledge`]): once this returns `Ok` the
    /// entries are stored and will be read. `whole`: all of `entries` or
    /// none (a PUTB); a batch the segment has no room for starts the
    /// rollover and goes whole into the next segment. Otherwise the
    /// longest prefix that fits is stored (see [`Node::append_local`]).
    /// `mark`: the idempotent write `entries` are (a whole batch), for the
    /// followers; its `first_index` is set here, once known.
    pub(crate) async fn append_stored(
        &self,
        key: &SegmentKey,
        entries: &[Bytes],
        whole: bool,
        mark: Option<crate::transport::ProducerMark>,
    ) -> Result<Appended> {
        self.await_write_lease(key).await?;
        self.check_life(key).await?;
        let limit = crate::log_store::SegmentLimit {
            entries: self.config.max_segment_entries,
            bytes: self.config.max_segment_bytes,
        };
        let mut take = entries.len();
        if take > 1 && !whole {
            // The store's count may lag its appends (it counts durable
            // entries): an estimate, corrected below when refused.
            let count = self.log.info(key).await?.map_or(0, |i| i.count);
            let room = usize::try_from(limit.entries.saturating_sub(count)).unwrap_or(usize::MAX);
            take = take.min(room.max(1));
        }
        let appended = loop {
            let taken = &entries[..take];
            // Followers get the entries as soon as they are numbered,
            // while this node's own sync runs (the commit point counts
            // this copy only once it is durable).
            let to_followers = |first: u64| {
                let mark = mark.clone().map(|m| crate::transport::ProducerMark {
                    first_index: first,
                    ..m
                });
                self.replicate(key, first, taken, mark);
            };
            match self
                .log
                .append_within_then(key, taken, limit, &to_followers)
                .await
            {
                Ok(a) => {
                    // Stored, acknowledged or not: it will be read.
                    self.appends.appended(key);
                    break a;
                }
                Err(Error::SegmentSealed(_)) if take > 1 && !whole => take /= 2,
                Err(Error::SegmentSealed(k)) => {
                    self.spawn_rollover(k.clone());
                    return Err(Error::SegmentSealed(k));
                }
                Err(Error::Corrupt(_)) if self.log.health().quarantined_segments.contains(key) => {
                    // Nothing was written. The segment's count stays
                    // pending and the topic moves on: the writer waits
                    // for the new segment like after a rollover.
                    self.spawn_rollover(key.clone());
                    return Err(Error::SegmentSealed(key.clone()));
                }
                // The store stopped while the entries were on their way to
                // disk: they may be there after a restart.
                Err(Error::ShuttingDown) => {
                    return Err(Error::OutcomeUnknown(format!(
                        "node {} shut down while writing to {key}; the write may or may not be \
                         stored: read the topic to check before sending it again",
                        self.id
                    )))
                }
                Err(e @ Error::Storage(_)) => {
                    // A segment whose sync failed never takes appends
                    // again: move the topic on now rather than at the
                    // monitor's next pass.
                    if self.log.health().failed_segments.contains(key) {
                        self.spawn_rollover(key.clone());
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        };
        // Full by entries: roll now. Full by bytes is found by the next
        // append the store refuses, which rolls then (a byte limit cannot
        // say whether the next entry fits until it comes).
        if appended.count >= limit.entries {
            self.spawn_rollover(key.clone());
        }
        Ok(appended)
    }

    /// The lease check before acknowledging entries that are stored, the
    /// segment holding `count` after them. `partial`: only a prefix of the
    /// write was stored.
    pub(crate) fn acknowledge(&self, key: &SegmentKey, count: u64, partial: bool) -> Result<()> {
        if self.may_acknowledge(key, count) {
            return Ok(());
        }
        // The entry is stored and will be read, but we can no longer
        // vouch for its place among other nodes' acknowledgements. This
        // must not be `write lease expired` or `unavailable`: those mean
        // "nothing was written, retry", and a retry would store it twice.
        if partial {
            // The batch's answer covers all of it. It may hold several
            // writers' entries (pipelined, or combined on the way here),
            // so no count in it would mean anything to one client.
            return Err(Error::OutcomeUnknown(format!(
                "the write lease on {key} lapsed while a batch of entries was being \
                 written; part of it is stored and will be read: read the topic to check \
                 before sending any of this write again"
            )));
        }
        Err(Error::OutcomeUnknown(format!(
            "the write lease on {key} lapsed while the write was being stored, so it \
             was not acknowledged; it is stored and will be read: do not send it again \
             (with a producer id, sending it again is safe: it is not stored twice)"
        )))
    }

    /// The lease check before an append, giving short-lived causes a
    /// moment: a renewal in flight (a node that just started, a slow quorum
    /// round), or our metadata lagging the sender's (it routed by a newer
    /// segment than we know). Each is waited for once, for at most two
    /// renewal periods.
    pub(crate) async fn await_write_lease(&self, key: &SegmentKey) -> Result<()> {
        let patience = self.config.lease_renew * 2;
        let (mut waited_lease, mut waited_metadata) = (false, false);
        loop {
            match self.lease.check(key) {
                Err(Error::LeaseExpired) if !waited_lease => {
                    waited_lease = true;
                    self.lease.wait_valid(patience).await;
                }
                Err(Error::NotLeader) if !waited_metadata && self.metadata_behind(key) => {
                    waited_metadata = true;
                    let mut watch = self.metadata.watch();
                    let caught_up = watch.wait_for(|s| {
                        s.topic(&key.topic)
                            .is_some_and(|t| t.current().id >= key.segment)
                    });
                    let _ = tokio::time::timeout(patience, caught_up).await;
                }
                other => return other,
            }
        }
    }

    /// A replicated segment takes appends only from the life of its
    /// leader it was opened in: a leader that restarted may have lost
    /// entries its followers hold (unsynced when it stopped), and appending
    /// after its shorter copy would put other entries at their indexes.
    /// So it first records its new life (`NodeStarted`, waiting up to the
    /// request timeout), which flags the segments it led before for the
    /// consensus leader to close from their replicas; a flagged segment is
    /// answered like a sealed one, and the writer waits for the next.
    pub(crate) async fn check_life(&self, key: &SegmentKey) -> Result<()> {
        let me = self.incarnation;
        let flagged = |s: &crate::metadata::ClusterState| {
            s.topic(&key.topic)
                .and_then(|t| t.segment(key.segment))
                .filter(|seg| seg.leader == self.id && !seg.followers.is_empty())
                .map(|seg| seg.close_from_replicas)
        };
        let state = self.metadata.state();
        let Some(restarted) = flagged(&state) else {
            return Ok(());
        };
        if state.incarnations.get(&self.id) != Some(&me) {
            drop(state);
            let mut watch = self.metadata.watch();
            let recorded = watch.wait_for(|s| s.incarnations.get(&self.id) == Some(&me));
            if tokio::time::timeout(self.config.request_timeout, recorded)
                .await
                .is_err()
            {
                return Err(Error::Unavailable(format!(
                    "node {} has not yet recorded its start in the cluster metadata (it needs a                      quorum), so it cannot append to {key} yet: retry",
                    self.id
                )));
            }
            return match flagged(&self.metadata.state()) {
                Some(true) => Err(Error::SegmentSealed(key.clone())),
                _ => Ok(()),
            };
        }
        if restarted {
            return Err(Error::SegmentSealed(key.clone()));
        }
        Ok(())
    }

    /// Records this node's life in the metadata once (`NodeStarted`),
    /// retried by the monitor until it is.
    pub(crate) async fn record_life(&self) {
        if self.metadata.state().incarnations.get(&self.id) == Some(&self.incarnation) {
            return;
        }
        let cmd = crate::metadata::MetadataCmd::NodeStarted {
            node: self.id,
            incarnation: self.incarnation,
        };
        if let Err(e) = self.metadata.propose(cmd).await {
            tracing::debug!(
                node = self.id,
                "cannot record this node's start yet (retried): {e}"
            );
        }
    }

    /// True when our metadata does not know `key` yet.
    fn metadata_behind(&self, key: &SegmentKey) -> bool {
        self.metadata
            .state()
            .topic(&key.topic)
            .is_none_or(|t| t.current().id < key.segment)
    }

    /// Whether an entry that was written under a valid lease may still be
    /// acknowledged. Yes while the lease holds or the segment was sealed
    /// normally past it. Also shortly after the lease ran out: failover
    /// waits `lease + failover_margin` after it last heard from us, so until
    /// `valid_until + failover_margin / 2` (half the margin is kept for clock
    /// drift) no other node can have acknowledged a write of this topic.
    fn may_acknowledge(&self, key: &SegmentKey, count: u64) -> bool {
        match self.lease.check(key) {
            Ok(()) => true,
            Err(Error::LeaseExpired) => {
                self.sealed_past(key, count)
                    || self.lease.valid_until().is_some_and(|until| {
                        self.clock.now() < until + self.config.failover_margin / 2
                    })
            }
            Err(_) => self.sealed_past(key, count),
        }
    }

    /// True when `key` was rolled over normally with at least `count`
    /// entries: an append that finished before the seal is then safe.
    fn sealed_past(&self, key: &SegmentKey, count: u64) -> bool {
        let state = self.metadata.state();
        state
            .topic(&key.topic)
            .and_then(|t| t.segment(key.segment))
            .is_some_and(|s| matches!(s.status, SegmentStatus::Sealed { count: n } if n >= count))
    }

    /// `Ok` if `topic` exists. A topic this node does not know may have
    /// been registered elsewhere a moment ago: catch up with the quorum
    /// before saying `topic not found`.
    pub(super) async fn known_topic(&self, topic: &TopicName) -> Result<()> {
        if self.metadata.state().topic(topic).is_some() {
            return Ok(());
        }
        self.catch_up().await?;
        match self.metadata.state().topic(topic) {
            Some(_) => Ok(()),
            None => Err(Error::TopicNotFound),
        }
    }

    /// GET: the cursor lives on the consensus leader. An owner that says
    /// it is not the leader popped nothing: ask again once the view of
    /// the leader moves (bounded by the request timeout).
    async fn get(&self, topic: &TopicName) -> Result<Option<Bytes>> {
        self.known_topic(topic).await?;
        let deadline = Instant::now() + self.config.request_timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            let result = match self.metadata.status().leader {
                Some(l) if l == self.id => self.cursor_next(topic).await,
                Some(l) => self.forward_get(l, topic).await,
                None => Err(Error::Unavailable(
                    "no consensus leader to serve GET, retry".into(),
                )),
            };
            match result {
                Err(Error::NotLeader) if Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_REROUTE_PAUSE);
                }
                other => return other,
            }
        }
    }

    /// A GET on the cursor's owner. Its answer, once lost, cannot be had
    /// again: the owner may have moved the cursor past an entry nobody got.
    async fn forward_get(&self, owner: NodeId, topic: &TopicName) -> Result<Option<Bytes>> {
        let answer = self
            .transport
            .call(
                owner,
                NodeRequest::Get {
                    topic: topic.clone(),
                },
            )
            .await
            .map_err(|e| match e {
                Error::NoAnswer(why) => Error::OutcomeUnknown(format!(
                    "the GET was sent to node {owner}, which holds the cursor of {topic}: \
                     {why}; it may have taken an entry that was never delivered: GET again \
                     for the next one"
                )),
                e => e,
            })?;
        match answer {
            NodeResponse::Entry(e) => Ok(e),
            other => Err(Error::Internal(format!(
                "node {owner} answered a GET with {other:?}"
            ))),
        }
    }

    /// Reads entries `from..` of `key` from `holder` (maybe this node).
    pub(crate) async fn read_segment(
        &self,
        holder: NodeId,
        key: &SegmentKey,
        from: u64,
        max_entries: u32,
    ) -> Result<SegmentRead> {
        if holder == self.id {
            let entries = self
                .read_visible(key, from, max_entries as usize, READ_MAX_BYTES)
                .await?
                .entries;
            return Ok(SegmentRead { entries });
        }
        let request = NodeRequest::Read {
            segment: key.clone(),
            from,
            max_entries,
            max_bytes: READ_MAX_BYTES as u32,
        };
        let held = self.call_holder(holder, key, request).await?;
        Ok(SegmentRead {
            entries: held.entries,
        })
    }
}

/// After a write was refused with `err` because the metadata is about to
/// move (a rollover, a new leader): waits for the next metadata change or
/// the pause (doubled for next time), or, past `deadline`, gives the
/// error to answer (a rollover that did not come is a retryable timeout).
pub(super) async fn reroute_wait(
    watch: &mut tokio::sync::watch::Receiver<std::sync::Arc<crate::ClusterState>>,
    deadline: Instant,
    pause: &mut Duration,
    err: Error,
) -> Result<()> {
    let now = Instant::now();
    if now >= deadline {
        return Err(match err {
            Error::SegmentSealed(k) => Error::Timeout(format!("the rollover of segment {k}")),
            e => e,
        });
    }
    let until = deadline.min(now + *pause);
    if let Ok(Err(_)) = tokio::time::timeout_at(until, watch.changed()).await {
        // The store is gone; do not spin.
        tokio::time::sleep_until(until).await;
    }
    *pause = (*pause * 2).min(MAX_REROUTE_PAUSE);
    Ok(())
}
