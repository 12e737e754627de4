//! [`HotTableProvider`]: a hot table as a DataFusion table.
//!
//! Scans push projection down into the chunk decoder and use the filters to prune chunks by their min/max statistics
//! (filters are reported `Inexact`: DataFusion still applies them to the surviving rows). Inserts stream into an
//! [`crate::table::Appender`] through [`HotSink`], committing once at the end of the statement.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Weak};

use arrow::array::{ArrayRef, BooleanArray, UInt64Array};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Column, Constraint, Constraints, DFSchema, Result as DfResult, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_optimizer::pruning::{PruningPredicate, PruningPredicateBuilder, PruningStatistics};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use quiver_meta::ShardId;

use super::concat::ConcatExec;
use super::remote::RemoteShardScanExec;
use super::scan::ChunkScanExec;
use crate::cold::ColdState;
use crate::engine::Engine;
use crate::engine::route::ShardRead;
use crate::error::Error;
use crate::table::{Chunk, HotTable};

/// A native table as seen by DataFusion.
#[derive(Debug)]
pub(crate) struct HotTableProvider {
    table: Arc<HotTable>,
    constraints: Constraints,
    /// Scan this shard only (a scan of one shard's replica served to another node); `None`: every shard.
    only: Option<ShardId>,
    /// The engine that routes this table's inserts and scans to its shards' primaries (`engine::route`); without
    /// it, every shard is written and read here.
    engine: Weak<Engine>,
    /// What the scan sees of chunks written by statements spanning shards, when not the engine's view now.
    read_at: Option<ReadAt>,
}

/// The metadata a scan judges chunk visibility by ([`crate::table::ChunkMeta::visible`]): the decisions of statements
/// spanning shards, from `meta`, and the snapshot the reader's node took (`None`: `meta`'s version now).
#[derive(Debug, Clone)]
pub(crate) struct ReadAt {
    pub(crate) meta: quiver_meta::MetaNode,
    pub(crate) snapshot: Option<u64>,
}

impl ReadAt {
    /// Keeps the chunks of `chunks` a reader at this snapshot sees.
    pub(crate) fn visible(&self, chunks: impl Iterator<Item = Arc<Chunk>>) -> Vec<Arc<Chunk>> {
        self.meta.read_local(|s| {
            let snapshot = Some(self.snapshot.unwrap_or_else(|| s.version()));
            chunks
                .filter(|c| c.meta.visible(snapshot, |txn| s.transaction(txn).map(|d| (d.commit, d.version))))
                .collect()
        })
    }
}

/// How many snapshots a scan takes at most before it gives up matching its cold views to one.
const SNAPSHOT_ATTEMPTS: usize = 4;

/// Why the cold view `view` of shard `shard` does not fit a reader at metadata version `snapshot`, if it does not:
/// its files hold a statement spanning shards committed after the snapshot, or may lack one committed at or before
/// it (the shard's manifest pointer, as this node applied it, names a newer such commit: the view is followed again,
/// whatever that commit's version, since one between the view's and it may be at or before the snapshot).
fn cold_mismatch(
    meta: &quiver_meta::MetaNode,
    shard: ShardId,
    view: &crate::cold::ColdView,
    snapshot: u64,
) -> Option<(ShardId, String)> {
    if view.txn_version > snapshot {
        return Some((
            shard,
            format!(
                "its cold files hold a statement committed at metadata version {}, after this statement's snapshot \
                 {snapshot}; retry the statement",
                view.txn_version
            ),
        ));
    }
    let current = meta.read_local(|s| s.shard(shard).and_then(|r| r.manifest.as_ref()).map(|m| m.txn_version));
    let current = current.unwrap_or(0);
    (current > view.txn_version).then(|| {
        (
            shard,
            format!(
                "its cold files here trail a statement committed at metadata version {current} (this statement's \
                 snapshot is {snapshot}); retry the statement"
            ),
        )
    })
}

