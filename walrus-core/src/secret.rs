//! Credentials (client tokens, the cluster secret) held so that they
//! cannot leak by accident: `Debug` and `Display` print `<redacted>`, and
//! equality is only the constant-time [`Secret::matches`].

use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A credential's bytes. Cloning shares them. There is deliberately no
/// `PartialEq`: `==` on byte slices returns at the first difference, which
/// tells an attacker who can time answers how much of a guess was right.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(Arc::from(bytes.into()))
    }

    /// The bytes themselves, for the code that must send or MAC them.
    /// Never log or display what this returns.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `candidate` is this secret, in time that depends only on
    /// the lengths (which a guesser learns nothing useful from), not on
    /// where the first differing byte is.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        constant_time_eq(&self.0, candidate)
    }

    /// Reads a secret kept alone in a file (`--cluster-secret-file`,
    /// `walrus-cli --token-file`): the file's text without surrounding
    /// whitespace, so an editor's final newline does not count. `what`
    /// names it in errors; errors never quote the file's content.
    pub fn read_file(path: &Path, what: &str) -> Result<Secret, String> {
        let text = std::fs::read(path)
            .map_err(|e| format!("cannot read the {what} file {}: {e}", path.display()))?;
        let trimmed = text.trim_ascii();
        if trimmed.is_empty() {
            return Err(format!(
                "the {what} file {} is empty; put the {what} in it",
                path.display()
            ));
        }
        Ok(Secret::new(trimmed))
    }
}

/// Compares every byte whatever the differences (the lengths aside).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early
    // exit.
    std::hint::black_box(diff) == 0
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_secret_when_formatted_should_never_show_its_bytes() {
        let s = Secret::new("hunter2-hunter2-hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(<redacted>)");
        assert!(!format!("{s:#?}").contains("hunter2"));
    }

    #[test]
    fn given_candidates_should_match_only_the_same_bytes() {
        let s = Secret::new("abcdef");
        assert!(s.matches(b"abcdef"));
        assert!(!s.matches(b"abcdeg"));
        assert!(!s.matches(b"abcde"));
        assert!(!s.matches(b"abcdefg"));
        assert!(!s.matches(b""));
    }

    #[test]
    fn given_a_secret_file_should_trim_it_and_refuse_an_empty_one_without_quoting_it() {
        let dir = std::env::temp_dir().join(format!("walrus-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "  s3cret-value\n").unwrap();
        assert!(Secret::read_file(&path, "cluster secret")
            .unwrap()
            .matches(b"s3cret-value"));
        std::fs::write(&path, "\n \n").unwrap();
        let err = Secret::read_file(&path, "cluster secret").unwrap_err();
        assert!(err.contains("is empty"), "{err}");
        let err = Secret::read_file(&dir.join("missing"), "token").unwrap_err();
        assert!(err.contains("cannot read the token file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
