//! Scans of a table's cold files: which files the filters may match (judged by the manifest's statistics), which of
//! their row groups (judged by the files' own statistics), and [`ColdScanExec`], which reads those row groups'
//! projected columns. Decoded columns are kept in the engine's column cache beside the hot chunks' columns, so a warm
//! scan of cold data costs what a scan of hot data costs. Its metrics (EXPLAIN ANALYZE) show what the scan cost in
//! requests to the bucket, in cache hits, and in row groups decoded.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, UInt64Array, new_null_array};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::{Column, ColumnStatistics, DataFusionError, Result as DfResult, ScalarValue, Statistics};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::datasource::physical_plan::parquet::{
    BloomFilterStatistics, CachedParquetFileReaderFactory, PagePruningAccessPlanFilter, ParquetAccessPlan,
    ParquetFileMetrics, RowGroupAccess,
};
use datafusion::execution::TaskContext;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_optimizer::pruning::{PruningPredicate, PruningStatistics};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, SendableRecordBatchStream,
    StatisticsArgs,
};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, RowSelection};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::file::metadata::RowGroupMetaData;

use super::provider::pruning_predicate;
use crate::cold::cache::{CachedStore, ReadTally, ScanStore};
use crate::cold::{ColdFile, ColdView, ColumnBounds};
use crate::table::{ShardReplica, Source};

/// Files whose footers a scan loads at once while planning.
const FOOTER_LOADS: usize = 16;

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

/// A cold file a scan reads: how to open it, and where the table's columns are in it.
#[derive(Debug)]
struct ScanFile {
    /// Its path in the bucket: with a row group's index, where the row group's decoded columns are cached.
    path: Arc<str>,
    object: PartitionedFile,
    /// Its footer, decoded, with the Arrow schema the file was written with.
    metadata: ArrowReaderMetadata,
    /// Per column of the table: the file's top-level column of that name, if it has one.
    roots: Vec<Option<usize>>,
}

impl ScanFile {
    /// Reads a file's footer (from DataFusion's metadata cache once read) and matches its columns to the table's.
    async fn open(
        readers: &dyn ParquetFileReaderFactory,
        schema: &SchemaRef,
        object: PartitionedFile,
    ) -> DfResult<Self> {
        let path: Arc<str> = Arc::from(object.object_meta.location.as_ref());
        let mut reader = readers.create_reader(0, object.clone(), None, &ExecutionPlanMetricsSet::new())?;
        let metadata = ArrowReaderMetadata::try_new(reader.get_metadata(None).await?, ArrowReaderOptions::new())?;
        let roots = schema.fields().iter().map(|f| metadata.schema().index_of(f.name()).ok()).collect();
        Ok(Self { path, object, metadata, roots })
    }

    fn row_group(&self, index: usize) -> &RowGroupMetaData {
        self.metadata.metadata().row_group(index)
    }
}

/// One row group of a cold file: what a scan reads, decodes and caches as one piece, as the hot scan does a chunk.
#[derive(Debug, Clone)]
struct RowGroup {
    file: Arc<ScanFile>,
    index: usize,
    rows: usize,
    /// The rows the filters may match, by the page index, when that is half of them or fewer: unless the row
    /// group's columns are cached already, only their pages are decoded, and not cached.
    selection: Option<(RowSelection, usize)>,
}

impl RowGroup {
    /// The rows the scan yields of it.
    fn rows_read(&self) -> usize {
        self.selection.as_ref().map_or(self.rows, |(_, rows)| *rows)
    }
}

