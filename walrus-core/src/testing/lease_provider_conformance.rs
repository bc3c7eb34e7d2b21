//! A conformance suite for any [`LeaseProvider`]: the invariants written on
//! the trait, checked on a provider built for node 1 of a small fake
//! cluster, on a [`ManualClock`] that moves only when the suite says so.
//!
//! A provider is given with a [`LeaseProviderFactory`]; for one that
//! derives its lease from the node's quorum renewals (like
//! [`QuorumLease`](crate::node::QuorumLease)) the default
//! [`grant`](LeaseProviderFactory::grant) reports a renewal; a provider
//! with a source of its own grants the lease there its own way:
//!
//! ```ignore
//! #[tokio::test(start_paused = true)]
//! async fn my_lease_conforms() {
//!     walrus_core::testing::lease_provider_conformance::run(MyFactory).await;
//! }
//! ```
//!
//! Checks (each panics with a message naming the broken rule): never held
//! before it was granted; held only for segments the metadata names this
//! node the leader of and that are open; never held past its end on the
//! provider's clock, nor later than `t0 + lease` for a grant at `t0`;
//! renewals extend it and a late (older) one never shortens it; a segment
//! rolled away (to another leader, or closed) is not held, however long
//! the lease runs; `wait_valid` waits at most its limit and wakes on a
//! renewal.
//!
//! Run it under `#[tokio::test(start_paused = true)]`: `wait_valid`'s
//! limit is tokio time, which then jumps instead of waiting.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::Clock;
use crate::error::Error;
use crate::lease::LeaseProvider;
use crate::metadata::{CmdResult, MetadataCmd};
use crate::metadata_store::MetadataStore;
use crate::testing::{sim_info, FakeMetadataCluster, ManualClock};
use crate::types::{NodeId, SegmentKey, TopicName};

/// The lease duration the suite asks for.
pub const LEASE: Duration = Duration::from_secs(2);

/// The node whose provider is checked.
pub const NODE: NodeId = 1;

/// Builds the provider under test.
pub trait LeaseProviderFactory: Send {
    /// A provider for `node`, reading its metadata from `metadata` and
    /// time from `clock`, with leases of `lease`.
    fn build(
        &mut self,
        node: NodeId,
        metadata: Arc<dyn MetadataStore>,
        clock: Arc<dyn Clock>,
        lease: Duration,
    ) -> Arc<dyn LeaseProvider>;

    /// Grants `provider` its lease as of `t0` (on the clock it was built
    /// with): what a successful quorum renewal that started at `t0` is for
    /// a provider that derives its lease from renewals (the default).
    fn grant(&mut self, provider: &Arc<dyn LeaseProvider>, t0: Instant) {
        provider.renewed(t0);
    }
}

/// The fake cluster a provider runs on: node 1 leads topic `mine`, node 2
/// leads `theirs`; both are at segment 1, open.
struct Setup {
    cluster: FakeMetadataCluster,
    clock: Arc<ManualClock>,
    provider: Arc<dyn LeaseProvider>,
    mine: SegmentKey,
    theirs: SegmentKey,
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).expect("suite topic names are valid")
}

async fn setup<F: LeaseProviderFactory>(factory: &mut F) -> Setup {
    let cluster = FakeMetadataCluster::new();
    let store = cluster.join(NODE, sim_info(NODE));
    cluster.join(2, sim_info(2));
    for (name, leader) in [("mine", NODE), ("theirs", 2)] {
        let cmd = MetadataCmd::CreateTopic {
            topic: topic(name),
            leader,
        };
        let result = store.propose(cmd).await;
        assert_eq!(
            result,
            Ok(CmdResult::Applied),
            "the suite's fake cluster must take its topics"
        );
    }
    let clock = Arc::new(ManualClock::new());
    let provider = factory.build(NODE, store, clock.clone(), LEASE);
    Setup {
        cluster,
        clock,
        provider,
        mine: SegmentKey::new(topic("mine"), 1),
        theirs: SegmentKey::new(topic("theirs"), 1),
    }
}

