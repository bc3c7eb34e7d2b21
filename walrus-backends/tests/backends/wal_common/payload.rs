//! The entries of the WAL crash test, shared by the child process that
//! writes them (`src/bin/wal-crash-child.rs`) and the test that checks them
//! (`tests/wal_crash.rs`), so the two can never disagree on the format.

use bytes::Bytes;

/// The payload of entry `seq` of `writer`: a header naming both and its own
/// length, then a pattern, so any entry can be checked on its own.
pub fn payload(writer: u32, seq: u64, len: usize) -> Bytes {
    let len = len.max(16);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&writer.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&(len as u32).to_le_bytes());
    for i in 16..len {
        v.push(((writer as u64 * 31 + seq * 7 + i as u64) % 251) as u8);
    }
    Bytes::from(v)
}