/// The scan of a table's cold files, or `None` when the filters match none of them. Files are pruned by the
/// manifest's statistics, then row groups by the files' own (the filters stay inexact: DataFusion applies them
/// above). The row groups left are dealt into partitions, about equal in rows.
pub(super) async fn cold_scan(
    state: &dyn Session,
    table: &Arc<ShardReplica>,
    view: &ColdView,
    projection: Option<&Vec<usize>>,
    filters: &[Expr],
    limit: Option<usize>,
) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    if view.files.is_empty() {
        return Ok(None);
    }
    let schema = table.schema();
    let predicate = pruning_predicate(state, &schema, filters)?;
    let objects: Vec<PartitionedFile> = files_matching(predicate.as_ref(), &schema, view)?
        .into_iter()
        .map(|f| PartitionedFile::new(f.path.clone(), f.bytes))
        .collect();
    if objects.is_empty() {
        return Ok(None);
    }
    let url = ObjectStoreUrl::parse(crate::cold::OBJECT_STORE_URL)?;
    let runtime = state.runtime_env();
    let statement = state.config().get_extension::<StatementReads>().map(|s| Arc::clone(&s.0));
    let tally = Arc::new(ReadTally::within(statement));
    let store: Arc<dyn ObjectStore> =
        match state.config().get_extension::<ColdReads>().and_then(|r| r.store.get().cloned()) {
            Some(cached) => Arc::new(ScanStore::new(cached, Arc::clone(&tally))),
            None => runtime.object_store(&url)?,
        };
    let readers: Arc<dyn ParquetFileReaderFactory> =
        Arc::new(CachedParquetFileReaderFactory::new(store, runtime.cache_manager.get_file_metadata_cache()));
    let files_read = objects.len();
    let files: Vec<ScanFile> = futures::stream::iter(objects)
        .map(|object| ScanFile::open(readers.as_ref(), &schema, object))
        .buffered(FOOTER_LOADS)
        .try_collect()
        .await?;
    let mut row_groups = Vec::new();
    let mut row_groups_total = 0;
    let mut bloom_pruned = 0;
    let mut page_skipped = 0;
    let pages = predicate.as_ref().map(|p| PagePruningAccessPlanFilter::new(p.orig_expr(), Arc::clone(&schema)));
    for file in files {
        let groups = file.metadata.metadata().row_groups();
        row_groups_total += groups.len();
        let mut keep = match &predicate {
            Some(p) => p.prune(&RowGroupStatistics { file: &file, groups })?,
            None => vec![true; groups.len()],
        };
        if let Some(p) = &predicate {
            bloom_pruned += prune_by_bloom_filters(p, &file, readers.as_ref(), &mut keep).await?;
        }
        let rows: Vec<usize> = groups.iter().map(|g| usize::try_from(g.num_rows()).unwrap_or(0)).collect();
        let access = match &pages {
            Some(pages) if keep.contains(&true) => select_pages(pages, &file, &schema, &keep),
            _ => keep.iter().map(|k| if *k { RowGroupAccess::Scan } else { RowGroupAccess::Skip }).collect(),
        };
        let file = Arc::new(file);
        for (index, (rows, access)) in rows.into_iter().zip(access).enumerate() {
            let selection = match access {
                RowGroupAccess::Skip => continue,
                RowGroupAccess::Scan => None,
                // Read in part only when that skips half the rows or more: a row group read whole is cached.
                RowGroupAccess::Selection(selection) if selection.row_count().saturating_mul(2) <= rows => {
                    let selected = selection.row_count();
                    page_skipped += rows - selected;
                    if selected == 0 {
                        continue;
                    }
                    Some((selection, selected))
                }
                RowGroupAccess::Selection(_) => None,
            };
            row_groups.push(RowGroup { file: Arc::clone(&file), index, rows, selection });
        }
    }
    if row_groups.is_empty() {
        return Ok(None);
    }
    let projected_schema = match projection {
        Some(p) => Arc::new(schema.project(p)?),
        None => Arc::clone(&schema),
    };
    let partitions =
        super::scan::deal(row_groups, state.config().target_partitions(), limit.is_some(), |g| g.rows_read() as u64);
    let properties = Arc::new(PlanProperties::new(
        EquivalenceProperties::new(Arc::clone(&projected_schema)),
        Partitioning::UnknownPartitioning(partitions.len()),
        EmissionType::Incremental,
        Boundedness::Bounded,
    ));
    Ok(Some(Arc::new(ColdScanExec {
        table: Arc::clone(table),
        columns: projection.cloned().unwrap_or_else(|| (0..schema.fields().len()).collect()),
        projected: projection.is_some(),
        projected_schema,
        partitions,
        files: (files_read, view.files.len()),
        row_groups_total,
        bloom_pruned,
        page_skipped,
        limit,
        readers,
        tally,
        decoded: Count::new(),
        reused: Count::new(),
        properties,
    })))
}

