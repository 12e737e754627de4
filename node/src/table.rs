//! Hot tables: a table's rows as immutable columnar chunks in the [`HotStore`], kept per shard.
//!
//! Key types:
//!
//! - [`HotTable`]: one native table on this node, the set of its shard replicas here. A statement's rows are split
//!   by slot ([`ShardMap::split`]; a table without a shard key sends each statement whole to one shard, in turn) and
//!   the chunks of every shard commit in one synced batch, published under a lock that scans take too: a statement
//!   is atomic and durable across the table's shards on this node.
//! - `ShardReplica`: one shard. It holds the index entries of all its chunks in memory, in sequence order, as an
//!   immutable list behind an `Arc` (a *version*). Readers take the current version and scan it without locks;
//!   writers build a new version and swap it in after their write is durable.
//! - `Chunk`: one chunk, with its `ChunkMeta` (row count and per-column statistics for pruning).
//! - `Appender`: an in-progress insert. It writes chunk data as rows arrive (not yet fsync'd, not yet visible) and
//!   commits by writing every index entry in one fsync'd batch, so an insert is atomic and durable when it returns.
//!
//! Invariants:
//!
//! - Chunks are never modified. DELETE and UPDATE replace whole chunks: the new chunks' entries and the removal of the
//!   old entries commit in one atomic batch, serialized per shard by the DML lock.
//! - A retired chunk's data is deleted only after the last reader of a version holding it has finished (the chunk's
//!   `Drop` queues it for the store's garbage list, which the next commit deletes). A scan therefore never misses data
//!   that its version promised.

pub(crate) mod cache;
pub(crate) mod chunk;
#[cfg(not(madsim))]
mod commit;
pub(crate) mod keys;
pub(crate) mod log;
mod replica;
pub(crate) mod upgrade;
mod version;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, SchemaRef};
use quiver_meta::{ShardId, TableDef};

pub(crate) use chunk::ChunkMeta;

pub(crate) use self::cache::{ColumnCache, Source};
pub(crate) use self::replica::{Chunk, RecoveredShard, ShardAppender, ShardReplica, Version};
use crate::cold::ColdState;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::shard::ShardMap;
use crate::storage::{Durability, HotStore, WriteBatch};

/// Storage context shared by every table of an engine.
#[derive(Debug)]
pub(crate) struct TableStore {
    pub(crate) store: Arc<dyn HotStore>,
    /// Data keys of retired chunks that no reader needs any more, deleted by the next commit, and the retired chunks
    /// still read.
    garbage: Mutex<Garbage>,
    /// The incarnation the next chunk object gets.
    incarnations: std::sync::atomic::AtomicU64,
    /// Rows per chunk that inserts aim for.
    pub(crate) chunk_rows_target: usize,
    /// How durable a commit is before it is acknowledged.
    pub(crate) durability: Durability,
    pub(crate) metrics: Arc<Metrics>,
    /// Decoded columns of recently scanned chunks.
    cache: ColumnCache,
    /// The group committer of small statements (`commit.rs`); none in the simulation, whose inserts commit inline.
    #[cfg(not(madsim))]
    committer: Option<commit::Committer>,
}

impl TableStore {
    /// Returns a context over `store`.
    pub(crate) fn new(
        store: Arc<dyn HotStore>,
        chunk_rows_target: usize,
        durability: Durability,
        column_cache_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        #[cfg(not(madsim))]
        let committer = match commit::Committer::start(Arc::clone(&store), durability, Arc::clone(&metrics)) {
            Ok(committer) => Some(committer),
            Err(e) => {
                tracing::warn!(error = %e, "no group committer: small inserts commit one by one");
                None
            }
        };
        Self {
            #[cfg(not(madsim))]
            committer,
            cache: ColumnCache::new(column_cache_bytes),
            store,
            garbage: Mutex::new(Garbage::default()),
            incarnations: std::sync::atomic::AtomicU64::new(1),
            chunk_rows_target: chunk_rows_target.max(1),
            durability,
            metrics,
        }
    }

