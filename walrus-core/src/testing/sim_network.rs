//! [`SimNetwork`]: a [`Transport`] between in-process nodes that can
//! partition, drop and delay messages.
//!
//! Each node registers its [`RequestHandler`] and takes a
//! [`SimTransport`] for its outgoing calls. A call to a node that is cut
//! off (either side isolated, or the pair partitioned) fails with
//! `Error::Unreachable` after the configured delay; a dropped message fails
//! with `Error::NoAnswer`: a dropped request without reaching the
//! receiver, a dropped response after the receiver handled it (the caller
//! cannot tell them apart: the transport contract's "may or may not have
//! been handled"). [`SimNetwork::set_answer_loss_rate`] loses only
//! answers: the request was handled, the caller hears `NoAnswer`.
//! [`SimNetwork::set_duplicate_rate`] delivers a late second copy of
//! requests that change nothing (see there). Randomness comes from a seeded RNG, so a run is
//! reproducible under tokio's paused clock.
//!
//! It produces every outcome the [`Transport`] contract allows a real
//! transport: an answer; `Unreachable` (not delivered); `NoAnswer` for a
//! request delivered and handled whose answer is lost
//! ([`SimNetwork::lose_next_answers`]), for one whose receiver crashed while
//! handling it ([`SimNetwork::crash`]) and for one not answered within the
//! call timeout ([`SimNetwork::set_call_timeout`]). It passes the transport
//! conformance suite (`walrus-core/tests/scenarios/transport_conformance_sim.rs`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::locks::MutexExt;
use crate::transport::{NodeRequest, NodeResponse, RequestHandler, Transport};
use crate::types::NodeId;

struct Inner {
    handlers: HashMap<NodeId, Arc<dyn RequestHandler>>,
    isolated: BTreeSet<NodeId>,
    /// Pairs (low, high) that cannot talk.
    cut: BTreeSet<(NodeId, NodeId)>,
    min_delay: Duration,
    max_delay: Duration,
    drop_rate: f64,
    answer_loss_rate: f64,
    duplicate_rate: f64,
    rng: StdRng,
    calls: u64,
    /// How long a call waits for its answer once delivered.
    call_timeout: Option<Duration>,
    /// Per receiver: how many of the next delivered requests lose their answer.
    lose_answers: HashMap<NodeId, usize>,
    /// Per node: how often it crashed. A request handled across a crash
    /// is never answered.
    crashes: HashMap<NodeId, u64>,
}

