//! The Transport conformance suite against the simulated network.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use walrus_core::testing::transport_conformance::{run, TransportFactory};
use walrus_core::testing::SimNetwork;
use walrus_core::{Error, NodeId, NodeRequest, NodeResponse, RequestHandler, Result, Transport};

const TIMEOUT: Duration = Duration::from_secs(1);

struct SimFactory {
    net: SimNetwork,
}

impl SimFactory {
    fn new(net: SimNetwork) -> Self {
        net.set_call_timeout(Some(TIMEOUT));
        SimFactory { net }
    }
}

#[async_trait]
impl TransportFactory for SimFactory {
    async fn start(&mut self, node: NodeId, handler: Arc<dyn RequestHandler>) {
        self.net.register(node, handler);
    }
    fn transport(&mut self, node: NodeId) -> Arc<dyn Transport> {
        self.net.transport(node)
    }
    fn address(&self, node: NodeId) -> String {
        format!("sim:{node}")
    }
    async fn crash(&mut self, node: NodeId) {
        self.net.crash(node);
    }
    async fn isolate(&mut self, node: NodeId, isolated: bool) {
        if isolated {
            self.net.isolate(node);
        } else {
            self.net.heal();
        }
    }
    fn answer_timeout(&self) -> Duration {
        TIMEOUT
    }
}

#[tokio::test(start_paused = true)]
async fn given_the_simulated_network_when_running_the_transport_suite_should_pass() {
    run(SimFactory::new(SimNetwork::new(0))).await;
}

#[tokio::test(start_paused = true)]
async fn given_the_simulated_network_with_delays_when_running_the_transport_suite_should_pass() {
    let net = SimNetwork::new(11);
    net.set_delay(Duration::from_millis(1), Duration::from_millis(20));
    run(SimFactory::new(net)).await;
}

/// A transport that reports an unanswered request as unreachable: it
/// tells its callers a delivered request was not carried out.
struct CallsLostAnswersUnreachable(Arc<dyn Transport>);

#[async_trait]
impl Transport for CallsLostAnswersUnreachable {
    async fn call(&self, to: NodeId, req: NodeRequest) -> Result<NodeResponse> {
        match self.0.call(to, req).await {
            // The network's own words, not a handler's error travelling.
            Err(Error::NoAnswer(why)) if why.starts_with("no answer from node") => {
                Err(Error::Unreachable(to))
            }
            other => other,
        }
    }
    async fn call_addr(&self, addr: &str, req: NodeRequest) -> Result<NodeResponse> {
        self.0.call_addr(addr, req).await
    }
}

struct LyingFactory(SimFactory);

#[async_trait]
impl TransportFactory for LyingFactory {
    async fn start(&mut self, node: NodeId, handler: Arc<dyn RequestHandler>) {
        self.0.start(node, handler).await
    }
    fn transport(&mut self, node: NodeId) -> Arc<dyn Transport> {
        Arc::new(CallsLostAnswersUnreachable(self.0.transport(node)))
    }
    fn address(&self, node: NodeId) -> String {
        self.0.address(node)
    }
    async fn crash(&mut self, node: NodeId) {
        self.0.crash(node).await
    }
    async fn isolate(&mut self, node: NodeId, isolated: bool) {
        self.0.isolate(node, isolated).await
    }
    fn answer_timeout(&self) -> Duration {
        self.0.answer_timeout()
    }
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "which claims it was not carried out")]
async fn given_a_transport_that_calls_an_unanswered_request_unreachable_when_running_the_suite_should_fail(
) {
    run(LyingFactory(SimFactory::new(SimNetwork::new(0)))).await;
}
