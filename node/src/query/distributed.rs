//! Multi-stage execution in a cluster, on `datafusion-distributed`: the parts of a query that read shards run on the
//! nodes that lead them, and only what they produce (filtered rows, partial aggregates, shuffled join inputs) crosses
//! the network.
//!
//! Every node is both a coordinator (it plans the statements its clients send) and a worker (it runs tasks other
//! nodes send it, on its internal endpoint). The pieces, each in its own file:
//!
//! - `leaf`: [`ShardsScanExec`], the scan of a table's shards, split into one task per node leading them;
//! - `placement`: how many tasks a leaf wants, how it is split, and which node runs each task;
//! - `codec`: how the leaf travels to a worker;
//! - `workers`: the workers (the cluster's serving nodes), the connections to them, and a task's session.
//!
//! The library runs on real tokio and real connections, so the simulation build keeps the single-stage plan (the
//! planning node reads each remote shard through `RemoteShardScanExec`); that plan is also what a node with no peers,
//! or with `cluster.distributed_execution = false`, runs.

mod codec;
mod leaf;
mod placement;
mod workers;

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion_distributed::{DistributedExt, SessionStateBuilderExt, Worker};
use quiver_meta::MetaNode;
use url::Url;

pub(crate) use self::leaf::{ScanSpec, ScanTask, ShardPart, ShardsScanExec};
use self::workers::{NodeWorkers, PeerChannels, WorkerSessions};
use crate::engine::Engine;

/// The engine a codec or a task's session serves, set once the engine exists (it is built after its session).
#[derive(Debug, Clone, Default)]
pub(crate) struct EngineSlot(Arc<OnceLock<Weak<Engine>>>);

impl EngineSlot {
    pub(crate) fn set(&self, engine: Weak<Engine>) {
        let _ = self.0.set(engine);
    }

    pub(crate) fn get(&self) -> Weak<Engine> {
        self.0.get().cloned().unwrap_or_default()
    }
}

/// This node's worker's URL, as its peers reach it (a session extension the routing reads).
#[derive(Debug)]
pub(crate) struct LocalUrl(pub(crate) Url);

/// The URL a node's worker is reached at: its internal address.
pub(crate) fn url_of(addr: &str) -> DfResult<Url> {
    Url::parse(&format!("http://{addr}"))
        .map_err(|e| DataFusionError::Execution(format!("the internal address {addr} is not a URL: {e}")))
}

/// This node's side of distributed execution: the worker its internal endpoint serves, and the engine it runs on.
#[derive(Clone)]
pub(crate) struct Distributed {
    worker: Worker,
    engine: EngineSlot,
}

impl std::fmt::Debug for Distributed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributed").finish_non_exhaustive()
    }
}

impl Distributed {
    /// Makes `state` plan statements as multi-stage plans over the serving nodes of `meta`'s cluster; returns it
    /// with this node's worker, whose tasks run on `runtime` (the engine's memory pool and spill space).
    /// Connections to peers give up after `options.replication.timeout` without an answer; rows shipped between
    /// stages are compressed as `options.shuffle_compression` says.
    ///
    /// # Errors
    ///
    /// The library's refusal of a setting (none is expected).
    pub(crate) fn install(
        state: SessionStateBuilder,
        meta: &MetaNode,
        options: &crate::engine::EngineOptions,
        runtime: Arc<RuntimeEnv>,
    ) -> crate::error::Result<(SessionStateBuilder, Self)> {
        use crate::engine::ShuffleCompression;
        let timeout: Duration = options.replication.timeout;
        let compression = match options.shuffle_compression {
            ShuffleCompression::Lz4 => Some(arrow::ipc::CompressionType::LZ4_FRAME),
            ShuffleCompression::Zstd => Some(arrow::ipc::CompressionType::ZSTD),
            ShuffleCompression::None => None,
        };
        let engine = EngineSlot::default();
        let channels = PeerChannels::new(timeout, meta.config().peer_tls.clone());
        // A union's inputs stay in the union's tasks: a shard's hot and cold scans under a union are this node's
        // reads, never split into tasks of their own elsewhere.
        let state = state
            .with_distributed_planner()
            .with_distributed_children_isolator_unions(false)?
            .with_distributed_compression(compression)?
            .with_distributed_worker_resolver(NodeWorkers::new(meta.clone()))
            .with_distributed_channel_resolver(channels.clone())
            .with_distributed_user_codec(codec::LeafCodec::new(engine.clone()))
            .with_distributed_desired_task_count_handler(placement::desired_tasks)
            .with_distributed_scale_up_leaf_node_handler(placement::scale_up)
            .with_distributed_route_tasks_handler(placement::route);
        let worker =
            Worker::from_session_builder(WorkerSessions { engine: engine.clone(), channels }).with_runtime_env(runtime);
        Ok((state, Self { worker, engine }))
    }

