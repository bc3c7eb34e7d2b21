//! [`QuorumLease`]: the write lease of one node, derived from metadata it
//! has recently confirmed with the quorum.
//!
//! A renewal that started at `t0` and succeeded proves that this node's
//! applied metadata includes every command committed before `t0`; the
//! lease is then valid until `t0 + lease`. The consensus leader waits
//! `lease + margin` after it last heard from a node before it gives that
//! node's topics away, so the old and the new writer never overlap.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::lease::LeaseProvider;
use crate::metadata::SegmentStatus;
use crate::metadata_store::MetadataStore;
use crate::types::{NodeId, SegmentKey};

pub struct QuorumLease {
    node: NodeId,
    metadata: Arc<dyn MetadataStore>,
    clock: Arc<dyn Clock>,
    lease: Duration,
    valid_until: Mutex<Option<Instant>>,
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
            valid_until: Mutex::new(None),
        }
    }

    /// Records a successful renewal that started at `t0`.
    pub fn renewed(&self, t0: Instant) {
        let mut v = self.lock();
        let until = t0 + self.lease;
        if v.is_none_or(|old| old < until) {
            *v = Some(until);
        }
    }

    /// True while the lease has not run out (whatever this node leads).
    pub fn is_valid(&self) -> bool {
        self.lock().is_some_and(|until| self.clock.now() < until)
    }

    /// The instant the lease runs out, if it was ever renewed.
    pub fn valid_until(&self) -> Option<Instant> {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.valid_until
            .lock()
            .expect("lease lock poisoned: a panic while holding a plain Option")
    }
}

impl LeaseProvider for QuorumLease {
    fn check(&self, segment: &SegmentKey) -> Result<()> {
        let state = self.metadata.state();
        let Some(topic) = state.topic(&segment.topic) else {
            return Err(Error::TopicNotFound);
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
        match self
            .transport
            .call(leader, crate::NodeRequest::RenewLease { node: self.id })
            .await?
        {
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
        self.failover.heard(node, heard_at);
        Ok(crate::NodeResponse::Lease { version })
    }
}
