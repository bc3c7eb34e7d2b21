//! openraft's network over walrus-core's [`Transport`]: every Raft RPC is
//! one [`ConsensusRequest`] carried as `NodeRequest::Consensus(bytes)`.
//! Connection pooling, request ids and timeouts are the transport's job;
//! here a failed call becomes the `RPCError` openraft expects
//! (`Unreachable` makes openraft back off before it tries that peer again).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use walrus_core::{
    ClusterId, ClusterState, CmdResult, Error, MetadataCmd, NodeInfo, NodeRequest, NodeResponse,
    Transport,
};

use super::types::{decode, encode, NodeId, TypeConfig};

/// A message of this backend, carried by the transport as
/// `NodeRequest::Consensus`.
#[derive(Debug, Serialize, Deserialize)]
pub enum ConsensusRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A proposal forwarded by a follower to the consensus leader.
    Propose(MetadataCmd),
    /// A membership request forwarded by a follower to the consensus leader.
    AddNode {
        node: NodeId,
        info: NodeInfo,
    },
    /// A request to take a node that lost its consensus state out of the
    /// membership, forwarded to the consensus leader.
    Readmit {
        node: NodeId,
    },
}

/// The answer to a [`ConsensusRequest`], variant for variant.
#[derive(Debug, Serialize, Deserialize)]
pub enum ConsensusReply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// The command is committed and applied on the leader at log `index`.
    Proposed {
        result: CmdResult,
        index: u64,
    },
    /// The node is a voter; its addresses are committed at log `index`.
    NodeAdded {
        index: u64,
    },
    /// The node is no longer a member (or never was).
    Readmitted,
}

/// Who a consensus request is for: the receiver refuses one meant for
/// another node (two nodes behind one address, a stale address) or sent by
/// a member of another cluster (a node pointed at the wrong cluster, one
/// that bootstrapped a cluster of its own): obeying it could make a leader
/// step down for a foreign term or replicate one cluster's log into another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The node the sender meant.
    pub to: NodeId,
    /// The sender's cluster, once it knows it (a joining node does not yet).
    pub cluster: Option<ClusterId>,
}

impl Header {
    /// `Err` when a request with this header must not reach node `me` of
    /// cluster `ours`.
    pub fn check(&self, me: NodeId, ours: Option<ClusterId>) -> Result<(), Error> {
        if self.to != me {
            return Err(Error::Refused(format!(
                "a consensus message for node {} reached node {me}: two nodes share an \
                 address, or a node was restarted on another's; give each node its own \
                 --raft-port",
                self.to
            )));
        }
        if let (Some(theirs), Some(ours)) = (self.cluster, ours) {
            if theirs != ours {
                return Err(Error::Refused(format!(
                    "a consensus message from cluster {theirs} reached node {me} of cluster \
                     {ours}: a node of another cluster was given this cluster's address (check \
                     its --join and its peers' addresses)"
                )));
            }
        }
        Ok(())
    }
}

pub fn encode_request(header: Header, req: &ConsensusRequest) -> Result<Bytes, Error> {
    encode(&(header, req))
        .map(Bytes::from)
        .map_err(|e| Error::Internal(format!("cannot encode consensus request: {e}")))
}

pub fn decode_request(bytes: &[u8]) -> Result<(Header, ConsensusRequest), Error> {
    decode(bytes).map_err(|e| Error::BadRequest(format!("malformed consensus request: {e}")))
}

pub fn encode_reply(reply: &ConsensusReply) -> Result<Bytes, Error> {
    encode(reply)
        .map(Bytes::from)
        .map_err(|e| Error::Internal(format!("cannot encode consensus reply: {e}")))
}

pub fn decode_reply(bytes: &[u8]) -> Result<ConsensusReply, Error> {
    decode(bytes).map_err(|e| Error::Internal(format!("malformed consensus reply: {e}")))
}

