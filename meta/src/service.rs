//! The gRPC service layer of a metadata replica: the servers of `RaftService` ([`RaftGrpcService`]) and
//! `MetaService` ([`MetaGrpcService`]), `ClusterService` ([`ClusterGrpcService`]), the clients used
//! to forward to the leader ([`MetaClient`]) and to join and administer a cluster ([`ClusterClient`]), and the single
//! mapping of [`ClusterError`](crate::ClusterError) to `tonic::Status` (`status`).
//!
//! Wire types and `tonic` stay in this module and in the Raft transport ([`GrpcNetwork`](crate::raft::GrpcNetwork));
//! the replica's logic ([`MetaNode`]) sees only [`ClusterError`](crate::ClusterError)s.
//!
//! The services run on the caller's Tokio runtime: their handlers wait on Raft and do no heavy computation.

mod client;
mod cluster_client;
mod cluster_service;
mod meta_service;
mod raft_service;
pub(crate) mod status;

use std::future::Future;

use quiver_proto::v1::cluster_service_server::ClusterServiceServer;
use quiver_proto::v1::meta_service_server::MetaServiceServer;
use quiver_proto::v1::raft_service_server::RaftServiceServer;
#[cfg(not(madsim))]
use tokio::net::TcpListener;
use tonic::transport::Server;
#[cfg(not(madsim))]
use tonic::transport::server::TcpIncoming;

pub use self::client::MetaClient;
pub use self::cluster_client::ClusterClient;
pub use self::cluster_service::{ClusterGrpcService, JoinRefusal, OnJoinRefused};
pub use self::meta_service::MetaGrpcService;
pub use self::raft_service::RaftGrpcService;
pub use self::status::error_chain;
use crate::meta_node::MetaNode;

/// The generated servers: tonic's take the service; madsim's simulated ones also name their (identity) interceptor.
#[cfg(not(madsim))]
macro_rules! server_type {
    ($server:ident < $service:ty >) => { $server<$service> };
}
#[cfg(madsim)]
macro_rules! server_type {
    ($server:ident < $service:ty >) => { $server<$service, tonic::codegen::IdentityInterceptor> };
}

/// Returns the `RaftService` server of `node`, to mount on the node's gRPC server.
pub fn raft_server(node: &MetaNode) -> server_type!(RaftServiceServer<RaftGrpcService>) {
    // Snapshot chunks are bounded by the configured chunk size plus the envelope; allow them with headroom.
    let limit = usize::try_from(node.config().snapshot_chunk_bytes_max).unwrap_or(usize::MAX).saturating_mul(2);
    RaftServiceServer::new(RaftGrpcService::new(node.raft().clone(), node.votes_held(), node.elections()))
        .max_decoding_message_size(limit.max(4 << 20))
}

/// Returns the `MetaService` server of `node`, to mount on the node's gRPC server.
pub fn meta_server(node: &MetaNode) -> server_type!(MetaServiceServer<MetaGrpcService>) {
    MetaServiceServer::new(MetaGrpcService::new(node.clone()))
}

/// Returns the `ClusterService` server of `node`, to mount on the node's gRPC server.
pub fn cluster_server(node: &MetaNode) -> server_type!(ClusterServiceServer<ClusterGrpcService>) {
    ClusterServiceServer::new(ClusterGrpcService::new(node.clone()))
}

/// [`cluster_server`], calling `hook` with every join it refuses.
pub fn cluster_server_auditing(
    node: &MetaNode,
    hook: OnJoinRefused,
) -> server_type!(ClusterServiceServer<ClusterGrpcService>) {
    ClusterServiceServer::new(ClusterGrpcService::new(node.clone()).on_join_refused(hook))
}

/// Serves the metadata and cluster services of `node` on `listener` until `shutdown` completes.
///
/// # Errors
///
/// Returns the transport's error when the server fails.
///
/// # Cancel safety
///
/// Dropping the future stops serving at once, closing open connections.
#[cfg(not(madsim))]
pub async fn serve(
    node: &MetaNode,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        .add_service(raft_server(node))
        .add_service(meta_server(node))
        .add_service(cluster_server(node))
        // Small request/response messages: without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms to a reply.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await
}

/// Serves the metadata and cluster services of `node` at `addr` of its simulated node until `shutdown` completes
/// (the simulation's form of [`serve`]: madsim's network has no listener to hand over).
///
/// # Errors
///
/// Returns the transport's error when the server fails.
#[cfg(madsim)]
pub async fn serve(
    node: &MetaNode,
    addr: std::net::SocketAddr,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        .add_service(raft_server(node))
        .add_service(meta_server(node))
        .add_service(cluster_server(node))
        .serve_with_shutdown(addr, shutdown)
        .await
}
