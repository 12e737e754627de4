//! Raft transport over gRPC: [`GrpcNetwork`] implements openraft's [`RaftNetworkFactory`], [`GrpcConnection`] its
//! [`RaftNetwork`] towards one peer, through the `RaftService` of `quiver.v1` (see `proto/quiver/v1/raft.proto`).
//! The receiving side is [`RaftGrpcService`](crate::service::RaftGrpcService).
//!
//! Snapshots use openraft 0.9's chunked `install_snapshot`: each chunk is one unary `InstallSnapshot` call carrying
//! an offset, and openraft's own sender handles chunk sizing (`snapshot_chunk_bytes_max`), resumption after a failed
//! chunk, and cancellation when replication stops. The alternative, one client-streamed call per snapshot, needs
//! 0.9's `generic-snapshot-data` feature, under which `install_snapshot` is deprecated and the application must
//! re-implement chunk assembly and resumption itself; metadata snapshots are small, so the chunked path costs nothing.
//!
//! Errors map as openraft expects:
//! - the peer cannot be reached (connection refused, address invalid): [`Unreachable`], so replication backs off;
//! - the call exceeded openraft's time limit for it: [`Timeout`];
//! - any other transport or decoding failure: [`NetworkError`], retried at once;
//! - the peer's Raft refused the request (it stopped): [`RemoteError`], carried in the reply body.

// openraft's storage and network traits return its `StorageError` and `RPCError` by value, and these helpers feed
// those signatures directly; boxing them here would only add a conversion at every call.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{AnyError, RPCTypes};
use quiver_proto::v1::raft_reply;
use quiver_proto::v1::raft_service_client::RaftServiceClient;
use quiver_proto::v1::{RaftReply, RaftRequest, RaftVote, SnapshotChunk};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use crate::config::MetaConfig;
use crate::raft::election::{PreVoteFuture, PreVoteNetwork, PreVoteRequest};
use crate::raft::types::{NodeAddr, TypeConfig, Vote};
use crate::transport::PeerTransport;

/// The error type of a Raft RPC towards one peer.
type RpcError<E = openraft::error::Infallible> = RPCError<u64, NodeAddr, RaftError<u64, E>>;

/// Creates gRPC connections to the other replicas of the metadata group.
///
/// One channel per peer is shared by every connection openraft asks for: besides the replication stream, openraft
/// opens a short-lived connection for each leadership check of a linearizable read, with a time limit of one
/// heartbeat, which a fresh TCP and HTTP/2 handshake could exceed.
#[derive(Debug, Clone)]
pub struct GrpcNetwork {
    node_id: u64,
    transport: PeerTransport,
    backoff: Duration,
    /// The channel to each peer, with the address it was made for.
    channels: Arc<Mutex<HashMap<u64, (String, Channel)>>>,
}

impl GrpcNetwork {
    /// Returns the network of replica `node_id` with `config`'s connect timeout. After a peer is found unreachable,
    /// replication to it pauses for one heartbeat interval.
    ///
    /// openraft's default pause is 500 ms; when that exceeds the election timeout, one lost connection silences the
    /// leader long enough for the follower to start an election, so the pause follows the heartbeat instead.
    pub fn new(node_id: u64, config: &MetaConfig) -> Self {
        Self { node_id, transport: config.transport(), backoff: config.heartbeat_interval(), channels: Arc::default() }
    }
}

impl GrpcNetwork {
    /// Returns the channel to `target` at `addr`, making it on first use or when the peer's address changed.
    fn channel(&self, target: u64, addr: &str) -> Result<Channel, AnyError> {
        // Every critical section is one map operation, so a poisoned lock still guards a consistent map.
        let mut channels = self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((known, channel)) = channels.get(&target)
            && known == addr
        {
            return Ok(channel.clone());
        }
        // Lazy: the channel connects on first use and reconnects after failures, so a peer that is down when
        // replication starts is reached once it comes back.
        let channel = self.transport.open_lazy(addr).map_err(|e| AnyError::new(&e))?;
        channels.insert(target, (addr.to_string(), channel.clone()));
        Ok(channel)
    }
}

