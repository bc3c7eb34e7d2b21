//! Failover: the consensus leader gives the open segments of a node it has
//! not heard from for `lease + margin` to a live node; the old segment's
//! count becomes pending until its leader comes back and reports it.
//!
//! Deciding a failover and committing its `Roll` are two steps, with a ping
//! and a consensus round between them. A renewal from the failed node
//! confirmed in that window would be confirmed at a metadata version
//! without the `Roll`, and give that node a fresh lease on a segment that
//! is about to be taken from it: it would go on acknowledging into the old
//! segment while the new one takes writes. So the decision *fences* the
//! node, atomically with the liveness check, and the consensus leader
//! refuses the renewals of a fenced node until none of its segments is
//! current any more (then every later confirmation includes the `Roll`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::locks::MutexExt;
use crate::metadata::MetadataCmd;
use crate::types::NodeId;

#[derive(Default)]
pub(crate) struct Failover {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The consensus term we lead in, if we lead.
    term: Option<u64>,
    /// When we noticed we lead `term`: every node counts as heard then.
    since: Option<Instant>,
    last_heard: HashMap<NodeId, Instant>,
    /// The previous pass of the failover loop.
    last_tick: Option<Instant>,
    /// Nodes whose segments we decided to give away: their renewals are
    /// refused until they lead no current segment.
    fenced: HashSet<NodeId>,
}

impl Failover {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock_or_recover()
    }

    /// Starts a fresh liveness record when our leadership term changes.
    /// Forgetting older `last_heard` is safe: `since` is later than all of them.
    pub(crate) fn observe_term(&self, term: Option<u64>, now: Instant) {
        let mut inner = self.lock();
        if inner.term != term {
            inner.term = term;
            inner.since = term.map(|_| now);
            inner.last_heard.clear();
            // A `Roll` proposed in an older term either is in the new
            // leader's log, and commits before its first confirmation, or
            // never commits: fences do not outlive the term.
            inner.fenced.clear();
        }
    }

    /// Notes a pass of the failover loop at `now`. When the previous pass
    /// was more than `max_gap` ago, this node was not watching (suspended,
    /// or starved of CPU): on a clock that counts suspend, every node then
    /// looks silent, but silence we could not have heard says nothing about
    /// them, so liveness is counted afresh from now. Counting from later
    /// only delays a failover, which is always safe.
    pub(crate) fn tick(&self, now: Instant, max_gap: Duration) {
        let mut inner = self.lock();
        let Some(previous) = inner.last_tick.replace(now) else {
            return;
        };
        if inner.since.is_some() && now.saturating_duration_since(previous) > max_gap {
            inner.since = Some(now);
            inner.last_heard.clear();
        }
    }

    pub(crate) fn heard(&self, node: NodeId, at: Instant) {
        Self::record(&mut self.lock(), node, at);
    }

    fn record(inner: &mut Inner, node: NodeId, at: Instant) {
        let e = inner.last_heard.entry(node).or_insert(at);
        if *e < at {
            *e = at;
        }
    }

    /// Records a renewal of `node` heard at `at`, unless a failover of
    /// `node` is under way: then the renewal must be refused (false).
    pub(crate) fn heard_unless_fenced(&self, node: NodeId, at: Instant) -> bool {
        let mut inner = self.lock();
        if inner.fenced.contains(&node) {
            return false;
        }
        Self::record(&mut inner, node, at);
        true
    }

    /// The decision to fail `node` over: true, and `node` fenced, if it is
    /// still silent; false if a renewal was heard since the caller looked.
    pub(crate) fn fence_if_silent(&self, node: NodeId, now: Instant, threshold: Duration) -> bool {
        let mut inner = self.lock();
        if Self::live(&inner, node, now, threshold) {
            return false;
        }
        inner.fenced.insert(node);
        true
    }

    /// Lifts the fence of every node for which `leads` is false: once no
    /// current segment is led by a node, a renewal of it can no longer
    /// extend a lease on a segment that failed over.
    pub(crate) fn unfence_unless(&self, leads: impl Fn(NodeId) -> bool) {
        self.lock().fenced.retain(|n| leads(*n));
    }

    /// Heard from `node` less than `threshold` ago (or only just became
    /// leader). Without leadership we know nothing: everyone counts as live.
    pub(crate) fn is_live(&self, node: NodeId, now: Instant, threshold: Duration) -> bool {
        Self::live(&self.lock(), node, now, threshold)
    }

    fn live(inner: &Inner, node: NodeId, now: Instant, threshold: Duration) -> bool {
        let Some(since) = inner.since else {
            return true;
        };
        let heard = inner
            .last_heard
            .get(&node)
            .copied()
            .unwrap_or(since)
            .max(since);
        now.saturating_duration_since(heard) < threshold
    }
}

