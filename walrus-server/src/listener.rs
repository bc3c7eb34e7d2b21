//! The client listener: frames bytes, nothing else. Everything a request
//! means is the [`ClientHandler`]'s business (in the real server, the
//! walrus-core `Node`).
//!
//! Per connection, a reader task parses frames and starts each request as
//! soon as it is read, and a writer task sends the answers in request order.
//! A request that finds its topic idle runs in the reader until it first has
//! to wait: most (a PUT under `--fsync interval`, STATE, a GET) finish right
//! there, without a task switch; one that waits (an fsync, a forward) moves
//! to a task of its own and the reader goes on.
//! So a client may pipeline: its requests run without waiting for it to read.
//! Requests of one connection that name the same topic run one after the
//! other, in order, so a pipelined writer's entries land in the order it sent
//! them; requests on different topics run concurrently. PUTs that queue up
//! on a topic behind one in flight go to the handler together, as one batch
//! ([`ClientHandler::handle_puts`]): they share one append and one sync
//! instead of waiting for each other's.
//!
//! Each connection's reads and writes are its own: a client that stops
//! reading stalls only itself (its in-flight window fills, then its reader
//! waits), and it is dropped once a write makes no progress for the idle
//! timeout.
//!
//! Memory is bounded whatever the clients do (see [`ListenerConfig`]): the
//! request and answer bytes every connection holds come out of one global
//! budget, and a reader that finds it spent stops reading its socket until
//! answers are written out (TCP then pushes back on the client); no request
//! is refused for it. Connections are capped in total and per client
//! address, and one that sends nothing for the idle-connection timeout
//! while nothing of it is in flight is closed.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use walrus_core::protocol::{response, Request, Response, MAX_FRAME};
use walrus_core::{Node, TopicName};

/// What answers client requests. The server gives the listener a `Node`;
/// tests and custom builds may give anything else.
#[async_trait]
pub trait ClientHandler: Send + Sync + 'static {
    async fn handle(&self, req: Request) -> Response;

    /// PUTs of one connection on one topic, in the order sent: one answer
    /// each, in the same order. A handler that can store them together
    /// overrides this; the default runs them one after the other.
    async fn handle_puts(&self, topic: TopicName, payloads: Vec<Bytes>) -> Vec<Response> {
        let mut answers = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let put = Request::Put {
                topic: topic.clone(),
                payload,
            };
            answers.push(self.handle(put).await);
        }
        answers
    }
}

#[async_trait]
impl ClientHandler for Node {
    async fn handle(&self, req: Request) -> Response {
        match req {
            // The protocol's METRICS field names are the server's to keep.
            Request::Metrics => Response::Json(crate::metrics::render(&self.metrics()).to_string()),
            req => Node::handle(self, req).await,
        }
    }

    async fn handle_puts(&self, topic: TopicName, payloads: Vec<Bytes>) -> Vec<Response> {
        let n = payloads.len();
        let (acked, error) = self.put_batch(&topic, payloads).await;
        let mut answers = vec![Response::Ok; acked];
        if let Some(e) = error {
            answers.resize(n, Response::Err(e.to_string()));
        }
        answers
    }
}

/// Most PUTs handed to the handler as one batch, and most payload bytes.
const MAX_BATCH_ENTRIES: usize = 256;
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Topics a connection remembers a lane for before forgetting idle ones.
const MAX_IDLE_LANES: usize = 256;

/// What the budget charges for a request beyond its frame: the job, its
/// place in the answer queue and a short answer (`OK`, an `ERR` text).
const REQUEST_OVERHEAD: usize = 256;
/// What a request whose answer carries data (GET, STATE, METRICS, TOPICS)
/// reserves for it until the answer is known: an entry is smaller than a
/// frame (a TOPICS or METRICS answer may exceed it, by the size of the
/// metadata it copies).
const ANSWER_RESERVE: usize = MAX_FRAME + 64;
/// The smallest budget: a few requests with the largest answer must fit.
pub const MIN_BYTES_IN_FLIGHT: usize = 1 << 20;

/// Limits of the client listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Connections served at once; more are answered
    /// `ERR too many connections…` and closed.
    pub max_connections: usize,
    /// Connections served at once from one client IP address; more are
    /// answered `ERR too many connections from <ip>…` and closed, so one
    /// client cannot take every slot.
    pub max_connections_per_ip: usize,
    /// A frame that has started must arrive whole within this time, and a
    /// response write must make progress within it; otherwise the
    /// connection is closed.
    pub idle_timeout: Duration,
    /// A connection that sends nothing for this long between frames, with
    /// none of its requests in flight, is closed.
    pub idle_connection_timeout: Duration,
    /// Requests of one connection in flight at once (read but not yet
    /// answered). Past it, the reader waits for the writer.
    pub max_in_flight: usize,
    /// Bytes of requests and answers held across all connections, from a
    /// request's length prefix until its answer is written to the socket.
    /// When spent, readers stop reading until answers go out. At least
    /// [`MIN_BYTES_IN_FLIGHT`].
    pub max_bytes_in_flight: usize,
    /// How long a graceful shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            max_connections: 4096,
            max_connections_per_ip: 1024,
            idle_timeout: Duration::from_secs(30),
            idle_connection_timeout: Duration::from_secs(600),
            max_in_flight: 1024,
            max_bytes_in_flight: 64 << 20,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// The global budget of bytes in flight. Requests wait for it in arrival
