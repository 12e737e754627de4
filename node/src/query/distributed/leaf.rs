//! [`ShardsScanExec`]: every shard of a table, read where each shard is led, as the leaf of a multi-stage plan.
//!
//! The planning node lists each shard with the epoch it was routed at and the node leading it then, grouped into
//! tasks (one per node until the plan's stage says otherwise, [`ShardsScanExec::split`]). A task runs on its node: a
//! shard led there is read from the node's own replica ([`Engine::scan_shard`], checked against the epoch); any other
//! shard (a task holding shards of several nodes, or a shard that moved since planning) is read from its primary over
//! the internal endpoint ([`RemoteShardScanExec`], which follows a moved shard). Every shard is read at the planning
//! node's metadata snapshot, so a statement spanning shards is seen whole or not at all, wherever the tasks run.

use std::fmt;
use std::sync::{Arc, Weak};

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::stats::Precision;
use datafusion::common::{DataFusionError, Result as DfResult, Statistics};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, SendableRecordBatchStream,
    StatisticsArgs,
};
use datafusion_distributed::DistributedTaskContext;
use futures::{StreamExt, TryStreamExt};
use quiver_meta::{ShardId, TableId};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::engine::loads::ShardSize;
use crate::engine::statements::BYTES_SHIPPED_METRIC;
use crate::error::Error;
use crate::query::bounds::ColumnBounds;
use crate::query::remote::RemoteShardScanExec;

/// One shard as the planning node routed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ShardPart {
    pub(crate) shard: u64,
    /// The shard's epoch when the statement was planned: a replica at another epoch refuses the read.
    pub(crate) epoch: u64,
    /// The node leading the shard at that epoch, and its internal address.
    pub(crate) node: u64,
    pub(crate) addr: String,
    /// About how large the shard is, as the planning node knew (what the plan's statistics say).
    #[serde(default)]
    pub(crate) size: Option<ShardSize>,
}

/// The shards one task reads, and the node it should run on (the one leading most of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ScanTask {
    pub(crate) node: u64,
    pub(crate) addr: String,
    pub(crate) parts: Vec<ShardPart>,
}

/// What a [`ShardsScanExec`] reads: all of it travels to the task's node (see `codec`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ScanSpec {
    pub(crate) table: u64,
    pub(crate) table_name: String,
    pub(crate) tasks: Vec<ScanTask>,
    /// Columns read, by index in the table (`None`: all; empty: row counts only).
    pub(crate) projection: Option<Vec<usize>>,
    /// The table's schema projected: the leaf's output.
    pub(crate) schema: Schema,
    /// A predicate each shard applies before its rows leave it (SQL over the table's columns); the plan filters again.
    pub(crate) filter: Option<String>,
    pub(crate) limit: Option<usize>,
    /// The metadata version every shard is read at.
    pub(crate) snapshot: Option<u64>,
    /// The longest a remote read waits for a replica's first answer, in milliseconds.
    pub(crate) timeout_ms: u64,
    /// The bounds of the columns read, from the copies of the shards on the planning node: what the plan's statistics
    /// say (only the planning node plans with them; they do not travel).
    #[serde(skip)]
    pub(crate) bounds: Option<ColumnBounds>,
}

/// The scan of every shard of one table, each on the node that leads it (see the module's documentation).
#[derive(Debug)]
pub(crate) struct ShardsScanExec {
    spec: Arc<ScanSpec>,
    engine: Weak<Engine>,
    properties: Arc<PlanProperties>,
    /// The bytes of rows read from shards on other nodes (shipped between nodes).
    metrics: ExecutionPlanMetricsSet,
}