/// The files of `view` that `filters` may match, judged by the manifest's statistics.
pub(crate) fn matching_files<'a>(
    state: &dyn Session,
    schema: &SchemaRef,
    view: &'a ColdView,
    filters: &[Expr],
) -> DfResult<Vec<&'a ColdFile>> {
    files_matching(pruning_predicate(state, schema, filters)?.as_ref(), schema, view)
}

fn files_matching<'a>(
    predicate: Option<&PruningPredicate>,
    schema: &SchemaRef,
    view: &'a ColdView,
) -> DfResult<Vec<&'a ColdFile>> {
    let keep = match predicate {
        Some(p) if !view.files.is_empty() => Some(p.prune(&FileStatistics { schema, view })?),
        _ => None,
    };
    Ok(view.files.iter().enumerate().filter(|(i, _)| keep.as_ref().is_none_or(|k| k[*i])).map(|(_, f)| f).collect())
}

/// Scans chosen row groups of a table's cold files, one partition per group of them; each partition reads its row
/// groups in turn and yields one record batch per row group. Columns come from the engine's column cache where it
/// has them; the others are decoded from Parquet together (one read of the row group) and kept there. Its metrics
/// count the GET requests it sent to the bucket and their bytes, the read cache's blocks hit and missed, and the row
/// groups it decoded and found decoded.
#[derive(Debug)]
pub(super) struct ColdScanExec {
    table: Arc<ShardReplica>,
    /// The table's columns the scan yields, in order.
    columns: Vec<usize>,
    /// Whether the scan was given a projection (for EXPLAIN).
    projected: bool,
    projected_schema: SchemaRef,
    partitions: Vec<Vec<RowGroup>>,
    /// Files read, and files in the view.
    files: (usize, usize),
    /// Row groups in the files read.
    row_groups_total: usize,
    /// Row groups left out by their bloom filters (their statistics would have kept them).
    bloom_pruned: usize,
    /// Rows of the row groups kept that the page index left out.
    page_skipped: usize,
    limit: Option<usize>,
    readers: Arc<dyn ParquetFileReaderFactory>,
    tally: Arc<ReadTally>,
    decoded: Count,
    reused: Count,
    properties: Arc<PlanProperties>,
}

impl ColdScanExec {
    fn statistics_of(&self, groups: &mut dyn Iterator<Item = &RowGroup>) -> Statistics {
        let mut rows = 0usize;
        let mut exact = true;
        let mut bytes = 0usize;
        let mut nulls: Vec<Option<usize>> = vec![Some(0); self.columns.len()];
        for g in groups {
            let meta = g.file.row_group(g.index);
            rows += g.rows_read();
            // A row group read in part may yield whole when cached so.
            exact &= g.selection.is_none();
            bytes += usize::try_from(meta.compressed_size()).unwrap_or(0);
            for (n, column) in nulls.iter_mut().zip(&self.columns) {
                let known = g.file.roots[*column]
                    .and_then(|root| meta.column(root).statistics())
                    .and_then(|s| s.null_count_opt());
                *n = match (*n, known) {
                    (Some(sum), Some(k)) => Some(sum + k as usize),
                    _ => None,
                };
            }
        }
        let mut stats = Statistics::new_unknown(&self.projected_schema);
        stats.num_rows = match self.limit {
            Some(l) => Precision::Inexact(rows.min(l)),
            None if exact => Precision::Exact(rows),
            None => Precision::Inexact(rows),
        };
        stats.total_byte_size = Precision::Inexact(bytes);
        stats.column_statistics = nulls
            .into_iter()
            .map(|n| ColumnStatistics {
                null_count: n.map_or(Precision::Absent, Precision::Exact),
                ..ColumnStatistics::new_unknown()
            })
            .collect();
        stats
    }
}

