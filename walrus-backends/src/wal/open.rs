//! Opening a WAL directory: its lock, what each file name means, and the
//! recovery of every segment found.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use walrus_core::{Error, Result, SegmentKey, TopicName};

use super::segment::{part_path, read_seal_file, seal_path, Segment, SegmentParams};
use crate::durable_dir::sync_dir;

/// Takes the directory's lock file: two stores appending to the same files
/// would destroy each other's records.
pub(super) fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Storage(format!("cannot open {}: {e}", path.display())))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        Error::Storage(format!(
            "WAL directory {} is in use by another WalStore (this or another process): {e}; stop it before opening the WAL again",
            dir.display()
        ))
    })?;
    Ok(file)
}

fn deleting_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.deleting"))
}

fn storage_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("cannot {what} {}: {e}", path.display()))
}

/// The first step of a delete: the seal file becomes the marker, durably.
pub(super) fn mark_deleting(dir: &Path, segment: u64) -> Result<()> {
    let seal = seal_path(dir, segment);
    let marker = deleting_path(dir, segment);
    std::fs::rename(&seal, &marker).map_err(|e| storage_error("rename", &seal, e))?;
    sync_dir(dir).map_err(|e| storage_error("sync directory", dir, e))
}

/// Removes a marked segment's part files, then its marker, each removal
/// made durable before the next step: at open and after `mark_deleting`.
pub(super) fn finish_delete(dir: &Path, segment: u64) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| storage_error("list", dir, e))?;
    for f in entries {
        let f = f.map_err(|e| storage_error("list", dir, e))?;
        let name = f.file_name().to_string_lossy().into_owned();
        if matches!(classify(&name), FileKind::Part(s, _) if s == segment) {
            std::fs::remove_file(f.path()).map_err(|e| storage_error("remove", &f.path(), e))?;
        }
    }
    sync_dir(dir).map_err(|e| storage_error("sync directory", dir, e))?;
    let marker = deleting_path(dir, segment);
    std::fs::remove_file(&marker).map_err(|e| storage_error("remove", &marker, e))?;
    sync_dir(dir).map_err(|e| storage_error("sync directory", dir, e))
}

/// Whether `name` is a part file of `segment`.
pub(super) fn is_part_of(name: &str, segment: u64) -> bool {
    matches!(classify(name), FileKind::Part(s, _) if s == segment)
}

/// What a file name in a topic directory means.
enum FileKind {
    Part(u64, u32),
    Sealed(u64),
    Deleting(u64),
    Temp,
    Other,
}

fn classify(name: &str) -> FileKind {
    if name.starts_with('.') && name.ends_with(".tmp") {
        return FileKind::Temp;
    }
    if let Some(stem) = name.strip_suffix(".deleting") {
        if let Ok(id) = stem.parse() {
            return FileKind::Deleting(id);
        }
    }
    if let Some(stem) = name.strip_suffix(".sealed") {
        if let Ok(id) = stem.parse() {
            return FileKind::Sealed(id);
        }
    }
    if let Some(stem) = name.strip_suffix(".wal") {
        if let Some((seg, part)) = stem.split_once('.') {
            if let (Ok(seg), Ok(part)) = (seg.parse(), part.parse()) {
                return FileKind::Part(seg, part);
            }
        }
    }
    FileKind::Other
}

