//! The client side of the framing: cutting response frames out of a read
//! buffer, sorting a response body into what the bench counts, and simple
//! one-request exchanges for set-up (REGISTER, STATE, probes).

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use walrus_core::protocol::encode_frame;

/// The largest response the bench accepts. Requests are limited to 64 KiB,
/// but a GET answer adds `OK ` and STATE/METRICS JSON may be larger.
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Takes one complete frame body off the front of `buf`, if there is one.
pub fn take_frame(buf: &mut BytesMut) -> Result<Option<BytesMut>, String> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_RESPONSE {
        return Err(format!(
            "server sent a frame of {len} bytes, more than the {MAX_RESPONSE} this client accepts"
        ));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len)))
}

/// A response body, sorted.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    /// `OK`
    Ok,
    /// `OK <entry>`
    Entry(&'a [u8]),
    /// `EMPTY`
    Empty,
    /// `ERR <text>`
    Err(String),
    /// Anything else (JSON, or a server speaking something else).
    Other(&'a [u8]),
}

pub fn classify(body: &[u8]) -> Answer<'_> {
    match body {
        b"OK" => Answer::Ok,
        b"EMPTY" => Answer::Empty,
        _ if body.starts_with(b"OK ") => Answer::Entry(&body[3..]),
        _ if body.starts_with(b"ERR ") => {
            Answer::Err(String::from_utf8_lossy(&body[4..]).into_owned())
        }
        _ => Answer::Other(body),
    }
}

/// A short, printable excerpt of an unexpected body for an error text.
pub fn excerpt(body: &[u8]) -> String {
    let cut = &body[..body.len().min(40)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if body.len() > cut.len() {
        s.push('…');
    }
    s
}

/// One connection for set-up and probes: one request, one response.
pub struct SimpleClient {
    stream: TcpStream,
    buf: BytesMut,
}

impl SimpleClient {
    pub async fn connect(addr: &str, timeout: Duration) -> anyhow::Result<SimpleClient> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to {addr} timed out after {timeout:?}"))?
            .with_context(|| format!("cannot connect to {addr}; is the server running?"))?;
        stream.set_nodelay(true)?;
        Ok(SimpleClient {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
        })
    }

    /// Sends one request and returns the response body.
    pub async fn request(&mut self, body: &[u8], timeout: Duration) -> anyhow::Result<Vec<u8>> {
        let mut out = BytesMut::with_capacity(4 + body.len());
        encode_frame(&mut out, body);
        tokio::time::timeout(timeout, async {
            self.stream.write_all(&out).await?;
            loop {
                if let Some(frame) = take_frame(&mut self.buf).map_err(|e| anyhow!(e))? {
                    return Ok(frame.to_vec());
                }
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    bail!("server closed the connection before answering");
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no answer within {timeout:?}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_frames_split_anywhere_when_taken_should_come_out_whole_and_in_order() {
        let mut wire = BytesMut::new();
        encode_frame(&mut wire, b"OK");
        encode_frame(&mut wire, b"ERR topic not found");
        encode_frame(&mut wire, b"OK hello");
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = take_frame(&mut buf).unwrap() {
                got.push(f.to_vec());
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = take_frame(&mut buf).unwrap() {
                got.push(f.to_vec());
            }
            assert_eq!(
                got,
                vec![
                    b"OK".to_vec(),
                    b"ERR topic not found".to_vec(),
                    b"OK hello".to_vec()
                ]
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn given_an_absurd_length_when_taken_should_be_an_error() {
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        assert!(take_frame(&mut buf).is_err());
    }

    #[test]
    fn given_response_bodies_when_classified_should_match_the_protocol() {
        assert_eq!(classify(b"OK"), Answer::Ok);
        assert_eq!(classify(b"OK a b "), Answer::Entry(b"a b "));
        assert_eq!(classify(b"EMPTY"), Answer::Empty);
        assert_eq!(
            classify(b"ERR write lease expired"),
            Answer::Err("write lease expired".into())
        );
        assert_eq!(classify(b"{\"x\":1}"), Answer::Other(b"{\"x\":1}"));
        assert_eq!(excerpt(&[b'x'; 100]).chars().count(), 41);
    }
}
