//! The one task per connection that writes to the socket.
//!
//! Callers and handlers hand it finished frames over a channel, so no lock is
//! held across a socket write and messages never interleave. Frames that
//! queued up while a write was in progress go out together in one write:
//! under load that is one syscall (and, with TCP_NODELAY, usually one
//! segment) for many small messages.

use std::future::Future;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Above this many queued bytes a batch is written without waiting for more.
const BATCH_BYTES: usize = 64 * 1024;

/// Writes frames from `outbox` until it closes, `stop` completes or a write
/// fails. Returns the write error, if any.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut outbox: mpsc::Receiver<Bytes>,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(stop);
    let mut batch: Vec<u8> = Vec::new();
    loop {
        let first = tokio::select! {
            _ = &mut stop => return Ok(()),
            next = outbox.recv() => match next {
                Some(frame) => frame,
                None => return w.shutdown().await,
            },
        };
        let write = async {
            match outbox.try_recv() {
                // The common idle case: one frame, written as it is, no copy.
                Err(_) => w.write_all(&first).await,
                Ok(second) => {
                    batch.clear();
                    batch.extend_from_slice(&first);
                    batch.extend_from_slice(&second);
                    while batch.len() < BATCH_BYTES {
                        match outbox.try_recv() {
                            Ok(frame) => batch.extend_from_slice(&frame),
                            Err(_) => break,
                        }
                    }
                    w.write_all(&batch).await
                }
            }
        };
        tokio::select! {
            _ = &mut stop => return Ok(()),
            written = write => written?,
        }
        if batch.capacity() > 4 * BATCH_BYTES {
            // One huge batch must not pin its memory for the connection's life.
            batch = Vec::new();
        }
    }
}

/// Completes once `stop` turns true or its sender is gone.
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}
