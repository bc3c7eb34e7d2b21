//! Fuzzing the client protocol: the frame reader, the request parser and
//! the response codec take any bytes a client (or a server) may send.
//! Oracles: never a panic; a PUT's payload is exactly the bytes after its
//! topic, never one that was not sent; a frame body is exactly what was
//! framed. Long runs: see `fuzz_common` and docs/testing.md.

use crate::fuzz_common;

use bytes::{Bytes, BytesMut};
use fuzz_common::fuzz;
use proptest::prelude::*;
use walrus_core::protocol::{encode_frame, read_frame, FrameError, Request, Response, MAX_FRAME};
use walrus_core::TopicName;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
        .block_on(f)
}

/// Verbs as clients type them, in any case, and near misses.
fn verb() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "PUT",
        "PUT",
        "PUT",
        "PUT",
        "GET",
        "STATE",
        "REGISTER",
        "METRICS",
        "PING",
        "TOPICS",
        "REPLACE-STORAGE",
        "READ",
        "READ",
        "OFFSETS",
        "FETCH",
        "FETCH",
        "COMMIT",
        "COMMIT",
        "SEEK",
        "PUTS",
        "GE",
        "",
    ]);
    (known, any::<u64>()).prop_map(|(v, case)| {
        v.chars()
            .enumerate()
            .map(|(i, c)| {
                if case >> (i % 64) & 1 == 1 {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
            .collect()
    })
}

/// Topic names, valid and not: the allowed alphabet, dots, other bytes,
/// the length limit.
fn topic() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9._-]{1,20}",
        "[0-9]{1,3} [0-9a-f-]{0,40}",
        Just(".".to_string()),
        Just("..".to_string()),
        "[A-Za-z0-9]{250,260}",
        "[ -~]{0,12}",
        ".{0,8}",
    ]
}

/// Separators between words: the one space the protocol uses, and others.
fn sep() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        " ", " ", " ", " ", " ", " ", "  ", "\t", "\r\n", "\n", "",
    ])
    .prop_map(String::from)
}

/// A request body: raw bytes, or words put together like a client would,
/// with a payload of any bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let words = (
        verb(),
        sep(),
        topic(),
        sep(),
        prop_oneof![
            // Text (the body must be UTF-8 to parse), or any bytes.
            ".{0,100}".prop_map(String::into_bytes),
            // READ's arguments, near misses included.
            "[0-9-]{0,21}( [0-9]{0,6}){0,3}( (WAIT|wait|Wait) ?[0-9]{0,6})?( x)?(\r\n)?"
                .prop_map(String::into_bytes),
            // FETCH's and COMMIT's: a topic after the group, then READ's
            // limits or an offset.
            "[a-z./]{0,6}( [0-9-]{0,21}){0,3}( (WAIT|wait) ?[0-9]{0,6})?( x)?(\r\n)?"
                .prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..200),
        ],
    )
        .prop_map(|(v, s1, t, s2, payload)| {
            let mut b = format!("{v}{s1}{t}{s2}").into_bytes();
            b.extend(payload);
            b
        });
    prop_oneof![1 => prop::collection::vec(any::<u8>(), 0..300), 3 => words]
}

