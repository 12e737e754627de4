//! [`ChunkScanExec`]: the physical scan of a hot table.
//!
//! The provider decides which chunks a query needs (pruning by per-chunk min/max) and deals them round-robin into
//! partitions, largest first, so DataFusion reads partitions in parallel with about equal work. Each partition reads
//! its chunks one after the other, decoding only the projected columns, and yields one record batch per chunk.
//!
//! Reads go to the hot store from the partition's stream; chunk reads are short (one key, mostly from the block cache
//! or the page cache) and DataFusion runs partitions on its CPU runtime, so we do not hop to a blocking pool for them.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::stats::Precision;
use datafusion::common::{ColumnStatistics, Result as DfResult, Statistics};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, SendableRecordBatchStream,
    StatisticsArgs,
};

use super::bounds::ColumnBounds;
use crate::table::{Chunk, HotTable};

/// Deals the pieces of a scan (chunks, row groups) into at most `target_partitions` partitions of about equal rows:
/// largest first into the lightest partition, each partition then in the order given. With `in_order` (a LIMIT, which
/// reads pieces in order and stops early) all stay in one partition. There is always at least one partition.
pub(super) fn deal<T>(
    pieces: Vec<T>,
    target_partitions: usize,
    in_order: bool,
    rows: impl Fn(&T) -> u64,
) -> Vec<Vec<T>> {
    let n = target_partitions.max(1).min(pieces.len().max(1));
    if in_order || n == 1 {
        return vec![pieces];
    }
    let mut numbered: Vec<(usize, T)> = pieces.into_iter().enumerate().collect();
    numbered.sort_by_key(|(i, p)| (std::cmp::Reverse(rows(p)), *i));
    let mut load = vec![0u64; n];
    let mut partitions: Vec<Vec<(usize, T)>> = (0..n).map(|_| Vec::new()).collect();
    for (i, piece) in numbered {
        let (lightest, _) = load.iter().enumerate().min_by_key(|(_, l)| **l).expect("n >= 1");
        load[lightest] += rows(&piece);
        partitions[lightest].push((i, piece));
    }
    partitions
        .into_iter()
        .map(|mut p| {
            p.sort_by_key(|(i, _)| *i);
            p.into_iter().map(|(_, piece)| piece).collect()
        })
        .collect()
}

/// Scans chosen chunks of one hot table, one partition per group of chunks.
#[derive(Debug)]
pub(crate) struct ChunkScanExec {
    table: Arc<HotTable>,
    projection: Option<Vec<usize>>,
    projected_schema: SchemaRef,
    partitions: Vec<Vec<Arc<Chunk>>>,
    /// Chunks in the table's version before pruning, for EXPLAIN.
    chunks_total: usize,
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
    /// The statistics of the whole scan, once asked (the planner asks many times).
    whole: std::sync::OnceLock<Arc<Statistics>>,
}

impl ChunkScanExec {
    /// Returns a scan of `chunks`, spread over at most `target_partitions` partitions.
    pub(crate) fn new(
        table: Arc<HotTable>,
        projection: Option<Vec<usize>>,
        projected_schema: SchemaRef,
        mut chunks: Vec<Arc<Chunk>>,
        chunks_total: usize,
        target_partitions: usize,
        limit: Option<usize>,
    ) -> Self {
        chunks.sort_by_key(|c| c.seq);
        let partitions = deal(chunks, target_partitions, limit.is_some(), |c| c.meta.rows);
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&projected_schema)),
            Partitioning::UnknownPartitioning(partitions.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        let whole = std::sync::OnceLock::new();
        Self { table, projection, projected_schema, partitions, chunks_total, limit, properties, whole }
    }

    fn statistics_of(&self, chunks: &mut dyn Iterator<Item = &Arc<Chunk>>) -> Statistics {
        let mut rows = 0u64;
        let mut bytes = 0u64;
        let columns: Vec<usize> = match &self.projection {
            Some(p) => p.clone(),
            None => (0..self.table.schema().fields().len()).collect(),
        };
        let mut nulls = vec![0u64; columns.len()];
        let counted: Vec<&Arc<Chunk>> = chunks.collect();
        for c in counted.iter().copied() {
            rows += c.meta.rows;
            bytes += c.meta.data_bytes;
            for (i, col) in columns.iter().enumerate() {
                nulls[i] += c.meta.null_counts.get(*col).copied().unwrap_or(0);
            }
        }
        let mut stats = Statistics::new_unknown(&self.projected_schema);
        stats.num_rows = match self.limit {
            Some(l) => Precision::Inexact((rows as usize).min(l)),
            None => Precision::Exact(rows as usize),
        };
        stats.total_byte_size = Precision::Inexact(bytes as usize);
        stats.column_statistics = nulls
            .into_iter()
            .map(|n| ColumnStatistics { null_count: Precision::Exact(n as usize), ..ColumnStatistics::new_unknown() })
            .collect();
        if let Some(bounds) = ColumnBounds::of_chunks(counted.iter().map(|c| &c.meta), &columns) {
            bounds.apply(&mut stats.column_statistics);
        }
        stats
    }
}

impl DisplayAs for ChunkScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chunks: usize = self.partitions.iter().map(Vec::len).sum();
        write!(
            f,
            "ChunkScanExec: table={}, partitions={}, chunks={}/{} (pruned {})",
            self.table.def().name,
            self.partitions.len(),
            chunks,
            self.chunks_total,
            self.chunks_total - chunks
        )?;
        if let Some(p) = &self.projection {
            let names: Vec<String> = self.projected_schema.fields().iter().map(|f| f.name().clone()).collect();
            write!(f, ", projection=[{}]", if p.is_empty() { String::new() } else { names.join(", ") })?;
        }
        if let Some(l) = self.limit {
            write!(f, ", limit={l}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ChunkScanExec {
    leaf_plan_methods!("ChunkScanExec");

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let chunks = self.partitions.get(partition).cloned().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal(format!(
                "ChunkScanExec has {} partitions, asked for {partition}",
                self.partitions.len()
            ))
        })?;
        let table = Arc::clone(&self.table);
        let projection = self.projection.clone();
        let schema = Arc::clone(&self.projected_schema);
        let mut remaining = self.limit;
        let reads = chunks.into_iter().map_while(move |chunk| {
            if remaining == Some(0) {
                return None;
            }
            let batch = table
                .read_chunk(&chunk, projection.as_deref(), &schema)
                .map_err(datafusion::error::DataFusionError::from);
            if let (Some(left), Ok(b)) = (remaining.as_mut(), &batch) {
                *left = left.saturating_sub(b.num_rows());
            }
            Some(batch)
        });
        let stream = futures::stream::iter(reads);
        Ok(Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.projected_schema), stream)))
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> DfResult<Arc<Statistics>> {
        Ok(match args.partition() {
            Some(p) => Arc::new(self.statistics_of(&mut self.partitions.get(p).into_iter().flatten())),
            None => Arc::clone(
                self.whole.get_or_init(|| Arc::new(self.statistics_of(&mut self.partitions.iter().flatten()))),
            ),
        })
    }
}
