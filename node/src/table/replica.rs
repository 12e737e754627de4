//! [`ShardReplica`]: one shard of a table as stored on this node, with its chunks, its numbering and its cold view.
//!
//! Everything that runs per table on a single node (tiering, compaction, retention, DELETE and UPDATE of cold files,
//! the removal of tiered chunks) runs per shard replica: a shard has its own manifest in the cold tier, its own
//! sequence numbers and its own tiering mark.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use quiver_meta::{ShardId, TableDef, TableId};

use super::log::{LoggedChange, PreparedChange, Resolution};
use super::version::Chunks;
use super::{ChunkMeta, TableStore, chunk, keys, split_rows};
use crate::cold::ColdState;
use crate::error::Result;
use crate::storage::{Durability, WriteBatch};

/// One immutable chunk of a shard.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) table: TableId,
    pub(crate) shard: ShardId,
    pub(crate) seq: u64,
    pub(crate) meta: ChunkMeta,
    /// Its stored data, shared with the objects that give the same chunk a rewritten index entry
    /// ([`ShardReplica::restamp`]).
    data: Arc<ChunkData>,
}

/// The stored data of one chunk object, and of the objects that restamp it: deleted once the chunk is retired and the
/// last of them is gone, so a reader still holding the chunk under an older index entry reads its data whatever
/// became of the newer one.
#[derive(Debug)]
struct ChunkData {
    key: Vec<u8>,
    shard: ShardId,
    seq: u64,
    /// The table's columns (the column cache's entries of the chunk).
    columns: usize,
    retired: AtomicBool,
    /// Tells this chunk object from another of the same number (a replica may receive a chunk number again after it
    /// dropped it): only the object that retired last deletes the data.
    incarnation: u64,
    tables: Arc<TableStore>,
}

impl Drop for ChunkData {
    fn drop(&mut self) {
        if self.retired.load(Ordering::Acquire) {
            let source = super::cache::Source::Chunk(self.shard.0, self.seq, self.incarnation);
            self.tables.cache.remove_chunk(&source, self.columns, &self.tables.metrics);
            self.tables.discard_retired(std::mem::take(&mut self.key), self.incarnation);
        }
    }
}

impl Chunk {
    /// A new chunk object of shard `shard` of table `table`, numbered `seq`, whose data is stored in `tables`.
    fn new(table: TableId, shard: ShardId, seq: u64, meta: ChunkMeta, tables: &Arc<TableStore>) -> Self {
        let data = ChunkData {
            key: keys::data_key(table, shard, seq),
            shard,
            seq,
            columns: meta.null_counts.len(),
            retired: AtomicBool::new(false),
            incarnation: tables.next_incarnation(),
            tables: Arc::clone(tables),
        };
        Chunk { table, shard, seq, meta, data: Arc::new(data) }
    }

    /// The same chunk, data and incarnation under the index entry `meta`.
    fn restamped(&self, meta: ChunkMeta) -> Self {
        Chunk { table: self.table, shard: self.shard, seq: self.seq, meta, data: Arc::clone(&self.data) }
    }

    fn retire(&self) {
        self.data.tables.retiring(self.data_key(), self.data.incarnation);
        self.data.retired.store(true, Ordering::Release);
    }

    /// Where the column cache keeps the chunk's decoded columns.
    pub(crate) fn cache_source(&self) -> super::cache::Source {
        super::cache::Source::Chunk(self.shard.0, self.seq, self.data.incarnation)
    }

    /// The key of the chunk's data.
    pub(crate) fn data_key(&self) -> Vec<u8> {
        keys::data_key(self.table, self.shard, self.seq)
    }
}

/// The chunks of a shard at one moment, in sequence order.
pub(crate) type Version = Arc<Chunks>;

/// One shard of a table stored on this node.
#[derive(Debug)]
pub(crate) struct ShardReplica {
    def: TableDef,
    schema: SchemaRef,
    shard: ShardId,
    pub(super) tables: Arc<TableStore>,
    /// The next chunk sequence number of the shard.
    next_seq: AtomicU64,
    /// The first sequence number each insert in progress may use (a count per number): chunks of an insert get
    /// their numbers when they are written, before the insert commits, so a chunk with a lower number than a
    /// committed one may still appear. Tiering stays below all of these ([`ShardReplica::settled_below`]).
    pinned: Mutex<BTreeMap<u64, usize>>,
    version: RwLock<Version>,
    /// What this node's scans read from the shard's cold tier (`crate::cold`). Read after `version`; changed before.
    cold: RwLock<ColdState>,
    /// Serializes DELETE, UPDATE and tiering of this shard; inserts only add chunks and do not take it.
    pub(crate) dml_lock: tokio::sync::Mutex<()>,
    /// Serializes loads of the cold view after a failure (`Engine::reload_unavailable_cold`).
    pub(crate) cold_lock: tokio::sync::Mutex<()>,
    /// Why inserts are refused now (the cold tier cannot take rows past the write limit), if they are.
    refusal: Mutex<Option<String>>,
    /// Changes of the shard's log prepared here and not committed yet, by number (`super::log`).
    prepared: Mutex<BTreeMap<u64, PreparedChange>>,
    /// The last change of the shard's log committed here.
    committed_lsn: AtomicU64,
    /// As its primary: the commit point every in-sync backup was last told (in memory: 0 after a restart).
    pushed_commit: AtomicU64,
    /// The identity under which the cold tier's manifests mark the chunks this replica tiered ([`keys::mark_key`]).
    mark_id: AtomicU64,
    /// The metadata version of the last removal by a statement spanning shards settled here ([`keys::removals_key`]):
    /// the removed chunks are gone, so a reader at an older snapshot, which would still see them, is refused.
    removals_settled: AtomicU64,
}

/// A new mark identity: random, never the shard's own mark's key.
fn new_mark_id() -> Result<u64> {
    loop {
        let id = crate::random::random_u64()?;
        if id != crate::cold::SHARD_MARK {
            return Ok(id);
        }
    }
}

/// The index entry of chunk `seq` as a run of changes being committed left it so far: rewritten (`restamped`), added
/// by an earlier change of the run, or as `current` holds it; `None` when it is not held or was removed.
fn meta_now(
    current: &Chunks,
    added: &[Arc<Chunk>],
    restamped: &BTreeMap<u64, ChunkMeta>,
    removed: &HashSet<u64>,
    seq: u64,
) -> Option<ChunkMeta> {
    if removed.contains(&seq) {
        return None;
    }
    if let Some(meta) = restamped.get(&seq) {
        return Some(meta.clone());
    }
    let held = current.get(seq);
    held.or_else(|| added.iter().find(|c| c.seq == seq)).map(|c| c.meta.clone())
}

