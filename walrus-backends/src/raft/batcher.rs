//! The leader's proposals: every command queued while one log entry is
//! being committed goes into the next entry ([`MetadataBatch`]), so
//! concurrent proposers share an fsync and a replication round.

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use walrus_core::{CmdResult, Error, MetadataCmd};

use super::metadata_store::Attempt;
use super::types::{MetadataBatch, Raft};
use super::{fatal, RaftMetadataStore};

/// A command waiting for the batcher, and where its outcome goes.
pub(super) struct Proposal {
    cmd: MetadataCmd,
    done: oneshot::Sender<std::result::Result<(CmdResult, u64), Attempt>>,
}

/// The most commands in one log entry.
pub(super) const MAX_BATCH: usize = 256;

/// Writes queued proposals to Raft, one entry at a time, each entry
/// carrying every proposal that queued up while the previous one was being
/// committed (openraft 0.9 flushes each entry before taking the next, so
/// this is where concurrent proposers share an fsync and a round trip).
pub(super) async fn batch_loop(raft: Raft, mut rx: mpsc::Receiver<Proposal>, timeout: Duration) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // A caller that gave up must not have its command committed later.
        batch.retain(|p| !p.done.is_closed());
        if batch.is_empty() {
            continue;
        }
        let cmds = MetadataBatch(batch.iter().map(|p| p.cmd.clone()).collect());
        let outcome = match tokio::time::timeout(timeout, raft.client_write(cmds)).await {
            Ok(Ok(resp)) if resp.data.len() == batch.len() => {
                let index = resp.log_id.index;
                for (p, result) in batch.into_iter().zip(resp.data) {
                    let _ = p.done.send(Ok((result, index)));
                }
                continue;
            }
            Ok(Ok(resp)) => Attempt::Fail(Error::Internal(format!(
                "a batch of {} commands applied with {} results",
                batch.len(),
                resp.data.len()
            ))),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Attempt::Retry("this node is no longer the leader".into())
            }
            Ok(Err(RaftError::APIError(e))) => Attempt::Fail(Error::internal(e)),
            Ok(Err(RaftError::Fatal(e))) => Attempt::Fail(fatal(e)),
            // It may still commit later; retrying could apply it twice.
            Err(_) => Attempt::Fail(Error::Unavailable(format!(
                "no quorum: the proposal was not committed within {timeout:?}, retry"
            ))),
        };
        for p in batch {
            let _ = p.done.send(Err(outcome.clone()));
        }
    }
}

impl RaftMetadataStore {
    /// Commits `cmd` on this node, which must be the leader, through the
    /// batcher. Returns its result and the log index that carried it.
    pub(super) async fn write_local(
        &self,
        cmd: MetadataCmd,
        deadline: Instant,
    ) -> std::result::Result<(CmdResult, u64), Attempt> {
        let (done, outcome) = oneshot::channel();
        if self.proposals.send(Proposal { cmd, done }).await.is_err() {
            return Err(Attempt::Fail(Error::ShuttingDown));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, outcome).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Attempt::Fail(Error::ShuttingDown)),
            Err(_) => Err(Attempt::Fail(Error::Unavailable(format!(
                "no quorum: the proposal was not committed within {:?}, retry",
                self.config.propose_timeout
            )))),
        }
    }
}