impl DisplayAs for ColdScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row_groups: usize = self.partitions.iter().map(Vec::len).sum();
        let (files, files_total) = self.files;
        write!(
            f,
            "ColdScanExec: table={}, partitions={}, files={files}/{files_total} (pruned {}), row_groups={row_groups}/{} \
             (pruned {}",
            self.table.def().name,
            self.partitions.len(),
            files_total - files,
            self.row_groups_total,
            self.row_groups_total - row_groups,
        )?;
        if self.bloom_pruned > 0 {
            write!(f, ", {} by bloom filters", self.bloom_pruned)?;
        }
        f.write_str(")")?;
        if self.page_skipped > 0 {
            write!(f, ", rows skipped by page index={}", self.page_skipped)?;
        }
        if self.projected {
            let names: Vec<&str> = self.projected_schema.fields().iter().map(|f| f.name().as_str()).collect();
            write!(f, ", projection=[{}]", names.join(", "))?;
        }
        if let Some(l) = self.limit {
            write!(f, ", limit={l}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ColdScanExec {
    leaf_plan_methods!("ColdScanExec");

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let groups = self.partitions.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!(
                "ColdScanExec has {} partitions, asked for {partition}",
                self.partitions.len()
            ))
        })?;
        let reader = Arc::new(GroupReader {
            table: Arc::clone(&self.table),
            columns: self.columns.clone(),
            schema: Arc::clone(&self.projected_schema),
            readers: Arc::clone(&self.readers),
            decoded: self.decoded.clone(),
            reused: self.reused.clone(),
        });
        let stream = futures::stream::try_unfold(
            (groups.into_iter(), self.limit, reader),
            |(mut groups, left, reader)| async move {
                if left == Some(0) {
                    return Ok(None);
                }
                let Some(group) = groups.next() else { return Ok(None) };
                let batch = reader.read(&group).await?;
                let left = left.map(|l| l.saturating_sub(batch.num_rows()));
                Ok(Some((batch, (groups, left, reader))))
            },
        );
        Ok(Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.projected_schema), stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        let set = ExecutionPlanMetricsSet::new();
        let tally = &self.tally;
        for (name, value) in [
            ("bucket_gets", tally.gets.get()),
            ("bucket_get_bytes", tally.get_bytes.get()),
            ("cache_hits", tally.cache_hits.get()),
            ("cache_misses", tally.cache_misses.get()),
            ("row_groups_decoded", self.decoded.value() as u64),
            ("row_groups_reused", self.reused.value() as u64),
        ] {
            MetricBuilder::new(&set).global_counter(name).add(value as usize);
        }
        Some(set.clone_inner())
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> DfResult<Arc<Statistics>> {
        let stats = match args.partition() {
            Some(p) => self.statistics_of(&mut self.partitions.get(p).into_iter().flatten()),
            None => self.statistics_of(&mut self.partitions.iter().flatten()),
        };
        Ok(Arc::new(stats))
    }
}

/// Reads row groups for one partition of a [`ColdScanExec`].
struct GroupReader {
    table: Arc<ShardReplica>,
    columns: Vec<usize>,
    schema: SchemaRef,
    readers: Arc<dyn ParquetFileReaderFactory>,
    decoded: Count,
    reused: Count,
}

impl GroupReader {
    /// Returns the scan's columns of one row group: cached ones from the column cache, the rest decoded and cached.
    async fn read(&self, group: &RowGroup) -> DfResult<RecordBatch> {
        let options = RecordBatchOptions::new().with_row_count(Some(group.rows));
        if self.columns.is_empty() {
            return Ok(RecordBatch::try_new_with_options(Arc::clone(&self.schema), vec![], &options)?);
        }
        let (cache, metrics) = self.table.column_cache();
        let source = Source::RowGroup(Arc::clone(&group.file.path), group.index);
        let mut arrays: Vec<Option<ArrayRef>> = self.columns.iter().map(|c| cache.get(&source, *c, metrics)).collect();
        let missing: Vec<usize> = (0..arrays.len()).filter(|i| arrays[*i].is_none()).collect();
        if let Some((selection, rows)) = group.selection.as_ref().filter(|_| !missing.is_empty()) {
            self.decoded.add(1);
            return self.decode_selected(group, selection, *rows).await;
        }
        if missing.is_empty() {
            self.reused.add(1);
        } else {
            self.decoded.add(1);
            let roots: Vec<usize> = missing.iter().filter_map(|i| group.file.roots[self.columns[*i]]).collect();
            let decoded = if roots.is_empty() { None } else { Some(self.decode(group, roots, None).await?) };
            for i in missing {
                let column = self.columns[i];
                let array = self.column_of(decoded.as_ref(), column, group.rows)?;
                cache.insert(&source, column, Arc::clone(&array), metrics);
                arrays[i] = Some(array);
            }
        }
        let arrays: Vec<ArrayRef> = arrays.into_iter().map(|a| a.expect("every column read or cached")).collect();
        Ok(RecordBatch::try_new_with_options(Arc::clone(&self.schema), arrays, &options)?)
    }