    /// Queues data keys for deletion by the next commit.
    pub(crate) fn discard(&self, keys: impl IntoIterator<Item = Vec<u8>>) {
        self.garbage.lock().expect("garbage lock poisoned").keys.extend(keys);
    }

    /// Returns a new chunk object's incarnation.
    pub(crate) fn next_incarnation(&self) -> u64 {
        self.incarnations.fetch_add(1, Ordering::Relaxed)
    }

    /// Records that the chunk object `incarnation` of data key `key` was retired: its data goes when the last reader
    /// drops it ([`TableStore::discard_retired`]), unless the key is written again meanwhile ([`TableStore::reclaim`]).
    pub(crate) fn retiring(&self, key: Vec<u8>, incarnation: u64) {
        self.garbage.lock().expect("garbage lock poisoned").retired.insert(key, incarnation);
    }

    /// Queues the data of a retired chunk object no reader needs any more for deletion, unless its key was written
    /// again since it retired (a replica sent the same chunk number anew): that data is another chunk's.
    pub(crate) fn discard_retired(&self, key: Vec<u8>, incarnation: u64) {
        let mut garbage = self.garbage.lock().expect("garbage lock poisoned");
        if garbage.retired.get(&key) == Some(&incarnation) {
            garbage.retired.remove(&key);
            garbage.keys.push(key);
        }
    }

    /// Claims data key `key` for a chunk about to be written under it: a retired chunk's pending deletion of the key,
    /// queued or to come, is cancelled.
    pub(crate) fn reclaim(&self, key: &[u8]) {
        let mut garbage = self.garbage.lock().expect("garbage lock poisoned");
        if garbage.retired.remove(key).is_some() || !garbage.keys.is_empty() {
            garbage.keys.retain(|k| k.as_slice() != key);
        }
    }

    /// Moves the queued garbage into `batch`.
    pub(crate) fn drain_garbage_into(&self, batch: &mut WriteBatch) {
        let keys = std::mem::take(&mut self.garbage.lock().expect("garbage lock poisoned").keys);
        for k in keys {
            batch.delete(k);
        }
    }

    /// Writes `batch` plus the queued garbage deletions with the configured durability.
    pub(crate) fn commit(&self, mut batch: WriteBatch) -> Result<()> {
        self.before_commit(&mut batch)?;
        let bytes = batch.size_bytes() as u64;
        self.store.write(batch, self.durability)?;
        self.metrics.hot_bytes_written.add(bytes);
        Ok(())
    }

    /// [`TableStore::commit`] in the group committer's next group (`commit.rs`), waiting without holding a thread;
    /// on the blocking pool where the engine has no committer.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: the batch may be written after the future is dropped. Callers run it in a task of its own.
    #[cfg(not(madsim))]
    pub(crate) async fn commit_grouped(self: &Arc<Self>, mut batch: WriteBatch) -> Result<()> {
        let Some(committer) = &self.committer else {
            let tables = Arc::clone(self);
            return tokio::task::spawn_blocking(move || tables.commit(batch))
                .await
                .map_err(|e| Error::Internal(format!("commit: {e}")))?;
        };
        self.before_commit(&mut batch)?;
        committer.commit(batch).await
    }

    /// What every commit does first: the fault point, and the queued garbage joins the batch.
    fn before_commit(&self, batch: &mut WriteBatch) -> Result<()> {
        // Fault point: the disk refuses the write (the insert must roll back whole).
        if quiver_meta::buggify!(0.02) {
            return Err(Error::storage("commit", "injected write failure"));
        }
        self.drain_garbage_into(batch);
        Ok(())
    }
}

/// Data keys waiting for deletion, and the retired chunk objects still read (by data key, their incarnation).
#[derive(Debug, Default)]
struct Garbage {
    keys: Vec<Vec<u8>>,
    retired: std::collections::HashMap<Vec<u8>, u64>,
}

