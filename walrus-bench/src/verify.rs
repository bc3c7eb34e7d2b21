//! `--verify`: read every topic back through GET and check that each
//! acknowledged payload came back exactly once, intact.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::BytesMut;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use walrus_core::protocol::encode_frame;

use crate::payload::{split_id, Decoded, PayloadCodec};
use crate::wire::{classify, excerpt, take_frame, Answer};

/// What the read-back found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// PUTs answered `OK`.
    pub acked: u64,
    /// Entries of this run read back (during a mixed run and after it).
    pub read: u64,
    /// Acknowledged but never read back: lost writes.
    pub missing: u64,
    /// Read back more than once.
    pub duplicated: u64,
    /// Read back, but their PUT got an error or no answer (allowed: the
    /// server may have stored it before failing to answer).
    pub unacked_present: u64,
    /// Carrying this run's header but not the bytes written.
    pub corrupt: u64,
    /// Entries of other runs or clients found in the topics (not judged).
    pub foreign: u64,
    /// Entries of one connection on one topic read in another order than
    /// they were acknowledged.
    pub out_of_order: u64,
    /// Error answers to read-back GETs, by text (retried).
    pub read_errors: BTreeMap<String, u64>,
    /// Why the read-back of a topic stopped before its end, if it did:
    /// then entries may be missing only because they were not reached.
    pub read_stopped: Vec<String>,
    /// A few missing entries as `topic#connection/sequence`, to look up.
    pub missing_examples: Vec<String>,
    /// True when nothing acknowledged was lost, duplicated, corrupted or
    /// reordered, and the read-back completed.
    pub ok: bool,
}

impl VerifyReport {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "  verify: {} — {} acknowledged, {} read back, {} missing, {} duplicated, \
             {} corrupt, {} out of order, {} present without ack, {} foreign\n",
            if self.ok { "OK" } else { "FAILED" },
            self.acked,
            self.read,
            self.missing,
            self.duplicated,
            self.corrupt,
            self.out_of_order,
            self.unacked_present,
            self.foreign,
        );
        for (text, n) in &self.read_errors {
            s.push_str(&format!("    read-back error x{n} (retried): {text}\n"));
        }
        for why in &self.read_stopped {
            s.push_str(&format!("    read-back incomplete: {why}\n"));
        }
        if !self.missing_examples.is_empty() {
            s.push_str(&format!(
                "    missing e.g.: {}\n",
                self.missing_examples.join(", ")
            ));
        }
        s
    }
}

/// Compares what was acknowledged with what was read.
///
/// `acked` holds `(topic index, entry id)`. `readers` holds, for each reader
/// (a connection that sent GETs, or the read-back of one topic), what it
/// read in the order it read it: one reader sharing a cursor with others
/// sees a subsequence of the log, so its reads of one writer's entries must
/// still be in acknowledgement order.
pub fn check(
    acked: &[(u32, u64)],
    readers: &[Vec<(u32, Decoded)>],
    read_errors: BTreeMap<String, u64>,
    read_stopped: Vec<String>,
) -> VerifyReport {
    let mut r = VerifyReport {
        acked: acked.len() as u64,
        read_errors,
        read_stopped,
        ..VerifyReport::default()
    };
    // For each acknowledged id: how often it was read.
    let mut times_read: HashMap<(u32, u64), u32> = acked.iter().map(|&k| (k, 0)).collect();
    let mut unacked_seen: HashMap<(u32, u64), u32> = HashMap::new();
    let mut last_seq: HashMap<(usize, u32, usize), u64> = HashMap::new();
    for (reader, &(topic, d)) in readers
        .iter()
        .enumerate()
        .flat_map(|(i, reads)| reads.iter().map(move |r| (i, r)))
    {
        let id = match d {
            Decoded::Ours(id) => id,
            Decoded::Foreign => {
                r.foreign += 1;
                continue;
            }
            Decoded::Corrupt => {
                r.corrupt += 1;
                continue;
            }
        };
        r.read += 1;
        let seen = match times_read.get_mut(&(topic, id)) {
            Some(n) => n,
            None => {
                r.unacked_present += 1;
                unacked_seen.entry((topic, id)).or_insert(0)
            }
        };
        *seen += 1;
        if *seen == 2 {
            r.duplicated += 1;
        }
        let (conn, seq) = split_id(id);
        match last_seq.insert((reader, topic, conn), seq) {
            Some(prev) if prev >= seq => r.out_of_order += 1,
            _ => {}
        }
    }
    let mut missing: Vec<(u32, u64)> = times_read
        .iter()
        .filter(|(_, &n)| n == 0)
        .map(|(&k, _)| k)
        .collect();
    missing.sort_unstable();
    r.missing = missing.len() as u64;
    r.missing_examples = missing
        .iter()
        .take(5)
        .map(|&(topic, id)| {
            let (conn, seq) = split_id(id);
            format!("topic{topic}#{conn}/{seq}")
        })
        .collect();
    r.ok = r.missing == 0
        && r.duplicated == 0
        && r.corrupt == 0
        && r.out_of_order == 0
        && r.read_stopped.is_empty();
    r
}