    /// The scan's columns of the `rows` rows of `selection` in a row group, decoded and not cached.
    async fn decode_selected(&self, group: &RowGroup, selection: &RowSelection, rows: usize) -> DfResult<RecordBatch> {
        let roots: Vec<usize> = self.columns.iter().filter_map(|c| group.file.roots[*c]).collect();
        let decoded =
            if roots.is_empty() { None } else { Some(self.decode(group, roots, Some((selection, rows))).await?) };
        let arrays =
            self.columns.iter().map(|c| self.column_of(decoded.as_ref(), *c, rows)).collect::<DfResult<Vec<_>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(Arc::clone(&self.schema), arrays, &options)?)
    }

    /// The table's column `column` from decoded columns: cast to the table's type when the file has another, NULLs
    /// when the file lacks it.
    fn column_of(&self, decoded: Option<&RecordBatch>, column: usize, rows: usize) -> DfResult<ArrayRef> {
        let table_schema = self.table.schema();
        let field = table_schema.field(column);
        Ok(match decoded.and_then(|b| b.column_by_name(field.name())) {
            Some(a) if a.data_type() == field.data_type() => Arc::clone(a),
            Some(a) => cast(a, field.data_type())?,
            None => new_null_array(field.data_type(), rows),
        })
    }

    /// Decodes the given top-level columns of one row group, in one batch: all its rows, or those of a selection
    /// (with their number).
    async fn decode(
        &self,
        group: &RowGroup,
        roots: Vec<usize>,
        selection: Option<(&RowSelection, usize)>,
    ) -> DfResult<RecordBatch> {
        let file = &group.file;
        // The trait is Send already; parquet's stream wants the plain trait object.
        let reader: Box<dyn AsyncFileReader> =
            self.readers.create_reader(0, file.object.clone(), None, &ExecutionPlanMetricsSet::new())?;
        let mask = ProjectionMask::roots(file.metadata.parquet_schema(), roots);
        let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, file.metadata.clone())
            .with_row_groups(vec![group.index])
            .with_projection(mask)
            .with_batch_size(group.rows.max(1));
        let expected = match selection {
            Some((selection, rows)) => {
                builder = builder.with_row_selection(selection.clone());
                rows
            }
            None => group.rows,
        };
        let stream = builder.build()?;
        let schema = Arc::clone(stream.schema());
        let batches: Vec<RecordBatch> = stream.try_collect().await?;
        let batch = concat_batches(&schema, &batches)?;
        if batch.num_rows() != expected {
            return Err(DataFusionError::Internal(format!(
                "cold file {} row group {} decoded {} rows; {expected} were expected",
                file.path,
                group.index,
                batch.num_rows(),
            )));
        }
        Ok(batch)
    }
}

/// How to read each row group of `file` (`keep`: those its statistics and bloom filters kept), by its page index:
/// skipped, read whole, or only the rows of the pages the filters may match (DataFusion's page pruning, for filters
/// on one column each).
fn select_pages(
    pages: &PagePruningAccessPlanFilter,
    file: &ScanFile,
    schema: &SchemaRef,
    keep: &[bool],
) -> Vec<RowGroupAccess> {
    let mut plan = ParquetAccessPlan::new_all(keep.len());
    for (index, _) in keep.iter().enumerate().filter(|(_, k)| !**k) {
        plan.skip(index);
    }
    let metrics = ParquetFileMetrics::new(0, &file.path, &ExecutionPlanMetricsSet::new());
    let metadata = file.metadata.metadata();
    pages.prune_plan_with_page_index(plan, schema, file.metadata.parquet_schema(), metadata, &metrics).into_inner()
}

