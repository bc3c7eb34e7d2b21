//! Encoding a [`Response`] as one frame.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::Error;
use crate::protocol::frame::encode_frame;
use crate::types::Offset;

/// A response to a client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `OK`
    Ok,
    /// `OK <payload>` (GET)
    Entry(Bytes),
    /// `EMPTY` (GET at the end of the topic)
    Empty,
    /// Bare JSON (STATE, METRICS, TOPICS)
    Json(String),
    /// `OK PONG`
    Pong,
    /// `ERR <text>`
    Err(String),
    /// A READ's answer: each entry with its offset, and the offset to ask
    /// for next. Encoded as
    /// `ENTRIES <n> <next>\n` then, per entry, `<offset> <length>\n`,
    /// exactly `<length>` payload bytes and `\n` (docs/protocol.md).
    Entries {
        entries: Vec<(Offset, Bytes)>,
        next: Offset,
    },
    /// A PUTB's answer: `OK <n> <first>`, the number of entries stored and
    /// the offset of the first, or `OK <n>` while that offset is not known
    /// yet (an earlier segment's count is pending).
    Stored { n: u64, first: Option<Offset> },
}

/// The bytes an entry adds to an `ENTRIES` answer besides its payload, at
/// most: two 20-digit numbers, a space and two newlines.
pub const ENTRY_OVERHEAD: usize = 43;
/// The `ENTRIES <n> <next>\n` line, at most.
pub const ENTRIES_HEADER: usize = 50;

impl From<Error> for Response {
    fn from(e: Error) -> Self {
        Response::Err(e.to_string())
    }
}

impl Response {
    /// Appends this response as one frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Response::Ok => encode_frame(out, b"OK"),
            Response::Entry(p) => {
                let mut body = Vec::with_capacity(3 + p.len());
                body.extend_from_slice(b"OK ");
                body.extend_from_slice(p);
                encode_frame(out, &body)
            }
            Response::Empty => encode_frame(out, b"EMPTY"),
            Response::Json(j) => encode_frame(out, j.as_bytes()),
            Response::Pong => encode_frame(out, b"OK PONG"),
            Response::Err(e) => encode_frame(out, format!("ERR {e}").as_bytes()),
            Response::Entries { entries, next } => {
                // Written in place, the length patched in at the end: a
                // READ answer is up to 1 MiB, and an intermediate body (and
                // a formatted string per entry) cost as much as the copy.
                let start = out.len();
                out.reserve(4 + self.encoded_len());
                out.put_u32_le(0);
                out.put_slice(b"ENTRIES ");
                put_decimal(out, entries.len() as u64);
                out.put_u8(b' ');
                put_decimal(out, *next);
                out.put_u8(b'\n');
                for (offset, payload) in entries {
                    put_decimal(out, *offset);
                    out.put_u8(b' ');
                    put_decimal(out, payload.len() as u64);
                    out.put_u8(b'\n');
                    out.put_slice(payload);
                    out.put_u8(b'\n');
                }
                let len = u32::try_from(out.len() - start - 4)
                    .expect("an ENTRIES answer holds at most about 1 MiB of payload");
                out[start..start + 4].copy_from_slice(&len.to_le_bytes());
            }
            Response::Stored { n, first } => match first {
                Some(first) => encode_frame(out, format!("OK {n} {first}").as_bytes()),
                None => encode_frame(out, format!("OK {n}").as_bytes()),
            },
        }
    }

    /// The length of this answer's body, at most (exact for all but
    /// `Entries`, where numbers are counted at their widest).
    pub fn encoded_len(&self) -> usize {
        match self {
            Response::Ok => 2,
            Response::Entry(p) => 3 + p.len(),
            Response::Empty => 5,
            Response::Json(j) => j.len(),
            Response::Pong => 7,
            Response::Err(e) => 4 + e.len(),
            Response::Stored { .. } => 43,
            Response::Entries { entries, .. } => {
                ENTRIES_HEADER
                    + entries
                        .iter()
                        .map(|(_, p)| ENTRY_OVERHEAD + p.len())
                        .sum::<usize>()
            }
        }
    }

    /// Parses a response body (the client's side).
    pub fn parse(body: &[u8]) -> Response {
        match body {
            b"OK" => Response::Ok,
            b"EMPTY" => Response::Empty,
            b"OK PONG" => Response::Pong,
            _ if body.starts_with(b"OK ") => Response::Entry(Bytes::copy_from_slice(&body[3..])),
            _ if body.starts_with(b"ENTRIES ") => match parse_entries(body) {
                Some((entries, next)) => Response::Entries { entries, next },
                None => Response::Json(String::from_utf8_lossy(body).into_owned()),
            },
            _ if body.starts_with(b"ERR ") => {
                Response::Err(String::from_utf8_lossy(&body[4..]).into_owned())
            }
            _ => Response::Json(String::from_utf8_lossy(body).into_owned()),
        }
    }
}

