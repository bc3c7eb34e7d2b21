//! `Node` runs on whatever `LeaseProvider` it is given: it asks that
//! provider before every append and reports its quorum renewals to it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;
use walrus_core::node::QuorumLease;
use walrus_core::protocol::{Request, Response};
use walrus_core::testing::{sim_info, FakeMetadataCluster, MemLogStore, SimNetwork, TestCluster};
use walrus_core::{
    Error, LeaseProvider, LogStore, Node, Result, SegmentKey, SystemClock, TopicName,
};

/// Core's lease, with a switch that withholds it (an operator's fence, an
/// external lock service saying no), counting the renewals it is told of.
struct Switched {
    inner: QuorumLease,
    allowed: AtomicBool,
    renewals: AtomicU64,
}

#[async_trait]
impl LeaseProvider for Switched {
    fn check(&self, segment: &SegmentKey) -> Result<()> {
        self.inner.check(segment)?;
        if !self.allowed.load(Ordering::SeqCst) {
            return Err(Error::LeaseExpired);
        }
        Ok(())
    }
    fn valid_until(&self) -> Option<Instant> {
        self.inner.valid_until()
    }
    fn is_valid(&self) -> bool {
        self.allowed.load(Ordering::SeqCst) && self.inner.is_valid()
    }
    async fn wait_valid(&self, limit: Duration) -> bool {
        if self.allowed.load(Ordering::SeqCst) {
            self.inner.wait_valid(limit).await
        } else {
            tokio::time::sleep(limit).await;
            false
        }
    }
    fn renewed(&self, t0: Instant) {
        self.renewals.fetch_add(1, Ordering::SeqCst);
        self.inner.renewed(t0);
    }
}

fn put(payload: &str) -> Request {
    Request::Put {
        topic: TopicName::new("logs").unwrap(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

#[tokio::test(start_paused = true)]
async fn given_a_node_with_its_own_lease_provider_when_the_provider_refuses_should_not_store_and_say_lease_expired(
) {
    let metadata = FakeMetadataCluster::new();
    let net = SimNetwork::new(0);
    let config = TestCluster::config(1, 100);
    let store = metadata.join(1, sim_info(1));
    let clock = Arc::new(SystemClock);
    let lease = Arc::new(Switched {
        inner: QuorumLease::new(1, store.clone(), clock.clone(), config.lease),
        allowed: AtomicBool::new(true),
        renewals: AtomicU64::new(0),
    });
    let log = Arc::new(MemLogStore::new());
    let node = Node::with_lease(
        config,
        store,
        log.clone(),
        net.transport(1),
        clock,
        lease.clone(),
    );
    net.register(1, node.clone());
    node.start();
    let topic = TopicName::new("logs").unwrap();
    assert_eq!(
        node.handle(Request::Register(topic.clone())).await,
        Response::Ok
    );
    assert_eq!(node.handle(put("granted")).await, Response::Ok);
    assert!(
        lease.renewals.load(Ordering::SeqCst) > 0,
        "the node reports its renewals to the provider it was given"
    );

    lease.allowed.store(false, Ordering::SeqCst);
    assert_eq!(
        node.handle(put("refused")).await,
        Response::Err("write lease expired".into())
    );
    assert!(!node.metrics().write_lease_valid);
    let key = SegmentKey::new(topic, 1);
    assert_eq!(
        log.info(&key).await.unwrap().map(|i| i.count),
        Some(1),
        "nothing was stored without the provider's yes"
    );

    lease.allowed.store(true, Ordering::SeqCst);
    assert_eq!(node.handle(put("granted again")).await, Response::Ok);
    node.shutdown().await;
}

struct SwitchedFactory;

impl walrus_core::testing::lease_provider_conformance::LeaseProviderFactory for SwitchedFactory {
    fn build(
        &mut self,
        node: walrus_core::NodeId,
        metadata: Arc<dyn walrus_core::MetadataStore>,
        clock: Arc<dyn walrus_core::Clock>,
        lease: Duration,
    ) -> Arc<dyn LeaseProvider> {
        Arc::new(Switched {
            inner: QuorumLease::new(node, metadata, clock, lease),
            allowed: AtomicBool::new(true),
            renewals: AtomicU64::new(0),
        })
    }
}

#[tokio::test(start_paused = true)]
async fn given_a_switched_provider_that_allows_when_running_the_conformance_suite_should_pass() {
    walrus_core::testing::lease_provider_conformance::run(SwitchedFactory).await;
}
