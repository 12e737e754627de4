//! [`MetaClient`]: the typed client of another replica's `MetaService`, used to forward proposals and read-index
//! requests to the leader.
//!
//! Each call opens its own connection. That keeps one property simple: a connection failure means the request was
//! never sent, so [`ClusterError::Unreachable`] from this client always means "not applied" and the caller may retry.
//! Metadata calls are rare (DDL, membership, placement), so the extra connect costs little.

use std::time::Duration;

use quiver_proto::v1::meta_service_client::MetaServiceClient;
use quiver_proto::v1::{ProposeRequest, ReadIndexRequest, ReadStateRequest};
use tonic::transport::Channel;

use crate::error::ClusterError;
use crate::service::status::error_from_status;
use crate::state::{MetaCommand, MetaResponse, MetaState};
use crate::transport::PeerTransport;

/// A client of the metadata service of other replicas.
#[derive(Debug, Clone)]
pub struct MetaClient {
    transport: PeerTransport,
}

impl MetaClient {
    /// Returns a client whose plaintext connection attempts give up after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        Self::with_transport(PeerTransport::plaintext(connect_timeout))
    }

    /// Returns a client connecting through `transport`.
    pub fn with_transport(transport: PeerTransport) -> Self {
        Self { transport }
    }

    async fn connect(&self, addr: &str) -> Result<MetaServiceClient<Channel>, ClusterError> {
        let unreachable = |source: tonic::transport::Error| ClusterError::Unreachable {
            addr: addr.to_string(),
            source: Box::new(source),
        };
        Ok(MetaServiceClient::new(self.transport.open(addr).await.map_err(unreachable)?))
    }

    /// Proposes `command` on the replica at `addr`, which must be the leader, and returns the response with the log
    /// index it was applied at.
    ///
    /// # Errors
    ///
    /// Returns [`ClusterError::Unreachable`] when no connection could be made (the command was not sent),
    /// [`ClusterError::NotLeader`] or [`ClusterError::LeaderUnknown`] when the replica is not the leader (not
    /// applied), and [`ClusterError::Remote`] for any other failure, after which the command may have been applied.
    pub async fn propose(
        &self,
        addr: &str,
        command: &MetaCommand,
        timeout: Duration,
    ) -> Result<(MetaResponse, u64), ClusterError> {
        let mut client = self.connect(addr).await?;
        let command = serde_json::to_vec(command).expect("a metadata command is always representable as JSON");
        let mut request = tonic::Request::new(ProposeRequest { command });
        request.set_timeout(timeout);
        let reply = client.propose(request).await.map_err(|s| error_from_status(addr, &s))?.into_inner();
        let response = serde_json::from_slice(&reply.response)
            .map_err(|e| ClusterError::Decode { what: "forwarded proposal response", source: Box::new(e) })?;
        Ok((response, reply.log_index))
    }

    /// Asks the leader at `addr` for the log index a linearizable read must wait for (`None`: nothing committed).
    ///
    /// # Errors
    ///
    /// As for [`MetaClient::propose`]; a read is always safe to retry.
    pub async fn read_index(&self, addr: &str, timeout: Duration) -> Result<Option<u64>, ClusterError> {
        let mut client = self.connect(addr).await?;
        let mut request = tonic::Request::new(ReadIndexRequest {});
        request.set_timeout(timeout);
        let reply = client.read_index(request).await.map_err(|s| error_from_status(addr, &s))?;
        Ok(reply.into_inner().read_index)
    }

    /// Reads the whole metadata state from the leader at `addr`, linearizably.
    ///
    /// # Errors
    ///
    /// As for [`MetaClient::read_index`], and [`ClusterError::Decode`] when the state does not decode.
    pub async fn read_state(&self, addr: &str, timeout: Duration) -> Result<MetaState, ClusterError> {
        let mut client = self.connect(addr).await?;
        let mut request = tonic::Request::new(ReadStateRequest {});
        request.set_timeout(timeout);
        let reply = client.read_state(request).await.map_err(|s| error_from_status(addr, &s))?.into_inner();
        serde_json::from_slice(&reply.state)
            .map_err(|e| ClusterError::Decode { what: "metadata state", source: Box::new(e) })
    }
}