/// What recovery found of one shard replica in the hot store.
#[derive(Debug, Default)]
pub(crate) struct RecoveredShard {
    /// Committed chunks: number and index entry.
    pub(crate) chunks: Vec<(u64, ChunkMeta)>,
    /// The numbering floor.
    pub(crate) floor: u64,
    /// Prepared changes of the shard's log.
    pub(crate) prepared: Vec<PreparedChange>,
    /// The commit point.
    pub(crate) committed_lsn: u64,
    /// The identity its tiered chunks are marked under, if one was stored.
    pub(crate) mark_id: Option<u64>,
    /// The metadata version of the last removal by a statement spanning shards settled here (0: none).
    pub(crate) removals_settled: u64,
}

impl ShardReplica {
    /// Returns the replica of shard `shard` of table `def` with what recovery found of it: committed chunks, the
    /// numbering floor, prepared changes, the commit point and the mark identity (`store_id`, the store's identity,
    /// when none was stored).
    pub(crate) fn new(
        def: TableDef,
        shard: ShardId,
        tables: Arc<TableStore>,
        recovered: RecoveredShard,
        store_id: u64,
    ) -> Self {
        let RecoveredShard { chunks, floor: next_seq, prepared, committed_lsn, mark_id, removals_settled } = recovered;
        let schema = Arc::new(def.arrow_schema());
        let list = Chunks::new(
            chunks.into_iter().map(|(seq, meta)| Arc::new(Chunk::new(def.id, shard, seq, meta, &tables))).collect(),
        );
        let prepared_above = prepared.iter().flat_map(|p| p.added.iter().map(|(seq, _)| seq + 1)).max().unwrap_or(1);
        let next_seq = next_seq.max(list.last().map_or(1, |c| c.seq + 1)).max(prepared_above);
        Self {
            def,
            schema,
            shard,
            tables,
            next_seq: AtomicU64::new(next_seq),
            pinned: Mutex::new(BTreeMap::new()),
            version: RwLock::new(Arc::new(list)),
            cold: RwLock::new(ColdState::Ready(Arc::default())),
            dml_lock: tokio::sync::Mutex::new(()),
            cold_lock: tokio::sync::Mutex::new(()),
            refusal: Mutex::new(None),
            prepared: Mutex::new(prepared.into_iter().map(|p| (p.lsn, p)).collect()),
            committed_lsn: AtomicU64::new(committed_lsn),
            pushed_commit: AtomicU64::new(0),
            mark_id: AtomicU64::new(mark_id.unwrap_or(store_id)),
            removals_settled: AtomicU64::new(removals_settled),
        }
    }

    /// The metadata version of the last removal by a statement spanning shards settled on this replica: a reader
    /// whose snapshot is older would miss both the removed rows and the rows that replaced them, and is refused.
    pub(crate) fn removals_settled(&self) -> u64 {
        self.removals_settled.load(Ordering::Acquire)
    }

    /// The identity under which the cold tier's manifests mark the chunks this replica tiered: its chunks up to that
    /// identity's mark are in the shard's cold files.
    ///
    /// Marks are per replica, and the chunks a mark covers are numbered by the shard's log: a chunk's number names
    /// the same chunk on every copy, as long as the shard keeps a copy. A shard that lost every copy numbers its
    /// chunks from the start again, so a mark made before (by a node the shard later comes back to) would cover
    /// chunks it never saw; a replica therefore takes a new identity whenever a catch-up or a removal replaces its
    /// chunks wholesale ([`ShardReplica::reset`]), and reads every hot chunk it holds until it tiers under it.
    pub(crate) fn mark_id(&self) -> u64 {
        self.mark_id.load(Ordering::Acquire)
    }

    /// Numbers the shard's next chunks above `floor` at least (the shard's cold tier covers the numbers below).
    pub(crate) fn raise_floor(&self, floor: u64) {
        self.next_seq.fetch_max(floor, Ordering::AcqRel);
    }

    /// Returns the table's definition.
    pub(crate) fn def(&self) -> &TableDef {
        &self.def
    }

    /// Returns the table's Arrow schema.
    pub(crate) fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// Returns the shard this replica holds.
    pub(crate) fn shard_id(&self) -> ShardId {
        self.shard
    }

    /// Refuses inserts with "cold tier unavailable: `why`" from now on, or (`None`) lets them in again.
    pub(crate) fn refuse_writes(&self, why: Option<String>) {
        *self.refusal.lock().expect("refusal lock poisoned") = why;
    }

    /// Why inserts are refused now, if they are.
    pub(crate) fn refusal(&self) -> Option<String> {
        self.refusal.lock().expect("refusal lock poisoned").clone()
    }

    /// Returns the current version: the chunks a reader starting now must see.
    pub(crate) fn version(&self) -> Version {
        Arc::clone(&self.version.read().expect("version lock poisoned"))
    }

    /// Returns what this node's scans read from the cold tier; read it after [`ShardReplica::version`].
    pub(crate) fn cold(&self) -> ColdState {
        self.cold.read().expect("cold lock poisoned").clone()
    }

    /// Installs a new cold view (before the hot chunks it covers are removed).
    pub(crate) fn set_cold(&self, state: ColdState) {
        let state = match state {
            ColdState::Ready(view) => ColdState::Ready(self.own_view(view)),
            unavailable => unavailable,
        };
        *self.cold.write().expect("cold lock poisoned") = state;
    }

    /// Installs `view` unless the shard already has a newer one: views only move forward, whoever installs them
    /// (a tiering, or a statement catching up with another node's commit) and in whatever order.
    pub(crate) fn advance_cold(&self, view: Arc<crate::cold::ColdView>) {
        let view = self.own_view(view);
        let mut current = self.cold.write().expect("cold lock poisoned");
        if !matches!(&*current, ColdState::Ready(v) if v.version >= view.version) {
            *current = ColdState::Ready(view);
        }
    }

    /// `view` as this replica's mark identity sees it (a view taken before [`ShardReplica::reset`] renewed it
    /// carries the old identity's mark).
    fn own_view(&self, view: Arc<crate::cold::ColdView>) -> Arc<crate::cold::ColdView> {
        let id = self.mark_id();
        if view.marked_as == id || crate::cold::mark_of(&view.marks, id) == view.hot_through {
            view
        } else {
            Arc::new(view.marked_for(id))
        }
    }