impl ShardsScanExec {
    /// Returns the scan `spec` describes, run by `engine` (the planning node's, or the node a task runs on).
    pub(crate) fn new(spec: ScanSpec, engine: Weak<Engine>) -> Self {
        // One partition per shard, numbered over all tasks, in every task's variant of the leaf: a task reads the
        // partitions of its own shards, and the leaf run as a single task (a stage the library left whole) reads all.
        let partitions = spec.tasks.iter().map(|t| t.parts.len()).sum::<usize>().max(1);
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::new(spec.schema.clone())),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self { spec: Arc::new(spec), engine, properties, metrics: ExecutionPlanMetricsSet::new() }
    }

    pub(crate) fn spec(&self) -> &ScanSpec {
        &self.spec
    }

    /// The nodes the shards are read on, one per task as planned.
    pub(crate) fn task_nodes(&self) -> Vec<(u64, String)> {
        self.spec.tasks.iter().map(|t| (t.node, t.addr.clone())).collect()
    }

    /// The same scan in `count` tasks. The shards of one node stay together while there are at least as many tasks
    /// as nodes (the largest groups split in two, on the same node, while tasks are left); with fewer tasks, a task
    /// takes several nodes' groups and reads the ones not led where it runs from their primaries.
    pub(crate) fn split(&self, count: usize) -> Self {
        let count = count.max(1);
        let mut groups: Vec<ScanTask> = Vec::new();
        for part in self.spec.tasks.iter().flat_map(|t| &t.parts) {
            match groups.iter_mut().find(|g| g.node == part.node) {
                Some(group) => group.parts.push(part.clone()),
                None => groups.push(ScanTask { node: part.node, addr: part.addr.clone(), parts: vec![part.clone()] }),
            }
        }
        groups.sort_by_key(|g| g.node);
        while groups.len() < count {
            let Some((largest, _)) =
                groups.iter().enumerate().filter(|(_, g)| g.parts.len() > 1).max_by_key(|(_, g)| g.parts.len())
            else {
                break;
            };
            let half = groups[largest].parts.len() / 2;
            let moved = groups[largest].parts.split_off(half);
            let group = &groups[largest];
            groups.push(ScanTask { node: group.node, addr: group.addr.clone(), parts: moved });
        }
        let mut tasks: Vec<ScanTask> = Vec::with_capacity(count);
        groups.sort_by_key(|g| std::cmp::Reverse(g.parts.len()));
        for group in groups {
            if tasks.len() < count {
                tasks.push(group);
            } else {
                let lightest = tasks.iter_mut().min_by_key(|t| t.parts.len()).expect("count >= 1");
                lightest.parts.extend(group.parts);
            }
        }
        // Tasks left without shards run on the first task's node and read nothing.
        while tasks.len() < count {
            let (node, addr) = tasks.first().map(|t| (t.node, t.addr.clone())).unwrap_or_default();
            tasks.push(ScanTask { node, addr, parts: Vec::new() });
        }
        let mut spec = (*self.spec).clone();
        spec.tasks = tasks;
        Self::new(spec, self.engine.clone())
    }

    /// Rows and bytes of `parts` (inexact: loads reported now and then), as the planner weighs the scan: bytes as
    /// the columns read take in memory ([`row_width`]). Shards whose size is not known count as the average of the
    /// known ones; nothing known is unknown statistics.
    fn statistics_of(&self, parts: &mut dyn Iterator<Item = &ShardPart>) -> Statistics {
        let schema = Arc::new(self.spec.schema.clone());
        let mut stats = Statistics::new_unknown(&schema);
        let (mut count, mut known, mut rows) = (0u64, 0u64, 0u64);
        for part in parts {
            count += 1;
            if let Some(size) = part.size {
                known += 1;
                rows += size.rows;
            }
        }
        if known == 0 {
            return stats;
        }
        let scale =
            |v: u64| usize::try_from(u128::from(v) * u128::from(count) / u128::from(known)).unwrap_or(usize::MAX);
        let rows = self.spec.limit.map_or(scale(rows), |l| scale(rows).min(l));
        stats.num_rows = Precision::Inexact(rows);
        // Bytes as the rows take in memory once read, for the columns read: what a join would build or a stage
        // ship. The bytes stored (compressed, every column) say little of that.
        stats.total_byte_size = Precision::Inexact(rows.saturating_mul(row_width(&self.spec.schema)));
        if let Some(bounds) = &self.spec.bounds {
            bounds.apply(&mut stats.column_statistics);
        }
        stats
    }

    /// The shard partition `partition` reads in the task running in `context`: none when the shard belongs to
    /// another task.
    fn part_of(&self, partition: usize, context: &Arc<TaskContext>) -> DfResult<Option<ShardPart>> {
        let task = DistributedTaskContext::from_ctx(context);
        let tasks = &self.spec.tasks;
        let owner = tasks.iter().enumerate().flat_map(|(i, t)| t.parts.iter().map(move |p| (i, p))).nth(partition);
        match owner {
            None => Ok(None),
            Some((_, part)) if task.task_count == 1 => Ok(Some(part.clone())),
            Some((i, part)) if task.task_count == tasks.len() => Ok((i == task.task_index).then(|| part.clone())),
            Some(_) => Err(DataFusionError::Internal(format!(
                "ShardsScanExec planned for {} tasks runs as task {} of {}",
                tasks.len(),
                task.task_index,
                task.task_count
            ))),
        }
    }
}

