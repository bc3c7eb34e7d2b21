//! Storage identity: a starting node names its storage and the cluster
//! records it (or refuses it, when it recorded another one for that node);
//! an operator accepts a lost storage explicitly (`REPLACE-STORAGE`),
//! never a restart. See "Storage identity" in `docs/architecture.md`.

use std::collections::BTreeSet;

use crate::error::{Error, Result};
use crate::metadata::{CmdResult, MetadataCmd, SegmentStatus};
use crate::transport::{NodeRequest, NodeResponse};
use crate::types::{NodeId, SegmentKey, StorageId, TopicName};

impl super::Node {
    /// A starting node `node` claims `storage` (it asked us, a member).
    /// `fresh`: it has no consensus state; if the cluster still counts it
    /// as a member it is taken out, to join again as a new one.
    pub(crate) async fn on_claim_storage(
        &self,
        node: NodeId,
        storage: StorageId,
        fresh: bool,
    ) -> Result<()> {
        self.refuse_removed(node)?;
        let cmd = MetadataCmd::RegisterStorage { node, storage };
        if let CmdResult::Rejected(why) = self.metadata.propose(cmd).await? {
            // A wiped node whose every segment has another copy is taken
            // back under its new storage and refilled.
            if let Err(e) = self.refill_or_refuse(node, storage, fresh, why).await {
                tracing::warn!(node = self.id, "refused node {node}: {e}");
                return Err(e);
            }
        }
        if fresh {
            self.metadata.readmit_node(node).await?;
        }
        Ok(())
    }

    /// Refuses a node removed for good (`REMOVE-NODE`) that asks to take
    /// part again.
    pub(crate) fn refuse_removed(&self, node: NodeId) -> Result<()> {
        if self.metadata.state().removed.contains(&node) {
            return Err(Error::Refused(crate::metadata::removed_for_good(node)));
        }
        Ok(())
    }

    /// `REPLACE-STORAGE`: carried out by the consensus leader (it owns the
    /// GET cursors that decide what the lost segments keep).
    pub(crate) async fn replace_storage(
        &self,
        node: NodeId,
        storage: StorageId,
    ) -> Result<Vec<(SegmentKey, u64)>> {
        self.on_consensus_leader(
            "REPLACE-STORAGE",
            || self.replace_storage_here(node, storage),
            NodeRequest::ReplaceStorage { node, storage },
            |answer| match answer {
                NodeResponse::StorageReplaced { lost } => Some(lost),
                _ => None,
            },
        )
        .await
    }

    /// The consensus leader's side of `REPLACE-STORAGE`: with the cursors
    /// of the affected topics held still, commit `ReplaceStorage` carrying
    /// how far each was delivered, so each lost segment keeps exactly the
    /// entries readers were given and no later offset changes meaning.
    pub(crate) async fn replace_storage_here(
        &self,
        node: NodeId,
        storage: StorageId,
    ) -> Result<Vec<(SegmentKey, u64)>> {
        if !self.metadata.status().is_leader() {
            return Err(Error::NotLeader);
        }
        if node == self.id {
            return Err(Error::Refused(format!(
                "node {node} is the consensus leader, so it is running with its storage; \
                 stop it first (another node takes over) and run this again"
            )));
        }
        let pending = self.metadata.state().pending_segments_of(node);
        let topics: Vec<TopicName> = pending
            .iter()
            .map(|k| k.topic.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let result = self
            .with_cursors_held(&topics, |delivered| {
                self.metadata.propose(MetadataCmd::ReplaceStorage {
                    node,
                    storage,
                    delivered,
                })
            })
            .await?;
        match result {
            CmdResult::Rejected(why) => return Err(Error::Refused(why)),
            CmdResult::Unchanged => return Ok(Vec::new()),
            CmdResult::Applied => {}
        }
        let state = self.metadata.state();
        let lost = pending
            .into_iter()
            .filter_map(|key| {
                let seg = state.topic(&key.topic)?.segment(key.segment)?;
                match seg.status {
                    SegmentStatus::Lost { count } => Some((key, count)),
                    _ => None,
                }
            })
            .collect::<Vec<_>>();
        tracing::warn!(
            node = self.id,
            "operator accepted the loss of node {node}'s storage; its new storage is {storage}; \
             segments closed as lost (entries kept): {lost:?}"
        );
        Ok(lost)
    }
}
