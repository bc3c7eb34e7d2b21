//! The node logic (routing, leases, rollover, failover, GET cursor). See docs/architecture.md.
