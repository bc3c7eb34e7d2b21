//! The blocking client: the calls of [`crate::Client`], for programs that
//! do not run an async runtime.
//!
//! ```no_run
//! use walrus_client::blocking::Client;
//! # fn run() -> Result<(), walrus_client::ClientError> {
//! let client = Client::with_nodes(["127.0.0.1:9091", "127.0.0.1:9092"])?;
//! client.register("logs")?;
//! client.put("logs", "hello world")?;
//! println!("{:?}", client.get("logs")?);
//! # Ok(()) }
//! ```
//!
//! A thin wrapper: each client owns a current-thread tokio runtime (no
//! extra thread) and runs the async client's call on it to completion.
//! The same connection handling, fail-over, pipelining and error classes
//! apply. Do not call it from inside an async runtime (a tokio task):
//! that would block the runtime's thread, so such a call returns
//! [`ClientError::Runtime`] at once, sending nothing; use the async
//! [`crate::Client`] there. For the same reason, drop it outside one
//! (tokio panics when a runtime is dropped inside another).

use std::future::Future;
use std::time::Duration;

use crate::{
    BatchAck, ClientError, Producer, ReadBatch, ReadOptions, Result, RetainSetting, TopicConfig,
};

/// A blocking client of a Walrus cluster. Calls on one client are
/// serialised (it takes `&self`; share it between threads behind an `Arc`).
pub struct Client {
    inner: crate::Client,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    /// A client of the node at `addr` (`host:port`); see
    /// [`crate::Client::new`]. Fails only when the runtime cannot be made
    /// (the process is out of file descriptors or memory).
    pub fn new(addr: impl Into<String>) -> Result<Self> {
        Self::wrap(crate::Client::new(addr))
    }

    /// A client of the cluster whose nodes are at `addrs`, with fail-over;
    /// see [`crate::Client::with_nodes`].
    pub fn with_nodes<A: Into<String>>(addrs: impl IntoIterator<Item = A>) -> Result<Self> {
        Self::wrap(crate::Client::with_nodes(addrs))
    }

    /// The same client, authenticating with `token` on every connection;
    /// see [`crate::Client::with_auth`].
    pub fn with_auth(self, token: impl Into<Vec<u8>>) -> Self {
        Client {
            inner: self.inner.with_auth(token),
            runtime: self.runtime,
        }
    }

