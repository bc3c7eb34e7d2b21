//! The storage identity file, `<data-dir>/node_<id>/storage_id`: written
//! once, when the node's storage is created, and read at every start. The
//! cluster records the identity when the node joins and refuses a start,
//! join or count report from any other (see "Storage identity" in
//! docs/architecture.md).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use walrus_backends::durable_dir::sync_dir;
use walrus_core::{NodeId, StorageId};

const FILE: &str = "storage_id";
const HEADER: &str = "walrus storage identity v1";

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The identity stored in `dir`, or `None` when there is none yet.
pub fn load(dir: &Path, node: NodeId) -> anyhow::Result<Option<StorageId>> {
    let path = path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let malformed = || {
        anyhow::anyhow!(
            "{} is not a storage identity file (expected the lines `{HEADER}`, `node <id>`, \
             `storage <32 hex digits>`); restore it from a backup",
            path.display()
        )
    };
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(malformed());
    }
    let owner: NodeId = lines
        .next()
        .and_then(|l| l.strip_prefix("node "))
        .and_then(|n| n.parse().ok())
        .ok_or_else(malformed)?;
    let storage: StorageId = lines
        .next()
        .and_then(|l| l.strip_prefix("storage "))
        .and_then(|s| s.parse().ok())
        .ok_or_else(malformed)?;
    if owner != node {
        anyhow::bail!(
            "{} belongs to node {owner}, but this is node {node}: the data directory of another \
             node was copied here. Start node {owner} on it, or give this node its own directory",
            dir.display()
        );
    }
    Ok(Some(storage))
}

/// Writes `storage` as the identity of `dir` durably: a temporary file,
/// fsynced, renamed into place, then the directory fsynced, so after a
/// power cut the file is either absent or whole.
pub fn create(dir: &Path, node: NodeId, storage: StorageId) -> anyhow::Result<()> {
    let path = path(dir);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        write!(f, "{HEADER}\nnode {node}\nstorage {storage}\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        sync_dir(dir)
    };
    write().with_context(|| format!("cannot write the storage identity {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_new_directory_when_an_identity_is_created_should_read_it_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), 2).unwrap().is_none());
        let id = StorageId::random();
        create(dir.path(), 2, id).unwrap();
        assert_eq!(load(dir.path(), 2).unwrap(), Some(id));
        let err = load(dir.path(), 3).unwrap_err().to_string();
        assert!(err.contains("belongs to node 2"), "{err}");
        std::fs::write(dir.path().join(FILE), "junk").unwrap();
        assert!(load(dir.path(), 2).is_err());
    }
}
