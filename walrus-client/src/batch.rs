//! PUTB from the client: batches stored whole, and producers whose retried
//! batches are stored once (docs/protocol.md, "Batches and producers").

use std::time::Duration;

use super::{server_error, Client, ClientError, Result, FIRST_RETRY_PAUSE, MAX_RETRY_PAUSE};

/// The most entries of one PUTB (the server's limit).
pub const MAX_BATCH_ENTRIES: usize = 10_000;

/// Where a stored batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchAck {
    /// Entries stored (all of the batch).
    pub n: u64,
    /// The offset of the first entry; `None` while it is not known yet (an
    /// earlier segment's count is pending), or for a repeated write whose
    /// place a restarted leader no longer knows.
    pub first: Option<u64>,
}

/// A producer identity and the sequence number of its next write to one
/// topic. Each write (a batch, or one entry) takes the next number once it
/// is stored; a write whose outcome is unknown is sent again with the same
/// number and the same entries, and the server stores it at most once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    id: String,
    next_seq: u64,
}

impl Producer {
    /// A producer that has written nothing to the topic yet (sequence 0).
    pub fn new(id: impl Into<String>) -> Self {
        Producer::resume(id, 0)
    }

    /// A producer that goes on from `next_seq` (its last stored write had
    /// `next_seq - 1`; the server says which in a sequence-gap error).
    pub fn resume(id: impl Into<String>, next_seq: u64) -> Self {
        Producer {
            id: id.into(),
            next_seq,
        }
    }

    /// A producer with a fresh id (32 hex digits) that no other process
    /// picks: the process id, the time and the standard library's
    /// per-process random hash keys, hashed.
    pub fn random() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let half = |salt: u8| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u8(salt);
            h.write_u128(nanos);
            h.write_u32(std::process::id());
            h.finish()
        };
        Producer::new(format!("{:016x}{:016x}", half(1), half(2)))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The sequence number the next write takes.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// The body of a PUTB: `PUTB <topic> <n>[ PRODUCER <id> <seq>]\n`, then per
/// entry `<length>\n<payload>\n`.
pub fn putb_body<P: AsRef<str>>(
    topic: &str,
    payloads: &[P],
    producer: Option<(&str, u64)>,
) -> String {
    let size: usize = payloads.iter().map(|p| p.as_ref().len() + 12).sum();
    let mut body = String::with_capacity(64 + size);
    body.push_str(&format!("PUTB {topic} {}", payloads.len()));
    if let Some((id, seq)) = producer {
        body.push_str(&format!(" PRODUCER {id} {seq}"));
    }
    body.push('\n');
    for p in payloads {
        let p = p.as_ref();
        body.push_str(&p.len().to_string());
        body.push('\n');
        body.push_str(p);
        body.push('\n');
    }
    body
}

/// Parses `OK <n> <first>` or `OK <n>`.
fn parse_stored(resp: String) -> Result<BatchAck> {
    let Some(rest) = resp.strip_prefix("OK ") else {
        return Err(server_error(resp));
    };
    let mut words = rest.split(' ');
    let n = words.next().and_then(|w| w.parse().ok());
    let first = words.next().map(|w| w.parse::<u64>());
    match (n, first, words.next()) {
        (Some(n), None, None) => Ok(BatchAck { n, first: None }),
        (Some(n), Some(Ok(first)), None) => Ok(BatchAck {
            n,
            first: Some(first),
        }),
        _ => Err(ClientError::Protocol(resp)),
    }
}

impl Client {
    /// `PUTB`: stores all `payloads` (each 1 byte or more, up to
    /// [`MAX_BATCH_ENTRIES`], the request at most 64 KiB) in order, or
    /// none. A lost answer is [`ClientError::NoAnswer`]: the batch may or
    /// may not be stored; do not send it again blindly (or use a
    /// [`Producer`]).
    pub async fn put_batch<P: AsRef<str>>(&self, topic: &str, payloads: &[P]) -> Result<BatchAck> {
        parse_stored(self.send_raw(&putb_body(topic, payloads, None)).await?)
    }

    /// `PUTB … PRODUCER <id> <seq>` with the producer's next sequence
    /// number, sent once; the number moves on when the batch is stored.
    /// After an error whose outcome is unknown, send the same batch again
    /// with the same producer: it is stored once.
    pub async fn put_batch_as<P: AsRef<str>>(
        &self,
        topic: &str,
        payloads: &[P],
        producer: &mut Producer,
    ) -> Result<BatchAck> {
        let body = putb_body(topic, payloads, Some((&producer.id, producer.next_seq)));
        let ack = parse_stored(self.send_raw(&body).await?)?;
        producer.next_seq += 1;
        Ok(ack)
    }