/// Reads `topic` through GET until `EMPTY`, `depth` GETs in flight.
///
/// Error answers are counted in `errors` and retried; after many in a row,
/// or when `deadline` passes, it gives up and says why in `stopped`.
pub async fn read_topic(
    to: Target<'_>,
    topic: &str,
    codec: &PayloadCodec,
    depth: usize,
    deadline: Instant,
    errors: &mut BTreeMap<String, u64>,
    stopped: &mut Vec<String>,
) -> Vec<Decoded> {
    match read_topic_inner(to, topic, codec, depth, deadline, errors).await {
        Ok(found) => found,
        Err((found, e)) => {
            stopped.push(format!("{e:#}"));
            found
        }
    }
}

/// Where the read-back connects, and the token it authenticates with.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub addr: &'a str,
    pub token: Option<&'a walrus_core::Secret>,
}

async fn read_topic_inner(
    to: Target<'_>,
    topic: &str,
    codec: &PayloadCodec,
    depth: usize,
    deadline: Instant,
    errors: &mut BTreeMap<String, u64>,
) -> Result<Vec<Decoded>, (Vec<Decoded>, anyhow::Error)> {
    const MAX_ERRORS_IN_A_ROW: u32 = 200;
    let addr = to.addr;
    let mut found = Vec::new();
    let mut stream = match TcpStream::connect(addr)
        .await
        .with_context(|| format!("read-back cannot connect to {addr}"))
    {
        Ok(s) => s,
        Err(e) => return Err((found, e)),
    };
    let _ = stream.set_nodelay(true);
    if let Some(token) = to.token {
        if let Err(e) = crate::wire::authenticate(&mut stream, token).await {
            return Err((found, anyhow::anyhow!("read-back at {addr}: {e}")));
        }
    }
    let mut request = BytesMut::new();
    encode_frame(&mut request, format!("GET {topic}").as_bytes());
    let mut out = Vec::new();
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let mut in_flight = 0usize;
    let mut reached_end = false;
    let mut errors_in_a_row = 0u32;
    loop {
        if !reached_end {
            while in_flight < depth.max(1) {
                out.extend_from_slice(&request);
                in_flight += 1;
            }
            if let Err(e) = stream.write_all(&out).await {
                return Err((found, anyhow!("read-back of {topic}: {e}")));
            }
            out.clear();
        }
        if in_flight == 0 {
            return Ok(found);
        }
        let n = match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => {
                return Err((
                    found,
                    anyhow!("read-back of {topic} did not reach the end in time"),
                ))
            }
            Ok(Err(e)) => return Err((found, anyhow!("read-back of {topic}: {e}"))),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err((
                found,
                anyhow!("server closed the connection during the read-back of {topic}"),
            ));
        }
        loop {
            let body = match take_frame(&mut buf) {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => return Err((found, anyhow!(e))),
            };
            in_flight -= 1;
            match classify(&body) {
                Answer::Entry(p) => {
                    errors_in_a_row = 0;
                    found.push(codec.decode(p));
                }
                Answer::Empty => reached_end = true,
                Answer::Err(text) => {
                    *errors.entry(format!("GET: {text}")).or_insert(0) += 1;
                    errors_in_a_row += 1;
                    if errors_in_a_row >= MAX_ERRORS_IN_A_ROW {
                        return Err((
                            found,
                            anyhow!("read-back of {topic} gave up after {MAX_ERRORS_IN_A_ROW} errors in a row"),
                        ));
                    }
                    // Back off a little so a transient condition can pass.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Answer::Ok | Answer::Other(_) => {
                    return Err((
                        found,
                        anyhow!("unexpected answer to GET: {}", excerpt(&body)),
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::entry_id;

    fn ours(conn: usize, seq: u64) -> Decoded {
        Decoded::Ours(entry_id(conn, seq))
    }

    #[test]
    fn given_every_ack_read_once_in_order_when_checked_should_pass() {
        let acked = vec![
            (0, entry_id(0, 0)),
            (0, entry_id(0, 1)),
            (1, entry_id(1, 0)),
        ];
        let reads = vec![(0, ours(0, 0)), (1, ours(1, 0)), (0, ours(0, 1))];
        let r = check(&acked, &[reads], BTreeMap::new(), Vec::new());
        assert!(r.ok, "{r:?}");
        assert_eq!((r.acked, r.read, r.missing), (3, 3, 0));
    }

    #[test]
    fn given_a_lost_write_when_checked_should_fail_and_name_it() {
        let acked = vec![(0, entry_id(0, 0)), (0, entry_id(0, 1))];
        let reads = vec![(0, ours(0, 0))];
        let r = check(&acked, &[reads], BTreeMap::new(), Vec::new());
        assert!(!r.ok);
        assert_eq!(r.missing, 1);
        assert_eq!(r.missing_examples, vec!["topic0#0/1".to_string()]);
    }

    #[test]
    fn given_a_write_read_twice_when_checked_should_count_a_duplicate() {
        let acked = vec![(0, entry_id(0, 0))];
        let reads = vec![(0, ours(0, 0)), (0, ours(0, 0))];
        let r = check(&acked, &[reads], BTreeMap::new(), Vec::new());
        assert!(!r.ok);
        assert_eq!(r.duplicated, 1);
    }

    #[test]
    fn given_an_entry_read_from_the_wrong_topic_when_checked_should_be_missing_there() {
        let acked = vec![(0, entry_id(0, 0))];
        let reads = vec![(1, ours(0, 0))];
        let r = check(&acked, &[reads], BTreeMap::new(), Vec::new());
        assert_eq!((r.missing, r.unacked_present), (1, 1));
        assert!(!r.ok);
    }

    #[test]
    fn given_two_readers_sharing_a_cursor_when_checked_should_judge_order_per_reader() {
        let acked: Vec<_> = (0..4).map(|s| (0, entry_id(0, s))).collect();
        let readers = vec![
            vec![(0, ours(0, 1)), (0, ours(0, 3))],
            vec![(0, ours(0, 0)), (0, ours(0, 2))],
        ];
        let r = check(&acked, &readers, BTreeMap::new(), Vec::new());
        assert!(r.ok, "{r:?}");
    }

    #[test]
    fn given_reordered_entries_of_one_connection_when_checked_should_fail() {
        let acked = vec![(0, entry_id(0, 0)), (0, entry_id(0, 1))];
        let reads = vec![(0, ours(0, 1)), (0, ours(0, 0))];
        let r = check(&acked, &[reads], BTreeMap::new(), Vec::new());
        assert_eq!(r.out_of_order, 1);
        assert!(!r.ok);
    }

    #[test]
    fn given_unacked_and_foreign_entries_when_checked_should_count_but_pass() {
        let acked = vec![(0, entry_id(0, 0))];
        let reads = vec![
            (0, Decoded::Foreign),
            (0, ours(0, 0)),
            (0, ours(0, 1)), // its PUT timed out, but it landed: allowed
        ];
        let r = check(&acked, &[reads], BTreeMap::new(), Vec::new());
        assert!(r.ok, "{r:?}");
        assert_eq!((r.foreign, r.unacked_present), (1, 1));
    }

    #[test]
    fn given_corruption_or_an_incomplete_read_back_when_checked_should_fail() {
        let acked = vec![(0, entry_id(0, 0))];
        let r = check(
            &acked,
            &[vec![(0, ours(0, 0)), (0, Decoded::Corrupt)]],
            BTreeMap::new(),
            Vec::new(),
        );
        assert_eq!(r.corrupt, 1);
        assert!(!r.ok);

        let stopped = vec!["read-back did not reach the end in time".to_string()];
        let r = check(&acked, &[vec![(0, ours(0, 0))]], BTreeMap::new(), stopped);
        assert!(!r.ok);

        let mut retried = BTreeMap::new();
        retried.insert("GET: write lease expired".to_string(), 3);
        let r = check(&acked, &[vec![(0, ours(0, 0))]], retried, Vec::new());
        assert!(
            r.ok,
            "errors that were retried do not fail a complete read-back"
        );
    }
}