    /// Binds this side to its engine, once the engine exists.
    pub(crate) fn bind(&self, engine: Weak<Engine>) {
        self.engine.set(engine);
    }

    /// The worker to serve on the internal endpoint (clones share its tasks).
    pub(crate) fn worker(&self) -> Worker {
        self.worker.clone()
    }

    /// Has the tasks `state` routes to `addr` (this node's internal address as its peers know it) run in this
    /// process, and the stages reading this node's own data routed there.
    pub(crate) fn run_local_tasks_at(
        &self,
        state: &mut datafusion::execution::SessionState,
        addr: &str,
    ) -> DfResult<()> {
        let url = url_of(addr)?;
        state.set_distributed_local_worker_context(self.worker.to_local_worker_context(url.clone()));
        state.config_mut().set_extension(Arc::new(LocalUrl(url)));
        Ok(())
    }
}

/// The scan of every shard of `table` as one [`ShardsScanExec`], each shard where `reads` (from
/// [`Engine::shard_reads`]) found it: on this node or on its primary elsewhere, at the epoch it was routed at. The
/// statement's `filters` travel to the shards as SQL (one the unparser cannot write is applied above the scan only).
///
/// # Errors
///
/// [`crate::error::Error::ShardUnavailable`] when a shard left the metadata since it was routed.
pub(crate) fn shards_scan(
    engine: &Arc<Engine>,
    table: &crate::table::HotTable,
    reads: &[crate::engine::route::ShardRead],
    projection: Option<&Vec<usize>>,
    filters: &[datafusion::logical_expr::Expr],
    limit: Option<usize>,
) -> crate::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
    use crate::engine::route::ShardRead;
    let me = engine.node_id();
    let (snapshot, own_addr, parts) = engine.meta().read_local(|s| {
        let addr_of = |node: u64| s.node(node).map(|n| n.grpc_addr.clone()).unwrap_or_default();
        let mut parts = Vec::with_capacity(reads.len());
        for (replica, read) in table.shards().iter().zip(reads) {
            let shard = replica.shard_id();
            // Each part's epoch and primary come from one configuration of the shard: a task reads a replica only
            // when its node led the shard at that epoch.
            let size = crate::engine::loads::shard_size(replica, s.shard(shard).map(|r| r.load));
            let part = match read {
                ShardRead::Local => {
                    let record = s.shard(shard).ok_or_else(|| crate::error::Error::ShardUnavailable {
                        shard: shard.0,
                        detail: "it was dropped".into(),
                    })?;
                    ShardPart {
                        shard: shard.0,
                        epoch: record.epoch,
                        node: record.primary,
                        addr: addr_of(record.primary),
                        size,
                    }
                }
                ShardRead::Remote { epoch, node, addr } => {
                    ShardPart { shard: shard.0, epoch: *epoch, node: *node, addr: addr.clone(), size }
                }
            };
            parts.push(part);
        }
        Ok::<_, crate::error::Error>((s.version(), addr_of(me), parts))
    })?;
    let schema = table.schema();
    let projected = match projection {
        Some(p) => schema.project(p)?,
        None => schema.as_ref().clone(),
    };
    // Bounds from the copies held here stand for every shard's (rows are spread over shards by a hash of their key).
    let columns: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..schema.fields().len()).collect());
    let bounds =
        table.shards().iter().filter_map(|r| crate::engine::loads::shard_bounds(r, &columns)).reduce(|mut all, one| {
            all.merge(&one);
            all
        });
    let filter = datafusion::logical_expr::utils::conjunction(filters.iter().cloned())
        .and_then(|e| super::remote::expr_sql(&e).ok());
    let spec = ScanSpec {
        table: table.def().id.0,
        table_name: table.def().name.clone(),
        tasks: vec![ScanTask { node: me, addr: own_addr, parts }],
        projection: projection.cloned(),
        schema: projected,
        filter,
        // With filters, a limit cannot stop a shard's scan early: the plan filters again above.
        limit: if filters.is_empty() { limit } else { None },
        snapshot: Some(snapshot),
        timeout_ms: u64::try_from(engine.remote_timeout().as_millis()).unwrap_or(u64::MAX),
        bounds,
    };
    Ok(Arc::new(ShardsScanExec::new(spec, Arc::downgrade(engine))))
}

