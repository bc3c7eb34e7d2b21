//! Writes one connection's frames to its socket, in the order they are sent.
//!
//! The task that has a frame writes it straight into the socket when nothing
//! is queued ahead of it: the idle case (a forwarded PUT at pipeline depth
//! 1, a Raft heartbeat) costs one non-blocking `send` and no hop to another
//! task, which on a loaded 2-core machine is most of a forward's cost. When
//! the socket buffer is full, or a flush is already running, the frame joins
//! a queue and a flush task writes the queue out, many frames per syscall:
//! under load, batching comes back by itself.
//!
//! The queue's lock is held for one non-blocking `send` at most, never
//! across an await: that is what keeps frames whole and in order, and the
//! kernel serialises writers of one socket anyway. A sender waits only when
//! the queue is full (backpressure from a peer that does not read).
//!
//! Over TLS the bytes must go through the stream's encryption, which only
//! one owner at a time may drive: a writer task of the connection owns the
//! stream, and every frame goes through the queue to it. Batching is the
//! same; the direct write (and so the idle case's saved task switch) is
//! what plain TCP has over TLS.

use std::io::{self, ErrorKind};
use std::net::Shutdown;
use std::sync::{Arc, Mutex, MutexGuard};

use socket2::{SockRef, Socket};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{watch, Notify};
use walrus_core::locks::MutexExt;

/// Queued bytes above which senders wait for the flush task to catch up.
const MAX_QUEUED_BYTES: usize = 1024 * 1024;
/// Largest write the flush task hands the kernel at once.
const MAX_WRITE_BYTES: usize = 256 * 1024;

/// What a flusher finds in the queue.
enum Queued {
    Closed,
    Empty,
    /// Bytes to write, now in the flusher's buffer.
    Batch,
}

/// The connection was closed (by either side, or by a failed write); the
/// frame was not sent.
#[derive(Debug)]
pub(crate) struct Closed;

/// The write side of one connection, shared by every task that sends on it.
pub(crate) struct FrameWriter {
    output: Output,
    state: Mutex<State>,
    /// Wakes senders waiting for queue space.
    drained: Notify,
}

/// Where the frames go.
enum Output {
    /// Plain TCP: the sender writes straight into the socket when it can.
    Socket(OwnedWriteHalf),
    /// An encrypting stream, owned by the connection's writer task.
    Stream {
        /// Wakes the writer task: frames are queued, or the writer closed.
        work: Notify,
        /// The TCP socket under the stream (a duplicate descriptor), to
        /// end the connection in both directions on close.
        socket: Socket,
    },
}

#[derive(Default)]
struct State {
    /// Bytes accepted but not yet handed to the kernel, in send order.
    queue: Vec<u8>,
    /// A flush task owns the socket: new frames must queue behind it.
    flushing: bool,
    closed: bool,
}

impl FrameWriter {
    pub(crate) fn new(socket: OwnedWriteHalf) -> Arc<FrameWriter> {
        Arc::new(FrameWriter {
            output: Output::Socket(socket),
            state: Mutex::new(State::default()),
            drained: Notify::new(),
        })
    }

