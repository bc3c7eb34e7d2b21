//! One client connection: a reader task parses frames and starts each
//! request, a writer task sends the answers back in request order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use walrus_core::protocol::{FrameCodec, Request, Response};
use walrus_core::TopicName;

use super::auth::{filter_topics, Session, Verdict};
use super::budget::{Budget, Charge, ANSWER_RESERVE, REQUEST_OVERHEAD};
use super::lanes::{dispatch, Lane};
use super::{ClientHandler, ListenerConfig, ListenerStats};

/// An answer in the making, queued in request order. Each holds the
/// request's budget: whoever holds the request or its answer holds the
/// charge, so bytes stay counted while a handler still works on a request
/// whose connection is gone.
pub(super) enum Pending {
    Ready(Response, Charge),
    Waiting(oneshot::Receiver<(Response, Charge)>),
}

/// Where a request that runs elsewhere sends its answer, with its charge.
pub(super) struct Reply {
    to: oneshot::Sender<(Response, Charge)>,
    charge: Charge,
}

impl Reply {
    pub(super) fn channel(charge: Charge) -> (Reply, Pending) {
        let (to, rx) = oneshot::channel();
        (Reply { to, charge }, Pending::Waiting(rx))
    }

    pub(super) fn send(self, mut answer: Response) {
        let mut charge = self.charge;
        charge.fit(&mut answer);
        // A connection that is gone drops the answer and the charge here.
        let _ = self.to.send((answer, charge));
    }
}

pub(super) async fn serve_connection<H: ClientHandler + ?Sized>(
    stream: TcpStream,
    handler: Arc<H>,
    config: ListenerConfig,
    budget: Budget,
    stats: Arc<ListenerStats>,
    stop: watch::Receiver<bool>,
) {
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel(config.max_in_flight.max(1));
    let unanswered = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(write_loop(
        write,
        rx,
        config.idle_timeout,
        unanswered.clone(),
        stats.clone(),
    ));
    let reader = Reader {
        handler,
        tx,
        budget,
        unanswered,
        config,
        stats,
    };
    reader.run(read, stop).await;
    let _ = writer.await;
}

/// Why a connection stops reading.
enum Stop {
    /// Closed, broken, silent too long, or the server stops.
    Quietly,
    /// A length the stream cannot be resynchronised after: answer, close.
    BadLength,
}

struct Reader<H: ?Sized> {
    handler: Arc<H>,
    tx: mpsc::Sender<Pending>,
    budget: Budget,
    /// Requests read and not yet written back, shared with the writer.
    unanswered: Arc<AtomicUsize>,
    config: ListenerConfig,
    stats: Arc<ListenerStats>,
}