/// Reads one chunk of table `name`, keeping the columns in `projection`.
fn read_chunk(
    tables: &TableStore,
    schema: &SchemaRef,
    name: &str,
    chunk: &Chunk,
    projection: Option<&[usize]>,
    projected_schema: &SchemaRef,
) -> Result<RecordBatch> {
    if projection.is_some_and(|p| p.is_empty()) {
        return Ok(RecordBatch::try_new_with_options(
            Arc::clone(projected_schema),
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(chunk.meta.rows as usize)),
        )?);
    }
    let columns: Vec<usize> = match projection {
        Some(p) => p.to_vec(),
        None => (0..schema.fields().len()).collect(),
    };
    let cache = &tables.cache;
    let metrics = &tables.metrics;
    let source = chunk.cache_source();
    let mut arrays: Vec<Option<ArrayRef>> = columns.iter().map(|c| cache.get(&source, *c, metrics)).collect();
    let missing: Vec<usize> = columns.iter().zip(&arrays).filter(|(_, a)| a.is_none()).map(|(c, _)| *c).collect();
    if !missing.is_empty() {
        let location = || format!("table \"{name}\" shard {} chunk {}", chunk.shard, chunk.seq);
        let bytes = tables
            .store
            .get(&chunk.data_key())?
            .ok_or_else(|| Error::Corrupt { location: location(), detail: "chunk data is missing".into() })?;
        metrics.hot_bytes_read.add(bytes.len() as u64);
        let missing_schema = Arc::new(schema.project(&missing)?);
        let decoded = chunk::decode_data(&bytes, Some(&missing), &missing_schema, location)?;
        let mut decoded_columns = decoded.columns().iter();
        for (slot, column) in arrays.iter_mut().zip(&columns) {
            if slot.is_none() {
                let array = decoded_columns.next().expect("one decoded column per missing column").clone();
                cache.insert(&source, *column, array.clone(), metrics);
                *slot = Some(array);
            }
        }
    }
    let arrays: Vec<ArrayRef> = arrays.into_iter().map(|a| a.expect("every column read or cached")).collect();
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(projected_schema),
        arrays,
        &RecordBatchOptions::new().with_row_count(Some(chunk.meta.rows as usize)),
    )?)
}

