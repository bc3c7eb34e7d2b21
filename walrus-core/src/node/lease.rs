//! [`QuorumLease`]: the write lease of one node, derived from metadata it
//! has recently confirmed with the quorum.
//!
//! A renewal that started at `t0` and succeeded proves that this node's
//! applied metadata includes every command committed before `t0`; the
//! lease is then valid until `t0 + lease`. The consensus leader waits
//! `lease + margin` after it last heard from a node before it gives that
//! node's topics away, so the old and the new writer never overlap.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::lease::LeaseProvider;
use crate::locks::MutexExt;
use crate::metadata::SegmentStatus;
use crate::metadata_store::MetadataStore;
use crate::types::{NodeId, SegmentKey};

/// Core's [`LeaseProvider`]: valid until `t0 + lease` after the node's
/// last successful quorum renewal that started at `t0`.
pub struct QuorumLease {
    node: NodeId,
    metadata: Arc<dyn MetadataStore>,
    clock: Arc<dyn Clock>,
    lease: Duration,
    /// The end of the lease.
    valid_until: std::sync::Mutex<Option<Instant>>,
    /// Wakes writers waiting for a renewal, in the order they came. Not a
    /// `watch`: tokio's watch wakes its waiters in a random order (it puts
    /// each in one of 8 queues at random), which a seeded simulation could
    /// not replay.
    renewals: tokio::sync::Notify,
}

impl QuorumLease {
    pub fn new(
        node: NodeId,
        metadata: Arc<dyn MetadataStore>,
        clock: Arc<dyn Clock>,
        lease: Duration,
    ) -> Self {
        QuorumLease {
            node,
            metadata,
            clock,
            lease,
            valid_until: std::sync::Mutex::new(None),
            renewals: tokio::sync::Notify::new(),
        }
    }

    fn until(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.valid_until.lock_or_recover()
    }
}

#[async_trait]
impl LeaseProvider for QuorumLease {
    fn check(&self, segment: &SegmentKey) -> Result<()> {
        let state = self.metadata.state();
        let Some(topic) = state.topic(&segment.topic) else {
            // Not a leader as far as we know (our metadata may lag).
            return Err(Error::NotLeader);
        };
        let current = topic.current();
        if current.id != segment.segment
            || current.leader != self.node
            || current.status != SegmentStatus::Open
        {
            return Err(Error::NotLeader);
        }
        if !self.is_valid() {
            return Err(Error::LeaseExpired);
        }
        Ok(())
    }

    /// Records a successful renewal that started at `t0`.
    fn renewed(&self, t0: Instant) {
        let until = t0 + self.lease;
        let later = {
            let mut v = self.until();
            let later = v.is_none_or(|old| old < until);
            if later {
                *v = Some(until);
            }
            later
        };
        if later {
            self.renewals.notify_waiters();
        }
    }

    fn is_valid(&self) -> bool {
        self.until().is_some_and(|until| self.clock.now() < until)
    }

    fn valid_until(&self) -> Option<Instant> {
        *self.until()
    }

    async fn wait_valid(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            // Registered before the check, so a renewal in between wakes it.
            let renewal = self.renewals.notified();
            tokio::pin!(renewal);
            renewal.as_mut().enable();
            if self.is_valid() {
                return true;
            }
            if tokio::time::timeout_at(deadline, renewal).await.is_err() {
                return self.is_valid();
            }
        }
    }
}

impl super::Node {
    /// One lease renewal: confirm with the quorum (directly on the
    /// consensus leader, through it elsewhere), wait until the local state
    /// has caught up with the confirmed version, then extend the lease from
    /// the renewal's start. Afterwards, report any of our segments whose
    /// count went pending while we were away.
    pub(crate) async fn renew_lease(&self) {
        let t0 = self.clock.now();
        let attempt = tokio::time::timeout(self.config.lease, async {
            let version = self.confirm_through_leader(t0).await?;
            self.wait_for_version(version).await;
            Ok::<(), Error>(())
        })
        .await;
        match attempt {
            Ok(Ok(())) => {
                self.lease.renewed(t0);
                self.report_pending().await;
            }
            Ok(Err(e)) => tracing::debug!(node = self.id, "lease renewal failed: {e}"),
            Err(_) => tracing::debug!(node = self.id, "lease renewal timed out"),
        }
    }