    /// Takes the current cold view again for the replica's mark identity, after it changed.
    fn remark_cold(&self) {
        let mut current = self.cold.write().expect("cold lock poisoned");
        if let ColdState::Ready(view) = &*current {
            *current = ColdState::Ready(self.own_view(Arc::clone(view)));
        }
    }

    /// Returns the rows in the shard's hot chunks now.
    pub(crate) fn row_count(&self) -> u64 {
        self.version().iter().map(|c| c.meta.rows).sum()
    }

    /// The decoded-column cache this shard's scans share with every table of the engine (cold scans keep their row
    /// groups' columns in it too), and the metrics it counts into.
    pub(crate) fn column_cache(&self) -> (&super::ColumnCache, &crate::metrics::Metrics) {
        (&self.tables.cache, &self.tables.metrics)
    }

    /// Reads one chunk of this shard, keeping the columns in `projection`.
    pub(crate) fn read_chunk(
        &self,
        chunk: &Chunk,
        projection: Option<&[usize]>,
        projected_schema: &SchemaRef,
    ) -> Result<RecordBatch> {
        super::read_chunk(&self.tables, &self.schema, &self.def.name, chunk, projection, projected_schema)
    }

    /// Checks a batch against the table's schema (see [`super::HotTable::conform`]).
    pub(crate) fn conform(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        super::conform(&self.def, &self.schema, batch)
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
        SeqPin { replica: Arc::clone(self), first }
    }

    /// A sequence number below which no chunk can appear any more: every chunk numbered lower is committed (and in
    /// the shard's version once the caller reads it afterwards) or never will be. Read it before the version.
    pub(crate) fn settled_below(&self) -> u64 {
        let pinned = self.pinned.lock().expect("pin lock poisoned");
        let next = self.next_seq.load(Ordering::Relaxed);
        pinned.keys().next().copied().map_or(next, |first| first.min(next))
    }

    /// The current version, and the number a tiering mark may not reach in it: [`ShardReplica::settled_below`]
    /// (read before the version), and the first chunk that is part of a statement spanning shards not settled yet
    /// (it may still be removed, and its rows are not everybody's to see).
    pub(crate) fn tierable(&self) -> (Version, u64) {
        let settled_below = self.settled_below();
        let version = self.version();
        let below =
            version.iter().filter(|c| c.meta.unsettled()).map(|c| c.seq).min().unwrap_or(u64::MAX).min(settled_below);
        (version, below)
    }

    /// Starts this shard's part of an insert.
    pub(crate) fn appender(self: &Arc<Self>) -> ShardAppender {
        ShardAppender {
            replica: Arc::clone(self),
            pending: Vec::new(),
            pending_rows: 0,
            written: Vec::new(),
            pin: None,
        }
    }

    /// Encodes `batch` as a new chunk written at `written_ms` and adds its data to `out`; returns the chunk.
    fn encode_chunk(&self, batch: &RecordBatch, written_ms: u64, out: &mut WriteBatch) -> Result<(u64, ChunkMeta)> {
        let seq = self.allocate_seq();
        let data = chunk::encode_data(batch)?;
        let meta = chunk::compute_meta(batch, data.len() as u64, written_ms);
        out.put(keys::data_key(self.def.id, self.shard, seq), data);
        Ok((seq, meta))
    }

    fn make_chunk(&self, seq: u64, meta: ChunkMeta) -> Arc<Chunk> {
        Arc::new(Chunk::new(self.def.id, self.shard, seq, meta, &self.tables))
    }

    /// Adds to `batch` the replacement of `removed` by `added` (already conformed): the new chunks' data and index
    /// entries, the removal of the old index entries, and the shard's sequence floor. Returns the new chunks, to
    /// [`ShardReplica::install`] once `batch` is durable.
    ///
    /// The rows of `added` keep the newest write time of the chunks they come from, so that a DELETE or UPDATE does
    /// not make rows younger for `tier_after` and `ttl` than they were.
    pub(crate) fn stage_replace(
        &self,
        removed: &[Arc<Chunk>],
        added: Vec<RecordBatch>,
        batch: &mut WriteBatch,
    ) -> Result<Vec<Arc<Chunk>>> {
        let mut new_chunks = Vec::new();
        let written_ms = removed.iter().map(|c| c.meta.written_ms).max().unwrap_or_else(crate::clock::unix_ms);
        // Nor visible to readers that did not see the rows they come from.
        let visible_from = removed.iter().map(|c| c.meta.visible_from).max().unwrap_or(0);
        for b in split_rows(added, self.tables.chunk_rows_target)? {
            let (seq, meta) = self.encode_chunk(&b, written_ms, batch)?;
            let meta = ChunkMeta { visible_from, ..meta };
            batch.put(keys::index_key(self.def.id, self.shard, seq), chunk::encode_meta(&meta, &self.schema)?);
            new_chunks.push(self.make_chunk(seq, meta));
        }
        for c in removed {
            batch.delete(keys::index_key(self.def.id, self.shard, c.seq));
        }
        if !removed.is_empty() {
            // Removed chunks may have held the highest numbers; a restart must not hand them out again (the cold
            // tier's mark says which numbers are tiered).
            batch.put(keys::floor_key(self.def.id, self.shard), self.next_seq().to_be_bytes().to_vec());
        }
        Ok(new_chunks)
    }

    /// Makes a durable replacement visible: `removed` leave the version, `added` join it.
    pub(crate) fn install(&self, removed: &[Arc<Chunk>], added: Vec<Arc<Chunk>>) {
        let gone: HashSet<u64> = removed.iter().map(|c| c.seq).collect();
        let mut guard = self.version.write().expect("version lock poisoned");
        let list = guard.changed(&gone, added);
        let old = std::mem::replace(&mut *guard, Arc::new(list));
        drop(guard);
        // The old version goes (when no reader holds it) outside the lock.
        drop(old);
        for c in removed {
            c.retire();
        }
    }