impl HotTableProvider {
    /// Wraps a hot table.
    pub(crate) fn new(table: Arc<HotTable>) -> Self {
        let schema = table.schema();
        let key: Vec<usize> = table.def().primary_key.iter().filter_map(|k| schema.index_of(k).ok()).collect();
        let constraints = if key.is_empty() {
            Constraints::default()
        } else {
            Constraints::new_unverified(vec![Constraint::PrimaryKey(key)])
        };
        Self { table, constraints, only: None, engine: Weak::new(), read_at: None }
    }

    /// Routes the table's inserts and scans through `engine`.
    pub(crate) fn routed_by(self, engine: Weak<Engine>) -> Self {
        Self { engine, ..self }
    }

    /// Wraps one shard of a hot table: scans read that shard's replica on this node, hot and cold rows. Inserts are
    /// refused.
    pub(crate) fn for_shard(table: Arc<HotTable>, shard: ShardId, read_at: ReadAt) -> Self {
        Self { only: Some(shard), read_at: Some(read_at), ..Self::new(table) }
    }
}

/// The predicate that prunes containers (chunks, files, row groups) by their statistics for `filters`; `None` when
/// the filters cannot rule any out.
pub(super) fn pruning_predicate(
    state: &dyn Session,
    schema: &SchemaRef,
    filters: &[Expr],
) -> DfResult<Option<PruningPredicate>> {
    let Some(predicate) = conjunction(filters.iter().cloned()) else {
        return Ok(None);
    };
    let df_schema = DFSchema::try_from(Arc::clone(schema))?;
    let physical = state.create_physical_expr(predicate, &df_schema)?;
    let pruning = PruningPredicateBuilder::new().with_file_schema(Arc::clone(schema)).try_build(physical)?;
    Ok((!pruning.always_true()).then_some(pruning))
}

/// Returns the chunks of `chunks` that `filters` may match, judged by their statistics.
pub(crate) fn prune_chunks(
    state: &dyn Session,
    schema: &SchemaRef,
    chunks: &[Arc<Chunk>],
    filters: &[Expr],
) -> DfResult<Vec<Arc<Chunk>>> {
    let Some(predicate) = pruning_predicate(state, schema, filters)?.filter(|_| !chunks.is_empty()) else {
        return Ok(chunks.to_vec());
    };
    let keep = predicate.prune(&ChunkStatistics { schema, chunks })?;
    Ok(chunks.iter().zip(keep).filter(|(_, k)| *k).map(|(c, _)| Arc::clone(c)).collect())
}

