//! Writing cold files: Parquet with zstd, row-group and page statistics and the page index, its rows sorted by the
//! table's sort key (its `sort_key` option, else its primary key), with a bloom filter on each primary-key column.
//!
//! Tiering, compaction and DELETE/UPDATE all write through [`write_parquet`], which reads its rows as a stream. A
//! table with a sort key has them sorted first, by DataFusion's sort (`SortExec`), within the engine's sort memory
//! (`cold.sort_memory`): past it, the sort spills sorted runs to the data directory's `spill/` and merges them, so a
//! file is sorted whatever its size. Sorted files give row groups and pages narrow key ranges, which the scan prunes
//! by; the bloom filters rule out row groups for `key = value` and `key IN (…)` when the ranges overlap. A table
//! with neither keeps write order, which is time order.

use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::compute::SortOptions;
use arrow::datatypes::{Schema, SchemaRef};
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use futures::StreamExt;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::unavailable;
use crate::error::{Error, Result};

/// How a table's cold files are laid out.
#[derive(Clone)]
pub struct FileLayout {
    /// Rows per row group.
    pub row_group_rows: usize,
    /// The columns (indices in the table's schema) the rows are sorted by, ascending with NULLs first: the table's
    /// `sort_key`, else its primary key. Empty: write order.
    pub sort: Vec<usize>,
    /// The columns with a bloom filter: the table's primary key.
    pub bloom: Vec<usize>,
    /// Where sorts run: the engine's sort memory and spill directory.
    pub sorts: Arc<TaskContext>,
}

impl fmt::Debug for FileLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileLayout")
            .field("row_group_rows", &self.row_group_rows)
            .field("sort", &self.sort)
            .field("bloom", &self.bloom)
            .finish()
    }
}

impl FileLayout {
    /// A layout in write order, sorting nothing.
    pub fn unsorted(row_group_rows: usize) -> Self {
        FileLayout { row_group_rows, sort: Vec::new(), bloom: Vec::new(), sorts: Arc::new(TaskContext::default()) }
    }

    /// Of `columns`, those that can be sorted and filtered by: top-level columns of a flat schema (where a
    /// column's index is its Parquet leaf's).
    fn usable(columns: &[usize], schema: &Schema) -> Vec<usize> {
        let flat = schema.fields().iter().all(|f| !f.data_type().is_nested());
        if !flat {
            return Vec::new();
        }
        columns.iter().copied().filter(|i| *i < schema.fields().len()).collect()
    }

    /// The most rows of a data page: an eighth of a row group, at most 20,000 (Parquet's default), so that the page
    /// index can narrow a key lookup in a sorted file to a part of a row group.
    fn page_rows(&self) -> usize {
        (self.row_group_rows / 8).clamp(1, 20_000)
    }

    fn properties(&self, schema: &Schema, sort: &[usize]) -> WriterProperties {
        let page_rows = self.page_rows();
        let mut builder = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(self.row_group_rows.max(1)))
            .set_data_page_row_count_limit(page_rows)
            .set_write_batch_size(page_rows.min(1024))
            .set_statistics_enabled(EnabledStatistics::Page);
        if !sort.is_empty() {
            let sorting = sort
                .iter()
                .map(|i| SortingColumn {
                    column_idx: i32::try_from(*i).unwrap_or(i32::MAX),
                    descending: false,
                    nulls_first: true,
                })
                .collect();
            builder = builder.set_sorting_columns(Some(sorting));
        }
        for i in Self::usable(&self.bloom, schema) {
            // Sized for a row group's rows (the writer's default when enabled without a count).
            let path = ColumnPath::new(vec![schema.field(i).name().clone()]);
            builder = builder.set_column_bloom_filter_enabled(path, true);
        }
        builder.build()
    }
}

/// Writes the batches of `batches` as one Parquet file at `location`, laid out as `layout` says (uploaded in parts
/// when large), reading them as it goes; returns its size in bytes.
///
/// # Errors
///
/// [`Error::ColdUnavailable`] when the store refuses the upload, the first error of `batches`, and a sort's
/// failure (its spill directory full, say). The upload is not completed then.
pub async fn write_parquet<S>(
    store: &Arc<dyn ObjectStore>,
    display: &str,
    location: &str,
    schema: &SchemaRef,
    batches: S,
    layout: &FileLayout,
) -> Result<u64>
where
    S: futures::Stream<Item = Result<RecordBatch>>,
{
    let key = FileLayout::usable(&layout.sort, schema);
    let failed = |e: parquet::errors::ParquetError| unavailable(display, &format!("write {location}"), e);
    let sink = BufWriter::new(Arc::clone(store), Path::from(location));
    let properties = layout.properties(schema, &key);
    let mut writer = AsyncArrowWriter::try_new(sink, Arc::clone(schema), Some(properties)).map_err(failed)?;
    let written = write_rows(&mut writer, schema, batches, &key, layout, location, &failed).await;
    if let Err(e) = written {
        // An upload in parts has parts in the bucket already: abort it, so they do not linger.
        let mut sink = writer.into_inner();
        if let Err(abort) = sink.abort().await {
            tracing::warn!(object = location, error = %abort, "aborting a failed upload failed");
        }
        return Err(e);
    }
    writer.close().await.map_err(failed)?;
    let meta =
        store.head(&Path::from(location)).await.map_err(|e| unavailable(display, &format!("check {location}"), e))?;
    Ok(meta.size)
}

