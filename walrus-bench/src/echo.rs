//! `walrus-echo`: answers every frame with `OK` and does nothing else. Driven
//! by the same load generator with the same settings, it gives the ceiling
//! of the network stack and the client on this machine.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Decoder;
use walrus_core::protocol::FrameCodec;

/// Accepts connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            // A peer that vanishes mid-frame is simply gone.
            let _ = echo_connection(stream).await;
        });
    }
}

/// Answers every complete frame with `OK`; answers of frames that arrive
/// together leave in one write, as a pipelining server would send them.
async fn echo_connection(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = Vec::with_capacity(4096);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let mut closing = false;
        loop {
            match FrameCodec::requests().decode(&mut buf) {
                Ok(Some(_)) => out.extend_from_slice(b"\x02\0\0\0OK"),
                Ok(None) => break,
                Err(_) => {
                    // As the protocol says: answer, then close, since the
                    // next frame cannot be found.
                    let msg = b"ERR invalid frame length";
                    out.extend_from_slice(&(msg.len() as u32).to_le_bytes());
                    out.extend_from_slice(msg);
                    closing = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if closing {
            return Ok(());
        }
    }
}