/// EXPLAIN of a statement that runs as a multi-stage plan: the optimized logical plan, and the physical plan cut into
/// stages, with the tasks of each and the node each shard scan task reads on. `None` when the statement does not run
/// as a multi-stage plan or cannot be planned (DataFusion's EXPLAIN shows those, with the planning error).
pub(crate) async fn explain(
    state: &datafusion::execution::SessionState,
    explain: &datafusion::logical_expr::Explain,
) -> Option<(arrow::datatypes::SchemaRef, datafusion::execution::SendableRecordBatchStream)> {
    use arrow::array::{RecordBatch, StringArray};
    let logical = state.optimize(&explain.plan).ok()?;
    let physical = state.create_physical_plan(&explain.plan).await.ok()?;
    if !physical.is::<datafusion_distributed::DistributedExec>() {
        return None;
    }
    let schema: arrow::datatypes::SchemaRef = Arc::new(explain.schema.as_arrow().clone());
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from(vec!["logical_plan", "physical_plan"])),
            Arc::new(StringArray::from(vec![
                logical.display_indent().to_string(),
                datafusion_distributed::display_plan_ascii(physical.as_ref(), false),
            ])),
        ],
    )
    .ok()?;
    let stream = datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
        Arc::clone(&schema),
        futures::stream::iter(vec![Ok(batch)]),
    );
    Some((schema, Box::pin(stream)))
}

/// Whether `e` says a node the plan ran a part on went away (a refused or broken connection, a worker that never got
/// its task) or a shard moved under it: a plan made again from the metadata as it is now may not need that node.
pub(crate) fn lost_node(e: &DataFusionError) -> bool {
    use crate::error::{Error, lost_worker_message, peer_failed};
    let text = e.to_string();
    // A task on another node fails into words: a lost peer, or our own retryable error, as that node put it.
    if crate::error::lost_peer_text(&text) || crate::error::retryable_in_text(&text).is_some() {
        return true;
    }
    let external = |b: &(dyn std::error::Error + Send + Sync + 'static)| {
        if let Some(status) = b.downcast_ref::<tonic::Status>() {
            return peer_failed(status);
        }
        if let Some(ours) = b.downcast_ref::<Error>() {
            return matches!(ours, Error::NodeUnavailable { .. } | Error::ShardUnavailable { .. });
        }
        b.downcast_ref::<DataFusionError>().is_some_and(lost_node)
    };
    match e {
        DataFusionError::External(b) => external(b.as_ref()),
        DataFusionError::ArrowError(a, _) => {
            matches!(a.as_ref(), arrow::error::ArrowError::ExternalError(b) if external(b.as_ref()))
        }
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => lost_node(inner),
        DataFusionError::Shared(inner) => lost_node(inner),
        DataFusionError::Collection(errors) => errors.iter().any(lost_node),
        DataFusionError::Execution(message) => lost_worker_message(message),
        _ => false,
    }
}

/// How often a statement is planned and run again when a node it needed went away, or a shard moved under it, before
/// any row came: each time from the metadata as it is then. A moving shard may switch its primary more than once
/// during a query; a lost node is usually out of the plan the first time.
pub(crate) const RUNS_AGAIN: usize = 3;