/// Writes the rows of `batches` to `writer`: sorted by the columns `key` (through the layout's sort context), or as
/// they come when it is empty.
async fn write_rows<S>(
    writer: &mut AsyncArrowWriter<BufWriter>,
    schema: &SchemaRef,
    batches: S,
    key: &[usize],
    layout: &FileLayout,
    location: &str,
    failed: &impl Fn(parquet::errors::ParquetError) -> Error,
) -> Result<()>
where
    S: futures::Stream<Item = Result<RecordBatch>>,
{
    if key.is_empty() {
        write_all(writer, batches, failed).await?;
    } else {
        let ordering = LexOrdering::new(key.iter().map(|i| {
            let column = Column::new(schema.field(*i).name(), *i);
            PhysicalSortExpr::new(Arc::new(column), SortOptions { descending: false, nulls_first: true })
        }))
        .ok_or_else(|| Error::Internal("a sort key with no columns".into()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let input = Arc::new(Handoff { schema: Arc::clone(schema), rx: Mutex::new(Some(rx)) });
        let scan = StreamingTableExec::try_new(Arc::clone(schema), vec![input], None, [], false, None)?;
        let sorted = SortExec::new(ordering, Arc::new(scan)).execute(0, Arc::clone(&layout.sorts))?;
        // The rows are fed to the sort from this task (`batches` may borrow), and the sorted rows written as they
        // come out of it (only once every row is in).
        let mut fed: Result<()> = Ok(());
        let feed = async {
            let tx = tx;
            let mut batches = std::pin::pin!(batches);
            while let Some(batch) = batches.next().await {
                match batch {
                    Ok(batch) => {
                        if tx.send(Ok(batch)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(DataFusionError::Execution(format!("the rows to sort failed: {e}")))).await;
                        fed = Err(e);
                        break;
                    }
                }
            }
        };
        let sort_failed = |e: DataFusionError| Error::Execution {
            message: format!(
                "sorting the rows of cold file {location} by the table's sort key failed: {e} (cold.sort_memory \
                 and the space of the spill directory bound the sort)"
            ),
        };
        let drain = write_all(writer, sorted.map(|b| b.map_err(sort_failed)), failed);
        let ((), written) = futures::join!(feed, drain);
        fed?;
        written?;
    }
    Ok(())
}

async fn write_all<S>(
    writer: &mut AsyncArrowWriter<BufWriter>,
    batches: S,
    failed: &impl Fn(parquet::errors::ParquetError) -> Error,
) -> Result<()>
where
    S: futures::Stream<Item = Result<RecordBatch>>,
{
    let mut batches = std::pin::pin!(batches);
    while let Some(batch) = batches.next().await {
        writer.write(&batch?).await.map_err(failed)?;
    }
    Ok(())
}

/// The rows a sort reads, handed over through a channel from the task that produces them.
struct Handoff {
    schema: SchemaRef,
    rx: Mutex<Option<tokio::sync::mpsc::Receiver<datafusion::error::Result<RecordBatch>>>>,
}

impl fmt::Debug for Handoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Handoff")
    }
}

