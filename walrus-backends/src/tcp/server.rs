//! The receiving side: accepts connections and answers their requests.
//!
//! Each connection has a reader (this module's loop) and a [`FrameWriter`].
//! The reader runs each request's handler once, inline: a request that can
//! be answered without waiting (a forwarded PUT under `--fsync interval`, a
//! heartbeat) is answered right there, with no task switch. A request that
//! has to wait (a Raft append that waits for an fsync) moves to a task of
//! its own, so it never holds up the ones behind it; answers go back tagged
//! with their request's id, in whatever order they finish. A bounded number
//! of requests per connection run at once; beyond that the reader stops
//! reading and TCP flow control pushes back on the caller.
//!
//! Anything that breaks the framing (bad magic or version, an oversized
//! length, a peer that stalls mid-frame) closes that connection only. A
//! well-framed request whose payload cannot be decoded (a peer on another
//! version of the request enum) is answered with `BadRequest` and the
//! connection stays up.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::FutureExt;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use walrus_core::{Error, NodeRequest, RequestHandler};

use super::envelope::{self, Frame, Kind, ReadError, ResponsePayload};
use super::handshake;
use super::socket;
use super::writer::{stopped, FrameWriter};
use super::TcpConfig;

const READ_BUFFER: usize = 16 * 1024;
/// Pause after a failed accept (e.g. out of file descriptors) so that the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Accepts connections on `listener` until `stop` turns true.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    handler: Arc<dyn RequestHandler>,
    config: TcpConfig,
    stop: watch::Receiver<bool>,
    isolated: Arc<AtomicBool>,
) {
    let local = listener.local_addr().ok();
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let until_stopped = stopped(stop.clone());
    tokio::pin!(until_stopped);
    loop {
        let accepted = tokio::select! {
            _ = &mut until_stopped => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if isolated.load(Ordering::Acquire) {
                    continue; // dropping the stream closes it
                }
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, max = config.max_connections, "too many node connections; closing the new one");
                    continue;
                };
                let serve = serve_connection(
                    stream,
                    peer,
                    handler.clone(),
                    config.clone(),
                    stop.clone(),
                    isolated.clone(),
                );
                tokio::spawn(async move {
                    serve.await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(?local, "accept failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
    tracing::debug!(?local, "stopped accepting node connections");
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<dyn RequestHandler>,
    config: TcpConfig,
    stop: watch::Receiver<bool>,
    isolated: Arc<AtomicBool>,
) {
    socket::tune(&stream, &config, &peer);
    let mut stream = stream;
    if !handshake::check(&mut stream, &config, &peer).await {
        return;
    }
    let (read, write) = stream.into_split();
    let writer = FrameWriter::new(write);
    // At least one, or the connection could never make progress.
    let max_in_flight = config.max_in_flight_per_connection.max(1);
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let mut read = BufReader::with_capacity(READ_BUFFER, read);
    let until_stopped = stopped(stop);
    tokio::pin!(until_stopped);
    loop {
        let frame = tokio::select! {
            _ = &mut until_stopped => break,
            frame = envelope::read_frame(&mut read, config.max_message_bytes, config.stall_timeout) => frame,
        };
        let frame = match frame {
            Ok(frame) if frame.kind == Kind::Request => frame,
            Ok(frame) => {
                tracing::warn!(%peer, kind = ?frame.kind, "unexpected frame kind from peer; closing the connection");
                break;
            }
            Err(ReadError::Closed) => break,
            Err(e) => {
                tracing::warn!(%peer, "closing node connection: {e}");
                break;
            }
        };
        if isolated.load(Ordering::Acquire) {
            break;
        }
        let permit = tokio::select! {
            _ = &mut until_stopped => break,
            permit = in_flight.clone().acquire_owned() => {
                permit.expect("the per-connection semaphore is never closed")
            }
        };
        let mut answering = Box::pin(answer(
            frame,
            handler.clone(),
            writer.clone(),
            config.max_message_bytes,
            peer,
            permit,
        ));
        if futures::poll!(answering.as_mut()).is_pending() {
            tokio::spawn(answering);
        }
    }
    writer.close();
}

/// Runs one request's handler and sends its answer (the permit bounds the
/// connection's requests in flight until then).
async fn answer(
    frame: Frame,
    handler: Arc<dyn RequestHandler>,
    writer: Arc<FrameWriter>,
    max: usize,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let answer: ResponsePayload = match frame.decode::<NodeRequest>() {
        Ok(req) => AssertUnwindSafe(handler.handle(req))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(Error::Internal(
                    "the node's request handler panicked; see the node's log".into(),
                ))
            }),
        Err(e) => Err(Error::BadRequest(format!(
            "undecodable node request: {e}; are both nodes on the same version?"
        ))),
    };
    // An answer too large for a frame is replaced by an error saying so,
    // rather than leaving the caller to time out.
    let id = frame.id;
    let encoded = envelope::encode_response(id, &answer, max)
        .or_else(|e| envelope::encode_response(id, &Err(e.into()), max));
    match encoded {
        // Fails only if the connection is gone.
        Ok(encoded) => {
            let _ = writer.send(&encoded).await;
        }
        Err(e) => tracing::error!(%peer, id, "cannot encode a response: {e}"),
    }
}
