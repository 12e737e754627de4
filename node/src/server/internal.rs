//! The internal gRPC endpoint of a node (`cluster.grpc_addr`): what other nodes, operators and the simulation talk
//! to, never clients.
//!
//! It serves the metadata replica's services (Raft transport, metadata proposals and reads, cluster membership, from
//! [`quiver_meta::service`]), the node's `DataService` (one SQL statement, an atomic append of Arrow IPC rows, or
//! tiering a table to the cold tier, on this node's data) and its `ShardService` (`shard`: the replication stream
//! into this node's shard replicas, and scans of one of them). Payloads are Arrow IPC streams bounded by
//! `limits.flight_message_max` in both directions. With multi-stage execution it also serves the worker of
//! `datafusion-distributed`, which runs the tasks of plans other nodes send (`query::distributed`).
//!
//! In the simulation build the endpoint runs on madsim's simulated network and the data service is how the
//! simulated workload writes and reads rows (the client frontends are not part of that build).

use std::future::Future;
use std::io::Cursor;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use quiver_meta::MetaNode;
use quiver_proto::v1::data_service_server::{DataService, DataServiceServer};
use quiver_proto::v1::shard_service_server::ShardServiceServer;
use quiver_proto::v1::{
    AppendReply, AppendRequest, CollectGarbageReply, CollectGarbageRequest, CompactReply, CompactRequest, ExecuteReply,
    ExecuteRequest, TierReply, TierRequest,
};
use tonic::transport::Server;
use tonic::{Request, Response, Status};

mod shard;

pub use self::shard::ShardGrpcService;
use crate::audit::{AuditEntry, AuditEvent, Outcome};
use crate::engine::{Engine, QueryOutput};
use crate::error::Error;
use crate::server::status::{malformed, status_from};

/// The `DataService` of one node.
#[derive(Debug, Clone)]
pub struct DataGrpcService {
    engine: Arc<Engine>,
    max_message_bytes: usize,
}

impl DataGrpcService {
    /// Returns the service of `engine`; replies larger than `max_message_bytes` are refused.
    pub fn new(engine: Arc<Engine>, max_message_bytes: usize) -> Self {
        Self { engine, max_message_bytes }
    }
}

