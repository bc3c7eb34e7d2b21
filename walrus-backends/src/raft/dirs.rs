//! The Raft store's directories on the durable path: a name in a directory
//! survives a power cut only once the directory itself is synced, so
//! `node_<id>`, `raft/` and the `raft.redb` inside it are each made durable
//! in their parent before anything that depends on them is acknowledged.
//! (The WAL keeps its own, in `wal/durable_dir.rs`.)

/// Creates `dir` and any missing parent, each new directory fsynced in its
/// parent, so that after a power cut the directory is there whenever
/// anything written inside it is. The parent of `dir` is synced even when
/// `dir` existed: a start that created it may have died before its sync.
/// Blocking I/O: call it off the async workers.
pub fn create_dir_durable(dir: &std::path::Path) -> std::io::Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if !dir.is_dir() {
        if let Some(parent) = parent {
            create_dir_durable(parent)?;
        }
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            // Created meanwhile by someone else: synced below all the same.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    sync_dir(parent.unwrap_or(std::path::Path::new(".")))
}

/// fsyncs a directory: the names created in it (files, subdirectories,
/// renames) become durable.
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(test)]
    record::synced(dir);
    std::fs::File::open(dir)?.sync_all()
}

/// Test seam: which directories were synced.
#[cfg(test)]
pub(crate) mod record {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static SYNCED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    pub(super) fn synced(dir: &Path) {
        SYNCED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(dir.to_path_buf());
    }

    /// How many times `dir` was synced (tests use their own temporary
    /// directories, so other tests' syncs never match).
    pub(crate) fn count(dir: &Path) -> usize {
        SYNCED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|d| d.as_path() == dir)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{RaftConfig, RaftMetadataStore};

    #[tokio::test]
    async fn given_a_new_data_directory_when_raft_opens_should_sync_each_new_directory_and_the_database_name(
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let node_dir = tmp.path().join("data").join("node_1");
        let raft_dir = node_dir.join("raft");
        let net = walrus_core::testing::SimNetwork::new(0);
        let config = RaftConfig::new(1, &raft_dir, "sim:1", "sim-client:1");
        let store = RaftMetadataStore::open(config, net.transport(1))
            .await
            .expect("raft opens");
        assert!(raft_dir.join("raft.redb").is_file());
        assert_eq!(record::count(tmp.path()), 1, "data's name in its parent");
        assert_eq!(record::count(&tmp.path().join("data")), 1, "node_1's name");
        assert_eq!(record::count(&node_dir), 1, "raft's name in node_1");
        assert_eq!(record::count(&raft_dir), 1, "raft.redb's name in raft");
        store.shutdown().await;
    }
}
