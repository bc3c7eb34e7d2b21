//! Encoding a [`Response`] as one frame.

use bytes::{Bytes, BytesMut};

use crate::error::Error;
use crate::protocol::frame::encode_frame;

/// A response to a client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `OK`
    Ok,
    /// `OK <payload>` (GET)
    Entry(Bytes),
    /// `EMPTY` (GET at the end of the topic)
    Empty,
    /// Bare JSON (STATE, METRICS, TOPICS)
    Json(String),
    /// `OK PONG`
    Pong,
    /// `ERR <text>`
    Err(String),
}

impl From<Error> for Response {
    fn from(e: Error) -> Self {
        Response::Err(e.to_string())
    }
}

impl Response {
    /// Appends this response as one frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Response::Ok => encode_frame(out, b"OK"),
            Response::Entry(p) => {
                let mut body = Vec::with_capacity(3 + p.len());
                body.extend_from_slice(b"OK ");
                body.extend_from_slice(p);
                encode_frame(out, &body)
            }
            Response::Empty => encode_frame(out, b"EMPTY"),
            Response::Json(j) => encode_frame(out, j.as_bytes()),
            Response::Pong => encode_frame(out, b"OK PONG"),
            Response::Err(e) => encode_frame(out, format!("ERR {e}").as_bytes()),
        }
    }

    /// Parses a response body (the client's side).
    pub fn parse(body: &[u8]) -> Response {
        match body {
            b"OK" => Response::Ok,
            b"EMPTY" => Response::Empty,
            b"OK PONG" => Response::Pong,
            _ if body.starts_with(b"OK ") => Response::Entry(Bytes::copy_from_slice(&body[3..])),
            _ if body.starts_with(b"ERR ") => {
                Response::Err(String::from_utf8_lossy(&body[4..]).into_owned())
            }
            _ => Response::Json(String::from_utf8_lossy(body).into_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_encode_as_one_frame_each() {
        let mut out = BytesMut::new();
        Response::Ok.encode(&mut out);
        assert_eq!(&out[..], b"\x02\0\0\0OK");
        out.clear();
        Response::Err("topic not found".into()).encode(&mut out);
        assert_eq!(&out[4..], b"ERR topic not found");
        assert_eq!(out.len(), 4 + 19);
    }
}
