//! Directories on the durable path. A name in a directory survives a power
//! cut only once the directory itself is synced, so every directory the
//! stores create (the node's data directory, `raft/`, the WAL root, a
//! topic's) is fsynced in its parent before anything stored in it is
//! acknowledged, and so is every file name that must outlive a power cut
//! (`raft.redb`, a WAL file renamed into place, a seal file).
//!
//! Blocking I/O: call these off the async workers.

use std::fs::File;
use std::io;
use std::path::Path;

/// Makes the entries of `dir` (names created, renamed or removed in it)
/// durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(test)]
    record::synced(dir);
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot sync directory {}: {e}", dir.display()),
        )
    })
}

/// Creates `dir` and its missing ancestors, each one durable in its parent.
/// The parent of `dir` is synced even when `dir` already existed: an earlier
/// start may have created it and died before its sync, and nothing would
/// sync it later.
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.is_dir() {
        missing.push(cur);
        match parent_of(cur) {
            Some(p) => cur = p,
            None => break,
        }
    }
    for d in missing.iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            // Created meanwhile by someone else: synced below all the same.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "cannot create directory {}: {e}; check that the data directory is writable and the disk not full",
                        d.display()
                    ),
                ))
            }
        }
        if let Some(parent) = parent_of(d) {
            sync_dir(parent)?;
        }
    }
    if missing.is_empty() {
        if let Some(parent) = parent_of(dir) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// The parent directory, `None` for a root or a bare relative name (whose
/// parent is the working directory, not ours to sync).
fn parent_of(path: &Path) -> Option<&Path> {
    path.parent().filter(|p| !p.as_os_str().is_empty())
}

/// Test seam: which directories were synced, so that tests can check that
/// a name was made durable before an acknowledgement.
#[cfg(test)]
pub(crate) mod record {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use walrus_core::locks::MutexExt;

    static SYNCED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    pub(super) fn synced(dir: &Path) {
        SYNCED.lock_or_recover().push(dir.to_path_buf());
    }

    /// How many times `dir` was synced so far (tests use their own
    /// temporary directories, so other tests' syncs never match).
    pub(crate) fn count(dir: &Path) -> usize {
        SYNCED
            .lock_or_recover()
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

    #[test]
    fn given_a_file_in_the_way_when_created_should_name_the_path_in_the_error() {
        let tmp = tempfile::tempdir().unwrap();
        let blocker = tmp.path().join("blocker");
        std::fs::write(&blocker, b"").unwrap();
        let err = create_dir_durable(&blocker.join("sub")).unwrap_err();
        assert!(
            err.to_string().contains(&*blocker.to_string_lossy()),
            "{err}"
        );
    }
}
