//! The LeaseProvider conformance suite against core's `QuorumLease`, and
//! against providers with a planted bug, which it must catch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use walrus_core::node::QuorumLease;
use walrus_core::testing::lease_provider_conformance::{run, LeaseProviderFactory};
use walrus_core::{Clock, Error, LeaseProvider, MetadataStore, NodeId, Result, SegmentKey};

/// Builds `QuorumLease`, or `QuorumLease` with a planted bug.
struct Factory(Option<Bug>);

impl LeaseProviderFactory for Factory {
    fn build(
        &mut self,
        node: NodeId,
        metadata: Arc<dyn MetadataStore>,
        clock: Arc<dyn Clock>,
        lease: Duration,
    ) -> Arc<dyn LeaseProvider> {
        let inner = QuorumLease::new(node, metadata, clock, lease);
        match self.0 {
            None => Arc::new(inner),
            Some(bug) => Arc::new(Planted {
                inner,
                bug,
                renewed: AtomicBool::new(false),
            }),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn given_quorum_lease_when_running_the_conformance_suite_should_pass() {
    run(Factory(None)).await;
}

#[derive(Clone, Copy)]
enum Bug {
    /// Once renewed, held forever: forgets when the lease ends.
    NeverExpires,
    /// Answers from the lease alone, without asking the metadata who leads.
    IgnoresMetadata,
}

/// `QuorumLease` with a planted bug.
struct Planted {
    inner: QuorumLease,
    bug: Bug,
    renewed: AtomicBool,
}

#[async_trait]
impl LeaseProvider for Planted {
    fn check(&self, segment: &SegmentKey) -> Result<()> {
        match (self.bug, self.inner.check(segment)) {
            (Bug::NeverExpires, Err(Error::LeaseExpired)) if self.is_valid() => Ok(()),
            (Bug::IgnoresMetadata, Err(Error::NotLeader)) if self.is_valid() => Ok(()),
            (_, r) => r,
        }
    }
    fn valid_until(&self) -> Option<Instant> {
        self.inner.valid_until()
    }
    fn is_valid(&self) -> bool {
        match self.bug {
            Bug::NeverExpires => self.renewed.load(Ordering::SeqCst),
            Bug::IgnoresMetadata => self.inner.is_valid(),
        }
    }
    async fn wait_valid(&self, limit: Duration) -> bool {
        self.inner.wait_valid(limit).await
    }
    fn renewed(&self, t0: Instant) {
        self.renewed.store(true, Ordering::SeqCst);
        self.inner.renewed(t0);
    }
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "rule 4")]
async fn given_a_lease_that_never_expires_when_running_the_suite_should_fail_on_rule_4() {
    run(Factory(Some(Bug::NeverExpires))).await;
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "rule 1")]
async fn given_a_lease_that_ignores_the_metadata_when_running_the_suite_should_fail_on_rule_1() {
    run(Factory(Some(Bug::IgnoresMetadata))).await;
}
