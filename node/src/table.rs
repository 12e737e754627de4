//! Hot tables: a table's rows as immutable columnar chunks in the [`HotStore`].
//!
//! Key types:
//!
//! - [`HotTable`]: one native table. It holds the index entries of all its chunks in memory, in sequence order, as an
//!   immutable list behind an `Arc` (a *version*). Readers take the current version and scan it without locks; writers
//!   build a new version and swap it in after their write is durable.
//! - `Chunk`: one chunk, with its `ChunkMeta` (row count and per-column statistics for pruning).
//! - `Appender`: an in-progress insert. It writes chunk data as rows arrive (not yet fsync'd, not yet visible) and
//!   commits by writing every index entry in one fsync'd batch, so an insert is atomic and durable when it returns.
//!
//! Invariants:
//!
//! - Chunks are never modified. DELETE and UPDATE replace whole chunks: the new chunks' entries and the removal of the
//!   old entries commit in one atomic batch, serialized per table by the DML lock.
//! - A retired chunk's data is deleted only after the last reader of a version holding it has finished (the chunk's
//!   `Drop` queues it for the store's garbage list, which the next commit deletes). A scan therefore never misses data
//!   that its version promised.

pub(crate) mod cache;
pub(crate) mod chunk;
pub(crate) mod keys;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use quiver_meta::{TableDef, TableId};

pub(crate) use chunk::ChunkMeta;

pub(crate) use self::cache::{ColumnCache, Source};
use crate::cold::ColdState;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::storage::{Durability, HotStore, WriteBatch};

/// Storage context shared by every table of an engine.
#[derive(Debug)]
pub(crate) struct TableStore {
    pub(crate) store: Arc<dyn HotStore>,
    /// The next chunk sequence number; unique across all tables of the database.
    next_seq: AtomicU64,
    /// The first sequence number each insert in progress may use (a count per number): chunks of an insert get
    /// their numbers when they are written, before the insert commits, so a chunk with a lower number than a
    /// committed one may still appear. Tiering stays below all of these ([`TableStore::settled_below`]).
    pinned: Mutex<std::collections::BTreeMap<u64, usize>>,
    /// Data keys of retired chunks that no reader needs any more, deleted by the next commit.
    garbage: Mutex<Vec<Vec<u8>>>,
    /// Rows per chunk that inserts aim for.
    pub(crate) chunk_rows_target: usize,
    /// How durable a commit is before it is acknowledged.
    pub(crate) durability: Durability,
    pub(crate) metrics: Arc<Metrics>,
    /// Decoded columns of recently scanned chunks.
    cache: ColumnCache,
}

impl TableStore {
    /// Returns a context whose sequence numbers start at `next_seq`.
    pub(crate) fn new(
        store: Arc<dyn HotStore>,
        next_seq: u64,
        chunk_rows_target: usize,
        durability: Durability,
        column_cache_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            cache: ColumnCache::new(column_cache_bytes),
            store,
            next_seq: AtomicU64::new(next_seq),
            pinned: Mutex::new(std::collections::BTreeMap::new()),
            garbage: Mutex::new(Vec::new()),
            chunk_rows_target: chunk_rows_target.max(1),
            durability,
            metrics,
        }
    }

    fn allocate_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// The next sequence number not yet handed out (what recovery must not go below after chunks are removed).
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    /// Reserves for an insert every sequence number from the next one on, until the returned pin is dropped.
    fn pin(self: &Arc<Self>) -> SeqPin {
        let mut pinned = self.pinned.lock().expect("pin lock poisoned");
        let first = self.next_seq.load(Ordering::Relaxed);
        *pinned.entry(first).or_insert(0) += 1;
        SeqPin { tables: Arc::clone(self), first }
    }

    /// A sequence number below which no chunk can appear any more: every chunk numbered lower is committed (and in
    /// its table's version once the caller reads it afterwards) or never will be. Read it before the version.
    pub(crate) fn settled_below(&self) -> u64 {
        let pinned = self.pinned.lock().expect("pin lock poisoned");
        let next = self.next_seq.load(Ordering::Relaxed);
        pinned.keys().next().copied().map_or(next, |first| first.min(next))
    }

    /// Queues data keys for deletion by the next commit.
    pub(crate) fn discard(&self, keys: impl IntoIterator<Item = Vec<u8>>) {
        self.garbage.lock().expect("garbage lock poisoned").extend(keys);
    }

    /// Moves the queued garbage into `batch`.
    pub(crate) fn drain_garbage_into(&self, batch: &mut WriteBatch) {
        let keys = std::mem::take(&mut *self.garbage.lock().expect("garbage lock poisoned"));
        for k in keys {
            batch.delete(k);
        }
    }

    /// Writes `batch` plus the queued garbage deletions with the configured durability.
    pub(crate) fn commit(&self, mut batch: WriteBatch) -> Result<()> {
        // Fault point: the disk refuses the write (the insert must roll back whole).
        if quiver_meta::buggify!(0.02) {
            return Err(Error::storage("commit", "injected write failure"));
        }
        self.drain_garbage_into(&mut batch);
        let bytes = batch.size_bytes() as u64;
        self.store.write(batch, self.durability)?;
        self.metrics.hot_bytes_written.add(bytes);
        Ok(())
    }
}

