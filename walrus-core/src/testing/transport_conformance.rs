//! A conformance suite for any [`Transport`]: the contract written under the
//! trait, checked between two nodes of the backend under test.
//!
//! A backend provides a [`TransportFactory`] (start a node serving a
//! handler, crash it, cut it off) and calls [`run`]:
//!
//! ```ignore
//! walrus_core::testing::transport_conformance::run(MyFactory::new()).await;
//! ```
//!
//! The suite brings its own [`RequestHandler`] on the receiving node, which
//! records every request it is given, so each check sees whether a failed
//! call was delivered. Checks (each panics naming the broken rule): every
//! request and answer kind arrives unchanged, handler errors arrive
//! unchanged, concurrent calls get their own answers, sequential calls are
//! handled in order and once, `call_addr` reaches a node, a node that never
//! started or was cut off is not delivered to (a retryable error), a call
//! nobody answers ends within the timeout as "outcome unknown", and a node
//! that crashes while handling a request gives "outcome unknown" for it and
//! "unreachable" afterwards.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::locks::MutexExt;
use crate::metadata::NodeInfo;
use crate::transport::{NodeRequest, NodeResponse, RequestHandler, Transport};
use crate::types::{NodeId, SegmentKey, StorageId, TopicName};

/// How long the suite waits for something that should happen "soon" (a
/// healed node reachable again, a crash noticed).
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The caller in every check.
pub const CALLER: NodeId = 1;
/// The receiver in every check.
pub const RECEIVER: NodeId = 2;
/// A node that is never started.
pub const ABSENT: NodeId = 3;

/// Builds the nodes the suite talks between.
#[async_trait]
pub trait TransportFactory: Send {
    /// Makes `node` answer requests with `handler`: first start, or again
    /// after [`crash`](Self::crash). Every transport of the factory can
    /// reach it by id afterwards.
    async fn start(&mut self, node: NodeId, handler: Arc<dyn RequestHandler>);

    /// The transport `node` makes its calls with (whether or not it serves).
    /// Knows where every started node is; [`ABSENT`] has no address or one
    /// where nothing listens.
    fn transport(&mut self, node: NodeId) -> Arc<dyn Transport>;

    /// The address at which [`Transport::call_addr`] reaches the started
    /// `node`.
    fn address(&self, node: NodeId) -> String;

    /// Crashes `node`: it stops at once; the requests it is handling are
    /// never answered, and later calls to it are not delivered until it
    /// is started again.
    async fn crash(&mut self, node: NodeId);

    /// Cuts `node` off from every other node (`true`) or heals it.
    async fn isolate(&mut self, node: NodeId, isolated: bool);

    /// The longest a call waits for the answer to a request it sent (the
    /// transport's request timeout): the suite wants every call to end
    /// within twice this.
    fn answer_timeout(&self) -> Duration;
}

/// Runs every check against the factory's nodes.
pub async fn run<F: TransportFactory>(mut factory: F) {
    let receiver = Arc::new(Recorder::default());
    factory.start(RECEIVER, receiver.clone()).await;
    let caller = factory.transport(CALLER);

    every_request_and_answer_kind_travels_unchanged(&caller, &receiver).await;
    handler_errors_arrive_unchanged(&caller).await;
    concurrent_calls_get_their_own_answers(&caller).await;
    sequential_calls_are_handled_in_order_and_once(&caller, &receiver).await;
    call_addr_reaches_the_node(&caller, &factory, &receiver).await;
    a_node_never_started_is_not_delivered_to(&caller).await;
    an_isolated_node_is_not_delivered_to_until_healed(&mut factory, &caller, &receiver).await;
    a_call_never_answered_ends_within_the_timeout_as_outcome_unknown(&factory, &caller, &receiver)
        .await;
    a_crash_while_handling_is_outcome_unknown_then_unreachable(&mut factory, &caller, &receiver)
        .await;
}