#[async_trait]
impl TableProvider for HotTableProvider {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn constraints(&self) -> Option<&Constraints> {
        Some(&self.constraints)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        // Every shard's version and cold view as of one moment (each shard's hot version first, its cold view
        // second: tiering installs the view before it drops hot chunks): hot chunks the cold files hold are
        // skipped, so every row is read exactly once, and no statement is seen in part.
        // In a cluster, shards led by other nodes are read there (`engine::route`).
        let engine = if self.only.is_none() { self.engine.upgrade() } else { None };
        if let Some(engine) = &engine {
            // The cold views must not trail their manifest pointers (a pointer may cover hot chunks that are gone).
            engine.follow_shards(self.table.shards()).await;
        }
        let reads = match &engine {
            Some(engine) => engine.shard_reads(&self.table).await?,
            None => vec![ShardRead::Local; self.table.shards().len()],
        };
        // In a cluster running multi-stage plans, every shard is read where it is led, as the leaf's tasks.
        #[cfg(not(madsim))]
        if let Some(engine) = &engine
            && self.read_at.is_none()
            && engine.distributed().is_some()
            && reads.iter().any(|r| matches!(r, ShardRead::Remote { .. }))
        {
            return Ok(super::distributed::shards_scan(engine, &self.table, &reads, projection, filters, limit)?);
        }
        // One snapshot for every shard of the table: a statement spanning shards is seen whole or not at all, in
        // both tiers. Each cold view read here must hold exactly the statements committed at or before it: one that
        // trails (a commit applied since the views were followed) is followed again, one ahead of it (followed
        // since the snapshot was taken) gets a newer snapshot.
        let mut attempts = 0;
        let (read_at, taken) = loop {
            let read_at = self.read_at.clone().or_else(|| {
                self.engine
                    .upgrade()
                    .map(|e| ReadAt { meta: e.meta().clone(), snapshot: Some(e.meta().read_local(|s| s.version())) })
            });
            let taken = self.table.snapshot();
            let mismatch = read_at.as_ref().and_then(|r| Some((r, r.snapshot?))).and_then(|(r, snapshot)| {
                taken.iter().zip(&reads).find_map(|((shard, _, cold), read)| {
                    let ColdState::Ready(view) = cold else { return None };
                    let local = matches!(read, ShardRead::Local) && self.only.is_none_or(|o| o == shard.shard_id());
                    local.then(|| cold_mismatch(&r.meta, shard.shard_id(), view, snapshot)).flatten()
                })
            });
            let Some((shard, detail)) = mismatch else { break (read_at, taken) };
            attempts += 1;
            match &engine {
                Some(engine) if attempts < SNAPSHOT_ATTEMPTS && self.read_at.is_none() => {
                    engine.follow_shards(self.table.shards()).await;
                }
                _ => return Err(Error::ShardUnavailable { shard: shard.0, detail }.into()),
            }
        };
        let mut hot: Vec<Arc<Chunk>> = Vec::new();
        let mut colds = Vec::new();
        for ((shard, version, cold), read) in taken.into_iter().zip(&reads) {
            if self.only.is_some_and(|only| only != shard.shard_id()) || !matches!(read, ShardRead::Local) {
                continue;
            }
            let cold = match cold {
                ColdState::Ready(view) => view,
                ColdState::Unavailable(detail) => return Err(Error::ColdUnavailable { detail }.into()),
            };
            // A file holding rows committed after the reader's snapshot also holds rows it must see: neither can be
            // told apart in the file, so the reader is told to retry (at a newer snapshot).
            let snapshot = read_at.as_ref().and_then(|r| r.snapshot);
            if let Some(s) = snapshot
                && let Some(file) = cold.files.iter().find(|f| f.visible_from > s)
            {
                return Err(Error::ShardUnavailable {
                    shard: shard.shard_id().0,
                    detail: format!(
                        "its cold file {} holds rows committed at metadata version {}, after this statement's \
                         snapshot {s}; retry the statement",
                        file.path, file.visible_from
                    ),
                }
                .into());
            }
            // Chunks a statement spanning shards removed, settled at a version after the snapshot, are gone here, and
            // the rows that replaced them are not for this reader either.
            if let Some(s) = snapshot
                && shard.removals_settled() > s
            {
                return Err(Error::ShardUnavailable {
                    shard: shard.shard_id().0,
                    detail: format!(
                        "rows of it were changed by a statement committed at metadata version {}, after this \
                         statement's snapshot {s}; retry the statement",
                        shard.removals_settled()
                    ),
                }
                .into());
            }
            let unread = version.iter().filter(|c| c.seq > cold.hot_through).cloned();
            match &read_at {
                Some(read_at) => hot.extend(read_at.visible(unread)),
                None => hot.extend(unread.filter(|c| c.meta.visible(None, |_| None))),
            }
            colds.push((shard, cold));
        }
        let schema = self.table.schema();
        let chunks = prune_chunks(state, &schema, &hot, filters)?;
        let projected_schema = match projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => Arc::clone(&schema),
        };
        // With filters, a limit cannot stop the scan early: DataFusion filters after us.
        let limit = if filters.is_empty() { limit } else { None };
        let partitions = state.config().target_partitions();
        let hot_scan: Arc<dyn ExecutionPlan> = Arc::new(ChunkScanExec::new(
            Arc::clone(&self.table),
            projection.cloned(),
            Arc::clone(&projected_schema),
            chunks,
            hot.len(),
            partitions,
            limit,
        ));
        let mut scans = vec![hot_scan];
        // Filters travel to remote shards as SQL; one the unparser cannot write is applied here only.
        let pushed = if reads.iter().any(|r| matches!(r, ShardRead::Remote { .. })) {
            conjunction(filters.iter().cloned()).and_then(|e| super::remote::expr_sql(&e).ok())
        } else {
            None
        };
        for (replica, read) in self.table.shards().iter().zip(&reads) {
            let (Some(engine), ShardRead::Remote { epoch, addr, .. }) = (&engine, read) else { continue };
            scans.push(Arc::new(
                RemoteShardScanExec::new(
                    self.table.def().id,
                    replica.shard_id(),
                    *epoch,
                    vec![addr.clone()],
                    projection.cloned(),
                    Arc::clone(&projected_schema),
                    limit,
                    engine.remote_timeout(),
                    usize::MAX,
                )
                .with_filter(pushed.clone())
                .with_snapshot(read_at.as_ref().and_then(|r| r.snapshot))
                .with_locator(engine.locator()),
            ));
        }
        for (shard, cold) in &colds {
            if let Some(cold_scan) = super::cold::cold_scan(state, shard, cold, projection, filters, limit).await? {
                scans.push(cold_scan);
            }
        }
        if scans.len() == 1 {
            return Ok(scans.remove(0));
        }
        if partitions <= 1 {
            return Ok(Arc::new(ConcatExec::try_new(scans)?));
        }
        UnionExec::try_new(scans)
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append || self.only.is_some() {
            return Err(
                Error::Unsupported { what: format!("{insert_op} into table \"{}\"", self.table.def().name) }.into()
            );
        }
        let sink = HotSink { table: Arc::clone(&self.table), schema: self.table.schema(), engine: self.engine.clone() };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// Per-chunk statistics in the shape DataFusion's pruning wants: one array element per chunk.
struct ChunkStatistics<'a> {
    schema: &'a SchemaRef,
    chunks: &'a [Arc<Chunk>],
}