/// An insert's reservation of sequence numbers ([`TableStore::pin`]); released when dropped.
#[derive(Debug)]
struct SeqPin {
    tables: Arc<TableStore>,
    first: u64,
}

impl Drop for SeqPin {
    fn drop(&mut self) {
        let mut pinned = self.tables.pinned.lock().expect("pin lock poisoned");
        if let Some(count) = pinned.get_mut(&self.first) {
            *count -= 1;
            if *count == 0 {
                pinned.remove(&self.first);
            }
        }
    }
}

/// One immutable chunk of a table.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) table: TableId,
    pub(crate) seq: u64,
    pub(crate) meta: ChunkMeta,
    retired: AtomicBool,
    tables: Arc<TableStore>,
}

impl Chunk {
    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if self.retired.load(Ordering::Acquire) {
            self.tables.cache.remove_chunk(self.seq, self.meta.null_counts.len(), &self.tables.metrics);
            self.tables.discard([keys::data_key(self.table, self.seq)]);
        }
    }
}

/// The chunks of a table at one moment.
pub(crate) type Version = Arc<Vec<Arc<Chunk>>>;

/// A native table stored in the hot store.
#[derive(Debug)]
pub struct HotTable {
    def: TableDef,
    schema: SchemaRef,
    tables: Arc<TableStore>,
    version: RwLock<Version>,
    /// What this node's scans read from the cold tier (`crate::cold`). Read after `version`; changed before it.
    cold: RwLock<ColdState>,
    /// Serializes DELETE, UPDATE and tiering of this table; inserts only add chunks and do not take it.
    pub(crate) dml_lock: tokio::sync::Mutex<()>,
    /// Serializes loads of the cold view after a failure (`Engine::reload_unavailable_cold`).
    pub(crate) cold_lock: tokio::sync::Mutex<()>,
    /// Why inserts are refused now (the cold tier cannot take rows past the write limit), if they are.
    refusal: Mutex<Option<String>>,
}

impl HotTable {
    /// Returns a table with the given committed chunks.
    pub(crate) fn new(def: TableDef, tables: Arc<TableStore>, chunks: Vec<(u64, ChunkMeta)>) -> Self {
        let schema = Arc::new(def.arrow_schema());
        let mut list: Vec<Arc<Chunk>> = chunks
            .into_iter()
            .map(|(seq, meta)| {
                Arc::new(Chunk {
                    table: def.id,
                    seq,
                    meta,
                    retired: AtomicBool::new(false),
                    tables: Arc::clone(&tables),
                })
            })
            .collect();
        list.sort_by_key(|c| c.seq);
        Self {
            def,
            schema,
            tables,
            version: RwLock::new(Arc::new(list)),
            cold: RwLock::new(ColdState::Ready(Arc::default())),
            dml_lock: tokio::sync::Mutex::new(()),
            cold_lock: tokio::sync::Mutex::new(()),
            refusal: Mutex::new(None),
        }
    }