/// The suite's handler. `Consensus` bodies are scripts:
/// - `echo:<x>` answers the same bytes;
/// - `sleep:<ms>:<x>` waits `ms` milliseconds, then echoes;
/// - `hang:<x>` never answers;
/// - `err:<i>` fails with `errors()[i]`.
///
/// Every other request gets a fixed answer of its kind ([`answer_to`]).
#[derive(Default)]
pub struct Recorder {
    handled: Mutex<Vec<NodeRequest>>,
}

impl Recorder {
    /// Every request handled so far, in the order the handler began them.
    pub fn handled(&self) -> Vec<NodeRequest> {
        self.handled.lock_or_recover().clone()
    }

    fn count(&self, req: &NodeRequest) -> usize {
        self.handled().iter().filter(|r| *r == req).count()
    }
}

#[async_trait]
impl RequestHandler for Recorder {
    async fn handle(&self, req: NodeRequest) -> Result<NodeResponse> {
        self.handled.lock_or_recover().push(req.clone());
        let NodeRequest::Consensus(body) = &req else {
            return Ok(answer_to(&req));
        };
        let text = String::from_utf8_lossy(body).into_owned();
        if let Some(rest) = text.strip_prefix("sleep:") {
            let ms: u64 = rest
                .split(':')
                .next()
                .and_then(|ms| ms.parse().ok())
                .expect("the suite's sleep scripts name milliseconds");
            tokio::time::sleep(Duration::from_millis(ms)).await;
        } else if text.starts_with("hang:") {
            std::future::pending::<()>().await;
        } else if let Some(i) = text.strip_prefix("err:") {
            let i: usize = i.parse().expect("the suite's error scripts name an index");
            return Err(errors()[i].clone());
        }
        Ok(NodeResponse::Consensus(body.clone()))
    }
}

fn script(text: &str) -> NodeRequest {
    NodeRequest::Consensus(Bytes::copy_from_slice(text.as_bytes()))
}

fn segment() -> SegmentKey {
    SegmentKey::new(TopicName::new("conf-topic").expect("a valid topic name"), 3)
}

/// One request of every kind.
fn every_request() -> Vec<NodeRequest> {
    let topic = TopicName::new("conf-topic").expect("a valid topic name");
    vec![
        NodeRequest::Append {
            segment: segment(),
            entries: vec![
                Bytes::from_static(b"a"),
                Bytes::new(),
                Bytes::from(vec![0u8; 70_000]),
            ],
        },
        NodeRequest::Read {
            segment: segment(),
            from: 5,
            max_entries: 10,
            max_bytes: 1 << 20,
        },
        NodeRequest::Get { topic },
        NodeRequest::RenewLease { node: CALLER },
        NodeRequest::Join {
            node: 4,
            info: NodeInfo {
                raft_addr: "host-4:7000".into(),
                client_addr: "host-4:9000".into(),
            },
        },
        script("echo:\u{0}\u{ff}binary"),
        NodeRequest::Ping,
        NodeRequest::ClaimStorage {
            node: 4,
            storage: StorageId::random(),
            fresh: true,
        },
        NodeRequest::ReplaceStorage {
            node: 4,
            storage: StorageId::random(),
        },
        NodeRequest::ReadWait {
            segment: segment(),
            from: 6,
            max_entries: 3,
            max_bytes: 1 << 16,
            wait_ms: 250,
        },
        NodeRequest::AppendWhole {
            segment: segment(),
            entries: vec![Bytes::from_static(b"one\ntwo"), Bytes::from_static(b" ")],
            producer: Some(crate::types::ProducerSeq {
                producer: crate::types::ProducerId::new("p-1").expect("a valid producer id"),
                seq: 9,
            }),
        },
        NodeRequest::Replicate {
            segment: segment(),
            first: 5,
            entries: vec![Bytes::from_static(b"copy"), Bytes::from_static(b"\n")],
            seal: Some(7),
            marks: vec![crate::transport::ProducerMark {
                producer: crate::types::ProducerId::new("p-1").expect("a valid producer id"),
                seq: 3,
                n: 2,
                first_index: 5,
                first_hash: u64::MAX,
                batch_hash: 1,
            }],
        },
        NodeRequest::Fence { segment: segment() },
        NodeRequest::ReadCopy {
            segment: segment(),
            from: 2,
            max_entries: 4096,
        },
        NodeRequest::SealCopy {
            segment: segment(),
            first: 3,
            entries: vec![Bytes::from_static(b"tail")],
            count: 4,
        },
        NodeRequest::RemoveNode { node: 4 },
        NodeRequest::SegmentProducers { segment: segment() },
    ]
}