pub(super) fn recover_all(
    dir: &Path,
    params: &SegmentParams,
) -> Result<HashMap<SegmentKey, Arc<Segment>>> {
    let io = |p: &Path, e: std::io::Error| {
        Error::Storage(format!("cannot list WAL directory {}: {e}", p.display()))
    };
    let mut segments = HashMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let Ok(topic) = TopicName::new(name.clone()) else {
            tracing::warn!(dir = %path.display(), "ignoring a directory in the WAL that is not a topic");
            continue;
        };
        // Deletes a crash interrupted are finished first: the segment went
        // when its marker was made.
        for f in std::fs::read_dir(&path).map_err(|e| io(&path, e))? {
            let f = f.map_err(|e| io(&path, e))?;
            if let FileKind::Deleting(seg) = classify(&f.file_name().to_string_lossy()) {
                tracing::info!(segment = %SegmentKey::new(topic.clone(), seg), "finishing the deletion of a segment a crash interrupted");
                finish_delete(&path, seg)?;
            }
        }
        let mut parts: HashMap<u64, Vec<(u32, PathBuf)>> = HashMap::new();
        // A seal file that cannot be read quarantines its segment only.
        let mut sealed: HashMap<u64, Result<u64>> = HashMap::new();
        for f in std::fs::read_dir(&path).map_err(|e| io(&path, e))? {
            let f = f.map_err(|e| io(&path, e))?;
            let fname = f.file_name().to_string_lossy().into_owned();
            match classify(&fname) {
                FileKind::Part(seg, part) => parts.entry(seg).or_default().push((part, f.path())),
                FileKind::Sealed(seg) => {
                    sealed.insert(seg, read_seal_file(&f.path()));
                }
                // A file whose creation a crash interrupted: never named.
                FileKind::Temp => {
                    let _ = std::fs::remove_file(f.path());
                }
                // Finished above; a marker made since is not ours to see.
                FileKind::Deleting(_) => {}
                FileKind::Other => {
                    tracing::warn!(file = %f.path().display(), "ignoring an unknown file in the WAL")
                }
            }
        }
        let mut ids: Vec<u64> = parts.keys().chain(sealed.keys()).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let key = SegmentKey::new(topic.clone(), id);
            let mut files = parts.remove(&id).unwrap_or_default();
            files.sort_unstable();
            let gap = files
                .iter()
                .enumerate()
                .position(|(i, (part, _))| *part != i as u32);
            let present: Vec<u32> = files.iter().map(|(part, _)| *part).collect();
            let paths: Vec<PathBuf> = files.into_iter().map(|(_, p)| p).collect();
            let lacks = |i: usize| {
                format!(
                    "segment {key} in {} lacks file {}; its files must be numbered 0, 1, ... without gaps. Restore the file from a replica or backup",
                    path.display(),
                    part_path(&path, id, i as u32).display()
                )
            };
            let quarantine = |paths: &[PathBuf], why: String, sealed: bool| {
                Segment::recover_quarantined(
                    key.clone(),
                    path.clone(),
                    params.clone(),
                    paths,
                    why,
                    sealed,
                )
            };
            let segment = match (sealed.remove(&id), gap) {
                // The seal is the authority on the count: missing or
                // damaged parts only limit what is served (verified, and
                // quarantined if need be, by the segment itself).
                (Some(Ok(count)), _) => {
                    debug_assert!(seal_path(&path, id).exists());
                    Segment::new_sealed(key.clone(), path.clone(), params.clone(), count, &present)
                }
                // A seal file exists, so the segment was sealed, but its
                // count is unknown.
                (Some(Err(e)), None) => quarantine(&paths, e.to_string(), true),
                (Some(Err(e)), Some(i)) => {
                    quarantine(&paths[..i], format!("{e}; and {}", lacks(i)), true)
                }
                (None, Some(i)) => quarantine(&paths[..i], lacks(i), false),
                (None, None) => {
                    Segment::recover(key.clone(), path.clone(), params.clone(), &paths)?
                }
            };
            segments.insert(key, Arc::new(segment));
        }
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_file_names_when_classified_should_recognise_parts_seals_and_temps() {
        assert!(matches!(
            classify("00000000000000000003.000001.wal"),
            FileKind::Part(3, 1)
        ));
        assert!(matches!(
            classify("00000000000000000003.sealed"),
            FileKind::Sealed(3)
        ));
        assert!(matches!(
            classify(".00000000000000000003.000001.wal.tmp"),
            FileKind::Temp
        ));
        assert!(matches!(classify("notes.txt"), FileKind::Other));
    }
}