/// Parses an `ENTRIES` answer body: the entries with their offsets and
/// the next offset. `None` unless the body is exactly one well-formed
/// answer (every length matches, nothing after the last entry).
pub fn parse_entries(body: &[u8]) -> Option<(Vec<(Offset, Bytes)>, Offset)> {
    let (spans, next) = parse_entry_spans(body)?;
    let entries = spans
        .into_iter()
        .map(|(offset, span)| (offset, Bytes::copy_from_slice(&body[span])))
        .collect();
    Some((entries, next))
}

/// An entry of an `ENTRIES` answer: its offset, and where its payload lies
/// in the answer's body.
pub type EntrySpan = (Offset, Range<usize>);

/// [`parse_entries`] without copying: each entry's offset and where its
/// payload lies in `body` (a reader that owns the body slices it, e.g.
/// with `Bytes::slice`, and allocates nothing per entry).
pub fn parse_entry_spans(body: &[u8]) -> Option<(Vec<EntrySpan>, Offset)> {
    let rest = body.strip_prefix(b"ENTRIES ")?;
    let (n, rest) = number_until(rest, b' ')?;
    let (next, mut rest) = number_until(rest, b'\n')?;
    // Each entry takes at least 5 bytes: bound the allocation by the body.
    let mut entries = Vec::with_capacity((n as usize).min(rest.len() / 5));
    for _ in 0..n {
        let (offset, r) = number_until(rest, b' ')?;
        let (len, r) = number_until(r, b'\n')?;
        let len = usize::try_from(len).ok()?;
        if r.len() <= len || r[len] != b'\n' {
            return None;
        }
        let start = body.len() - r.len();
        entries.push((offset, start..start + len));
        rest = &r[len + 1..];
    }
    rest.is_empty().then_some((entries, next))
}

/// Appends `n` in ASCII decimal.
fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
}

/// A decimal number (ASCII digits only, at least one) up to `end`, and what
/// follows `end`.
fn number_until(s: &[u8], end: u8) -> Option<(u64, &[u8])> {
    let at = s.iter().position(|b| *b == end)?;
    let digits = &s[..at];
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((n, &s[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_encode_as_one_frame_each() {
        let mut out = BytesMut::new();
        Response::Ok.encode(&mut out);
        assert_eq!(&out[..], b"\x02\0\0\0OK");
        out.clear();
        Response::Err("topic not found".into()).encode(&mut out);
        assert_eq!(&out[4..], b"ERR topic not found");
        assert_eq!(out.len(), 4 + 19);
    }

    #[test]
    fn given_entries_with_spaces_and_newlines_should_encode_length_prefixed_and_parse_back() {
        let answer = Response::Entries {
            entries: vec![
                (7, Bytes::from_static(b"two words")),
                (8, Bytes::from_static(b"line\n8 3\nENTRIES 1 2\n")),
                (9, Bytes::from_static("é ü".as_bytes())),
            ],
            next: 10,
        };
        let mut out = BytesMut::new();
        answer.encode(&mut out);
        let body = &out[4..];
        assert_eq!(
            body,
            "ENTRIES 3 10\n7 9\ntwo words\n8 21\nline\n8 3\nENTRIES 1 2\n\n9 5\né ü\n".as_bytes()
        );
        assert!(body.len() <= answer.encoded_len());
        assert_eq!(Response::parse(body), answer);
        let (spans, next) = parse_entry_spans(body).unwrap();
        assert_eq!(next, 10);
        assert_eq!(&body[spans[1].1.clone()], b"line\n8 3\nENTRIES 1 2\n");
        let wide = Response::Entries {
            entries: vec![(u64::MAX, Bytes::from_static(b"x")), (0, Bytes::new())],
            next: 1,
        };
        out.clear();
        out.extend_from_slice(b"before");
        wide.encode(&mut out);
        let len = u32::from_le_bytes(out[6..10].try_into().unwrap()) as usize;
        assert_eq!(
            len,
            out.len() - 10,
            "the frame length counts the body exactly"
        );
        assert_eq!(
            &out[10..],
            format!("ENTRIES 2 1\n{} 1\nx\n0 0\n\n", u64::MAX).as_bytes()
        );
        let empty = Response::Entries {
            entries: vec![],
            next: 4,
        };
        out.clear();
        empty.encode(&mut out);
        assert_eq!(&out[4..], b"ENTRIES 0 4\n");
        assert_eq!(Response::parse(&out[4..]), empty);
    }

    #[test]
    fn given_a_malformed_entries_answer_should_not_parse_as_entries() {
        for bad in [
            &b"ENTRIES 1 5\n4 3\nab\n"[..],
            b"ENTRIES 1 5\n4 2\nab",
            b"ENTRIES 1 5\n4 2\nab\nx",
            b"ENTRIES 2 5\n4 2\nab\n",
            b"ENTRIES -1 5\n",
            b"ENTRIES 0 5",
            b"ENTRIES 99999999999999999999999 5\n",
        ] {
            assert_eq!(
                parse_entries(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
