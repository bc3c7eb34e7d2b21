//! What a node does with requests from other nodes. Consensus messages
//! (`NodeRequest::Consensus`) are not among them: the wiring hands those to
//! the metadata store (walrus-backends' `raft::RaftRouter`).

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::transport::{NodeRequest, NodeResponse, RequestHandler};

#[async_trait]
impl RequestHandler for super::Node {
    async fn handle(&self, req: NodeRequest) -> Result<NodeResponse> {
        match req {
            NodeRequest::Append { segment, entries } => {
                let a = self.append_local(&segment, entries).await?;
                Ok(NodeResponse::Appended {
                    first_index: a.first_index,
                    count: a.count,
                })
            }
            NodeRequest::AppendWhole {
                segment,
                entries,
                producer,
            } => self.append_whole(&segment, &entries, producer).await,
            NodeRequest::Read {
                segment,
                from,
                max_entries,
                max_bytes,
            } => {
                let held = self
                    .read_visible(&segment, from, max_entries as usize, max_bytes as usize)
                    .await?;
                Ok(NodeResponse::Entries {
                    entries: held.entries,
                    count: held.count,
                    sealed: held.sealed,
                })
            }
            NodeRequest::ReadWait {
                segment,
                from,
                max_entries,
                max_bytes,
                wait_ms,
            } => {
                let held = self
                    .read_held(
                        &segment,
                        from,
                        max_entries,
                        max_bytes,
                        std::time::Duration::from_millis(wait_ms.into()),
                    )
                    .await?;
                Ok(NodeResponse::Entries {
                    entries: held.entries,
                    count: held.count,
                    sealed: held.sealed,
                })
            }
            NodeRequest::Get { topic } => {
                if self.metadata.state().topic(&topic).is_none() {
                    return Err(Error::TopicNotFound);
                }
                Ok(NodeResponse::Entry(self.cursor_next(&topic).await?))
            }
            NodeRequest::RenewLease { node } => self.on_renew_lease(node).await,
            NodeRequest::Join { node, info } => {
                self.refuse_removed(node)?;
                self.metadata.add_node(node, info).await?;
                Ok(NodeResponse::Done)
            }
            // The metadata store's own protocol is the wiring's business:
            // it routes these to the store before they reach the node.
            NodeRequest::Consensus(_) => Err(Error::Internal(format!(
                "node {} was handed a consensus message: the server must route \
                 NodeRequest::Consensus to its metadata store, not to the node",
                self.id
            ))),
            NodeRequest::Ping => Ok(NodeResponse::Done),
            NodeRequest::ClaimStorage {
                node,
                storage,
                fresh,
            } => {
                self.on_claim_storage(node, storage, fresh).await?;
                Ok(NodeResponse::Done)
            }
            NodeRequest::Replicate {
                segment,
                first,
                entries,
                seal,
                marks,
            } => {
                self.on_replicate(&segment, first, &entries, seal, &marks)
                    .await
            }
            NodeRequest::Fence { segment } => self.on_fence(&segment).await,
            NodeRequest::ReadCopy {
                segment,
                from,
                max_entries,
            } => self.on_read_copy(&segment, from, max_entries).await,
            NodeRequest::SealCopy {
                segment,
                first,
                entries,
                count,
            } => self.on_seal_copy(&segment, first, &entries, count).await,
            NodeRequest::ReplaceStorage { node, storage } => Ok(NodeResponse::StorageReplaced {
                lost: self.replace_storage_here(node, storage).await?,
            }),
            NodeRequest::SegmentProducers { segment } => Ok(NodeResponse::Producers(
                self.segment_producers(&segment).await?,
            )),
            NodeRequest::RemoveNode { node } => Ok(NodeResponse::NodeRemoved {
                node,
                under_replicated: self.remove_node_here(node).await?,
            }),
        }
    }
}
