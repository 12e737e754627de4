//! Compaction: a table's small cold files on this node are merged into larger ones.
//!
//! Every tiering writes one file, so a table tiered often (by age, or by a small `hot_bytes_max`) collects many small
//! files, and each costs a footer read, a file open and its own row groups to every scan. Compaction picks this
//! node's files of the table smaller than half of `cold.target_file_bytes`, oldest first, and groups them into runs
//! of up to that size; each run of two files or more is read and written again as one file (streamed: one batch at
//! a time). The new files replace the old ones in one manifest version, committed through Raft like a tiering, so a
//! scan sees either the old files or the new ones, never both. The old files are listed as retired and the garbage
//! collector deletes them `cold.gc_grace` later, after scans of the previous version are done. Like tiering, every
//! step can be retried: a crash before the commit leaves only unreferenced uploads for the garbage collector. The
//! background tierer compacts a table once it has `cold.compact_min_files` (8) small files on the node.
//!
//! A merged file's rows keep their write times ([`crate::cold::WrittenRange`] spans them all), so `ttl` drops it only
//! once its newest row expires: compaction can delay the expiry of older rows by up to the span of one run. Files of
//! unknown age (tiered before chunks carried their age) are left as they are.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use datafusion::common::ScalarValue;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::datasource::physical_plan::parquet::DefaultParquetFileReaderFactory;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::async_reader::AsyncFileReader;
use quiver_meta::ShardRecord;

use super::Engine;
use crate::cold::manifest::extreme;
use crate::cold::{self, ColdFile, ColdState, ColumnStats, WrittenRange};
use crate::error::{Error, Result};
use crate::table::ShardReplica;

/// How often a compaction retries its commit when another node moved the manifest pointer meanwhile.
const COMMIT_ATTEMPTS: usize = 8;

/// What one compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Files merged.
    pub files_in: usize,
    /// Files they became.
    pub files_out: usize,
    /// Rows in them.
    pub rows: u64,
    /// Bytes of the merged files.
    pub bytes_in: u64,
    /// Bytes of the new files.
    pub bytes_out: u64,
    /// The shard's manifest version after the commit (unchanged when nothing was merged).
    pub manifest_version: u64,
}

impl Engine {
    /// Merges table `name`'s small cold files on this node (see the module documentation) and returns what it did.
    /// Serialized with tiering, retention and DML on the table.
    ///
    /// # Errors
    ///
    /// [`Error::TableNotFound`] for an unknown table, [`Error::ColdUnavailable`] when the store fails (nothing
    /// changes: the files stay as they were), and the metadata group's errors.
    pub async fn compact(&self, name: &str) -> Result<CompactReport> {
        self.compact_with(name, 2).await
    }

    /// [`Engine::compact`], when at least `min_files` of the table's files on this node are small.
    pub(super) async fn compact_with(&self, name: &str, min_files: usize) -> Result<CompactReport> {
        self.see_acknowledged_ddl().await?;
        self.reload_unavailable_cold().await;
        let table = self.native_table(name)?;
        let mut report = CompactReport::default();
        for shard in table.shards() {
            let r = self.compact_shard(shard, min_files).await?;
            report.files_in += r.files_in;
            report.files_out += r.files_out;
            report.bytes_in += r.bytes_in;
            report.bytes_out += r.bytes_out;
            report.rows += r.rows;
            report.manifest_version = report.manifest_version.max(r.manifest_version);
        }
        Ok(report)
    }