/// The suite handler's fixed answer to a request that is not a script:
/// together they cover every kind of answer.
pub fn answer_to(req: &NodeRequest) -> NodeResponse {
    match req {
        NodeRequest::Append { entries, .. } => NodeResponse::Appended {
            first_index: 7,
            count: entries.len() as u64,
        },
        NodeRequest::Read { from, .. }
        | NodeRequest::ReadWait { from, .. }
        | NodeRequest::ReadCopy { from, .. } => NodeResponse::Entries {
            entries: vec![Bytes::from(format!("entry {from}")), Bytes::new()],
            count: 9,
            sealed: true,
        },
        NodeRequest::Get { .. } => NodeResponse::Entry(Some(Bytes::from_static(b"next"))),
        NodeRequest::RenewLease { .. } => NodeResponse::Lease { version: 42 },
        NodeRequest::ReplaceStorage { .. } => NodeResponse::StorageReplaced {
            lost: vec![(segment(), 3)],
        },
        NodeRequest::RemoveNode { node } => NodeResponse::NodeRemoved {
            node: *node,
            under_replicated: 6,
        },
        NodeRequest::Consensus(body) => NodeResponse::Consensus(body.clone()),
        NodeRequest::AppendWhole { entries, .. } => NodeResponse::Stored {
            segment: 3,
            first_index: Some(7),
            n: entries.len() as u64,
        },
        NodeRequest::Replicate { first, entries, .. }
        | NodeRequest::SealCopy { first, entries, .. } => NodeResponse::Replicated {
            count: first + entries.len() as u64,
        },
        NodeRequest::Fence { .. } => NodeResponse::Replicated { count: 11 },
        NodeRequest::SegmentProducers { .. } => NodeResponse::Producers(vec![(
            crate::types::ProducerId::new("p-2").expect("a valid producer id"),
            crate::metadata::ProducerEntry {
                seq: 8,
                n: 3,
                segment: 2,
                first_index: Some(40),
            },
        )]),
        NodeRequest::Join { .. } | NodeRequest::Ping | NodeRequest::ClaimStorage { .. } => {
            NodeResponse::Done
        }
    }
}

/// Errors of every class a handler may return.
pub fn errors() -> Vec<Error> {
    vec![
        Error::TopicNotFound,
        Error::NotLeader,
        Error::LeaseExpired,
        Error::SegmentSealed(segment()),
        Error::Unavailable("no quorum, retry".into()),
        Error::BadRequest("bad".into()),
        Error::Storage("disk full".into()),
        Error::Unreachable(9),
        Error::Refused("another storage".into()),
        Error::OutcomeUnknown("maybe".into()),
        Error::NoAnswer("from node 9".into()),
    ]
}

async fn every_request_and_answer_kind_travels_unchanged(
    caller: &Arc<dyn Transport>,
    receiver: &Recorder,
) {
    let before = receiver.handled().len();
    let sent = every_request();
    for req in &sent {
        let answer = caller.call(RECEIVER, req.clone()).await;
        assert_eq!(
            answer,
            Ok(answer_to(req)),
            "rule 1 (answers travel unchanged): the answer to {req:?}"
        );
    }
    assert_eq!(
        receiver.handled()[before..],
        sent[..],
        "rule 1 (requests travel unchanged): the receiver was handed other requests"
    );
}

