//! The wire format between nodes: one length-prefixed, versioned frame per
//! message.
//!
//! ```text
//! [len: u32 BE] [magic: b"WN"] [version: u8] [kind: u8] [request id: u64 BE] [postcard payload]
//! ```
//!
//! `len` counts every byte after itself, so a reader knows how much to
//! buffer before it decodes anything, and rejects an oversized frame before
//! allocating for it. The magic and version come first so that a stray client
//! (or a node speaking a future version) is recognised at the first frame
//! instead of being misread. The request id lets many requests share one
//! connection and lets a late answer to a request the caller gave up on be
//! recognised and dropped.

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use walrus_core::{Error, NodeRequest, NodeResponse};

/// Identifies a Walrus inter-node frame ("Walrus Node").
pub const MAGIC: [u8; 2] = *b"WN";
/// Bumped on any incompatible change of the header or the payload types.
pub const VERSION: u8 = 1;
/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;
/// Bytes after the length prefix and before the payload.
pub const HEADER_BYTES: usize = 2 + 1 + 1 + 8;

/// The payload of a response frame: the handler's answer, error included, so
/// an `Err` on the receiver arrives as the same `Err` at the caller.
pub type ResponsePayload = Result<NodeResponse, Error>;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A [`NodeRequest`], from caller to server.
    Request = 1,
    /// A [`ResponsePayload`], from server to caller.
    Response = 2,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Request),
            2 => Some(Kind::Response),
            _ => None,
        }
    }
}

/// One decoded frame whose payload is still undecoded, so that a receiver
/// that knows the id can answer a payload it cannot decode.
#[derive(Debug)]
pub struct Frame {
    pub kind: Kind,
    pub id: u64,
    pub payload: Bytes,
}

impl Frame {
    /// Decodes the payload as `T`, rejecting trailing bytes.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, String> {
        match postcard::take_from_bytes::<T>(&self.payload) {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(format!("{} unexpected trailing bytes", rest.len())),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Why a stream stopped yielding frames. Every variant ends the connection:
/// after any of them the stream is no longer at a frame boundary that can be
/// trusted.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection between frames.
    #[error("connection closed by peer")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame of {0} bytes is shorter than its header")]
    TooShort(usize),
    #[error("bad magic {0:02x?}: the peer does not speak the Walrus node protocol")]
    BadMagic([u8; 2]),
    #[error("unsupported protocol version {0} (this node speaks {VERSION})")]
    BadVersion(u8),
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("the peer stopped in the middle of a frame for longer than {0:?}")]
    Stalled(std::time::Duration),
}

/// Why a message could not be put into a frame.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("message of {len} bytes exceeds the transport's maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("cannot encode message: {0}")]
    Serialize(String),
}

impl From<EncodeError> for Error {
    fn from(e: EncodeError) -> Error {
        match e {
            EncodeError::TooLarge { .. } => Error::BadRequest(format!(
                "{e}; send smaller batches or raise TcpConfig::max_message_bytes on every node"
            )),
            EncodeError::Serialize(_) => Error::Internal(e.to_string()),
        }
    }
}

/// Encodes a request frame, length prefix included, ready for one write.
pub fn encode_request(id: u64, req: &NodeRequest, max: usize) -> Result<Bytes, EncodeError> {
    encode(Kind::Request, id, req, max)
}

/// Encodes a response frame, length prefix included, ready for one write.
pub fn encode_response(id: u64, resp: &ResponsePayload, max: usize) -> Result<Bytes, EncodeError> {
    encode(Kind::Response, id, resp, max)
}

fn encode<T: Serialize>(kind: Kind, id: u64, value: &T, max: usize) -> Result<Bytes, EncodeError> {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u32(0); // patched below, once the payload's size is known
    buf.put_slice(&MAGIC);
    buf.put_u8(VERSION);
    buf.put_u8(kind as u8);
    buf.put_u64(id);
    let mut buf =
        postcard::to_extend(value, buf).map_err(|e| EncodeError::Serialize(e.to_string()))?;
    let len = buf.len() - LEN_BYTES;
    if len > max {
        return Err(EncodeError::TooLarge { len, max });
    }
    let len_u32 = u32::try_from(len).map_err(|_| EncodeError::TooLarge {
        len,
        max: u32::MAX as usize,
    })?;
    buf[..LEN_BYTES].copy_from_slice(&len_u32.to_be_bytes());
    Ok(buf.freeze())
}