impl Inner {
    fn blocked(&self, a: NodeId, b: NodeId) -> bool {
        self.isolated.contains(&a)
            || self.isolated.contains(&b)
            || self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn delay(&mut self) -> Duration {
        if self.max_delay <= self.min_delay {
            return self.min_delay;
        }
        self.rng.gen_range(self.min_delay..=self.max_delay)
    }

    fn drops(&mut self) -> bool {
        self.drop_rate > 0.0 && self.rng.gen_bool(self.drop_rate)
    }

    fn loses_answer(&mut self) -> bool {
        self.answer_loss_rate > 0.0 && self.rng.gen_bool(self.answer_loss_rate)
    }

    /// Whether `req` gets a late duplicate: only requests whose second
    /// delivery changes nothing (see [`SimNetwork::set_duplicate_rate`]).
    fn duplicates(&mut self, req: &NodeRequest) -> bool {
        let harmless = matches!(
            req,
            NodeRequest::Read { .. }
                | NodeRequest::Ping
                | NodeRequest::RenewLease { .. }
                | NodeRequest::Replicate { .. }
        );
        harmless && self.duplicate_rate > 0.0 && self.rng.gen_bool(self.duplicate_rate)
    }
}

/// How long a call waits for its answer by default: the TCP transport's
/// default request timeout.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A simulated network. Cloning gives another handle to the same network.
#[derive(Clone)]
pub struct SimNetwork {
    inner: Arc<Mutex<Inner>>,
    /// Notified on every crash, so calls waiting on a crashed node end.
    crashed: Arc<tokio::sync::Notify>,
}

impl Default for SimNetwork {
    fn default() -> Self {
        Self::new(0)
    }
}

impl SimNetwork {
    /// A network with no delay and no losses; `seed` drives the random
    /// delays and drops configured later.
    pub fn new(seed: u64) -> Self {
        SimNetwork {
            inner: Arc::new(Mutex::new(Inner {
                handlers: HashMap::new(),
                isolated: BTreeSet::new(),
                cut: BTreeSet::new(),
                min_delay: Duration::ZERO,
                max_delay: Duration::ZERO,
                drop_rate: 0.0,
                answer_loss_rate: 0.0,
                duplicate_rate: 0.0,
                rng: StdRng::seed_from_u64(seed),
                calls: 0,
                call_timeout: Some(DEFAULT_CALL_TIMEOUT),
                lose_answers: HashMap::new(),
                crashes: HashMap::new(),
            })),
            crashed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock_or_recover()
    }

    /// Makes `node` reachable: requests to it go to `handler`.
    pub fn register(&self, node: NodeId, handler: Arc<dyn RequestHandler>) {
        self.lock().handlers.insert(node, handler);
    }

    /// Removes `node`'s handler (a crashed node): calls to it fail.
    pub fn unregister(&self, node: NodeId) {
        self.lock().handlers.remove(&node);
    }

    /// The transport `node` uses for its outgoing calls.
    pub fn transport(&self, node: NodeId) -> Arc<SimTransport> {
        Arc::new(SimTransport {
            net: self.clone(),
            from: node,
        })
    }

    /// Cuts `node` off from every other node.
    pub fn isolate(&self, node: NodeId) {
        self.lock().isolated.insert(node);
    }

    /// Cuts the link between `a` and `b` (both directions).
    pub fn partition(&self, a: NodeId, b: NodeId) {
        self.lock().cut.insert((a.min(b), a.max(b)));
    }

    /// Removes every isolation and partition.
    pub fn heal(&self) {
        let mut inner = self.lock();
        inner.isolated.clear();
        inner.cut.clear();
    }

    /// Every message (request and response alike) takes a random time in
    /// `min..=max`.
    pub fn set_delay(&self, min: Duration, max: Duration) {
        let mut inner = self.lock();
        inner.min_delay = min;
        inner.max_delay = max.max(min);
    }

    /// Each message is lost with probability `rate` (0.0 to 1.0).
    pub fn set_drop_rate(&self, rate: f64) {
        self.lock().drop_rate = rate.clamp(0.0, 1.0);
    }

    /// Crashes `node`: it stops serving, and the requests it is handling
    /// now are never answered (their callers get `NoAnswer`); calls to it
    /// fail with `Unreachable` until it is registered again.
    pub fn crash(&self, node: NodeId) {
        {
            let mut inner = self.lock();
            inner.handlers.remove(&node);
            *inner.crashes.entry(node).or_default() += 1;
        }
        self.crashed.notify_waiters();
    }

    fn crashes_of(&self, node: NodeId) -> u64 {
        self.lock().crashes.get(&node).copied().unwrap_or(0)
    }

    /// The next `n` requests delivered to `to` are handled, and their
    /// answers lost: the callers get `NoAnswer`, as over TCP when a
    /// connection breaks after the request went out.
    pub fn lose_next_answers(&self, to: NodeId, n: usize) {
        *self.lock().lose_answers.entry(to).or_default() += n;
    }

    /// How long a call waits for the answer of a delivered request before
    /// it fails with `NoAnswer` (default [`DEFAULT_CALL_TIMEOUT`]); `None`
    /// waits forever.
    pub fn set_call_timeout(&self, timeout: Option<Duration>) {
        self.lock().call_timeout = timeout;
    }

    /// Each answer is lost with probability `rate` after the receiver
    /// handled the request (on top of [`set_drop_rate`](Self::set_drop_rate)):
    /// the caller gets `NoAnswer`, the "delivered, answer lost" outcome.
    pub fn set_answer_loss_rate(&self, rate: f64) {
        self.lock().answer_loss_rate = rate.clamp(0.0, 1.0);
    }

    /// Each read, ping, lease renewal or replication (stored at fixed
    /// indexes, so a second copy stores nothing) is delivered a second time with
    /// probability `rate`, a random delay after the first, its answer
    /// thrown away. The [`Transport`] contract (4, at most once) rules
    /// duplicates out for a real transport, so requests that change state
    /// (appends, GETs) are never duplicated; for these three a late copy
    /// must change nothing but the leader's `last_heard`, which it only
    /// moves later (a later failover, always safe).
    pub fn set_duplicate_rate(&self, rate: f64) {
        self.lock().duplicate_rate = rate.clamp(0.0, 1.0);
    }

    /// Number of calls made so far (all nodes).
    pub fn calls(&self) -> u64 {
        self.lock().calls
    }
}

/// One node's outgoing side of a [`SimNetwork`].
pub struct SimTransport {
    net: SimNetwork,
    from: NodeId,
}

#[async_trait]
impl Transport for SimTransport {
    async fn call(&self, to: NodeId, req: NodeRequest) -> Result<NodeResponse> {
        let (delay, dropped, handler, duplicate, crashes) = {
            let mut inner = self.net.lock();
            inner.calls += 1;
            let delay = inner.delay();
            let dropped = inner.drops();
            let handler = if inner.blocked(self.from, to) {
                None
            } else {
                inner.handlers.get(&to).cloned()
            };
            let duplicate = if inner.duplicates(&req) {
                Some(inner.delay() + inner.delay())
            } else {
                None
            };
            let crashes = inner.crashes.get(&to).copied().unwrap_or(0);
            (delay, dropped, handler, duplicate, crashes)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let Some(handler) = handler else {
            return Err(Error::Unreachable(to));
        };
        if dropped {
            return Err(Error::NoAnswer(format!(
                "no answer from node {to}: request lost"
            )));
        }
        let (timeout, lose_answer) = {
            let mut inner = self.net.lock();
            if inner.crashes.get(&to).copied().unwrap_or(0) != crashes {
                // It crashed while the request was on its way.
                return Err(Error::Unreachable(to));
            }
            let lose = inner.lose_answers.get_mut(&to).filter(|n| **n > 0);
            let lose_answer = lose.map(|n| *n -= 1).is_some();
            (inner.call_timeout, lose_answer)
        };
        if let Some(late) = duplicate {
            let (handler, copy) = (handler.clone(), req.clone());
            tokio::spawn(async move {
                tokio::time::sleep(late).await;
                let _ = handler.handle(copy).await;
            });
        }
        let crashed = || -> Result<NodeResponse> {
            Err(Error::NoAnswer(format!(
                "no answer from node {to}: it crashed while handling the request"
            )))
        };
        // Ends when `to` crashes. A `Notify` wakes its waiters in order, so
        // a seeded run replays.
        let crash = async {
            loop {
                let notified = self.net.crashed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.net.crashes_of(to) != crashes {
                    return;
                }
                notified.await;
            }
        };
        let exchange = async {
            let result = tokio::select! {
                biased;
                result = handler.handle(req) => result,
                () = crash => return crashed(),
            };
            let (delay, dropped, blocked) = {
                let mut inner = self.net.lock();
                let dropped = inner.drops() || inner.loses_answer();
                (inner.delay(), dropped, inner.blocked(self.from, to))
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if self.net.crashes_of(to) != crashes {
                return crashed();
            }
            if dropped || blocked || lose_answer {
                return Err(Error::NoAnswer(format!(
                    "no answer from node {to}: response lost"
                )));
            }
            result
        };
        match timeout {
            None => exchange.await,
            Some(limit) => tokio::time::timeout(limit, exchange)
                .await
                .unwrap_or_else(|_| {
                    Err(Error::NoAnswer(format!(
                        "no answer from node {to} within {limit:?} of sending the request"
                    )))
                }),
        }
    }

    async fn call_addr(&self, addr: &str, req: NodeRequest) -> Result<NodeResponse> {
        // Simulated addresses are `sim:<node id>`.
        let node = addr
            .strip_prefix("sim:")
            .and_then(|n| n.parse::<NodeId>().ok())
            .ok_or_else(|| {
                Error::BadRequest(format!(
                    "{addr:?} is not a simulated address; use \"sim:<node id>\""
                ))
            })?;
        self.call(node, req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    #[async_trait]
    impl RequestHandler for Echo {
        async fn handle(&self, req: NodeRequest) -> Result<NodeResponse> {
            match req {
                NodeRequest::Ping => Ok(NodeResponse::Done),
                _ => Err(Error::NotLeader),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn given_a_partition_when_calling_across_it_should_fail_until_healed() {
        let net = SimNetwork::new(1);
        net.register(1, Arc::new(Echo));
        net.register(2, Arc::new(Echo));
        let t1 = net.transport(1);
        assert_eq!(t1.call(2, NodeRequest::Ping).await, Ok(NodeResponse::Done));
        assert_eq!(
            t1.call(
                2,
                NodeRequest::Append {
                    segment: crate::SegmentKey::new(crate::TopicName::new("t").unwrap(), 1),
                    entries: vec![]
                }
            )
            .await,
            Err(Error::NotLeader),
            "errors travel unchanged"
        );
        net.partition(1, 2);
        assert_eq!(
            t1.call(2, NodeRequest::Ping).await,
            Err(Error::Unreachable(2))
        );
        net.heal();
        net.isolate(2);
        assert!(t1.call(2, NodeRequest::Ping).await.is_err());
        net.heal();
        assert!(t1.call_addr("sim:2", NodeRequest::Ping).await.is_ok());
        assert!(t1.call(3, NodeRequest::Ping).await.is_err());
    }

    /// Counts what it handles; every request is a ping.
    #[derive(Default)]
    struct Counter(std::sync::atomic::AtomicU64);

    #[async_trait]
    impl RequestHandler for Counter {
        async fn handle(&self, _req: NodeRequest) -> Result<NodeResponse> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(NodeResponse::Done)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn given_lost_answers_when_calling_should_answer_no_answer_after_handling() {
        let net = SimNetwork::new(3);
        let counter = Arc::new(Counter::default());
        net.register(2, counter.clone());
        net.set_answer_loss_rate(1.0);
        let err = net
            .transport(1)
            .call(2, NodeRequest::Ping)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NoAnswer(_)), "{err:?}");
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn given_duplicates_when_pinging_should_deliver_twice_and_never_duplicate_an_append() {
        let net = SimNetwork::new(5);
        let counter = Arc::new(Counter::default());
        net.register(2, counter.clone());
        net.set_duplicate_rate(1.0);
        net.set_delay(Duration::from_millis(1), Duration::from_millis(3));
        let t1 = net.transport(1);
        assert!(t1.call(2, NodeRequest::Ping).await.is_ok());
        let append = NodeRequest::Append {
            segment: crate::SegmentKey::new(crate::TopicName::new("t").unwrap(), 1),
            entries: vec![],
        };
        assert!(t1.call(2, append).await.is_ok());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            counter.0.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "the ping twice, the append once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn given_drops_when_calling_many_times_should_lose_some_and_deliver_some() {
        let net = SimNetwork::new(7);
        net.register(2, Arc::new(Echo));
        net.set_drop_rate(0.5);
        net.set_delay(Duration::from_millis(1), Duration::from_millis(5));
        let t1 = net.transport(1);
        let mut ok = 0;
        for _ in 0..100 {
            if t1.call(2, NodeRequest::Ping).await.is_ok() {
                ok += 1;
            }
        }
        assert!(ok > 0 && ok < 100, "{ok} of 100 delivered");
    }
}