    /// Compacts one shard's small files on this node, when at least `min_files` of them are small.
    pub(super) async fn compact_shard(&self, table: &Arc<ShardReplica>, min_files: usize) -> Result<CompactReport> {
        let name = table.def().name.as_str();
        let _serialized = table.dml_lock.lock().await;
        if let ColdState::Unavailable(detail) = table.cold() {
            return Err(Error::ColdUnavailable { detail });
        }
        let target = self.cold.target_file_bytes();
        let shard = self.shard_record(table)?;
        // The files are the shard's: its primary merges them, whoever wrote them (every copy follows the manifest).
        if target == 0
            || shard.manifest.is_none()
            || shard.primary != self.node_id
            || !shard.in_sync.contains(&self.node_id)
            || shard.pending.is_some()
        {
            return Ok(CompactReport::default());
        }
        let store = self.cold_store()?;
        for _ in 0..COMMIT_ATTEMPTS {
            let (pointer, current) = self.shard_manifest(table, &shard).await?;
            self.adopt(table, &current).await;
            let runs = runs_to_merge(&current.files, target, min_files);
            if runs.is_empty() {
                return Ok(CompactReport { manifest_version: current.version, ..CompactReport::default() });
            }
            // As in tiering: the new files must be committed well within the garbage collector's grace period.
            let began = tokio::time::Instant::now();
            let began_ms = crate::clock::unix_ms();
            let mut report = CompactReport::default();
            let mut merged = Vec::with_capacity(runs.len());
            for run in &runs {
                let file = self.merge(&store, table, &shard, run).await?;
                report.files_in += run.len();
                report.bytes_in += run.iter().map(|f| f.bytes).sum::<u64>();
                report.rows += file.rows;
                report.bytes_out += file.bytes;
                merged.push(file);
            }
            report.files_out = merged.len();
            let replaced: Vec<String> = runs.iter().flatten().map(|f| f.path.clone()).collect();
            let mut next =
                current.replacing(&replaced, merged, crate::clock::unix_ms(), self.cold.gc_grace().as_millis() as u64);
            let location = self.store_manifest(&store, &mut next).await?;
            if began.elapsed() > self.cold.gc_grace() / 2 {
                return Err(Error::ColdUnavailable {
                    detail: format!(
                        "compacting table \"{name}\" took longer than half of cold.gc_grace ({:?}); its uploads are \
                         left for the garbage collector and the files stay as they were",
                        self.cold.gc_grace()
                    ),
                });
            }
            if self.propose_manifest(&shard, pointer.as_ref(), &next, location, began_ms, 0).await? {
                self.adopt(table, &next).await;
                report.manifest_version = next.version;
                self.metrics.cold_files_compacted.add(report.files_in as u64);
                tracing::info!(
                    table = name,
                    files_in = report.files_in,
                    files_out = report.files_out,
                    rows = report.rows,
                    bytes = report.bytes_out,
                    version = next.version,
                    "compacted cold files"
                );
                return Ok(report);
            }
            // Another node committed meanwhile: plan again from its manifest (this attempt's uploads are left for
            // the garbage collector).
        }
        Err(Error::ColdUnavailable { detail: format!("the manifest of table \"{name}\" kept changing; compact again") })
    }

    /// Whether the background tierer should compact `table`: its cold view on this node has at least
    /// `cold.compact_min_files` small files.
    pub(super) fn compaction_due(&self, table: &ShardReplica) -> bool {
        let target = self.cold.target_file_bytes();
        match table.cold() {
            ColdState::Ready(view) => {
                target > 0 && !runs_to_merge(&view.files, target, self.cold.compact_min_files()).is_empty()
            }
            ColdState::Unavailable(_) => false,
        }
    }

    /// Writes the rows of `run`'s files, in order, as one new file, and returns its manifest entry.
    async fn merge(
        &self,
        store: &Arc<dyn ObjectStore>,
        table: &ShardReplica,
        shard: &ShardRecord,
        run: &[&ColdFile],
    ) -> Result<ColdFile> {
        let schema = table.schema();
        let display = self.cold.display();
        let max_seq = run.iter().map(|f| f.max_seq).max().unwrap_or(0);
        let path = self.new_file_path(table, shard, max_seq)?;
        let sources: Vec<(String, u64)> = run.iter().map(|f| (f.path.clone(), f.bytes)).collect();
        let readers = self.readers(store);
        let owned_display = display.to_string();
        let batches = futures::stream::iter(sources)
            .then(move |(path, bytes)| read_file(Arc::clone(&readers), owned_display.clone(), path, bytes))
            .try_flatten()
            .map(|batch| super::rewrite::as_table_rows(table, &batch?));
        let bytes = cold::write_parquet(store, display, &path, &schema, batches, &self.file_layout(table)).await?;
        let written_ms = run.iter().map(|f| f.written_ms).collect::<Option<Vec<_>>>().map(|w| WrittenRange {
            min: w.iter().map(|w| w.min).min().unwrap_or(0),
            max: w.iter().map(|w| w.max).max().unwrap_or(0),
        });
        Ok(ColdFile {
            path,
            node: self.node_id,
            store: table.mark_id(),
            rows: run.iter().map(|f| f.rows).sum(),
            bytes,
            max_seq,
            columns: merged_columns(run, &schema),
            written_ms,
            visible_from: run.iter().map(|f| f.visible_from).max().unwrap_or(0),
        })
    }
}

impl Engine {
    /// Opens cold files for reading through `store`.
    pub(super) fn readers(&self, store: &Arc<dyn ObjectStore>) -> Arc<dyn ParquetFileReaderFactory> {
        Arc::new(DefaultParquetFileReaderFactory::new(Arc::clone(store)))
    }
}

