//! PUTB: a batch stored whole, in order, or not at all; and idempotent
//! producers, whose retried writes are stored once (docs/architecture.md,
//! "Batched and idempotent produce").
//!
//! A producer's state per topic (its last sequence number and where that
//! write is) lives with the leader of the topic's open segment:
//!
//! - in memory, updated under the producer's lock right after its append;
//! - durably in the topic's producer journal, segment 0 of the topic in
//!   the node's own [`LogStore`](crate::LogStore) (real segments start at
//!   1): an *intent* record is stored before each idempotent append, an
//!   *abort* after one that certainly stored nothing. A restarted leader
//!   rebuilds the state from it, finding each producer's last write in the
//!   segment by its checksum;
//! - in metadata (`RecordProducers`) once the segment takes no more
//!   appends, before its count becomes final: the next segment's leader
//!   starts from there, and refuses producer writes (retryable) while an
//!   earlier segment's count, and so its producers, are pending.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::Node;
use crate::error::{Error, Result};
use crate::locks::MutexExt;
use crate::metadata::{CmdResult, MetadataCmd, ProducerEntry};
use crate::protocol::Response;
use crate::transport::{NodeRequest, NodeResponse, ProducerMark};
use crate::types::{NodeId, ProducerId, ProducerSeq, SegmentId, SegmentKey, TopicName};

/// Entries read at once while rebuilding producer state.
const SCAN_CHUNK: usize = 4096;

/// The producer journal of a topic on this node: segment 0, which no
/// topic ever uses for entries.
fn journal_key(topic: &TopicName) -> SegmentKey {
    SegmentKey::new(topic.clone(), 0)
}

/// One record of a producer journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum JournalRecord {
    /// Written (durably) before the append of `seq`: its `n` entries go to
    /// `segment` at index `from` or later, and hash to `hash`, the first
    /// one to `first`.
    Intent {
        producer: ProducerId,
        seq: u64,
        segment: SegmentId,
        from: u64,
        n: u64,
        first: u64,
        hash: u64,
        /// The batch is at index `from` exactly: a mark from the leader,
        /// journaled by a follower.
        #[serde(default)]
        exact: bool,
    },
    /// The append of `seq` after the last intent for it stored nothing.
    Abort { producer: ProducerId, seq: u64 },
}

impl JournalRecord {
    /// The intent for `mark`'s write to `segment`. The leader journals it
    /// before the append, at the count it saw then (the batch may land
    /// later); a follower after the leader stored it, exactly there
    /// (`exact`).
    fn intent(segment: SegmentId, mark: &ProducerMark, exact: bool) -> JournalRecord {
        JournalRecord::Intent {
            producer: mark.producer.clone(),
            seq: mark.seq,
            segment,
            from: mark.first_index,
            n: mark.n,
            first: mark.first_hash,
            hash: mark.batch_hash,
            exact,
        }
    }
}

/// What this node knows of the producers of every topic whose open
/// segment it leads (or led).
#[derive(Default)]
pub(super) struct Producers {
    topics: Mutex<HashMap<TopicName, Arc<TopicProducers>>>,
}

#[derive(Default)]
struct TopicProducers {
    /// Held shared by each idempotent append from before its store until
    /// its state is updated; exclusively to read a complete table (before
    /// recording it) or to merge one in.
    gate: tokio::sync::RwLock<()>,
    /// One rebuild at a time.
    build: tokio::sync::Mutex<()>,
    /// The journal was read into `slots`.
    built: std::sync::atomic::AtomicBool,
    /// The highest segment for which every earlier segment's producers
    /// were merged in from metadata (0: none yet).
    ready_for: AtomicU64,
    slots: Mutex<HashMap<ProducerId, Arc<tokio::sync::Mutex<Option<ProducerEntry>>>>>,
}

impl Producers {
    fn topic(&self, topic: &TopicName) -> Arc<TopicProducers> {
        self.topics
            .lock_or_recover()
            .entry(topic.clone())
            .or_default()
            .clone()
    }
}