    /// As [`ShardReplica::install`], and gives the chunks numbered in `restamped` (already in the version) their
    /// rewritten index entries: the same chunk, data and incarnation, now visible as a settled statement's part. The
    /// chunks numbered in `replaced` leave the version without retiring: `added` holds other chunks of their numbers,
    /// whose data is under the same keys (the old ones' decoded columns leave the cache).
    fn install_restamped(
        &self,
        removed: &[Arc<Chunk>],
        added: Vec<Arc<Chunk>>,
        mut restamped: BTreeMap<u64, ChunkMeta>,
        replaced: &HashSet<u64>,
    ) {
        if restamped.is_empty() && replaced.is_empty() {
            return self.install(removed, added);
        }
        let mut gone: HashSet<u64> = removed.iter().map(|c| c.seq).chain(replaced.iter().copied()).collect();
        let mut added = added;
        let mut guard = self.version.write().expect("version lock poisoned");
        let swapped: Vec<super::cache::Source> =
            replaced.iter().filter_map(|seq| guard.get(*seq)).map(|c| c.cache_source()).collect();
        // A restamped chunk leaves the list and comes back as the same chunk, data and incarnation under its new
        // index entry (both objects own the data together: it goes once the chunk is retired and neither is held).
        while let Some((seq, meta)) = restamped.pop_first() {
            if !gone.contains(&seq)
                && let Some(chunk) = guard.get(seq)
            {
                added.push(Arc::new(chunk.restamped(meta)));
                gone.insert(seq);
            }
        }
        let list = guard.changed(&gone, added);
        let old = std::mem::replace(&mut *guard, Arc::new(list));
        drop(guard);
        drop(old);
        for source in &swapped {
            self.tables.cache.remove_chunk(source, self.schema.fields().len(), &self.tables.metrics);
        }
        for c in removed {
            c.retire();
        }
    }

    /// `chunk` with the index entry `restamped` holds for its number, if any (taken out of it).
    fn restamp(&self, chunk: Arc<Chunk>, restamped: &mut BTreeMap<u64, ChunkMeta>) -> Arc<Chunk> {
        match restamped.remove(&chunk.seq) {
            // Both objects own the data together: it goes once the chunk is retired and neither is held any more.
            Some(meta) => Arc::new(chunk.restamped(meta)),
            None => chunk,
        }
    }

    /// The settled commits of statements spanning shards with parts in this replica's committed chunks: what a
    /// replica caught up from this one settles as it did.
    pub(crate) fn settled_commits(&self) -> Vec<Resolution> {
        let mut out: BTreeMap<u64, u64> = BTreeMap::new();
        for c in self.version().iter().filter(|c| c.meta.txn != 0 && c.meta.visible_from != 0) {
            out.insert(c.meta.txn, c.meta.visible_from);
        }
        out.into_iter().map(|(txn, version)| Resolution { txn, commit: true, version }).collect()
    }

    /// The statements spanning shards with parts in this replica's committed chunks not settled yet (chunks they add or
    /// remove).
    pub(crate) fn unsettled_txns(&self) -> Vec<u64> {
        let mut txns: Vec<u64> =
            self.version().iter().flat_map(|c| c.meta.pending_txns().collect::<Vec<_>>()).collect();
        txns.sort_unstable();
        txns.dedup();
        txns
    }

    /// Replaces chunks: removes `removed` and adds `added` (already conformed) in one atomic, durable commit.
    ///
    /// The caller holds [`ShardReplica::dml_lock`] and computed `added` from `removed`.
    pub(crate) fn replace(&self, removed: &[Arc<Chunk>], added: Vec<RecordBatch>) -> Result<()> {
        let mut batch = WriteBatch::new();
        let new_chunks = self.stage_replace(removed, added, &mut batch)?;
        self.tables.commit(batch)?;
        self.install(removed, new_chunks);
        Ok(())
    }

    /// Applies a change the shard's primary made (the replication stream): `added` chunks under the primary's numbers,
    /// each as its index entry and data as the hot store keeps them; the chunks numbered in `removed`; and the
    /// primary's next number, below which this replica never numbers. Durable and visible when it returns.
    ///
    /// Idempotent: a chunk already present is kept and a number already gone is skipped, so a change sent again
    /// after its answer was lost applies once. The caller holds [`ShardReplica::dml_lock`].
    ///
    /// # Errors
    ///
    /// [`crate::Error::Parameter`] for an index entry that does not decode or does not fit the table; store errors.
    pub(crate) fn apply(
        &self,
        added: Vec<crate::engine::ReplicatedChunk>,
        removed: &[u64],
        next_seq: u64,
    ) -> Result<()> {
        let current = self.version();
        let mut batch = WriteBatch::new();
        let (new_chunks, replaced, highest) = self.stage_added(added, &current, |_| true, next_seq, &mut batch)?;
        let removed: HashSet<u64> = removed.iter().copied().collect();
        let gone: Vec<Arc<Chunk>> =
            current.iter().filter(|c| removed.contains(&c.seq) && !replaced.contains(&c.seq)).cloned().collect();
        for c in &gone {
            batch.delete(keys::index_key(self.def.id, self.shard, c.seq));
        }
        self.next_seq.fetch_max(highest, Ordering::Relaxed);
        batch.put(keys::floor_key(self.def.id, self.shard), self.next_seq().to_be_bytes().to_vec());
        self.tables.commit(batch)?;
        self.install_restamped(&gone, new_chunks, BTreeMap::new(), &replaced);
        Ok(())
    }

    /// Adds to `batch` the data and index entries of the replicated chunks of `added` that `wanted` takes and that
    /// `current` does not hold as they are (a held chunk of the same number and another digest is another chunk,
    /// numbered anew after the shard lost every in-sync copy: it is replaced); returns their chunks, the numbers of
    /// the held chunks they replace, and the next number above every chunk of `added` and `next_seq`.
    fn stage_added(
        &self,
        added: Vec<crate::engine::ReplicatedChunk>,
        current: &Chunks,
        wanted: impl Fn(u64) -> bool,
        next_seq: u64,
        batch: &mut WriteBatch,
    ) -> Result<(Vec<Arc<Chunk>>, HashSet<u64>, u64)> {
        let mut new_chunks = Vec::new();
        let mut replaced = HashSet::new();
        let mut highest = next_seq;
        for (seq, index, data) in added {
            highest = highest.max(seq + 1);
            if !wanted(seq) {
                continue;
            }
            let meta = self.replicated_meta(seq, &index)?;
            if let Some(held) = current.get(seq) {
                if held.meta.digest() == meta.digest() {
                    continue;
                }
                replaced.insert(seq);
            }
            let key = keys::data_key(self.def.id, self.shard, seq);
            // This replica may have held the number before (dropped by a reset, or with its shard when it left the
            // node): the old chunk's deferred deletion must not take the new data.
            self.tables.reclaim(&key);
            batch.put(key, data);
            batch.put(keys::index_key(self.def.id, self.shard, seq), index);
            new_chunks.push(self.make_chunk(seq, meta));
        }
        Ok((new_chunks, replaced, highest))
    }