/// Sends one consensus request to `to` and decodes the answer.
pub async fn call(
    transport: &dyn Transport,
    to: NodeId,
    cluster: Option<ClusterId>,
    req: &ConsensusRequest,
) -> Result<ConsensusReply, Error> {
    let bytes = encode_request(Header { to, cluster }, req)?;
    match transport.call(to, NodeRequest::Consensus(bytes)).await? {
        NodeResponse::Consensus(reply) => decode_reply(&reply),
        other => Err(Error::Internal(format!(
            "node {to} answered a consensus request with {other:?}"
        ))),
    }
}

/// Creates one [`RaftNetworkConnection`] per peer; the transport pools the
/// real connections, so a client is cheap to create.
pub struct NetworkFactory {
    pub(crate) me: NodeId,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) backoff: Duration,
    /// Applied metadata: a node's address there (`UpsertNode`, updated when
    /// it restarts elsewhere) wins over the one in the Raft membership.
    pub(crate) state: watch::Receiver<Arc<ClusterState>>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = RaftNetworkConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        // Pass the address on so the transport can dial the peer.
        let addr = self
            .state
            .borrow()
            .nodes
            .get(&target)
            .map(|info| info.raft_addr.clone())
            .unwrap_or_else(|| node.addr.clone());
        self.transport.set_peer_address(target, &addr);
        RaftNetworkConnection {
            me: self.me,
            target,
            transport: self.transport.clone(),
            backoff: self.backoff,
            state: self.state.clone(),
        }
    }
}

pub struct RaftNetworkConnection {
    me: NodeId,
    target: NodeId,
    transport: Arc<dyn Transport>,
    backoff: Duration,
    /// Applied metadata, for the cluster id every message carries.
    state: watch::Receiver<Arc<ClusterState>>,
}

impl RaftNetworkConnection {
    async fn send<E: std::error::Error>(
        &self,
        action: RPCTypes,
        req: ConsensusRequest,
        option: &RPCOption,
    ) -> Result<ConsensusReply, RPCError<NodeId, BasicNode, E>> {
        let ttl = option.hard_ttl();
        let timeout = || {
            RPCError::Timeout(Timeout {
                action,
                id: self.me,
                target: self.target,
                timeout: ttl,
            })
        };
        let cluster = self.state.borrow().cluster;
        let call = call(&*self.transport, self.target, cluster, &req);
        match tokio::time::timeout(ttl, call).await {
            Err(_) => Err(timeout()),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e @ Error::Unreachable(_))) | Ok(Err(e @ Error::ShuttingDown)) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Ok(Err(Error::Timeout(_) | Error::NoAnswer(_))) => Err(timeout()),
            Ok(Err(e)) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(
        &self,
        reply: ConsensusReply,
    ) -> RPCError<NodeId, BasicNode, E> {
        let e = Error::Internal(format!(
            "node {} answered with the wrong reply kind: {reply:?}",
            self.target
        ));
        RPCError::Network(NetworkError::new(&e))
    }

    fn remote<E: std::error::Error>(
        &self,
        e: RaftError<NodeId, E>,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl RaftNetwork<TypeConfig> for RaftNetworkConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let req = ConsensusRequest::AppendEntries(rpc);
        match self.send(RPCTypes::AppendEntries, req, &option).await? {
            ConsensusReply::AppendEntries(r) => r.map_err(|e| self.remote(e)),
            other => Err(self.unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let req = ConsensusRequest::InstallSnapshot(rpc);
        match self.send(RPCTypes::InstallSnapshot, req, &option).await? {
            ConsensusReply::InstallSnapshot(r) => r.map_err(|e| self.remote(e)),
            other => Err(self.unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let req = ConsensusRequest::Vote(rpc);
        match self.send(RPCTypes::Vote, req, &option).await? {
            ConsensusReply::Vote(r) => r.map_err(|e| self.remote(e)),
            other => Err(self.unexpected(other)),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.backoff))
    }
}