async fn handler_errors_arrive_unchanged(caller: &Arc<dyn Transport>) {
    for (i, e) in errors().into_iter().enumerate() {
        let answer = caller.call(RECEIVER, script(&format!("err:{i}"))).await;
        assert_eq!(
            answer,
            Err(e),
            "rule 3 (errors travel): a handler's error arrived changed"
        );
    }
}

async fn concurrent_calls_get_their_own_answers(caller: &Arc<dyn Transport>) {
    // Different sleeps make the answers come back in another order than
    // the calls went out.
    let calls = (0..64).map(|i| {
        let caller = caller.clone();
        async move {
            let text = format!("sleep:{}:call-{i}", (i * 7) % 11);
            let answer = caller.call(RECEIVER, script(&text)).await;
            (text, answer)
        }
    });
    for (text, answer) in futures::future::join_all(calls).await {
        assert_eq!(
            answer,
            Ok(NodeResponse::Consensus(Bytes::from(text.clone()))),
            "rule 2 (answers match calls): call {text:?} got another call's answer"
        );
    }
}

async fn sequential_calls_are_handled_in_order_and_once(
    caller: &Arc<dyn Transport>,
    receiver: &Recorder,
) {
    let before = receiver.handled().len();
    let sent: Vec<NodeRequest> = (0..50)
        .map(|i| script(&format!("echo:in-order-{i}")))
        .collect();
    for req in &sent {
        let answer = caller.call(RECEIVER, req.clone()).await;
        assert!(answer.is_ok(), "a call of {req:?} failed: {answer:?}");
    }
    assert_eq!(
        receiver.handled()[before..],
        sent[..],
        "rule 4 (a call made after another returned is handled after it, and each once)"
    );
}

async fn call_addr_reaches_the_node<F: TransportFactory>(
    caller: &Arc<dyn Transport>,
    factory: &F,
    receiver: &Recorder,
) {
    let req = script("echo:by-address");
    let answer = caller
        .call_addr(&factory.address(RECEIVER), req.clone())
        .await;
    assert_eq!(
        answer,
        Ok(answer_to(&req)),
        "call_addr did not reach node {RECEIVER} at {}",
        factory.address(RECEIVER)
    );
    assert_eq!(receiver.count(&req), 1, "rule 4 (at most once)");
}

async fn a_node_never_started_is_not_delivered_to(caller: &Arc<dyn Transport>) {
    let answer = tokio::time::timeout(PATIENCE, caller.call(ABSENT, NodeRequest::Ping)).await;
    match answer {
        Ok(Err(e)) => assert!(
            e.is_retryable(),
            "rule 5 (not sent: retryable): a call to node {ABSENT}, which never started, \
             failed with {e:?}, which does not say it was not delivered"
        ),
        Ok(Ok(r)) => panic!("node {ABSENT} never started, yet answered {r:?}"),
        Err(_) => panic!("rule 6 (bounded waits): a call to a node that never started hung"),
    }
}

async fn an_isolated_node_is_not_delivered_to_until_healed<F: TransportFactory>(
    factory: &mut F,
    caller: &Arc<dyn Transport>,
    receiver: &Recorder,
) {
    factory.isolate(RECEIVER, true).await;
    let limit = factory.answer_timeout() * 2 + PATIENCE;
    for i in 0..5 {
        let req = script(&format!("echo:while-isolated-{i}"));
        let answer = tokio::time::timeout(limit, caller.call(RECEIVER, req.clone())).await;
        match answer {
            Ok(Err(e)) => assert!(
                e.is_retryable() || e.is_outcome_unknown(),
                "a call to an isolated node failed with {e:?}, of neither class"
            ),
            Ok(Ok(r)) => panic!("an isolated node answered {r:?}"),
            Err(_) => panic!("rule 6 (bounded waits): a call to an isolated node hung"),
        }
        assert_eq!(
            receiver.count(&req),
            0,
            "an isolated node was handed a request"
        );
    }
    factory.isolate(RECEIVER, false).await;
    reached_again(caller, receiver, "healed").await;
}