/// Encodes batches as one Arrow IPC stream.
pub(crate) fn encode(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, Error> {
    let mut writer = StreamWriter::try_new(Vec::new(), schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    Ok(writer.into_inner()?)
}

/// Decodes one Arrow IPC stream; the error says what was wrong with the bytes.
fn decode(bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
    let reader = StreamReader::try_new(Cursor::new(bytes), None).map_err(|e| e.to_string())?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    Ok((schema, batches))
}

#[tonic::async_trait]
impl DataService for DataGrpcService {
    async fn execute(&self, request: Request<ExecuteRequest>) -> Result<Response<ExecuteReply>, Status> {
        let sql = request.into_inner().sql;
        let output = self.engine.execute_one(&sql).await.map_err(|e| status_from(&e))?;
        let reply = match output {
            QueryOutput::Rows { ref schema, .. } => {
                let schema = Arc::clone(schema);
                let batches = output.collect().await.map_err(|e| status_from(&e))?;
                let arrow_ipc = encode(&schema, &batches).map_err(|e| status_from(&e))?;
                if arrow_ipc.len() > self.max_message_bytes {
                    let e = Error::TooLarge { what: "result", actual: arrow_ipc.len(), limit: self.max_message_bytes };
                    return Err(status_from(&e));
                }
                ExecuteReply { arrow_ipc, rows_affected: 0, command: "SELECT".into() }
            }
            QueryOutput::Affected { command, rows } => {
                ExecuteReply { arrow_ipc: Vec::new(), rows_affected: rows, command: command.tag().into() }
            }
            QueryOutput::Done { command } => {
                ExecuteReply { arrow_ipc: Vec::new(), rows_affected: 0, command: command.tag().into() }
            }
        };
        Ok(Response::new(reply))
    }

    async fn append(&self, request: Request<AppendRequest>) -> Result<Response<AppendReply>, Status> {
        let AppendRequest { table, arrow_ipc } = request.into_inner();
        // Fault point: a slow request (a stalled disk or a busy node); clients time out and retry elsewhere.
        quiver_meta::buggify_delay!(0.02, 3_000);
        let (schema, batches) =
            decode(&arrow_ipc).map_err(|e| malformed(format!("the rows are not a valid Arrow IPC stream: {e}")))?;
        let stream = RecordBatchStreamAdapter::new(schema, futures::stream::iter(batches.into_iter().map(Ok)));
        let rows = self.engine.append_stream(&table, Box::pin(stream)).await.map_err(|e| status_from(&e))?;
        Ok(Response::new(AppendReply { rows }))
    }

    async fn tier(&self, request: Request<TierRequest>) -> Result<Response<TierReply>, Status> {
        let table = request.into_inner().table;
        let report = self.engine.tier(&table).await.map_err(|e| status_from(&e))?;
        Ok(Response::new(TierReply {
            rows: report.rows,
            chunks: report.chunks as u64,
            bytes: report.bytes,
            manifest_version: report.manifest_version,
        }))
    }

    async fn compact(&self, request: Request<CompactRequest>) -> Result<Response<CompactReply>, Status> {
        let table = request.into_inner().table;
        let report = self.engine.compact(&table).await.map_err(|e| status_from(&e))?;
        Ok(Response::new(CompactReply {
            files_in: report.files_in as u64,
            files_out: report.files_out as u64,
            rows: report.rows,
            bytes_in: report.bytes_in,
            bytes_out: report.bytes_out,
            manifest_version: report.manifest_version,
        }))
    }

    async fn collect_garbage(
        &self,
        request: Request<CollectGarbageRequest>,
    ) -> Result<Response<CollectGarbageReply>, Status> {
        let grace = request.into_inner().grace_ms.map(std::time::Duration::from_millis);
        let report = self.engine.collect_garbage(grace).await.map_err(|e| status_from(&e))?;
        Ok(Response::new(CollectGarbageReply {
            listed: report.listed,
            deleted: report.deleted,
            deleted_bytes: report.deleted_bytes,
            grace_ms: u64::try_from(report.grace.as_millis()).unwrap_or(u64::MAX),
        }))
    }
}

/// Records each join refused for want of the join secret in the node's audit log.
fn join_refusals(engine: &Arc<Engine>) -> quiver_meta::service::OnJoinRefused {
    let engine = Arc::clone(engine);
    Arc::new(move |refusal: quiver_meta::service::JoinRefusal| {
        let detail = format!("node {} at {}: {}", refusal.node_id, refusal.grpc_addr, refusal.reason);
        let mut entry = AuditEntry::new(AuditEvent::JoinRefused, Outcome::Refused, detail).protocol("internal");
        if let Some(peer) = refusal.peer {
            entry = entry.peer(peer);
        }
        engine.audit().record(entry);
    })
}

fn router(meta: &MetaNode, engine: Arc<Engine>, max_message_bytes: usize) -> tonic::transport::server::Router {
    // The worker of multi-stage plans: tasks other nodes send this one.
    #[cfg(not(madsim))]
    let worker = engine.distributed().map(|d| d.worker().into_worker_server());
    // A replicated change carries the chunks of a write that fit in `max_message_bytes`, compressed, with their index
    // entries: headroom for those.
    let shard = ShardServiceServer::new(ShardGrpcService::new(Arc::clone(&engine), max_message_bytes))
        .max_decoding_message_size(max_message_bytes.saturating_add(1 << 20))
        .max_encoding_message_size(max_message_bytes.saturating_add(1 << 20));
    let refusals = join_refusals(&engine);
    let data = DataServiceServer::new(DataGrpcService::new(engine, max_message_bytes))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes.saturating_add(1 << 20));
    // Peers cancel calls that time out (openraft's leadership checks by the dozen while a node is away); past h2's
    // default of 20 such resets waiting for accept, the server would close the connection with GOAWAY
    // ("too_many_resets") and fail every call on it. Peers are other nodes of the cluster, not the internet.
    let router = Server::builder()
        .http2_max_pending_accept_reset_streams(Some(INTERNAL_MAX_PENDING_RESETS))
        .add_service(quiver_meta::service::raft_server(meta))
        .add_service(quiver_meta::service::meta_server(meta))
        .add_service(quiver_meta::service::cluster_server_auditing(meta, refusals))
        .add_service(data)
        .add_service(shard);
    #[cfg(not(madsim))]
    let router = router.add_optional_service(worker);
    router
}

/// Streams a peer may reset before the internal endpoint accepted them, per connection, before it is closed.
const INTERNAL_MAX_PENDING_RESETS: usize = 1024;

/// Serves the internal endpoint on `listener` until `shutdown` completes.
///
/// # Errors
///
/// Returns the transport's error when the server fails.
#[cfg(not(madsim))]
pub async fn serve(
    meta: MetaNode,
    engine: Arc<Engine>,
    max_message_bytes: usize,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    use futures::StreamExt as _;
    use tonic::transport::server::TcpIncoming;
    if let Some(tls) = tls {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "internal endpoint speaks mutual TLS: peers need a certificate of the cluster CA");
        }
        let accepted = crate::server::tls::accept_peers(listener, tls, Arc::clone(&engine));
        let incoming =
            tokio_stream::wrappers::ReceiverStream::new(accepted).map(|(stream, _)| Ok::<_, std::io::Error>(stream));
        return router(&meta, engine, max_message_bytes).serve_with_incoming_shutdown(incoming, shutdown).await;
    }
    // Small request/response messages: without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms to a reply.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    router(&meta, engine, max_message_bytes).serve_with_incoming_shutdown(incoming, shutdown).await
}

/// Serves the internal endpoint at `addr` of the simulated node until `shutdown` completes (madsim's network has no
/// listener to hand over).
///
/// # Errors
///
/// Returns the transport's error when the server fails.
#[cfg(madsim)]
pub async fn serve(
    meta: MetaNode,
    engine: Arc<Engine>,
    max_message_bytes: usize,
    addr: std::net::SocketAddr,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    router(&meta, engine, max_message_bytes).serve_with_shutdown(addr, shutdown).await
}