impl super::Node {
    pub(crate) fn failover_threshold(&self) -> Duration {
        self.config.lease + self.config.failover_margin
    }

    /// One pass of the failover loop (on the consensus leader only).
    pub(crate) async fn failover_tick(&self) {
        let status = self.metadata.status();
        let now = self.clock.now();
        if !status.is_leader() {
            self.failover.observe_term(None, now);
            self.failover.tick(now, self.config.lease);
            return;
        }
        self.failover.observe_term(Some(status.term), now);
        self.failover.tick(now, self.config.lease);
        let threshold = self.failover_threshold();
        let state = self.metadata.state();
        let leaders: HashSet<NodeId> = state.topics.values().map(|t| t.current().leader).collect();
        self.failover.unfence_unless(|n| leaders.contains(&n));
        let mut chosen: HashMap<(NodeId, u32), MetadataCmd> = HashMap::new();
        let mut due = Vec::new();
        for (topic, t) in &state.topics {
            let current = t.current();
            // Flagged (its leader restarted, or sealed it without a
            // majority): close it now, its leader live or not.
            let restarted = current.close_from_replicas;
            if !restarted
                && (current.leader == self.id
                    || self.failover.is_live(current.leader, now, threshold))
            {
                continue;
            }
            let key = crate::types::SegmentKey::new(topic.clone(), current.id);
            // One choice per silent node and factor per pass: each choice
            // may ping.
            let cmd = match chosen.get(&(current.leader, t.rf)) {
                Some(choice) => retarget(choice, &key),
                None => {
                    let cmd = self.roll_cmd(&key, None, t.rf).await;
                    chosen.insert((current.leader, t.rf), cmd.clone());
                    cmd
                }
            };
            let next = match &cmd {
                MetadataCmd::Roll { next_leader, .. } => *next_leader,
                MetadataCmd::RollReplicated { replicas, .. } => replicas[0],
                _ => unreachable!("roll_cmd makes rolls"),
            };
            if next == current.leader {
                continue;
            }
            // Checked again, atomically with renewals: one may have been
            // heard while we pinged; none is confirmed from now on. (The
            // leader of a flagged segment is not fenced: it appends to
            // none of them, and may lead the next one.)
            if !restarted
                && !self
                    .failover
                    .fence_if_silent(current.leader, self.clock.now(), threshold)
            {
                continue;
            }
            due.push((key, current, cmd, next));
        }
        // Each segment's replicas are asked at once: a failover of many
        // topics takes one round of answers, not one per topic.
        let failovers = due
            .into_iter()
            .map(|(key, current, mut cmd, next)| async move {
                if !current.followers.is_empty() {
                    // Replicated: its count is known from a majority of its
                    // replicas, if they answer.
                    match self.close_from_replicas(&key, current).await {
                        super::closing::Closing::Sealed(count) => set_count(&mut cmd, count),
                        // Pending; sealed from the replicas once a majority
                        // answers (`seal_pending_from_replicas`).
                        super::closing::Closing::NoQuorum => tracing::warn!(
                            node = self.id,
                            "fewer than {} of the replicas of {key} answered: its count \
                             stays pending until a majority of them does",
                            current.quorum()
                        ),
                        super::closing::Closing::Retry => return,
                    }
                }
                let why = if current.close_from_replicas {
                    "restarted, or sealed it without a majority".to_string()
                } else {
                    format!("silent for over {threshold:?}")
                };
                let how = match roll_count(&cmd) {
                    Some(n) => format!("at {n} entries, from its replicas"),
                    None => "its count pending".to_string(),
                };
                tracing::info!(
                    node = self.id,
                    "segment {key} leader {} {why}; closing it ({how}) and opening segment {} \
                     on node {next}",
                    current.leader,
                    current.id + 1
                );
                if let Err(e) = self.metadata.propose(cmd).await {
                    tracing::warn!(node = self.id, "failover of {key} failed: {e}");
                }
            });
        futures::future::join_all(failovers).await;
        self.seal_pending_from_replicas(&state).await;
    }

