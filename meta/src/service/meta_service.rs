//! [`MetaGrpcService`]: the server side of `MetaService`. It serves proposals and read-index requests forwarded by
//! other replicas, and whole-state reads, on the local [`MetaNode`]; it never forwards a call a second time, so a
//! replica that is not the leader answers with the leader's address instead.

use quiver_proto::v1::meta_service_server::MetaService;
use quiver_proto::v1::{
    ProposeRequest, ProposeResponse, ReadIndexRequest, ReadIndexResponse, ReadStateRequest, ReadStateResponse,
};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::error::ClusterError;
use crate::meta_node::MetaNode;
use crate::service::status::status_from_error;
use crate::state::MetaCommand;

/// Serves the metadata service of the local replica.
#[derive(Debug, Clone)]
pub struct MetaGrpcService {
    node: MetaNode,
}

impl MetaGrpcService {
    /// Returns the service of `node`.
    pub fn new(node: MetaNode) -> Self {
        Self { node }
    }

    /// Runs `future` within the replica's request timeout.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        future: impl Future<Output = Result<T, ClusterError>>,
    ) -> Result<T, Status> {
        let timeout = self.node.config().request_timeout();
        match tokio::time::timeout(timeout, future).await {
            Ok(result) => result.map_err(|e| status_from_error(&e)),
            Err(_) => Err(status_from_error(&ClusterError::Timeout {
                operation,
                node_id: self.node.node_id(),
                timeout_ms: self.node.config().request_timeout_ms,
            })),
        }
    }
}

#[tonic::async_trait]
impl MetaService for MetaGrpcService {
    async fn propose(&self, request: Request<ProposeRequest>) -> Result<Response<ProposeResponse>, Status> {
        let command: MetaCommand = serde_json::from_slice(&request.into_inner().command)
            .map_err(|e| status_from_error(&ClusterError::Decode { what: "proposed command", source: Box::new(e) }))?;
        let (response, log_index) = self.bounded("propose", self.node.propose_local(command)).await?;
        let response = serde_json::to_vec(&response).expect("a metadata response is always representable as JSON");
        Ok(Response::new(ProposeResponse { response, log_index }))
    }

    async fn read_index(&self, _request: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        let read_index = self.bounded("read index", self.node.read_index_local()).await?;
        Ok(Response::new(ReadIndexResponse { read_index }))
    }

    async fn read_state(&self, _request: Request<ReadStateRequest>) -> Result<Response<ReadStateResponse>, Status> {
        let deadline = Instant::now() + self.node.config().request_timeout();
        let read = async {
            let index = self.node.read_index_local().await?;
            self.node.wait_applied(index, deadline).await?;
            Ok(self.node.read_local(|state| (state.encode(), state.version())))
        };
        let (state, version) = self.bounded("read state", read).await?;
        Ok(Response::new(ReadStateResponse { state, version }))
    }
}