    /// Ends a catch-up: applies `added` (as [`ShardReplica::apply`]), then makes the committed chunks exactly those
    /// numbered in `keep` (dropping any other), settles the parts of the committed statements in `resolved` as the
    /// primary did, discards every prepared change and sets the commit point to `committed_lsn`, all in one durable
    /// batch. The caller holds [`ShardReplica::dml_lock`].
    ///
    /// # Errors
    ///
    /// [`crate::Error::Parameter`] for an index entry that does not fit the table, or a chunk in `keep` that this
    /// replica neither holds nor was sent; store errors.
    pub(crate) fn reset(
        &self,
        added: Vec<crate::engine::ReplicatedChunk>,
        keep: &[u64],
        committed_lsn: u64,
        next_seq: u64,
        resolved: &[Resolution],
        removals_settled: u64,
    ) -> Result<()> {
        let keep: HashSet<u64> = keep.iter().copied().collect();
        let current = self.version();
        let present: HashSet<u64> = current.iter().map(|c| c.seq).collect();
        let mut batch = WriteBatch::new();
        let (new_chunks, replaced, highest) =
            self.stage_added(added, &current, |seq| keep.contains(&seq), next_seq, &mut batch)?;
        // The held chunks as they stand once the replaced ones are swapped for the new.
        let current: Vec<Arc<Chunk>> = current.iter().filter(|c| !replaced.contains(&c.seq)).cloned().collect();
        let held: HashSet<u64> = present.iter().chain(new_chunks.iter().map(|c| &c.seq)).copied().collect();
        if let Some(missing) = keep.iter().find(|seq| !held.contains(seq)) {
            return Err(crate::error::Error::Parameter {
                detail: format!(
                    "catch-up of table \"{}\" shard {}: chunk {missing} was neither held nor sent",
                    self.def.name, self.shard
                ),
            });
        }
        let gone: Vec<Arc<Chunk>> = current.iter().filter(|c| !keep.contains(&c.seq)).cloned().collect();
        for c in &gone {
            batch.delete(keys::index_key(self.def.id, self.shard, c.seq));
        }
        let committed: BTreeMap<u64, u64> = resolved.iter().filter(|r| r.commit).map(|r| (r.txn, r.version)).collect();
        let mut restamped = BTreeMap::new();
        for c in current.iter().chain(new_chunks.iter()).filter(|c| keep.contains(&c.seq) && c.meta.unsettled()) {
            let mut settled = c.meta.clone();
            if let Some(version) = committed.get(&c.meta.txn).filter(|_| c.meta.pending_part()) {
                settled.visible_from = *version;
            }
            // The primary catches a replica up only while no removal is pending in the shard: a mark this replica
            // still holds was settled there (an abort, since the chunk is kept).
            settled.removed_by = 0;
            if settled != c.meta {
                batch.put(keys::index_key(self.def.id, self.shard, c.seq), chunk::encode_meta(&settled, &self.schema)?);
                restamped.insert(c.seq, settled);
            }
        }
        let removals_settled = removals_settled.max(self.removals_settled());
        batch.put(keys::removals_key(self.def.id, self.shard), removals_settled.to_be_bytes().to_vec());
        let prepared: Vec<PreparedChange> =
            self.prepared.lock().expect("prepared lock poisoned").values().cloned().collect();
        for change in &prepared {
            for (seq, _) in &change.added {
                if !held.contains(seq) {
                    batch.delete(keys::data_key(self.def.id, self.shard, *seq));
                }
            }
            batch.delete(keys::prepared_key(self.def.id, self.shard, change.lsn));
        }
        self.next_seq.fetch_max(highest, Ordering::Relaxed);
        batch.put(keys::floor_key(self.def.id, self.shard), self.next_seq().to_be_bytes().to_vec());
        batch.put(keys::commit_key(self.def.id, self.shard), committed_lsn.to_be_bytes().to_vec());
        // The chunks held now are numbered by whoever sent them, and none of them is in the cold files: the old
        // identity's mark says nothing of them.
        let mark_id = new_mark_id()?;
        batch.put(keys::mark_key(self.def.id, self.shard), mark_id.to_be_bytes().to_vec());
        self.tables.commit(batch)?;
        let new_chunks = new_chunks.into_iter().map(|c| self.restamp(c, &mut restamped)).collect();
        self.removals_settled.fetch_max(removals_settled, Ordering::AcqRel);
        self.install_restamped(&gone, new_chunks, restamped, &replaced);
        self.mark_id.store(mark_id, Ordering::Release);
        self.remark_cold();
        self.prepared.lock().expect("prepared lock poisoned").clear();
        self.committed_lsn.store(committed_lsn, Ordering::Release);
        Ok(())
    }

    /// Decodes a replicated chunk's index entry, checking it fits the table.
    fn replicated_meta(&self, seq: u64, index: &[u8]) -> Result<ChunkMeta> {
        let location = || format!("replicated chunk {seq} of table \"{}\" shard {}", self.def.name, self.shard);
        let malformed = |why: String| crate::error::Error::Parameter { detail: format!("{}: {why}", location()) };
        let meta = chunk::decode_meta(index, location).map_err(|e| malformed(e.to_string()))?;
        if meta.null_counts.len() != self.schema.fields().len() {
            return Err(malformed(format!(
                "the chunk has {} columns, the table {}",
                meta.null_counts.len(),
                self.schema.fields().len()
            )));
        }
        Ok(meta)
    }

    /// The last change of the shard's log committed here.
    pub(crate) fn committed_lsn(&self) -> u64 {
        self.committed_lsn.load(Ordering::Acquire)
    }

    /// As its primary: the commit point every in-sync backup was last told.
    pub(crate) fn pushed_commit(&self) -> u64 {
        self.pushed_commit.load(Ordering::Acquire)
    }

    /// Records that every in-sync backup was told commit point `lsn`.
    pub(crate) fn set_pushed_commit(&self, lsn: u64) {
        self.pushed_commit.fetch_max(lsn, Ordering::AcqRel);
    }

    /// The numbers of the changes prepared here and not committed, in order.
    pub(crate) fn prepared_lsns(&self) -> Vec<u64> {
        self.prepared.lock().expect("prepared lock poisoned").keys().copied().collect()
    }

    /// The last change of the shard's log this replica holds, prepared or committed: a primary numbers its next
    /// change above it.
    pub(crate) fn log_end(&self) -> u64 {
        let prepared = self.prepared.lock().expect("prepared lock poisoned");
        prepared.keys().next_back().copied().unwrap_or(0).max(self.committed_lsn())
    }