    /// A blocking client over an async client set up as wanted (timeouts).
    pub fn wrap(inner: crate::Client) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Runtime(format!("cannot start the client's runtime: {e}")))?;
        Ok(Client { inner, runtime })
    }

    /// The async client inside (its settings, its addresses).
    pub fn inner(&self) -> &crate::Client {
        &self.inner
    }

    fn block<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(ClientError::Runtime(
                "the blocking client was called from inside an async runtime, where it would \
                 block the runtime's thread; use walrus_client::Client (async) there"
                    .into(),
            ));
        }
        self.runtime.block_on(call)
    }

    /// `REGISTER <topic>`.
    pub fn register(&self, topic: &str) -> Result<()> {
        self.block(self.inner.register(topic))
    }

    /// See [`crate::Client::register_replicated`].
    pub fn register_replicated(&self, topic: &str, rf: u32) -> Result<()> {
        self.block(self.inner.register_replicated(topic, rf))
    }

    /// `PUT <topic> <payload>`: `Ok` once the entry is durable.
    pub fn put(&self, topic: &str, payload: impl AsRef<str>) -> Result<()> {
        self.block(self.inner.put(topic, payload))
    }

    /// `GET <topic>`: the next entry of the shared cursor, `None` at the end.
    pub fn get(&self, topic: &str) -> Result<Option<String>> {
        self.block(self.inner.get(topic))
    }

    /// `STATE <topic>` as JSON.
    pub fn state(&self, topic: &str) -> Result<serde_json::Value> {
        self.block(self.inner.state(topic))
    }

    /// `METRICS` as JSON.
    pub fn metrics(&self) -> Result<serde_json::Value> {
        self.block(self.inner.metrics())
    }

    /// `TOPICS` as JSON.
    pub fn topics(&self) -> Result<serde_json::Value> {
        self.block(self.inner.topics())
    }

    /// `TOPICS COUNTS` as JSON.
    pub fn topic_counts(&self) -> Result<serde_json::Value> {
        self.block(self.inner.topic_counts())
    }

    /// `READ <topic> <from> …`; see [`crate::Client::read`].
    pub fn read(&self, topic: &str, from: u64, options: ReadOptions) -> Result<ReadBatch> {
        self.block(self.inner.read(topic, from, options))
    }

    /// `FETCH <group> <topic> …`; see [`crate::Client::fetch`].
    pub fn fetch(&self, group: &str, topic: &str, options: ReadOptions) -> Result<ReadBatch> {
        self.block(self.inner.fetch(group, topic, options))
    }

    /// `COMMIT <group> <topic> <offset>`; see [`crate::Client::commit`].
    pub fn commit(&self, group: &str, topic: &str, offset: u64) -> Result<()> {
        self.block(self.inner.commit(group, topic, offset))
    }

    /// See [`crate::Client::commit_async`].
    pub fn commit_async(&self, group: &str, topic: &str, offset: u64) -> Result<()> {
        self.block(self.inner.commit_async(group, topic, offset))
    }

    /// `SEEK <group> <topic> <offset>`.
    pub fn seek(&self, group: &str, topic: &str, offset: u64) -> Result<()> {
        self.block(self.inner.seek(group, topic, offset))
    }

    /// `OFFSETS <topic>`: `(first, end)`.
    pub fn offsets(&self, topic: &str) -> Result<(u64, u64)> {
        self.block(self.inner.offsets(topic))
    }

    /// `PING`.
    pub fn ping(&self) -> Result<()> {
        self.block(self.inner.ping())
    }

    /// `REGISTER <topic> RETAIN …`; see [`crate::Client::register_retaining`].
    pub fn register_retaining(&self, topic: &str, retain: RetainSetting) -> Result<()> {
        self.block(self.inner.register_retaining(topic, retain))
    }

    /// `CONFIG <topic> RETAIN …`; see [`crate::Client::set_retention`].
    pub fn set_retention(&self, topic: &str, retain: RetainSetting) -> Result<()> {
        self.block(self.inner.set_retention(topic, retain))
    }

    /// `CONFIG <topic>`; see [`crate::Client::config`].
    pub fn config(&self, topic: &str) -> Result<TopicConfig> {
        self.block(self.inner.config(topic))
    }

    /// `REPLACE-STORAGE <node> <storage-id>` (operator).
    pub fn replace_storage(&self, node: u64, storage_id: &str) -> Result<serde_json::Value> {
        self.block(self.inner.replace_storage(node, storage_id))
    }

    /// One request body as it is; the answer's text as it is.
    pub fn send_raw(&self, request: &str) -> Result<String> {
        self.block(self.inner.send_raw(request))
    }

    /// See [`crate::Client::send_retrying`].
    pub fn send_retrying(&self, request: &str, patience: Duration) -> Result<String> {
        self.block(self.inner.send_retrying(request, patience))
    }

    /// See [`crate::Client::put_retrying`].
    pub fn put_retrying(
        &self,
        topic: &str,
        payload: impl AsRef<str>,
        patience: Duration,
    ) -> Result<()> {
        self.block(self.inner.put_retrying(topic, payload, patience))
    }

    /// Pipelined PUTs; see [`crate::Client::put_many`].
    pub fn put_many<P: AsRef<str>>(
        &self,
        topic: &str,
        payloads: &[P],
        window: usize,
    ) -> Vec<Result<()>> {
        self.block(async { Ok(self.inner.put_many(topic, payloads, window).await) })
            .unwrap_or_else(|e| payloads.iter().map(|_| Err(e.same_again())).collect())
    }

    /// `PUTB`; see [`crate::Client::put_batch`].
    pub fn put_batch<P: AsRef<str>>(&self, topic: &str, payloads: &[P]) -> Result<BatchAck> {
        self.block(self.inner.put_batch(topic, payloads))
    }

    /// `PUTB … PRODUCER`; see [`crate::Client::put_batch_as`].
    pub fn put_batch_as<P: AsRef<str>>(
        &self,
        topic: &str,
        payloads: &[P],
        producer: &mut Producer,
    ) -> Result<BatchAck> {
        self.block(self.inner.put_batch_as(topic, payloads, producer))
    }

    /// See [`crate::Client::put_batch_retrying`].
    pub fn put_batch_retrying<P: AsRef<str>>(
        &self,
        topic: &str,
        payloads: &[P],
        producer: Option<&mut Producer>,
        patience: Duration,
    ) -> Result<BatchAck> {
        self.block(
            self.inner
                .put_batch_retrying(topic, payloads, producer, patience),
        )
    }

    /// See [`crate::Client::put_idempotent`].
    pub fn put_idempotent(
        &self,
        topic: &str,
        payload: impl AsRef<str>,
        producer: &mut Producer,
        patience: Duration,
    ) -> Result<BatchAck> {
        self.block(
            self.inner
                .put_idempotent(topic, payload, producer, patience),
        )
    }

    /// Pipelined requests; see [`crate::Client::send_many`].
    pub fn send_many<R: AsRef<str>>(&self, requests: &[R], window: usize) -> Vec<Result<String>> {
        self.block(async { Ok(self.inner.send_many(requests, window).await) })
            .unwrap_or_else(|e| requests.iter().map(|_| Err(e.same_again())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{count, dead_addr, scripted};

    /// A runtime for the scripted servers, running on its own threads
    /// while the test's thread makes blocking calls.
    fn server_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a test runtime")
    }

    #[test]
    fn given_a_live_node_after_a_dead_one_when_calling_without_a_runtime_should_answer() {
        let rt = server_runtime();
        let dead = rt.block_on(dead_addr());
        let (live, seen) = rt.block_on(scripted(|_, req| {
            Some(match req {
                "GET logs" => "OK hello world".to_string(),
                "PUT logs a" | "PUT logs b" => "OK".into(),
                _ => "ERR topic not found".into(),
            })
        }));
        let c = Client::with_nodes([dead, live]).unwrap();
        assert_eq!(c.get("logs").unwrap().as_deref(), Some("hello world"));
        let outcomes = c.put_many("logs", &["a", "b"], 2);
        assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
        let e = c.put("nope", "x").unwrap_err();
        assert_eq!(e.to_string(), "topic not found");
        assert_eq!(count(&seen), 4);
    }

    #[test]
    fn given_a_producer_when_putting_a_batch_without_a_runtime_should_send_putb_and_move_on() {
        let rt = server_runtime();
        let (addr, _) = rt.block_on(scripted(|n, req| {
            assert_eq!(req, format!("PUTB logs 1 PRODUCER p {n}\n1\na\n"));
            Some(format!("OK 1 {n}"))
        }));
        let c = Client::new(addr).unwrap();
        let mut p = Producer::new("p");
        let first = c.put_batch_as("logs", &["a"], &mut p).unwrap();
        assert_eq!(
            first,
            BatchAck {
                n: 1,
                first: Some(0)
            }
        );
        let again = c
            .put_idempotent("logs", "a", &mut p, Duration::from_secs(1))
            .unwrap();
        assert_eq!(again.first, Some(1));
        assert_eq!(p.next_seq(), 2);
    }

    #[tokio::test]
    async fn given_a_call_from_inside_an_async_runtime_should_refuse_without_sending() {
        let (addr, seen) = scripted(|_, _| Some("OK".into())).await;
        let c = tokio::task::spawn_blocking(move || Client::new(addr).unwrap())
            .await
            .unwrap();
        let e = c.put("logs", "x").unwrap_err();
        assert!(matches!(e, ClientError::Runtime(_)), "{e}");
        assert!(!e.is_retryable() && !e.is_outcome_unknown(), "{e}");
        assert_eq!(count(&seen), 0);
        // Dropping a runtime inside another panics: let a plain thread do it.
        std::thread::spawn(move || drop(c)).join().unwrap();
    }
}