fn check_parse(body: Vec<u8>) -> Result<(), TestCaseError> {
    let parsed = Request::parse(Bytes::from(body.clone()));
    let text = std::str::from_utf8(&body);
    match parsed {
        Err(e) => {
            // A refusal says something.
            prop_assert!(!e.to_string().is_empty());
        }
        Ok(req) => {
            let text = text.expect("only UTF-8 bodies parse");
            let verb = text.split(' ').next().unwrap_or("");
            match req {
                Request::Put { topic, payload } => {
                    // The parser drops CR/LF at the end of the verb (for
                    // line-based tools), so `PUT\r\n t p` is a PUT too.
                    let bare = verb.trim_end_matches(['\r', '\n']);
                    prop_assert!(bare.eq_ignore_ascii_case("PUT"), "{text:?}");
                    // Exactly the bytes after "PUT <topic> ".
                    let head = format!("{verb} {} ", topic.as_str());
                    prop_assert!(text.starts_with(&head), "{text:?} vs {head:?}");
                    prop_assert!(!payload.is_empty());
                    prop_assert_eq!(&payload[..], &body[head.len()..]);
                }
                Request::Read {
                    topic,
                    offset,
                    max_entries,
                    max_bytes,
                    wait_ms,
                } => {
                    let bare = verb.trim_end_matches(['\r', '\n']);
                    prop_assert!(bare.eq_ignore_ascii_case("READ"), "{text:?}");
                    // The words are exactly what was sent, in order.
                    let rest = text[verb.len() + 1..].trim_end_matches(['\r', '\n']);
                    let words: Vec<&str> = rest.split(' ').collect();
                    prop_assert_eq!(words[0], topic.as_str());
                    prop_assert_eq!(words[1].parse::<u64>().ok(), Some(offset));
                    check_limits(text, &words[2..], max_entries, max_bytes, wait_ms)?;
                }
                Request::Fetch {
                    group,
                    topic,
                    max_entries,
                    max_bytes,
                    wait_ms,
                } => {
                    let bare = verb.trim_end_matches(['\r', '\n']);
                    prop_assert!(bare.eq_ignore_ascii_case("FETCH"), "{text:?}");
                    let rest = text[verb.len() + 1..].trim_end_matches(['\r', '\n']);
                    let words: Vec<&str> = rest.split(' ').collect();
                    prop_assert_eq!(words[0], group.as_str());
                    prop_assert_eq!(words[1], topic.as_str());
                    prop_assert!(TopicName::new(group.as_str()).is_ok(), "{text:?}");
                    check_limits(text, &words[2..], max_entries, max_bytes, wait_ms)?;
                }
                Request::Commit {
                    group,
                    topic,
                    offset,
                    asynchronous,
                } => {
                    let bare = verb.trim_end_matches(['\r', '\n']);
                    prop_assert!(
                        bare.eq_ignore_ascii_case("COMMIT") || bare.eq_ignore_ascii_case("SEEK"),
                        "{text:?}"
                    );
                    // Exactly three words as sent, and ASYNC when asynchronous.
                    let rest = text[verb.len() + 1..].trim_end_matches(['\r', '\n']);
                    let words: Vec<&str> = rest.split(' ').collect();
                    prop_assert_eq!(words.len(), 3 + usize::from(asynchronous), "{:?}", text);
                    if asynchronous {
                        prop_assert!(words[3].eq_ignore_ascii_case("ASYNC"), "{text:?}");
                    }
                    prop_assert_eq!(words[0], group.as_str());
                    prop_assert_eq!(words[1], topic.as_str());
                    prop_assert_eq!(words[2].parse::<u64>().ok(), Some(offset));
                }
                Request::Register(t)
                | Request::Get(t)
                | Request::State(t)
                | Request::Offsets(t) => {
                    let rest = &text[verb.len() + 1..];
                    prop_assert_eq!(t.as_str(), rest.trim_end_matches(['\r', '\n']));
                    prop_assert!(TopicName::new(t.as_str()).is_ok());
                }
                // The others carry no payload to compare.
                _ => {}
            }
        }
    }
    Ok(())
}

/// `[max_entries] [max_bytes] [WAIT <ms>]` of a READ or FETCH (`words`,
/// after its topic) parsed as sent, in range, defaulted when left out.
fn check_limits(
    text: &str,
    words: &[&str],
    max_entries: u32,
    max_bytes: u32,
    wait_ms: u64,
) -> Result<(), TestCaseError> {
    prop_assert!((1..=10_000).contains(&max_entries), "{text:?}");
    prop_assert!((1..=1 << 20).contains(&max_bytes), "{text:?}");
    prop_assert!(wait_ms <= 60_000, "{text:?}");
    let waits = words.iter().position(|w| w.eq_ignore_ascii_case("WAIT"));
    match waits {
        Some(i) => {
            prop_assert_eq!(i + 2, words.len(), "WAIT <ms> ends it: {:?}", text);
            prop_assert_eq!(words[i + 1].parse::<u64>().ok(), Some(wait_ms));
        }
        None => prop_assert_eq!(wait_ms, 0),
    }
    let sizes = &words[..waits.unwrap_or(words.len())];
    prop_assert!(sizes.len() <= 2, "{text:?}");
    if let Some(n) = sizes.first() {
        prop_assert_eq!(n.parse::<u32>().ok(), Some(max_entries));
    }
    if let Some(b) = sizes.get(1) {
        prop_assert_eq!(b.parse::<u32>().ok(), Some(max_bytes));
    }
    Ok(())
}