    /// A read barrier: waits until this node's metadata holds every command
    /// committed before the call (e.g. a topic just registered elsewhere).
    pub(crate) async fn catch_up(&self) -> Result<()> {
        let t0 = self.clock.now();
        tokio::time::timeout(self.config.request_timeout, async {
            let version = self.confirm_through_leader(t0).await?;
            self.wait_for_version(version).await;
            Ok(())
        })
        .await
        .map_err(|_| Error::Timeout("the metadata to catch up with the quorum".into()))?
    }

    async fn confirm_through_leader(&self, t0: Instant) -> Result<u64> {
        let status = self.metadata.status();
        if status.is_leader() {
            self.failover.observe_term(Some(status.term), t0);
            let version = self.metadata.confirm().await?;
            self.failover.heard(self.id, t0);
            return Ok(version);
        }
        let leader = status.leader.ok_or_else(|| {
            Error::Unavailable("no consensus leader to renew the write lease with, retry".into())
        })?;
        let answer = self
            .transport
            .call(leader, crate::NodeRequest::RenewLease { node: self.id })
            .await
            // A renewal changes nothing a retry could double: a lost
            // answer only means "not confirmed".
            .map_err(|e| match e {
                Error::NoAnswer(why) => Error::Unavailable(format!(
                    "confirming with the consensus leader, node {leader}: {why}, retry"
                )),
                e => e,
            })?;
        match answer {
            crate::NodeResponse::Lease { version } => Ok(version),
            other => Err(Error::Internal(format!(
                "node {leader} answered a lease renewal with {other:?}"
            ))),
        }
    }

    /// Waits until this node's applied metadata has reached `version`.
    pub(crate) async fn wait_for_version(&self, version: u64) {
        let mut watch = self.metadata.watch();
        // An Err means the store is gone (shutdown): nothing to wait for.
        let _ = watch.wait_for(|s| s.version >= version).await;
    }

