//! The checker: the guarantees of docs/architecture.md, verified on one
//! run's [`History`] against the final [`Truth`].
//!
//! 1. No acknowledged entry lost (except unsynced entries a power cut or a
//!    failed sync dropped under relaxed syncs, which the `LogStore`
//!    contract allows for `fsync=interval/never`).
//! 2. No entry stored twice, none stored that no client wrote, none stored
//!    that was answered "not applied".
//! 3. Per topic, read order equals acknowledgement order for writes that
//!    did not overlap in time.
//! 4. Exact sealed counts (checked while the truth is read: `problems`).
//! 5. The GET cursor never passes durable data: everything a GET delivered
//!    is in the log; nothing is skipped beyond what lost GET answers may
//!    have taken; the persisted cursor is within the topic.
//!    A READ by offset returned, at each offset, the entry the final log
//!    holds there (an offset once given keeps naming the same entry).
//! 6. One writer per topic at a time: no acknowledged entry of a segment
//!    was appended after a later segment of its topic took its first
//!    append (two leases overlapping).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;

use crate::history::{History, Outcome, ReadResult, Truth};

fn show(p: &Bytes) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Every violation of the guarantees in one run; empty when it passed.
pub fn check(history: &History, truth: &Truth, dropped: &BTreeSet<Bytes>) -> Vec<String> {
    let mut out = history.violations.clone();
    out.extend(truth.problems.iter().cloned());

    // Where each payload is stored: (topic, position).
    let mut stored: BTreeMap<&Bytes, Vec<(&str, usize)>> = BTreeMap::new();
    for (topic, t) in &truth.topics {
        for (pos, e) in t.entries.iter().enumerate() {
            stored.entry(&e.payload).or_default().push((topic, pos));
        }
    }
    let written: BTreeMap<&Bytes, &crate::history::Write> =
        history.writes.iter().map(|w| (&w.payload, w)).collect();
    for (payload, places) in &stored {
        if places.len() > 1 {
            out.push(format!(
                "{} is stored {} times: {places:?}",
                show(payload),
                places.len()
            ));
        }
        match written.get(payload) {
            None => out.push(format!(
                "{} is stored but no client wrote it",
                show(payload)
            )),
            Some(w) if w.topic != places[0].0 => out.push(format!(
                "{} was written to {} but is stored in {}",
                show(payload),
                w.topic,
                places[0].0
            )),
            Some(w) if w.outcome == Outcome::NotApplied => out.push(format!(
                "{} was answered \"not applied\" (at {:?}) yet it is stored at {:?}",
                show(payload),
                w.done,
                places[0]
            )),
            Some(_) => {}
        }
    }
    for w in &history.writes {
        if w.outcome == Outcome::Acked && !stored.contains_key(&w.payload) {
            if dropped.contains(&w.payload) {
                continue;
            }
            out.push(format!(
                "{} was acknowledged at {:?} and is lost",
                show(&w.payload),
                w.done
            ));
        }
    }

    for (topic, t) in &truth.topics {
        check_order(topic, t, &written, &mut out);
        check_leases(topic, t, &written, &mut out);
        check_reads(topic, t, history, &mut out);
    }
    out
}

/// Acknowledged writes in read order: none may have been invoked after a
/// later one (in read order) was acknowledged.
fn check_order(
    topic: &str,
    t: &crate::history::TopicTruth,
    written: &BTreeMap<&Bytes, &crate::history::Write>,
    out: &mut Vec<String>,
) {
    let acked: Vec<&crate::history::Write> = t
        .entries
        .iter()
        .filter_map(|e| written.get(&e.payload).copied())
        .filter(|w| w.outcome == Outcome::Acked)
        .collect();
    // The earliest acknowledgement among the writes read after each one.
    let mut later_min: Option<(Duration, &crate::history::Write)> = None;
    for w in acked.iter().rev() {
        if let Some((done, other)) = later_min {
            if done < w.invoked {
                out.push(format!(
                    "{topic}: {} is read before {}, yet it was sent at {:?}, after {} was \
                     acknowledged at {:?}",
                    show(&w.payload),
                    show(&other.payload),
                    w.invoked,
                    show(&other.payload),
                    done
                ));
                return;
            }
        }
        if later_min.is_none_or(|(d, _)| w.done < d) {
            later_min = Some((w.done, w));
        }
    }
}