#[test]
fn given_any_request_body_should_parse_or_refuse_never_panic_and_keep_payloads_exact() {
    fuzz(file!(), "request parser", 4096, body(), check_parse);
}

/// Well-formed PUTs: the payload comes back byte for byte, whatever it holds
/// (spaces, newlines, any Unicode).
#[test]
fn given_a_well_formed_put_should_return_its_payload_byte_exact() {
    let put = ("[A-Za-z0-9._-]{1,40}", ".{1,100}", any::<bool>())
        .prop_filter("not a dot name", |(t, _, _)| t != "." && t != "..");
    fuzz(file!(), "well-formed PUT", 2048, put, |(t, p, lower)| {
        let verb = if lower { "put" } else { "PUT" };
        let body = format!("{verb} {t} {p}");
        match Request::parse(Bytes::from(body)) {
            Ok(Request::Put { topic, payload }) => {
                prop_assert_eq!(topic.as_str(), t.as_str());
                prop_assert_eq!(&payload[..], p.as_bytes());
            }
            other => prop_assert!(false, "{other:?}"),
        }
        Ok(())
    });
}

/// Well-formed READs: every argument comes back as sent, the optional ones
/// defaulted when left out.
#[test]
fn given_a_well_formed_read_should_parse_every_argument_as_sent() {
    let read = (
        "[A-Za-z0-9._-]{1,40}",
        any::<u64>(),
        prop::option::of((1u32..=10_000, prop::option::of(1u32..=1 << 20))),
        prop::option::of(0u64..=60_000),
        any::<bool>(),
    )
        .prop_filter("not a dot name", |(t, ..)| t != "." && t != "..");
    fuzz(
        file!(),
        "well-formed READ",
        2048,
        read,
        |(t, offset, sizes, wait, lower)| {
            let mut body = format!("{} {t} {offset}", if lower { "read" } else { "READ" });
            if let Some((n, bytes)) = sizes {
                body.push_str(&format!(" {n}"));
                if let Some(b) = bytes {
                    body.push_str(&format!(" {b}"));
                }
            }
            if let Some(ms) = wait {
                body.push_str(&format!(" {} {ms}", if lower { "wait" } else { "WAIT" }));
            }
            let want = Request::Read {
                topic: TopicName::new(t.as_str()).unwrap(),
                offset,
                max_entries: sizes.map_or(100, |(n, _)| n),
                max_bytes: sizes.and_then(|(_, b)| b).unwrap_or(1 << 20),
                wait_ms: wait.unwrap_or(0),
            };
            prop_assert_eq!(Request::parse(Bytes::from(body)).ok(), Some(want));
            Ok(())
        },
    );
}

/// Well-formed FETCHes and COMMITs (and SEEKs): group, topic and every
/// argument come back as sent.
#[test]
fn given_a_well_formed_fetch_or_commit_should_parse_every_argument_as_sent() {
    let name = || "[A-Za-z0-9._-]{1,40}".prop_filter("not a dot name", |t| t != "." && t != "..");
    let input = (
        name(),
        name(),
        any::<u64>(),
        prop::option::of(1u32..=10_000),
        prop::option::of(0u64..=60_000),
        0..3usize,
    );
    fuzz(
        file!(),
        "well-formed FETCH and COMMIT",
        2048,
        input,
        |(g, t, offset, max, wait, verb)| {
            let group = walrus_core::GroupName::new(g.as_str()).unwrap();
            let topic = TopicName::new(t.as_str()).unwrap();
            let (body, want) = if verb == 0 {
                let mut body = format!("FETCH {g} {t}");
                if let Some(n) = max {
                    body.push_str(&format!(" {n}"));
                }
                if let Some(ms) = wait {
                    body.push_str(&format!(" WAIT {ms}"));
                }
                let want = Request::Fetch {
                    group,
                    topic,
                    max_entries: max.unwrap_or(100),
                    max_bytes: 1 << 20,
                    wait_ms: wait.unwrap_or(0),
                };
                (body, want)
            } else {
                let verb = if verb == 1 { "commit" } else { "SEEK" };
                let want = Request::Commit {
                    group,
                    topic,
                    offset,
                    asynchronous: false,
                };
                (format!("{verb} {g} {t} {offset}"), want)
            };
            prop_assert_eq!(Request::parse(Bytes::from(body)).ok(), Some(want));
            Ok(())
        },
    );
}