impl ChunkStatistics<'_> {
    fn values(&self, column: &Column, pick: impl Fn(&Chunk, usize) -> ScalarValue) -> Option<ArrayRef> {
        let i = self.schema.index_of(&column.name).ok()?;
        ScalarValue::iter_to_array(self.chunks.iter().map(|c| pick(c, i))).ok()
    }
}

impl PruningStatistics for ChunkStatistics<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.values(column, |c, i| c.meta.min[i].clone())
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.values(column, |c, i| c.meta.max[i].clone())
    }

    fn num_containers(&self) -> usize {
        self.chunks.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        let i = self.schema.index_of(&column.name).ok()?;
        Some(Arc::new(UInt64Array::from_iter_values(self.chunks.iter().map(|c| c.meta.null_counts[i]))))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from_iter_values(self.chunks.iter().map(|c| c.meta.rows))))
    }

    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

/// Writes an INSERT's rows into a hot table, committing once when the input ends.
#[derive(Debug)]
struct HotSink {
    table: Arc<HotTable>,
    schema: SchemaRef,
    /// Routes the rows to the shards' primaries (see [`HotTableProvider`]'s field).
    engine: Weak<Engine>,
}

impl DisplayAs for HotSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HotSink: table={}", self.table.def().name)
    }
}

#[async_trait]
impl DataSink for HotSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(&self, data: SendableRecordBatchStream, _context: &Arc<TaskContext>) -> DfResult<u64> {
        match self.engine.upgrade() {
            Some(engine) => Ok(engine.insert_routed(&self.table, data).await?),
            None => Ok(self.table.append_stream(data).await?),
        }
    }
}