/// Checks a batch against table `def`'s schema and returns it carrying that schema (see [`HotTable::conform`]).
fn conform(def: &TableDef, schema: &SchemaRef, batch: &RecordBatch) -> Result<RecordBatch> {
    let fields = schema.fields();
    if batch.num_columns() != fields.len() {
        return Err(Error::SchemaMismatch {
            table: def.name.clone(),
            detail: format!("expected {} columns, got {}", fields.len(), batch.num_columns()),
        });
    }
    let mut columns = Vec::with_capacity(fields.len());
    for (field, column) in fields.iter().zip(batch.columns()) {
        let column = if column.data_type() == field.data_type() {
            Arc::clone(column)
        } else if same_family(column.data_type(), field.data_type()) {
            // Another layout of the same values (Arrow clients send strings as views, or with 64-bit offsets).
            arrow::compute::cast(column, field.data_type())?
        } else {
            return Err(Error::SchemaMismatch {
                table: def.name.clone(),
                detail: format!(
                    "column \"{}\" has type {}, got {}",
                    field.name(),
                    field.data_type(),
                    column.data_type()
                ),
            });
        };
        if !field.is_nullable() && column.null_count() > 0 {
            return Err(Error::NotNullViolation { table: def.name.clone(), column: field.name().clone() });
        }
        columns.push(column);
    }
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// Whether `a` and `b` hold the same values laid out differently: strings (`Utf8`, `LargeUtf8`, `Utf8View`), or
/// bytes (`Binary`, `LargeBinary`, `BinaryView`).
fn same_family(a: &DataType, b: &DataType) -> bool {
    use DataType::{Binary, BinaryView, LargeBinary, LargeUtf8, Utf8, Utf8View};
    matches!((a, b), (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View))
        || matches!((a, b), (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView))
}

/// One shard's replacement in a statement that changes several: the chunks it removes and the rows that replace
/// them (see [`HotTable::replace_many`]).
pub(crate) type ShardChange = (Arc<ShardReplica>, Vec<Arc<Chunk>>, Vec<RecordBatch>);

/// A native table on this node: its shard replicas here.
#[derive(Debug)]
pub struct HotTable {
    def: TableDef,
    schema: SchemaRef,
    tables: Arc<TableStore>,
    map: ShardMap,
    /// The replicas, in the order of the map's shards.
    shards: Vec<Arc<ShardReplica>>,
    /// Scans read every shard's version under the read side; a statement that commits to several shards publishes
    /// their new versions under the write side, so that no scan sees part of it.
    publish: RwLock<()>,
    /// Where the next statement goes, for a table without a shard key.
    next_whole: AtomicUsize,
}

impl HotTable {
    /// Returns the table made of `shards`, in the order of `map`'s shards.
    pub(crate) fn new(def: TableDef, tables: Arc<TableStore>, map: ShardMap, shards: Vec<Arc<ShardReplica>>) -> Self {
        debug_assert!(map.shards().eq(shards.iter().map(|s| s.shard_id())), "replicas in the map's order");
        Self {
            schema: Arc::new(def.arrow_schema()),
            def,
            tables,
            map,
            shards,
            publish: RwLock::new(()),
            next_whole: AtomicUsize::new(0),
        }
    }

    /// Returns the table's definition.
    pub fn def(&self) -> &TableDef {
        &self.def
    }

    /// Returns the table's Arrow schema.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// Returns the hot rows of the table on this node now.
    pub fn row_count(&self) -> u64 {
        self.shards.iter().map(|s| s.row_count()).sum()
    }

    /// Returns the number of the table's shards stored on this node.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// A consistency check: the hot rows on this node stored in a shard that does not own their slot. Zero, except
    /// for the older rows of a table of several shards created by a format 2 build (see `table::upgrade`). Reads
    /// every hot chunk: for tests, the simulation and diagnosis, not for serving.
    ///
    /// # Errors
    ///
    /// Store errors reading a chunk.
    pub fn misplaced_rows(&self) -> Result<u64> {
        if !self.map.has_key() {
            return Ok(0);
        }
        let key: Vec<usize> = self
            .def
            .sharding
            .shard_key
            .iter()
            .map(|k| self.schema.index_of(k))
            .collect::<std::result::Result<_, _>>()?;
        let mut misplaced = 0;
        for replica in &self.shards {
            for chunk in replica.version().iter() {
                let batch = replica.read_chunk(chunk, None, &self.schema)?;
                let slots = crate::shard::slot::slots(&batch, &key)?;
                misplaced += slots.into_iter().filter(|s| self.map.shard_of(*s) != replica.shard_id()).count() as u64;
            }
        }
        Ok(misplaced)
    }

    /// Returns the table's shards by slot range.
    #[cfg(test)]
    pub(crate) fn shard_map(&self) -> &ShardMap {
        &self.map
    }

    /// Returns the table's shard replicas on this node, in slot order.
    pub(crate) fn shards(&self) -> &[Arc<ShardReplica>] {
        &self.shards
    }

    /// Returns the replica of a table of one shard (for tests that look at its chunks).
    #[cfg(test)]
    pub(crate) fn only_shard(&self) -> &Arc<ShardReplica> {
        assert_eq!(self.shards.len(), 1, "table \"{}\" has {} shards", self.def.name, self.shards.len());
        &self.shards[0]
    }

    /// Returns each shard's version and cold state as of one moment: every statement is wholly in or wholly out.
    pub(crate) fn snapshot(&self) -> Vec<(Arc<ShardReplica>, Version, ColdState)> {
        let _published = self.publish.read().expect("publish lock poisoned");
        // The version first, the cold view second (tiering installs the view before it drops hot chunks).
        self.shards.iter().map(|s| (Arc::clone(s), s.version(), s.cold())).collect()
    }

    /// Reads one chunk of any of the table's shards, keeping the columns in `projection`.
    pub(crate) fn read_chunk(
        &self,
        chunk: &Chunk,
        projection: Option<&[usize]>,
        projected_schema: &SchemaRef,
    ) -> Result<RecordBatch> {
        read_chunk(&self.tables, &self.schema, &self.def.name, chunk, projection, projected_schema)
    }

    /// Checks a batch against the table's schema and returns it carrying the table's schema.
    ///
    /// # Errors
    ///
    /// [`Error::SchemaMismatch`] when the column count or a column type differs; [`Error::NotNullViolation`] when a
    /// NOT NULL column holds a NULL.
    pub(crate) fn conform(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        conform(&self.def, &self.schema, batch)
    }

    /// Checks rows sent to `shard` as its primary: conformed to the table, every one of them owned by the shard (a
    /// table without a shard key takes any row in any shard). Blocking work (a hash per row).
    ///
    /// # Errors
    ///
    /// As [`HotTable::conform`], and [`Error::Plan`] for a row of another shard.
    pub(crate) fn conform_part(&self, shard: ShardId, batch: &RecordBatch) -> Result<RecordBatch> {
        let batch = self.conform(batch)?;
        if self.map.has_key()
            && let Some((other, _)) = self.map.split(&batch)?.into_iter().find(|(s, _)| *s != shard)
        {
            return Err(Error::Plan {
                message: format!("rows of shard {other} of table \"{}\" were sent to shard {shard}", self.def.name),
            });
        }
        Ok(batch)
    }

    /// Replaces chunks in several shards at once: for each, removes its chunks and adds its rows (already
    /// conformed), all in one atomic, durable commit published as one. The caller holds every named shard's
    /// [`ShardReplica::dml_lock`].
    pub(crate) fn replace_many(&self, changes: Vec<ShardChange>) -> Result<()> {
        let mut batch = WriteBatch::new();
        let mut staged = Vec::with_capacity(changes.len());
        for (replica, removed, added) in changes {
            let new_chunks = replica.stage_replace(&removed, added, &mut batch)?;
            staged.push((replica, removed, new_chunks));
        }
        self.tables.commit(batch)?;
        let _published = self.publish.write().expect("publish lock poisoned");
        for (replica, removed, added) in staged {
            replica.install(&removed, added);
        }
        Ok(())
    }

    /// Marks every chunk retired after the table was dropped, so their data is deleted once no reader needs it.
    pub(crate) fn retire_all(&self) {
        for s in &self.shards {
            s.retire_all();
        }
    }

    /// The shard (by position) that takes every row of the next statement, for a table without a shard key.
    pub(crate) fn pick_whole(&self) -> usize {
        if self.map.has_key() { 0 } else { self.next_whole.fetch_add(1, Ordering::Relaxed) % self.shards.len() }
    }

    /// Checks rows against the table and splits them by shard, by position in the table; a table without a shard
    /// key puts every row in the shard at position `whole`. Blocking work (a hash per row).
    ///
    /// # Errors
    ///
    /// As [`HotTable::conform`].
    pub(crate) fn split_by_shard(&self, batch: &RecordBatch, whole: usize) -> Result<Vec<(usize, RecordBatch)>> {
        let batch = self.conform(batch)?;
        if !self.map.has_key() {
            return Ok(vec![(whole, batch)]);
        }
        self.map
            .split(&batch)?
            .into_iter()
            .map(|(shard, rows)| {
                let i = self.shards.iter().position(|s| s.shard_id() == shard).ok_or_else(|| {
                    Error::Internal(format!("table \"{}\" has no replica of shard {shard} here", self.def.name))
                })?;
                Ok((i, rows))
            })
            .collect()
    }

    /// Starts an insert.
    pub(crate) fn appender(self: &Arc<Self>) -> Appender {
        self.appender_into(self.pick_whole())
    }

    /// Starts an insert whose rows, for a table without a shard key, go to the shard at position `whole`.
    fn appender_into(self: &Arc<Self>, whole: usize) -> Appender {
        Appender {
            table: Arc::clone(self),
            parts: (0..self.shards.len()).map(|_| None).collect(),
            whole,
            only: None,
            rows: 0,
        }
    }

    /// Inserts every batch of `stream` as one atomic, durable insert; returns the rows inserted.
    ///
    /// Two stages run side by side: this task pulls the stream (for a network ingest that is where messages are
    /// decoded) while a blocking thread checks, compresses and writes the chunks, so an ingest uses two cores. A
    /// bounded channel between them keeps at most a few batches in flight. If the stream fails, or this future is
    /// dropped, the appender is dropped without committing and no row of the insert becomes visible.
    ///
    /// # Errors
    ///
    /// The stream's error, or the appender's (schema mismatch, NOT NULL violation, store failure).
    ///
    /// # Cancel safety
    ///
    /// Cancelling rolls the insert back.
    pub(crate) async fn append_stream<S, E>(self: &Arc<Self>, stream: S) -> Result<u64>
    where
        S: futures::Stream<Item = std::result::Result<RecordBatch, E>> + Unpin,
        Error: From<E>,
    {
        self.append_stream_with(self.appender(), stream).await
    }

    /// [`HotTable::append_stream`] of a statement whose rows, for a table without a shard key, go to the shard at
    /// position `whole`.
    pub(crate) async fn append_stream_into<S, E>(self: &Arc<Self>, whole: usize, stream: S) -> Result<u64>
    where
        S: futures::Stream<Item = std::result::Result<RecordBatch, E>> + Unpin,
        Error: From<E>,
    {
        self.append_stream_with(self.appender_into(whole), stream).await
    }

    /// [`HotTable::append_stream`] into one shard: a part of a statement sent to this node as the shard's primary.
    /// Every row must belong to the shard.
    ///
    /// # Errors
    ///
    /// As [`HotTable::append_stream`], and [`Error::Plan`] for a row of another shard (nothing is inserted).
    pub(crate) async fn append_shard_stream<S, E>(self: &Arc<Self>, shard: ShardId, stream: S) -> Result<u64>
    where
        S: futures::Stream<Item = std::result::Result<RecordBatch, E>> + Unpin,
        Error: From<E>,
    {
        let Some(i) = self.shards.iter().position(|s| s.shard_id() == shard) else {
            return Err(Error::ShardUnavailable {
                shard: shard.0,
                detail: format!("table \"{}\" has no replica of it on this node", self.def.name),
            });
        };
        let mut appender = self.appender();
        appender.only = Some(i);
        self.append_stream_with(appender, stream).await
    }

    async fn append_stream_with<S, E>(self: &Arc<Self>, appender: Appender, mut stream: S) -> Result<u64>
    where
        S: futures::Stream<Item = std::result::Result<RecordBatch, E>> + Unpin,
        Error: From<E>,
    {
        use futures::StreamExt as _;
        if let Some(detail) = self.shards.iter().find_map(|s| s.refusal()) {
            return Err(Error::ColdUnavailable { detail });
        }
        // The simulation has no blocking thread pool for the writer below: the appender runs inline, in this task.
        #[cfg(madsim)]
        {
            let mut appender = appender;
            while let Some(item) = stream.next().await {
                appender.push(&item?)?;
            }
            // Fault point: a slow fsync (the insert's first chunks are written, numbered and not yet visible).
            quiver_meta::buggify_delay!(0.2, 500);
            appender.commit()
        }
        #[cfg(not(madsim))]
        {
            enum Step {
                Rows(RecordBatch),
                Commit,
            }
            // Most statements (INSERT … VALUES, a small DoPut) bring their rows in one batch: then their rows,
            // chunk data and index entries go to the group committer in one write batch, with no writer thread and
            // channel between (each hop is a thread woken).
            let first = match stream.next().await {
                None => return Ok(0),
                Some(Err(e)) => return Err(Error::from(e)),
                Some(Ok(batch)) => batch,
            };
            let second = match stream.next().await {
                None => None,
                Some(Err(e)) => return Err(Error::from(e)),
                Some(Ok(batch)) => Some(batch),
            };
            let Some(second) = second else {
                // A task of its own: once its batch is handed to the group committer, the insert must finish (made
                // visible, or rolled back) even if this statement is dropped meanwhile. A few rows are encoded
                // here (microseconds); more, on the blocking pool.
                let mut appender = appender;
                let name = self.def.name.clone();
                let written = tokio::spawn(async move {
                    let appender = if first.num_rows() <= INLINE_ROWS {
                        appender.push(&first)?;
                        appender
                    } else {
                        tokio::task::spawn_blocking(move || -> Result<Appender> {
                            crate::cpu::lower_this_thread();
                            appender.push(&first)?;
                            Ok(appender)
                        })
                        .await
                        .map_err(|e| Error::Internal(format!("insert writer of table \"{name}\": {e}")))??
                    };
                    appender.commit_grouped().await
                })
                .await;
                return written
                    .map_err(|e| Error::Internal(format!("insert into table \"{}\": {e}", self.def.name)))?;
            };
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Step>(2);
            let mut appender = appender;
            let writer = tokio::task::spawn_blocking(move || -> Result<Option<u64>> {
                crate::cpu::lower_this_thread();
                while let Some(step) = rx.blocking_recv() {
                    match step {
                        Step::Rows(batch) => appender.push(&batch)?,
                        Step::Commit => return appender.commit().map(Some),
                    }
                }
                // The sender went away without asking to commit: roll back.
                Ok(None)
            });
            let mut failure = None;
            let ahead = futures::stream::iter([Ok(first), Ok(second)]);
            let mut stream = ahead.chain(stream.map(|item| item.map_err(Error::from)));
            while let Some(item) = stream.next().await {
                match item {
                    Ok(batch) => {
                        if tx.send(Step::Rows(batch)).await.is_err() {
                            break; // The writer failed; its error is returned below.
                        }
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if failure.is_none() {
                let _ = tx.send(Step::Commit).await;
            }
            drop(tx);
            let written = writer
                .await
                .map_err(|e| Error::Internal(format!("insert writer of table \"{}\": {e}", self.def.name)))?;
            match (failure, written) {
                (Some(e), _) => Err(e),
                (None, Ok(Some(rows))) => Ok(rows),
                (None, Ok(None)) => {
                    Err(Error::Internal(format!("insert into \"{}\" was not committed", self.def.name)))
                }
                (None, Err(e)) => Err(e),
            }
        }
    }
}

/// The rows of a one-batch insert encoded on the task that received them rather than on the blocking pool.
#[cfg(not(madsim))]
const INLINE_ROWS: usize = 64;

/// Splits and coalesces batches into batches of about `target` rows.
fn split_rows(batches: Vec<RecordBatch>, target: usize) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0;
    for b in batches {
        let mut offset = 0;
        while offset < b.num_rows() {
            let take = (target - pending_rows).min(b.num_rows() - offset);
            pending.push(b.slice(offset, take));
            pending_rows += take;
            offset += take;
            if pending_rows == target {
                out.push(concat(&pending)?);
                pending.clear();
                pending_rows = 0;
            }
        }
    }
    if pending_rows > 0 {
        out.push(concat(&pending)?);
    }
    Ok(out)
}

fn concat(batches: &[RecordBatch]) -> Result<RecordBatch> {
    match batches {
        [one] => Ok(one.clone()),
        _ => Ok(concat_batches(&batches[0].schema(), batches)?),
    }
}

/// An insert in progress; see the module docs. Dropping it without [`Appender::commit`] rolls the insert back.
#[derive(Debug)]
pub(crate) struct Appender {
    table: Arc<HotTable>,
    /// Each shard's part, by the shard's position in the table, once it has rows.
    parts: Vec<Option<ShardAppender>>,
    /// The shard that takes every row, for a table without a shard key.
    whole: usize,
    /// The one shard every row must belong to (a part sent to this node as the shard's primary), by position.
    only: Option<usize>,
    rows: u64,
}

impl Appender {
    /// Adds rows. They become visible, all at once, at [`Appender::commit`].
    ///
    /// # Errors
    ///
    /// Fails when the rows do not fit the table (the whole insert then fails) or the store fails.
    pub(crate) fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = self.table.conform(batch)?;
        self.rows += batch.num_rows() as u64;
        if !self.table.map.has_key() {
            return self.part(self.only.unwrap_or(self.whole)).push(batch);
        }
        for (shard, rows) in self.table.map.split(&batch)? {
            if let Some(only) = self.only
                && self.table.shards[only].shard_id() != shard
            {
                return Err(Error::Plan {
                    message: format!(
                        "rows of shard {shard} of table \"{}\" were sent to shard {}",
                        self.table.def.name,
                        self.table.shards[only].shard_id()
                    ),
                });
            }
            let i = self.table.shards.iter().position(|s| s.shard_id() == shard).ok_or_else(|| {
                Error::Internal(format!("table \"{}\" has no replica of shard {shard} here", self.table.def.name))
            })?;
            self.part(i).push(rows)?;
        }
        Ok(())
    }

    fn part(&mut self, i: usize) -> &mut ShardAppender {
        let shard = &self.table.shards[i];
        self.parts[i].get_or_insert_with(|| shard.appender())
    }

    /// Commits the insert durably and makes its rows visible; returns the rows inserted.
    ///
    /// # Errors
    ///
    /// Fails when the store fails; then no row of the insert is visible, now or after a restart.
    pub(crate) fn commit(mut self) -> Result<u64> {
        let batch = self.staged()?;
        if batch.is_empty() {
            return Ok(0);
        }
        // On failure the parts are dropped uncommitted: their data keys are queued for deletion.
        self.table.tables.commit(batch)?;
        Ok(self.publish())
    }

    /// [`Appender::commit`] through the group committer: the batch waits for its group without holding a thread.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe (the batch may be written after the future is dropped, and the rows must then become
    /// visible): run it in a task of its own.
    #[cfg(not(madsim))]
    async fn commit_grouped(mut self) -> Result<u64> {
        let batch = self.staged()?;
        if batch.is_empty() {
            return Ok(0);
        }
        // On failure the parts are dropped uncommitted: their data keys are queued for deletion.
        self.table.tables.commit_grouped(batch).await?;
        Ok(self.publish())
    }

    /// The write batch of every part's rest of rows and index entries.
    fn staged(&mut self) -> Result<WriteBatch> {
        let mut batch = WriteBatch::new();
        for part in self.parts.iter_mut().flatten() {
            part.stage(&mut batch)?;
        }
        Ok(batch)
    }

    /// Makes the committed parts visible; returns the rows inserted.
    fn publish(mut self) -> u64 {
        let parts: Vec<ShardAppender> = self.parts.iter_mut().filter_map(Option::take).collect();
        {
            let _published = self.table.publish.write().expect("publish lock poisoned");
            for part in parts {
                part.install();
            }
        }
        self.table.tables.metrics.rows_ingested.add(self.rows);
        self.rows
    }
}

#[cfg(test)]
mod tests;