/// The record batches of the cold file at `path` (`bytes` long), as a stream.
pub(super) async fn read_file(
    readers: Arc<dyn ParquetFileReaderFactory>,
    display: String,
    path: String,
    bytes: u64,
) -> Result<impl futures::Stream<Item = Result<RecordBatch>>> {
    let failed = |e: parquet::errors::ParquetError| cold::unavailable(&display, &format!("read {path}"), e);
    // The trait is Send already; parquet's stream wants the plain trait object.
    let reader: Box<dyn AsyncFileReader> = readers
        .create_reader(0, PartitionedFile::new(path.clone(), bytes), None, &ExecutionPlanMetricsSet::new())
        .map_err(|e| cold::unavailable(&display, &format!("read {path}"), e))?;
    let stream = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(failed)?.build().map_err(failed)?;
    Ok(stream.map_err(move |e| cold::unavailable(&display, &format!("read {path}"), e)))
}

/// The runs of files to merge: the shard's files of known age smaller than half of `target`, in the order they
/// were tiered, cut into runs of at most `target` bytes; only runs of two files or more, and none unless at least
/// `min_files` files are small.
fn runs_to_merge(files: &[ColdFile], target: u64, min_files: usize) -> Vec<Vec<&ColdFile>> {
    let mut small: Vec<&ColdFile> = files.iter().filter(|f| f.written_ms.is_some() && f.bytes < target / 2).collect();
    if small.len() < min_files.max(2) {
        return Vec::new();
    }
    small.sort_by_key(|f| f.max_seq);
    let mut runs: Vec<Vec<&ColdFile>> = Vec::new();
    let mut run: Vec<&ColdFile> = Vec::new();
    let mut run_bytes = 0u64;
    for file in small {
        if !run.is_empty() && run_bytes + file.bytes > target {
            runs.push(std::mem::take(&mut run));
            run_bytes = 0;
        }
        run_bytes += file.bytes;
        run.push(file);
    }
    runs.push(run);
    runs.retain(|r| r.len() >= 2);
    runs
}

/// A merged file's column statistics from those of its files: NULLs add up, and a bound is known when every file
/// with a non-NULL value in the column knows it. Nothing is known when a file knows nothing.
fn merged_columns(run: &[&ColdFile], schema: &Schema) -> Vec<ColumnStats> {
    if run.iter().any(|f| f.columns.len() != schema.fields().len()) {
        return Vec::new();
    }
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let nulls = run.iter().map(|f| f.columns[i].nulls).sum();
            let bounds: Vec<(ScalarValue, ScalarValue)> = run
                .iter()
                .filter(|f| f.columns[i].nulls < f.rows)
                .map(|f| f.columns[i].values(field.data_type()))
                .collect();
            let min = extreme(bounds.iter().map(|b| &b.0), std::cmp::Ordering::Less);
            let max = extreme(bounds.iter().map(|b| &b.1), std::cmp::Ordering::Greater);
            ColumnStats::from_values(&min, &max, nulls)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: u64, store: u64, bytes: u64, aged: bool) -> ColdFile {
        ColdFile {
            path: format!("f{n}"),
            node: 1,
            store,
            rows: 10,
            bytes,
            max_seq: n,
            columns: Vec::new(),
            written_ms: aged.then_some(WrittenRange { min: 1, max: 2 }),
            visible_from: 0,
        }
    }

    fn paths(runs: &[Vec<&ColdFile>]) -> Vec<Vec<String>> {
        runs.iter().map(|r| r.iter().map(|f| f.path.clone()).collect()).collect()
    }

    #[test]
    fn runs_take_the_shards_small_files_of_known_age_in_tiering_order_up_to_the_target() {
        // Out of order in the manifest; f4 is large, f5 another copy's (a primary merges every file of its shard),
        // f6 of unknown age.
        let files = vec![
            file(3, 7, 30, true),
            file(1, 7, 40, true),
            file(2, 7, 40, true),
            file(4, 7, 60, true),
            file(5, 8, 10, true),
            file(6, 7, 10, false),
            file(7, 7, 45, true),
            file(8, 7, 5, true),
        ];
        assert_eq!(paths(&runs_to_merge(&files, 100, 2)), [vec!["f1", "f2"], vec!["f3", "f5", "f7", "f8"]]);
        assert!(runs_to_merge(&files, 100, 7).is_empty(), "six small files, seven wanted");
        assert_eq!(runs_to_merge(&files, 100, 6).len(), 2);
        // A run of one file is left alone.
        let three = [file(1, 7, 45, true), file(2, 7, 45, true), file(3, 7, 45, true)];
        assert_eq!(paths(&runs_to_merge(&three, 100, 2)), [vec!["f1", "f2"]]);
    }
}
