//! Directories on the durable path: a name in a directory survives a power
//! cut only once the directory itself is synced, so every directory the WAL
//! creates (its root, a topic's) is fsynced in its parent before anything
//! stored in it is acknowledged.

use std::fs::File;
use std::path::Path;

use walrus_core::{Error, Result};

/// Makes the entries of `dir` (names created, renamed or removed in it)
/// durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(test)]
    record::synced(dir);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::Storage(format!("cannot sync directory {}: {e}", dir.display())))
}

/// Creates `dir` and its missing ancestors, each one durable in its parent.
/// The parent of `dir` is synced even when `dir` already existed: an earlier
/// attempt may have created it and failed before its sync, and nothing
/// would sync it later. Blocking I/O: call it off the async workers.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.is_dir() {
        missing.push(cur);
        match cur.parent() {
            Some(p) if !p.as_os_str().is_empty() => cur = p,
            _ => break,
        }
    }
    for d in missing.iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            // Created meanwhile by someone else: synced below all the same.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Error::Storage(format!(
                    "cannot create WAL directory {}: {e}; check that the data directory is writable and the disk not full",
                    d.display()
                )))
            }
        }
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    if missing.is_empty() {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Test seam: which directories were synced, so that tests can check that
/// a directory's name was made durable before an acknowledgement.
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

    /// How many times `dir` was synced so far (tests use their own
    /// temporary directories, so other tests' syncs never match).
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

    #[test]
    fn given_missing_ancestors_when_created_should_sync_each_new_directorys_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("a");
        let leaf = root.join("b").join("c");
        create_dir_durable(&leaf).unwrap();
        assert!(leaf.is_dir());
        assert_eq!(record::count(tmp.path()), 1, "a's entry in its parent");
        assert_eq!(record::count(&root), 1, "b's entry in a");
        assert_eq!(record::count(&root.join("b")), 1, "c's entry in b");
    }

    #[test]
    fn given_an_existing_directory_when_created_again_should_still_sync_its_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let leaf = tmp.path().join("t");
        std::fs::create_dir(&leaf).unwrap();
        create_dir_durable(&leaf).unwrap();
        assert_eq!(record::count(tmp.path()), 1);
    }
}
