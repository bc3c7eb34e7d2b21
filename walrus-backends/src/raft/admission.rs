//! Admission: what a node with no consensus state does before it takes
//! part in Raft, so that a wiped or replaced disk never rejoins silently.
//!
//! A node whose Raft log is empty (a new node, or one whose data directory
//! was wiped) refuses every Raft message until the cluster has admitted it:
//!
//! - with `--join`, it first claims its storage identity
//!   (`NodeRequest::ClaimStorage`); a cluster that recorded another storage
//!   for its id refuses it, and the node stops with that reason;
//! - without `--join`, it listens for a while before it bootstraps: a
//!   cluster that still counts it as a member keeps sending it heartbeats
//!   (or, without a leader, vote requests). Hearing one means its data was
//!   lost, and bootstrapping would start a second cluster under a member's
//!   name: it stops instead.
//!
//! Refusing Raft traffic while unadmitted matters on its own: a voter that
//! lost its log and its vote must not vote or acknowledge entries, or a
//! quorum could form without the entries the old quorum committed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use walrus_core::{Error, NodeRequest, StorageId};

use super::network::ConsensusRequest;
use super::types::NodeId;
use super::RaftMetadataStore;
use walrus_core::locks::MutexExt;

/// A Raft message heard while unadmitted: who sent it, in which term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Heard {
    pub from: NodeId,
    pub term: u64,
}

/// The gate in front of this node's Raft.
pub(crate) struct Gate {
    admitted: AtomicBool,
    heard: Mutex<Option<Heard>>,
}

impl Gate {
    pub(crate) fn new(admitted: bool) -> Self {
        Gate {
            admitted: AtomicBool::new(admitted),
            heard: Mutex::new(None),
        }
    }

    pub(crate) fn admit(&self) {
        self.admitted.store(true, Ordering::SeqCst);
    }

    /// `Err` when `req` must not reach Raft yet; remembers who sent it.
    pub(crate) fn check(&self, me: NodeId, req: &ConsensusRequest) -> Result<(), Error> {
        if self.admitted.load(Ordering::SeqCst) {
            return Ok(());
        }
        let vote = match req {
            ConsensusRequest::AppendEntries(rpc) => Some(rpc.vote),
            ConsensusRequest::Vote(rpc) => Some(rpc.vote),
            ConsensusRequest::InstallSnapshot(rpc) => Some(rpc.vote),
            // Only a leader takes these; we lead nothing.
            _ => return Err(Error::NotLeader),
        };
        if let Some(vote) = vote {
            let heard = Heard {
                from: vote.leader_id.node_id,
                term: vote.leader_id.term,
            };
            *self.heard.lock_or_recover() = Some(heard);
        }
        Err(Error::Unavailable(format!(
            "node {me} has no consensus state and the cluster has not admitted it yet \
             (its storage identity is being checked)"
        )))
    }

    pub(crate) fn heard(&self) -> Option<Heard> {
        *self.heard.lock_or_recover()
    }
}

impl RaftMetadataStore {
    /// Before bootstrapping: waits `bootstrap_listen` for Raft traffic of a
    /// cluster that counts this node as a member, and refuses if any comes.
    pub(crate) async fn listen_for_an_old_cluster(&self, storage: StorageId) -> anyhow::Result<()> {
        let window = self.config.bootstrap_listen;
        let step = Duration::from_millis(20);
        let started = tokio::time::Instant::now();
        while started.elapsed() < window {
            if let Some(heard) = self.gate.heard() {
                let id = self.id;
                anyhow::bail!(
                    "node {id} has no consensus state in {} (a new, wiped or replaced data directory) \
                     and was started without --join, but node {} of an existing cluster (term {}) is \
                     sending it Raft messages: that cluster counts node {id} as a member, whose data \
                     is gone. Bootstrapping would start a second cluster, so node {id} stops. Restore \
                     its original data directory and start it again; or, to accept the loss, run \
                     `walrus-cli node replace-storage {id} {storage}` against a running member and \
                     start this node with --join <a member's raft address>",
                    self.config.dir.display(),
                    heard.from,
                    heard.term
                );
            }
            tokio::time::sleep(step).await;
        }
        Ok(())
    }

    /// Claims `storage` for this node through the member at `addr`,
    /// retrying while the cluster cannot answer; a refusal is final.
    pub(crate) async fn claim_via(&self, addr: &str, storage: StorageId) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.stopped.load(Ordering::SeqCst) {
                anyhow::bail!("shut down before the cluster at {addr} admitted this node");
            }
            let req = NodeRequest::ClaimStorage {
                node: self.id,
                storage,
                fresh: true,
            };
            match self.transport.call_addr(addr, req).await {
                Ok(_) => return Ok(()),
                // Claiming the same storage again is harmless, so a claim
                // whose answer was lost is simply made again.
                Err(e) if e.is_retryable() || e.is_outcome_unknown() => tracing::info!(
                    node = self.id,
                    "the cluster at {addr} cannot check this node's storage yet: {e}; retrying"
                ),
                Err(e) => {
                    anyhow::bail!("the cluster at {addr} did not admit node {}: {e}", self.id)
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}
