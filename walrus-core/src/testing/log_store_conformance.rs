//! A conformance suite for any [`LogStore`]: points 1–6 and 10–12 of its
//! contract.
//!
//! Run everything with [`run_all`], giving it a function that makes a fresh,
//! empty store each time:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread")]
//! async fn my_store_conforms() {
//!     walrus_core::testing::log_store_conformance::run_all(|| MyStore::new()).await;
//! }
//! ```
//!
//! Or call the scenarios one by one (each takes a fresh store) to see
//! failures separately. A failing check panics with what was expected.
//!
//! Durability across a crash (contract 1 in full, 7 and 8) needs a real
//! disk and a killed process: backends test that themselves.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::Error;
use crate::locks::MutexExt;
use crate::log_store::{Appended, LogStore, SegmentInfo, SegmentLimit};
use crate::types::{SegmentKey, TopicName};

fn key(topic: &str, segment: u64) -> SegmentKey {
    SegmentKey::new(TopicName::new(topic).expect("valid test topic"), segment)
}

fn entries(prefix: &str, n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{prefix}-{i}")))
        .collect()
}

async fn read_all<S: LogStore>(store: &S, seg: &SegmentKey) -> Vec<Bytes> {
    let mut out = Vec::new();
    loop {
        let batch = store
            .read(seg, out.len() as u64, 1000, usize::MAX)
            .await
            .expect("read should succeed");
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

/// Runs every scenario, each on a fresh store from `make`. A store whose
/// data outlives it (on disk) should run [`run_all_with_restart`] instead.
pub async fn run_all<S: LogStore>(make: impl Fn() -> S) {
    run_all_with_restart(make, |store| store).await;
}

/// Runs every scenario, each on a fresh store from `make`; the scenarios
/// about durability across a restart call `restart` with a store to close
/// it (gracefully) and open it again on the same data. A store without
/// durable data passes the same store back.
pub async fn run_all_with_restart<S: LogStore>(make: impl Fn() -> S, restart: impl Fn(S) -> S) {
    given_appends_when_read_back_should_return_entries_in_order_with_contiguous_indexes(make())
        .await;
    given_empty_and_binary_payloads_when_read_should_return_them_byte_for_byte(make()).await;
    given_read_limits_when_reading_should_respect_max_entries_and_max_bytes(make()).await;
    given_unknown_segments_when_queried_should_be_empty_and_none(make()).await;
    given_concurrent_appenders_when_done_should_have_exact_count_and_whole_batches(make()).await;
    given_concurrent_reader_when_appending_should_only_see_completed_entries(make()).await;
    given_a_limit_when_appending_past_it_should_refuse_and_write_nothing(make()).await;
    given_a_sealed_segment_when_appending_should_refuse_and_keep_its_count(make()).await;
    given_an_unknown_segment_when_sealed_should_be_sealed_with_count_zero(make()).await;
    given_several_segments_when_listed_should_report_each_with_its_info(make()).await;
    given_sync_when_called_should_succeed_and_change_nothing(make()).await;
    given_entries_at_the_tail_when_read_should_serve_them_at_once_and_count_them(make()).await;
    given_a_byte_limit_when_appending_past_it_should_refuse_and_write_nothing(make()).await;
    given_a_sealed_segment_when_deleted_should_be_gone_and_leave_the_others_whole(make()).await;
    given_an_open_segment_when_deleted_should_refuse_and_keep_it_whole(make()).await;
    given_a_gap_when_appending_at_should_refuse_and_write_nothing(make()).await;
    given_held_entries_when_appending_at_an_overlap_should_skip_them_and_append_the_rest(make())
        .await;
    given_concurrent_retransmits_when_appending_at_should_store_each_index_once(make()).await;
    given_a_sealed_segment_when_entries_are_retransmitted_should_accept_held_ones_only(make())
        .await;
    given_a_longer_tail_when_sealed_at_a_lower_count_should_never_serve_the_cut_entries(make())
        .await;
    given_a_sealed_segment_when_sealed_at_again_should_accept_its_count_only(make()).await;
    given_fewer_entries_when_sealed_at_a_higher_count_should_refuse_and_change_nothing(make())
        .await;
    given_a_cut_tail_when_the_store_restarts_should_stay_cut_and_sealed(make(), &restart).await;
    given_an_append_told_when_written_should_tell_its_first_index_once_and_only_when_it_wrote(
        make(),
    )
    .await;
}

/// `append_within_then`: `written` hears the first index of every append
/// that wrote, once, by the time it returns; never of a refused one.
pub async fn given_an_append_told_when_written_should_tell_its_first_index_once_and_only_when_it_wrote<
    S: LogStore,
>(
    store: S,
) {
    let seg = key("conf-written", 1);
    let heard = std::sync::Mutex::new(Vec::new());
    let tell = |first: u64| heard.lock_or_recover().push(first);
    let limit = SegmentLimit::entries(5);
    let a = store
        .append_within_then(&seg, &entries("a", 2), limit, &tell)
        .await
        .expect("room for 2");
    let b = store
        .append_within_then(&seg, &entries("b", 3), limit, &tell)
        .await
        .expect("2 + 3 == 5 fits");
    let refused = store
        .append_within_then(&seg, &entries("c", 1), limit, &tell)
        .await;
    assert_eq!(
        refused,
        Err(Error::SegmentSealed(seg.clone())),
        "past the limit"
    );
    assert_eq!((a.first_index, b.first_index), (0, 2));
    assert_eq!(
        *heard.lock_or_recover(),
        vec![0, 2],
        "each written append told once, with its first index; the refused one not"
    );
    let mut all = entries("a", 2);
    all.extend(entries("b", 3));
    assert_eq!(read_all(&store, &seg).await, all);
}

/// Contract 11: a gap is refused and writes nothing, not even the segment.
pub async fn given_a_gap_when_appending_at_should_refuse_and_write_nothing<S: LogStore>(store: S) {
    let seg = key("conf-at-gap", 1);
    match store.append_at(&seg, 1, &entries("g", 2)).await {
        Err(Error::BadRequest(why)) => assert!(
            why.contains("0..1"),
            "the refusal should name the missing entries 0..1: {why}"
        ),
        other => panic!("entries from 1 on an empty segment leave a gap, got {other:?}"),
    }
    assert_eq!(
        store.info(&seg).await.expect("info"),
        None,
        "nothing written"
    );
    store
        .append_at(&seg, 0, &entries("g", 2))
        .await
        .expect("append_at from 0");
    for first in [3, 10, u64::MAX] {
        assert!(
            matches!(
                store.append_at(&seg, first, &entries("h", 1)).await,
                Err(Error::BadRequest(_))
            ),
            "first {first} is past the count 2"
        );
    }
    store.sync().await.expect("sync");
    assert_eq!(read_all(&store, &seg).await, entries("g", 2));
}

/// Contract 11: entries already held are skipped (a retransmit), the rest
/// is appended; `append` and `append_at` continue each other.
pub async fn given_held_entries_when_appending_at_an_overlap_should_skip_them_and_append_the_rest<
    S: LogStore,
>(
    store: S,
) {
    let seg = key("conf-at-overlap", 1);
    let all = entries("o", 8);
    assert_eq!(
        store.append_at(&seg, 0, &all[0..3]).await.expect("0..3"),
        Appended {
            first_index: 0,
            count: 3
        }
    );
    assert_eq!(
        store.append_at(&seg, 1, &all[1..5]).await.expect("1..5"),
        Appended {
            first_index: 1,
            count: 5
        },
        "1..3 skipped, 3..5 appended"
    );
    assert_eq!(
        store.append_at(&seg, 2, &all[2..4]).await.expect("2..4"),
        Appended {
            first_index: 2,
            count: 5
        },
        "everything held: nothing written"
    );
    store
        .append_at(&seg, 5, &[])
        .await
        .expect("an empty append_at at the count is harmless");
    let a = store
        .append(&seg, &all[5..6], u64::MAX)
        .await
        .expect("append");
    assert_eq!(a.first_index, 5, "append goes on after append_at");
    store
        .append_at(&seg, 6, &all[6..8])
        .await
        .expect("append_at goes on after append");
    assert_eq!(read_all(&store, &seg).await, all);
    assert_eq!(
        store.info(&seg).await.expect("info"),
        Some(SegmentInfo {
            count: 8,
            sealed: false
        })
    );
}

/// Contract 11 under concurrency: retransmits racing each other store
/// every index once (the overlap check and the write are one step).
pub async fn given_concurrent_retransmits_when_appending_at_should_store_each_index_once<
    S: LogStore,
>(
    store: S,
) {
    const TASKS: usize = 4;
    let store = Arc::new(store);
    let seg = key("conf-at-concurrent", 1);
    let all = entries("c", 120);
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let (store, seg, all) = (store.clone(), seg.clone(), all.clone());
        handles.push(tokio::spawn(async move {
            // Each task sends the whole sequence in its own batch size, so
            // it never leaves a gap of its own; the others overlap it.
            let step = 2 + t;
            for first in (0..all.len()).step_by(step) {
                let end = (first + step).min(all.len());
                let a = store
                    .append_at(&seg, first as u64, &all[first..end])
                    .await
                    .expect("append_at");
                assert!(a.count >= end as u64, "count {} < {end}", a.count);
            }
        }));
    }
    for h in handles {
        h.await.expect("retransmitting task panicked");
    }
    assert_eq!(read_all(&*store, &seg).await, all);
}

/// Contract 11: after the seal, a retransmit of held entries is `Ok`, one
/// carrying anything new is `SegmentSealed`.
pub async fn given_a_sealed_segment_when_entries_are_retransmitted_should_accept_held_ones_only<
    S: LogStore,
>(
    store: S,
) {
    let seg = key("conf-at-sealed", 1);
    let all = entries("r", 4);
    store.append_at(&seg, 0, &all[0..3]).await.expect("0..3");
    assert_eq!(store.seal(&seg).await.expect("seal"), 3);
    let again = store
        .append_at(&seg, 1, &all[1..3])
        .await
        .expect("a retransmit of held entries after the seal");
    assert_eq!(again.count, 3);
    for (first, batch) in [(2, &all[2..4]), (3, &all[3..4])] {
        match store.append_at(&seg, first, batch).await {
            Err(Error::SegmentSealed(k)) => assert_eq!(k, seg),
            other => panic!("entries past the seal should be refused, got {other:?}"),
        }
    }
    assert_eq!(read_all(&store, &seg).await, all[0..3]);
}

/// Contract 12: a tail past the sealed count is cut: never read, counted,
/// listed, or appended to; held entries stay.
pub async fn given_a_longer_tail_when_sealed_at_a_lower_count_should_never_serve_the_cut_entries<
    S: LogStore,
>(
    store: S,
) {
    let seg = key("conf-seal-at", 1);
    let all = entries("t", 5);
    // No sync first: under a relaxed policy the tail may not be durable
    // yet, and the cut must not care.
    store.append(&seg, &all, u64::MAX).await.expect("append");
    assert_eq!(store.seal_at(&seg, 3).await.expect("seal_at 3"), 3);
    assert_cut(&store, &seg, &all[0..3]).await;
    match store.append(&seg, &entries("late", 1), u64::MAX).await {
        Err(Error::SegmentSealed(_)) => {}
        other => panic!("an append after seal_at should be refused, got {other:?}"),
    }
    assert!(matches!(
        store.append_at(&seg, 3, &all[3..4]).await,
        Err(Error::SegmentSealed(_))
    ));
    assert_eq!(
        store
            .append_at(&seg, 1, &all[1..3])
            .await
            .expect("a retransmit of held entries")
            .count,
        3,
        "the count after the cut"
    );
    assert_eq!(store.seal(&seg).await.expect("seal"), 3);
    // At the full count nothing is cut; at 0 everything is.
    let whole = key("conf-seal-at", 2);
    store.append(&whole, &all, u64::MAX).await.expect("append");
    assert_eq!(store.seal_at(&whole, 5).await.expect("seal_at 5"), 5);
    assert_cut(&store, &whole, &all).await;
    let none = key("conf-seal-at", 3);
    store.append(&none, &all, u64::MAX).await.expect("append");
    assert_eq!(store.seal_at(&none, 0).await.expect("seal_at 0"), 0);
    assert_cut(&store, &none, &[]).await;
    store
        .delete(&seg)
        .await
        .expect("a segment sealed by seal_at can be deleted");
    assert_eq!(store.info(&seg).await.expect("info"), None);
}

/// What a segment sealed at `held.len()` shows: exactly `held`.
async fn assert_cut<S: LogStore>(store: &S, seg: &SegmentKey, held: &[Bytes]) {
    let n = held.len() as u64;
    assert_eq!(
        store.info(seg).await.expect("info"),
        Some(SegmentInfo {
            count: n,
            sealed: true
        }),
        "{seg} sealed at {n}"
    );
    assert_eq!(read_all(store, seg).await, held, "{seg} serves 0..{n}");
    for from in [n, n + 1, n + 5] {
        assert!(
            store
                .read(seg, from, 10, usize::MAX)
                .await
                .expect("read past the cut")
                .is_empty(),
            "{seg}: entry {from} is past the cut"
        );
    }
    let listed = store.segments().await.expect("segments");
    assert!(
        listed.contains(&(
            seg.clone(),
            SegmentInfo {
                count: n,
                sealed: true
            }
        )),
        "{seg} listed at {n}: {listed:?}"
    );
}

/// Contract 12: sealing at the sealed count again is `Ok`, at any other
/// count it is refused; a segment never seen takes count 0 only.
pub async fn given_a_sealed_segment_when_sealed_at_again_should_accept_its_count_only<
    S: LogStore,
>(
    store: S,
) {
    let seg = key("conf-seal-at-again", 1);
    store
        .append(&seg, &entries("a", 4), u64::MAX)
        .await
        .expect("append");
    assert_eq!(store.seal_at(&seg, 3).await.expect("seal_at"), 3);
    assert_eq!(store.seal_at(&seg, 3).await.expect("again"), 3);
    for other in [0, 2, 4, 9] {
        match store.seal_at(&seg, other).await {
            Err(Error::BadRequest(_)) => {}
            got => panic!("sealed at 3, seal_at {other} should be refused, got {got:?}"),
        }
    }
    // A plain seal that ended at the count counts as that seal.
    let plain = key("conf-seal-at-again", 2);
    store
        .append(&plain, &entries("p", 2), u64::MAX)
        .await
        .expect("append");
    assert_eq!(store.seal(&plain).await.expect("seal"), 2);
    assert_eq!(store.seal_at(&plain, 2).await.expect("seal_at 2"), 2);
    assert!(matches!(
        store.seal_at(&plain, 1).await,
        Err(Error::BadRequest(_))
    ));
    let unknown = key("conf-seal-at-again", 3);
    assert!(matches!(
        store.seal_at(&unknown, 1).await,
        Err(Error::BadRequest(_))
    ));
    assert_eq!(
        store.info(&unknown).await.expect("info"),
        None,
        "a refused seal_at leaves an unknown segment unknown"
    );
    assert_eq!(store.seal_at(&unknown, 0).await.expect("seal_at 0"), 0);
    assert_cut(&store, &unknown, &[]).await;
    assert_cut(&store, &seg, &entries("a", 3)).await;
}

/// Contract 12: `seal_at` never invents entries: holding fewer is refused
/// and the segment stays open and whole.
pub async fn given_fewer_entries_when_sealed_at_a_higher_count_should_refuse_and_change_nothing<
    S: LogStore,
>(
    store: S,
) {
    let seg = key("conf-seal-at-short", 1);
    store
        .append(&seg, &entries("s", 2), u64::MAX)
        .await
        .expect("append");
    match store.seal_at(&seg, 3).await {
        Err(Error::BadRequest(why)) => assert!(
            why.contains("2..3"),
            "the refusal should name the missing entries 2..3: {why}"
        ),
        other => panic!("seal_at 3 of 2 entries should be refused, got {other:?}"),
    }
    store
        .append_at(&seg, 2, &entries("s", 3)[2..])
        .await
        .expect("the segment stays open");
    assert_eq!(store.seal_at(&seg, 3).await.expect("seal_at 3"), 3);
    assert_cut(&store, &seg, &entries("s", 3)).await;
}

/// Contract 12 across a restart: a cut tail stays cut, the seal stays at
/// its count; a tail held through a restart can be cut after it.
pub async fn given_a_cut_tail_when_the_store_restarts_should_stay_cut_and_sealed<S: LogStore>(
    store: S,
    restart: impl Fn(S) -> S,
) {
    let cut_before = key("conf-seal-at-restart", 1);
    let cut_after = key("conf-seal-at-restart", 2);
    let all = entries("x", 5);
    for seg in [&cut_before, &cut_after] {
        store.append(seg, &all, u64::MAX).await.expect("append");
    }
    assert_eq!(store.seal_at(&cut_before, 3).await.expect("seal_at"), 3);
    store.sync().await.expect("sync");
    let store = restart(store);
    assert_cut(&store, &cut_before, &all[0..3]).await;
    assert_eq!(
        store
            .seal_at(&cut_before, 3)
            .await
            .expect("again after a restart"),
        3
    );
    assert!(matches!(
        store.seal_at(&cut_before, 5).await,
        Err(Error::BadRequest(_))
    ));
    assert_eq!(store.seal_at(&cut_after, 2).await.expect("seal_at"), 2);
    let store = restart(store);
    assert_cut(&store, &cut_before, &all[0..3]).await;
    assert_cut(&store, &cut_after, &all[0..2]).await;
    let again = store
        .append_at(&cut_after, 0, &all[0..2])
        .await
        .expect("a retransmit of held entries after a restart");
    assert_eq!(again.count, 2);
    assert!(matches!(
        store.append_at(&cut_after, 0, &all[0..3]).await,
        Err(Error::SegmentSealed(_))
    ));
}

/// Contract 5, bytes: a non-empty segment takes nothing that would pass
/// the byte limit; an empty one takes one append of any size; and
/// `payload_bytes` counts what was taken.
pub async fn given_a_byte_limit_when_appending_past_it_should_refuse_and_write_nothing<
    S: LogStore,
>(
    store: S,
) {
    let seg = key("conf-bytes", 1);
    let limit = SegmentLimit {
        entries: u64::MAX,
        bytes: 10,
    };
    let b = |s: &'static str| Bytes::from_static(s.as_bytes());
    for (i, e) in ["aaaa", "bbbb", "cc"].into_iter().enumerate() {
        let a = store
            .append_within(&seg, &[b(e)], limit)
            .await
            .expect("within 10 bytes");
        assert_eq!(a.first_index, i as u64);
    }
    for refused in [vec![b("d")], vec![b("e"), b("f")]] {
        match store.append_within(&seg, &refused, limit).await {
            Err(Error::SegmentSealed(k)) => assert_eq!(k, seg),
            other => panic!("an append past 10 bytes should be refused, got {other:?}"),
        }
    }
    store.sync().await.expect("sync");
    assert_eq!(
        read_all(&store, &seg).await,
        vec![b("aaaa"), b("bbbb"), b("cc")]
    );
    // What retention by bytes counts: the payload, refused appends not.
    store.seal(&seg).await.expect("seal");
    assert_eq!(store.payload_bytes(&seg).await.expect("bytes"), Some(10));
    assert_eq!(
        store
            .payload_bytes(&key("conf-bytes", 99))
            .await
            .expect("bytes"),
        None
    );
    // A batch is refused whole when it would pass: nothing of it is written.
    let other = key("conf-bytes", 2);
    store
        .append_within(&other, &[b("0123456789abcdef")], limit)
        .await
        .expect("an empty segment takes one entry of any size");
    assert!(matches!(
        store.append_within(&other, &[b("x")], limit).await,
        Err(Error::SegmentSealed(_))
    ));
    let both = key("conf-bytes", 3);
    store
        .append_within(&both, &[b("12345")], limit)
        .await
        .expect("append");
    assert!(matches!(
        store
            .append_within(&both, &[b("123"), b("456")], limit)
            .await,
        Err(Error::SegmentSealed(_))
    ));
    store.sync().await.expect("sync");
    assert_eq!(read_all(&store, &both).await, vec![b("12345")]);
}

/// Contract 10: a deleted sealed segment is gone (info, read, segments),
/// a repeat and an unknown segment are `Ok`, other segments are untouched.
pub async fn given_a_sealed_segment_when_deleted_should_be_gone_and_leave_the_others_whole<
    S: LogStore,
>(
    store: S,
) {
    let old = key("conf-delete", 1);
    let next = key("conf-delete", 2);
    let other = key("conf-delete-other", 1);
    for seg in [&old, &next, &other] {
        store
            .append(seg, &entries("d", 3), u64::MAX)
            .await
            .expect("append");
    }
    store.seal(&old).await.expect("seal");
    store.sync().await.expect("sync");
    store
        .delete(&old)
        .await
        .expect("delete of a sealed segment");
    assert_eq!(store.info(&old).await.expect("info"), None, "deleted");
    assert!(store
        .read(&old, 0, 10, usize::MAX)
        .await
        .expect("read of a deleted segment")
        .is_empty());
    let listed = store.segments().await.expect("segments");
    assert!(
        listed.iter().all(|(k, _)| *k != old),
        "a deleted segment is still listed: {listed:?}"
    );
    store
        .delete(&old)
        .await
        .expect("deleting again changes nothing");
    store
        .delete(&key("conf-delete", 9))
        .await
        .expect("deleting a segment never held changes nothing");
    for seg in [&next, &other] {
        assert_eq!(read_all(&store, seg).await, entries("d", 3), "{seg} whole");
    }
    // The topic goes on in its later segments.
    store
        .append(&next, &entries("e", 1), u64::MAX)
        .await
        .expect("append after a delete");
}

/// Contract 10: an open segment is refused, whole.
pub async fn given_an_open_segment_when_deleted_should_refuse_and_keep_it_whole<S: LogStore>(
    store: S,
) {
    let seg = key("conf-delete-open", 1);
    store
        .append(&seg, &entries("o", 2), u64::MAX)
        .await
        .expect("append");
    match store.delete(&seg).await {
        Err(Error::BadRequest(_)) => {}
        other => panic!("deleting an open segment should be refused, got {other:?}"),
    }
    store.sync().await.expect("sync");
    assert_eq!(read_all(&store, &seg).await, entries("o", 2));
    store
        .append(&seg, &entries("p", 1), u64::MAX)
        .await
        .expect("an open segment takes appends after a refused delete");
}

/// Contract 3: a read at the tail is served what was appended without
/// waiting for any timer, and whatever it was served is counted (durable):
/// a cursor built from reads never stands past the count.
pub async fn given_entries_at_the_tail_when_read_should_serve_them_at_once_and_count_them<
    S: LogStore,
>(
    store: S,
) {
    let seg = key("conf-tail", 1);
    for i in 0..3u64 {
        store
            .append(&seg, &entries(&format!("t{i}-"), 1), u64::MAX)
            .await
            .expect("append");
        let served = store
            .read(&seg, i, 10, usize::MAX)
            .await
            .expect("read at the tail");
        assert_eq!(served, entries(&format!("t{i}-"), 1), "entry {i}");
        let count = store.info(&seg).await.expect("info").map_or(0, |x| x.count);
        assert!(
            count > i,
            "entry {i} was served but the store counts only {count}"
        );
    }
}

/// Contract 2 and 4: appends add all their entries, contiguously, in order.
pub async fn given_appends_when_read_back_should_return_entries_in_order_with_contiguous_indexes<
    S: LogStore,
>(
    store: S,
) {
    let seg = key("conf-order", 1);
    let a = store
        .append(&seg, &entries("a", 3), u64::MAX)
        .await
        .expect("append a");
    assert_eq!(
        a,
        Appended {
            first_index: 0,
            count: 3
        }
    );
    let b = store
        .append(&seg, &entries("b", 2), u64::MAX)
        .await
        .expect("append b");
    assert_eq!(
        b,
        Appended {
            first_index: 3,
            count: 5
        }
    );
    let c = store
        .append(&seg, &[], u64::MAX)
        .await
        .expect("an empty append is harmless");
    assert_eq!(c.count, 5, "an empty append adds nothing");
    let mut expected = entries("a", 3);
    expected.extend(entries("b", 2));
    assert_eq!(read_all(&store, &seg).await, expected);
    assert_eq!(
        store.info(&seg).await.expect("info"),
        Some(SegmentInfo {
            count: 5,
            sealed: false
        })
    );
    let tail = store
        .read(&seg, 3, 10, usize::MAX)
        .await
        .expect("read from 3");
    assert_eq!(
        tail,
        entries("b", 2),
        "reading from an index starts exactly there"
    );
}

/// Payloads are opaque bytes: empty ones and every byte value survive.
pub async fn given_empty_and_binary_payloads_when_read_should_return_them_byte_for_byte<
    S: LogStore,
>(
    store: S,
) {
    let seg = key("conf-bytes", 1);
    let payloads = vec![
        Bytes::new(),
        Bytes::from((0..=255u8).collect::<Vec<_>>()),
        Bytes::from(vec![0u8; 4096]),
        Bytes::from_static(b"\n\r\0 end"),
        Bytes::new(),
    ];
    store
        .append(&seg, &payloads, u64::MAX)
        .await
        .expect("append");
    assert_eq!(read_all(&store, &seg).await, payloads);
}

/// `read` returns at most `max_entries`, at most `max_bytes` of payload but
/// at least one entry, and nothing at or past the count.
pub async fn given_read_limits_when_reading_should_respect_max_entries_and_max_bytes<
    S: LogStore,
>(
    store: S,
) {
    let seg = key("conf-limits", 1);
    let ten: Vec<Bytes> = (0..10).map(|i| Bytes::from(vec![i as u8; 10])).collect();
    store.append(&seg, &ten, u64::MAX).await.expect("append");
    let r = store.read(&seg, 0, 4, usize::MAX).await.expect("read");
    assert_eq!(r, ten[0..4], "max_entries caps the batch");
    let r = store.read(&seg, 2, 100, 35).await.expect("read");
    assert_eq!(r, ten[2..5], "max_bytes 35 holds three 10-byte entries");
    let r = store.read(&seg, 7, 100, 1).await.expect("read");
    assert_eq!(
        r,
        ten[7..8],
        "one entry is returned even if it exceeds max_bytes"
    );
    let r = store.read(&seg, 0, 0, usize::MAX).await.expect("read");
    assert!(r.is_empty(), "max_entries 0 returns nothing");
    for from in [10, 11, u64::MAX] {
        let r = store.read(&seg, from, 10, usize::MAX).await.expect("read");
        assert!(r.is_empty(), "from {from} is at or past the count");
    }
}

/// Unknown segments read empty, have no info and are not listed.
pub async fn given_unknown_segments_when_queried_should_be_empty_and_none<S: LogStore>(store: S) {
    let seg = key("conf-unknown", 9);
    assert!(store
        .read(&seg, 0, 10, usize::MAX)
        .await
        .expect("read")
        .is_empty());
    assert_eq!(store.info(&seg).await.expect("info"), None);
    assert!(store.segments().await.expect("segments").is_empty());
}

/// Contract 1, 2 and 4 under concurrency: the final count is the sum, and
/// each batch sits contiguously at the index its append returned.
pub async fn given_concurrent_appenders_when_done_should_have_exact_count_and_whole_batches<
    S: LogStore,
>(
    store: S,
) {
    const TASKS: usize = 16;
    const BATCHES: usize = 20;
    let store = Arc::new(store);
    let seg = key("conf-concurrent", 1);
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        let seg = seg.clone();
        handles.push(tokio::spawn(async move {
            let mut placed = Vec::new();
            for b in 0..BATCHES {
                let batch = entries(&format!("t{t}b{b}"), 1 + (t + b) % 4);
                let a = store.append(&seg, &batch, u64::MAX).await.expect("append");
                assert_eq!(
                    a.count - a.first_index,
                    batch.len() as u64,
                    "count after an append covers at least its own batch"
                );
                placed.push((a.first_index, batch));
            }
            placed
        }));
    }
    let mut placed = Vec::new();
    for h in handles {
        placed.extend(h.await.expect("appender task panicked"));
    }
    let total: usize = placed.iter().map(|(_, b)| b.len()).sum();
    let all = read_all(&*store, &seg).await;
    assert_eq!(
        all.len(),
        total,
        "count is exactly the number of entries appended"
    );
    assert_eq!(
        store.info(&seg).await.expect("info").map(|i| i.count),
        Some(total as u64)
    );
    let mut starts = HashSet::new();
    for (first, batch) in placed {
        assert!(
            starts.insert(first),
            "two appends returned the same first index {first}"
        );
        let at = first as usize;
        assert_eq!(
            all[at..at + batch.len()],
            batch[..],
            "batch at {first} is contiguous and in order"
        );
    }
}