impl<H: ClientHandler + ?Sized> Reader<H> {
    async fn run(self, read: OwnedReadHalf, mut stop: watch::Receiver<bool>) {
        let mut reader = BufReader::with_capacity(64 * 1024, read);
        let mut lanes: HashMap<TopicName, Arc<Mutex<Lane>>> = HashMap::new();
        let mut session = Session::new(self.config.auth.clone());
        loop {
            let (frame, mut charge) = match self.next_frame(&mut reader, &mut stop).await {
                Ok(f) => f,
                Err(Stop::Quietly) => return,
                Err(Stop::BadLength) => {
                    let charge = self.budget.charge(REQUEST_OVERHEAD).await;
                    let answer = Response::Err("invalid frame length".into());
                    let _ = self.send(Pending::Ready(answer, charge)).await;
                    return;
                }
            };
            let len = frame.len();
            if let Some(mut answer) = session.intercept(&frame) {
                charge.shrink_to(len + REQUEST_OVERHEAD);
                charge.fit(&mut answer);
                if self.send(Pending::Ready(answer, charge)).await.is_err() {
                    return;
                }
                continue;
            }
            let req = match Request::parse(frame) {
                Ok(req) => req,
                Err(e) => {
                    let mut answer = Response::from(e);
                    charge.fit(&mut answer);
                    if self.send(Pending::Ready(answer, charge)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            if !answer_is_data(&req) {
                charge.shrink_to(len + REQUEST_OVERHEAD);
            }
            let pending = match session.check(req) {
                Verdict::Run(req) => dispatch(&self.handler, req, charge, &mut lanes).await,
                Verdict::Answer(mut answer) => {
                    charge.fit(&mut answer);
                    Pending::Ready(answer, charge)
                }
                Verdict::RunFiltered(req, prefix) => {
                    let (reply, pending) = Reply::channel(charge);
                    let handler = self.handler.clone();
                    tokio::spawn(async move {
                        reply.send(filter_topics(handler.handle(req).await, &prefix));
                    });
                    pending
                }
            };
            if self.send(pending).await.is_err() {
                return; // the writer gave up on this connection
            }
        }
    }

    async fn send(&self, pending: Pending) -> Result<(), ()> {
        self.unanswered.fetch_add(1, Ordering::SeqCst);
        self.tx.send(pending).await.map_err(|_| ())
    }

    /// Reads the next frame, once the budget has room for it. Between
    /// frames a connection may idle up to the idle-connection timeout (any
    /// time while it has requests in flight); once a frame has begun, each
    /// part must arrive within the idle timeout.
    async fn next_frame(
        &self,
        reader: &mut BufReader<OwnedReadHalf>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(Bytes, Charge), Stop> {
        loop {
            let waited = tokio::select! {
                _ = stop.wait_for(|s| *s) => return Err(Stop::Quietly),
                r = tokio::time::timeout(self.config.idle_connection_timeout, reader.fill_buf()) => r,
            };
            match waited {
                Ok(Ok(b)) if !b.is_empty() => break,
                Ok(_) => return Err(Stop::Quietly),
                Err(_) if self.unanswered.load(Ordering::SeqCst) == 0 => {
                    tracing::debug!("closing a client connection idle between frames");
                    return Err(Stop::Quietly);
                }
                Err(_) => continue,
            }
        }
        let mut len = [0u8; 4];
        self.mid_frame(reader.read_exact(&mut len)).await?;
        let Ok(len) = FrameCodec::requests().body_len(len) else {
            return Err(Stop::BadLength);
        };
        // Waiting here leaves the body in the socket: the budget pushes back
        // on the client instead of the server allocating. What the request
        // is shows only once it is read, so the charge covers the largest
        // answer too, and shrinks once the request is known. One charge,
        // never a second one while holding the first: readers that hold
        // budget never wait for more, so they cannot block each other.
        let charge = tokio::select! {
            _ = stop.wait_for(|s| *s) => return Err(Stop::Quietly),
            c = self.budget.charge(REQUEST_OVERHEAD + len.max(ANSWER_RESERVE)) => c,
        };
        let mut body = BytesMut::zeroed(len);
        self.mid_frame(reader.read_exact(&mut body)).await?;
        self.stats.read(len + 4);
        Ok((body.freeze(), charge))
    }

    async fn mid_frame<T>(
        &self,
        read: impl std::future::Future<Output = std::io::Result<T>>,
    ) -> Result<T, Stop> {
        match tokio::time::timeout(self.config.idle_timeout, read).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(Stop::Quietly),
            Err(_) => {
                tracing::debug!("closing a client connection idle in the middle of a frame");
                Err(Stop::Quietly)
            }
        }
    }
}

/// Requests whose answer carries data of unknown size.
fn answer_is_data(req: &Request) -> bool {
    matches!(
        req,
        Request::Get(_)
            | Request::State(_)
            | Request::Metrics
            | Request::Topics
            | Request::TopicCounts
            | Request::Offsets(_)
            | Request::Read { .. }
            | Request::Fetch { .. }
    )
}

async fn resolve(p: Pending) -> (Response, Option<Charge>) {
    match p {
        Pending::Ready(r, c) => (r, Some(c)),
        Pending::Waiting(rx) => match rx.await {
            Ok((r, c)) => (r, Some(c)),
            Err(_) => (dropped(), None),
        },
    }
}

fn dropped() -> Response {
    Response::Err("internal error: the request was dropped before it was answered".into())
}

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Pending>,
    timeout: Duration,
    unanswered: Arc<AtomicUsize>,
    stats: Arc<ListenerStats>,
) {
    let mut out = BytesMut::with_capacity(4096);
    // The budget of the answers in `out`, given back once they are written.
    let mut charges: Vec<Option<Charge>> = Vec::new();
    let mut next: Option<Pending> = None;
    loop {
        let head = match next.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => break,
            },
        };
        let (answer, charge) = resolve(head).await;
        answer.encode(&mut out);
        charges.push(charge);
        // Batch every answer that is already there into the same write.
        while out.len() < 256 * 1024 {
            let (answer, charge) = match rx.try_recv() {
                Ok(Pending::Ready(r, c)) => (r, Some(c)),
                Ok(Pending::Waiting(mut w)) => match w.try_recv() {
                    Ok((r, c)) => (r, Some(c)),
                    Err(oneshot::error::TryRecvError::Empty) => {
                        next = Some(Pending::Waiting(w));
                        break;
                    }
                    Err(oneshot::error::TryRecvError::Closed) => (dropped(), None),
                },
                Err(_) => break,
            };
            answer.encode(&mut out);
            charges.push(charge);
        }
        match tokio::time::timeout(timeout, write.write_all(&out)).await {
            Ok(Ok(())) => {
                stats.wrote(out.len());
                out.clear();
                unanswered.fetch_sub(charges.len(), Ordering::SeqCst);
                charges.clear();
            }
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::debug!("closing a client connection that stopped reading");
                return;
            }
        }
    }
    let _ = write.shutdown().await;
}
