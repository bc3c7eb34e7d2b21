//! `[u32 little-endian length N][N bytes]` frames.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest request body, in bytes (64 KiB).
pub const MAX_FRAME: usize = 64 * 1024;

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
    let len = u32::from_le_bytes(len_buf);
    if len == 0 || len as usize > max {
        return Err(FrameError::InvalidLength(len));
    }
    let mut body = BytesMut::zeroed(len as usize);
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

#[cfg(test)]
mod tests {
    use super::*;

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
