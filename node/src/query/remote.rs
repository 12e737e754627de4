//! [`RemoteShardScanExec`]: one shard of a table read from a replica on another node, over the internal endpoint
//! (`ShardService.ScanShard`, served by `Engine::scan_shard` there): the leaf of a scan of a shard this node holds no
//! replica of, and the leaf multi-stage execution will place where the data lives.
//!
//! The replicas are tried in the order given (the primary first). One that cannot be reached, or fails before it sent
//! rows, is skipped; a failure after rows arrived fails the scan with a retryable error, since a second replica's
//! rows cannot be merged with part of the first one's. When every replica failed before sending rows (the shard moved
//! to a new epoch since the statement read its configuration: a failover, a copy admitted or dropped), the scan asks
//! its [`ShardLocator`] where the shard is read now and tries there, a few times. A newer configuration's primary holds
//! every write acknowledged under the older one, so the statement still sees every write acknowledged before it
//! began.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};
use quiver_meta::transport::{PeerTls, PeerTransport};
use quiver_meta::{ShardId, TableId};
use quiver_proto::v1::ScanShardRequest;
use quiver_proto::v1::shard_service_client::ShardServiceClient;

use crate::engine::statements::BYTES_SHIPPED_METRIC;
use crate::error::Error;

/// Where a shard is read now: its configuration's epoch and its primary's internal address, from metadata at least as
/// new as every configuration the cluster had committed when asked (a linearizable read).
#[async_trait::async_trait]
pub trait ShardLocator: Send + Sync + fmt::Debug {
    /// Returns the current epoch of `shard` of `table` and its primary's internal address.
    async fn locate(&self, table: TableId, shard: ShardId) -> Result<(u64, String), String>;

    /// How the scan reaches the replicas: plaintext unless the cluster uses mutual TLS.
    fn peer_tls(&self) -> PeerTls {
        PeerTls::plaintext()
    }
}

/// How many times a scan asks its locator where a shard moved before it gives up.
const RELOCATIONS: usize = 3;

/// A scan of one shard on other nodes.
#[derive(Debug)]
pub struct RemoteShardScanExec {
    table: TableId,
    shard: ShardId,
    epoch: u64,
    /// Internal addresses of the replicas to try, in order.
    replicas: Vec<String>,
    /// Columns to read, by index in the table (`None`: all).
    projection: Option<Vec<usize>>,
    limit: Option<usize>,
    /// A predicate the replica applies before sending rows (SQL over the table's columns).
    filter: Option<String>,
    /// The longest a replica may take to answer before the next one is tried.
    timeout: Duration,
    max_message_bytes: usize,
    /// Where to look when the shard moved since the scan was planned.
    locator: Option<Arc<dyn ShardLocator>>,
    /// The metadata version the reading node scans every shard of the table at (0: the replica's now).
    snapshot: u64,
    properties: Arc<PlanProperties>,
    /// The bytes of rows received (counted as shipped between nodes).
    metrics: ExecutionPlanMetricsSet,
    /// Where the bytes received count instead, when a plan node of its own runs this scan inside.
    received: Option<Count>,
}

impl RemoteShardScanExec {
    /// Returns a scan of `shard` of `table` at `epoch`, reading `projection` (by index in the table; `None`: all)
    /// and producing `schema` (the table's schema projected), from the replicas at `replicas` in turn.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        table: TableId,
        shard: ShardId,
        epoch: u64,
        replicas: Vec<String>,
        projection: Option<Vec<usize>>,
        schema: SchemaRef,
        limit: Option<usize>,
        timeout: Duration,
        max_message_bytes: usize,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            table,
            shard,
            epoch,
            replicas,
            projection,
            limit,
            filter: None,
            timeout,
            max_message_bytes,
            locator: None,
            snapshot: 0,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
            received: None,
        }
    }

    /// Has the replica read at metadata version `snapshot`: a statement spanning shards committed after it is not
    /// seen, in this shard as in the others.
    pub fn with_snapshot(self, snapshot: Option<u64>) -> Self {
        Self { snapshot: snapshot.unwrap_or(0), ..self }
    }

    /// Has the scan ask `locator` where the shard is when every replica refused it before sending rows.
    pub fn with_locator(self, locator: Arc<dyn ShardLocator>) -> Self {
        Self { locator: Some(locator), ..self }
    }

    #[cfg_attr(madsim, allow(dead_code))]
    /// Has the bytes received count into `received` (a metric of the plan node running this scan inside it).
    pub(crate) fn counting_into(self, received: Count) -> Self {
        Self { received: Some(received), ..self }
    }

    /// Has the replica send only rows `filter` (SQL over the table's columns) may match.
    pub fn with_filter(self, filter: Option<String>) -> Self {
        Self { filter, ..self }
    }

    fn request(&self) -> ScanShardRequest {
        ScanShardRequest {
            table_id: self.table.0,
            shard_id: self.shard.0,
            epoch: self.epoch,
            projection: self.projection.iter().flatten().map(|c| *c as u32).collect(),
            all_columns: self.projection.is_none(),
            limit: self.limit.map(|l| l as u64),
            filter: self.filter.clone(),
            snapshot: self.snapshot,
        }
    }
}

/// Decodes one reply's Arrow IPC stream, checking it carries `schema`'s columns.
fn decode(bytes: &[u8], schema: &SchemaRef, shard: ShardId, from: &str) -> DfResult<Vec<RecordBatch>> {
    let bad =
        |why: String| DataFusionError::External(Box::new(Error::Internal(format!("shard {shard} from {from}: {why}"))));
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(|e| bad(e.to_string()))?;
    if reader.schema().fields().len() != schema.fields().len()
        || reader.schema().fields().iter().zip(schema.fields()).any(|(a, b)| a.data_type() != b.data_type())
    {
        return Err(bad(format!("rows of another shape ({:?}) than asked for", reader.schema())));
    }
    reader
        .map(|b| {
            let b = b.map_err(|e| bad(e.to_string()))?;
            RecordBatch::try_new_with_options(
                Arc::clone(schema),
                b.columns().to_vec(),
                &arrow::array::RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
            )
            .map_err(|e| bad(e.to_string()))
        })
        .collect()
}