    /// Stores `payloads` as one batch, resending for up to `patience`
    /// (pausing 50 ms, doubling up to 1 s) only what is safe to resend:
    /// without a producer, answers that say nothing was stored
    /// ([`ClientError::is_retryable`]); with one, also every unknown
    /// outcome (a lost answer, a broken connection, `ERR outcome unknown`),
    /// since the server stores a producer's sequence number once.
    pub async fn put_batch_retrying<P: AsRef<str>>(
        &self,
        topic: &str,
        payloads: &[P],
        mut producer: Option<&mut Producer>,
        patience: Duration,
    ) -> Result<BatchAck> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut pause = FIRST_RETRY_PAUSE;
        loop {
            let outcome = match producer.as_deref_mut() {
                Some(p) => self.put_batch_as(topic, payloads, p).await,
                None => self.put_batch(topic, payloads).await,
            };
            let retry = match &outcome {
                Ok(_) => false,
                Err(e) => e.is_retryable() || (producer.is_some() && e.is_outcome_unknown()),
            };
            if !retry || tokio::time::Instant::now() + pause > deadline {
                return outcome;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
        }
    }

    /// One entry stored exactly once by `producer`, resent through every
    /// outcome that is not a refusal, for up to `patience` (an idempotent
    /// [`Client::put_retrying`]: a one-entry PUTB with the producer).
    pub async fn put_idempotent(
        &self,
        topic: &str,
        payload: impl AsRef<str>,
        producer: &mut Producer,
        patience: Duration,
    ) -> Result<BatchAck> {
        self.put_batch_retrying(topic, &[payload], Some(producer), patience)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{count, scripted};

    #[tokio::test]
    async fn given_a_lost_answer_should_resend_a_batch_only_with_a_producer() {
        // The first request is dropped unanswered, later ones answered.
        let script = |n: usize, body: &str| {
            assert!(body.starts_with("PUTB logs 2"), "{body}");
            (n > 0).then(|| "OK 2 7".to_string())
        };
        let (addr, seen) = scripted(script).await;
        let c = Client::new(addr);
        let e = c
            .put_batch_retrying("logs", &["a", "b"], None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.is_outcome_unknown(), "{e}");
        assert_eq!(
            count(&seen),
            1,
            "without a producer a lost answer is not resent"
        );

        let (addr, seen) = scripted(move |n, body| {
            assert_eq!(body, "PUTB logs 2 PRODUCER p 4\n1\na\n1\nb\n");
            script(n, body)
        })
        .await;
        let c = Client::new(addr);
        let mut producer = Producer::resume("p", 4);
        let ack = c
            .put_batch_retrying(
                "logs",
                &["a", "b"],
                Some(&mut producer),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(
            ack,
            BatchAck {
                n: 2,
                first: Some(7)
            }
        );
        assert_eq!(count(&seen), 2, "resent once, with the same sequence");
        assert_eq!(producer.next_seq(), 5);
    }

    #[test]
    fn given_two_random_producers_should_differ() {
        assert_ne!(Producer::random().id(), Producer::random().id());
        assert_eq!(Producer::random().id().len(), 32);
    }

    #[test]
    fn given_payloads_with_newlines_and_spaces_should_frame_each_by_its_length() {
        assert_eq!(
            putb_body("logs", &["a b", "x\ny", "é"], Some(("p", 7))),
            "PUTB logs 3 PRODUCER p 7\n3\na b\n3\nx\ny\n2\né\n"
        );
    }

    #[test]
    fn given_a_putb_answer_should_read_the_count_and_the_first_offset_when_known() {
        assert_eq!(
            parse_stored("OK 3 10".into()).unwrap(),
            BatchAck {
                n: 3,
                first: Some(10)
            }
        );
        assert_eq!(
            parse_stored("OK 3".into()).unwrap(),
            BatchAck { n: 3, first: None }
        );
        assert!(matches!(
            parse_stored("ERR unavailable: x".into()),
            Err(ClientError::Server(t)) if t == "unavailable: x"
        ));
        assert!(matches!(
            parse_stored("OK x y".into()),
            Err(ClientError::Protocol(_))
        ));
    }
}