fn check_leases(
    topic: &str,
    t: &crate::history::TopicTruth,
    written: &BTreeMap<&Bytes, &crate::history::Write>,
    out: &mut Vec<String>,
) {
    // The first append to any segment after each one.
    let mut next_start: BTreeMap<u64, (Duration, u64)> = BTreeMap::new();
    let mut min: Option<(Duration, u64)> = None;
    for s in t.segments.iter().rev() {
        if let Some(m) = min {
            next_start.insert(s.id, m);
        }
        if let Some(f) = s.first_append {
            if min.is_none_or(|(d, _)| f < d) {
                min = Some((f, s.id));
            }
        }
    }
    for e in &t.entries {
        let (Some(appended), Some((start, later))) = (e.appended, next_start.get(&e.segment))
        else {
            continue;
        };
        let acked = written
            .get(&e.payload)
            .is_some_and(|w| w.outcome == Outcome::Acked);
        if acked && appended > *start {
            let leader = |id: u64| t.segments.iter().find(|s| s.id == id).map(|s| s.leader);
            out.push(format!(
                "{topic}: {} was appended to segment {} (node {:?}) at {appended:?} and \
                 acknowledged, after segment {later} (node {:?}) took its first append at \
                 {start:?}: two write leases overlapped",
                show(&e.payload),
                e.segment,
                leader(e.segment),
                leader(*later)
            ));
            return;
        }
    }
}