impl TopicProducers {
    fn slots(
        &self,
    ) -> MutexGuard<'_, HashMap<ProducerId, Arc<tokio::sync::Mutex<Option<ProducerEntry>>>>> {
        self.slots.lock_or_recover()
    }

    fn slot(&self, producer: &ProducerId) -> Arc<tokio::sync::Mutex<Option<ProducerEntry>>> {
        self.slots().entry(producer.clone()).or_default().clone()
    }

    /// Merges `entry` into `producer`'s slot (the higher sequence wins).
    async fn merge(&self, producer: &ProducerId, entry: ProducerEntry) {
        let slot = self.slot(producer);
        let mut last = slot.lock().await;
        *last = Some(match *last {
            Some(old) if old.seq > entry.seq => old,
            Some(old) if old.seq == entry.seq && entry.first_index.is_none() => old,
            _ => entry,
        });
    }
}

/// FNV-1a, 64 bits: stable across builds (it is stored in the journal).
fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn entry_hash(entry: &[u8]) -> u64 {
    fnv(fnv(FNV_START, &(entry.len() as u64).to_le_bytes()), entry)
}

/// The hash of a batch from its entries' hashes.
fn batch_hash(entry_hashes: &[u64]) -> u64 {
    entry_hashes
        .iter()
        .fold(FNV_START, |h, e| fnv(h, &e.to_le_bytes()))
}

impl Node {
    /// PUTB: stores all of `entries` in the topic's current segment, in
    /// order, or none of them; with `producer`, at most once per producer
    /// and sequence. Routes like a PUT (to the segment leader, waiting
    /// through rollovers within the request timeout).
    pub(crate) async fn put_whole(
        &self,
        topic: &TopicName,
        entries: Vec<Bytes>,
        producer: Option<ProducerSeq>,
    ) -> Result<Response> {
        self.known_topic(topic).await?;
        let deadline = Instant::now() + self.config.request_timeout;
        let mut watch = self.metadata.watch();
        let mut pause = Duration::from_millis(2);
        loop {
            let (segment, leader) = {
                let state = watch.borrow_and_update();
                match state.topic(topic) {
                    Some(t) => (t.current().id, t.current().leader),
                    None => return Err(Error::TopicNotFound),
                }
            };
            let key = SegmentKey::new(topic.clone(), segment);
            let result = if leader == self.id {
                self.append_whole(&key, &entries, producer.clone()).await
            } else {
                self.forward_whole(leader, key, entries.clone(), producer.clone())
                    .await
            };
            let err = match result {
                Ok(NodeResponse::Stored {
                    segment,
                    first_index,
                    n,
                }) => {
                    let first = first_index.and_then(|i| {
                        let state = self.metadata.state();
                        Some(state.topic(topic)?.base_offset(segment)? + i)
                    });
                    return Ok(Response::Stored { n, first });
                }
                Ok(other) => {
                    return Err(Error::Internal(format!(
                        "node {leader} answered a PUTB with {other:?}"
                    )))
                }
                Err(e @ (Error::NotLeader | Error::SegmentSealed(_))) => e,
                Err(e) => return Err(e),
            };
            super::data_path::reroute_wait(&mut watch, deadline, &mut pause, err).await?;
        }
    }

    /// A PUTB sent to the segment leader, bounded by the forward timeout.
    /// Not combined with other writers' appends: the leader must take or
    /// refuse it whole.
    async fn forward_whole(
        &self,
        leader: NodeId,
        segment: SegmentKey,
        entries: Vec<Bytes>,
        producer: Option<ProducerSeq>,
    ) -> Result<NodeResponse> {
        let advice = if producer.is_some() {
            "send it again with the same producer id and sequence number: it is stored at most once"
        } else {
            "read the topic to check before sending it again"
        };
        let unknown = |why: String| {
            Error::OutcomeUnknown(format!(
                "the batch was sent to node {leader}, the leader of {segment}: {why}; it may or \
                 may not be stored: {advice}"
            ))
        };
        let call = self.transport.call(
            leader,
            NodeRequest::AppendWhole {
                segment: segment.clone(),
                entries,
                producer,
            },
        );
        match tokio::time::timeout(self.config.forward_timeout, call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(Error::NoAnswer(why))) => Err(unknown(why)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(unknown(format!(
                "no answer within {:?}",
                self.config.forward_timeout
            ))),
        }
    }

