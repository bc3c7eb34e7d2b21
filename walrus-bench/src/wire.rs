//! Sorting a response body into what the bench counts, and the one frame
//! decoder of the client side (walrus-core's [`FrameCodec`]) as the bench's
//! read loops use it. Set-up and probes (REGISTER, STATE, time to first
//! write) go through walrus-client; only the load loops (`conn`, `verify`)
//! drive their sockets by hand, to control exactly what is in flight.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};
use walrus_core::protocol::FrameCodec;
use walrus_core::Secret;

/// Sends `AUTH <token>` on a fresh connection and waits for its `OK`
/// (a server run with `--auth-token-file` refuses everything before it).
/// The error says why, never the token.
pub async fn authenticate(stream: &mut TcpStream, token: &Secret) -> Result<(), String> {
    let mut body = b"AUTH ".to_vec();
    body.extend_from_slice(token.expose());
    let mut out = BytesMut::new();
    FrameCodec::requests()
        .encode(&body[..], &mut out)
        .map_err(|e| format!("cannot send AUTH: {e}"))?;
    stream
        .write_all(&out)
        .await
        .map_err(|e| format!("sending AUTH: {e}"))?;
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if let Some(body) = take_frame(&mut buf)? {
            return match classify(&body) {
                Answer::Ok => Ok(()),
                Answer::Err(e) => Err(format!("AUTH refused: {e}")),
                _ => Err(format!("unexpected answer to AUTH: {}", excerpt(&body))),
            };
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) => return Err("the server closed the connection after AUTH".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading the answer to AUTH: {e}")),
        }
    }
}

/// Takes one complete answer body off the front of `buf`, if there is one
/// (an answer over walrus-core's `MAX_ANSWER` is an error).
pub fn take_frame(buf: &mut BytesMut) -> Result<Option<BytesMut>, String> {
    FrameCodec::answers()
        .decode(buf)
        .map_err(|e| format!("server sent a frame the client cannot take: {e}"))
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

#[cfg(test)]
mod tests {
    use super::*;

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