    /// Refuses inserts with "cold tier unavailable: `why`" from now on, or (`None`) lets them in again.
    pub(crate) fn refuse_writes(&self, why: Option<String>) {
        *self.refusal.lock().expect("refusal lock poisoned") = why;
    }

    /// Returns the table's definition.
    pub fn def(&self) -> &TableDef {
        &self.def
    }

    /// Returns the table's Arrow schema.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// Returns the current version: the chunks a reader starting now must see.
    pub(crate) fn version(&self) -> Version {
        Arc::clone(&self.version.read().expect("version lock poisoned"))
    }

    /// Returns what this node's scans read from the cold tier; read it after [`HotTable::version`].
    pub(crate) fn cold(&self) -> ColdState {
        self.cold.read().expect("cold lock poisoned").clone()
    }

    /// Installs a new cold view (before the hot chunks it covers are removed).
    pub(crate) fn set_cold(&self, state: ColdState) {
        *self.cold.write().expect("cold lock poisoned") = state;
    }

    /// Installs `view` unless the table already has a newer one: views only move forward, whoever installs them
    /// (a tiering, or a statement catching up with another node's commit) and in whatever order.
    pub(crate) fn advance_cold(&self, view: Arc<crate::cold::ColdView>) {
        let mut current = self.cold.write().expect("cold lock poisoned");
        if !matches!(&*current, ColdState::Ready(v) if v.version >= view.version) {
            *current = ColdState::Ready(view);
        }
    }

    /// Returns the rows in the table now.
    pub fn row_count(&self) -> u64 {
        self.version().iter().map(|c| c.meta.rows).sum()
    }

    /// The decoded-column cache this table's scans share with every table of the engine (cold scans keep their
    /// row groups' columns in it too), and the metrics it counts into.
    pub(crate) fn column_cache(&self) -> (&ColumnCache, &Metrics) {
        (&self.tables.cache, &self.tables.metrics)
    }

