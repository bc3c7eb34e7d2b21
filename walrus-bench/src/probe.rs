//! Single-request tools for the benchmark suite: how long until a cluster
//! takes writes (start-up, failover), and one request with its raw answer.

use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

use walrus_client::{Client, ReadOptions};

use crate::wire::{classify, Answer};

/// What a successful wait took.
#[derive(Debug, Clone)]
pub struct WaitOutcome {
    /// From the call to the first attempt that succeeded.
    pub elapsed: Duration,
    /// Attempts that failed on the way, with the last error text.
    pub failed_attempts: u64,
    pub last_error: Option<String>,
}

/// What one attempt of a wait found.
enum Attempt {
    Done,
    /// A step on the way (REGISTER before the PUT): go on at once.
    Next,
    /// Not yet (an error, or not there yet): try again after the pause.
    Retry(String),
    /// Wrong in a way that waiting does not mend (wrong data).
    Fail(String),
}

/// Runs `attempt` against `addr` every `every` until it is `Done`, or
/// `timeout` passes. One client for all attempts: it reconnects by itself
/// after a failed one.
async fn retry_until(
    addr: &str,
    every: Duration,
    timeout: Duration,
    what: &str,
    mut attempt: impl AsyncFnMut(&Client) -> Attempt,
) -> anyhow::Result<WaitOutcome> {
    let start = Instant::now();
    let deadline = start + timeout;
    let attempt_timeout = Duration::from_secs(2);
    let mut failed = 0u64;
    let mut last_error = None;
    let client = Client::new(addr)
        .with_timeout(attempt_timeout)
        .with_connect_timeout(attempt_timeout);
    while Instant::now() < deadline {
        match attempt(&client).await {
            Attempt::Done => {
                return Ok(WaitOutcome {
                    elapsed: start.elapsed(),
                    failed_attempts: failed,
                    last_error,
                })
            }
            Attempt::Next => continue,
            Attempt::Retry(e) => {
                failed += 1;
                last_error = Some(e);
            }
            Attempt::Fail(e) => bail!("{what} via {addr}: {e}"),
        }
        tokio::time::sleep(every).await;
    }
    bail!(
        "no {what} via {addr} within {timeout:?} ({failed} attempts failed, last: {})",
        last_error.unwrap_or_else(|| "none".into())
    )
}

/// Sends `PUT <topic> probe` to `addr` every `every` (with `REGISTER`
/// first when `register`) until one is answered `OK`, or `timeout` passes.
pub async fn wait_for_write(
    addr: &str,
    topic: &str,
    register: bool,
    every: Duration,
    timeout: Duration,
) -> anyhow::Result<WaitOutcome> {
    let mut registered = !register;
    retry_until(addr, every, timeout, "write accepted", async |client| {
        let body = if registered {
            format!("PUT {topic} probe")
        } else {
            format!("REGISTER {topic}")
        };
        match client.send_raw(&body).await {
            Ok(answer) => match classify(answer.as_bytes()) {
                Answer::Ok if registered => Attempt::Done,
                Answer::Ok => {
                    registered = true;
                    Attempt::Next
                }
                Answer::Err(e) => Attempt::Retry(e),
                _ => Attempt::Retry(format!("unexpected answer {answer}")),
            },
            Err(e) => Attempt::Retry(e.to_string()),
        }
    })
    .await
}

/// Sends `READ <topic> <offset> 1` to `addr` every `every` until it returns
/// the entry at `offset` (with exactly `payload`, when given), or `timeout`
/// passes. A different payload there fails at once: offsets never name
/// another entry.
pub async fn wait_for_read(
    addr: &str,
    topic: &str,
    offset: u64,
    payload: Option<&str>,
    every: Duration,
    timeout: Duration,
) -> anyhow::Result<WaitOutcome> {
    let options = ReadOptions {
        max_entries: 1,
        ..ReadOptions::default()
    };
    retry_until(
        addr,
        every,
        timeout,
        "read of the entry",
        async |client| match client.read(topic, offset, options).await {
            Ok(batch) => match batch.entries.first() {
                Some(e) if e.offset != offset => Attempt::Fail(format!(
                    "READ {topic} {offset} returned offset {}",
                    e.offset
                )),
                Some(e) if payload.is_some_and(|p| p != e.payload) => Attempt::Fail(format!(
                    "offset {offset} of {topic} holds {:?}, not the {:?} written there",
                    e.payload,
                    payload.unwrap_or_default()
                )),
                Some(_) => Attempt::Done,
                None => Attempt::Retry(format!("no entry at offset {offset} yet")),
            },
            Err(e) => Attempt::Retry(e.to_string()),
        },
    )
    .await
}

/// Sends one request and returns the answer's body.
pub async fn one_request(addr: &str, body: &str, timeout: Duration) -> anyhow::Result<Vec<u8>> {
    let client = Client::new(addr)
        .with_timeout(timeout)
        .with_connect_timeout(timeout);
    Ok(client.send_raw(body).await?.into_bytes())
}
