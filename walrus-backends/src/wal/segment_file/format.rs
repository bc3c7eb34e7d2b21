//! What a WAL file holds on disk.
//!
//! Layout (all integers little endian):
//!
//! ```text
//! 0   magic  b"WALRUSWL"
//! 8   version u32 (= 1)
//! 12  part u32            which file of the segment this is (0, 1, ...)
//! 16  segment id u64
//! 24  file length u64     the length the file was created with
//! 32  checkpoint u64      records before this byte offset were durable
//! 40  crc32c u32          of bytes 0..40
//! 44  zero up to HEADER_LEN
//! HEADER_LEN: records [len u32][crc32c u32][payload], crc over len ++ payload
//! ```
//!
//! A record whose `len` is [`NEXT_MARKER`] ends the file: the segment goes
//! on in the next part. Every file keeps room for that marker.

use std::path::Path;

use walrus_core::{Error, Result};

pub(crate) const MAGIC: &[u8; 8] = b"WALRUSWL";
pub(crate) const VERSION: u32 = 1;
pub(crate) const HEADER_LEN: usize = 64;
pub(crate) const RECORD_HEADER: usize = 8;
/// `len` value of the record that says "continued in the next file".
pub(crate) const NEXT_MARKER: u32 = u32::MAX;
/// Smallest file that still holds one small record and the next marker.
pub(crate) const MIN_FILE_LEN: u64 = 4096;

/// What the header of a file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileHeader {
    pub part: u32,
    pub segment: u64,
    pub file_len: u64,
    pub checkpoint: u64,
}

impl FileHeader {
    pub(super) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.part.to_le_bytes());
        h[16..24].copy_from_slice(&self.segment.to_le_bytes());
        h[24..32].copy_from_slice(&self.file_len.to_le_bytes());
        h[32..40].copy_from_slice(&self.checkpoint.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..40]);
        h[40..44].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes a header. A header whose checksum fails but whose magic,
    /// version and identity fields are sane may have been torn while its
    /// checkpoint was rewritten: it is accepted with checkpoint 0 (nothing
    /// is known to be durable, so the whole file is treated as tail).
    pub(super) fn decode(h: &[u8], path: &Path) -> Result<FileHeader> {
        if h.len() < HEADER_LEN || &h[0..8] != MAGIC {
            return Err(Error::Corrupt(format!(
                "{} is not a Walrus WAL file (bad magic); move it out of the WAL directory",
                path.display()
            )));
        }
        let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(Error::Corrupt(format!(
                "{} has WAL format version {version}, this build reads version {VERSION}",
                path.display()
            )));
        }
        let mut header = FileHeader {
            part: u32::from_le_bytes(h[12..16].try_into().expect("4 bytes")),
            segment: u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")),
            file_len: u64::from_le_bytes(h[24..32].try_into().expect("8 bytes")),
            checkpoint: u64::from_le_bytes(h[32..40].try_into().expect("8 bytes")),
        };
        let crc = u32::from_le_bytes(h[40..44].try_into().expect("4 bytes"));
        if crc != crc32c::crc32c(&h[0..40]) {
            tracing::warn!(path = %path.display(), "WAL file header checksum mismatch; treating the whole file as unverified tail");
            header.checkpoint = HEADER_LEN as u64;
        }
        if header.file_len < MIN_FILE_LEN || header.file_len > u32::MAX as u64 {
            return Err(Error::Corrupt(format!(
                "{} header gives an impossible file length {}",
                path.display(),
                header.file_len
            )));
        }
        header.checkpoint = header.checkpoint.clamp(HEADER_LEN as u64, header.file_len);
        Ok(header)
    }
}

pub(crate) fn record_crc(len: u32, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), payload)
}