/// Drops the row groups of `file` still in `keep` whose bloom filters show that they hold none of the values an
/// equality or `IN` filter asks for (DataFusion's literal guarantees), and returns how many it dropped. Only the
/// filters' columns that have bloom filters in the file are read (written for the table's primary key), one per row
/// group still kept, through the read cache.
async fn prune_by_bloom_filters(
    predicate: &PruningPredicate,
    file: &ScanFile,
    readers: &dyn ParquetFileReaderFactory,
    keep: &mut [bool],
) -> DfResult<usize> {
    let parquet = file.metadata.parquet_schema();
    let groups = file.metadata.metadata().row_groups();
    let mut columns: Vec<(String, usize)> = Vec::new();
    for guarantee in predicate.literal_guarantees() {
        let name = &guarantee.column.name;
        let Some(leaf) = parquet.columns().iter().position(|c| c.path().parts() == std::slice::from_ref(name)) else {
            continue;
        };
        let has_filters = groups.iter().any(|g| g.column(leaf).bloom_filter_offset().is_some());
        if has_filters && !columns.iter().any(|(n, _)| n == name) {
            columns.push((name.clone(), leaf));
        }
    }
    if columns.is_empty() || !keep.contains(&true) {
        return Ok(0);
    }
    let reader: Box<dyn AsyncFileReader> =
        readers.create_reader(0, file.object.clone(), None, &ExecutionPlanMetricsSet::new())?;
    let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, file.metadata.clone());
    let mut dropped = 0;
    for (index, kept) in keep.iter_mut().enumerate() {
        if !*kept {
            continue;
        }
        let mut filters = BloomFilterStatistics::with_capacity(columns.len());
        for (name, leaf) in &columns {
            if let Some(filter) = builder.get_row_group_column_bloom_filter(index, *leaf).await? {
                let column = parquet.column(*leaf);
                filters.insert(name.clone(), filter, column.physical_type(), column.type_length());
            }
        }
        if predicate.prune(&filters)?.first() == Some(&false) {
            *kept = false;
            dropped += 1;
        }
    }
    Ok(dropped)
}

/// Per-file statistics from the manifest, in the shape DataFusion's pruning wants.
struct FileStatistics<'a> {
    schema: &'a SchemaRef,
    view: &'a ColdView,
}

impl FileStatistics<'_> {
    fn column(&self, column: &Column) -> Option<&ColumnBounds> {
        self.view.bounds.get(self.schema.index_of(&column.name).ok()?)
    }
}

impl PruningStatistics for FileStatistics<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        Some(Arc::clone(&self.column(column)?.min))
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        Some(Arc::clone(&self.column(column)?.max))
    }

    fn num_containers(&self) -> usize {
        self.view.files.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        Some(Arc::clone(&self.column(column)?.nulls))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from_iter_values(self.view.files.iter().map(|f| f.rows))))
    }

    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

/// Per-row-group statistics from one file's footer, in the shape DataFusion's pruning wants.
struct RowGroupStatistics<'a> {
    file: &'a ScanFile,
    groups: &'a [RowGroupMetaData],
}

impl RowGroupStatistics<'_> {
    fn converter(&self, column: &Column) -> Option<StatisticsConverter<'_>> {
        StatisticsConverter::try_new(&column.name, self.file.metadata.schema(), self.file.metadata.parquet_schema())
            .ok()
    }
}

impl PruningStatistics for RowGroupStatistics<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.converter(column)?.row_group_mins(self.groups).ok()
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.converter(column)?.row_group_maxes(self.groups).ok()
    }

    fn num_containers(&self) -> usize {
        self.groups.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        Some(Arc::new(self.converter(column)?.row_group_null_counts(self.groups).ok()?))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        let rows = self.groups.iter().map(|g| u64::try_from(g.num_rows()).unwrap_or(0));
        Some(Arc::new(UInt64Array::from_iter_values(rows)))
    }

    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}