    /// A PUTB on the leader of `key`: the whole batch or nothing, and with
    /// `producer`, the sequence checked against the producer's last write.
    pub(crate) async fn append_whole(
        &self,
        key: &SegmentKey,
        entries: &[Bytes],
        producer: Option<ProducerSeq>,
    ) -> Result<NodeResponse> {
        let n = entries.len() as u64;
        let Some(ProducerSeq { producer, seq }) = producer else {
            let a = self.append_stored(key, entries, true, None).await?;
            self.await_quorum(key, a.count).await?;
            self.acknowledge(key, a.count, false)?;
            return Ok(NodeResponse::Stored {
                segment: key.segment,
                first_index: Some(a.first_index),
                n,
            });
        };
        self.await_write_lease(key).await?;
        let table = self.producers.topic(&key.topic);
        self.producers_ready(&table, key).await?;
        let _gate = table.gate.read().await;
        let slot = table.slot(&producer);
        let mut last = slot.lock().await;
        let topic = &key.topic;
        match *last {
            Some(e) if e.seq == seq => {
                if e.first_index.is_some() && e.n != n {
                    return Err(Error::BadRequest(format!(
                        "sequence {seq} of producer {producer} on {topic} was stored with {} \
                         entries, this write has {n}: a retry must send the same batch; a new \
                         batch takes sequence {}",
                        e.n,
                        seq + 1
                    )));
                }
                return Ok(NodeResponse::Stored {
                    segment: e.segment,
                    first_index: e.first_index,
                    n: if e.first_index.is_some() { e.n } else { n },
                });
            }
            Some(e) if seq < e.seq => {
                return Err(Error::BadRequest(format!(
                    "sequence {seq} of producer {producer} on {topic} is older than its last \
                     stored write, sequence {}: it was stored before; send {} next",
                    e.seq,
                    e.seq + 1
                )))
            }
            Some(e) if seq != e.seq + 1 => {
                return Err(Error::BadRequest(format!(
                    "sequence gap: producer {producer} on {topic} last stored sequence {}, \
                     this write has {seq}: send {} next (sequences go up by one per write)",
                    e.seq,
                    e.seq + 1
                )))
            }
            None if seq != 0 => {
                return Err(Error::BadRequest(format!(
                    "sequence gap: producer {producer} has stored nothing on {topic}, so its \
                     first write has sequence 0, not {seq}"
                )))
            }
            _ => {}
        }
        // The intent is durable before the entries: a leader that dies
        // between storing them and remembering it finds them again.
        let hashes: Vec<u64> = entries.iter().map(|e| entry_hash(e)).collect();
        let from = self.log.info(key).await?.map_or(0, |i| i.count);
        let mark = ProducerMark {
            producer: producer.clone(),
            seq,
            n,
            // Set by the append, once known.
            first_index: from,
            first_hash: hashes[0],
            batch_hash: batch_hash(&hashes),
        };
        self.journal(topic, &[JournalRecord::intent(key.segment, &mark, false)])
            .await?;
        match self.append_stored(key, entries, true, Some(mark)).await {
            Ok(a) => {
                *last = Some(ProducerEntry {
                    seq,
                    n,
                    segment: key.segment,
                    first_index: Some(a.first_index),
                });
                self.await_quorum(key, a.count).await?;
                self.acknowledge(key, a.count, false)?;
                Ok(NodeResponse::Stored {
                    segment: key.segment,
                    first_index: Some(a.first_index),
                    n,
                })
            }
            Err(e) => {
                if e.is_retryable() || matches!(e, Error::Storage(_) | Error::Corrupt(_)) {
                    // Nothing was stored (the store's all or nothing):
                    // the intent must not be taken for a stored write.
                    if let Err(why) = self
                        .journal(topic, &[JournalRecord::Abort { producer, seq }])
                        .await
                    {
                        tracing::warn!(
                            node = self.id,
                            "cannot journal the abort of a write to {key}: {why}"
                        );
                    }
                }
                Err(e)
            }
        }
    }

