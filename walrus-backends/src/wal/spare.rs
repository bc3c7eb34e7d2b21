//! A small pool of pre-zeroed files for segments to take when they need a
//! new one.
//!
//! Why: a file whose blocks are only reserved (`fallocate`) holds unwritten
//! extents, and on ext4 every sync that first covers such blocks converts
//! them, which costs a metadata write (the extent tree; a journal commit
//! where there is a journal): syncs into a fallocated file are 1.5–2.5x
//! slower than into one whose zeros were really written. So a
//! background thread writes zeros into spare files ahead of need (real
//! blocks: a full disk still fails here, never as a SIGBUS later), and a
//! segment takes one by rename. When the pool is empty the segment creates
//! a sparse file and reserves its blocks in steps (`reserve.rs`).
//!
//! Spares live in the WAL's root directory as `spare-<n>.zeroed` (the root
//! holds only topic *directories* and the lock file, so no topic can ever
//! collide with them); one being written is `.spare.tmp` and is deleted on
//! open.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::durable_dir::sync_dir;
use walrus_core::locks::{recover, MutexExt};

const TMP_NAME: &str = ".spare.tmp";
const PREFIX: &str = "spare-";
const SUFFIX: &str = ".zeroed";
/// Zeros are written this much at a time.
const CHUNK: usize = 1 << 20;
/// Synced every this many bytes, so the refill never dumps a whole file of
/// dirty pages on the disk at once (which would stall the WAL's syncs).
const SYNC_EVERY: u64 = 8 << 20;
/// Pause after a failed refill (e.g. a full disk) before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

struct State {
    ready: Vec<PathBuf>,
    next_id: u64,
    shutdown: bool,
}

struct Shared {
    root: PathBuf,
    file_len: u64,
    target: usize,
    state: Mutex<State>,
    wake: Condvar,
}

pub(crate) struct SparePool {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Whether `name` is a finished spare file's name.
pub(crate) fn is_spare_name(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|s| s.strip_suffix(SUFFIX))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl SparePool {
    /// Adopts the spares already in `root` (of the right size; others are
    /// deleted) and starts keeping `target` of them ready. `target == 0`
    /// disables the pool.
    pub fn start(root: &Path, file_len: u64, target: usize) -> std::io::Result<SparePool> {
        let mut ready = Vec::new();
        let mut next_id = 0u64;
        for entry in std::fs::read_dir(root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name == TMP_NAME {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !is_spare_name(&name) || !entry.file_type()?.is_file() {
                continue;
            }
            let id: u64 = name[PREFIX.len()..name.len() - SUFFIX.len()]
                .parse()
                .unwrap_or(0);
            next_id = next_id.max(id.saturating_add(1));
            if target > 0 && entry.metadata()?.len() == file_len && ready.len() < target {
                ready.push(path);
            } else {
                // Another file size (the config changed) or too many.
                let _ = std::fs::remove_file(&path);
            }
        }
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            file_len,
            target,
            state: Mutex::new(State {
                ready,
                next_id,
                shutdown: false,
            }),
            wake: Condvar::new(),
        });
        let thread = if target > 0 {
            let worker = shared.clone();
            Some(
                std::thread::Builder::new()
                    .name("walrus-wal-spare".into())
                    .spawn(move || refill(&worker))?,
            )
        } else {
            None
        };
        Ok(SparePool { shared, thread })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock_or_recover()
    }

    /// A ready zero-filled file of the store's file length, now owned by the
    /// caller (who must rename it away or delete it); `None` if the pool is
    /// empty.
    pub fn take(&self) -> Option<PathBuf> {
        let mut st = self.state();
        // Oldest first: every spare gets used, none lingers forever.
        let path = (!st.ready.is_empty()).then(|| st.ready.remove(0));
        if path.is_some() {
            self.shared.wake.notify_one();
        }
        path
    }

    /// Spares ready now.
    pub fn ready(&self) -> usize {
        self.state().ready.len()
    }

    /// The directory spares live in (the caller syncs it after taking one).
    pub fn root(&self) -> &Path {
        &self.shared.root
    }
}