/// order (a fair semaphore), so a flood on some connections does not starve
/// the others' next request.
#[derive(Clone)]
struct Budget {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl Budget {
    fn new(limit: usize) -> Budget {
        let limit = limit.clamp(MIN_BYTES_IN_FLIGHT, Semaphore::MAX_PERMITS);
        Budget {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// Waits until `bytes` are free, then holds them until the charge drops.
    async fn charge(&self, bytes: usize) -> Charge {
        let n =
            u32::try_from(bytes.min(self.limit)).expect("a charge is at most one frame and answer");
        self.permits
            .acquire_many(n)
            .await
            .expect("the budget's semaphore is never closed")
            .forget();
        Charge {
            permits: self.permits.clone(),
            bytes: n as usize,
        }
    }

    fn in_use(&self) -> usize {
        self.limit - self.permits.available_permits()
    }
}

/// Bytes held out of the [`Budget`]; given back when dropped.
struct Charge {
    permits: Arc<Semaphore>,
    bytes: usize,
}

impl Charge {
    /// Gives back what is no longer held (the request, once answered; the
    /// unused part of an answer's reserve). Never grows.
    fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.permits.add_permits(self.bytes - bytes);
            self.bytes = bytes;
        }
    }

    /// Shrinks to what `answer` holds. A READ's answer may be larger than
    /// the charge (it held an answer's reserve while it ran or waited):
    /// the charge grows to it if the budget has room now, and otherwise
    /// the answer keeps only the entries that fit (at least one; the
    /// reader asks again at its `next`). Never waits for budget: holding
    /// some, it would block other holders.
    fn fit(&mut self, answer: &mut Response) {
        let need = REQUEST_OVERHEAD + answer_bytes(answer);
        if let Response::Entries { entries, next } = answer {
            if need > self.bytes && !self.grow(need - self.bytes) {
                let mut size = need;
                while entries.len() > 1 && size > self.bytes {
                    let (_, last) = entries.pop().expect("more than one entry is there");
                    size -= response::ENTRY_OVERHEAD + last.len();
                }
                if let Some((first, _)) = entries.first() {
                    *next = first + entries.len() as u64;
                }
            }
        }
        self.shrink_to(REQUEST_OVERHEAD + answer_bytes(answer));
    }

