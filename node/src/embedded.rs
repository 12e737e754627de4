//! The embedded API: Quiver as a library in your process, SQL in, Arrow out.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), quiver_node::Error> {
//! use quiver_node::Quiver;
//!
//! let db = Quiver::open_in_memory().await?;
//! db.sql("CREATE TABLE t (id BIGINT NOT NULL, name TEXT)").await?;
//! db.sql("INSERT INTO t VALUES (1, 'one'), (2, 'two')").await?;
//! let batches = db.query("SELECT name FROM t WHERE id = 2").await?;
//! assert_eq!(batches[0].num_rows(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! A database opened with [`Quiver::open`] lives in a directory (RocksDB under `<dir>/hot`) that `quiver server` can
//! serve as it is.

use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

use crate::engine::{Engine, EngineOptions, IngestMode, QueryOutput, StorageLocation};
use crate::error::{Error, Result};

/// An embedded Quiver database.
#[derive(Debug, Clone)]
pub struct Quiver {
    engine: Arc<Engine>,
}

impl Quiver {
    /// Opens (or creates) the database in directory `path`.
    ///
    /// # Errors
    ///
    /// Fails when the directory cannot be created or opened (another process holds it, permissions) or holds data
    /// this build cannot read.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(StorageLocation::Path(path.as_ref().to_path_buf()), EngineOptions::default()).await
    }

    /// Opens a database that lives in memory only.
    ///
    /// # Errors
    ///
    /// Fails only on internal errors.
    pub async fn open_in_memory() -> Result<Self> {
        Self::open_with(StorageLocation::Memory, EngineOptions::default()).await
    }

    /// Opens a database with explicit options.
    ///
    /// # Errors
    ///
    /// As [`Quiver::open`].
    pub async fn open_with(location: StorageLocation, options: EngineOptions) -> Result<Self> {
        Ok(Self { engine: Engine::open(location, options).await? })
    }

    /// Closes the database: stops its metadata replica and releases the directory once the last handle to the
    /// engine is dropped. Committed data is durable already; dropping a `Quiver` without closing it loses nothing.
    ///
    /// # Errors
    ///
    /// Fails when an internal task had panicked.
    pub async fn close(self) -> Result<()> {
        self.engine.shutdown().await
    }

    /// Returns the engine, for serving this database over the network in the same process.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Moves the hot rows of `table` into the cold tier (Parquet files in `<dir>/cold`, or the configured store);
    /// queries read them from there, transparently.
    ///
    /// # Errors
    ///
    /// The table does not exist, or the store fails (the rows then stay hot; nothing is lost).
    pub async fn tier(&self, table: &str) -> Result<crate::engine::TierReport> {
        self.engine.tier(table).await
    }

    /// Merges the small cold files of `table` into larger ones (see `cold.target_file_bytes`); queries see the same
    /// rows before and after.
    ///
    /// # Errors
    ///
    /// The table does not exist, or the store fails (the files then stay as they were; nothing is lost).
    pub async fn compact(&self, table: &str) -> Result<crate::engine::CompactReport> {
        self.engine.compact(table).await
    }

    /// Deletes the cold tier's objects that no manifest reaches any more (replaced manifests, merged and expired
    /// files, uploads that never committed, dropped tables) once they are older than `cold.gc_grace`. Embedded
    /// Quiver has no background collector; call this now and then.
    ///
    /// # Errors
    ///
    /// The store cannot be listed or a manifest read (nothing is deleted then).
    pub async fn collect_garbage(&self) -> Result<crate::engine::GcReport> {
        self.engine.collect_garbage(None).await
    }

    /// Runs the statements in `sql` and returns the rows of the last one as a stream, batch by batch.
    ///
    /// Statements that return no rows (DDL, INSERT, …) give a stream with one `count` column holding the affected
    /// row count (an empty stream for DDL).
    ///
    /// # Errors
    ///
    /// Fails at the first statement that fails; the ones before it have taken effect.
    pub async fn sql(&self, sql: &str) -> Result<SendableRecordBatchStream> {
        let outputs = self.engine.execute(sql).await?;
        let last = outputs.into_iter().last().ok_or_else(|| Error::SqlSyntax { message: "no statement".into() })?;
        Ok(match last {
            QueryOutput::Rows { stream, .. } => stream,
            QueryOutput::Affected { rows, .. } => {
                let batch = count_batch(rows)?;
                let schema = batch.schema();
                Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::iter([Ok(batch)])))
            }
            QueryOutput::Done { .. } => {
                let schema: SchemaRef = Arc::new(arrow::datatypes::Schema::empty());
                Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::empty()))
            }
        })
    }

    /// Runs `sql` and collects the rows of its last statement.
    ///
    /// # Errors
    ///
    /// As [`Quiver::sql`].
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        use futures::TryStreamExt;
        let stream = self.sql(sql).await?;
        Ok(stream.try_collect().await?)
    }

    /// Appends batches to `table`, creating the table from the batches' schema if it does not exist; returns the rows
    /// appended. The append is atomic and durable when this returns.
    ///
    /// # Errors
    ///
    /// [`Error::SchemaMismatch`] when the batches do not fit the existing table; nothing is appended then.
    pub async fn ingest(&self, table: &str, batches: Vec<RecordBatch>) -> Result<u64> {
        let Some(first) = batches.first() else {
            return Ok(0);
        };
        let schema = first.schema();
        let stream = Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&schema),
            futures::stream::iter(batches.into_iter().map(Ok)),
        ));
        self.engine.ingest(table, IngestMode::CreateOrAppend, schema, stream).await
    }
}

/// Returns the one-row `count` batch that reports affected rows.
pub(crate) fn count_batch(rows: u64) -> Result<RecordBatch> {
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
        "count",
        arrow::datatypes::DataType::UInt64,
        false,
    )]));
    Ok(RecordBatch::try_new(schema, vec![Arc::new(arrow::array::UInt64Array::from(vec![rows]))])?)
}
