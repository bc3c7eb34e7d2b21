//! The lock policy: a panic while a lock is held must not turn every later
//! request into a panic.
//!
//! A std [`Mutex`] or [`RwLock`] is *poisoned* when a thread panics while
//! holding it, and from then on every `lock().unwrap()` (or `expect`)
//! panics as well: one bug hit by one request would go on to fail every
//! request that touches the same state, the node's background tasks and
//! the listener's connections one after the other, until the process is
//! restarted.
//!
//! So Walrus takes every std lock with [`MutexExt::lock_or_recover`],
//! [`RwLockExt::read_or_recover`] or [`RwLockExt::write_or_recover`] (and
//! takes a [`Condvar`](std::sync::Condvar) wait's guard back with
//! [`recover`]): a poisoned lock is taken anyway, with the data as the
//! panicking holder left it, its poison is cleared and an error is logged
//! once. The reason this is the right trade: Walrus's critical sections are
//! short and run no I/O and no code of the caller's, so a panic inside one
//! is a bug (a broken invariant) that the panicking request already
//! answered for (the listener and the transport answer a panicked request
//! with an internal error); what it may leave is one unfinished update of
//! in-memory state, which is at worst what the bug itself would have left,
//! whereas poison turns it into a dead node. Durable state is never
//! protected by a lock alone (the WAL and Raft recover from their files).
//!
//! `clippy.toml` forbids `Mutex::lock`, `RwLock::read` and `RwLock::write`
//! everywhere else, so the policy holds for new code too.

use std::sync::{LockResult, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// [`Mutex`] under the lock policy (see the [module](self)).
pub trait MutexExt<T: ?Sized> {
    /// Locks, taking a poisoned lock as it is (and clearing its poison).
    fn lock_or_recover(&self) -> MutexGuard<'_, T>;
}

/// [`RwLock`] under the lock policy (see the [module](self)).
pub trait RwLockExt<T: ?Sized> {
    /// Locks for reading, taking a poisoned lock as it is.
    fn read_or_recover(&self) -> RwLockReadGuard<'_, T>;
    /// Locks for writing, taking a poisoned lock as it is.
    fn write_or_recover(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> MutexExt<T> for Mutex<T> {
    #[allow(clippy::disallowed_methods)] // the policy's one call of `lock`
    fn lock_or_recover(&self) -> MutexGuard<'_, T> {
        taken::<_, T>(self.lock(), || self.clear_poison())
    }
}

impl<T: ?Sized> RwLockExt<T> for RwLock<T> {
    #[allow(clippy::disallowed_methods)] // the policy's one call of `read`
    fn read_or_recover(&self) -> RwLockReadGuard<'_, T> {
        taken::<_, T>(self.read(), || self.clear_poison())
    }

    #[allow(clippy::disallowed_methods)] // the policy's one call of `write`
    fn write_or_recover(&self) -> RwLockWriteGuard<'_, T> {
        taken::<_, T>(self.write(), || self.clear_poison())
    }
}

/// The guard of a lock result whatever its poison: for what a
/// [`Condvar`](std::sync::Condvar) wait gives back (the next
/// [`MutexExt::lock_or_recover`] of that mutex clears the poison).
pub fn recover<G>(result: LockResult<G>) -> G {
    taken::<_, G>(result, || {})
}

/// The guard, poisoned or not; a poisoned one is reported, then its lock's
/// poison cleared (`clear_poison`), so that it is reported once.
fn taken<G, T: ?Sized>(result: LockResult<G>, clear_poison: impl FnOnce()) -> G {
    result.unwrap_or_else(|poisoned| {
        let guard = poisoned.into_inner();
        clear_poison();
        report::<T>();
        guard
    })
}

fn report<T: ?Sized>() {
    tracing::error!(
        lock = std::any::type_name::<T>(),
        "a thread panicked while holding this lock (see the panic logged before); going on with the data as it left it"
    );
}

#[cfg(test)]
mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use super::*;

    fn poison<L>(lock: &L, hold: impl FnOnce(&L)) {
        let panicked = catch_unwind(AssertUnwindSafe(|| hold(lock)));
        assert!(panicked.is_err(), "the holder panics on purpose");
    }

    #[test]
    fn given_a_mutex_whose_holder_panicked_when_locked_should_give_its_data_and_clear_the_poison() {
        let m = Mutex::new(vec![1]);
        poison(&m, |m| {
            m.lock_or_recover().push(2);
            let _held = m.lock_or_recover();
            panic!("a bug while the lock is held");
        });
        assert!(m.is_poisoned());
        assert_eq!(*m.lock_or_recover(), vec![1, 2]);
        assert!(
            !m.is_poisoned(),
            "recovered once, the lock is healthy again"
        );
    }

    #[test]
    fn given_an_rwlock_whose_writer_panicked_when_read_or_written_should_give_its_data() {
        let l = RwLock::new(7);
        poison(&l, |l| {
            *l.write_or_recover() = 8;
            let _held = l.write_or_recover();
            panic!("a bug while the lock is held");
        });
        assert_eq!(*l.read_or_recover(), 8);
        assert!(!l.is_poisoned());
        poison(&l, |l| {
            let _held = l.write_or_recover();
            panic!("again");
        });
        *l.write_or_recover() += 1;
        assert_eq!(*l.read_or_recover(), 9);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a poisoned result, as a Condvar wait gives it
    fn given_a_poisoned_lock_result_when_recovered_should_give_the_guard() {
        let m = Mutex::new(5);
        poison(&m, |m| {
            let _held = m.lock_or_recover();
            panic!("a bug while the lock is held");
        });
        let result = m.lock();
        assert!(result.is_err(), "poisoned");
        assert_eq!(*recover(result), 5);
    }
}
