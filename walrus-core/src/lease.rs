//! [`LeaseProvider`]: may this node write to a segment right now?

use crate::error::Result;
use crate::types::SegmentKey;

/// Answers "may this node write to segment S right now?".
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
///    the stated exception (docs/architecture.md, "Leases").
///
/// `check` is synchronous and cheap: it is called on every append.
pub trait LeaseProvider: Send + Sync + 'static {
    fn check(&self, segment: &SegmentKey) -> Result<()>;
}