    /// Appends `records` to the topic's journal (durably, as one append).
    async fn journal(&self, topic: &TopicName, records: &[JournalRecord]) -> Result<()> {
        let bytes = records
            .iter()
            .map(|r| serde_json::to_vec(r).map(Bytes::from))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(Error::internal)?;
        self.log
            .append(&journal_key(topic), &bytes, u64::MAX)
            .await
            .map(|_| ())
    }

    /// A follower of `key` journals the idempotent writes its leader
    /// marked, before it stores their entries.
    pub(crate) async fn journal_marks(
        &self,
        key: &SegmentKey,
        marks: &[ProducerMark],
    ) -> Result<()> {
        let records: Vec<JournalRecord> = marks
            .iter()
            .map(|m| JournalRecord::intent(key.segment, m, true))
            .collect();
        self.journal(&key.topic, &records).await
    }

    /// Each producer's last write this node's copy of `key` holds,
    /// according to the intents journaled for `key` (its own as the
    /// leader, or marks from the leader as a follower). Only writes found
    /// in the copy count: what the failover records for a segment it
    /// closed from its replicas, whose copies are sealed at its count.
    pub(crate) async fn segment_producers(
        &self,
        key: &SegmentKey,
    ) -> Result<Vec<(ProducerId, ProducerEntry)>> {
        let intents = self
            .scan_journal(&key.topic, |segment| segment == key.segment)
            .await?;
        let mut found = Vec::new();
        for (producer, list) in intents {
            if let Some(entry) = self.find_last_write(&key.topic, &list).await? {
                found.push((producer, entry));
            }
        }
        Ok(found)
    }

    /// Makes the table of `key`'s topic complete for writes to `key`: the
    /// journal read (once) and every earlier segment's recorded producers
    /// merged in. While an earlier segment's count is pending, its
    /// producers are unknown: a retryable `unavailable`.
    async fn producers_ready(&self, table: &TopicProducers, key: &SegmentKey) -> Result<()> {
        if table.ready_for.load(Ordering::Acquire) >= key.segment {
            return Ok(());
        }
        let _build = table.build.lock().await;
        if table.ready_for.load(Ordering::Acquire) >= key.segment {
            return Ok(());
        }
        let state = self.metadata.state();
        let t = state.topic(&key.topic).ok_or(Error::TopicNotFound)?;
        if t.base_offset(key.segment).is_none() {
            let pending = t
                .segments
                .iter()
                .find(|s| s.id < key.segment && s.status.final_count().is_none());
            let (segment, node) = pending.map_or((0, 0), |s| (s.id, s.leader));
            return Err(Error::Unavailable(format!(
                "the producers of {} are not known yet: segment {segment} is on node {node}, \
                 whose count is pending (the node is down or its file damaged); a write with \
                 a producer id waits until node {node} is back, one without goes on: retry later",
                key.topic
            )));
        }
        let _gate = table.gate.write().await;
        self.load_journal(table, &key.topic).await?;
        for (producer, entry) in &t.producers {
            table.merge(producer, *entry).await;
        }
        table.ready_for.store(key.segment, Ordering::Release);
        Ok(())
    }

    /// Reads the topic's journal into the table, once per node life. The
    /// caller holds the build lock and the gate.
    ///
    /// Only intents for segments whose count is not final yet are read:
    /// the producers of a segment are recorded in metadata before its
    /// count becomes final (by its leader, or by the failover that closed
    /// it from its replicas), and the metadata, not a copy here that may
    /// hold a tail the segment was cut short of, is what counts for it.
    async fn load_journal(&self, table: &TopicProducers, topic: &TopicName) -> Result<()> {
        if table.built.load(Ordering::Acquire) {
            return Ok(());
        }
        let state = self.metadata.state();
        let t = state.topic(topic).ok_or(Error::TopicNotFound)?;
        let unsettled = |segment| {
            t.segment(segment)
                .is_some_and(|s| s.status.final_count().is_none())
        };
        let intents = self.scan_journal(topic, unsettled).await?;
        for (producer, list) in intents {
            if let Some(entry) = self.resolve(topic, &list).await? {
                table.merge(&producer, entry).await;
            }
        }
        table.built.store(true, Ordering::Release);
        Ok(())
    }