    /// Takes `bytes` more from the budget if it has them now.
    fn grow(&mut self, bytes: usize) -> bool {
        let Ok(n) = u32::try_from(bytes) else {
            return false;
        };
        match self.permits.try_acquire_many(n) {
            Ok(permit) => {
                permit.forget();
                self.bytes += bytes;
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.permits.add_permits(self.bytes);
    }
}

/// The bytes an answer holds until it is written.
fn answer_bytes(answer: &Response) -> usize {
    match answer {
        Response::Entry(p) => p.len(),
        Response::Json(j) => j.len(),
        Response::Err(e) => e.len(),
        Response::Ok | Response::Empty | Response::Pong => 0,
        Response::Entries { .. } => answer.encoded_len(),
    }
}

/// Live connections per client IP address.
#[derive(Default)]
struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    /// Counts one more connection from `ip`, unless it already has `cap`.
    fn admit(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<IpSlot> {
        let mut counts = self
            .counts
            .lock()
            .expect("per-ip lock poisoned: a panic while counting");
        let n = counts.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

/// One connection's place in the per-IP count.
struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// A running client listener. Dropping it does not stop it; call
/// [`ClientListener::shutdown`].
pub struct ClientListener {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
    connections: Arc<Semaphore>,
    budget: Budget,
    config: ListenerConfig,
}

impl ClientListener {
    /// Starts serving `listener` with `handler`.
    pub fn start<H: ClientHandler + ?Sized>(
        listener: TcpListener,
        handler: Arc<H>,
        config: ListenerConfig,
    ) -> std::io::Result<ClientListener> {
        let local_addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let connections = Arc::new(Semaphore::new(config.max_connections));
        let budget = Budget::new(config.max_bytes_in_flight);
        let accept_task = tokio::spawn(accept_loop(
            listener,
            handler,
            Limits {
                config: config.clone(),
                connections: connections.clone(),
                per_ip: Arc::default(),
                budget: budget.clone(),
            },
            stop_rx,
        ));
        Ok(ClientListener {
            local_addr,
            stop,
            accept_task,
            connections,
            budget,
            config,
        })
    }

    /// Bytes of requests and answers held right now, out of
    /// [`ListenerConfig::max_bytes_in_flight`].
    pub fn bytes_in_flight(&self) -> usize {
        self.budget.in_use()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets every connection finish the requests it has
    /// read (new ones are not read), flushes their answers and closes them.
    /// Returns false if some connection did not finish within the drain
    /// timeout.
    pub async fn shutdown(self) -> bool {
        let _ = self.stop.send(true);
        let _ = self.accept_task.await;
        // Every live connection holds one permit: all permits back means
        // every connection is done.
        let all = u32::try_from(self.config.max_connections).unwrap_or(u32::MAX);
        tokio::time::timeout(
            self.config.drain_timeout,
            self.connections.acquire_many(all),
        )
        .await
        .is_ok()
    }
}

/// What the accept loop shares with every connection.
struct Limits {
    config: ListenerConfig,
    connections: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    budget: Budget,
}

async fn accept_loop<H: ClientHandler + ?Sized>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let config = &limits.config;
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of
                // spinning; the listener itself stays usable.
                tracing::warn!(error = %e, "accepting a client connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(slot) = limits
            .per_ip
            .admit(peer.ip(), config.max_connections_per_ip)
        else {
            let text = format!(
                "too many connections from {}: at most {} per client address; close idle \
                 connections or retry later",
                peer.ip(),
                config.max_connections_per_ip
            );
            tokio::spawn(refuse(stream, text, config.idle_timeout));
            continue;
        };
        match limits.connections.clone().try_acquire_owned() {
            Ok(permit) => {
                let handler = handler.clone();
                let config = config.clone();
                let budget = limits.budget.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    serve_connection(stream, handler, config, budget, stop).await;
                    tracing::debug!(%peer, "client connection closed");
                    drop((permit, slot));
                });
            }
            Err(_) => {
                drop(slot);
                let text =
                    "too many connections: the server is at its connection limit, retry later";
                tokio::spawn(refuse(stream, text.into(), config.idle_timeout));
            }
        }
    }
}

async fn refuse(mut stream: TcpStream, text: String, timeout: Duration) {
    let mut out = BytesMut::new();
    Response::Err(text).encode(&mut out);
    let _ = tokio::time::timeout(timeout, stream.write_all(&out)).await;
    let _ = stream.shutdown().await;
}

/// An answer in the making, queued in request order. Each holds the
/// request's budget: whoever holds the request or its answer holds the
/// charge, so bytes stay counted while a handler still works on a request
/// whose connection is gone.
enum Pending {
    Ready(Response, Charge),
    Waiting(oneshot::Receiver<(Response, Charge)>),
}

/// Where a request that runs elsewhere sends its answer, with its charge.
struct Reply {
    to: oneshot::Sender<(Response, Charge)>,
    charge: Charge,
}

impl Reply {
    fn channel(charge: Charge) -> (Reply, Pending) {
        let (to, rx) = oneshot::channel();
        (Reply { to, charge }, Pending::Waiting(rx))
    }

    fn send(self, mut answer: Response) {
        let mut charge = self.charge;
        charge.fit(&mut answer);
        // A connection that is gone drops the answer and the charge here.
        let _ = self.to.send((answer, charge));
    }
}

async fn serve_connection<H: ClientHandler + ?Sized>(
    stream: TcpStream,
    handler: Arc<H>,
    config: ListenerConfig,
    budget: Budget,
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
    ));
    let reader = Reader {
        handler,
        tx,
        budget,
        unanswered,
        config,
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
}

impl<H: ClientHandler + ?Sized> Reader<H> {
    async fn run(self, read: OwnedReadHalf, mut stop: watch::Receiver<bool>) {
        let mut reader = BufReader::with_capacity(64 * 1024, read);
        let mut lanes: HashMap<TopicName, Arc<Mutex<Lane>>> = HashMap::new();
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
            let pending = dispatch(&self.handler, req, charge, &mut lanes).await;
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
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(Stop::BadLength);
        }
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

/// A request waiting for its turn on its topic, and where its answer goes.
struct Job {
    req: Request,
    reply: Reply,
}

/// One connection's requests on one topic, run in order by one task that
/// lives while there is work (`running`).
#[derive(Default)]
struct Lane {
    queue: VecDeque<Job>,
    running: bool,
}

fn lock(lane: &Mutex<Lane>) -> std::sync::MutexGuard<'_, Lane> {
    lane.lock()
        .expect("lane lock poisoned: a panic while moving a job in or out of a queue")
}

/// Starts one request; returns its place in the answer queue.
async fn dispatch<H: ClientHandler + ?Sized>(
    handler: &Arc<H>,
    req: Request,
    charge: Charge,
    lanes: &mut HashMap<TopicName, Arc<Mutex<Lane>>>,
) -> Pending {
    let Some(topic) = topic_of(&req).cloned() else {
        return start_inline(handler, req, charge, None).await;
    };
    if lanes.len() >= MAX_IDLE_LANES {
        lanes.retain(|_, lane| {
            let lane = lock(lane);
            lane.running || !lane.queue.is_empty()
        });
    }
    let lane = lanes.entry(topic).or_default();
    let queued = {
        let l = lock(lane);
        l.running || !l.queue.is_empty()
    };
    if !queued {
        // Nothing of this connection runs on the topic: nothing to keep
        // this request in order behind.
        return start_inline(handler, req, charge, Some(lane.clone())).await;
    }
    let (reply, pending) = Reply::channel(charge);
    let start = {
        let mut l = lock(lane);
        l.queue.push_back(Job { req, reply });
        !std::mem::replace(&mut l.running, true)
    };
    if start {
        tokio::spawn(run_lane(handler.clone(), lane.clone()));
    }
    pending
}

/// Runs `req` here, in the reader, until it first has to wait. If it has
/// to, it goes on in a task of its own, which then runs whatever queued
/// behind it on its `lane` (marked running meanwhile, so that later
/// requests on the topic queue in order).
async fn start_inline<H: ClientHandler + ?Sized>(
    handler: &Arc<H>,
    req: Request,
    mut charge: Charge,
    lane: Option<Arc<Mutex<Lane>>>,
) -> Pending {
    let h = handler.clone();
    let mut work = Box::pin(AssertUnwindSafe(async move { h.handle(req).await }).catch_unwind());
    if let Poll::Ready(answer) = futures::poll!(work.as_mut()) {
        let mut answer = answer.unwrap_or_else(|_| panicked());
        charge.fit(&mut answer);
        return Pending::Ready(answer, charge);
    }
    if let Some(lane) = &lane {
        lock(lane).running = true;
    }
    let (reply, pending) = Reply::channel(charge);
    let handler = handler.clone();
    tokio::spawn(async move {
        reply.send(work.await.unwrap_or_else(|_| panicked()));
        if let Some(lane) = lane {
            run_lane(handler, lane).await;
        }
    });
    pending
}

/// The answer to a request whose handler panicked.
fn panicked() -> Response {
    Response::Err("internal error: the server failed on this request; see its log".into())
}

/// Runs a lane's jobs in order until it is empty; consecutive PUTs that
/// are already queued go to the handler as one batch.
async fn run_lane<H: ClientHandler + ?Sized>(handler: Arc<H>, lane: Arc<Mutex<Lane>>) {
    let mut guard = LaneGuard {
        handler: handler.clone(),
        lane: lane.clone(),
        done: false,
    };
    loop {
        let mut jobs = {
            let mut l = lock(&lane);
            let Some(first) = l.queue.pop_front() else {
                l.running = false;
                guard.done = true;
                return;
            };
            let mut jobs = vec![first];
            if let Request::Put { payload, .. } = &jobs[0].req {
                let mut bytes = payload.len();
                while jobs.len() < MAX_BATCH_ENTRIES {
                    match l.queue.front() {
                        Some(Job {
                            req: Request::Put { payload, .. },
                            ..
                        }) if bytes + payload.len() <= MAX_BATCH_BYTES => {
                            bytes += payload.len();
                            jobs.extend(l.queue.pop_front());
                        }
                        _ => break,
                    }
                }
            }
            jobs
        };
        if jobs.len() == 1 {
            let Job { req, reply } = jobs.pop().expect("one job is there");
            reply.send(handler.handle(req).await);
            continue;
        }
        let mut topic = None;
        let mut payloads = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        for Job { req, reply } in jobs {
            if let Request::Put { topic: t, payload } = req {
                topic.get_or_insert(t);
                payloads.push(payload);
                replies.push(reply);
            }
        }
        let topic = topic.expect("a batch holds at least two PUTs");
        let mut responses = handler.handle_puts(topic, payloads).await.into_iter();
        for reply in replies {
            reply.send(responses.next().unwrap_or_else(|| {
                Response::Err("internal error: the batch of PUTs left this one unanswered".into())
            }));
        }
    }
}

/// Keeps a lane going when its handler panicked: the jobs it held are
/// answered as dropped (their senders are gone), the ones behind them run.
struct LaneGuard<H: ClientHandler + ?Sized> {
    handler: Arc<H>,
    lane: Arc<Mutex<Lane>>,
    done: bool,
}

impl<H: ClientHandler + ?Sized> Drop for LaneGuard<H> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let more = {
            let mut l = self.lane.lock().unwrap_or_else(|p| p.into_inner());
            l.running = !l.queue.is_empty();
            l.running
        };
        if more {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(run_lane(self.handler.clone(), self.lane.clone()));
            }
        }
    }
}