/// Calls `RECEIVER` until it answers (a healed or restarted node may take
/// a reconnect); each attempt is a request of its own, so the one answered
/// must have been handled exactly once.
async fn reached_again(caller: &Arc<dyn Transport>, receiver: &Recorder, what: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for attempt in 0.. {
        let req = script(&format!("echo:{what}-{attempt}"));
        match caller.call(RECEIVER, req.clone()).await {
            Ok(answer) => {
                assert_eq!(answer, answer_to(&req));
                assert_eq!(receiver.count(&req), 1, "rule 4 (at most once)");
                return;
            }
            Err(e)
                if (e.is_retryable() || e.is_outcome_unknown())
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("node {RECEIVER} was not reached once {what}: {e}"),
        }
    }
}

async fn a_call_never_answered_ends_within_the_timeout_as_outcome_unknown<F: TransportFactory>(
    factory: &F,
    caller: &Arc<dyn Transport>,
    receiver: &Recorder,
) {
    let req = script("hang:timeout");
    let limit = factory.answer_timeout() * 2;
    let answer = tokio::time::timeout(limit, caller.call(RECEIVER, req.clone())).await;
    let Ok(answer) = answer else {
        panic!("rule 6 (bounded waits): a call nobody answers still waited after {limit:?}");
    };
    match answer {
        Err(e) => assert!(
            e.is_outcome_unknown(),
            "rule 5: a request that was delivered and never answered failed with {e:?}, \
             which claims it was not carried out"
        ),
        Ok(r) => panic!("a request whose handler never returns was answered {r:?}"),
    }
    assert_eq!(
        receiver.count(&req),
        1,
        "rule 4 (no blind resends): the unanswered request was handled more than once"
    );
    // The transport is still usable for the next call.
    let next = script("echo:after-a-timeout");
    assert_eq!(
        caller.call(RECEIVER, next.clone()).await,
        Ok(answer_to(&next))
    );
}

async fn a_crash_while_handling_is_outcome_unknown_then_unreachable<F: TransportFactory>(
    factory: &mut F,
    caller: &Arc<dyn Transport>,
    receiver: &Arc<Recorder>,
) {
    let req = script("hang:until-the-crash");
    let call = {
        let caller = caller.clone();
        let req = req.clone();
        tokio::spawn(async move { caller.call(RECEIVER, req).await })
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while receiver.count(&req) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request never reached the receiver"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    factory.crash(RECEIVER).await;
    let limit = factory.answer_timeout() * 2;
    let answer = tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| panic!("rule 6: a call to a crashed node still waited after {limit:?}"))
        .expect("the calling task does not panic");
    match answer {
        Err(e) => assert!(
            e.is_outcome_unknown(),
            "rule 5: the receiver crashed while handling a request it had been handed, and \
             the caller got {e:?}, which claims it was not carried out"
        ),
        Ok(r) => panic!("a crashed node answered {r:?}"),
    }
    // Later calls find nobody: not delivered.
    for i in 0..3 {
        let req = script(&format!("echo:after-the-crash-{i}"));
        match tokio::time::timeout(limit + PATIENCE, caller.call(RECEIVER, req.clone())).await {
            Ok(Err(e)) => assert!(
                e.is_retryable(),
                "rule 5: a call to a crashed node failed with {e:?}, which does not say it \
                 was not delivered"
            ),
            Ok(Ok(r)) => panic!("a crashed node answered {r:?}"),
            Err(_) => panic!("rule 6: a call to a crashed node hung"),
        }
        assert_eq!(receiver.count(&req), 0);
    }
    // Started again, it is reached again.
    let fresh = Arc::new(Recorder::default());
    factory.start(RECEIVER, fresh.clone()).await;
    reached_again(caller, &fresh, "restarted").await;
}
