//! The lock policy (`walrus_core::locks`): a panic while a lock is held
//! does not make every later call that takes the lock panic too.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use walrus_core::node::QuorumLease;
use walrus_core::testing::{sim_info, FakeMetadataCluster};
use walrus_core::{Clock, LeaseProvider, MetadataCmd, MetadataStore, SegmentKey, TopicName};

/// A clock whose source fails once, with a panic (a bug in a custom
/// `Clock`, a `clock_gettime` that errs).
struct PanicsOnce {
    armed: AtomicBool,
}

impl Clock for PanicsOnce {
    fn now(&self) -> Instant {
        if self.armed.swap(false, Ordering::SeqCst) {
            panic!("the clock's source failed (on purpose)");
        }
        Instant::now()
    }
}

#[tokio::test(start_paused = true)]
async fn given_a_clock_that_panicked_inside_a_lease_check_when_the_next_write_checks_the_lease_should_answer_not_panic(
) {
    let cluster = FakeMetadataCluster::new();
    let store = cluster.join(1, sim_info(1));
    let topic = TopicName::new("t").unwrap();
    let cmd = MetadataCmd::CreateTopic {
        topic: topic.clone(),
        leader: 1,
    };
    store.propose(cmd).await.unwrap();
    let clock = Arc::new(PanicsOnce {
        armed: AtomicBool::new(false),
    });
    let lease = QuorumLease::new(1, store, clock.clone(), Duration::from_secs(1));
    let key = SegmentKey::new(topic, 1);
    lease.renewed(Instant::now());
    assert_eq!(lease.check(&key), Ok(()));

    // The lease reads the clock under its lock: the panic unwinds through
    // the held lock.
    clock.armed.store(true, Ordering::SeqCst);
    let first = catch_unwind(AssertUnwindSafe(|| lease.check(&key)));
    assert!(first.is_err(), "the clock panicked inside the check");

    // Every later append checks the lease: it must get an answer.
    let next = catch_unwind(AssertUnwindSafe(|| lease.check(&key)));
    assert_eq!(
        next.ok(),
        Some(Ok(())),
        "a lock poisoned by the panicking check must not fail every later check"
    );
    assert!(lease.is_valid());
}