    /// Prepares change `lsn` of the shard's log, numbered at `term`, sent by the shard's primary at `epoch`: its
    /// chunks' data and its record durable, nothing visible. The caller holds [`ShardReplica::dml_lock`].
    ///
    /// - A change already prepared under the same term is not prepared again (a message sent twice); a change at or
    ///   below the commit point is refused (its sender's log is behind this replica's).
    /// - Prepared changes from `lsn` on with a term below `epoch` are discarded first: they come from an earlier
    ///   primary and the sender, the shard's primary now, does not have them (the primary numbers each change once,
    ///   and sends its changes to each backup in order).
    /// - The log has no holes: every change between the commit point and `lsn` must be prepared here, or the change
    ///   is refused (the replica missed a change and must catch up).
    ///
    /// # Errors
    ///
    /// [`crate::Error::ShardUnavailable`] for a hole in the log or a prepared change of the same number from the
    /// sender's own epoch that differs; [`crate::Error::Parameter`] for a chunk whose index entry does not fit the
    /// table; store errors.
    pub(crate) fn prepare(&self, epoch: u64, change: LoggedChange) -> Result<()> {
        let LoggedChange { lsn, term, added, removed, resolved, txn } = change;
        let refuse = |detail: String| crate::error::Error::ShardUnavailable { shard: self.shard.0, detail };
        // A primary sends only changes above its commit point, and a replica's commit point never passes its
        // primary's: a change at or below it comes from a sender whose log is behind this replica's (a node that lost
        // its disk and took itself for the primary), or is a stale copy of a message long answered.
        let committed = self.committed_lsn();
        if lsn <= committed {
            return Err(refuse(format!(
                "change {lsn} is at or below this replica's commit point {committed}: the sender's log is behind"
            )));
        }
        if let Some(held) = self.prepared.lock().expect("prepared lock poisoned").get(&lsn).map(|c| c.term) {
            if held == term {
                return Ok(());
            }
            if held >= epoch {
                return Err(refuse(format!(
                    "change {lsn} is prepared here under term {held}, the primary at epoch {epoch} sent it under \
                     term {term}"
                )));
            }
        }
        self.discard_stale(lsn, epoch)?;
        {
            let prepared = self.prepared.lock().expect("prepared lock poisoned");
            let committed = self.committed_lsn();
            if let Some(missing) = (committed + 1..lsn).find(|n| !prepared.contains_key(n)) {
                return Err(refuse(format!(
                    "change {missing} of the shard's log is missing here (committed through {committed}), change \
                     {lsn} cannot follow it; the replica must catch up"
                )));
            }
        }
        let mut batch = WriteBatch::new();
        let mut entries = Vec::with_capacity(added.len());
        let mut highest = 0;
        for (seq, index, data) in added {
            self.replicated_meta(seq, &index)?;
            highest = highest.max(seq + 1);
            let key = keys::data_key(self.def.id, self.shard, seq);
            self.tables.reclaim(&key);
            batch.put(key, data);
            entries.push((seq, index));
        }
        let change = PreparedChange { lsn, term, added: entries, removed, resolved, txn };
        batch.put(keys::prepared_key(self.def.id, self.shard, lsn), change.encode());
        self.next_seq.fetch_max(highest, Ordering::Relaxed);
        batch.put(keys::floor_key(self.def.id, self.shard), self.next_seq().to_be_bytes().to_vec());
        self.tables.commit(batch)?;
        self.prepared.lock().expect("prepared lock poisoned").insert(lsn, change);
        Ok(())
    }

    /// Discards the prepared changes numbered `from` or later whose term is below `epoch` (see
    /// [`ShardReplica::prepare`]).
    fn discard_stale(&self, from: u64, epoch: u64) -> Result<usize> {
        let stale: Vec<u64> = self
            .prepared
            .lock()
            .expect("prepared lock poisoned")
            .range(from..)
            .filter(|(_, c)| c.term < epoch)
            .map(|(lsn, _)| *lsn)
            .collect();
        self.discard(&stale)
    }

    /// The change `lsn` prepared here, as the replication stream carries it (its term, its chunks with their data,
    /// the numbers it removes): what a primary sends again to a backup that may lack it.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Corrupt`] when a chunk's data is missing; store errors.
    pub(crate) fn prepared_change(&self, lsn: u64) -> Result<Option<LoggedChange>> {
        let Some(change) = self.prepared.lock().expect("prepared lock poisoned").get(&lsn).cloned() else {
            return Ok(None);
        };
        let mut added = Vec::with_capacity(change.added.len());
        for (seq, index) in change.added {
            let data = self.tables.store.get(&keys::data_key(self.def.id, self.shard, seq))?.ok_or_else(|| {
                crate::error::Error::Corrupt {
                    location: format!("table \"{}\" shard {} prepared chunk {seq}", self.def.name, self.shard),
                    detail: "chunk data is missing".into(),
                }
            })?;
            added.push((seq, index, data));
        }
        Ok(Some(LoggedChange {
            lsn,
            term: change.term,
            added,
            removed: change.removed,
            resolved: change.resolved,
            txn: change.txn,
        }))
    }

    /// Encodes rows (already conformed) as new chunks of this shard, numbered now, written nowhere yet: an insert
    /// that becomes a change of the shard's log, a part of statement `txn` spanning shards unless 0. Blocking work
    /// (compression).
    pub(crate) fn encode_chunks(
        &self,
        batches: Vec<RecordBatch>,
        txn: u64,
        visible_from: u64,
    ) -> Result<Vec<crate::engine::ReplicatedChunk>> {
        let written_ms = crate::clock::unix_ms();
        let mut out = Vec::new();
        for b in split_rows(batches, self.tables.chunk_rows_target)? {
            let seq = self.allocate_seq();
            let data = chunk::encode_data(&b)?;
            let meta = ChunkMeta { txn, visible_from, ..chunk::compute_meta(&b, data.len() as u64, written_ms) };
            out.push((seq, chunk::encode_meta(&meta, &self.schema)?, data));
        }
        Ok(out)
    }

