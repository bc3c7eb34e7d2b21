//! Single-request tools for the benchmark suite: how long until a cluster
//! takes writes (start-up, failover), and one request with its raw answer.

use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

use crate::wire::{classify, Answer, SimpleClient};

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
    let mut client: Option<SimpleClient> = None;
    while Instant::now() < deadline {
        if client.is_none() {
            match SimpleClient::connect(addr, attempt_timeout).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    failed += 1;
                    last_error = Some(format!("{e:#}"));
                    tokio::time::sleep(every).await;
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected just above");
        let body = if registered {
            format!("PUT {topic} probe")
        } else {
            format!("REGISTER {topic}")
        };
        match c.request(body.as_bytes(), attempt_timeout).await {
            Ok(answer) => match classify(&answer) {
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
                    last_error = Some(format!(
                        "unexpected answer {}",
                        String::from_utf8_lossy(&answer)
                    ));
                }
            },
            Err(e) => {
                failed += 1;
                last_error = Some(format!("{e:#}"));
                client = None;
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
    let mut c = SimpleClient::connect(addr, timeout).await?;
    c.request(body.as_bytes(), timeout).await
}