/// Reads one frame.
///
/// Waiting for a frame to *start* is unbounded (an idle connection is
/// normal), but once its first byte has arrived the rest must follow within
/// `stall_timeout`: a peer that dies or stalls mid-message costs one
/// connection, never a task forever.
///
/// Not cancel-safe: a caller that drops this future mid-frame must drop the
/// stream too.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    stall_timeout: std::time::Duration,
) -> Result<Frame, ReadError> {
    let mut len_buf = [0u8; LEN_BYTES];
    let first = r.read(&mut len_buf[..1]).await?;
    if first == 0 {
        return Err(ReadError::Closed);
    }
    let rest = async {
        r.read_exact(&mut len_buf[1..]).await?;
        let len = u32::from_be_bytes(len_buf) as usize;
        if len > max {
            return Err(ReadError::TooLarge { len, max });
        }
        if len < HEADER_BYTES {
            return Err(ReadError::TooShort(len));
        }
        let mut header = [0u8; HEADER_BYTES];
        r.read_exact(&mut header).await?;
        let magic = [header[0], header[1]];
        if magic != MAGIC {
            return Err(ReadError::BadMagic(magic));
        }
        if header[2] != VERSION {
            return Err(ReadError::BadVersion(header[2]));
        }
        let kind = Kind::from_byte(header[3]).ok_or(ReadError::BadKind(header[3]))?;
        let id = u64::from_be_bytes(header[4..12].try_into().expect("slice of 8 bytes"));
        let mut payload = BytesMut::zeroed(len - HEADER_BYTES);
        r.read_exact(&mut payload).await?;
        Ok(Frame {
            kind,
            id,
            payload: payload.freeze(),
        })
    };
    match tokio::time::timeout(stall_timeout, rest).await {
        Ok(result) => result,
        Err(_) => Err(ReadError::Stalled(stall_timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MAX: usize = 1 << 20;
    const STALL: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn given_a_request_when_encoded_and_read_back_should_be_equal() {
        let req = NodeRequest::Consensus(Bytes::from_static(b"vote please"));
        let frame = encode_request(42, &req, MAX).unwrap();
        let mut r = &frame[..];
        let got = read_frame(&mut r, MAX, STALL).await.unwrap();
        assert_eq!(got.kind, Kind::Request);
        assert_eq!(got.id, 42);
        assert_eq!(got.decode::<NodeRequest>().unwrap(), req);
    }

    #[tokio::test]
    async fn given_an_error_response_when_read_back_should_be_the_same_error() {
        let resp: ResponsePayload = Err(Error::LeaseExpired);
        let frame = encode_response(7, &resp, MAX).unwrap();
        let mut r = &frame[..];
        let got = read_frame(&mut r, MAX, STALL).await.unwrap();
        assert_eq!(got.kind, Kind::Response);
        assert_eq!(got.decode::<ResponsePayload>().unwrap(), resp);
    }

    #[test]
    fn given_a_message_over_the_limit_when_encoded_should_be_refused() {
        let req = NodeRequest::Consensus(Bytes::from(vec![0u8; 2000]));
        let err = encode_request(1, &req, 1000).unwrap_err();
        assert!(matches!(err, EncodeError::TooLarge { max: 1000, .. }));
    }

    #[tokio::test]
    async fn given_a_length_over_the_limit_when_read_should_fail_before_reading_the_body() {
        let mut bytes = (MAX as u32 + 1).to_be_bytes().to_vec();
        bytes.extend_from_slice(b"WN");
        let mut r = &bytes[..];
        let err = read_frame(&mut r, MAX, STALL).await.unwrap_err();
        assert!(matches!(err, ReadError::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn given_wrong_magic_when_read_should_fail() {
        let mut frame = encode_request(1, &NodeRequest::Ping, MAX).unwrap().to_vec();
        frame[4] = b'X';
        let mut r = &frame[..];
        let err = read_frame(&mut r, MAX, STALL).await.unwrap_err();
        assert!(matches!(err, ReadError::BadMagic(_)), "{err}");
    }

    #[tokio::test]
    async fn given_a_future_version_when_read_should_fail() {
        let mut frame = encode_request(1, &NodeRequest::Ping, MAX).unwrap().to_vec();
        frame[6] = VERSION + 1;
        let mut r = &frame[..];
        let err = read_frame(&mut r, MAX, STALL).await.unwrap_err();
        assert!(matches!(err, ReadError::BadVersion(_)), "{err}");
    }

    #[tokio::test]
    async fn given_a_truncated_frame_when_read_should_fail_not_hang() {
        let frame = encode_request(1, &NodeRequest::Ping, MAX).unwrap();
        let mut r = &frame[..frame.len() - 1];
        let err = read_frame(&mut r, MAX, STALL).await.unwrap_err();
        assert!(matches!(err, ReadError::Io(_)), "{err}");
    }

    #[tokio::test]
    async fn given_an_empty_stream_when_read_should_report_closed() {
        let mut r: &[u8] = &[];
        let err = read_frame(&mut r, MAX, STALL).await.unwrap_err();
        assert!(matches!(err, ReadError::Closed), "{err}");
    }

    #[test]
    fn given_garbage_payload_when_decoded_should_be_an_error() {
        let frame = Frame {
            kind: Kind::Request,
            id: 1,
            payload: Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff]),
        };
        assert!(frame.decode::<NodeRequest>().is_err());
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn runtime() -> tokio::runtime::Runtime {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a current-thread runtime builds")
        }

        proptest! {
            #[test]
            fn given_arbitrary_bytes_when_read_should_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let rt = runtime();
                rt.block_on(async {
                    let mut r = &bytes[..];
                    if let Ok(frame) = read_frame(&mut r, 1024, STALL).await {
                        let _ = frame.decode::<NodeRequest>();
                        let _ = frame.decode::<ResponsePayload>();
                    }
                });
            }

            #[test]
            fn given_arbitrary_payload_and_id_when_round_tripped_should_be_equal(
                id in any::<u64>(),
                payload in proptest::collection::vec(any::<u8>(), 0..4096),
            ) {
                let req = NodeRequest::Consensus(Bytes::from(payload));
                let frame = encode_request(id, &req, MAX).unwrap();
                let rt = runtime();
                let got = rt.block_on(async {
                    let mut r = &frame[..];
                    read_frame(&mut r, MAX, STALL).await
                }).unwrap();
                prop_assert_eq!(got.id, id);
                prop_assert_eq!(got.decode::<NodeRequest>().unwrap(), req);
            }

            #[test]
            fn given_a_valid_header_and_garbage_payload_when_decoded_should_error_not_panic(
                payload in proptest::collection::vec(any::<u8>(), 0..512),
            ) {
                let frame = Frame { kind: Kind::Request, id: 1, payload: Bytes::from(payload) };
                let _ = frame.decode::<NodeRequest>();
                let _ = frame.decode::<ResponsePayload>();
            }
        }
    }
}