    /// Reads one chunk, keeping the columns in `projection`.
    pub(crate) fn read_chunk(
        &self,
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
            None => (0..self.schema.fields().len()).collect(),
        };
        let cache = &self.tables.cache;
        let metrics = &self.tables.metrics;
        let mut arrays: Vec<Option<ArrayRef>> =
            columns.iter().map(|c| cache.get(&Source::Chunk(chunk.seq), *c, metrics)).collect();
        let missing: Vec<usize> = columns.iter().zip(&arrays).filter(|(_, a)| a.is_none()).map(|(c, _)| *c).collect();
        if !missing.is_empty() {
            let key = keys::data_key(chunk.table, chunk.seq);
            let location = || format!("table \"{}\" chunk {}", self.def.name, chunk.seq);
            let bytes = self
                .tables
                .store
                .get(&key)?
                .ok_or_else(|| Error::Corrupt { location: location(), detail: "chunk data is missing".into() })?;
            metrics.hot_bytes_read.add(bytes.len() as u64);
            let missing_schema = Arc::new(self.schema.project(&missing)?);
            let decoded = chunk::decode_data(&bytes, Some(&missing), &missing_schema, location)?;
            let mut decoded_columns = decoded.columns().iter();
            for (slot, column) in arrays.iter_mut().zip(&columns) {
                if slot.is_none() {
                    let array = decoded_columns.next().expect("one decoded column per missing column").clone();
                    cache.insert(&Source::Chunk(chunk.seq), *column, array.clone(), metrics);
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

    /// Checks a batch against the table's schema and returns it carrying the table's schema.
    ///
    /// # Errors
    ///
    /// [`Error::SchemaMismatch`] when the column count or a column type differs; [`Error::NotNullViolation`] when a
    /// NOT NULL column holds a NULL.
    pub(crate) fn conform(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let fields = self.schema.fields();
        if batch.num_columns() != fields.len() {
            return Err(Error::SchemaMismatch {
                table: self.def.name.clone(),
                detail: format!("expected {} columns, got {}", fields.len(), batch.num_columns()),
            });
        }
        for (field, column) in fields.iter().zip(batch.columns()) {
            if column.data_type() != field.data_type() {
                return Err(Error::SchemaMismatch {
                    table: self.def.name.clone(),
                    detail: format!(
                        "column \"{}\" has type {}, got {}",
                        field.name(),
                        field.data_type(),
                        column.data_type()
                    ),
                });
            }
            if !field.is_nullable() && column.null_count() > 0 {
                return Err(Error::NotNullViolation { table: self.def.name.clone(), column: field.name().clone() });
            }
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), batch.columns().to_vec())?)
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
    pub(crate) async fn append_stream<S, E>(self: &Arc<Self>, mut stream: S) -> Result<u64>
    where
        S: futures::Stream<Item = std::result::Result<RecordBatch, E>> + Unpin,
        Error: From<E>,
    {
        use futures::StreamExt as _;
        if let Some(detail) = self.refusal.lock().expect("refusal lock poisoned").clone() {
            return Err(Error::ColdUnavailable { detail });
        }
        // The simulation has no blocking thread pool for the writer below: the appender runs inline, in this task.
        #[cfg(madsim)]
        {
            let mut appender = self.appender();
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
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Step>(2);
            let mut appender = self.appender();
            let writer = tokio::task::spawn_blocking(move || -> Result<Option<u64>> {
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
            while let Some(item) = stream.next().await {
                match item {
                    Ok(batch) => {
                        if tx.send(Step::Rows(batch)).await.is_err() {
                            break; // The writer failed; its error is returned below.
                        }
                    }
                    Err(e) => {
                        failure = Some(Error::from(e));
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

    /// See [`TableStore::settled_below`].
    pub(crate) fn settled_below(&self) -> u64 {
        self.tables.settled_below()
    }

    /// Starts an insert.
    pub(crate) fn appender(self: &Arc<Self>) -> Appender {
        Appender {
            table: Arc::clone(self),
            pending: Vec::new(),
            pending_rows: 0,
            written: Vec::new(),
            rows: 0,
            pin: None,
        }
    }

    /// Encodes `batch` as a new chunk written at `written_ms` and adds its data to `batch_out`; returns the chunk.
    fn encode_chunk(&self, batch: &RecordBatch, written_ms: u64, out: &mut WriteBatch) -> Result<(u64, ChunkMeta)> {
        let seq = self.tables.allocate_seq();
        let data = chunk::encode_data(batch)?;
        let meta = chunk::compute_meta(batch, data.len() as u64, written_ms);
        out.put(keys::data_key(self.def.id, seq), data);
        Ok((seq, meta))
    }

    fn make_chunk(&self, seq: u64, meta: ChunkMeta) -> Arc<Chunk> {
        Arc::new(Chunk {
            table: self.def.id,
            seq,
            meta,
            retired: AtomicBool::new(false),
            tables: Arc::clone(&self.tables),
        })
    }

    /// Replaces chunks: removes `removed` and adds `added` (already conformed) in one atomic, durable commit.
    ///
    /// The caller holds [`HotTable::dml_lock`] and computed `added` from `removed`. The rows of `added` keep the
    /// newest write time of the chunks they come from, so that a DELETE or UPDATE does not make rows younger for
    /// `tier_after` and `ttl` than they were.
    pub(crate) fn replace(&self, removed: &[Arc<Chunk>], added: Vec<RecordBatch>) -> Result<()> {
        let mut batch = WriteBatch::new();
        let mut new_chunks = Vec::new();
        let written_ms = removed.iter().map(|c| c.meta.written_ms).max().unwrap_or_else(crate::clock::unix_ms);
        for b in split_rows(added, self.tables.chunk_rows_target)? {
            let (seq, meta) = self.encode_chunk(&b, written_ms, &mut batch)?;
            batch.put(keys::index_key(self.def.id, seq), chunk::encode_meta(&meta, &self.schema)?);
            new_chunks.push(self.make_chunk(seq, meta));
        }
        for c in removed {
            batch.delete(keys::index_key(self.def.id, c.seq));
        }
        if !removed.is_empty() {
            // Removed chunks may have held the highest numbers; a restart must not hand them out again (the cold
            // tier's mark says which numbers are tiered).
            batch.put(keys::NEXT_SEQ_KEY.to_vec(), self.tables.next_seq().to_be_bytes().to_vec());
        }
        self.tables.commit(batch)?;
        let gone: HashSet<u64> = removed.iter().map(|c| c.seq).collect();
        let mut guard = self.version.write().expect("version lock poisoned");
        let mut list: Vec<Arc<Chunk>> = guard.iter().filter(|c| !gone.contains(&c.seq)).cloned().collect();
        list.extend(new_chunks);
        list.sort_by_key(|c| c.seq);
        *guard = Arc::new(list);
        drop(guard);
        for c in removed {
            c.retire();
        }
        Ok(())
    }

    /// Marks every chunk retired after the table was dropped, so their data is deleted once no reader needs it.
    pub(crate) fn retire_all(&self) {
        let mut guard = self.version.write().expect("version lock poisoned");
        for c in guard.iter() {
            c.retire();
        }
        *guard = Arc::new(Vec::new());
    }
}

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
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    /// Chunks whose data is written but not committed.
    written: Vec<(u64, ChunkMeta)>,
    rows: u64,
    /// Held from the first chunk written until the insert's chunks are visible or abandoned.
    pin: Option<SeqPin>,
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
        self.pending_rows += batch.num_rows();
        self.pending.push(batch);
        if self.pending_rows >= self.table.tables.chunk_rows_target {
            self.flush(false)?;
        }
        Ok(())
    }

    /// Writes full chunks of the pending rows (all of them when `all`), unsynced and not yet visible.
    fn flush(&mut self, all: bool) -> Result<()> {
        let target = self.table.tables.chunk_rows_target;
        let mut chunks = split_rows(std::mem::take(&mut self.pending), target)?;
        self.pending_rows = 0;
        if !all && chunks.last().is_some_and(|c| c.num_rows() < target) {
            let rest = chunks.pop().expect("checked non-empty");
            self.pending_rows = rest.num_rows();
            self.pending.push(rest);
        }
        if chunks.is_empty() {
            return Ok(());
        }
        if self.pin.is_none() {
            self.pin = Some(self.table.tables.pin());
        }
        let mut batch = WriteBatch::new();
        for c in &chunks {
            let (seq, meta) = self.table.encode_chunk(c, crate::clock::unix_ms(), &mut batch)?;
            self.written.push((seq, meta));
        }
        self.table.tables.store.write(batch, Durability::Buffered)?;
        Ok(())
    }

    /// Commits the insert durably and makes its rows visible; returns the rows inserted.
    ///
    /// # Errors
    ///
    /// Fails when the store fails; then no row of the insert is visible, now or after a restart.
    pub(crate) fn commit(mut self) -> Result<u64> {
        self.flush(true)?;
        let written = std::mem::take(&mut self.written);
        if written.is_empty() {
            return Ok(0);
        }
        let table = Arc::clone(&self.table);
        let mut batch = WriteBatch::new();
        for (seq, meta) in &written {
            batch.put(keys::index_key(table.def.id, *seq), chunk::encode_meta(meta, &table.schema)?);
        }
        if let Err(e) = table.tables.commit(batch) {
            // The data keys stay orphaned; queue them so they do not linger until the next restart.
            table.tables.discard(written.iter().map(|(seq, _)| keys::data_key(table.def.id, *seq)));
            return Err(e);
        }
        let new_chunks: Vec<Arc<Chunk>> = written.into_iter().map(|(seq, meta)| table.make_chunk(seq, meta)).collect();
        let mut guard = table.version.write().expect("version lock poisoned");
        let mut list: Vec<Arc<Chunk>> = guard.iter().cloned().collect();
        list.extend(new_chunks);
        list.sort_by_key(|c| c.seq);
        *guard = Arc::new(list);
        drop(guard);
        // Visible now: tiering may take these chunks.
        self.pin = None;
        table.tables.metrics.rows_ingested.add(self.rows);
        Ok(self.rows)
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        if !self.written.is_empty() {
            let id = self.table.def.id;
            self.table.tables.discard(self.written.drain(..).map(|(seq, _)| keys::data_key(id, seq)));
        }
    }
}