    /// Pending replicated segments (closed while fewer than a majority of
    /// their replicas answered): closed now if a majority answers, so that
    /// readers need not wait for a leader that may never come back. The
    /// count is found as for any failover from the replicas
    /// (`close_from_replicas`), producers included. Their leader does not
    /// report it alone (`report_pending`): its copy may be short.
    async fn seal_pending_from_replicas(&self, state: &crate::metadata::ClusterState) {
        let pending = state.topics.iter().flat_map(|(topic, t)| {
            t.segments
                .iter()
                .skip(t.deleted_through as usize)
                .filter(|s| {
                    s.status == crate::metadata::SegmentStatus::Pending && !s.followers.is_empty()
                })
                .map(move |s| (topic, s))
        });
        let closing = pending.map(|(topic, seg)| async move {
            let key = crate::types::SegmentKey::new(topic.clone(), seg.id);
            let super::closing::Closing::Sealed(count) = self.close_from_replicas(&key, seg).await
            else {
                return;
            };
            let cmd = MetadataCmd::SealPending {
                topic: topic.clone(),
                segment: seg.id,
                count,
            };
            match self.metadata.propose(cmd).await {
                Ok(crate::metadata::CmdResult::Applied) => tracing::info!(
                    node = self.id,
                    "pending segment {key} closed at {count} entries from a majority of \
                     its replicas"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(node = self.id, "cannot seal pending {key}: {e}"),
            }
        });
        futures::future::join_all(closing).await;
    }
}

/// Sets the count a roll closes its segment at.
fn set_count(cmd: &mut MetadataCmd, n: u64) {
    if let MetadataCmd::Roll { count, .. } | MetadataCmd::RollReplicated { count, .. } = cmd {
        *count = Some(n);
    }
}

/// The count a roll closes its segment at (`None`: pending).
fn roll_count(cmd: &MetadataCmd) -> Option<u64> {
    match cmd {
        MetadataCmd::Roll { count, .. } | MetadataCmd::RollReplicated { count, .. } => *count,
        _ => None,
    }
}

/// `choice` (a pending roll made for another segment of the same silent
/// leader) applied to `key`.
fn retarget(choice: &MetadataCmd, key: &crate::types::SegmentKey) -> MetadataCmd {
    match choice.clone() {
        MetadataCmd::Roll {
            count, next_leader, ..
        } => MetadataCmd::Roll {
            topic: key.topic.clone(),
            segment: key.segment,
            count,
            next_leader,
        },
        MetadataCmd::RollReplicated {
            count, replicas, ..
        } => MetadataCmd::RollReplicated {
            topic: key.topic.clone(),
            segment: key.segment,
            count,
            replicas,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THRESHOLD: Duration = Duration::from_millis(1500);

    #[tokio::test(start_paused = true)]
    async fn given_new_leadership_when_nobody_was_heard_should_wait_the_threshold_from_then() {
        let f = Failover::default();
        let t0 = Instant::now();
        assert!(
            f.is_live(2, t0 + THRESHOLD * 10, THRESHOLD),
            "not leader: no opinion"
        );
        f.observe_term(Some(3), t0);
        assert!(f.is_live(2, t0 + THRESHOLD - Duration::from_millis(1), THRESHOLD));
        assert!(!f.is_live(2, t0 + THRESHOLD, THRESHOLD));
    }

    #[tokio::test(start_paused = true)]
    async fn given_a_renewal_heard_when_time_passes_should_count_from_the_last_one() {
        let f = Failover::default();
        let t0 = Instant::now();
        f.observe_term(Some(1), t0);
        f.heard(2, t0 + Duration::from_secs(1));
        f.heard(2, t0 + Duration::from_millis(500));
        assert!(f.is_live(2, t0 + Duration::from_millis(2400), THRESHOLD));
        assert!(!f.is_live(2, t0 + Duration::from_millis(2500), THRESHOLD));
    }

    #[tokio::test(start_paused = true)]
    async fn given_a_gap_in_the_leaders_own_watch_should_count_silence_only_from_its_return() {
        let f = Failover::default();
        let t0 = Instant::now();
        let tick = Duration::from_millis(100);
        f.observe_term(Some(1), t0);
        f.tick(t0, Duration::from_secs(1));
        f.heard(2, t0);
        // The leader was suspended for 10 s: on its clock, which counts
        // suspend, node 2 was last heard 10 s ago, but nobody could reach
        // a sleeping leader.
        let resumed = t0 + Duration::from_secs(10);
        f.tick(resumed, Duration::from_secs(1));
        assert!(
            f.is_live(2, resumed + tick, THRESHOLD),
            "no failover for silence the leader slept through"
        );
        assert!(!f.is_live(2, resumed + THRESHOLD, THRESHOLD));
        // Regular passes change nothing.
        let f = Failover::default();
        f.observe_term(Some(1), t0);
        f.heard(2, t0);
        for i in 0..=20 {
            f.tick(t0 + tick * i, Duration::from_secs(1));
        }
        assert!(!f.is_live(2, t0 + tick * 20, THRESHOLD));
    }

    #[tokio::test(start_paused = true)]
    async fn given_a_failover_decided_when_the_node_renews_should_refuse_until_it_leads_nothing() {
        let f = Failover::default();
        let t0 = Instant::now();
        f.observe_term(Some(1), t0);
        f.heard(2, t0);
        let later = t0 + THRESHOLD;
        assert!(
            !f.fence_if_silent(2, later - Duration::from_millis(1), THRESHOLD),
            "heard in time: no failover"
        );
        assert!(f.fence_if_silent(2, later, THRESHOLD));
        assert!(!f.heard_unless_fenced(2, later), "renewal while fenced");
        assert!(
            !f.is_live(2, later, THRESHOLD),
            "a refused renewal is not heard"
        );
        f.unfence_unless(|n| n == 2);
        assert!(
            !f.heard_unless_fenced(2, later),
            "node 2 still leads a segment"
        );
        f.unfence_unless(|_| false);
        assert!(f.heard_unless_fenced(2, later));
        assert!(f.is_live(2, later, THRESHOLD));
        // A new term lifts every fence.
        assert!(f.fence_if_silent(3, later, THRESHOLD));
        f.observe_term(Some(2), later);
        assert!(f.heard_unless_fenced(3, later));
    }

    #[tokio::test(start_paused = true)]
    async fn given_a_new_term_should_forget_what_was_heard_and_restart_the_clock() {
        let f = Failover::default();
        let t0 = Instant::now();
        f.observe_term(Some(1), t0);
        f.heard(2, t0);
        let t1 = t0 + Duration::from_secs(5);
        f.observe_term(Some(2), t1);
        assert!(f.is_live(2, t1 + Duration::from_secs(1), THRESHOLD));
        assert!(!f.is_live(2, t1 + THRESHOLD, THRESHOLD));
    }
}
