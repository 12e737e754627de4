//! [`RaftGrpcService`]: the receiving side of the Raft transport. It decodes each `RaftService` call, hands it to the
//! local [`MetaRaft`] and encodes the answer; a Raft-level refusal travels in the reply body, so that the sender's
//! [`GrpcNetwork`](crate::raft::GrpcNetwork) can tell it from a transport failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use openraft::raft::InstallSnapshotRequest;
use quiver_proto::v1::raft_reply;
use quiver_proto::v1::raft_service_server::RaftService;
use quiver_proto::v1::{RaftReply, RaftRequest, SnapshotChunk};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use crate::error::ClusterError;
use crate::raft::election::{Elections, PreVoteRequest};
use crate::raft::network::vote_from_proto;
use crate::raft::types::{MetaRaft, TypeConfig};
use crate::service::status::status_from_error;

/// Serves Raft messages from the other replicas to the local one.
#[derive(Clone)]
pub struct RaftGrpcService {
    raft: MetaRaft,
    /// Set while the replica must not vote (see [`MetaNode::hold_votes`](crate::MetaNode::hold_votes)).
    votes_held: Arc<AtomicBool>,
    /// Answers pre-votes.
    elections: Arc<Elections>,
}

impl RaftGrpcService {
    /// Returns the service of the local replica `raft`, which answers no vote request while `votes_held` is set and
    /// pre-votes through `elections`.
    pub fn new(raft: MetaRaft, votes_held: Arc<AtomicBool>, elections: Arc<Elections>) -> Self {
        Self { raft, votes_held, elections }
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, Status> {
    serde_json::from_slice(bytes)
        .map_err(|source| status_from_error(&ClusterError::Decode { what, source: Box::new(source) }))
}

fn reply<T: Serialize, E: Serialize>(result: Result<T, E>) -> Response<RaftReply> {
    let result = match result {
        Ok(ok) => raft_reply::Result::Ok(serde_json::to_vec(&ok).expect("raft responses are representable as JSON")),
        Err(e) => raft_reply::Result::Error(serde_json::to_vec(&e).expect("raft errors are representable as JSON")),
    };
    Response::new(RaftReply { result: Some(result) })
}

#[tonic::async_trait]
impl RaftService for RaftGrpcService {
    async fn append_entries(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let rpc = decode(&request.into_inner().payload, "append-entries request")?;
        Ok(reply(self.raft.append_entries(rpc).await))
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        if self.votes_held.load(Ordering::SeqCst) {
            // As if unreachable: the candidate counts no vote from here, granted or refused.
            return Err(Status::unavailable("this replica lost its store and votes again once it has rejoined"));
        }
        let rpc = decode(&request.into_inner().payload, "vote request")?;
        Ok(reply(self.raft.vote(rpc).await))
    }

    async fn pre_vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let rpc: PreVoteRequest = decode(&request.into_inner().payload, "pre-vote request")?;
        Ok(reply::<_, ()>(Ok(self.elections.answer(&rpc).await)))
    }

    async fn install_snapshot(&self, request: Request<SnapshotChunk>) -> Result<Response<RaftReply>, Status> {
        let chunk = request.into_inner();
        let Some(vote) = chunk.vote.as_ref() else {
            let source = "the vote is missing".into();
            return Err(status_from_error(&ClusterError::Decode { what: "snapshot chunk", source }));
        };
        let rpc = InstallSnapshotRequest::<TypeConfig> {
            vote: vote_from_proto(vote),
            meta: decode(&chunk.meta, "snapshot meta")?,
            offset: chunk.offset,
            data: chunk.data,
            done: chunk.done,
        };
        Ok(reply(self.raft.install_snapshot(rpc).await))
    }
}