    /// Per producer, its last few intents not aborted for segments
    /// `wanted` accepts, oldest first, from the topic's journal.
    async fn scan_journal(
        &self,
        topic: &TopicName,
        wanted: impl Fn(SegmentId) -> bool,
    ) -> Result<HashMap<ProducerId, Vec<JournalRecord>>> {
        let journal = journal_key(topic);
        let mut intents: HashMap<ProducerId, Vec<JournalRecord>> = HashMap::new();
        let mut from = 0;
        loop {
            let batch = self.log.read(&journal, from, SCAN_CHUNK, 1 << 20).await?;
            if batch.is_empty() {
                break;
            }
            from += batch.len() as u64;
            for raw in batch {
                let record: JournalRecord = serde_json::from_slice(&raw).map_err(|e| {
                    Error::Corrupt(format!(
                        "producer journal of {topic} on node {}: entry {}: {e}",
                        self.id,
                        from - 1
                    ))
                })?;
                match &record {
                    JournalRecord::Intent {
                        producer,
                        seq,
                        segment,
                        ..
                    } if wanted(*segment) => {
                        let list = intents.entry(producer.clone()).or_default();
                        // A mark sent again (its `Replicate` was retried)
                        // replaces the one before it.
                        if matches!(list.last(), Some(JournalRecord::Intent { seq: s, .. }) if s == seq)
                        {
                            list.pop();
                        }
                        list.push(record.clone());
                        if list.len() > 4 {
                            list.remove(0);
                        }
                    }
                    JournalRecord::Intent { .. } => {}
                    JournalRecord::Abort { producer, seq } => {
                        if let Some(list) = intents.get_mut(producer) {
                            if matches!(list.last(), Some(JournalRecord::Intent { seq: s, .. }) if s == seq)
                            {
                                list.pop();
                            }
                        }
                    }
                }
            }
        }
        Ok(intents)
    }

    /// The last stored write among a producer's last intents (oldest
    /// first). The newest intent whose batch is in its segment is stored;
    /// when the newest is not found, its append stored nothing, so the
    /// write before it (sequence one less) is the last stored one.
    async fn resolve(
        &self,
        topic: &TopicName,
        intents: &[JournalRecord],
    ) -> Result<Option<ProducerEntry>> {
        let Some(JournalRecord::Intent {
            seq: newest,
            segment: newest_segment,
            ..
        }) = intents.last()
        else {
            return Ok(None);
        };
        // Only the newest two: a write is tried after the one before it
        // was stored, so the newest not found means the one before it is
        // the last.
        let recent = intents
            .iter()
            .filter(|r| matches!(r, JournalRecord::Intent { seq, .. } if seq + 1 >= *newest))
            .cloned()
            .collect::<Vec<_>>();
        if let Some(found) = self.find_last_write(topic, &recent).await? {
            return Ok(Some(found));
        }
        Ok(newest.checked_sub(1).map(|seq| ProducerEntry {
            seq,
            n: 0,
            segment: *newest_segment,
            first_index: None,
        }))
    }

    /// The newest of `intents` (oldest first) whose batch is found in its
    /// segment on this node.
    async fn find_last_write(
        &self,
        topic: &TopicName,
        intents: &[JournalRecord],
    ) -> Result<Option<ProducerEntry>> {
        for record in intents.iter().rev() {
            let JournalRecord::Intent {
                seq,
                segment,
                from,
                n,
                first,
                hash,
                exact,
                ..
            } = record
            else {
                continue;
            };
            let key = SegmentKey::new(topic.clone(), *segment);
            let found = if *exact {
                self.batch_at(&key, *from, *n, *hash).await?
            } else {
                self.find_batch(&key, *from, *n, *first, *hash).await?
            };
            if let Some(index) = found {
                return Ok(Some(ProducerEntry {
                    seq: *seq,
                    n: *n,
                    segment: *segment,
                    first_index: Some(index),
                }));
            }
        }
        Ok(None)
    }