/// Contract 3: a reader running alongside appenders sees a growing prefix
/// of whole, correct entries and never an entry whose append is unfinished.
pub async fn given_concurrent_reader_when_appending_should_only_see_completed_entries<
    S: LogStore,
>(
    store: S,
) {
    let store = Arc::new(store);
    let seg = key("conf-visible", 1);
    let writer = {
        let store = store.clone();
        let seg = seg.clone();
        tokio::spawn(async move {
            let mut done = 0u64;
            for i in 0..200u64 {
                let e = Bytes::from(format!("entry-{i}-{}", "x".repeat((i % 50) as usize)));
                let a = store.append(&seg, &[e], u64::MAX).await.expect("append");
                assert_eq!(a.first_index, i, "single writer gets consecutive indexes");
                done = a.count;
            }
            done
        })
    };
    let mut seen = 0u64;
    while !writer.is_finished() || seen < 200 {
        let count_before = store.info(&seg).await.expect("info").map_or(0, |i| i.count);
        let seen_before = seen;
        let batch = store.read(&seg, seen, 64, usize::MAX).await.expect("read");
        assert!(
            seen_before >= count_before || !batch.is_empty(),
            "info counted {count_before} entries but a read from {seen_before} returned none"
        );
        for e in &batch {
            let expected_prefix = format!("entry-{seen}-");
            assert!(
                e.starts_with(expected_prefix.as_bytes()),
                "entry {seen} is {e:?}: a reader saw an unfinished or misplaced entry"
            );
            seen += 1;
        }
        if batch.is_empty() {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(writer.await.expect("writer panicked"), 200);
    assert_eq!(seen, 200);
}

/// Contract 5: a non-empty segment refuses an append that would pass the
/// limit and writes none of it; an empty one takes any batch.
pub async fn given_a_limit_when_appending_past_it_should_refuse_and_write_nothing<S: LogStore>(
    store: S,
) {
    let seg = key("conf-limit", 1);
    let a = store
        .append(&seg, &entries("big", 5), 3)
        .await
        .expect("an empty segment takes any batch");
    assert_eq!(a.count, 5);
    let err = store
        .append(&seg, &entries("more", 1), 5)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::SegmentSealed(seg.clone()),
        "count 5 + 1 > limit 5"
    );
    let seg2 = key("conf-limit", 2);
    store
        .append(&seg2, &entries("a", 2), 4)
        .await
        .expect("2 <= 4");
    let err = store.append(&seg2, &entries("b", 3), 4).await.unwrap_err();
    assert_eq!(err, Error::SegmentSealed(seg2.clone()), "2 + 3 > 4");
    let ok = store
        .append(&seg2, &entries("c", 2), 4)
        .await
        .expect("2 + 2 == 4 fits");
    assert_eq!(
        ok,
        Appended {
            first_index: 2,
            count: 4
        }
    );
    let mut expected = entries("a", 2);
    expected.extend(entries("c", 2));
    assert_eq!(
        read_all(&store, &seg2).await,
        expected,
        "the refused append wrote nothing"
    );
    assert_eq!(read_all(&store, &seg).await, entries("big", 5));
}

/// Contract 6: seal returns the count, is idempotent, and every later
/// append fails while the data stays readable.
pub async fn given_a_sealed_segment_when_appending_should_refuse_and_keep_its_count<S: LogStore>(
    store: S,
) {
    let seg = key("conf-seal", 1);
    store
        .append(&seg, &entries("s", 4), u64::MAX)
        .await
        .expect("append");
    assert_eq!(store.seal(&seg).await.expect("seal"), 4);
    assert_eq!(
        store.seal(&seg).await.expect("sealing again"),
        4,
        "seal is idempotent"
    );
    let err = store
        .append(&seg, &entries("late", 1), u64::MAX)
        .await
        .unwrap_err();
    assert_eq!(err, Error::SegmentSealed(seg.clone()));
    let err = store.append(&seg, &[], u64::MAX).await;
    assert!(
        matches!(err, Err(Error::SegmentSealed(_))) || matches!(err, Ok(a) if a.count == 4),
        "an empty append to a sealed segment adds nothing"
    );
    assert_eq!(
        store.info(&seg).await.expect("info"),
        Some(SegmentInfo {
            count: 4,
            sealed: true
        })
    );
    assert_eq!(read_all(&store, &seg).await, entries("s", 4));
    let other = key("conf-seal", 2);
    store
        .append(&other, &entries("o", 1), u64::MAX)
        .await
        .expect("other segments are unaffected");
}

/// Contract 6: a segment the store never saw can be sealed (count 0).
pub async fn given_an_unknown_segment_when_sealed_should_be_sealed_with_count_zero<S: LogStore>(
    store: S,
) {
    let seg = key("conf-seal-unknown", 7);
    assert_eq!(store.seal(&seg).await.expect("seal"), 0);
    assert_eq!(
        store.info(&seg).await.expect("info"),
        Some(SegmentInfo {
            count: 0,
            sealed: true
        })
    );
    let err = store
        .append(&seg, &entries("x", 1), u64::MAX)
        .await
        .unwrap_err();
    assert_eq!(err, Error::SegmentSealed(seg.clone()));
    assert!(store
        .read(&seg, 0, 10, usize::MAX)
        .await
        .expect("read")
        .is_empty());
}

/// `segments` lists every segment with the same info `info` gives.
pub async fn given_several_segments_when_listed_should_report_each_with_its_info<S: LogStore>(
    store: S,
) {
    let a = key("conf-list-a", 1);
    let b = key("conf-list-b", 3);
    let c = key("conf-list-b", 4);
    store
        .append(&a, &entries("a", 2), u64::MAX)
        .await
        .expect("append");
    store
        .append(&b, &entries("b", 1), u64::MAX)
        .await
        .expect("append");
    store.seal(&b).await.expect("seal");
    store.seal(&c).await.expect("seal unknown");
    // Counts are durable counts (contract 3): under a policy that syncs
    // later, `a`'s entries are counted once synced.
    store.sync().await.expect("sync");
    let mut listed = store.segments().await.expect("segments");
    listed.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        listed,
        vec![
            (
                a,
                SegmentInfo {
                    count: 2,
                    sealed: false
                }
            ),
            (
                b,
                SegmentInfo {
                    count: 1,
                    sealed: true
                }
            ),
            (
                c,
                SegmentInfo {
                    count: 0,
                    sealed: true
                }
            ),
        ]
    );
}

/// `sync` succeeds on an empty and a busy store and changes no count.
pub async fn given_sync_when_called_should_succeed_and_change_nothing<S: LogStore>(store: S) {
    store.sync().await.expect("sync of an empty store");
    let seg = key("conf-sync", 1);
    store
        .append(&seg, &entries("y", 3), u64::MAX)
        .await
        .expect("append");
    store.sync().await.expect("sync");
    assert_eq!(
        store.info(&seg).await.expect("info"),
        Some(SegmentInfo {
            count: 3,
            sealed: false
        })
    );
    assert_eq!(read_all(&store, &seg).await, entries("y", 3));
}
