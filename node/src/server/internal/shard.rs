//! The `ShardService` of a node (`proto/quiver/v1/shard.proto`): a shard's primary replicates its changes to this
//! node's replica, and other nodes scan this node's replica of a shard. The epoch checks and the storage work are the
//! engine's ([`Engine::apply_replicated`], [`Engine::scan_shard`]); this layer decodes and encodes.

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::{Stream, StreamExt};
use quiver_meta::{ShardId, TableId};
use quiver_proto::v1::shard_service_server::ShardService;
use quiver_proto::v1::{
    ChangeShardReply, ChangeShardRequest, ReplicaStatusReply, ReplicaStatusRequest, ReplicateReply, ReplicateRequest,
    ResolveTransactionReply, ResolveTransactionRequest, ScanShardReply, ScanShardRequest, WriteShardReply,
    WriteShardRequest,
};
use tonic::{Request, Response, Status};

use super::{decode, encode};
use crate::engine::{Engine, ReplicatedChange};
use crate::error::Error;
use crate::server::status::{malformed, status_from};

/// The `ShardService` of one node.
#[derive(Debug, Clone)]
pub struct ShardGrpcService {
    engine: Arc<Engine>,
    max_message_bytes: usize,
}

impl ShardGrpcService {
    /// Returns the service of `engine`; no reply message is larger than `max_message_bytes`.
    pub fn new(engine: Arc<Engine>, max_message_bytes: usize) -> Self {
        Self { engine, max_message_bytes }
    }
}

/// Encodes `batch` as Arrow IPC streams of at most `limit` bytes each, halving the batch until its parts fit.
fn encode_within(schema: &SchemaRef, batch: &RecordBatch, limit: usize) -> Result<Vec<Vec<u8>>, Status> {
    let bytes = encode(schema, std::slice::from_ref(batch)).map_err(|e| status_from(&e))?;
    if bytes.len() <= limit || batch.num_rows() <= 1 {
        return Ok(vec![bytes]);
    }
    let half = batch.num_rows() / 2;
    let mut out = encode_within(schema, &batch.slice(0, half), limit)?;
    out.extend(encode_within(schema, &batch.slice(half, batch.num_rows() - half), limit)?);
    Ok(out)
}

#[tonic::async_trait]
impl ShardService for ShardGrpcService {
    async fn write_shard(&self, request: Request<WriteShardRequest>) -> Result<Response<WriteShardReply>, Status> {
        let r = request.into_inner();
        let (_, batches) =
            decode(&r.arrow_ipc).map_err(|e| malformed(format!("the rows are not a valid Arrow IPC stream: {e}")))?;
        let rows = self
            .engine
            .write_shard(TableId(r.table_id), ShardId(r.shard_id), r.epoch, batches, r.txn)
            .await
            .map_err(|e| status_from(&e))?;
        Ok(Response::new(WriteShardReply { rows }))
    }

    async fn resolve_transaction(
        &self,
        request: Request<ResolveTransactionRequest>,
    ) -> Result<Response<ResolveTransactionReply>, Status> {
        let r = request.into_inner();
        let chunks = self
            .engine
            .resolve_part(TableId(r.table_id), ShardId(r.shard_id), r.epoch, r.txn)
            .await
            .map_err(|e| status_from(&e))?;
        Ok(Response::new(ResolveTransactionReply { chunks }))
    }

    async fn change_shard(&self, request: Request<ChangeShardRequest>) -> Result<Response<ChangeShardReply>, Status> {
        let r = request.into_inner();
        let (rows, tagged) = self
            .engine
            .change_shard(TableId(r.table_id), ShardId(r.shard_id), r.epoch, &r.statement, r.txn)
            .await
            .map_err(|e| status_from(&e))?;
        Ok(Response::new(ChangeShardReply { rows, tagged }))
    }