    /// `Some(at)` when the `n` entries of `key` from `at` hash to `hash`.
    async fn batch_at(&self, key: &SegmentKey, at: u64, n: u64, hash: u64) -> Result<Option<u64>> {
        let want = usize::try_from(n).unwrap_or(usize::MAX);
        let mut hashes = Vec::with_capacity(want.min(SCAN_CHUNK));
        while hashes.len() < want {
            let batch = self
                .log
                .read(key, at + hashes.len() as u64, want - hashes.len(), 1 << 20)
                .await?;
            if batch.is_empty() {
                return Ok(None);
            }
            hashes.extend(batch.iter().map(|e| entry_hash(e)));
        }
        Ok((batch_hash(&hashes) == hash).then_some(at))
    }

    /// The index at or after `from` in `key` where `n` consecutive entries
    /// hash to `hash`, if any.
    async fn find_batch(
        &self,
        key: &SegmentKey,
        from: u64,
        n: u64,
        first: u64,
        hash: u64,
    ) -> Result<Option<u64>> {
        let n = n as usize;
        let mut hashes: Vec<u64> = Vec::new();
        let mut next = from;
        let mut checked = 0;
        loop {
            let batch = self.log.read(key, next, SCAN_CHUNK, 1 << 20).await?;
            let done = batch.is_empty();
            next += batch.len() as u64;
            hashes.extend(batch.iter().map(|e| entry_hash(e)));
            while checked + n <= hashes.len() {
                if hashes[checked] == first && batch_hash(&hashes[checked..checked + n]) == hash {
                    return Ok(Some(from + checked as u64));
                }
                checked += 1;
            }
            if done {
                return Ok(None);
            }
        }
    }

    /// Records in metadata the last write of each producer that wrote to
    /// `key`, which takes no more appends (sealed, or left pending by its
    /// own leader): before the command that makes its count final, so the
    /// next segment's leader knows them.
    pub(crate) async fn record_producers(&self, key: &SegmentKey) -> Result<()> {
        let table = self.producers.topic(&key.topic);
        let producers = {
            let _build = table.build.lock().await;
            // Appends in flight finish and update their producer first.
            let _gate = table.gate.write().await;
            self.load_journal(&table, &key.topic).await?;
            let slots: Vec<_> = table
                .slots()
                .iter()
                .map(|(p, s)| (p.clone(), s.clone()))
                .collect();
            let mut producers = Vec::new();
            for (producer, slot) in slots {
                if let Some(entry) = *slot.lock().await {
                    if entry.segment == key.segment {
                        producers.push((producer, entry));
                    }
                }
            }
            producers
        };
        self.propose_producers(key, producers).await
    }

    /// Commits `RecordProducers` for `key` (nothing to do for none).
    pub(crate) async fn propose_producers(
        &self,
        key: &SegmentKey,
        producers: Vec<(ProducerId, ProducerEntry)>,
    ) -> Result<()> {
        if producers.is_empty() {
            return Ok(());
        }
        match self
            .metadata
            .propose(MetadataCmd::RecordProducers {
                topic: key.topic.clone(),
                segment: key.segment,
                producers,
            })
            .await?
        {
            CmdResult::Rejected(why) => Err(Error::Internal(format!(
                "recording the producers of {key}: {why}"
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_the_same_entries_should_hash_alike_and_split_points_should_matter() {
        let a = [entry_hash(b"ab"), entry_hash(b"c")];
        let b = [entry_hash(b"a"), entry_hash(b"bc")];
        assert_eq!(
            batch_hash(&a),
            batch_hash(&[entry_hash(b"ab"), entry_hash(b"c")])
        );
        assert_ne!(batch_hash(&a), batch_hash(&b));
        // Stored in journals: the value must never change between builds.
        assert_eq!(entry_hash(b""), 0xa8c7_f832_281a_39c5);
    }
}