impl Drop for SparePool {
    fn drop(&mut self) {
        self.state().shutdown = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn refill(shared: &Shared) {
    // Warn once per run of failures (a full disk retries every second).
    let mut failing = false;
    loop {
        let id = {
            let mut st = shared.state.lock_or_recover();
            while !st.shutdown && st.ready.len() >= shared.target {
                st = recover(shared.wake.wait(st));
            }
            if st.shutdown {
                return;
            }
            st.next_id += 1;
            st.next_id - 1
        };
        let path = shared.root.join(format!("{PREFIX}{id}{SUFFIX}"));
        match make_spare(shared, &path) {
            Ok(true) => {
                failing = false;
                shared.state.lock_or_recover().ready.push(path);
            }
            Ok(false) => return,
            Err(e) => {
                let _ = std::fs::remove_file(shared.root.join(TMP_NAME));
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(dir = %shared.root.display(), error = %e, "cannot prepare a zero-filled WAL file; new files are fallocated meanwhile");
                }
                let st = shared.state.lock_or_recover();
                let (st, _) = recover(
                    shared
                        .wake
                        .wait_timeout_while(st, RETRY_AFTER, |s| !s.shutdown),
                );
                if st.shutdown {
                    return;
                }
            }
        }
    }
}

/// Writes a zero-filled, synced file and renames it to `path`. `Ok(false)`
/// if the pool shut down meanwhile.
fn make_spare(shared: &Shared, path: &Path) -> std::io::Result<bool> {
    // Leave room: a spare must never be what fills the disk.
    let stat = rustix::fs::statvfs(&shared.root)?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    if free < shared.file_len.saturating_mul(4) {
        return Err(std::io::Error::other(format!(
            "only {free} bytes free, a spare needs {} and leaves room for appends",
            shared.file_len
        )));
    }
    let tmp = shared.root.join(TMP_NAME);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    let zeros = vec![0u8; CHUNK];
    let mut off = 0u64;
    let mut synced = 0u64;
    while off < shared.file_len {
        if shared.state.lock_or_recover().shutdown {
            drop(file);
            let _ = std::fs::remove_file(&tmp);
            return Ok(false);
        }
        let n = (shared.file_len - off).min(CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], off)?;
        off += n as u64;
        if off - synced >= SYNC_EVERY {
            file.sync_data()?;
            synced = off;
        }
    }
    // The size too must be durable before the file is offered.
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_dir(&shared.root)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_spare_names_when_checked_should_accept_only_finished_spares() {
        assert!(is_spare_name("spare-0.zeroed"));
        assert!(is_spare_name("spare-17.zeroed"));
        assert!(!is_spare_name("spare-.zeroed"));
        assert!(!is_spare_name(".spare.tmp"));
        assert!(!is_spare_name("spare-1.zeroed.tmp"));
        assert!(!is_spare_name("LOCK"));
    }

    #[test]
    fn given_a_pool_when_started_should_fill_with_zeroed_files_of_the_right_size() {
        let dir = tempfile::tempdir().unwrap();
        let pool = SparePool::start(dir.path(), 8192, 2).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while pool.ready() < 2 {
            assert!(std::time::Instant::now() < deadline, "pool never filled");
            std::thread::sleep(Duration::from_millis(5));
        }
        let taken = pool.take().unwrap();
        let bytes = std::fs::read(&taken).unwrap();
        assert_eq!(bytes.len(), 8192);
        assert!(bytes.iter().all(|&b| b == 0));
        std::fs::remove_file(&taken).unwrap();
        drop(pool);
        assert!(!dir.path().join(TMP_NAME).exists());
    }

    #[test]
    fn given_leftover_spares_when_restarted_should_adopt_right_sized_ones_and_delete_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spare-3.zeroed"), vec![0u8; 8192]).unwrap();
        std::fs::write(dir.path().join("spare-4.zeroed"), vec![0u8; 4096]).unwrap();
        std::fs::write(dir.path().join(TMP_NAME), vec![0u8; 100]).unwrap();
        let pool = SparePool::start(dir.path(), 8192, 0).unwrap();
        assert_eq!(pool.ready(), 0, "a disabled pool adopts nothing");
        drop(pool);
        std::fs::write(dir.path().join("spare-3.zeroed"), vec![0u8; 8192]).unwrap();
        std::fs::write(dir.path().join("spare-4.zeroed"), vec![0u8; 4096]).unwrap();
        let pool = SparePool::start(dir.path(), 8192, 1).unwrap();
        assert!(pool.ready() >= 1);
        assert!(!dir.path().join("spare-4.zeroed").exists());
        assert!(!dir.path().join(TMP_NAME).exists());
        assert_eq!(pool.take().unwrap(), dir.path().join("spare-3.zeroed"));
    }
}
