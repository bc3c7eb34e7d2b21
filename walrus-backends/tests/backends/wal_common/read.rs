//! Reading a whole segment back, for the WAL tests.

use bytes::Bytes;
use walrus_backends::wal::WalStore;
use walrus_core::{LogStore, SegmentKey};

/// Every entry of `seg`, read in batches until the end.
pub async fn read_all(store: &WalStore, seg: &SegmentKey) -> Vec<Bytes> {
    let mut out = Vec::new();
    loop {
        let batch = store
            .read(seg, out.len() as u64, 500, usize::MAX)
            .await
            .unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}