/// The rows of a statement, planned and run again with `again` (at most [`RUNS_AGAIN`] times) when a run (the first is
/// `first`) fails because a node went away or a shard moved ([`lost_node`]) before it produced a row: nothing reached
/// the client, so nothing is read twice. A failure after rows came goes to the client (a retryable error when a node
/// was lost).
///
/// # Errors
///
/// The errors of planning or starting the statement, of its last run when it was run again.
pub(crate) async fn run_again_if_a_node_is_lost<F, Fut>(
    first: DfResult<datafusion::execution::SendableRecordBatchStream>,
    again: F,
) -> DfResult<datafusion::execution::SendableRecordBatchStream>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = DfResult<datafusion::execution::SendableRecordBatchStream>> + Send + 'static,
{
    use datafusion::execution::SendableRecordBatchStream;
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
    use futures::{StreamExt, TryStreamExt};
    let mut left = RUNS_AGAIN;
    let mut started = first;
    let first = loop {
        match started {
            Err(e) if left > 0 && lost_node(&e) => {
                tracing::info!(error = %e, "a node or shard the statement needed failed before it started; planning it again");
                left -= 1;
                started = again().await;
            }
            started => break started?,
        }
    };
    let schema = first.schema();
    let rows = futures::stream::once(async move {
        let mut current: SendableRecordBatchStream = first;
        loop {
            match current.next().await {
                Some(Err(e)) if left > 0 && lost_node(&e) => {
                    tracing::info!(error = %e, "a node or shard the statement needed failed before any row came; planning it again");
                    drop(current);
                    left -= 1;
                    current = loop {
                        match again().await {
                            Err(e) if left > 0 && lost_node(&e) => left -= 1,
                            started => break started?,
                        }
                    };
                }
                Some(head) => {
                    let schema = current.schema();
                    let all = futures::stream::iter([head]).chain(current);
                    return Ok::<_, DataFusionError>(Box::pin(RecordBatchStreamAdapter::new(schema, all)) as SendableRecordBatchStream);
                }
                None => return Ok::<_, DataFusionError>(current),
            }
        }
    })
    .try_flatten();
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, rows)))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
    use datafusion::execution::SendableRecordBatchStream;
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
    use futures::TryStreamExt;

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]))
    }

    fn batch(values: Vec<i64>) -> RecordBatch {
        RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(values))]).expect("batch")
    }

    fn stream(items: Vec<DfResult<RecordBatch>>) -> SendableRecordBatchStream {
        Box::pin(RecordBatchStreamAdapter::new(schema(), futures::stream::iter(items)))
    }

    fn refused() -> DataFusionError {
        DataFusionError::External(Box::new(tonic::Status::unavailable("tcp connect error: connection refused")))
    }

    /// Runs `first`, with a second run that answers `[7]`; returns the rows (or the error) and the runs made again.
    async fn run(first: DfResult<SendableRecordBatchStream>) -> (DfResult<Vec<i64>>, usize) {
        let again = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&again);
        let out = run_again_if_a_node_is_lost(first, move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok(stream(vec![Ok(batch(vec![7]))])) }
        })
        .await;
        (collect(out).await, again.load(Ordering::SeqCst))
    }

    async fn collect(out: DfResult<SendableRecordBatchStream>) -> DfResult<Vec<i64>> {
        let batches: Vec<_> = out?.try_collect().await?;
        Ok(batches
            .iter()
            .flat_map(|b| b.column(0).as_any().downcast_ref::<Int64Array>().expect("ints").values().to_vec())
            .collect())
    }

    #[tokio::test]
    async fn a_statement_whose_node_is_lost_before_any_row_runs_once_more_and_never_twice_after_rows() {
        // Lost before the first row (or before it started): planned again, its rows are the second run's.
        let (rows, again) = run(Ok(stream(vec![Err(refused()), Ok(batch(vec![1]))]))).await;
        assert_eq!((rows.expect("rows"), again), (vec![7], 1));
        let (rows, again) = run(Err(DataFusionError::Context("plan".into(), Box::new(refused())))).await;
        assert_eq!((rows.expect("rows"), again), (vec![7], 1));
        let lost = DataFusionError::Execution("Error connecting to Distributed DataFusion worker on 'x'".into());
        let (rows, again) = run(Ok(stream(vec![Err(lost)]))).await;
        assert_eq!((rows.expect("rows"), again), (vec![7], 1));
        // Lost after rows came: the client gets a retryable error, the rows already sent are not sent twice.
        let (rows, again) = run(Ok(stream(vec![Ok(batch(vec![1, 2])), Err(refused())]))).await;
        let e = rows.expect_err("lost after rows");
        assert_eq!((again, crate::error::Error::from(e).kind()), (0, crate::error::ErrorKind::Unavailable));
        // A failure of the statement itself is not a lost node: it is not run again.
        let (rows, again) = run(Ok(stream(vec![Err(DataFusionError::Execution("Divide by zero".into()))]))).await;
        assert!(rows.is_err() && again == 0);
        // A shard moving under a task on another node, as the task's error comes back (words only): planned again,
        // as often as it keeps moving, up to a bound.
        let moved =
            || DataFusionError::Execution("External error: shard 3 unavailable: at epoch 4, the shard at 5".into());
        for failures in [1, RUNS_AGAIN, RUNS_AGAIN + 1] {
            let runs = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&runs);
            let out = run_again_if_a_node_is_lost(Ok(stream(vec![Err(moved())])), move || {
                let run = counted.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    match run < failures {
                        true => Ok(stream(vec![Err(moved())])),
                        false => Ok(stream(vec![Ok(batch(vec![7]))])),
                    }
                }
            })
            .await;
            let rows = collect(out).await;
            let again_runs = runs.load(Ordering::SeqCst);
            match failures <= RUNS_AGAIN {
                true => assert_eq!((rows.expect("rows"), again_runs), (vec![7], failures)),
                false => {
                    let e = crate::error::Error::from(rows.expect_err("moved every time"));
                    assert_eq!((again_runs, e.kind()), (RUNS_AGAIN, crate::error::ErrorKind::Unavailable));
                }
            }
        }
        // No failure: the rows as they come.
        let (rows, again) = run(Ok(stream(vec![Ok(batch(vec![1])), Ok(batch(vec![2, 3]))]))).await;
        assert_eq!((rows.expect("rows"), again), (vec![1, 2, 3], 0));
    }
}
