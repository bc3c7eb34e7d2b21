//! The client protocol: length-prefixed frames of UTF-8 text
//! (see `docs/protocol.md`).
//!
//! - [`frame`]: reading and writing `[u32 LE length][body]` frames, and
//!   [`FrameCodec`], the one decoder of the client side (walrus-client,
//!   walrus-cli, walrus-bench).
//! - [`request`]: parsing a frame body into a typed [`Request`].
//! - [`response`]: encoding a [`Response`] into one frame.

pub mod frame;
pub mod request;
pub mod response;

pub use frame::{encode_frame, read_frame, FrameCodec, FrameError, MAX_ANSWER, MAX_FRAME};
pub use request::{parse_bytes, parse_duration_ms, Request, RetainSetting};
pub use response::{parse_entries, parse_entry_spans, Response};