    /// Commits the prepared changes that follow the commit point without a hole, up to `lsn`, in order, in one
    /// durable batch, and makes them visible; returns how many were committed. The caller holds
    /// [`ShardReplica::dml_lock`].
    ///
    /// # Errors
    ///
    /// Store errors; then nothing is committed.
    pub(crate) fn commit_through(&self, lsn: u64) -> Result<usize> {
        let changes: Vec<PreparedChange> = {
            let prepared = self.prepared.lock().expect("prepared lock poisoned");
            let mut next = self.committed_lsn() + 1;
            let mut run = Vec::new();
            for (n, change) in prepared.range(..=lsn) {
                if *n < next {
                    continue;
                }
                if *n != next {
                    break;
                }
                run.push(change.clone());
                next += 1;
            }
            run
        };
        let Some(last) = changes.last().map(|c| c.lsn) else { return Ok(0) };
        let current = self.version();
        let mut present: HashSet<u64> = current.iter().map(|c| c.seq).collect();
        let mut batch = WriteBatch::new();
        let mut added: Vec<Arc<Chunk>> = Vec::new();
        let mut removed: HashSet<u64> = HashSet::new();
        // Index entries these changes rewrite (removal marks, settled statements), by number, as they stand after the
        // changes so far.
        let mut restamped: BTreeMap<u64, ChunkMeta> = BTreeMap::new();
        let mut removals_settled = self.removals_settled();
        for change in &changes {
            for (seq, index) in &change.added {
                if present.insert(*seq) {
                    batch.put(keys::index_key(self.def.id, self.shard, *seq), index.clone());
                    added.push(self.make_chunk(*seq, self.replicated_meta(*seq, index)?));
                }
            }
            for seq in &change.removed {
                if change.txn == 0 {
                    batch.delete(keys::index_key(self.def.id, self.shard, *seq));
                    removed.insert(*seq);
                } else if let Some(meta) = meta_now(&current, &added, &restamped, &removed, *seq) {
                    // A part of a statement spanning shards marks the chunks it removes; settling removes them.
                    let marked = ChunkMeta { removed_by: change.txn, ..meta };
                    batch.put(
                        keys::index_key(self.def.id, self.shard, *seq),
                        chunk::encode_meta(&marked, &self.schema)?,
                    );
                    restamped.insert(*seq, marked);
                }
            }
            for r in &change.resolved {
                let seqs: Vec<u64> = current.iter().chain(added.iter()).map(|c| c.seq).collect();
                for seq in seqs {
                    let Some(meta) = meta_now(&current, &added, &restamped, &removed, seq) else { continue };
                    let settled = if meta.pending_part() && meta.txn == r.txn {
                        r.commit.then(|| ChunkMeta { visible_from: r.version, ..meta })
                    } else if meta.removed_by == r.txn {
                        if r.commit {
                            removals_settled = removals_settled.max(r.version);
                        }
                        (!r.commit).then(|| ChunkMeta { removed_by: 0, ..meta })
                    } else {
                        continue;
                    };
                    match settled {
                        Some(settled) => {
                            batch.put(
                                keys::index_key(self.def.id, self.shard, seq),
                                chunk::encode_meta(&settled, &self.schema)?,
                            );
                            restamped.insert(seq, settled);
                        }
                        None => {
                            batch.delete(keys::index_key(self.def.id, self.shard, seq));
                            removed.insert(seq);
                        }
                    }
                }
            }
            batch.delete(keys::prepared_key(self.def.id, self.shard, change.lsn));
        }
        if removals_settled > self.removals_settled() {
            batch.put(keys::removals_key(self.def.id, self.shard), removals_settled.to_be_bytes().to_vec());
        }
        batch.put(keys::commit_key(self.def.id, self.shard), last.to_be_bytes().to_vec());
        self.tables.commit(batch)?;
        // A chunk added and removed by changes committed together never becomes visible.
        let (gone_now, added): (Vec<_>, Vec<_>) = added.into_iter().partition(|c| removed.contains(&c.seq));
        for c in gone_now {
            c.retire();
        }
        let added = added.into_iter().map(|c| self.restamp(c, &mut restamped)).collect();
        let gone: Vec<Arc<Chunk>> = current.iter().filter(|c| removed.contains(&c.seq)).cloned().collect();
        // Readers too old to see a settled removal are refused before its chunks leave.
        self.removals_settled.fetch_max(removals_settled, Ordering::AcqRel);
        self.install_restamped(&gone, added, restamped, &HashSet::new());
        let mut prepared = self.prepared.lock().expect("prepared lock poisoned");
        for change in &changes {
            prepared.remove(&change.lsn);
        }
        self.committed_lsn.fetch_max(last, Ordering::AcqRel);
        Ok(changes.len())
    }

    /// Discards every prepared change numbered above `lsn` (changes a new primary does not have: never
    /// acknowledged), deleting their records and their chunks' data; returns how many. The caller holds
    /// [`ShardReplica::dml_lock`].
    ///
    /// # Errors
    ///
    /// Store errors; then nothing is discarded.
    pub(crate) fn discard_after(&self, lsn: u64) -> Result<usize> {
        let above: Vec<u64> = self
            .prepared
            .lock()
            .expect("prepared lock poisoned")
            .range(lsn.saturating_add(1)..)
            .map(|(n, _)| *n)
            .collect();
        self.discard(&above)
    }

    /// Discards the prepared changes numbered in `lsns`: their records, and the data of their chunks that no committed
    /// chunk or kept change names (a deposed primary may have numbered a chunk as its successor did).
    fn discard(&self, lsns: &[u64]) -> Result<usize> {
        if lsns.is_empty() {
            return Ok(0);
        }
        let gone: HashSet<u64> = lsns.iter().copied().collect();
        let (changes, mut kept): (Vec<PreparedChange>, HashSet<u64>) = {
            let prepared = self.prepared.lock().expect("prepared lock poisoned");
            let changes = prepared.values().filter(|c| gone.contains(&c.lsn)).cloned().collect();
            let kept = prepared
                .values()
                .filter(|c| !gone.contains(&c.lsn))
                .flat_map(|c| c.added.iter().map(|(seq, _)| *seq))
                .collect();
            (changes, kept)
        };
        kept.extend(self.version().iter().map(|c| c.seq));
        let mut batch = WriteBatch::new();
        for change in &changes {
            for (seq, _) in &change.added {
                if !kept.contains(seq) {
                    batch.delete(keys::data_key(self.def.id, self.shard, *seq));
                }
            }
            batch.delete(keys::prepared_key(self.def.id, self.shard, change.lsn));
        }
        self.tables.commit(batch)?;
        let mut prepared = self.prepared.lock().expect("prepared lock poisoned");
        for change in &changes {
            prepared.remove(&change.lsn);
        }
        Ok(changes.len())
    }