impl DisplayAs for ShardsScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShardsScanExec: table={}", self.spec.table_name)?;
        for task in &self.spec.tasks {
            let shards: Vec<String> = task.parts.iter().map(|p| p.shard.to_string()).collect();
            write!(f, ", node {}: shards [{}]", task.node, shards.join(","))?;
        }
        if let Some(p) = &self.spec.projection {
            let names: Vec<&str> = self.spec.schema.fields().iter().map(|f| f.name().as_str()).collect();
            write!(f, ", projection=[{}]", if p.is_empty() { String::new() } else { names.join(", ") })?;
        }
        if let Some(filter) = &self.spec.filter {
            write!(f, ", filter={filter}")?;
        }
        if let Some(l) = self.spec.limit {
            write!(f, ", limit={l}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ShardsScanExec {
    leaf_plan_methods!("ShardsScanExec");

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> DfResult<Arc<Statistics>> {
        let mut parts = self.spec.tasks.iter().flat_map(|t| &t.parts);
        Ok(Arc::new(match args.partition() {
            Some(p) => self.statistics_of(&mut parts.nth(p).into_iter()),
            None => self.statistics_of(&mut parts),
        }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let schema: SchemaRef = Arc::new(self.spec.schema.clone());
        let Some(part) = self.part_of(partition, &context)? else {
            return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::empty())));
        };
        let engine = self.engine.upgrade().ok_or_else(|| {
            DataFusionError::External(Box::new(Error::ShardUnavailable {
                shard: part.shard,
                detail: "this node is shutting down".into(),
            }))
        })?;
        let spec = Arc::clone(&self.spec);
        let out = Arc::clone(&schema);
        let received = MetricBuilder::new(&self.metrics).counter(BYTES_SHIPPED_METRIC, partition);
        let stream = futures::stream::once(async move { read(engine, spec, part, schema, context, received).await })
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(out, stream)))
    }
}

/// The rows of one shard: from this node's replica when the shard was led here at its epoch, else from its primary.
async fn read(
    engine: Arc<Engine>,
    spec: Arc<ScanSpec>,
    part: ShardPart,
    schema: SchemaRef,
    context: Arc<TaskContext>,
    received: Count,
) -> DfResult<SendableRecordBatchStream> {
    let (table, shard) = (TableId(spec.table), ShardId(part.shard));
    // Read here only a shard this node led at the part's epoch (as this node knows the shard now): a replica here
    // that is a backup at that epoch may trail its primary's commit point.
    let me = engine.node_id();
    let led_here = engine.meta().read_local(|s| s.shard(shard).map(|r| (r.epoch, r.primary))) == Some((part.epoch, me));
    if part.node == me && led_here {
        let scan = engine
            .scan_shard(
                table,
                shard,
                part.epoch,
                spec.projection.clone(),
                spec.filter.as_deref(),
                spec.limit,
                spec.snapshot,
            )
            .await;
        // The first rows are read before any is passed on: a shard that moved under a small scan is read from its
        // new primary below instead of failing the statement.
        let scan = match scan {
            Ok(scan) => scan.head(crate::engine::SCAN_HEAD_BYTES).await,
            Err(e) => Err(e),
        };
        match scan {
            Ok((head, rest)) => {
                let out = Arc::clone(&schema);
                let rest = rest.map(|r| r.boxed()).unwrap_or_else(|| futures::stream::empty().boxed());
                let batches = futures::stream::iter(head.into_iter().map(Ok)).chain(rest).map(move |b| {
                    let b = b?;
                    let options = RecordBatchOptions::new().with_row_count(Some(b.num_rows()));
                    Ok(RecordBatch::try_new_with_options(Arc::clone(&out), b.columns().to_vec(), &options)?)
                });
                return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)));
            }
            // The shard moved since planning: its primary is looked up and read there.
            Err(Error::ShardUnavailable { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let remote = RemoteShardScanExec::new(
        table,
        shard,
        part.epoch,
        vec![part.addr.clone()],
        spec.projection.clone(),
        schema,
        spec.limit,
        std::time::Duration::from_millis(spec.timeout_ms),
        usize::MAX,
    )
    .with_filter(spec.filter.clone())
    .with_snapshot(spec.snapshot)
    .with_locator(engine.locator())
    .counting_into(received);
    remote.execute(0, context)
}

/// The bytes a value of a variable-width column (text, binary) is taken to need in memory: its offset and about 20
/// bytes of data.
const VARIABLE_WIDTH_BYTES: usize = 24;

/// An estimate of a row of `schema` in memory: fixed-width columns their width (a boolean a byte), variable-width
/// ones [`VARIABLE_WIDTH_BYTES`].
fn row_width(schema: &Schema) -> usize {
    schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Boolean => 1,
            t => t.primitive_width().unwrap_or(VARIABLE_WIDTH_BYTES),
        })
        .sum()
}
