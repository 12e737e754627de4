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
    /// Connections to peers give up after `timeout` without an answer.
    ///
    /// # Errors
    ///
    /// The library's refusal of a setting (none is expected).
    pub(crate) fn install(
        state: SessionStateBuilder,
        meta: &MetaNode,
        timeout: Duration,
        runtime: Arc<RuntimeEnv>,
    ) -> crate::error::Result<(SessionStateBuilder, Self)> {
        let engine = EngineSlot::default();
        let channels = PeerChannels::new(timeout);
        // A union's inputs stay in the union's tasks: a shard's hot and cold scans under a union are this node's
        // reads, never split into tasks of their own elsewhere.
        let state = state
            .with_distributed_planner()
            .with_distributed_children_isolator_unions(false)?
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
        let own_addr = s.node(me).map(|n| n.grpc_addr.clone()).unwrap_or_default();
        let mut parts = Vec::with_capacity(reads.len());
        for (replica, read) in table.shards().iter().zip(reads) {
            let shard = replica.shard_id();
            let part = match read {
                ShardRead::Local => {
                    let epoch = s.shard(shard).map(|r| r.epoch).ok_or_else(|| {
                        crate::error::Error::ShardUnavailable { shard: shard.0, detail: "it was dropped".into() }
                    })?;
                    ShardPart { shard: shard.0, epoch, node: me, addr: own_addr.clone() }
                }
                ShardRead::Remote { epoch, addr } => {
                    let node = s.shard(shard).map(|r| r.primary).unwrap_or_default();
                    ShardPart { shard: shard.0, epoch: *epoch, node, addr: addr.clone() }
                }
            };
            parts.push(part);
        }
        Ok::<_, crate::error::Error>((s.version(), own_addr, parts))
    })?;
    let schema = table.schema();
    let projected = match projection {
        Some(p) => schema.project(p)?,
        None => schema.as_ref().clone(),
    };
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
    };
    Ok(Arc::new(ShardsScanExec::new(spec, Arc::downgrade(engine))))
}

/// EXPLAIN of a statement as this node would run it: the optimized logical plan, and the physical plan cut into
/// stages, with the tasks of each and the node each shard scan task reads on (a plan with no stage to distribute is
/// shown as DataFusion shows it). The library's planner runs after DataFusion's own EXPLAIN is built, so DataFusion's
/// EXPLAIN would show the single-stage plan.
///
/// # Errors
///
/// The errors of planning the statement.
pub(crate) async fn explain(
    state: &datafusion::execution::SessionState,
    explain: &datafusion::logical_expr::Explain,
) -> crate::error::Result<(arrow::datatypes::SchemaRef, datafusion::execution::SendableRecordBatchStream)> {
    use arrow::array::{RecordBatch, StringArray};
    let logical = state.optimize(&explain.plan)?;
    let physical = state.create_physical_plan(&explain.plan).await?;
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
    )?;
    let stream = datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
        Arc::clone(&schema),
        futures::stream::iter(vec![Ok(batch)]),
    );
    Ok((schema, Box::pin(stream)))
}