    /// A writer into `stream` (TLS over `socket`, a duplicate descriptor
    /// of the TCP socket under it): a task of its own writes the queued
    /// frames until the writer is closed.
    pub(crate) fn with_stream<W>(stream: W, socket: Socket) -> Arc<FrameWriter>
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let writer = Arc::new(FrameWriter {
            output: Output::Stream {
                work: Notify::new(),
                socket,
            },
            state: Mutex::new(State::default()),
            drained: Notify::new(),
        });
        tokio::spawn(writer.clone().pump(stream));
        writer
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock_or_recover()
    }

    /// Sends one whole frame. Returns once the frame is in the socket or
    /// queued behind earlier ones (it then goes out unless the connection
    /// fails); waits only while the queue is full.
    pub(crate) async fn send(self: &Arc<Self>, frame: &[u8]) -> Result<(), Closed> {
        loop {
            // Registered before the queue is checked, so a drain between the
            // check and the await is not missed.
            let drained = self.drained.notified();
            {
                let mut state = self.lock();
                if state.closed {
                    return Err(Closed);
                }
                if !state.flushing {
                    let socket = match &self.output {
                        Output::Socket(socket) => socket,
                        Output::Stream { work, .. } => {
                            state.queue.extend_from_slice(frame);
                            state.flushing = true;
                            drop(state);
                            work.notify_one();
                            return Ok(());
                        }
                    };
                    let written = match socket.try_write(frame) {
                        Ok(n) if n == frame.len() => return Ok(()),
                        Ok(n) => n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                        Err(e) => {
                            tracing::debug!("write to node connection failed: {e}");
                            drop(state);
                            self.close();
                            return Err(Closed);
                        }
                    };
                    state.queue.extend_from_slice(&frame[written..]);
                    state.flushing = true;
                    drop(state);
                    tokio::spawn(self.clone().flush());
                    return Ok(());
                }
                if state.queue.len() < MAX_QUEUED_BYTES {
                    state.queue.extend_from_slice(frame);
                    return Ok(());
                }
            }
            drained.await;
        }
    }

    /// Writes the queue out until it is empty, then hands the socket back
    /// to direct sends.
    async fn flush(self: Arc<Self>) {
        let mut batch = Vec::new();
        while let Queued::Batch = self.take_queued(&mut batch) {
            self.drained.notify_waiters();
            if let Err(e) = self.write_all(&batch).await {
                tracing::debug!("write to node connection failed: {e}");
                self.close();
                self.drained.notify_waiters();
                return;
            }
        }
    }

    /// The writer task of a stream: writes out what is queued whenever
    /// there is some, until the writer closes.
    async fn pump<W: AsyncWrite + Unpin>(self: Arc<Self>, mut stream: W) {
        let Output::Stream { work, .. } = &self.output else {
            unreachable!("only a stream writer has a writer task");
        };
        let mut batch = Vec::new();
        loop {
            work.notified().await;
            loop {
                match self.take_queued(&mut batch) {
                    Queued::Closed => return,
                    Queued::Empty => break,
                    Queued::Batch => {}
                }
                self.drained.notify_waiters();
                let written = async {
                    stream.write_all(&batch).await?;
                    stream.flush().await
                };
                if let Err(e) = written.await {
                    tracing::debug!("write to node connection failed: {e}");
                    self.close();
                    self.drained.notify_waiters();
                    return;
                }
            }
        }
    }

    /// Moves the queued bytes into `batch` for the flusher to write. With
    /// none queued, the flusher is done: direct sends may go again
    /// (`flushing` off), and `batch` goes back as the queue's buffer, so
    /// the next burst reuses it.
    fn take_queued(&self, batch: &mut Vec<u8>) -> Queued {
        let mut state = self.lock();
        if state.closed {
            return Queued::Closed;
        }
        batch.clear();
        if state.queue.is_empty() {
            state.flushing = false;
            if batch.capacity() > 4 * MAX_WRITE_BYTES {
                // One burst must not pin its memory for the connection's life.
                *batch = Vec::new();
            }
            std::mem::swap(batch, &mut state.queue);
            return Queued::Empty;
        }
        std::mem::swap(batch, &mut state.queue);
        Queued::Batch
    }

    async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        let Output::Socket(socket) = &self.output else {
            unreachable!("only a socket writer flushes from a task per burst");
        };
        while !bytes.is_empty() {
            socket.writable().await?;
            let chunk = &bytes[..bytes.len().min(MAX_WRITE_BYTES)];
            match socket.try_write(chunk) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Closes the connection in both directions (the reader on this side
    /// sees EOF, the peer sees the connection end) and drops what is
    /// queued. Senders get `Closed` from then on. Idempotent.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        if std::mem::replace(&mut state.closed, true) {
            return;
        }
        state.queue = Vec::new();
        drop(state);
        // Fails only if the socket is already gone, which is what we want.
        let _ = match &self.output {
            Output::Socket(socket) => SockRef::from(socket.as_ref()).shutdown(Shutdown::Both),
            Output::Stream { work, socket } => {
                work.notify_one(); // the writer task ends
                socket.shutdown(Shutdown::Both)
            }
        };
        self.drained.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

/// Completes once `stop` turns true or its sender is gone.
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (Arc<FrameWriter>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        // The socket stays open while either half lives.
        let (_read, write) = client.unwrap().into_split();
        (FrameWriter::new(write), accepted.unwrap().0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn given_many_concurrent_senders_and_a_slow_reader_should_deliver_every_frame_whole_and_in_each_senders_order(
    ) {
        let (writer, mut peer) = pair().await;
        const SENDERS: u32 = 8;
        const FRAMES: u32 = 2_000;
        // Frames of 1..=8 KiB so that the socket buffer fills and the queue
        // and the flush task are exercised, not only direct writes.
        let tasks: Vec<_> = (0..SENDERS)
            .map(|sender| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    for seq in 0..FRAMES {
                        let len = 1024 * (1 + (seq % 8) as usize);
                        let mut frame = Vec::with_capacity(len);
                        frame.extend_from_slice(&(len as u32).to_be_bytes());
                        frame.extend_from_slice(&sender.to_be_bytes());
                        frame.extend_from_slice(&seq.to_be_bytes());
                        frame.resize(len, sender as u8);
                        writer.send(&frame).await.unwrap();
                    }
                })
            })
            .collect();
        let mut next = vec![0u32; SENDERS as usize];
        let mut got = 0;
        while got < SENDERS * FRAMES {
            if got % 500 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await; // a slow reader
            }
            let len = peer.read_u32().await.unwrap() as usize;
            let sender = peer.read_u32().await.unwrap();
            let seq = peer.read_u32().await.unwrap();
            let mut rest = vec![0u8; len - 12];
            peer.read_exact(&mut rest).await.unwrap();
            assert!(rest.iter().all(|&b| b == sender as u8), "frame torn");
            assert_eq!(seq, next[sender as usize], "sender {sender} out of order");
            next[sender as usize] += 1;
            got += 1;
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[tokio::test]
    async fn given_a_closed_writer_should_refuse_frames_and_end_the_connection() {
        let (writer, mut peer) = pair().await;
        writer.send(b"before").await.unwrap();
        writer.close();
        assert!(writer.is_closed());
        assert!(writer.send(b"after").await.is_err());
        let mut seen = Vec::new();
        peer.read_to_end(&mut seen).await.unwrap();
        assert_eq!(seen, b"before");
    }
}
