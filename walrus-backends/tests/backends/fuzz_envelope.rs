//! Fuzzing the inter-node envelope (`tcp/envelope.rs`): whatever bytes a
//! peer (or a stray client) sends, the frame reader and the payload decoder
//! answer with a frame or an error, never a panic; a frame's payload is
//! exactly the bytes its length covers, a decoded entry is bytes that are
//! in the frame, and every message a node encodes decodes back unchanged.
//! Long runs: see `fuzz_common` and docs/testing.md.

use crate::fuzz_common;

use std::time::Duration;

use bytes::Bytes;
use fuzz_common::fuzz;
use proptest::prelude::*;
use walrus_backends::tcp::envelope::{
    encode_request, encode_response, read_frame, Kind, ReadError, ResponsePayload, HEADER_BYTES,
    LEN_BYTES,
};
use walrus_core::{Error, NodeInfo, NodeRequest, NodeResponse, SegmentKey, TopicName};

const MAX: usize = 1 << 20;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime")
        .block_on(f)
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn topic() -> impl Strategy<Value = TopicName> {
    "[a-z0-9._-]{1,16}"
        .prop_filter("not a dot name", |t| t != "." && t != "..")
        .prop_map(|t| TopicName::new(t).expect("generated names are valid"))
}

fn segment() -> impl Strategy<Value = SegmentKey> {
    (topic(), any::<u64>()).prop_map(|(t, s)| SegmentKey::new(t, s))
}

fn request() -> impl Strategy<Value = NodeRequest> {
    prop_oneof![
        (segment(), prop::collection::vec(bytes(64), 0..8))
            .prop_map(|(segment, entries)| NodeRequest::Append { segment, entries }),
        (segment(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
            |(segment, from, max_entries, max_bytes)| NodeRequest::Read {
                segment,
                from,
                max_entries,
                max_bytes
            }
        ),
        (
            segment(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(segment, from, max_entries, max_bytes, wait_ms)| {
                NodeRequest::ReadWait {
                    segment,
                    from,
                    max_entries,
                    max_bytes,
                    wait_ms,
                }
            }),
        topic().prop_map(|topic| NodeRequest::Get { topic }),
        any::<u64>().prop_map(|node| NodeRequest::RenewLease { node }),
        (any::<u64>(), ".{0,20}", ".{0,20}").prop_map(|(node, raft_addr, client_addr)| {
            NodeRequest::Join {
                node,
                info: NodeInfo {
                    raft_addr,
                    client_addr,
                },
            }
        }),
        bytes(128).prop_map(NodeRequest::Consensus),
        Just(NodeRequest::Ping),
    ]
}

fn response() -> impl Strategy<Value = ResponsePayload> {
    let ok = prop_oneof![
        Just(NodeResponse::Done),
        (any::<u64>(), any::<u64>())
            .prop_map(|(first_index, count)| NodeResponse::Appended { first_index, count }),
        (
            prop::collection::vec(bytes(64), 0..8),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(entries, count, sealed)| NodeResponse::Entries {
                entries,
                count,
                sealed
            }),
        prop::option::of(bytes(64)).prop_map(NodeResponse::Entry),
        any::<u64>().prop_map(|version| NodeResponse::Lease { version }),
        bytes(128).prop_map(NodeResponse::Consensus),
    ];
    let err = prop_oneof![
        Just(Error::TopicNotFound),
        ".{0,40}".prop_map(Error::BadRequest),
        ".{0,40}".prop_map(Error::Corrupt),
        segment().prop_map(Error::SegmentSealed),
        any::<u64>().prop_map(Error::Unreachable),
    ];
    prop_oneof![ok.prop_map(Ok), err.prop_map(Err)]
}

/// True if `needle` occurs in `hay` as one run of bytes.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Reads every frame `input` holds and decodes each payload both ways,
/// checking what each frame and entry may hold.
fn read_all(input: &[u8]) -> Result<usize, TestCaseError> {
    block_on(async {
        let mut r = input;
        let mut at = 0usize;
        let mut frames = 0;
        loop {
            match read_frame(&mut r, MAX, Duration::from_secs(5)).await {
                Ok(frame) => {
                    let len =
                        u32::from_be_bytes(input[at..at + LEN_BYTES].try_into().unwrap()) as usize;
                    let payload_at = at + LEN_BYTES + HEADER_BYTES;
                    prop_assert_eq!(frame.payload.len(), len - HEADER_BYTES);
                    prop_assert_eq!(
                        &frame.payload[..],
                        &input[payload_at..payload_at + frame.payload.len()]
                    );
                    prop_assert_eq!(
                        frame.id,
                        u64::from_be_bytes(input[at + 8..at + 16].try_into().unwrap())
                    );
                    at += LEN_BYTES + len;
                    frames += 1;
                    match frame.decode::<NodeRequest>() {
                        Ok(NodeRequest::Append { entries, .. }) => {
                            for e in &entries {
                                prop_assert!(contains(&frame.payload, e), "entry not in frame");
                            }
                        }
                        Ok(NodeRequest::Consensus(b)) => {
                            prop_assert!(contains(&frame.payload, &b));
                        }
                        _ => {}
                    }
                    if let Ok(Ok(NodeResponse::Entries { entries, .. })) =
                        frame.decode::<ResponsePayload>()
                    {
                        for e in &entries {
                            prop_assert!(contains(&frame.payload, e), "entry not in frame");
                        }
                    }
                }
                Err(ReadError::Closed) => {
                    prop_assert_eq!(at, input.len());
                    return Ok(frames);
                }
                Err(ReadError::Stalled(_)) => {
                    prop_assert!(false, "a slice never stalls");
                }
                Err(_) => return Ok(frames),
            }
        }
    })
}

#[test]
fn given_any_bytes_should_read_frames_or_refuse_never_panic() {
    let input = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        // A plausible header in front of random bytes reaches the decoder.
        (
            any::<u8>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(kind, id, payload)| {
                let mut f = ((HEADER_BYTES + payload.len()) as u32)
                    .to_be_bytes()
                    .to_vec();
                f.extend_from_slice(b"WN");
                f.push(1);
                f.push(kind % 3);
                f.extend_from_slice(&id.to_be_bytes());
                f.extend(payload);
                f
            }),
    ];
    fuzz(file!(), "envelope: any bytes", 4096, input, |input| {
        read_all(&input).map(|_| ())
    });
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, mask: u8 },
    Set { at: usize, to: u8 },
    Truncate { at: usize },
    Insert { at: usize, byte: u8 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, to)| Mutation::Set { at, to }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
    ]
}

