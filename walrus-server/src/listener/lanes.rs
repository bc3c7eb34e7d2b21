//! Requests of one connection on one topic run in order, in a lane; PUTs
//! that queue up behind one in flight go to the handler as one batch.
//! Requests on different topics run concurrently.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures::FutureExt;
use walrus_core::protocol::{Request, Response};
use walrus_core::TopicName;

use super::budget::Charge;
use super::connection::{Pending, Reply};
use super::ClientHandler;
use walrus_core::locks::MutexExt;

/// Most PUTs handed to the handler as one batch, and most payload bytes.
pub(super) const MAX_BATCH_ENTRIES: usize = 256;
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Topics a connection remembers a lane for before forgetting idle ones.
const MAX_IDLE_LANES: usize = 256;

/// A request waiting for its turn on its topic, and where its answer goes.
struct Job {
    req: Request,
    reply: Reply,
}

/// One connection's requests on one topic, run in order by one task that
/// lives while there is work (`running`).
#[derive(Default)]
pub(super) struct Lane {
    queue: VecDeque<Job>,
    running: bool,
}

fn lock(lane: &Mutex<Lane>) -> std::sync::MutexGuard<'_, Lane> {
    lane.lock_or_recover()
}

/// Starts one request; returns its place in the answer queue.
pub(super) async fn dispatch<H: ClientHandler + ?Sized>(
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
            let mut l = self.lane.lock_or_recover();
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
        | Request::PutBatch { topic, .. }
        | Request::Read { topic, .. }
        | Request::Fetch { topic, .. }
        | Request::Commit { topic, .. }
        | Request::RegisterRetaining { topic, .. }
        | Request::Config { topic, .. } => Some(topic),
        Request::Metrics
        | Request::Ping
        | Request::Topics
        | Request::TopicCounts
        | Request::ReplaceStorage { .. }
        | Request::RemoveNode { .. } => None,
    }
}