impl PartitionStream for Handoff {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let rx = self.rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let batches = match rx {
            Some(rx) => futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) }).boxed(),
            None => futures::stream::once(async {
                Err(DataFusionError::Internal("the rows of a cold file were read twice".into()))
            })
            .boxed(),
        };
        Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.schema), batches))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type};
    use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
    use datafusion::execution::memory_pool::FairSpillPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::prelude::SessionConfig;
    use object_store::memory::InMemory;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    /// A sort with 2 MiB of memory, spilling as `mode` says.
    fn small_sorts(mode: DiskManagerMode) -> Arc<TaskContext> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(2 << 20)))
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(mode))
            .build_arc()
            .expect("runtime");
        let config = SessionConfig::new().with_sort_spill_reservation_bytes(256 << 10);
        Arc::new(TaskContext::default().with_runtime(runtime).with_session_config(config))
    }

    /// 400,000 rows (6 MiB) of a key in scrambled order and a value, in batches of 8,192.
    fn scrambled(schema: &SchemaRef) -> impl futures::Stream<Item = Result<RecordBatch>> + use<> {
        let schema = Arc::clone(schema);
        let n: i64 = 400_000;
        futures::stream::iter((0..n).step_by(8192).map(move |start| {
            let values: Vec<i64> = (start..(start + 8192).min(n)).collect();
            // 104,729 is prime, so i -> i * 104,729 mod n is a permutation of 0..n.
            let keys: Int64Array = values.iter().map(|i| (i * 104_729) % n).collect();
            let values = Int64Array::from(values);
            Ok(RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(keys), Arc::new(values)])?)
        }))
    }

    #[tokio::test]
    async fn a_sort_past_its_memory_spills_to_disk_and_the_file_is_sorted_whole() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());

        // With nowhere to spill, the sort cannot hold the rows: a clear error, and no file.
        let layout = FileLayout {
            row_group_rows: 65_536,
            sort: vec![0],
            bloom: vec![0],
            sorts: small_sorts(DiskManagerMode::Disabled),
        };
        let err = write_parquet(&store, "memory", "a.parquet", &schema, scrambled(&schema), &layout)
            .await
            .expect_err("the sort needs more memory than it has");
        assert!(err.to_string().contains("Memory Exhausted") && err.to_string().contains("cold.sort_memory"), "{err}");
        assert!(store.head(&Path::from("a.parquet")).await.is_err(), "no file was completed");

        let spill = tempfile::tempdir().expect("tempdir");
        let mode = DiskManagerMode::Directories(vec![spill.path().to_path_buf()]);
        let layout = FileLayout { row_group_rows: 65_536, sort: vec![0], bloom: vec![0], sorts: small_sorts(mode) };
        write_parquet(&store, "memory", "b.parquet", &schema, scrambled(&schema), &layout).await.expect("write");
        let bytes = store.get(&Path::from("b.parquet")).await.expect("get").bytes().await.expect("bytes");
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).expect("parquet").build().expect("reader");
        let (mut keys, mut sum) = (Vec::new(), 0i64);
        for batch in reader {
            let batch = batch.expect("batch");
            keys.extend(batch.column(0).as_primitive::<Int64Type>().values().iter().copied());
            sum += batch.column(1).as_primitive::<Int64Type>().values().iter().sum::<i64>();
        }
        assert_eq!(keys, (0..400_000).collect::<Vec<i64>>(), "every key once, in order");
        assert_eq!(sum, (0..400_000i64).sum::<i64>(), "every row once");
    }

    #[tokio::test]
    async fn a_failing_source_fails_the_write_with_its_own_error() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let good =
            RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Int64Array::from(vec![3, 1, 2]))]).expect("batch");
        let batches = futures::stream::iter(vec![Ok(good), Err(Error::Internal("the chunk is gone".into()))]);
        let layout = FileLayout { sort: vec![0], bloom: vec![0], ..FileLayout::unsorted(100) };
        let err = write_parquet(&store, "memory", "c.parquet", &schema, batches, &layout).await.expect_err("fails");
        assert!(matches!(&err, Error::Internal(m) if m == "the chunk is gone"), "{err}");
        assert!(store.head(&Path::from("c.parquet")).await.is_err(), "no file was completed");
    }

    #[tokio::test]
    async fn a_write_that_fails_after_its_first_parts_aborts_its_upload() {
        use crate::cold::metered::{IoCounters, MeteredStore};
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let io = Arc::new(IoCounters::default());
        let store: Arc<dyn ObjectStore> = Arc::new(MeteredStore::new(Arc::new(InMemory::new()), Arc::clone(&io)));
        // 24 MiB of values that do not compress, then a failure: the writer is uploading in parts by then.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            state as i64
        };
        let mut batches: Vec<Result<RecordBatch>> = (0..48)
            .map(|_| {
                let values: Int64Array = (0..65_536).map(|_| next()).collect();
                Ok(RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(values)]).expect("batch"))
            })
            .collect();
        batches.push(Err(Error::Internal("the chunk is gone".into())));
        let layout = FileLayout::unsorted(65_536);
        let err = write_parquet(&store, "memory", "d.parquet", &schema, futures::stream::iter(batches), &layout)
            .await
            .expect_err("fails");
        assert!(matches!(&err, Error::Internal(m) if m == "the chunk is gone"), "{err}");
        let totals = io.totals();
        assert!(totals.puts >= 2, "parts were sent: {totals:?}");
        assert_eq!(totals.aborts, 1, "and the upload aborted");
        assert!(store.head(&Path::from("d.parquet")).await.is_err());
    }
}
