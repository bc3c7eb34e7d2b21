//! The LogStore conformance suite against WalStore, under each fsync policy
//! and with files small enough that segments span several of them.

use std::sync::Mutex;
use std::time::Duration;

use walrus_backends::wal::{FsyncPolicy, WalConfig, WalStore};
use walrus_core::locks::MutexExt;
use walrus_core::testing::log_store_conformance::run_all_with_restart;

/// A graceful restart: the store closes, and opens again on its files.
fn reopen(store: WalStore) -> WalStore {
    let (dir, config) = (store.dir().to_path_buf(), store.config().clone());
    drop(store);
    WalStore::open(dir, config).expect("reopen WAL")
}

async fn run_all(make: impl Fn() -> WalStore) {
    run_all_with_restart(make, reopen).await;
}

fn maker(fsync: FsyncPolicy, segment_file_bytes: u64) -> impl Fn() -> WalStore {
    maker_with(fsync, segment_file_bytes, 1)
}

fn maker_with(
    fsync: FsyncPolicy,
    segment_file_bytes: u64,
    spare_files: usize,
) -> impl Fn() -> WalStore {
    // Every store gets its own directory, kept until the test ends.
    let dirs = Mutex::new(Vec::new());
    move || {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = WalConfig {
            fsync,
            segment_file_bytes,
            spare_files,
            ..WalConfig::default()
        };
        let store = WalStore::open(dir.path(), config).expect("open WAL");
        dirs.lock_or_recover().push(dir);
        store
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_fsync_always_when_running_the_conformance_suite_should_pass() {
    // Default-sized files and no spares (the default; with spares every
    // store of the suite would write 64 MiB of zeros). The small-file
    // cases below use spares.
    run_all(maker_with(FsyncPolicy::Always, 64 * 1024 * 1024, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_small_files_when_running_the_conformance_suite_should_pass() {
    run_all(maker(FsyncPolicy::Always, 8192)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_fsync_never_when_running_the_conformance_suite_should_pass() {
    run_all(maker(FsyncPolicy::Never, 8192)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_fsync_interval_when_running_the_conformance_suite_should_pass() {
    run_all(maker(
        FsyncPolicy::Interval(Duration::from_millis(5)),
        1 << 20,
    ))
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn given_a_single_threaded_runtime_when_running_the_conformance_suite_should_pass() {
    run_all(maker(FsyncPolicy::Always, 1 << 20)).await;
}

/// Issue 14: a file system without `fallocate` (the reservation call
/// answers EOPNOTSUPP); space is reserved by writing zeros.
fn maker_without_fallocate(fsync: FsyncPolicy, segment_file_bytes: u64) -> impl Fn() -> WalStore {
    let dirs = Mutex::new(Vec::new());
    move || {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = WalConfig {
            fsync,
            segment_file_bytes,
            inject_fallocate_unsupported: true,
            ..WalConfig::default()
        };
        let store = WalStore::open(dir.path(), config).expect("open WAL");
        assert!(
            store.reserves_with_zeros(),
            "the injected EOPNOTSUPP is detected at open"
        );
        dirs.lock_or_recover().push(dir);
        store
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_no_fallocate_when_running_the_conformance_suite_should_pass() {
    run_all(maker_without_fallocate(
        FsyncPolicy::Always,
        64 * 1024 * 1024,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_no_fallocate_and_small_files_when_running_the_conformance_suite_should_pass() {
    run_all(maker_without_fallocate(FsyncPolicy::Never, 8192)).await;
}