/// Runs every check, each on a fresh provider from `factory`.
pub async fn run<F: LeaseProviderFactory>(mut factory: F) {
    never_held_before_a_grant(&mut factory).await;
    held_only_for_its_own_open_segments(&mut factory).await;
    never_held_past_its_end(&mut factory).await;
    renewals_extend_it_and_a_late_one_never_shortens_it(&mut factory).await;
    a_segment_rolled_away_is_not_held(&mut factory).await;
    wait_valid_waits_at_most_its_limit_and_wakes_on_a_renewal(&mut factory).await;
}

/// Rule 2: before any grant, nothing is held.
pub async fn never_held_before_a_grant<F: LeaseProviderFactory>(factory: &mut F) {
    let s = setup(factory).await;
    assert_eq!(
        s.provider.valid_until(),
        None,
        "a provider never granted a lease must report no end (valid_until)"
    );
    assert!(
        !s.provider.is_valid(),
        "a provider never granted a lease must not be valid"
    );
    assert_eq!(
        s.provider.check(&s.mine),
        Err(Error::LeaseExpired),
        "rule 2: leading a segment without a lease is LeaseExpired"
    );
    assert_eq!(
        s.provider.check(&s.theirs),
        Err(Error::NotLeader),
        "rule 2: a segment another node leads is NotLeader"
    );
}

/// Rules 1 and 2: a lease covers the open segments the metadata names
/// this node the leader of, and nothing else.
pub async fn held_only_for_its_own_open_segments<F: LeaseProviderFactory>(factory: &mut F) {
    let s = setup(factory).await;
    factory.grant(&s.provider, s.clock.now());
    assert!(s.provider.is_valid(), "a granted lease must be valid");
    assert_eq!(
        s.provider.check(&s.mine),
        Ok(()),
        "rule 1: a granted lease covers the open segment this node leads"
    );
    assert_eq!(
        s.provider.check(&s.theirs),
        Err(Error::NotLeader),
        "rule 1: a lease never covers a segment another node leads"
    );
    let later = SegmentKey::new(s.mine.topic.clone(), 2);
    assert_eq!(
        s.provider.check(&later),
        Err(Error::NotLeader),
        "rule 1: a lease never covers a segment that is not the topic's open one"
    );
    let unknown = SegmentKey::new(topic("unknown"), 1);
    assert_eq!(
        s.provider.check(&unknown),
        Err(Error::NotLeader),
        "rule 1: a lease never covers a topic the metadata does not hold"
    );
}

/// Rules 3 and 4: the lease ends no later than `t0 + lease`, and from its
/// end on (on the provider's clock) it is not held.
pub async fn never_held_past_its_end<F: LeaseProviderFactory>(factory: &mut F) {
    let s = setup(factory).await;
    let t0 = s.clock.now();
    factory.grant(&s.provider, t0);
    let end = s
        .provider
        .valid_until()
        .expect("rule 4: a granted lease reports its end (valid_until)");
    assert!(
        end > t0,
        "a lease granted at t0 must end after t0 (ends {:?} after)",
        end.saturating_duration_since(t0)
    );
    assert!(
        end <= t0 + LEASE,
        "rule 3: a lease granted at t0 must end by t0 + lease ({LEASE:?}); it ends {:?} after t0",
        end - t0
    );
    s.clock.advance(end - t0 - Duration::from_millis(1));
    assert_eq!(
        s.provider.check(&s.mine),
        Ok(()),
        "a lease is held until its end (1 ms before it)"
    );
    s.clock.advance(Duration::from_millis(1));
    assert_eq!(
        s.provider.check(&s.mine),
        Err(Error::LeaseExpired),
        "rule 4: check answers LeaseExpired from valid_until on"
    );
    assert!(
        !s.provider.is_valid(),
        "rule 4: is_valid is false from valid_until on"
    );
    s.clock.advance(LEASE * 10);
    assert_eq!(
        s.provider.check(&s.mine),
        Err(Error::LeaseExpired),
        "a lease without a renewal stays expired"
    );
}

