//! [`ClusterGrpcService`]: the server side of `ClusterService` (joining, status and the administration calls behind
//! `quiver admin`) on the local [`MetaNode`]. Membership calls run only on the leader; a replica that is not the
//! leader answers with the leader's address (the `NotLeader` status), and [`ClusterClient`](super::ClusterClient)
//! retries there.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quiver_proto::v1::cluster_service_server::ClusterService;
use quiver_proto::v1::{
    CampaignRequest, CampaignResponse, ClusterStatusRequest, ClusterStatusResponse, DrainNodeRequest,
    DrainNodeResponse, JoinRequest as JoinMessage, JoinResponse, MemberStatus as MemberMessage, NodeHeartbeatRequest,
    NodeHeartbeatResponse, RebalanceRequest, RebalanceResponse, RemoveNodeRequest, RemoveNodeResponse,
    TransferLeaderRequest, TransferLeaderResponse, TriggerSnapshotRequest, TriggerSnapshotResponse,
};
use tonic::{Request, Response, Status};

use super::ClusterClient;
use crate::error::ClusterError;
use crate::meta_node::{ClusterStatus, JoinRequest, MetaNode};
use crate::service::status::status_from_error;
use crate::state::{NodeRole, NodeState};

/// A join this replica refused before anything changed: what the node asked, for an audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRefusal {
    /// The id the node asked to join under.
    pub node_id: u64,
    /// The internal address it gave.
    pub grpc_addr: String,
    /// Where the request came from, when the transport knows.
    pub peer: Option<SocketAddr>,
    /// Why it was refused.
    pub reason: String,
}

/// Called with every join refused (the node records it in its audit log).
pub type OnJoinRefused = Arc<dyn Fn(JoinRefusal) + Send + Sync>;

/// Serves the cluster service of the local replica.
#[derive(Clone)]
pub struct ClusterGrpcService {
    node: MetaNode,
    client: ClusterClient,
    on_refused: Option<OnJoinRefused>,
}

impl std::fmt::Debug for ClusterGrpcService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterGrpcService").field("node", &self.node).finish_non_exhaustive()
    }
}

impl ClusterGrpcService {
    /// Returns the service of `node`.
    pub fn new(node: MetaNode) -> Self {
        let client = ClusterClient::with_transport(node.config().transport(), node.config().request_timeout());
        Self { node, client, on_refused: None }
    }

    /// Calls `hook` with every join this service refuses.
    #[must_use]
    pub fn on_join_refused(self, hook: OnJoinRefused) -> Self {
        Self { on_refused: Some(hook), ..self }
    }
}

/// The wire name of a role.
pub(crate) fn role_name(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Voter => "voter",
        NodeRole::Learner => "learner",
    }
}

/// The wire name of a node state.
pub(crate) fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Joining => "joining",
        NodeState::Serving => "serving",
        NodeState::Draining => "draining",
        NodeState::Down => "down",
    }
}

