//! [`ClusterClient`]: the typed client of `ClusterService`, used by a joining node and by `quiver admin`.
//!
//! Membership calls must reach the leader: when the called node answers "not leader" with the leader's address,
//! the call is sent there (a few hops at most, within the request timeout). Each call opens its own connection, as
//! in [`MetaClient`](super::MetaClient): these calls are rare.

use std::time::Duration;

use quiver_proto::v1::cluster_service_client::ClusterServiceClient;
use quiver_proto::v1::{
    CampaignRequest, ClusterStatusRequest, ClusterStatusResponse, DrainNodeRequest, JoinRequest as JoinMessage,
    NodeHeartbeatRequest, RebalanceRequest, RebalanceResponse, RemoveNodeRequest, TransferLeaderRequest,
    TriggerSnapshotRequest,
};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::error::ClusterError;
use crate::meta_node::JoinRequest;
use crate::service::status::error_from_status;
use crate::transport::{JoinSecret, PeerTransport};

/// A client of the cluster service of a node.
#[derive(Debug, Clone)]
pub struct ClusterClient {
    transport: PeerTransport,
    request_timeout: Duration,
    join_secret: Option<JoinSecret>,
}

/// How many leader redirects a call follows before giving up.
const MAX_REDIRECTS: usize = 5;

impl ClusterClient {
    /// Returns a client whose connections give up after `connect_timeout` and whose calls (redirects included)
    /// give up after `request_timeout`.
    pub fn new(connect_timeout: Duration, request_timeout: Duration) -> Self {
        Self::with_transport(PeerTransport::plaintext(connect_timeout), request_timeout)
    }

    /// Returns a client connecting through `transport` (mutual TLS in a cluster that uses it), whose calls give up
    /// after `request_timeout`.
    pub fn with_transport(transport: PeerTransport, request_timeout: Duration) -> Self {
        Self { transport, request_timeout, join_secret: None }
    }

    /// The same client, presenting `secret` when it asks to join (a node's own, or an operator's adding one).
    pub fn with_join_secret(self, secret: Option<JoinSecret>) -> Self {
        Self { join_secret: secret, ..self }
    }

    async fn connect(&self, addr: &str) -> Result<ClusterServiceClient<Channel>, ClusterError> {
        let unreachable = |source: tonic::transport::Error| ClusterError::Unreachable {
            addr: addr.to_string(),
            source: Box::new(source),
        };
        Ok(ClusterServiceClient::new(self.transport.open(addr).await.map_err(unreachable)?))
    }