/// A renewal extends the lease (after it has run out, too); a renewal
/// reported late, older than one already reported, never shortens it.
pub async fn renewals_extend_it_and_a_late_one_never_shortens_it<F: LeaseProviderFactory>(
    factory: &mut F,
) {
    let s = setup(factory).await;
    let t0 = s.clock.now();
    factory.grant(&s.provider, t0);
    let first = s.provider.valid_until().expect("granted");
    s.clock.advance(LEASE / 2);
    let t1 = s.clock.now();
    factory.grant(&s.provider, t1);
    let second = s.provider.valid_until().expect("granted");
    assert!(
        second > first,
        "a renewal must extend the lease (it ended {:?} after t0, and after the renewal {:?})",
        first - t0,
        second - t0
    );
    factory.grant(&s.provider, t0);
    assert_eq!(
        s.provider.valid_until(),
        Some(second),
        "a renewal older than one already reported must not shorten the lease"
    );
    s.clock.advance(LEASE * 2);
    assert_eq!(s.provider.check(&s.mine), Err(Error::LeaseExpired));
    factory.grant(&s.provider, s.clock.now());
    assert_eq!(
        s.provider.check(&s.mine),
        Ok(()),
        "a renewal after the lease ran out must make it held again"
    );
}

/// Rules 1 and 2 after a failover: once the metadata gives the segment
/// away (rolled to another leader) the lease no longer covers it, however
/// long it still runs, nor the next segment, which another node leads.
pub async fn a_segment_rolled_away_is_not_held<F: LeaseProviderFactory>(factory: &mut F) {
    let s = setup(factory).await;
    factory.grant(&s.provider, s.clock.now());
    assert_eq!(s.provider.check(&s.mine), Ok(()));
    let roll = MetadataCmd::Roll {
        topic: s.mine.topic.clone(),
        segment: s.mine.segment,
        count: Some(0),
        next_leader: 2,
    };
    let result = s.cluster.store(2).propose(roll).await;
    assert_eq!(result, Ok(CmdResult::Applied), "the suite's roll applies");
    assert!(
        s.provider.is_valid(),
        "the lease itself still runs (no time passed)"
    );
    assert_eq!(
        s.provider.check(&s.mine),
        Err(Error::NotLeader),
        "a segment rolled away (no longer open) must not be held"
    );
    let next = SegmentKey::new(s.mine.topic.clone(), s.mine.segment + 1);
    assert_eq!(
        s.provider.check(&next),
        Err(Error::NotLeader),
        "a segment the metadata gives another node must not be held"
    );
}

/// `wait_valid` answers at once for a valid lease, waits at most its
/// limit for an expired one, and wakes when a renewal lands.
pub async fn wait_valid_waits_at_most_its_limit_and_wakes_on_a_renewal<F: LeaseProviderFactory>(
    factory: &mut F,
) {
    let s = setup(factory).await;
    let limit = Duration::from_millis(300);
    let started = Instant::now();
    assert!(
        !s.provider.wait_valid(limit).await,
        "wait_valid must answer false when no lease comes within its limit"
    );
    assert!(
        started.elapsed() < limit * 4,
        "wait_valid must return about when its limit passes (took {:?} of {limit:?})",
        started.elapsed()
    );

    let waiter = {
        let provider = s.provider.clone();
        tokio::spawn(async move { provider.wait_valid(Duration::from_secs(3600)).await })
    };
    // Let the waiter start waiting, then renew.
    tokio::time::sleep(Duration::from_millis(10)).await;
    factory.grant(&s.provider, s.clock.now());
    let woken = tokio::time::timeout(Duration::from_secs(60), waiter).await;
    assert!(
        matches!(woken, Ok(Ok(true))),
        "a writer waiting in wait_valid must be woken by a renewal and see the lease valid"
    );
    assert!(
        s.provider.wait_valid(Duration::ZERO).await,
        "wait_valid on a valid lease must answer true at once"
    );
}
