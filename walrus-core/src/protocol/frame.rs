//! `[u32 little-endian length N][N bytes]` frames.

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::codec::{Decoder, Encoder};

/// The largest request body, in bytes (64 KiB).
pub const MAX_FRAME: usize = 64 * 1024;

/// The largest answer body a client accepts (16 MiB). Requests are at most
/// [`MAX_FRAME`], but a READ answer carries up to 1 MiB of payloads plus
/// their headers, and STATE, METRICS and TOPICS JSON grows with the
/// cluster; anything larger is a peer that does not speak this protocol.
pub const MAX_ANSWER: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Length 0 or above the limit: the stream cannot be resynchronised,
    /// the connection must close after answering.
    #[error("invalid frame length")]
    InvalidLength(u32),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed mid-frame")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one frame body. `Ok(None)` on a clean end of stream (no partial
/// frame). Bodies longer than `max` or empty are `InvalidLength`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<BytesMut>, FrameError> {
    let mut len_buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = reader.read(&mut len_buf[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = FrameCodec::new(max).body_len(len_buf)?;
    let mut body = BytesMut::zeroed(len);
    match reader.read_exact(&mut body).await {
        Ok(_) => Ok(Some(body)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(e.into()),
    }
}

/// Appends one frame (`[len][body]`) to `out`, so a caller can send a whole
/// response, or many, in one write.
pub fn encode_frame(out: &mut BytesMut, body: &[u8]) {
    out.reserve(4 + body.len());
    out.put_u32_le(body.len() as u32);
    out.put_slice(body);
}

/// This protocol's frames as a tokio-util codec (usable with `Framed`, or
/// directly on a read buffer): the one decoder of every client
/// (walrus-client, so walrus-cli, and walrus-bench), so a fix to framing
/// is made once. Stateless: a frame stays in the buffer until it is whole
/// (tokio-util's `LengthDelimitedCodec` keeps the header it consumed as
/// state, which a caller peeking at the buffer cannot see).
///
/// Contract: `decode` returns each complete body in order and leaves a
/// partial frame in the buffer; a length of 0 or above the codec's limit
/// is [`FrameError::InvalidLength`], after which the stream cannot be
/// resynchronised. `encode` refuses a body of 0 or more than the limit
/// bytes with the same error and writes nothing.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    /// Frames of 1 to `max` body bytes.
    pub fn new(max: usize) -> Self {
        FrameCodec { max }
    }

    /// For reading answers: up to [`MAX_ANSWER`].
    pub fn answers() -> Self {
        Self::new(MAX_ANSWER)
    }

    /// For reading requests: up to [`MAX_FRAME`], as a server accepts them.
    pub fn requests() -> Self {
        Self::new(MAX_FRAME)
    }

    /// The body length `header` announces, when this codec takes it: a
    /// reader that must decide something before the body arrives (the
    /// server charges its memory budget) applies the same rule as `decode`.
    pub fn body_len(&self, header: [u8; 4]) -> Result<usize, FrameError> {
        let len = u32::from_le_bytes(header) as usize;
        self.check(len)?;
        Ok(len)
    }

    fn check(&self, len: usize) -> Result<(), FrameError> {
        if len == 0 || len > self.max {
            return Err(FrameError::InvalidLength(
                u32::try_from(len).unwrap_or(u32::MAX),
            ));
        }
        Ok(())
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        let Some(&[a, b, c, d]) = src.get(..4) else {
            return Ok(None);
        };
        let len = self.body_len([a, b, c, d])?;
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(src.split_to(len)))
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, body: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        self.check(body.len())?;
        encode_frame(dst, body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_frames_split_anywhere_when_decoded_should_come_out_whole_and_in_order() {
        let mut codec = FrameCodec::answers();
        let mut wire = BytesMut::new();
        for body in [&b"OK"[..], b"ERR topic not found", b"OK hello"] {
            codec.encode(body, &mut wire).unwrap();
        }
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f.to_vec());
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f.to_vec());
            }
            assert_eq!(
                got,
                [&b"OK"[..], b"ERR topic not found", b"OK hello"],
                "cut at {cut}"
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn given_a_length_of_zero_or_over_the_limit_when_decoded_should_be_invalid_length() {
        for len in [0, MAX_FRAME as u32 + 1, u32::MAX] {
            let mut buf = BytesMut::from(&len.to_le_bytes()[..]);
            assert!(
                matches!(
                    FrameCodec::requests().decode(&mut buf),
                    Err(FrameError::InvalidLength(l)) if l == len
                ),
                "{len}"
            );
        }
        let mut buf = BytesMut::from(&(MAX_FRAME as u32 + 1).to_le_bytes()[..]);
        assert!(
            matches!(FrameCodec::answers().decode(&mut buf), Ok(None)),
            "an answer may be larger than a request"
        );
        let mut out = BytesMut::new();
        assert!(FrameCodec::requests().encode(&[], &mut out).is_err());
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn frames_round_trip_and_bad_lengths_are_refused() {
        let mut buf = BytesMut::new();
        encode_frame(&mut buf, b"PUT logs hi");
        encode_frame(&mut buf, b"GET logs");
        let mut r = &buf[..];
        assert_eq!(
            &read_frame(&mut r, MAX_FRAME).await.unwrap().unwrap()[..],
            b"PUT logs hi"
        );
        assert_eq!(
            &read_frame(&mut r, MAX_FRAME).await.unwrap().unwrap()[..],
            b"GET logs"
        );
        assert!(read_frame(&mut r, MAX_FRAME).await.unwrap().is_none());

        let zero = 0u32.to_le_bytes();
        assert!(matches!(
            read_frame(&mut &zero[..], MAX_FRAME).await,
            Err(FrameError::InvalidLength(0))
        ));
        let big = (MAX_FRAME as u32 + 1).to_le_bytes();
        assert!(matches!(
            read_frame(&mut &big[..], MAX_FRAME).await,
            Err(FrameError::InvalidLength(_))
        ));
        let max = (MAX_FRAME as u32).to_le_bytes();
        assert!(matches!(
            read_frame(&mut &max[..], MAX_FRAME).await,
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_frame(&mut &[1u8, 0][..], MAX_FRAME).await,
            Err(FrameError::Truncated)
        ));
    }
}