    /// The consensus leader's side of a renewal: confirm with the quorum,
    /// then remember when we heard from `node` (the failover clock).
    pub(crate) async fn on_renew_lease(&self, node: NodeId) -> Result<crate::NodeResponse> {
        let heard_at = self.clock.now();
        let status = self.metadata.status();
        if !status.is_leader() {
            return Err(Error::NotLeader);
        }
        self.failover.observe_term(Some(status.term), heard_at);
        let version = self.metadata.confirm().await?;
        // Confirmed at `version`; if a failover of `node` was decided
        // meanwhile, its `Roll` may not be in `version` yet: refuse.
        if !self.failover.heard_unless_fenced(node, heard_at) {
            return Err(Error::Unavailable(format!(
                "node {node}'s segments are failing over to other nodes after {:?} without a renewal; it gets a lease again once they moved, retry",
                self.failover_threshold()
            )));
        }
        Ok(crate::NodeResponse::Lease { version })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::metadata::MetadataCmd;
    use crate::testing::{sim_info, FakeMetadataCluster};
    use crate::types::TopicName;

    async fn setup() -> (FakeMetadataCluster, QuorumLease, SegmentKey) {
        let cluster = FakeMetadataCluster::new();
        let store = cluster.join(1, sim_info(1));
        cluster.join(2, sim_info(2));
        let topic = TopicName::new("t").unwrap();
        store
            .propose(MetadataCmd::CreateTopic {
                topic: topic.clone(),
                leader: 1,
            })
            .await
            .unwrap();
        let lease = QuorumLease::new(1, store, Arc::new(SystemClock), Duration::from_secs(1));
        (cluster, lease, SegmentKey::new(topic, 1))
    }

    #[tokio::test(start_paused = true)]
    async fn given_a_renewal_when_the_lease_time_passes_should_expire() {
        let (_c, lease, key) = setup().await;
        assert_eq!(lease.check(&key), Err(Error::LeaseExpired), "never renewed");
        lease.renewed(Instant::now());
        assert_eq!(lease.check(&key), Ok(()));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(lease.check(&key), Ok(()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(lease.check(&key), Err(Error::LeaseExpired));
    }

    #[tokio::test]
    async fn given_a_manual_clock_when_moved_past_the_lease_should_expire_exactly_then() {
        let (c, _, key) = setup().await;
        let clock = Arc::new(crate::testing::ManualClock::new());
        let lease = QuorumLease::new(1, c.store(1), clock.clone(), Duration::from_secs(1));
        lease.renewed(clock.now());
        clock.advance(Duration::from_millis(999));
        assert_eq!(lease.check(&key), Ok(()));
        clock.advance(Duration::from_millis(1));
        assert_eq!(lease.check(&key), Err(Error::LeaseExpired));
    }

    #[tokio::test(start_paused = true)]
    async fn given_a_suspend_when_the_node_resumes_should_see_its_lease_expired() {
        let (c, _, key) = setup().await;
        let time = crate::testing::SuspendableTime::new();
        let clock = Arc::new(crate::clock::BootClock::with_source(time.clone()));
        let lease = QuorumLease::new(1, c.store(1), clock.clone(), Duration::from_secs(1));
        lease.renewed(clock.now());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(lease.check(&key), Ok(()));
        // Asleep for 10 s: tokio's clock (CLOCK_MONOTONIC) stood still, no
        // renewal ran, and the rest of the cluster failed the topic over.
        time.suspend(Duration::from_secs(10));
        assert_eq!(
            lease.check(&key),
            Err(Error::LeaseExpired),
            "a lease must not outlive a suspend"
        );
        assert!(!lease.is_valid());
    }

    #[tokio::test(start_paused = true)]
    async fn given_an_older_renewal_when_recorded_late_should_not_shorten_the_lease() {
        let (_c, lease, key) = setup().await;
        let t0 = Instant::now();
        lease.renewed(t0 + Duration::from_millis(500));
        lease.renewed(t0);
        assert_eq!(lease.valid_until(), Some(t0 + Duration::from_millis(1500)));
        tokio::time::advance(Duration::from_millis(1200)).await;
        assert_eq!(lease.check(&key), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn given_a_rolled_segment_when_checking_it_should_answer_not_leader() {
        let (c, lease, key) = setup().await;
        lease.renewed(Instant::now());
        c.store(2)
            .propose(MetadataCmd::Roll {
                topic: key.topic.clone(),
                segment: 1,
                count: Some(0),
                next_leader: 2,
            })
            .await
            .unwrap();
        assert_eq!(
            lease.check(&key),
            Err(Error::NotLeader),
            "segment 1 is closed"
        );
        let next = SegmentKey::new(key.topic.clone(), 2);
        assert_eq!(lease.check(&next), Err(Error::NotLeader), "node 2 leads it");
        let unknown = SegmentKey::new(TopicName::new("nope").unwrap(), 1);
        assert_eq!(lease.check(&unknown), Err(Error::NotLeader));
    }

    #[tokio::test(start_paused = true)]
    async fn given_a_waiting_writer_when_a_renewal_lands_should_wake_it() {
        let (_c, lease, _key) = setup().await;
        let lease = Arc::new(lease);
        let waiter = {
            let lease = lease.clone();
            tokio::spawn(async move { lease.wait_valid(Duration::from_millis(200)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        lease.renewed(Instant::now());
        assert!(waiter.await.unwrap());
        assert!(
            !QuorumLease::new(
                9,
                lease.metadata.clone(),
                Arc::new(SystemClock),
                Duration::from_secs(1)
            )
            .wait_valid(Duration::from_millis(200))
            .await
        );
    }
}
