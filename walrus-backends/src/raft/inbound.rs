//! What arrives from other nodes: Raft's own messages and forwarded
//! requests ([`RaftMetadataStore::handle_message`]), and [`RaftRouter`],
//! which hands every other request to the node.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;
use walrus_core::{
    CmdResult, Error, MetadataCmd, MetadataStore, NodeRequest, NodeResponse, RequestHandler, Result,
};

use super::metadata_store::Attempt;
use super::network::{self, ConsensusReply, ConsensusRequest};
use super::RaftMetadataStore;

impl RaftMetadataStore {
    /// Answers one of Raft's own messages from another node (an RPC of
    /// openraft's or a request forwarded to the leader) and returns the
    /// encoded reply. The wiring calls it for `NodeRequest::Consensus`
    /// ([`RaftRouter`]): it is no part of core's `MetadataStore`.
    pub async fn handle_message(&self, msg: Bytes) -> Result<Bytes> {
        let (header, req) = network::decode_request(&msg)?;
        header.check(self.id, self.state_rx.borrow().cluster)?;
        self.gate.check(self.id, &req)?;
        let reply = match req {
            ConsensusRequest::AppendEntries(rpc) => {
                ConsensusReply::AppendEntries(self.raft.append_entries(rpc).await)
            }
            ConsensusRequest::Vote(rpc) => ConsensusReply::Vote(self.raft.vote(rpc).await),
            ConsensusRequest::InstallSnapshot(rpc) => {
                ConsensusReply::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
            ConsensusRequest::Propose(cmd) => {
                let deadline = Instant::now() + self.config.propose_timeout;
                match self.write_local(cmd, deadline).await {
                    Ok((result, index)) => ConsensusReply::Proposed { result, index },
                    Err(Attempt::Retry(_)) => return Err(Error::NotLeader),
                    Err(Attempt::Fail(e)) => return Err(e),
                }
            }
            ConsensusRequest::AddNode { node, info } => {
                if self.current_leader() != Some(self.id) {
                    return Err(Error::NotLeader);
                }
                let deadline = Instant::now() + self.config.add_node_timeout;
                match self.add_node_local(node, &info, deadline).await {
                    Ok(index) => ConsensusReply::NodeAdded { index },
                    Err(Attempt::Retry(_)) => return Err(Error::NotLeader),
                    Err(Attempt::Fail(e)) => return Err(e),
                }
            }
            ConsensusRequest::Readmit { node } => {
                if self.current_leader() != Some(self.id) {
                    return Err(Error::NotLeader);
                }
                let deadline = Instant::now() + self.config.add_node_timeout;
                match self.readmit_local(node, deadline).await {
                    Ok(()) => ConsensusReply::Readmitted,
                    Err(Attempt::Retry(_)) => return Err(Error::NotLeader),
                    Err(Attempt::Fail(e)) => return Err(e),
                }
            }
        };
        network::encode_reply(&reply)
    }
}

/// The receiving side of a node on Raft: Raft's own messages
/// (`NodeRequest::Consensus`) go to the store, every other request to the
/// node (core's `Node`, or whatever handler the wiring puts there).
pub struct RaftRouter {
    store: Arc<RaftMetadataStore>,
    node: Arc<dyn RequestHandler>,
}

impl RaftRouter {
    pub fn new(store: Arc<RaftMetadataStore>, node: Arc<dyn RequestHandler>) -> Arc<RaftRouter> {
        Arc::new(RaftRouter { store, node })
    }
}

#[async_trait]
impl RequestHandler for RaftRouter {
    async fn handle(&self, req: NodeRequest) -> Result<NodeResponse> {
        match req {
            NodeRequest::Consensus(bytes) => Ok(NodeResponse::Consensus(
                self.store.handle_message(bytes).await?,
            )),
            other => self.node.handle(other).await,
        }
    }
}

/// Answers a `NodeRequest` aimed at the metadata store, without a node;
/// for tests that run bare Raft stores (a node answers the others).
pub async fn route(store: &RaftMetadataStore, req: NodeRequest) -> Result<NodeResponse> {
    match req {
        NodeRequest::Consensus(bytes) => {
            Ok(NodeResponse::Consensus(store.handle_message(bytes).await?))
        }
        NodeRequest::Join { node, info } => {
            store.add_node(node, info).await?;
            Ok(NodeResponse::Done)
        }
        NodeRequest::ClaimStorage {
            node,
            storage,
            fresh,
        } => {
            let cmd = MetadataCmd::RegisterStorage { node, storage };
            if let CmdResult::Rejected(why) = store.propose(cmd).await? {
                return Err(Error::Refused(why));
            }
            if fresh {
                store.readmit_node(node).await?;
            }
            Ok(NodeResponse::Done)
        }
        NodeRequest::Ping => Ok(NodeResponse::Done),
        other => Err(Error::BadRequest(format!(
            "the metadata store does not handle {other:?}"
        ))),
    }
}