/// Valid frames of every message type with a few bytes changed: the decoder
/// meets every near-valid shape postcard can see.
#[test]
fn given_valid_frames_with_bytes_changed_should_decode_or_refuse_never_panic() {
    let input = (
        prop::collection::vec(
            prop_oneof![
                (any::<u64>(), request()).prop_map(|(id, r)| encode_request(id, &r, MAX).unwrap()),
                (any::<u64>(), response())
                    .prop_map(|(id, r)| encode_response(id, &r, MAX).unwrap()),
            ],
            1..4,
        ),
        prop::collection::vec(mutation(), 1..6),
    );
    fuzz(
        file!(),
        "envelope: mutated frames",
        4096,
        input,
        |(frames, mutations)| {
            let mut bytes: Vec<u8> = frames.concat();
            for m in mutations {
                let n = bytes.len().max(1);
                match m {
                    Mutation::Flip { at, mask } if !bytes.is_empty() => bytes[at % n] ^= mask,
                    Mutation::Set { at, to } if !bytes.is_empty() => bytes[at % n] = to,
                    Mutation::Truncate { at } => bytes.truncate(at % n),
                    Mutation::Insert { at, byte } => bytes.insert(at % (bytes.len() + 1), byte),
                    _ => {}
                }
            }
            read_all(&bytes).map(|_| ())
        },
    );
}

/// Every message a node sends comes back unchanged, alone or several on
/// one stream.
#[test]
fn given_any_message_should_round_trip_through_the_envelope() {
    let input = prop::collection::vec(
        (
            any::<u64>(),
            prop_oneof![request().prop_map(Ok), response().prop_map(Err)],
        ),
        1..5,
    );
    fuzz(file!(), "envelope: round trip", 2048, input, |messages| {
        let mut stream = Vec::new();
        for (id, m) in &messages {
            let f = match m {
                Ok(req) => encode_request(*id, req, MAX).unwrap(),
                Err(resp) => encode_response(*id, resp, MAX).unwrap(),
            };
            stream.extend_from_slice(&f);
        }
        block_on(async {
            let mut r = &stream[..];
            for (id, m) in &messages {
                let frame = read_frame(&mut r, MAX, Duration::from_secs(5))
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(frame.id, *id);
                match m {
                    Ok(req) => {
                        prop_assert_eq!(frame.kind, Kind::Request);
                        prop_assert_eq!(&frame.decode::<NodeRequest>().unwrap(), req);
                    }
                    Err(resp) => {
                        prop_assert_eq!(frame.kind, Kind::Response);
                        prop_assert_eq!(&frame.decode::<ResponsePayload>().unwrap(), resp);
                    }
                }
            }
            prop_assert!(matches!(
                read_frame(&mut r, MAX, Duration::from_secs(5)).await,
                Err(ReadError::Closed)
            ));
            Ok(())
        })
    });
}
