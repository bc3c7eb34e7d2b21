//! A bounded cache of read-only maps of sealed segments' files, least
//! recently used out first. Sealed segments hold no map of their own, so
//! 10,000 of them cost neither descriptors (a map needs none once made) nor
//! unbounded address space.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use walrus_core::Result;

use super::segment_file::SegmentFile;
use walrus_core::locks::MutexExt;

pub(crate) struct ReadCache {
    capacity: usize,
    inner: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    tick: u64,
    maps: HashMap<PathBuf, (Arc<SegmentFile>, u64)>,
}

impl ReadCache {
    pub fn new(capacity: usize) -> ReadCache {
        ReadCache {
            capacity: capacity.max(1),
            inner: Mutex::new(Lru::default()),
        }
    }

    /// The map of `path`, opened (outside the cache lock) if not cached.
    pub fn get(&self, path: &Path) -> Result<Arc<SegmentFile>> {
        {
            let mut lru = self.inner.lock_or_recover();
            lru.tick += 1;
            let tick = lru.tick;
            if let Some((file, used)) = lru.maps.get_mut(path) {
                *used = tick;
                return Ok(file.clone());
            }
        }
        let file = Arc::new(SegmentFile::open_ro(path)?);
        let mut lru = self.inner.lock_or_recover();
        lru.tick += 1;
        let tick = lru.tick;
        lru.maps.insert(path.to_path_buf(), (file.clone(), tick));
        while lru.maps.len() > self.capacity {
            let oldest = lru
                .maps
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(p, _)| p.clone())
                .expect("cache is over capacity, so not empty");
            lru.maps.remove(&oldest);
        }
        Ok(file)
    }

    /// Drops the maps of files under `dir` whose names `doomed` picks (a
    /// segment being deleted): readers that hold one keep it until done.
    pub fn forget(&self, dir: &Path, doomed: impl Fn(&str) -> bool) {
        let mut lru = self.inner.lock_or_recover();
        lru.maps.retain(|path, _| {
            !(path.parent() == Some(dir)
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(&doomed))
        });
    }

    pub fn len(&self) -> usize {
        self.inner.lock_or_recover().maps.len()
    }
}