    /// Returns every committed chunk of the shard as the replication stream carries it (number, index entry, data),
    /// in number order: what a replica that catches up is sent.
    ///
    /// # Errors
    ///
    /// Store errors, and [`crate::Error::Corrupt`] when a chunk's data is missing.
    pub(crate) fn committed_chunks(&self) -> Result<Vec<crate::engine::ReplicatedChunk>> {
        let mut out = Vec::new();
        for c in self.version().iter() {
            let data = self.tables.store.get(&c.data_key())?.ok_or_else(|| crate::error::Error::Corrupt {
                location: format!("table \"{}\" shard {} chunk {}", self.def.name, self.shard, c.seq),
                detail: "chunk data is missing".into(),
            })?;
            out.push((c.seq, chunk::encode_meta(&c.meta, &self.schema)?, data));
        }
        Ok(out)
    }

    /// The committed chunks numbered in `seqs` (in that order; numbers no longer committed are skipped), as the
    /// replication stream carries them, until their data reaches `max_bytes` (at least one chunk); returns them and
    /// how many numbers of `seqs` were gone through.
    ///
    /// # Errors
    ///
    /// Store errors, and [`crate::Error::Corrupt`] when a chunk's data is missing.
    pub(crate) fn committed_chunks_numbered(
        &self,
        seqs: &[u64],
        max_bytes: u64,
    ) -> Result<(Vec<crate::engine::ReplicatedChunk>, usize)> {
        let version = self.version();
        let by_seq: std::collections::HashMap<u64, &Arc<Chunk>> = version.iter().map(|c| (c.seq, c)).collect();
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut consumed = 0;
        for seq in seqs {
            consumed += 1;
            let Some(c) = by_seq.get(seq) else { continue };
            let data = self.tables.store.get(&c.data_key())?.ok_or_else(|| crate::error::Error::Corrupt {
                location: format!("table \"{}\" shard {} chunk {}", self.def.name, self.shard, c.seq),
                detail: "chunk data is missing".into(),
            })?;
            bytes += data.len() as u64;
            out.push((c.seq, chunk::encode_meta(&c.meta, &self.schema)?, data));
            if bytes >= max_bytes {
                break;
            }
        }
        Ok((out, consumed))
    }

    /// Marks every chunk retired after the table was dropped, so their data is deleted once no reader needs it; the
    /// data of prepared changes goes too.
    pub(crate) fn retire_all(&self) {
        let mut guard = self.version.write().expect("version lock poisoned");
        for c in guard.iter() {
            c.retire();
        }
        *guard = Arc::default();
        let prepared = std::mem::take(&mut *self.prepared.lock().expect("prepared lock poisoned"));
        let (id, shard) = (self.def.id, self.shard);
        self.tables.discard(
            prepared.values().flat_map(|c| c.added.iter().map(move |(seq, _)| keys::data_key(id, shard, *seq))),
        );
    }
}

/// An insert's reservation of sequence numbers in a shard ([`ShardReplica::pin`]); released when dropped.
#[derive(Debug)]
struct SeqPin {
    replica: Arc<ShardReplica>,
    first: u64,
}

impl Drop for SeqPin {
    fn drop(&mut self) {
        let mut pinned = self.replica.pinned.lock().expect("pin lock poisoned");
        if let Some(count) = pinned.get_mut(&self.first) {
            *count -= 1;
            if *count == 0 {
                pinned.remove(&self.first);
            }
        }
    }
}

/// One shard's part of an insert in progress. It writes chunk data as rows arrive (not yet fsync'd, not yet
/// visible); the statement's [`super::Appender`] commits the index entries of every shard in one batch. Dropping it
/// uncommitted rolls its part back.
#[derive(Debug)]
pub(crate) struct ShardAppender {
    replica: Arc<ShardReplica>,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    /// Chunks whose data is written but not committed.
    written: Vec<(u64, ChunkMeta)>,
    /// Held from the first chunk written until the insert's chunks are visible or abandoned.
    pin: Option<SeqPin>,
}

impl ShardAppender {
    /// Adds rows already conformed to the table. They become visible, all at once, when the insert commits.
    ///
    /// # Errors
    ///
    /// Fails when the store fails.
    pub(crate) fn push(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.pending_rows += batch.num_rows();
        self.pending.push(batch);
        if self.pending_rows >= self.replica.tables.chunk_rows_target {
            self.flush(false)?;
        }
        Ok(())
    }

    /// Writes full chunks of the pending rows, unsynced and not yet visible.
    fn flush(&mut self, all: bool) -> Result<()> {
        let mut batch = WriteBatch::new();
        self.encode_pending(all, &mut batch)?;
        if !batch.is_empty() {
            self.replica.tables.store.write(batch, Durability::Buffered)?;
        }
        Ok(())
    }

    /// Encodes full chunks of the pending rows (all of them when `all`) into `batch`.
    fn encode_pending(&mut self, all: bool, batch: &mut WriteBatch) -> Result<()> {
        let target = self.replica.tables.chunk_rows_target;
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
            self.pin = Some(self.replica.pin());
        }
        for c in &chunks {
            let (seq, meta) = self.replica.encode_chunk(c, crate::clock::unix_ms(), batch)?;
            self.written.push((seq, meta));
        }
        Ok(())
    }

    /// Adds the rest of the rows, and the index entries of every chunk written, to `batch`, whose durable write
    /// commits them (a statement of one small batch writes its rows and their entries in that one write).
    pub(crate) fn stage(&mut self, batch: &mut WriteBatch) -> Result<()> {
        self.encode_pending(true, batch)?;
        let replica = &self.replica;
        for (seq, meta) in &self.written {
            batch.put(keys::index_key(replica.def.id, replica.shard, *seq), chunk::encode_meta(meta, &replica.schema)?);
        }
        Ok(())
    }

    /// Makes the chunks staged by [`ShardAppender::stage`] visible, once their batch is durable.
    pub(crate) fn install(mut self) {
        let written = std::mem::take(&mut self.written);
        let chunks: Vec<Arc<Chunk>> =
            written.into_iter().map(|(seq, meta)| self.replica.make_chunk(seq, meta)).collect();
        self.replica.install(&[], chunks);
        // Visible now: tiering may take these chunks (the pin goes with `self`).
    }
}

impl Drop for ShardAppender {
    fn drop(&mut self) {
        if !self.written.is_empty() {
            let (id, shard) = (self.replica.def.id, self.replica.shard);
            self.replica.tables.discard(self.written.drain(..).map(|(seq, _)| keys::data_key(id, shard, seq)));
        }
    }
}
