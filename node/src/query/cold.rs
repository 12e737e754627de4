//! Scans of a table's cold files: which files the filters may match (judged by the manifest's statistics), the
//! Parquet scan of those, and [`ColdScanExec`] above it, which shows in EXPLAIN ANALYZE what the scan cost in requests
//! to the bucket and in cache hits.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, BooleanArray, UInt64Array};
use arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Column, DFSchema, Result as DfResult, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::utils::conjunction;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::pruning::PruningStatistics;
use datafusion::physical_plan::execution_plan::ReplaceChildrenOptions;
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterDescription, FilterPushdownPhase, FilterPushdownPropagation,
};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use object_store::ObjectStore;

use super::provider::prune;
use crate::cold::cache::{CachedStore, ReadTally, ScanStore};
use crate::cold::{ColdView, FileBounds};

/// What a statement's scans of cold files read in all: a session extension of the statement's own state.
#[derive(Debug, Default)]
pub(crate) struct StatementReads(pub(crate) Arc<ReadTally>);

/// How scans reach the cold tier: the engine's cached store, set once the cluster's store is first used. A session
/// extension, so that table providers find it in the state they are given.
#[derive(Debug, Default)]
pub(crate) struct ColdReads {
    store: OnceLock<Arc<CachedStore>>,
}

impl ColdReads {
    /// Sets the store (the first call wins: there is one per engine).
    pub(crate) fn set(&self, store: Arc<CachedStore>) {
        let _ = self.store.set(store);
    }
}

/// The scan of a table's cold files that `filters` may match (judged by the manifest's statistics): Parquet with
/// the projection pushed down and the filters as a predicate that prunes row groups and pages (DataFusion still
/// applies the filters above), read through the engine's cache. Footers and page indexes are also kept decoded in
/// DataFusion's file metadata cache.
pub(super) fn cold_scan(
    state: &dyn Session,
    schema: &SchemaRef,
    view: &ColdView,
    projection: Option<&Vec<usize>>,
    filters: &[Expr],
    limit: Option<usize>,
) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    let keep = prune(state, schema, filters, &FileStatistics { schema, view })?;
    let files: Vec<PartitionedFile> = view
        .files
        .iter()
        .enumerate()
        .filter(|(i, _)| keep.as_ref().is_none_or(|k| k[*i]))
        .map(|(_, f)| PartitionedFile::new(f.path.clone(), f.bytes))
        .collect();
    if files.is_empty() {
        return Ok(None);
    }
    let partitions = state.config().target_partitions().max(1);
    let per_group = files.len().div_ceil(partitions);
    let groups: Vec<FileGroup> = files.chunks(per_group.max(1)).map(|g| FileGroup::new(g.to_vec())).collect();
    let url = ObjectStoreUrl::parse(crate::cold::OBJECT_STORE_URL)?;
    let runtime = state.runtime_env();
    let statement = state.config().get_extension::<StatementReads>().map(|s| Arc::clone(&s.0));
    let tally = Arc::new(ReadTally::within(statement));
    let store: Arc<dyn ObjectStore> =
        match state.config().get_extension::<ColdReads>().and_then(|r| r.store.get().cloned()) {
            Some(cached) => Arc::new(ScanStore::new(cached, Arc::clone(&tally))),
            None => runtime.object_store(&url)?,
        };
    let readers = CachedParquetFileReaderFactory::new(store, runtime.cache_manager.get_file_metadata_cache());
    let mut source = ParquetSource::new(Arc::clone(schema)).with_parquet_file_reader_factory(Arc::new(readers));
    if let Some(predicate) = conjunction(filters.iter().cloned()) {
        let df_schema = DFSchema::try_from(Arc::clone(schema))?;
        source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
    }
    let config = FileScanConfigBuilder::new(url, Arc::new(source))
        .with_file_groups(groups)
        .with_projection_indices(projection.cloned())?
        .with_limit(limit)
        .build();
    Ok(Some(Arc::new(ColdScanExec { input: DataSourceExec::from_data_source(config), tally })))
}

/// A scan of cold files, reporting in its metrics (EXPLAIN ANALYZE) the GET requests it sent to the bucket, their
/// bytes, and the cache blocks it found and missed. Rows pass through unchanged.
#[derive(Debug)]
pub(super) struct ColdScanExec {
    input: Arc<dyn ExecutionPlan>,
    tally: Arc<ReadTally>,
}

impl ColdScanExec {
    /// The same scan over a new input (the optimizer's rewrites), still tallying into this one's counts.
    fn over(&self, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children).map_err(|c| {
            datafusion::common::DataFusionError::Internal(format!("ColdScanExec has one input, got {}", c.len()))
        })?;
        Ok(Arc::new(ColdScanExec { input, tally: Arc::clone(&self.tally) }))
    }
}

impl DisplayAs for ColdScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ColdScanExec")
    }
}

impl ExecutionPlan for ColdScanExec {
    fn name(&self) -> &'static str {
        "ColdScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.over(children)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.over(children)
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        let set = ExecutionPlanMetricsSet::new();
        let tally = &self.tally;
        for (name, value) in [
            ("bucket_gets", tally.gets.get()),
            ("bucket_get_bytes", tally.get_bytes.get()),
            ("cache_hits", tally.cache_hits.get()),
            ("cache_misses", tally.cache_misses.get()),
        ] {
            MetricBuilder::new(&set).global_counter(name).add(value as usize);
        }
        Some(set.clone_inner())
    }

    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> DfResult<FilterDescription> {
        FilterDescription::from_children(parent_filters, &self.children())
    }

    fn handle_child_pushdown_result(
        &self,
        _phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> DfResult<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        Ok(FilterPushdownPropagation::if_all(child_pushdown_result))
    }
}

/// Per-file statistics from the manifest, in the shape DataFusion's pruning wants.
struct FileStatistics<'a> {
    schema: &'a SchemaRef,
    view: &'a ColdView,
}

impl FileStatistics<'_> {
    fn values(&self, column: &Column, pick: impl Fn(&FileBounds, usize) -> ScalarValue) -> Option<ArrayRef> {
        let i = self.schema.index_of(&column.name).ok()?;
        ScalarValue::iter_to_array(self.view.bounds.iter().map(|b| pick(b, i))).ok()
    }
}

impl PruningStatistics for FileStatistics<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.values(column, |b, i| b.min[i].clone())
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.values(column, |b, i| b.max[i].clone())
    }

    fn num_containers(&self) -> usize {
        self.view.files.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        let i = self.schema.index_of(&column.name).ok()?;
        Some(Arc::new(UInt64Array::from_iter(self.view.bounds.iter().map(|b| b.nulls[i]))))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from_iter_values(self.view.files.iter().map(|f| f.rows))))
    }

    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}
