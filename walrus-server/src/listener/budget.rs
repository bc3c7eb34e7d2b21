//! The global budget of request and answer bytes in flight: what bounds
//! the listener's memory whatever the clients send.

use std::sync::Arc;

use tokio::sync::Semaphore;
use walrus_core::protocol::{response, Response, MAX_FRAME};

/// What the budget charges for a request beyond its frame: the job, its
/// place in the answer queue and a short answer (`OK`, an `ERR` text).
pub(super) const REQUEST_OVERHEAD: usize = 256;
/// What a request whose answer carries data (GET, STATE, METRICS, TOPICS)
/// reserves for it until the answer is known: an entry is smaller than a
/// frame (a TOPICS or METRICS answer may exceed it, by the size of the
/// metadata it copies).
pub(super) const ANSWER_RESERVE: usize = MAX_FRAME + 64;
/// The smallest budget: a few requests with the largest answer must fit.
pub const MIN_BYTES_IN_FLIGHT: usize = 1 << 20;

/// The global budget of bytes in flight. Requests wait for it in arrival
/// order (a fair semaphore), so a flood on some connections does not starve
/// the others' next request.
#[derive(Clone)]
pub(super) struct Budget {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl Budget {
    pub(super) fn new(limit: usize) -> Budget {
        let limit = limit.clamp(MIN_BYTES_IN_FLIGHT, Semaphore::MAX_PERMITS);
        Budget {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// Waits until `bytes` are free, then holds them until the charge drops.
    pub(super) async fn charge(&self, bytes: usize) -> Charge {
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

    pub(super) fn in_use(&self) -> usize {
        self.limit - self.permits.available_permits()
    }
}

/// Bytes held out of the [`Budget`]; given back when dropped.
pub(super) struct Charge {
    permits: Arc<Semaphore>,
    bytes: usize,
}

impl Charge {
    /// Gives back what is no longer held (the request, once answered; the
    /// unused part of an answer's reserve). Never grows.
    pub(super) fn shrink_to(&mut self, bytes: usize) {
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
    pub(super) fn fit(&mut self, answer: &mut Response) {
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
        Response::Ok | Response::Empty | Response::Pong | Response::Stored { .. } => 0,
        Response::Entries { .. } => answer.encoded_len(),
    }
}