impl PreVoteNetwork for GrpcNetwork {
    fn pre_vote(&self, target: u64, node: &NodeAddr, request: PreVoteRequest, timeout: Duration) -> PreVoteFuture {
        let channel = self.channel(target, &node.grpc_addr);
        Box::pin(async move {
            let mut client = RaftServiceClient::new(channel.map_err(|e| e.to_string())?);
            let payload = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
            let mut call = tonic::Request::new(RaftRequest { payload });
            call.set_timeout(timeout);
            let reply = tokio::time::timeout(timeout, client.pre_vote(call))
                .await
                .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
                .map_err(|status| format!("{}: {}", status.code(), status.message()))?;
            match reply.into_inner().result {
                Some(raft_reply::Result::Ok(bytes)) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
                Some(raft_reply::Result::Error(bytes)) => Err(String::from_utf8_lossy(&bytes).into_owned()),
                None => Err("the pre-vote reply carries no result".into()),
            }
        })
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcConnection;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> Self::Network {
        let client = self.channel(target, &node.grpc_addr).map(RaftServiceClient::new);
        GrpcConnection { node_id: self.node_id, target, node: node.clone(), client, backoff: self.backoff }
    }
}

/// A gRPC connection from this replica to one peer.
#[derive(Debug)]
pub struct GrpcConnection {
    node_id: u64,
    target: u64,
    node: NodeAddr,
    /// The client, or why none could be made (an invalid address).
    client: Result<RaftServiceClient<Channel>, AnyError>,
    backoff: Duration,
}

impl GrpcConnection {
    fn client<E: std::error::Error>(&self) -> Result<RaftServiceClient<Channel>, RpcError<E>> {
        self.client.clone().map_err(|e| RPCError::Unreachable(Unreachable::from(e)))
    }

    fn status_error<E: std::error::Error>(
        &self,
        status: &tonic::Status,
        action: RPCTypes,
        ttl: Duration,
    ) -> RpcError<E> {
        match status.code() {
            // tonic reports connection failures (refused, reset, DNS) as UNAVAILABLE; our Raft service never
            // returns it.
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(status)),
            tonic::Code::DeadlineExceeded => {
                RPCError::Timeout(Timeout { action, id: self.node_id, target: self.target, timeout: ttl })
            }
            _ => RPCError::Network(NetworkError::new(status)),
        }
    }

    /// Decodes a reply: the peer's response, or the Raft error its replica returned.
    fn decode_reply<T, E>(&self, reply: RaftReply) -> Result<T, RpcError<E>>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        match reply.result {
            Some(raft_reply::Result::Ok(bytes)) => {
                serde_json::from_slice(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))
            }
            Some(raft_reply::Result::Error(bytes)) => {
                let error: RaftError<u64, E> =
                    serde_json::from_slice(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
                Err(RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), error)))
            }
            None => Err(RPCError::Network(NetworkError::from(AnyError::error("raft reply carries no result")))),
        }
    }
}

fn request<T: Serialize, E: std::error::Error>(
    body: T,
    ttl: Duration,
) -> Result<tonic::Request<RaftRequest>, RpcError<E>> {
    let payload = serde_json::to_vec(&body).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
    let mut request = tonic::Request::new(RaftRequest { payload });
    request.set_timeout(ttl);
    Ok(request)
}

/// Converts a vote to its protobuf form.
pub(crate) fn vote_to_proto(vote: &Vote) -> RaftVote {
    RaftVote {
        term: vote.leader_id.term,
        node_id: vote.leader_id().voted_for().unwrap_or_default(),
        committed: vote.committed,
    }
}

/// Converts a vote from its protobuf form.
pub(crate) fn vote_from_proto(vote: &RaftVote) -> Vote {
    let mut v = Vote::new(vote.term, vote.node_id);
    v.committed = vote.committed;
    v
}

impl RaftNetwork<TypeConfig> for GrpcConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcError> {
        let ttl = option.hard_ttl();
        let mut client = self.client()?;
        let reply = client
            .append_entries(request(rpc, ttl)?)
            .await
            .map_err(|s| self.status_error(&s, RPCTypes::AppendEntries, ttl))?;
        // Simulation: a reply that arrives late, after the leader may have moved on.
        buggify_delay!(0.01, 500);
        self.decode_reply(reply.into_inner())
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcError<InstallSnapshotError>> {
        let ttl = option.hard_ttl();
        let mut client = self.client()?;
        let meta = serde_json::to_vec(&rpc.meta).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let chunk = SnapshotChunk {
            vote: Some(vote_to_proto(&rpc.vote)),
            meta,
            offset: rpc.offset,
            data: rpc.data,
            done: rpc.done,
        };
        let mut request = tonic::Request::new(chunk);
        request.set_timeout(ttl);
        let reply = client
            .install_snapshot(request)
            .await
            .map_err(|s| self.status_error(&s, RPCTypes::InstallSnapshot, ttl))?;
        self.decode_reply(reply.into_inner())
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> Result<VoteResponse<u64>, RpcError> {
        let ttl = option.hard_ttl();
        let mut client = self.client()?;
        let reply = client.vote(request(rpc, ttl)?).await.map_err(|s| self.status_error(&s, RPCTypes::Vote, ttl))?;
        self.decode_reply(reply.into_inner())
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.backoff))
    }
}