fn check_reads(
    topic: &str,
    t: &crate::history::TopicTruth,
    history: &History,
    out: &mut Vec<String>,
) {
    let in_log: BTreeSet<&Bytes> = t.entries.iter().map(|e| &e.payload).collect();
    let mut delivered = BTreeSet::new();
    let mut maybe = 0usize;
    for r in history.reads.iter().filter(|r| r.topic == topic) {
        match &r.result {
            ReadResult::Entry(p) => {
                if !in_log.contains(p) {
                    out.push(format!(
                        "{topic}: a GET delivered {}, which is not in the log: the cursor \
                         passed durable data",
                        show(p)
                    ));
                }
                delivered.insert(p);
            }
            ReadResult::Maybe => maybe += 1,
            ReadResult::Empty | ReadResult::NotApplied => {}
        }
    }
    let skipped: Vec<&Bytes> = t
        .entries
        .iter()
        .map(|e| &e.payload)
        .filter(|p| !delivered.contains(p))
        .collect();
    if skipped.len() > maybe {
        out.push(format!(
            "{topic}: {} entries were never delivered by GET ({}…), more than the {maybe} \
             GET answers lost",
            skipped.len(),
            show(skipped[0])
        ));
    }
    for r in history.reads_at.iter().filter(|r| r.topic == topic) {
        let held = t.entries.get(r.offset as usize).map(|e| &e.payload);
        if held != Some(&r.payload) {
            out.push(format!(
                "{topic}: READ at offset {} returned {}, but the log holds {} there",
                r.offset,
                show(&r.payload),
                held.map_or("nothing".into(), show)
            ));
        }
    }
    if t.cursor > t.entries.len() as u64 {
        out.push(format!(
            "{topic}: the persisted cursor {} is past the {} entries of the topic",
            t.cursor,
            t.entries.len()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Read, SegmentTruth, Stored, TopicTruth, Write};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn write(p: &str, invoked: u64, done: u64, outcome: Outcome) -> Write {
        Write {
            topic: "t".into(),
            payload: Bytes::copy_from_slice(p.as_bytes()),
            invoked: ms(invoked),
            done: ms(done),
            outcome,
        }
    }

    fn stored(p: &str, segment: u64, appended: u64) -> Stored {
        Stored {
            payload: Bytes::copy_from_slice(p.as_bytes()),
            segment,
            appended: Some(ms(appended)),
        }
    }

    /// Two acknowledged writes a then b, stored and read in that order.
    fn good() -> (History, Truth) {
        let mut h = History::default();
        h.writes.push(write("a", 0, 10, Outcome::Acked));
        h.writes.push(write("b", 20, 30, Outcome::Acked));
        for p in ["a", "b"] {
            h.reads.push(Read {
                topic: "t".into(),
                result: ReadResult::Entry(Bytes::copy_from_slice(p.as_bytes())),
            });
        }
        let mut t = Truth::default();
        t.topics.insert(
            "t".into(),
            TopicTruth {
                entries: vec![stored("a", 1, 5), stored("b", 2, 25)],
                segments: vec![
                    SegmentTruth {
                        id: 1,
                        leader: 1,
                        first_append: Some(ms(5)),
                    },
                    SegmentTruth {
                        id: 2,
                        leader: 2,
                        first_append: Some(ms(25)),
                    },
                ],
                cursor: 2,
            },
        );
        (h, t)
    }

    fn entries(t: &mut Truth) -> &mut Vec<Stored> {
        &mut t.topics.get_mut("t").unwrap().entries
    }

    #[test]
    fn given_a_correct_run_should_find_nothing() {
        let (h, t) = good();
        assert_eq!(check(&h, &t, &BTreeSet::new()), Vec::<String>::new());
    }

    #[test]
    fn given_an_acknowledged_entry_missing_should_report_it_lost_unless_dropped_unsynced() {
        let (h, mut t) = good();
        entries(&mut t).pop();
        let v = check(&h, &t, &BTreeSet::new());
        assert!(v.iter().any(|v| v.contains("b was acknowledged")), "{v:?}");
        let dropped = BTreeSet::from([Bytes::from_static(b"b")]);
        let v = check(&h, &t, &dropped);
        assert!(!v.iter().any(|v| v.contains("lost")), "{v:?}");
    }

    #[test]
    fn given_an_entry_stored_twice_or_not_applied_should_report_it() {
        let (mut h, mut t) = good();
        entries(&mut t).push(stored("a", 2, 26));
        let v = check(&h, &t, &BTreeSet::new());
        assert!(v.iter().any(|v| v.contains("stored 2 times")), "{v:?}");
        let (_, t) = good();
        h.writes[1].outcome = Outcome::NotApplied;
        let v = check(&h, &t, &BTreeSet::new());
        assert!(v.iter().any(|v| v.contains("not applied")), "{v:?}");
    }

    #[test]
    fn given_reads_out_of_acknowledgement_order_should_report_only_non_overlapping_writes() {
        let (h, mut t) = good();
        entries(&mut t).swap(0, 1);
        let v = check(&h, &t, &BTreeSet::new());
        assert!(v.iter().any(|v| v.contains("b is read before a")), "{v:?}");
        // Overlapping in time: either order is right.
        let (mut h, mut t) = good();
        h.writes[1].invoked = ms(5);
        entries(&mut t).swap(0, 1);
        let v = check(&h, &t, &BTreeSet::new());
        assert!(!v.iter().any(|v| v.contains("read before")), "{v:?}");
    }

    #[test]
    fn given_an_acknowledged_append_after_the_next_segment_started_should_report_overlapping_leases(
    ) {
        let (h, mut t) = good();
        entries(&mut t)[0].appended = Some(ms(26));
        let v = check(&h, &t, &BTreeSet::new());
        assert!(v.iter().any(|v| v.contains("leases overlapped")), "{v:?}");
    }

    #[test]
    fn given_a_read_by_offset_when_the_log_holds_another_entry_there_should_report_it() {
        let (mut h, t) = good();
        let at = |offset, p: &'static [u8]| crate::history::ReadAt {
            topic: "t".into(),
            offset,
            payload: Bytes::from_static(p),
        };
        h.reads_at.push(at(1, b"b"));
        assert_eq!(check(&h, &t, &BTreeSet::new()), Vec::<String>::new());
        h.reads_at.push(at(0, b"b"));
        h.reads_at.push(at(5, b"a"));
        let v = check(&h, &t, &BTreeSet::new());
        assert!(v.iter().any(|v| v.contains("offset 0 returned b")), "{v:?}");
        assert!(v.iter().any(|v| v.contains("holds nothing")), "{v:?}");
    }

    #[test]
    fn given_a_get_of_an_entry_not_in_the_log_or_a_skip_should_report_the_cursor() {
        let (mut h, t) = good();
        h.reads[0].result = ReadResult::Entry(Bytes::from_static(b"ghost"));
        let v = check(&h, &t, &BTreeSet::new());
        assert!(v.iter().any(|v| v.contains("passed durable data")), "{v:?}");
        assert!(v.iter().any(|v| v.contains("never delivered")), "{v:?}");
        h.reads[0].result = ReadResult::Maybe;
        let v = check(&h, &t, &BTreeSet::new());
        assert!(!v.iter().any(|v| v.contains("never delivered")), "{v:?}");
    }
}
