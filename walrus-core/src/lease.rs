//! [`LeaseProvider`]: may this node write to a segment right now?

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::error::Result;
use crate::types::SegmentKey;

/// Answers "may this node write to segment S right now?". The node asks it
/// before every append and again before it acknowledges one.
///
/// Core's implementation is [`QuorumLease`](crate::node::QuorumLease), which
/// [`Node::new`](crate::Node::new) builds; [`Node::with_lease`](crate::Node::with_lease)
/// takes any other.
///
/// # Contract
///
/// 1. `Ok(())` only if this node's metadata names it the leader of `S` and
///    `S` is the topic's open segment, and that metadata was confirmed with a
///    quorum less than the lease duration ago.
/// 2. `Err(Error::NotLeader)` when the metadata names another leader (or `S`
///    is no longer open); `Err(Error::LeaseExpired)` when this node leads `S`
///    but has not confirmed with a quorum within the lease duration.
/// 3. **No overlap.** The cluster's failover waits longer than the lease
///    duration (plus a margin for clock drift) after it last heard from a
///    leader before it gives the topic to another node, so two nodes never
///    both get `Ok` for one topic at the same moment. Time is read on a
///    clock that counts suspend; a paused VM, whose clocks all stop, is
///    the stated exception (docs/architecture.md, "Leases"). The failover
///    reckons with `NodeConfig::lease` and hears from a node through its
///    renewals: a provider's lease must never end later than
///    `t0 + NodeConfig::lease` for the last renewal `t0` reported to
///    [`renewed`](Self::renewed) (or, for a provider with a source of its
///    own, the last moment the cluster heard from this node).
/// 4. **One clock.** [`valid_until`](Self::valid_until) and `check` read
///    the node's [`Clock`](crate::Clock): `check` answers `LeaseExpired`
///    from `valid_until` on, and [`is_valid`](Self::is_valid) is true
///    exactly while that clock reads before `valid_until`. Before the lease
///    was first granted `valid_until` is `None` and nothing is held.
/// 5. **Renewals extend, never shorten.** A provider that derives its lease
///    from [`renewed`](Self::renewed) is valid again after a renewal at
///    `t0` (until at most `t0 + lease`, rule 3), also after it ran out; a
///    renewal older than one already reported (answers may arrive out of
///    order) leaves the lease as it is.
/// 6. **Given away is not held.** Rules 1 and 2 read the metadata on every
///    call: once a segment is rolled away (closed, or given another
///    leader) `check` answers `NotLeader` for it, however long the lease
///    still runs.
/// 7. **Waits are bounded.** [`wait_valid`](Self::wait_valid) answers at
///    once when the lease is valid, wakes when a renewal makes it valid,
///    and otherwise returns false once `limit` has passed.
///
/// `testing::lease_provider_conformance` (cargo feature `testing`) checks
/// these on any provider. `check` is synchronous and cheap: it is called on
/// every append.
#[async_trait]
pub trait LeaseProvider: Send + Sync + 'static {
    fn check(&self, segment: &SegmentKey) -> Result<()>;

    /// When this node's lease runs out (on the node's clock), whatever it
    /// leads; `None` if it never held one. The node still acknowledges an
    /// append that finished shortly after it (within half the failover
    /// margin, docs/architecture.md "Leases").
    fn valid_until(&self) -> Option<Instant>;

    /// True while the lease has not run out.
    fn is_valid(&self) -> bool;

    /// Waits, at most `limit`, until the lease is valid; true if it is on
    /// return. A writer that found it expired waits here for a renewal in
    /// flight instead of failing at once.
    async fn wait_valid(&self, limit: Duration) -> bool;

    /// The node's quorum confirmation that started at `t0` succeeded: every
    /// command committed before `t0` is in its metadata, and the consensus
    /// leader heard from it at `t0`. A provider that derives its lease from
    /// these renewals extends it; one with a source of its own ignores them.
    fn renewed(&self, _t0: Instant) {}
}
