//! Single-request tools for the benchmark suite: how long until a cluster
//! takes writes (start-up, failover), and one request with its raw answer.

use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

use walrus_client::Client;

use crate::wire::{classify, Answer};

/// Where a wait for a write stands when it gives up.
#[derive(Debug, Clone)]
pub struct WaitOutcome {
    /// From the call to the first `OK` to PUT.
    pub elapsed: Duration,
    /// Attempts that failed on the way, with the last error text.
    pub failed_attempts: u64,
    pub last_error: Option<String>,
}

/// Sends `PUT <topic> probe` to `addr` every `every` (reconnecting as
/// needed, with `REGISTER` first when `register`) until one is answered
/// `OK`, or `timeout` passes.
pub async fn wait_for_write(
    addr: &str,
    topic: &str,
    register: bool,
    every: Duration,
    timeout: Duration,
) -> anyhow::Result<WaitOutcome> {
    let start = Instant::now();
    let deadline = start + timeout;
    let attempt_timeout = Duration::from_secs(2);
    let mut failed = 0u64;
    let mut last_error = None;
    let mut registered = !register;
    // Reconnects by itself after a failed attempt.
    let client = Client::new(addr)
        .with_timeout(attempt_timeout)
        .with_connect_timeout(attempt_timeout);
    while Instant::now() < deadline {
        let body = if registered {
            format!("PUT {topic} probe")
        } else {
            format!("REGISTER {topic}")
        };
        match client.send_raw(&body).await {
            Ok(answer) => match classify(answer.as_bytes()) {
                Answer::Ok if registered => {
                    return Ok(WaitOutcome {
                        elapsed: start.elapsed(),
                        failed_attempts: failed,
                        last_error,
                    })
                }
                Answer::Ok => {
                    registered = true;
                    continue;
                }
                Answer::Err(e) => {
                    failed += 1;
                    last_error = Some(e);
                }
                _ => {
                    failed += 1;
                    last_error = Some(format!("unexpected answer {answer}"));
                }
            },
            Err(e) => {
                failed += 1;
                last_error = Some(e.to_string());
            }
        }
        tokio::time::sleep(every).await;
    }
    bail!(
        "no write accepted by {addr} within {timeout:?} ({failed} attempts failed, last: {})",
        last_error.unwrap_or_else(|| "none".into())
    )
}

/// Sends one request and returns the answer's body.
pub async fn one_request(addr: &str, body: &str, timeout: Duration) -> anyhow::Result<Vec<u8>> {
    let client = Client::new(addr)
        .with_timeout(timeout)
        .with_connect_timeout(timeout);
    Ok(client.send_raw(body).await?.into_bytes())
}