impl DisplayAs for RemoteShardScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RemoteShardScanExec: shard={} epoch={} replicas={}",
            self.shard,
            self.epoch,
            self.replicas.join(",")
        )?;
        if let Some(filter) = &self.filter {
            write!(f, " filter={filter}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for RemoteShardScanExec {
    leaf_plan_methods!("RemoteShardScanExec");

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "RemoteShardScanExec has one partition, asked for {partition}"
            )));
        }
        let received = match &self.received {
            Some(received) => received.clone(),
            None => MetricBuilder::new(&self.metrics).counter(BYTES_SHIPPED_METRIC, partition),
        };
        let (mut request, shard, timeout, max) = (self.request(), self.shard, self.timeout, self.max_message_bytes);
        let (table, mut replicas, locator) = (self.table, self.replicas.clone(), self.locator.clone());
        let schema = self.schema();
        let out_schema = Arc::clone(&schema);
        // Mutual TLS when the cluster uses it (the locator is the node's); a scan without a locator dials plaintext.
        let transport = PeerTransport::new(timeout, locator.as_ref().map(|l| l.peer_tls()).unwrap_or_default());
        let stream = futures::stream::once(async move {
            let mut failures = Vec::new();
            for relocation in 0..=RELOCATIONS {
                for addr in &replicas {
                    match first_reply(&transport, addr, &request, timeout, max).await {
                        Ok((first, replies)) => {
                            return rows(first, replies, Arc::clone(&schema), shard, addr, received);
                        }
                        Err(why) => failures.push(format!("{addr} at epoch {}: {why}", request.epoch)),
                    }
                }
                let Some(locator) = locator.as_ref().filter(|_| relocation < RELOCATIONS) else { break };
                match locator.locate(table, shard).await {
                    Ok((epoch, addr)) if epoch != request.epoch || replicas != [addr.clone()] => {
                        request.epoch = epoch;
                        replicas = vec![addr];
                    }
                    // Nowhere new to look.
                    Ok(_) => break,
                    Err(why) => {
                        failures.push(format!("locating it: {why}"));
                        break;
                    }
                }
            }
            Err(DataFusionError::External(Box::new(Error::ShardUnavailable {
                shard: shard.0,
                detail: format!("no replica could be scanned ({})", failures.join("; ")),
            })))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, stream)))
    }
}

/// The scan's first reply from the replica at `addr`, with the stream of the others.
async fn first_reply(
    transport: &PeerTransport,
    addr: &str,
    request: &ScanShardRequest,
    timeout: Duration,
    max: usize,
) -> Result<(Option<quiver_proto::v1::ScanShardReply>, tonic::Streaming<quiver_proto::v1::ScanShardReply>), String> {
    let attempt = async {
        let channel = transport.open(addr).await.map_err(|e| e.to_string())?;
        let mut client = ShardServiceClient::new(channel).max_decoding_message_size(max);
        let mut replies = client.scan_shard(request.clone()).await.map_err(|s| s.message().to_string())?.into_inner();
        let first = replies.message().await.map_err(|s| s.message().to_string())?;
        Ok::<_, String>((first, replies))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// The rows of a scan whose first reply came: that reply's, then the stream's. A failure of the stream fails the scan
/// (with a retryable error): rows came already.
fn rows(
    first: Option<quiver_proto::v1::ScanShardReply>,
    replies: tonic::Streaming<quiver_proto::v1::ScanShardReply>,
    schema: SchemaRef,
    shard: ShardId,
    addr: &str,
    received: Count,
) -> DfResult<impl futures::Stream<Item = DfResult<RecordBatch>> + use<>> {
    let first = match first {
        Some(reply) => {
            received.add(reply.arrow_ipc.len());
            decode(&reply.arrow_ipc, &schema, shard, addr)?
        }
        None => Vec::new(),
    };
    let addr = addr.to_string();
    let rest = futures::stream::unfold(replies, |mut replies| async move {
        match replies.message().await {
            Ok(Some(reply)) => Some((Ok(reply), replies)),
            Ok(None) => None,
            Err(status) => Some((Err(status), replies)),
        }
    })
    .map(move |reply| match reply {
        Ok(reply) => {
            received.add(reply.arrow_ipc.len());
            decode(&reply.arrow_ipc, &schema, shard, &addr)
        }
        Err(status) => Err(DataFusionError::External(Box::new(Error::ShardUnavailable {
            shard: shard.0,
            detail: format!(
                "the scan from {addr} failed after it returned rows ({}); retry the statement",
                status.message()
            ),
        }))),
    });
    let all = futures::stream::iter(vec![Ok(first)]).chain(rest);
    Ok(all.map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok))).try_flatten())
}

/// An expression as SQL another node parses against the same table: column names unqualified (the statement's
/// aliases mean nothing there).
///
/// # Errors
///
/// An expression the unparser cannot write as SQL.
pub(crate) fn expr_sql(expr: &datafusion::logical_expr::Expr) -> crate::error::Result<String> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::Expr;
    let bare = expr
        .clone()
        .transform(|e| match e {
            Expr::Column(c) => Ok(Transformed::yes(Expr::Column(datafusion::common::Column::new_unqualified(c.name)))),
            other => Ok(Transformed::no(other)),
        })?
        .data;
    Ok(datafusion::sql::unparser::expr_to_sql(&bare)?.to_string())
}
