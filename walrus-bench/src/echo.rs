//! `walrus-echo`: answers every frame with `OK` and does nothing else. Driven
//! by the same load generator with the same settings, it gives the ceiling
//! of the network stack and the client on this machine.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use walrus_core::protocol::MAX_FRAME;

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
            if buf.len() < 4 {
                break;
            }
            let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len == 0 || len > MAX_FRAME {
                // As the protocol says: answer, then close, since the next
                // frame cannot be found.
                let msg = b"ERR invalid frame length";
                out.extend_from_slice(&(msg.len() as u32).to_le_bytes());
                out.extend_from_slice(msg);
                closing = true;
                break;
            }
            if buf.len() < 4 + len {
                buf.reserve(4 + len - buf.len());
                break;
            }
            let _ = buf.split_to(4 + len);
            out.extend_from_slice(b"\x02\0\0\0OK");
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
