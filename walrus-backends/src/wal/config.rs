//! How a [`WalStore`](super::WalStore) stores and syncs: [`WalConfig`] and
//! its [`FsyncPolicy`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use walrus_core::{Error, Result};

/// When appended data is forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Every append returns only once it is on disk (group commit).
    #[default]
    Always,
    /// Appends return once written; a background flush runs this often.
    Interval(Duration),
    /// Appends return once written; data is flushed only by `sync`/`seal`
    /// (and the kernel's own writeback).
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = Error;

    /// Parses `always`, `never` or `interval:<ms>` (as given to `--fsync`
    /// or `WALRUS_FSYNC`).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::BadRequest(format!(
                "invalid fsync policy {s:?}: use \"always\", \"never\" or \"interval:<ms>\" with ms > 0 (e.g. interval:200)"
            ))
        };
        match s.trim() {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => {
                let ms = other.strip_prefix("interval:").ok_or_else(bad)?;
                let ms: u64 = ms.trim().parse().map_err(|_| bad())?;
                if ms == 0 {
                    return Err(bad());
                }
                Ok(FsyncPolicy::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::Interval(d) => write!(f, "interval:{}", d.as_millis()),
        }
    }
}

/// How a [`WalStore`] stores and syncs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    pub fsync: FsyncPolicy,
    /// Size of each mapped file; a segment spans several when it grows
    /// past one. Also bounds the size of one entry. 4 KiB ..= 4 GiB - 1.
    pub segment_file_bytes: u64,
    /// Read-only maps of sealed segments' files kept open at most.
    pub max_read_maps: usize,
    /// Zero-filled files kept ready (in the WAL directory, each
    /// `segment_file_bytes` long) for segments that need a new file:
    /// syncs into them are cheaper than into `fallocate`d ones, but every
    /// spare costs a whole file of background writes, which compete with
    /// the appenders' syncs while they run. 0 (the default, see
    /// docs/wal-performance.md) disables the pool: new files are fallocated.
    pub spare_files: usize,
    /// With `FsyncPolicy::Always`: write zeros ahead of the appenders
    /// (256 KiB at a time, up to 1 MiB ahead) and send them to disk, so
    /// that the blocks of the fallocated file are converted before the
    /// appenders' syncs reach them. Costs one extra write of each block;
    /// saves a metadata write in most syncs (default true).
    pub prepare_ahead: bool,
    /// Test seam: the reservation call (`fallocate`) answers `EOPNOTSUPP`,
    /// as on a file system without it, so that the fallback (writing
    /// zeros) can be tested anywhere. Always false outside tests.
    #[doc(hidden)]
    pub inject_fallocate_unsupported: bool,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            fsync: FsyncPolicy::Always,
            segment_file_bytes: 64 * 1024 * 1024,
            max_read_maps: 256,
            spare_files: 0,
            prepare_ahead: true,
            inject_fallocate_unsupported: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_policy_strings_when_parsed_should_accept_the_three_forms_only() {
        assert_eq!("always".parse::<FsyncPolicy>(), Ok(FsyncPolicy::Always));
        assert_eq!("never".parse::<FsyncPolicy>(), Ok(FsyncPolicy::Never));
        assert_eq!(
            "interval:200".parse::<FsyncPolicy>(),
            Ok(FsyncPolicy::Interval(Duration::from_millis(200)))
        );
        for bad in [
            "",
            "sometimes",
            "interval:",
            "interval:0",
            "interval:-1",
            "interval:x",
        ] {
            let err = bad.parse::<FsyncPolicy>().unwrap_err();
            assert!(err.to_string().contains("interval:<ms>"), "{bad:?}: {err}");
        }
        assert_eq!(
            FsyncPolicy::Interval(Duration::from_millis(200)).to_string(),
            "interval:200"
        );
    }
}