/// Converts a status to its message.
pub(crate) fn status_message(status: ClusterStatus) -> ClusterStatusResponse {
    ClusterStatusResponse {
        cluster_id: status.cluster_id,
        node_id: status.node_id,
        leader_id: status.leader_id,
        term: status.term,
        last_log_index: status.last_log_index,
        applied_index: status.applied_index,
        snapshot_index: status.snapshot_index,
        metadata_version: status.metadata_version,
        members: status
            .members
            .into_iter()
            .map(|m| MemberMessage {
                node_id: m.node_id,
                grpc_addr: m.grpc_addr,
                role: role_name(m.role).to_string(),
                leader: m.leader,
                matched_index: m.matched_index,
                lag: m.lag,
                state: m.state.map(state_name).unwrap_or_default().to_string(),
                flight_addr: m.flight_addr,
                pg_addr: m.pg_addr,
                draining: m.draining,
                replicas: m.replicas,
                primaries: m.primaries,
            })
            .collect(),
        target_voters: status.target_voters as u64,
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterGrpcService {
    async fn join(&self, request: Request<JoinMessage>) -> Result<Response<JoinResponse>, Status> {
        let peer = request.remote_addr();
        let m = request.into_inner();
        if let Some(secret) = &self.node.config().join_secret
            && !secret.matches(&m.join_secret)
        {
            tracing::warn!(
                target: "quiver::audit", event = "join_refused", node_id = m.node_id, grpc_addr = %m.grpc_addr,
                peer = ?peer, "a node asked to join without the cluster's join secret"
            );
            let reason = "the join secret does not match this cluster's";
            if let Some(hook) = &self.on_refused {
                hook(JoinRefusal { node_id: m.node_id, grpc_addr: m.grpc_addr, peer, reason: reason.into() });
            }
            let refused = ClusterError::JoinRefused { detail: reason.into() };
            return Err(status_from_error(&refused));
        }
        let request = JoinRequest {
            node_id: m.node_id,
            grpc_addr: m.grpc_addr,
            flight_addr: m.flight_addr,
            pg_addr: m.pg_addr,
            cluster_id: m.cluster_id,
            empty_store: m.empty_store,
        };
        let (cluster_id, role) = self.node.join(request).await.map_err(|e| status_from_error(&e))?;
        Ok(Response::new(JoinResponse { cluster_id, role: role_name(role).to_string() }))
    }

    async fn status(&self, _request: Request<ClusterStatusRequest>) -> Result<Response<ClusterStatusResponse>, Status> {
        Ok(Response::new(status_message(self.node.status())))
    }

    async fn remove_node(&self, request: Request<RemoveNodeRequest>) -> Result<Response<RemoveNodeResponse>, Status> {
        let node_id = request.into_inner().node_id;
        self.node.remove_node(node_id).await.map_err(|e| status_from_error(&e))?;
        Ok(Response::new(RemoveNodeResponse {}))
    }

    async fn drain_node(&self, request: Request<DrainNodeRequest>) -> Result<Response<DrainNodeResponse>, Status> {
        let DrainNodeRequest { node_id, cancel } = request.into_inner();
        let replicas = self.node.drain_node(node_id, !cancel).await.map_err(|e| status_from_error(&e))?;
        Ok(Response::new(DrainNodeResponse { replicas }))
    }

    async fn rebalance(&self, request: Request<RebalanceRequest>) -> Result<Response<RebalanceResponse>, Status> {
        let dry_run = request.into_inner().dry_run;
        let response = self.node.rebalance(dry_run).await.map_err(|e| status_from_error(&e))?;
        Ok(Response::new(response))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let to = request.into_inner().to;
        let client = self.client.clone();
        let campaign = move |addr: crate::raft::NodeAddr, after: Duration| async move {
            client.campaign(&addr.grpc_addr, after).await
        };
        let leader_id = self.node.transfer_leader(to, campaign).await.map_err(|e| status_from_error(&e))?;
        Ok(Response::new(TransferLeaderResponse { leader_id }))
    }

    async fn campaign(&self, request: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let after = Duration::from_millis(request.into_inner().after_ms);
        self.node.campaign(after).map_err(|e| status_from_error(&e))?;
        Ok(Response::new(CampaignResponse {}))
    }

    async fn trigger_snapshot(
        &self,
        _request: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotResponse>, Status> {
        let snapshot_index = self.node.snapshot_now().await.map_err(|e| status_from_error(&e))?;
        Ok(Response::new(TriggerSnapshotResponse { snapshot_index }))
    }

    async fn heartbeat(
        &self,
        request: Request<NodeHeartbeatRequest>,
    ) -> Result<Response<NodeHeartbeatResponse>, Status> {
        let NodeHeartbeatRequest { node_id, member_time_ms } = request.into_inner();
        self.node.record_heartbeat(node_id).await.map_err(|e| status_from_error(&e))?;
        if member_time_ms > 0 {
            self.node.record_member_clock(node_id, member_time_ms);
        }
        Ok(Response::new(NodeHeartbeatResponse { leader_time_ms: crate::meta_node::liveness::wall_ms() }))
    }
}