fn topic_of(req: &Request) -> Option<&TopicName> {
    match req {
        Request::Register(t) | Request::Get(t) | Request::State(t) | Request::Offsets(t) => Some(t),
        // A group's COMMIT and then FETCH on one connection run in that
        // order: they share the topic's lane.
        Request::Put { topic, .. }
        | Request::Read { topic, .. }
        | Request::Fetch { topic, .. }
        | Request::Commit { topic, .. }
        | Request::RegisterRetaining { topic, .. }
        | Request::Config { topic, .. } => Some(topic),
        Request::Metrics
        | Request::Ping
        | Request::Topics
        | Request::TopicCounts
        | Request::ReplaceStorage { .. } => None,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;

    /// Answers PING at once; `PUT t <ms>` after sleeping `ms` and echoes the
    /// payload; records the order PUTs finish in.
    struct Echo {
        finished: std::sync::Mutex<Vec<String>>,
        active: AtomicUsize,
    }

    #[async_trait]
    impl ClientHandler for Echo {
        async fn handle(&self, req: Request) -> Response {
            match req {
                Request::Ping => Response::Pong,
                Request::Put { payload, .. } => {
                    self.active.fetch_add(1, Ordering::SeqCst);
                    let text = String::from_utf8_lossy(&payload).into_owned();
                    let ms: u64 = text.split(' ').next().unwrap_or("0").parse().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    self.finished.lock().unwrap().push(text.clone());
                    self.active.fetch_sub(1, Ordering::SeqCst);
                    Response::Entry(payload)
                }
                _ => Response::Err("not in this test".into()),
            }
        }
    }

    async fn serve(config: ListenerConfig) -> (ClientListener, Arc<Echo>) {
        let echo = Arc::new(Echo {
            finished: Default::default(),
            active: AtomicUsize::new(0),
        });
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        (
            ClientListener::start(l, echo.clone(), config).unwrap(),
            echo,
        )
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    async fn read_resp(s: &mut TcpStream) -> Option<String> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.ok()?;
        let mut body = vec![0; u32::from_le_bytes(len) as usize];
        s.read_exact(&mut body).await.ok()?;
        Some(String::from_utf8(body).unwrap())
    }

    /// Answers every READ with `count` entries of 60 KB from its offset.
    struct Wide {
        count: u64,
    }

    #[async_trait]
    impl ClientHandler for Wide {
        async fn handle(&self, req: Request) -> Response {
            let Request::Read { offset, .. } = req else {
                return Response::Err("not in this test".into());
            };
            let entries: Vec<(u64, Bytes)> = (offset..offset + self.count)
                .map(|o| (o, Bytes::from(vec![b'x'; 60_000])))
                .collect();
            Response::Entries {
                next: offset + self.count,
                entries,
            }
        }
    }

    #[tokio::test]
    async fn given_a_read_answer_larger_than_the_budget_should_send_the_entries_that_fit_and_their_next(
    ) {
        let config = ListenerConfig {
            max_bytes_in_flight: MIN_BYTES_IN_FLIGHT,
            ..ListenerConfig::default()
        };
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let wide = Arc::new(Wide { count: 40 }); // 2.4 MB, over the 1 MiB budget
        let l = ClientListener::start(l, wide, config).unwrap();
        let mut s = TcpStream::connect(l.local_addr()).await.unwrap();
        s.write_all(&frame(b"READ t 100")).await.unwrap();
        let body = read_resp(&mut s).await.unwrap();
        let (entries, next) =
            walrus_core::protocol::parse_entries(body.as_bytes()).expect("a whole ENTRIES answer");
        assert!(
            !entries.is_empty() && entries.len() < 40,
            "{} entries",
            entries.len()
        );
        assert!(body.len() <= MIN_BYTES_IN_FLIGHT, "{} bytes", body.len());
        assert_eq!(entries[0].0, 100);
        assert_eq!(
            next,
            100 + entries.len() as u64,
            "the reader goes on where it stopped"
        );
        // The budget is whole again once the answer is written.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(l.bytes_in_flight(), 0);
    }

    #[tokio::test]
    async fn given_pipelined_requests_when_later_ones_finish_first_should_answer_in_request_order()
    {
        let (l, echo) = serve(ListenerConfig::default()).await;
        let mut s = TcpStream::connect(l.local_addr()).await.unwrap();
        let mut bytes = Vec::new();
        bytes.extend(frame(b"PUT a 200 slow"));
        bytes.extend(frame(b"PUT b 0 fast"));
        bytes.extend(frame(b"PING"));
        s.write_all(&bytes).await.unwrap();
        assert_eq!(read_resp(&mut s).await.unwrap(), "OK 200 slow");
        assert_eq!(read_resp(&mut s).await.unwrap(), "OK 0 fast");
        assert_eq!(read_resp(&mut s).await.unwrap(), "OK PONG");
        // Different topics ran concurrently: the fast one finished first.
        assert_eq!(*echo.finished.lock().unwrap(), vec!["0 fast", "200 slow"]);
    }

    #[tokio::test]
    async fn given_pipelined_puts_on_one_topic_should_run_them_in_order() {
        let (l, echo) = serve(ListenerConfig::default()).await;
        let mut s = TcpStream::connect(l.local_addr()).await.unwrap();
        let mut bytes = Vec::new();
        for (i, ms) in [50, 0, 20, 0].iter().enumerate() {
            bytes.extend(frame(format!("PUT t {ms} #{i}").as_bytes()));
        }
        s.write_all(&bytes).await.unwrap();
        for _ in 0..4 {
            read_resp(&mut s).await.unwrap();
        }
        assert_eq!(
            *echo.finished.lock().unwrap(),
            vec!["50 #0", "0 #1", "20 #2", "0 #3"]
        );
    }

    /// Stores PUTs in a list; a batch is one "append". The first PUT of a
    /// topic takes 100 ms, so the ones pipelined behind it queue up.
    #[derive(Default)]
    struct Batching {
        stored: std::sync::Mutex<Vec<String>>,
        appends: std::sync::Mutex<Vec<usize>>,
    }

    #[async_trait]
    impl ClientHandler for Batching {
        async fn handle(&self, req: Request) -> Response {
            match req {
                Request::Put { topic, payload } => {
                    self.handle_puts(topic, vec![payload]).await.remove(0)
                }
                _ => Response::Err("not in this test".into()),
            }
        }

        async fn handle_puts(&self, _topic: TopicName, payloads: Vec<Bytes>) -> Vec<Response> {
            if self.appends.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.appends.lock().unwrap().push(payloads.len());
            let mut stored = self.stored.lock().unwrap();
            payloads
                .iter()
                .map(|p| {
                    stored.push(String::from_utf8_lossy(p).into_owned());
                    Response::Entry(Bytes::from(format!("#{}", stored.len() - 1)))
                })
                .collect()
        }
    }

    #[tokio::test]
    async fn given_puts_pipelined_behind_a_slow_one_should_batch_them_and_keep_their_order() {
        let handler = Arc::new(Batching::default());
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l = ClientListener::start(l, handler.clone(), ListenerConfig::default()).unwrap();
        let mut s = TcpStream::connect(l.local_addr()).await.unwrap();
        let sent: Vec<String> = (0..300).map(|i| format!("p{i}")).collect();
        let mut bytes = Vec::new();
        for p in &sent {
            bytes.extend(frame(format!("PUT t {p}").as_bytes()));
        }
        s.write_all(&bytes).await.unwrap();
        for i in 0..sent.len() {
            assert_eq!(read_resp(&mut s).await.unwrap(), format!("OK #{i}"));
        }
        assert_eq!(*handler.stored.lock().unwrap(), sent);
        let appends = handler.appends.lock().unwrap().clone();
        assert_eq!(appends.iter().sum::<usize>(), sent.len());
        assert!(
            appends.len() < 10,
            "PUTs queued behind the first were batched: {appends:?}"
        );
        assert!(
            appends.iter().all(|&n| n <= MAX_BATCH_ENTRIES),
            "{appends:?}"
        );
    }

    #[tokio::test]
    async fn given_a_handler_without_batching_should_run_queued_puts_one_by_one_in_order() {
        let (l, echo) = serve(ListenerConfig::default()).await;
        let mut s = TcpStream::connect(l.local_addr()).await.unwrap();
        let mut bytes = Vec::new();
        for i in 0..20 {
            bytes.extend(frame(
                format!("PUT t {} #{i}", if i == 0 { 50 } else { 0 }).as_bytes(),
            ));
        }
        bytes.extend(frame(b"PING"));
        s.write_all(&bytes).await.unwrap();
        for i in 0..20 {
            let ms = if i == 0 { 50 } else { 0 };
            assert_eq!(read_resp(&mut s).await.unwrap(), format!("OK {ms} #{i}"));
        }
        assert_eq!(read_resp(&mut s).await.unwrap(), "OK PONG");
        assert_eq!(echo.active.load(Ordering::SeqCst), 0);
        let finished = echo.finished.lock().unwrap().clone();
        let expected: Vec<String> = (0..20)
            .map(|i| format!("{} #{i}", if i == 0 { 50 } else { 0 }))
            .collect();
        assert_eq!(finished, expected);
    }

    /// Panics on the PUT whose payload is `boom`, stores the others.
    struct Boom;

    #[async_trait]
    impl ClientHandler for Boom {
        async fn handle(&self, req: Request) -> Response {
            match req {
                Request::Put { payload, .. } if &payload[..] == b"boom" => {
                    panic!("the handler failed on purpose")
                }
                Request::Put { payload, .. } => Response::Entry(payload),
                _ => Response::Err("not in this test".into()),
            }
        }
    }

    #[tokio::test]
    async fn given_a_handler_that_panics_on_one_put_should_answer_it_and_keep_serving_the_topic() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l = ClientListener::start(l, Arc::new(Boom), ListenerConfig::default()).unwrap();
        let mut s = TcpStream::connect(l.local_addr()).await.unwrap();
        s.write_all(&frame(b"PUT t a")).await.unwrap();
        assert_eq!(read_resp(&mut s).await.unwrap(), "OK a");
        let mut bytes = Vec::new();
        for p in ["boom", "b", "c"] {
            bytes.extend(frame(format!("PUT t {p}").as_bytes()));
        }
        s.write_all(&bytes).await.unwrap();
        assert!(read_resp(&mut s)
            .await
            .unwrap()
            .starts_with("ERR internal error"));
        // b and c may have shared boom's batch (and its fate); either way
        // they are answered in order.
        for p in ["b", "c"] {
            let r = read_resp(&mut s).await.unwrap();
            assert!(
                r == format!("OK {p}") || r.starts_with("ERR internal error"),
                "{r}"
            );
        }
        // The lane keeps serving the topic.
        s.write_all(&frame(b"PUT t d")).await.unwrap();
        let d = tokio::time::timeout(Duration::from_secs(5), read_resp(&mut s)).await;
        assert_eq!(d.expect("answered in time").unwrap(), "OK d");
    }

    #[tokio::test]
    async fn given_a_bad_length_should_answer_and_close_while_others_keep_working() {
        let (l, _) = serve(ListenerConfig::default()).await;
        let mut good = TcpStream::connect(l.local_addr()).await.unwrap();
        for len in [0u32, MAX_FRAME as u32 + 1, u32::MAX] {
            let mut bad = TcpStream::connect(l.local_addr()).await.unwrap();
            bad.write_all(&len.to_le_bytes()).await.unwrap();
            assert_eq!(
                read_resp(&mut bad).await.unwrap(),
                "ERR invalid frame length"
            );
            assert_eq!(read_resp(&mut bad).await, None, "closed after the answer");
        }
        good.write_all(&frame(b"PING")).await.unwrap();
        assert_eq!(read_resp(&mut good).await.unwrap(), "OK PONG");
    }

    #[tokio::test]
    async fn given_invalid_utf8_should_answer_and_keep_the_connection() {
        let (l, _) = serve(ListenerConfig::default()).await;
        let mut s = TcpStream::connect(l.local_addr()).await.unwrap();
        s.write_all(&frame(b"PUT logs \xff\xfe")).await.unwrap();
        assert_eq!(read_resp(&mut s).await.unwrap(), "ERR invalid utf-8");
        s.write_all(&frame(b"ping")).await.unwrap();
        assert_eq!(read_resp(&mut s).await.unwrap(), "OK PONG");
    }

    #[tokio::test]
    async fn given_a_max_size_frame_should_accept_it() {
        let (l, _) = serve(ListenerConfig::default()).await;
        let mut s = TcpStream::connect(l.local_addr()).await.unwrap();
        let mut body = b"PUT t 0 ".to_vec();
        body.resize(MAX_FRAME, b'x');
        s.write_all(&frame(&body)).await.unwrap();
        let resp = read_resp(&mut s).await.unwrap();
        assert_eq!(resp.len(), 3 + MAX_FRAME - 6);
    }

    #[tokio::test]
    async fn given_a_partial_frame_then_silence_should_close_after_the_idle_timeout() {
        let config = ListenerConfig {
            idle_timeout: Duration::from_millis(200),
            ..Default::default()
        };
        let (l, _) = serve(config).await;
        let mut idle = TcpStream::connect(l.local_addr()).await.unwrap();
        idle.write_all(&frame(b"PING")).await.unwrap();
        assert_eq!(read_resp(&mut idle).await.unwrap(), "OK PONG");
        let mut partial = TcpStream::connect(l.local_addr()).await.unwrap();
        partial.write_all(&[10, 0, 0, 0, b'P']).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), read_resp(&mut partial)).await;
        assert_eq!(closed.unwrap(), None);
        // A connection idle between frames is kept.
        tokio::time::sleep(Duration::from_millis(300)).await;
        idle.write_all(&frame(b"PING")).await.unwrap();
        assert_eq!(read_resp(&mut idle).await.unwrap(), "OK PONG");
    }

    #[tokio::test]
    async fn given_the_connection_cap_should_refuse_extra_connections_with_an_error() {
        let config = ListenerConfig {
            max_connections: 2,
            ..Default::default()
        };
        let (l, _) = serve(config).await;
        let mut a = TcpStream::connect(l.local_addr()).await.unwrap();
        let mut b = TcpStream::connect(l.local_addr()).await.unwrap();
        a.write_all(&frame(b"PING")).await.unwrap();
        b.write_all(&frame(b"PING")).await.unwrap();
        read_resp(&mut a).await.unwrap();
        read_resp(&mut b).await.unwrap();
        let mut c = TcpStream::connect(l.local_addr()).await.unwrap();
        assert!(read_resp(&mut c)
            .await
            .unwrap()
            .starts_with("ERR too many connections"));
        drop(a);
        // The freed slot is usable again.
        let mut ok = false;
        for _ in 0..50 {
            let mut d = TcpStream::connect(l.local_addr()).await.unwrap();
            d.write_all(&frame(b"PING")).await.unwrap();
            if read_resp(&mut d).await.as_deref() == Some("OK PONG") {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok);
    }

    #[tokio::test]
    async fn given_a_client_that_never_reads_should_keep_serving_others() {
        let (l, _) = serve(ListenerConfig::default()).await;
        let stuck = TcpStream::connect(l.local_addr()).await.unwrap();
        let (_stuck_r, mut stuck_w) = stuck.into_split();
        // Large answers it never reads: fills the socket buffers.
        let mut body = b"PUT t 0 ".to_vec();
        body.resize(60_000, b'y');
        let flood = frame(&body);
        let flooder = tokio::spawn(async move {
            for _ in 0..2000 {
                if stuck_w.write_all(&flood).await.is_err() {
                    break;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut other = TcpStream::connect(l.local_addr()).await.unwrap();
        other.write_all(&frame(b"PING")).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(2), read_resp(&mut other)).await;
        assert_eq!(r.unwrap().unwrap(), "OK PONG");
        flooder.abort();
    }

    /// A connection from `ip` (a loopback address other than 127.0.0.1 is
    /// a second client address on Linux).
    async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        socket.connect(to).await.unwrap()
    }

    #[tokio::test]
    async fn given_one_address_at_its_connection_cap_should_refuse_it_and_serve_another_address() {
        let config = ListenerConfig {
            max_connections_per_ip: 3,
            max_connections: 4,
            ..Default::default()
        };
        let (l, _) = serve(config).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut s = connect_from("127.0.0.1", l.local_addr()).await;
            s.write_all(&frame(b"PING")).await.unwrap();
            assert_eq!(read_resp(&mut s).await.unwrap(), "OK PONG");
            held.push(s);
        }
        let mut over = connect_from("127.0.0.1", l.local_addr()).await;
        let refused = tokio::time::timeout(Duration::from_secs(5), read_resp(&mut over))
            .await
            .expect("the connection over the cap is answered at once")
            .unwrap();
        assert!(
            refused.starts_with("ERR too many connections from 127.0.0.1"),
            "{refused}"
        );
        assert_eq!(read_resp(&mut over).await, None, "closed after the answer");
        let mut other = connect_from("127.0.0.2", l.local_addr()).await;
        other.write_all(&frame(b"PING")).await.unwrap();
        assert_eq!(read_resp(&mut other).await.unwrap(), "OK PONG");
        // A slot freed by the first address is its own again.
        drop(held.pop());
        let mut ok = false;
        for _ in 0..50 {
            let mut again = connect_from("127.0.0.1", l.local_addr()).await;
            again.write_all(&frame(b"PING")).await.unwrap();
            if read_resp(&mut again).await.as_deref() == Some("OK PONG") {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok, "the freed slot was never usable again");
    }

    #[tokio::test]
    async fn given_a_connection_silent_between_frames_should_close_it_unless_a_request_is_in_flight(
    ) {
        let config = ListenerConfig {
            idle_connection_timeout: Duration::from_millis(200),
            ..Default::default()
        };
        let (l, _) = serve(config).await;
        let mut silent = TcpStream::connect(l.local_addr()).await.unwrap();
        silent.write_all(&frame(b"PING")).await.unwrap();
        assert_eq!(read_resp(&mut silent).await.unwrap(), "OK PONG");
        let mut waiting = TcpStream::connect(l.local_addr()).await.unwrap();
        waiting.write_all(&frame(b"PUT t 600 slow")).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), read_resp(&mut silent)).await;
        assert_eq!(closed.expect("closed in time"), None);
        // Silent for 3 timeouts, but its PUT was running: kept, answered.
        assert_eq!(read_resp(&mut waiting).await.unwrap(), "OK 600 slow");
    }

    /// A leader that never answers: holds every PUT it is given, and counts
    /// the payload bytes it holds.
    #[derive(Default)]
    struct Stuck {
        held: AtomicUsize,
        peak: AtomicUsize,
    }

    #[async_trait]
    impl ClientHandler for Stuck {
        async fn handle(&self, req: Request) -> Response {
            if let Request::Put { payload, .. } = req {
                let now = self.held.fetch_add(payload.len(), Ordering::SeqCst) + payload.len();
                self.peak.fetch_max(now, Ordering::SeqCst);
                futures::future::pending::<()>().await;
            }
            Response::Pong
        }
    }

    #[tokio::test]
    async fn given_a_flood_of_large_puts_to_a_leader_that_never_answers_should_hold_at_most_the_budget(
    ) {
        const BUDGET: usize = 4 << 20;
        let handler = Arc::new(Stuck::default());
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = ListenerConfig {
            max_bytes_in_flight: BUDGET,
            ..Default::default()
        };
        let l = ClientListener::start(l, handler.clone(), config).unwrap();
        // Each PUT on a topic of its own, so each goes to the handler at
        // once; 8 connections x 1,024 in flight x 60 KB would be 480 MB.
        let mut flooders = Vec::new();
        for c in 0..8 {
            let mut s = TcpStream::connect(l.local_addr()).await.unwrap();
            flooders.push(tokio::spawn(async move {
                for i in 0..1024 {
                    let mut body = format!("PUT t{c}-{i} ").into_bytes();
                    body.resize(60_000, b'x');
                    if s.write_all(&frame(&body)).await.is_err() {
                        return;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let held = handler.peak.load(Ordering::SeqCst);
        assert!(
            held <= BUDGET,
            "the handler was given {held} bytes, over the {BUDGET}-byte budget"
        );
        assert!(held >= BUDGET / 2, "the flood reached the handler: {held}");
        assert!(l.bytes_in_flight() <= BUDGET, "{}", l.bytes_in_flight());
        // Other clients still get their (small) requests through once
        // budget frees; here nothing frees it, so only the count is checked.
        for f in flooders {
            f.abort();
        }
    }

    #[tokio::test]
    async fn given_shutdown_should_finish_in_flight_requests_and_stop_accepting() {
        let (l, _) = serve(ListenerConfig::default()).await;
        let addr = l.local_addr();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&frame(b"PUT t 300 last words")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stopping = tokio::spawn(l.shutdown());
        assert_eq!(read_resp(&mut s).await.unwrap(), "OK 300 last words");
        assert!(stopping.await.unwrap(), "drained in time");
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