/// Any byte stream through the frame reader: frames come out exactly as the
/// stream holds them (length, then that many bytes), in order, and the
/// reader stops (end, truncation, bad length) without a panic.
#[test]
fn given_any_byte_stream_should_read_exactly_the_frames_it_holds() {
    let stream = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        // Mostly well-framed, with the odd bad length.
        prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..100)),
            0..8
        )
        .prop_map(|frames| {
            let mut out = BytesMut::new();
            for (good, b) in frames {
                if good && !b.is_empty() {
                    encode_frame(&mut out, &b);
                } else {
                    out.extend_from_slice(&(b.len() as u32 * 7919).to_le_bytes());
                    out.extend_from_slice(&b);
                }
            }
            out.to_vec()
        }),
    ];
    fuzz(file!(), "frame reader", 4096, stream, |input| {
        block_on(async {
            let mut r = &input[..];
            let mut at = 0usize;
            loop {
                match read_frame(&mut r, MAX_FRAME).await {
                    Ok(Some(body)) => {
                        let len = u32::from_le_bytes(input[at..at + 4].try_into().unwrap());
                        prop_assert_eq!(len as usize, body.len());
                        prop_assert_eq!(&body[..], &input[at + 4..at + 4 + body.len()]);
                        at += 4 + body.len();
                    }
                    Ok(None) => {
                        prop_assert_eq!(at, input.len());
                        break;
                    }
                    Err(FrameError::InvalidLength(len)) => {
                        prop_assert!(len == 0 || len as usize > MAX_FRAME);
                        break;
                    }
                    Err(FrameError::Truncated) => {
                        prop_assert!(at < input.len());
                        break;
                    }
                    Err(FrameError::Io(e)) => prop_assert!(false, "no I/O on a slice: {e}"),
                }
            }
            Ok(())
        })
    });
}

/// Answers as a client reads them: any bytes parse to something; what the
/// server encodes parses back to the same answer.
#[test]
fn given_any_answer_bytes_should_parse_and_encoded_answers_should_round_trip() {
    let answer = prop_oneof![
        Just(Response::Ok),
        Just(Response::Empty),
        Just(Response::Pong),
        prop::collection::vec(any::<u8>(), 0..200)
            .prop_filter("OK PONG reads as a PONG", |p| p != b"PONG")
            .prop_map(|p| Response::Entry(Bytes::from(p))),
        ".{0,80}".prop_map(Response::Err),
        "\\{.{0,80}".prop_map(Response::Json),
        // Payloads with the encoding's own separators and header-like text.
        (
            0u64..1 << 60,
            prop::collection::vec(
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..40),
                    "(ENTRIES|[0-9]| |\n){0,30}".prop_map(String::into_bytes),
                ],
                0..6
            )
        )
            .prop_map(|(first, payloads)| {
                let entries: Vec<(u64, Bytes)> = (first..)
                    .zip(payloads.into_iter().map(Bytes::from))
                    .collect();
                let next = first + entries.len() as u64;
                Response::Entries { entries, next }
            }),
    ];
    let input = (answer, prop::collection::vec(any::<u8>(), 0..200));
    fuzz(file!(), "response codec", 4096, input, |(answer, junk)| {
        let _ = Response::parse(&junk);
        let mut out = BytesMut::new();
        answer.encode(&mut out);
        let len = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(len, out.len() - 4);
        prop_assert_eq!(Response::parse(&out[4..]), answer);
        Ok(())
    });
}