    /// Runs `call` on the node at `addr`, following "not leader" answers to the leader, and while no leader is
    /// known, retrying until the request timeout.
    async fn on_leader<T, F, Fut>(&self, addr: &str, call: F) -> Result<T, ClusterError>
    where
        F: Fn(ClusterServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        let mut target = addr.to_string();
        let mut redirects = 0;
        loop {
            let client = self.connect(&target).await?;
            let error =
                match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), call(client)).await {
                    Ok(Ok(reply)) => return Ok(reply),
                    Ok(Err(status)) => error_from_status(&target, &status),
                    Err(_) => {
                        return Err(ClusterError::Timeout { operation: "cluster call", node_id: 0, timeout_ms: 0 });
                    }
                };
            match error {
                ClusterError::NotLeader { leader_addr, .. } if redirects < MAX_REDIRECTS => {
                    redirects += 1;
                    target = leader_addr;
                }
                ClusterError::LeaderUnknown { .. } if Instant::now() + Duration::from_millis(200) < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return Err(other),
            }
        }
    }

    /// Asks the cluster reached at `addr` to admit a node; returns the cluster id and the role given ("voter" or
    /// "learner").
    ///
    /// # Errors
    ///
    /// [`ClusterError::JoinRefused`] when the cluster refuses the node; [`ClusterError::Unreachable`] and the other
    /// transport errors.
    pub async fn join(&self, addr: &str, request: &JoinRequest) -> Result<(String, String), ClusterError> {
        let message = JoinMessage {
            node_id: request.node_id,
            grpc_addr: request.grpc_addr.clone(),
            flight_addr: request.flight_addr.clone(),
            pg_addr: request.pg_addr.clone(),
            cluster_id: request.cluster_id.clone(),
            empty_store: request.empty_store,
            join_secret: self.join_secret.as_ref().map(|s| s.expose().to_string()).unwrap_or_default(),
        };
        let reply = self
            .on_leader(addr, |mut c| {
                let message = message.clone();
                async move { c.join(message).await }
            })
            .await?
            .into_inner();
        Ok((reply.cluster_id, reply.role))
    }

    /// What a replica restarting on its own disk does with its seeds: asks them in turn to admit it again, as a join
    /// does. A replica removed while it was down (a removal whose answer the operator never got) comes back as a
    /// learner instead of campaigning, alone, in an old configuration; a member's confirmation changes nothing.
    ///
    /// One round is tried now. When no seed answers (no leader yet, as when a whole cluster restarts: the replicas
    /// must be up to elect one), the confirmation goes on in the background, a round every `pause`, until a seed
    /// answers or the cluster refuses the replica; the caller serves meanwhile.
    ///
    /// # Errors
    ///
    /// [`ClusterError::JoinRefused`] and [`ClusterError::InvalidMembershipChange`] when the first round is refused
    /// (another cluster, an id in use by another address).
    pub async fn confirm_membership(
        &self,
        seeds: Vec<String>,
        request: JoinRequest,
        pause: Duration,
    ) -> Result<(), ClusterError> {
        if self.membership_round(&seeds, &request).await? {
            return Ok(());
        }
        tracing::info!(node_id = request.node_id, "membership not confirmed yet; retrying in the background");
        let client = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(pause).await;
                match client.membership_round(&seeds, &request).await {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(node_id = request.node_id, error = %e, "the cluster refused this node");
                        return;
                    }
                }
            }
        });
        Ok(())
    }

    /// One round of [`ClusterClient::confirm_membership`]: `Ok(true)` once a seed confirmed.
    async fn membership_round(&self, seeds: &[String], request: &JoinRequest) -> Result<bool, ClusterError> {
        for seed in seeds {
            match self.join(seed, request).await {
                Ok((cluster_id, role)) => {
                    tracing::info!(node_id = request.node_id, cluster_id, role, via = %seed, "membership confirmed");
                    return Ok(true);
                }
                Err(e @ (ClusterError::JoinRefused { .. } | ClusterError::InvalidMembershipChange { .. })) => {
                    return Err(e);
                }
                Err(e) => tracing::info!(via = %seed, error = %e, "could not confirm membership"),
            }
        }
        Ok(false)
    }

    /// Returns the metadata group as the node at `addr` sees it.
    ///
    /// # Errors
    ///
    /// Transport errors.
    pub async fn status(&self, addr: &str) -> Result<ClusterStatusResponse, ClusterError> {
        let mut client = self.connect(addr).await?;
        let reply = client.status(ClusterStatusRequest {}).await.map_err(|s| error_from_status(addr, &s))?;
        Ok(reply.into_inner())
    }

    /// Removes `node_id` from the cluster reached at `addr`.
    ///
    /// # Errors
    ///
    /// [`ClusterError::InvalidMembershipChange`] for a non-member or the last voter; transport errors.
    pub async fn remove_node(&self, addr: &str, node_id: u64) -> Result<(), ClusterError> {
        self.on_leader(addr, |mut c| async move { c.remove_node(RemoveNodeRequest { node_id }).await }).await?;
        Ok(())
    }

    /// Starts draining node `node_id` of the cluster reached at `addr` (or stops, with `cancel`); returns how many
    /// replicas it still holds.
    ///
    /// # Errors
    ///
    /// [`ClusterError::InvalidMembershipChange`] for a node that is not registered; transport errors.
    pub async fn drain_node(&self, addr: &str, node_id: u64, cancel: bool) -> Result<u64, ClusterError> {
        let reply = self
            .on_leader(addr, |mut c| async move { c.drain_node(DrainNodeRequest { node_id, cancel }).await })
            .await?;
        Ok(reply.into_inner().replicas)
    }

    /// Asks the leader of the cluster reached at `addr` for the moves that balance the nodes; unless `dry_run`, it
    /// starts them.
    ///
    /// # Errors
    ///
    /// Transport errors, or no leader.
    pub async fn rebalance(&self, addr: &str, dry_run: bool) -> Result<RebalanceResponse, ClusterError> {
        let reply =
            self.on_leader(addr, |mut c| async move { c.rebalance(RebalanceRequest { dry_run }).await }).await?;
        Ok(reply.into_inner())
    }

    /// Moves leadership of the cluster reached at `addr` to `to`; returns the leader afterwards.
    ///
    /// # Errors
    ///
    /// [`ClusterError::InvalidMembershipChange`] when `to` cannot lead; transport errors.
    pub async fn transfer_leader(&self, addr: &str, to: u64) -> Result<u64, ClusterError> {
        let reply =
            self.on_leader(addr, |mut c| async move { c.transfer_leader(TransferLeaderRequest { to }).await }).await?;
        Ok(reply.into_inner().leader_id)
    }

    /// Asks the node at `addr` to start an election after `after`.
    ///
    /// # Errors
    ///
    /// [`ClusterError::InvalidMembershipChange`] when that node is not a voter; transport errors.
    pub async fn campaign(&self, addr: &str, after: Duration) -> Result<(), ClusterError> {
        let mut client = self.connect(addr).await?;
        let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        client.campaign(CampaignRequest { after_ms }).await.map_err(|s| error_from_status(addr, &s))?;
        Ok(())
    }

    /// Tells the node at `addr`, the leader as far as the caller knows, that member `node_id` is alive; returns the
    /// leader's wall clock when it answered (milliseconds since the Unix epoch; 0 from a node that does not say). One
    /// attempt: heartbeats repeat anyway, so a lost one is not resent.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NotLeader`] when the called node does not lead; transport errors.
    pub async fn heartbeat(&self, addr: &str, node_id: u64) -> Result<u64, ClusterError> {
        let mut client = self.connect(addr).await?;
        let member_time_ms = crate::meta_node::liveness::wall_ms();
        let call = client.heartbeat(NodeHeartbeatRequest { node_id, member_time_ms });
        match tokio::time::timeout(self.request_timeout, call).await {
            Ok(reply) => reply.map(|r| r.into_inner().leader_time_ms).map_err(|s| error_from_status(addr, &s)),
            Err(_) => Err(ClusterError::Timeout { operation: "heartbeat", node_id, timeout_ms: 0 }),
        }
    }

    /// Makes the node at `addr` build a snapshot now; returns the last index it includes.
    ///
    /// # Errors
    ///
    /// Transport errors, and the node's own.
    pub async fn trigger_snapshot(&self, addr: &str) -> Result<Option<u64>, ClusterError> {
        let mut client = self.connect(addr).await?;
        let reply =
            client.trigger_snapshot(TriggerSnapshotRequest {}).await.map_err(|s| error_from_status(addr, &s))?;
        Ok(reply.into_inner().snapshot_index)
    }
}