    async fn replicate(&self, request: Request<ReplicateRequest>) -> Result<Response<ReplicateReply>, Status> {
        let r = request.into_inner();
        let change = ReplicatedChange {
            table: TableId(r.table_id),
            shard: ShardId(r.shard_id),
            epoch: r.epoch,
            from_node: r.from_node,
            added: r.added.into_iter().map(|c| (c.seq, c.index_entry, c.data)).collect(),
            removed: r.removed,
            next_seq: r.next_seq,
            lsn: r.lsn,
            term: r.term,
            commit_through: r.commit_through,
            discard_after: r.discard_after,
            reset: r.reset.then_some(r.keep),
            resolved: r
                .resolved
                .into_iter()
                .map(|o| crate::engine::Resolution { txn: o.txn, commit: o.commit, version: o.version })
                .collect(),
            txn: r.txn,
        };
        let state = self.engine.apply_replicated(change).await.map_err(|e| status_from(&e))?;
        Ok(Response::new(ReplicateReply {
            epoch: state.epoch,
            chunks: state.chunks,
            rows: state.rows,
            committed_lsn: state.committed_lsn,
            prepared: state.prepared,
        }))
    }

    async fn replica_status(
        &self,
        request: Request<ReplicaStatusRequest>,
    ) -> Result<Response<ReplicaStatusReply>, Status> {
        let r = request.into_inner();
        let status = self
            .engine
            .replica_status(TableId(r.table_id), ShardId(r.shard_id), r.epoch, r.from_node)
            .await
            .map_err(|e| status_from(&e))?;
        Ok(Response::new(ReplicaStatusReply {
            chunks: status.chunks,
            digests: status.digests,
            committed_lsn: status.committed_lsn,
            log_end: status.log_end,
        }))
    }

    type ScanShardStream = Pin<Box<dyn Stream<Item = Result<ScanShardReply, Status>> + Send>>;

    async fn scan_shard(&self, request: Request<ScanShardRequest>) -> Result<Response<Self::ScanShardStream>, Status> {
        let r = request.into_inner();
        let projection = (!r.all_columns).then(|| r.projection.iter().map(|c| *c as usize).collect());
        let limit = r.limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
        let scan = self
            .engine
            .scan_shard(
                TableId(r.table_id),
                ShardId(r.shard_id),
                r.epoch,
                projection,
                r.filter.as_deref(),
                limit,
                (r.snapshot > 0).then_some(r.snapshot),
            )
            .await
            .map_err(|e| status_from(&e))?;
        // The first rows are read before the answer starts (a small shard's all of them: a failure there, such as
        // the shard moving under the scan, is this call's status, and the reader looks for the shard elsewhere);
        // the rest follow as they are read, and a failure among them ends the stream with its error. Each batch is
        // split to fit a message, with headroom for the message's other fields; the first message says which cold
        // view was read.
        let (schema, manifest_version, hot_through) =
            (Arc::clone(&scan.schema), scan.manifest_version, scan.hot_through);
        let (head, rest) = scan.head(crate::engine::SCAN_HEAD_BYTES).await.map_err(|e| status_from(&e))?;
        let limit = self.max_message_bytes.saturating_sub(1024).max(1);
        let mut replies = Vec::new();
        for batch in &head {
            for arrow_ipc in encode_within(&schema, batch, limit)? {
                replies.push(ScanShardReply { arrow_ipc, manifest_version: 0, hot_through: 0 });
            }
        }
        if replies.is_empty() {
            let arrow_ipc = encode(&schema, &[]).map_err(|e| status_from(&e))?;
            replies.push(ScanShardReply { arrow_ipc, manifest_version: 0, hot_through: 0 });
        }
        replies[0].manifest_version = manifest_version;
        replies[0].hot_through = hot_through;
        let head = futures::stream::iter(replies.into_iter().map(Ok));
        let Some(rest) = rest else { return Ok(Response::new(Box::pin(head))) };
        let rest = rest.flat_map(move |batch| {
            let replies = match batch.map_err(Error::from) {
                Ok(batch) => match encode_within(&schema, &batch, limit) {
                    Ok(parts) => parts
                        .into_iter()
                        .map(|arrow_ipc| Ok(ScanShardReply { arrow_ipc, manifest_version: 0, hot_through: 0 }))
                        .collect(),
                    Err(status) => vec![Err(status)],
                },
                Err(e) => vec![Err(status_from(&e))],
            };
            futures::stream::iter(replies)
        });
        Ok(Response::new(Box::pin(head.chain(rest))))
    }
}
