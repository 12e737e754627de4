//! Tiering: a table's hot chunks on this node become a Parquet file in the cold tier, following the protocol in
//! [`crate::cold`] (upload, manifest, compare-and-set of the shard's manifest pointer through Raft, then removal of
//! the hot chunks), and loading a table's cold view when it is attached.

use std::sync::Arc;

use object_store::ObjectStore;
use quiver_meta::{ManifestPointer, MetaCommand, Rejection, ShardRecord};

use super::{Engine, options};

use crate::cold::manifest::extreme;
use crate::cold::{self, ColdFile, ColdState, ColdView, ColumnStats, Manifest, WrittenRange};
use crate::error::{Error, Result};
use crate::table::{Chunk, HotTable, ShardReplica};

/// What one tiering moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierReport {
    /// Rows moved to the cold tier.
    pub rows: u64,
    /// Hot chunks they came from.
    pub chunks: usize,
    /// Parquet files written (more than one when the rows pass `cold.target_file_bytes`).
    pub files: usize,
    /// Bytes of the Parquet files written (0 when nothing was hot).
    pub bytes: u64,
    /// The shard's manifest version after the commit (of a table of several shards: the highest of theirs).
    pub manifest_version: u64,
}

impl TierReport {
    /// Adds what a tiering of another shard of the same table moved.
    fn absorb(&mut self, other: &TierReport) {
        self.rows += other.rows;
        self.chunks += other.chunks;
        self.files += other.files;
        self.bytes += other.bytes;
        self.manifest_version = self.manifest_version.max(other.manifest_version);
    }
}

/// The longest a statement waits for another's load of a table's cold view.
const COLD_RELOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How often a tiering retries its commit when another node moved the manifest pointer meanwhile.
const COMMIT_ATTEMPTS: usize = 8;

impl Engine {
    /// The cold tier's store under this database's cluster prefix, registered with DataFusion on first use.
    pub(crate) fn cold_store(&self) -> Result<Arc<dyn ObjectStore>> {
        let mut registered = self.cold_cluster.lock().expect("cold store lock poisoned");
        if let Some(store) = &*registered {
            return Ok(Arc::clone(store));
        }
        let cluster_id = self
            .meta
            .read_local(|s| s.cluster_id().map(str::to_string))
            .ok_or_else(|| Error::Internal("the database has no cluster id yet".into()))?;
        let metered: Arc<dyn ObjectStore> = Arc::new(cold::metered::MeteredStore::new(
            self.cold.for_cluster(&cluster_id),
            Arc::clone(&self.metrics.cold_io),
        ));
        let name = format!("{}/quiver/{cluster_id}", self.cold.display());
        let cached = Arc::new(cold::cache::CachedStore::new(metered, self.cold_cache.clone(), &name));
        self.cold_reads.set(Arc::clone(&cached));
        let store: Arc<dyn ObjectStore> = cached;
        let url = datafusion::execution::object_store::ObjectStoreUrl::parse(cold::OBJECT_STORE_URL)?;
        self.ctx.runtime_env().register_object_store(url.as_ref(), Arc::clone(&store));
        *registered = Some(Arc::clone(&store));
        Ok(store)
    }

    /// The metadata's record of the shard `replica` holds.
    pub(super) fn shard_record(&self, replica: &ShardReplica) -> Result<ShardRecord> {
        self.meta.read_local(|s| s.shard(replica.shard_id()).cloned()).ok_or_else(|| {
            Error::Internal(format!("table \"{}\" has no shard {}", replica.def().name, replica.shard_id()))
        })
    }

    /// The cold view of a shard on this node, from the shard's current manifest. A store that cannot be read gives
    /// [`ColdState::Unavailable`]: the table's scans fail, naming the problem, until a later load succeeds.
    pub(crate) async fn cold_state_of(&self, replica: &ShardReplica) -> ColdState {
        match self.read_cold_view(replica).await {
            Ok(view) => ColdState::Ready(Arc::new(view)),
            Err(e) => {
                let def = replica.def();
                tracing::warn!(table = %def.name, shard = %replica.shard_id(), error = %e.report(), "the cold tier of the table cannot be read");
                ColdState::Unavailable(e.report())
            }
        }
    }

    async fn read_cold_view(&self, replica: &ShardReplica) -> Result<ColdView> {
        let Some(pointer) = self.shard_record(replica)?.manifest else {
            return Ok(ColdView::default());
        };
        Ok(ColdView::of(&self.manifest_of(&pointer).await?, replica.mark_id()))
    }

    /// Reads the manifest `pointer` names, with the pointer's [`Manifest::txn_version`].
    pub(super) async fn manifest_of(&self, pointer: &ManifestPointer) -> Result<Manifest> {
        let mut manifest = self.manifest_at(&pointer.location).await?;
        manifest.txn_version = pointer.txn_version;
        Ok(manifest)
    }

    /// Reads the manifest a pointer names, from this cluster's cold store.
    pub(super) async fn manifest_at(&self, location: &str) -> Result<Manifest> {
        cold::read_manifest(&self.cold_store()?, self.cold.display(), location, &self.manifest_segments).await
    }

    /// Stores `next`, the shard's next manifest version, in the cold store; returns where (see
    /// [`cold::write_manifest`]).
    pub(super) async fn store_manifest(&self, store: &Arc<dyn ObjectStore>, next: &mut Manifest) -> Result<String> {
        cold::write_manifest(store, self.cold.display(), next, &self.manifest_segments).await
    }

    /// Removes the hot chunks of `table` that its cold view says are tiered: left behind by a crash between a
    /// tiering's commit and their removal, or by a view advanced while the shard was busy (scans skip them meanwhile).
    /// The caller holds the shard's [`ShardReplica::dml_lock`]: a replicated change or a catch-up may otherwise
    /// replace a chunk of the same number between the read of the version and the removal's commit, whose index
    /// delete and retirement would then take the new chunk.
    pub(crate) async fn remove_tiered_chunks(&self, table: &Arc<ShardReplica>) {
        let ColdState::Ready(view) = table.cold() else { return };
        let covered: Vec<Arc<Chunk>> = table.version().iter().filter(|c| c.seq <= view.hot_through).cloned().collect();
        if covered.is_empty() {
            return;
        }
        let t = Arc::clone(table);
        match crate::blocking::run("remove tiered chunks", move || t.replace(&covered, Vec::new())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(table = %table.def().name, error = %e.report(), "removing tiered hot chunks failed")
            }
        }
    }

    /// [`Engine::remove_tiered_chunks`] for a caller that does not hold the shard's lock: done when the lock is free
    /// and a chunk is covered, else left to a later call (scans skip covered chunks meanwhile).
    pub(crate) async fn remove_tiered_chunks_if_idle(&self, table: &Arc<ShardReplica>) {
        let ColdState::Ready(view) = table.cold() else { return };
        if table.version().first().is_none_or(|c| c.seq > view.hot_through) {
            return;
        }
        let Ok(_serialized) = table.dml_lock.try_lock() else { return };
        self.remove_tiered_chunks(table).await;
    }

    /// Every attached native table.
    pub(super) fn hot_tables(&self) -> Vec<Arc<HotTable>> {
        self.hot.read().expect("hot table map poisoned").values().cloned().collect()
    }

    /// Every shard replica of every attached native table.
    pub(super) fn replicas(&self) -> Vec<Arc<ShardReplica>> {
        self.hot_tables().iter().flat_map(|t| t.shards().iter().cloned()).collect()
    }

    /// Retries loading the cold view of tables whose last load failed (the store was unreachable). Loads of one
    /// table are serialized, and a load installs its result under the table's lock, so a load that started while the
    /// store was down and ends late cannot undo a later one that succeeded (the simulation found a table whose scans
    /// failed after the store was back, because a stalled load from the outage landed last). A statement waits for a
    /// load in flight at most [`COLD_RELOAD_WAIT`], so that an outage of the store does not hold up statements.
    pub(crate) async fn reload_unavailable_cold(&self) {
        self.reload_unavailable(self.replicas()).await;
    }

    /// [`Engine::reload_unavailable_cold`] for the replicas `replicas`.
    async fn reload_unavailable(&self, replicas: Vec<Arc<ShardReplica>>) {
        for table in replicas {
            if !matches!(table.cold(), ColdState::Unavailable(_)) {
                continue;
            }
            let Ok(_loading) = tokio::time::timeout(COLD_RELOAD_WAIT, table.cold_lock.lock()).await else { continue };
            if !matches!(table.cold(), ColdState::Unavailable(_)) {
                continue;
            }
            let state = self.cold_state_of(&table).await;
            let ready = matches!(state, ColdState::Ready(_));
            table.set_cold(state);
            if ready {
                self.remove_tiered_chunks_if_idle(&table).await;
            }
        }
    }

    /// The shard's current manifest pointer (read linearizably) and manifest (empty before the first commit).
    pub(super) async fn shard_manifest(
        &self,
        table: &ShardReplica,
        shard: &ShardRecord,
    ) -> Result<(Option<ManifestPointer>, Manifest)> {
        let pointer = self.meta.read_state(|s| s.shard(shard.shard_id).map(|r| r.manifest.clone())).await?.flatten();
        let manifest = match &pointer {
            Some(p) => self.manifest_of(p).await?,
            None => {
                let def = table.def();
                Manifest::empty(def.id.0, &def.name, shard.shard_id.0, table.schema().as_ref().clone())
            }
        };
        Ok((pointer, manifest))
    }

    /// Makes `manifest` the table's cold view on this node when it is newer, and removes the hot chunks it covers; the
    /// caller holds the shard's [`ShardReplica::dml_lock`].
    pub(super) async fn adopt(&self, table: &Arc<ShardReplica>, manifest: &Manifest) {
        if matches!(table.cold(), ColdState::Ready(view) if view.version >= manifest.version) {
            return;
        }
        table.advance_cold(Arc::new(ColdView::of(manifest, table.mark_id())));
        self.remove_tiered_chunks(table).await;
    }

    /// [`Engine::adopt`] for a caller that does not hold the shard's lock: the view advances at once, the chunks it
    /// covers leave when the lock is free ([`Engine::remove_tiered_chunks_if_idle`]).
    async fn adopt_unlocked(&self, table: &Arc<ShardReplica>, manifest: &Manifest) {
        if !matches!(table.cold(), ColdState::Ready(view) if view.version >= manifest.version) {
            table.advance_cold(Arc::new(ColdView::of(manifest, table.mark_id())));
        }
        self.remove_tiered_chunks_if_idle(table).await;
    }

    /// Moves `shard`'s manifest pointer from `expected` to `next`, stored at `location`, by compare-and-set through
    /// Raft: `true` once committed, `false` when another commit moved the pointer first. A commit whose outcome is
    /// unknown is settled before this returns (`Engine::settle_proposal`), holding the caller's lock.
    /// `uploaded_from_ms` is when this node began uploading the objects `next` names, itself included (unix ms): a
    /// garbage collection begun since may have fenced them off (`MetaCommand::FenceColdUploads`), and the commit is
    /// then refused ([`Error::Meta`]) rather than name objects it deletes.
    ///
    /// With `txn` other than 0, `next` is only proposed, as the shard's part of statement `txn` spanning shards
    /// (`quiver_meta::ShardRecord::pending`): `true` once the proposal is recorded; the statement's decision makes it
    /// current or drops it.
    pub(super) async fn propose_manifest(
        &self,
        shard: &ShardRecord,
        expected: Option<&ManifestPointer>,
        next: &Manifest,
        location: String,
        uploaded_from_ms: u64,
        txn: u64,
    ) -> Result<bool> {
        let command = MetaCommand::SetShardManifest {
            shard_id: shard.shard_id,
            expected_version: expected.map(|p| p.version),
            manifest: ManifestPointer::new(next.version, location.clone()),
            uploaded_from_ms,
            // A writer deposed meanwhile (a failover, a copy added or dropped) is refused: its successor may have
            // changed rows its files list.
            expected_epoch: Some(shard.epoch),
            tiered_through: next.tiered_through(),
            txn,
        };
        let outcome = match self.meta.propose(command.clone()).await {
            Ok(response) => response.outcome.map(|_| ()),
            // The pointer may have moved unanswered. The caller holds the shard's lock, and whoever takes it next
            // (a catch-up sending the chunks above the cold mark, another tiering) must see the outcome: settled
            // here, and a pointer this commit moved counts as committed.
            Err(_) => {
                let settled = self.settle_proposal(command, "a commit of a shard's cold files").await;
                let ours = |p: &ManifestPointer| p.version == next.version && p.location == location;
                let landed = self.meta.read_local(|s| {
                    s.shard(shard.shard_id).is_some_and(|r| {
                        r.manifest.as_ref().is_some_and(ours)
                            || r.pending.as_ref().is_some_and(|p| p.txn == txn && ours(&p.manifest))
                    })
                });
                if landed { Ok(()) } else { settled.outcome.map(|_| ()) }
            }
        };
        match outcome {
            Ok(()) if txn != 0 => {
                // This node's statements judge the shard by its own copy of the metadata: the proposal must be
                // there before the caller lets the shard's lock go (the leader may have applied it alone).
                self.meta.read_state(|_| ()).await?;
                Ok(true)
            }
            Ok(()) => {
                // For readers of the bucket alone; the collector writes it again if this fails.
                let marked = match self.cold_store() {
                    Ok(store) => {
                        let shard = (next.table_id, next.shard_id);
                        cold::mark_commit(&store, self.cold.display(), shard, next.version, &location).await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = marked {
                    tracing::warn!(table = %next.table, version = next.version, error = %e.report(), "writing a commit marker failed");
                }
                Ok(true)
            }
            Err(Rejection::ManifestVersionConflict { .. }) => Ok(false),
            Err(other) => Err(Error::Meta(other.into())),
        }
    }

    /// Brings every table's cold view up to its shard's manifest pointer as this node has applied it. Run before each
    /// statement: a view must never trail the pointer, because the pointer may cover hot chunks that are gone (a
    /// node that restarts after a tiering whose commit its replica had not applied yet loads the older manifest, and
    /// the tiered rows would be in neither its view nor its hot store).
    pub(crate) async fn follow_manifests(&self) {
        self.follow(self.replicas()).await;
    }

    /// Brings the cold views of `replicas` up to their manifest pointers, loading views whose last load failed:
    /// before a statement reads or changes their table (its work grows with the table's shards, not with the number
    /// of tables).
    pub(crate) async fn follow_shards(&self, replicas: &[Arc<ShardReplica>]) {
        self.reload_unavailable(replicas.to_vec()).await;
        self.follow(replicas.to_vec()).await;
    }

    /// [`Engine::follow_manifests`] for the replicas `replicas`.
    async fn follow(&self, replicas: Vec<Arc<ShardReplica>>) {
        for table in replicas {
            let ColdState::Ready(view) = table.cold() else { continue };
            let shard = table.shard_id();
            let Some(pointer) = self.meta.read_local(|s| s.shard(shard).and_then(|r| r.manifest.clone())) else {
                continue;
            };
            if pointer.version <= view.version {
                // Chunks an earlier call left covered, while the shard was busy.
                self.remove_tiered_chunks_if_idle(&table).await;
                continue;
            }
            match self.manifest_of(&pointer).await {
                Ok(manifest) => self.adopt_unlocked(&table, &manifest).await,
                Err(e) => {
                    // Scans of the table fail, naming the problem, until a statement loads it, unless a load
                    // reached the pointer meanwhile.
                    tracing::warn!(table = %table.def().name, error = %e.report(), "the cold tier of the table cannot be read");
                    let _loading = table.cold_lock.lock().await;
                    if !matches!(table.cold(), ColdState::Ready(v) if v.version >= pointer.version) {
                        table.set_cold(ColdState::Unavailable(e.report()));
                    }
                }
            }
        }
    }

    /// The background tierer's round: applies each table's policy on this node (the table's options, else
    /// `hot_bytes_max` when given, else the `[cold]` setting) and returns the tables tiered:
    ///
    /// - `ttl`: rows written longer ago are dropped ([`Engine::expire`]);
    /// - `hot_bytes_max`: once the table's hot rows take more than this, all of them are tiered (0: never by size);
    /// - `tier_after`: hot rows written longer ago than this are tiered;
    /// - compaction: once the table has `cold.compact_min_files` small files on this node, they are merged
    ///   ([`Engine::compact`]).
    ///
    /// A table that fails (the store is down) is logged and left hot; the next round tries again. While it fails,
    /// inserts into a table whose hot rows waiting to be tiered pass the write limit (`cold.write_limit`, or four
    /// times the table's `hot_bytes_max`) are refused; the first round that tiers it (or finds it within its
    /// policy) lets them in again.
    pub async fn apply_tier_policies(&self, hot_bytes_max: Option<u64>) -> Vec<(String, TierReport)> {
        let default_limit = hot_bytes_max.unwrap_or(self.cold.hot_bytes_max());
        // Views whose last load failed are loaded again first: a shard whose view is unavailable cannot tier. Copies
        // that are not their shard's primary follow its tierings here, dropping the chunks its files now hold.
        self.reload_unavailable_cold().await;
        self.follow_manifests().await;
        let catalog = self.catalog();
        let now = crate::clock::unix_ms();
        let mut tiered = Vec::new();
        for table in self.hot_tables() {
            let def = table.def();
            let name = def.name.clone();
            let table_options =
                catalog.table(&def.name).filter(|d| d.id == def.id).map(|d| d.options.clone()).unwrap_or_default();
            if let Some(ttl) = options::ttl(&table_options)
                && let Err(e) = self.expire(&name, now.saturating_sub(ttl)).await
            {
                tracing::warn!(table = %name, error = %e.report(), "retention failed; it is retried next round");
            }
            let limit = options::hot_bytes_max(&table_options).unwrap_or(default_limit);
            let aged_before = options::tier_after(&table_options).map(|after| now.saturating_sub(after));
            // Chunks a cold view covers are skipped by scans and removed; without a view, count every chunk.
            let waiting: Vec<Vec<Arc<Chunk>>> = table
                .shards()
                .iter()
                .map(|shard| {
                    let through = match shard.cold() {
                        ColdState::Ready(view) => view.hot_through,
                        ColdState::Unavailable(_) => 0,
                    };
                    shard.version().iter().filter(|c| c.seq > through).cloned().collect()
                })
                .collect();
            let hot: u64 = waiting.iter().flatten().map(|c| c.meta.data_bytes).sum();
            let over = limit > 0 && hot > limit;
            let mut report = TierReport::default();
            let mut failure = None;
            // The hot bytes still waiting once this round is done: what shards that tiered moved no longer counts.
            let mut left = hot;
            for (shard, waiting) in table.shards().iter().zip(&waiting) {
                let aged = aged_before.is_some_and(|before| waiting.iter().any(|c| c.meta.written_ms <= before));
                if !over && !aged {
                    continue;
                }
                match self.tier_shard(shard, if over { None } else { aged_before }).await {
                    Ok(r) => {
                        report.absorb(&r);
                        let still: std::collections::HashSet<u64> = shard.version().iter().map(|c| c.seq).collect();
                        let moved: u64 =
                            waiting.iter().filter(|c| !still.contains(&c.seq)).map(|c| c.meta.data_bytes).sum();
                        left = left.saturating_sub(moved);
                    }
                    Err(e) => {
                        tracing::warn!(table = %name, shard = %shard.shard_id(), error = %e.report(), "background tiering failed; the rows stay hot");
                        failure.get_or_insert(e);
                    }
                }
            }
            let refuse = failure.and_then(|e| {
                let write_limit = match (self.cold.write_limit(), limit) {
                    (0, 0) => None,
                    (0, limit) => Some(limit.saturating_mul(4)),
                    (set, _) => Some(set),
                };
                write_limit.filter(|&w| left > w).map(|write_limit| {
                    format!(
                        "table \"{name}\" has {left} bytes of hot rows on this node waiting for the cold tier, more \
                         than cold.write_limit ({write_limit}); inserts resume once tiering succeeds ({})",
                        e.report()
                    )
                })
            });
            for shard in table.shards() {
                shard.refuse_writes(refuse.clone());
            }
            if report.rows > 0 {
                tiered.push((name.clone(), report));
            }
            for shard in table.shards() {
                if self.compaction_due(shard)
                    && let Err(e) = self.compact_shard(shard, self.cold.compact_min_files()).await
                {
                    tracing::warn!(table = %name, shard = %shard.shard_id(), error = %e.report(), "compaction failed; it is retried next round");
                }
            }
        }
        tiered
    }

    /// Moves the hot chunks of table `name` on this node to the cold tier as Parquet files (cut at
    /// `cold.target_file_bytes`), and returns what moved. Safe to run again after any failure: nothing is lost or
    /// counted twice (see [`crate::cold`]).
    ///
    /// It starts from the shard's current manifest, not from this node's view of it: a commit of an earlier
    /// tiering whose answer was lost (it may even land while this one runs) has moved this store's mark, and the
    /// chunks under it must not be written again.
    ///
    /// # Errors
    ///
    /// [`Error::TableNotFound`] for an unknown table, [`Error::ColdUnavailable`] when the object store fails (the
    /// rows stay hot), and the metadata group's errors when the commit cannot be made.
    pub async fn tier(&self, name: &str) -> Result<TierReport> {
        self.tier_written_before(name, None).await
    }

    /// [`Engine::tier`] of the chunks written at or before `cutoff` (milliseconds since the Unix epoch; `None`: all):
    /// the longest run of them from the oldest chunk on, since the cold view's mark covers every chunk numbered below
    /// it.
    async fn tier_written_before(&self, name: &str, cutoff: Option<u64>) -> Result<TierReport> {
        self.see_acknowledged_ddl().await?;
        self.reload_unavailable_cold().await;
        let table = self.native_table(name)?;
        let mut report = TierReport::default();
        for shard in table.shards() {
            report.absorb(&self.tier_shard(shard, cutoff).await?);
        }
        Ok(report)
    }

    /// Tiers one shard's hot chunks on this node written at or before `cutoff` (`None`: all).
    async fn tier_shard(&self, table: &Arc<ShardReplica>, cutoff: Option<u64>) -> Result<TierReport> {
        let name = table.def().name.as_str();
        let _serialized = table.dml_lock.lock().await;
        if let ColdState::Unavailable(detail) = table.cold() {
            return Err(Error::ColdUnavailable { detail });
        }
        let shard = self.shard_record(table)?;
        // Only the shard's primary tiers it, under the shard's own mark (chunk numbers are the shard's, the same on
        // every copy): every copy's view then skips the chunks the files hold, and drops them when it follows the
        // manifest. A copy that tiered on its own would keep rows its primary deleted. A shard not placed here (it
        // moved away, and its rows here wait to be deleted) is tiered by its holder.
        // A shard whose manifest a statement spanning shards proposed waits for its decision.
        if shard.primary != self.node_id || !shard.in_sync.contains(&self.node_id) || shard.pending.is_some() {
            return Ok(TierReport::default());
        }
        let store = self.cold_store()?;
        let shard_id = shard.shard_id.0;
        let kept_changing =
            || Error::ColdUnavailable { detail: format!("the manifest of table \"{name}\" kept changing; tier again") };

        let mut attempts = 0;
        let (manifest, chunks, file_count, rows, bytes) = 'fresh: loop {
            attempts += 1;
            if attempts > COMMIT_ATTEMPTS {
                return Err(kept_changing());
            }
            let (mut pointer, mut current) = self.shard_manifest(table, &shard).await?;
            self.adopt(table, &current).await;
            let mark = cold::mark_of(&current.hot_through, table.mark_id());
            // Only chunks below every number an insert in progress may still commit: the mark must not cover a
            // chunk that appears later, nor a part of a statement spanning shards not settled yet.
            let (version, settled_below) = table.tierable();
            let mut chunks: Vec<Arc<Chunk>> =
                version.iter().filter(|c| c.seq > mark && c.seq < settled_below).cloned().collect();
            if let Some(cutoff) = cutoff {
                chunks.sort_by_key(|c| c.seq);
                let aged = chunks.iter().take_while(|c| c.meta.written_ms <= cutoff).count();
                chunks.truncate(aged);
            }
            if chunks.is_empty() {
                return Ok(TierReport { rows: 0, chunks: 0, files: 0, bytes: 0, manifest_version: current.version });
            }
            // The garbage collector deletes unreferenced objects older than its grace period: this attempt's
            // objects must be committed well within it.
            let began = tokio::time::Instant::now();
            let began_ms = crate::clock::unix_ms();

            // 1. The files: the chunks' rows, in sequence order, cut where their hot size passes the target file
            // size (Parquet is usually smaller), each under a name of its own.
            let mut files = Vec::new();
            for run in file_runs(&chunks, self.cold.target_file_bytes()) {
                files.push(self.write_tiered(&store, table, shard_id, run).await?);
            }
            let rows: u64 = files.iter().map(|f| f.rows).sum();
            let bytes: u64 = files.iter().map(|f| f.bytes).sum();

            // 2 and 3. The next manifest, then the pointer, by compare-and-set; another node's commit in between
            // means reading its manifest and trying again.
            loop {
                let mut next = current.with_files(files.clone());
                let location = self.store_manifest(&store, &mut next).await?;
                if began.elapsed() > self.cold.gc_grace() / 2 {
                    return Err(Error::ColdUnavailable {
                        detail: format!(
                            "tiering table \"{name}\" took longer than half of cold.gc_grace ({:?}); its upload is \
                             left for the garbage collector and the rows stay hot: tier again",
                            self.cold.gc_grace()
                        ),
                    });
                }
                if self.propose_manifest(&shard, pointer.as_ref(), &next, location, began_ms, 0).await? {
                    break 'fresh (next, chunks, files.len(), rows, bytes);
                }
                attempts += 1;
                if attempts > COMMIT_ATTEMPTS {
                    return Err(kept_changing());
                }
                (pointer, current) = self.shard_manifest(table, &shard).await?;
                if cold::mark_of(&current.hot_through, table.mark_id()) != mark {
                    // An earlier tiering of ours landed meanwhile: start again from what it committed.
                    continue 'fresh;
                }
            }
        };

        // 4. Scans now read the file; the hot chunks go.
        table.advance_cold(Arc::new(ColdView::of(&manifest, table.mark_id())));
        let t = Arc::clone(table);
        let removed = chunks.clone();
        crate::blocking::run("remove tiered chunks", move || t.replace(&removed, Vec::new())).await??;
        self.metrics.rows_tiered.add(rows);
        tracing::info!(table = name, rows, chunks = chunks.len(), bytes, version = manifest.version, "tiered");
        Ok(TierReport { rows, chunks: chunks.len(), files: file_count, bytes, manifest_version: manifest.version })
    }
}

/// Cuts `chunks` (in sequence order) into runs for one file each: a run ends once its chunks' hot bytes reach
/// `target` (0: one run).
fn file_runs(chunks: &[Arc<Chunk>], target: u64) -> Vec<&[Arc<Chunk>]> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, c) in chunks.iter().enumerate() {
        bytes += c.meta.data_bytes;
        if target > 0 && bytes >= target {
            runs.push(&chunks[start..=i]);
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < chunks.len() {
        runs.push(&chunks[start..]);
    }
    runs
}

impl Engine {
    /// How `table`'s cold files are written: sorted by its primary key, with a bloom filter on each key column.
    pub(super) fn file_layout(&self, table: &ShardReplica) -> cold::FileLayout {
        let schema = table.schema();
        let def = table.def();
        let primary: Vec<usize> = def.primary_key.iter().filter_map(|k| schema.index_of(k).ok()).collect();
        // The catalog's options, which ALTER TABLE changes (the attached definition is the one at attach time).
        let defined = self
            .meta
            .read_local(|s| s.catalog().table(&def.name).filter(|d| d.id == def.id).map(|d| d.options.clone()));
        let sort = defined.and_then(|o| options::sort_key(&o, &schema)).unwrap_or_else(|| primary.clone());
        cold::FileLayout {
            row_group_rows: self.cold.row_group_rows(),
            sort,
            bloom: primary,
            sorts: Arc::clone(&self.sorts),
        }
    }

    /// Writes one run of hot chunks as a Parquet file and returns its manifest entry.
    async fn write_tiered(
        &self,
        store: &Arc<dyn ObjectStore>,
        table: &ShardReplica,
        shard_id: u64,
        run: &[Arc<Chunk>],
    ) -> Result<ColdFile> {
        let schema = table.schema();
        let max_seq = run.iter().map(|c| c.seq).max().unwrap_or(0);
        let batches = futures::stream::iter(run.iter().map(|chunk| table.read_chunk(chunk, None, &schema)));
        let path = Manifest::data_path(
            table.def().id.0,
            shard_id,
            self.node_id,
            table.mark_id(),
            max_seq,
            crate::random_u64()?,
        );
        let layout = self.file_layout(table);
        let bytes = cold::write_parquet(store, self.cold.display(), &path, &schema, batches, &layout).await?;
        Ok(ColdFile {
            path,
            node: self.node_id,
            store: table.mark_id(),
            rows: run.iter().map(|c| c.meta.rows).sum(),
            bytes,
            max_seq,
            columns: file_columns(run, schema.fields().len()),
            written_ms: Some(WrittenRange {
                min: run.iter().map(|c| c.meta.written_ms).min().unwrap_or(0),
                max: run.iter().map(|c| c.meta.written_ms).max().unwrap_or(0),
            }),
            visible_from: run.iter().map(|c| c.meta.visible_from).max().unwrap_or(0),
        })
    }
}

/// A file's column statistics from those of the chunks it holds: a bound is known when every chunk with a non-NULL
/// value in the column knows it.
fn file_columns(chunks: &[Arc<Chunk>], columns: usize) -> Vec<ColumnStats> {
    (0..columns)
        .map(|i| {
            let nulls: u64 = chunks.iter().map(|c| c.meta.null_counts[i]).sum();
            let with_values: Vec<&Arc<Chunk>> = chunks.iter().filter(|c| c.meta.null_counts[i] < c.meta.rows).collect();
            let min = extreme(with_values.iter().map(|c| &c.meta.min[i]), std::cmp::Ordering::Less);
            let max = extreme(with_values.iter().map(|c| &c.meta.max[i]), std::cmp::Ordering::Greater);
            ColumnStats::from_values(&min, &max, nulls)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, RecordBatch};
    use arrow::datatypes::Int64Type;

    use super::*;
    use object_store::ObjectStoreExt;

    use crate::cold::ColdConfig;
    use crate::engine::{EngineOptions, ExpireReport, StorageLocation};

    async fn open(dir: &std::path::Path) -> Arc<Engine> {
        open_with(dir, ColdConfig::default()).await
    }

    async fn open_with(dir: &std::path::Path, cold: ColdConfig) -> Arc<Engine> {
        open_options(dir, EngineOptions { chunk_rows_target: 100, cold, ..EngineOptions::default() }).await
    }

    /// Opens a database whose tables have one shard unless the options say otherwise: these tests look at the
    /// chunks and files of one shard (`multi_shard_tables_tier_each_shard_into_its_own_manifest` covers several).
    async fn open_options(dir: &std::path::Path, mut options: EngineOptions) -> Arc<Engine> {
        if options.sharding.shards_per_table == 0 {
            options.sharding.shards_per_table = 1;
        }
        Engine::open(StorageLocation::Path(dir.to_path_buf()), options).await.expect("open")
    }

    /// `count(*)`, `sum(x)`, `count(DISTINCT x)` of table `t`.
    async fn totals(engine: &Engine) -> (i64, i64, i64) {
        let batches: Vec<RecordBatch> = engine
            .execute_one("SELECT count(*), sum(x), count(DISTINCT x) FROM t")
            .await
            .expect("query")
            .collect()
            .await
            .expect("rows");
        let value = |i: usize| batches[0].column(i).as_primitive::<Int64Type>().value(0);
        (value(0), value(1), value(2))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delete_over_shards_with_cold_files_is_one_statement_here_too_and_an_orphaned_part_is_aborted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = EngineOptions { chunk_rows_target: 100, ..EngineOptions::default() };
        options.sharding.shards_per_table = 2;
        let engine = open_options(dir.path(), options).await;
        engine.execute_one("CREATE TABLE t (x BIGINT PRIMARY KEY)").await.expect("create");
        insert(&engine, 1, 1000).await;
        assert_eq!(engine.tier("t").await.expect("tier").rows, 1000);
        insert(&engine, 1001, 1200).await;
        let pointers = |engine: &Engine| {
            let id = engine.hot_table("t").expect("t").def().id;
            engine
                .meta
                .read_local(|s| s.table_shards(id).map(|r| (r.manifest.clone(), r.pending.clone())).collect::<Vec<_>>())
        };
        // Both shards' files change in one statement: their manifests become current at one decision.
        let before = engine.metrics().transactions_committed.get();
        engine.execute_one("DELETE FROM t WHERE x % 2 = 0").await.expect("delete");
        assert_eq!(engine.metrics().transactions_committed.get(), before + 1, "one statement spanning shards");
        let odd: i64 = (1..=1200).filter(|x| x % 2 == 1).sum();
        assert_eq!(totals(&engine).await, (600, odd, 600));
        let decided: Vec<u64> =
            pointers(&engine).iter().map(|(m, _)| m.as_ref().map_or(0, |m| m.txn_version)).collect();
        assert!(decided.iter().all(|v| *v > 0 && *v == decided[0]), "{decided:?}");
        // A part whose statement nobody decides (its caller gave up on it, or the process stopped) is aborted by the
        // next statement that needs its shard: the rows it removed stay, and that statement applies. Here the part
        // proposes a manifest without the shard's files.
        let table = engine.hot_table("t").expect("t");
        let replica = &table.shards()[0];
        let record = engine.shard_record(replica).expect("shard");
        let (pointer, current) = engine.shard_manifest(replica, &record).await.expect("manifest");
        let mut next = current.with_files(Vec::new());
        let store = engine.cold_store().expect("store");
        let location = engine.store_manifest(&store, &mut next).await.expect("store");
        let uploaded = crate::clock::unix_ms();
        let proposed = engine.propose_manifest(&record, pointer.as_ref(), &next, location, uploaded, 0xdead).await;
        assert!(proposed.expect("an orphaned part"), "recorded");
        assert_eq!(pointers(&engine).iter().filter(|(_, p)| p.is_some()).count(), 1, "its manifest is pending");
        assert_eq!(totals(&engine).await, (600, odd, 600), "an undecided part is not seen");
        engine.execute_one("DELETE FROM t WHERE x = 1").await.expect("delete");
        assert_eq!(engine.meta.read_local(|s| s.transaction(0xdead)).map(|d| d.commit), Some(false));
        assert!(pointers(&engine).iter().all(|(_, p)| p.is_none()), "the abort dropped the proposal");
        assert_eq!(totals(&engine).await, (599, odd - 1, 599));
    }

    async fn insert(engine: &Engine, from: i64, to: i64) {
        engine
            .execute_one(&format!("INSERT INTO t SELECT value FROM generate_series({from}, {to})"))
            .await
            .expect("insert");
    }

    /// A database in a new directory whose table `t (x BIGINT)` holds `1..=rows`.
    async fn table_t(rows: i64) -> (tempfile::TempDir, Arc<Engine>) {
        table_t_with(rows, ColdConfig::default()).await
    }

    /// [`table_t`] with the given `[cold]` settings.
    async fn table_t_with(rows: i64, cold: ColdConfig) -> (tempfile::TempDir, Arc<Engine>) {
        table_t_options(rows, EngineOptions { chunk_rows_target: 100, cold, ..EngineOptions::default() }).await
    }

    /// [`table_t`] with the given engine options.
    async fn table_t_options(rows: i64, options: EngineOptions) -> (tempfile::TempDir, Arc<Engine>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = open_options(dir.path(), options).await;
        engine.execute_one("CREATE TABLE t (x BIGINT NOT NULL)").await.expect("create");
        insert(&engine, 1, rows).await;
        (dir, engine)
    }

    fn expected(n: i64) -> (i64, i64, i64) {
        (n, n * (n + 1) / 2, n)
    }

    /// `count(*)` and `sum(x)` of the rows of `t` that `filter` keeps, and the GET requests the query made.
    async fn filtered(engine: &Engine, filter: &str) -> ((i64, i64), u64) {
        let before = engine.metrics().cold_io.totals();
        let sql = format!("SELECT count(*), coalesce(sum(x), 0) FROM t WHERE {filter}");
        let batches: Vec<RecordBatch> = engine.execute_one(&sql).await.expect("query").collect().await.expect("rows");
        let value = |i: usize| batches[0].column(i).as_primitive::<Int64Type>().value(0);
        ((value(0), value(1)), engine.metrics().cold_io.totals().since(&before).gets)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scans_skip_files_and_row_groups_that_filters_rule_out_and_read_each_footer_once() {
        // Without the read cache and the column cache, so that every column chunk a scan decodes is a GET; files of
        // three row groups of 100 rows.
        let cold =
            ColdConfig { cache_memory: crate::config::ByteSize(0), row_group_rows: 100, ..ColdConfig::default() };
        let options = EngineOptions { chunk_rows_target: 100, cold, column_cache_bytes: 0, ..EngineOptions::default() };
        let (_dir, engine) = table_t_options(300, options).await;
        engine.tier("t").await.expect("tier 1..=300");
        insert(&engine, 301, 600).await;
        engine.tier("t").await.expect("tier 301..=600");
        insert(&engine, 601, 900).await;
        engine.tier("t").await.expect("tier 601..=900");
        let sum = |from: i64, to: i64| (to - from + 1, (from..=to).sum::<i64>());

        let (all, first_gets) = filtered(&engine, "x > 0").await;
        assert_eq!(all, sum(1, 900));
        assert!(first_gets >= 12, "three footers and nine row groups: {first_gets}");
        let (again, warm_gets) = filtered(&engine, "x > 0").await;
        assert_eq!(again, all);
        assert_eq!(warm_gets, 9, "one GET per row group, footers from the cache: {warm_gets} after {first_gets}");

        // The manifest's statistics leave one file, and its footer's statistics two of its row groups.
        let (some, pruned_gets) = filtered(&engine, "x > 750").await;
        assert_eq!(some, sum(751, 900));
        assert_eq!(pruned_gets, 2, "two row groups of one file are read");
        let (text, _) = explain_analyze(&engine, "SELECT sum(x) FROM t WHERE x > 750").await;
        assert!(text.contains("files=1/3 (pruned 2), row_groups=2/3 (pruned 1)"), "{text}");
        assert_eq!(metric(&text, "row_groups_decoded"), 2, "{text}");
        let (none, no_gets) = filtered(&engine, "x > 10000").await;
        assert_eq!((none, no_gets), ((0, 0), 0), "no file can match");
        let (nulls, _) = filtered(&engine, "x IS NULL").await;
        assert_eq!(nulls, (0, 0));
    }

    /// The ids of the cold file at `path`, in file order, and whether every row group declares itself sorted by
    /// `id` and has a bloom filter on it.
    async fn ids_in_file(engine: &Engine, path: &str) -> (Vec<i64>, bool) {
        let (ids, sorted, blooms) = file_column(engine, path, 0).await;
        (ids, sorted == [0] && blooms.first() == Some(&true))
    }

    /// The paths of table `name`'s cold files.
    async fn cold_paths(engine: &Engine, name: &str) -> Vec<String> {
        let sql = format!("SELECT path FROM system.tier_files WHERE table_name = '{name}' ORDER BY path");
        let batches: Vec<RecordBatch> = engine.execute_one(&sql).await.expect("query").collect().await.expect("rows");
        batches.iter().flat_map(|b| b.column(0).as_string::<i32>().iter().flatten().map(str::to_string)).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_are_sorted_by_the_primary_key_and_key_lookups_skip_row_groups_by_bloom_filter() {
        let cold = ColdConfig { row_group_rows: 100, ..ColdConfig::default() };
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = open_with(dir.path(), cold).await;
        engine.execute_one("CREATE TABLE k (id BIGINT NOT NULL PRIMARY KEY, v BIGINT)").await.expect("create");
        // The even ids 0..=1998 in scrambled order (7919 is prime to 1000), ten chunks of a hundred.
        let scrambled = "SELECT ((value * 7919) % 1000) * 2 + {odd}, value FROM generate_series(0, 999)";
        engine.execute_one(&format!("INSERT INTO k {}", scrambled.replace("{odd}", "0"))).await.expect("insert");
        engine.tier("k").await.expect("tier");
        let paths = cold_paths(&engine, "k").await;
        assert_eq!(paths.len(), 1);
        let (ids, declared) = ids_in_file(&engine, &paths[0]).await;
        assert_eq!(ids, (0..1000).map(|i| i * 2).collect::<Vec<i64>>(), "the file holds the rows sorted by id");
        assert!(declared, "every row group says it is sorted by id and has a bloom filter on it");

        // A key lookup reads one row group of ten, by the row groups' ranges.
        let (text, _) = explain_analyze(&engine, "SELECT v FROM k WHERE id = 346").await;
        assert!(text.contains("row_groups=1/10 (pruned 9)"), "{text}");
        let v = |id: i64| (0..1000).find(|v| (v * 7919) % 1000 * 2 == id).expect("an even id");
        let found = engine.execute_one("SELECT v FROM k WHERE id = 346").await.expect("q").collect().await.expect("r");
        assert_eq!(found[0].column(0).as_primitive::<Int64Type>().value(0), v(346));
        // Odd ids fall inside a row group's range but are not in it: its bloom filter rules it out.
        let sql = "SELECT count(*) FROM k WHERE id IN (201, 203, 205, 600)";
        let (text, _) = explain_analyze(&engine, sql).await;
        assert!(text.contains("row_groups=1/10 (pruned 9, 1 by bloom filters)"), "{text}");
        let counted = engine.execute_one(sql).await.expect("q").collect().await.expect("r");
        assert_eq!(counted[0].column(0).as_primitive::<Int64Type>().value(0), 1);

        // The odd ids, scrambled too, in a second file; compaction merges both into one file, sorted again.
        engine.execute_one(&format!("INSERT INTO k {}", scrambled.replace("{odd}", "1"))).await.expect("insert");
        engine.tier("k").await.expect("tier");
        let report = engine.compact("k").await.expect("compact");
        assert_eq!((report.files_in, report.files_out), (2, 1));
        let paths = cold_paths(&engine, "k").await;
        let (ids, declared) = ids_in_file(&engine, &paths[0]).await;
        assert_eq!(ids, (0..2000).collect::<Vec<i64>>(), "the merged file is sorted by id");
        assert!(declared);
        let text = explain_analyze(&engine, "SELECT v FROM k WHERE id = 1001").await.0;
        assert!(text.contains("row_groups=1/20 (pruned 19)"), "{text}");
    }

    /// Column `column` (BIGINT) of a cold file, the columns every row group says it is sorted by (empty when they
    /// differ), and whether each column has a bloom filter in every row group.
    async fn file_column(engine: &Engine, path: &str, column: usize) -> (Vec<i64>, Vec<i32>, Vec<bool>) {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let store = engine.cold_store().expect("store");
        let bytes = store.get(&object_store::path::Path::from(path)).await.expect("get").bytes().await.expect("bytes");
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).expect("parquet");
        let groups = builder.metadata().row_groups();
        let declared = |g: &parquet::file::metadata::RowGroupMetaData| -> Vec<i32> {
            g.sorting_columns()
                .map(|s| s.iter().filter(|c| !c.descending).map(|c| c.column_idx).collect())
                .unwrap_or_default()
        };
        let sorted =
            if groups.iter().all(|g| declared(g) == declared(&groups[0])) { declared(&groups[0]) } else { Vec::new() };
        let blooms = (0..groups[0].num_columns())
            .map(|i| groups.iter().all(|g| g.column(i).bloom_filter_offset().is_some()))
            .collect();
        let mut values = Vec::new();
        for batch in builder.build().expect("reader") {
            values.extend(batch.expect("batch").column(column).as_primitive::<Int64Type>().values().iter().copied());
        }
        (values, sorted, blooms)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sort_key_orders_the_files_by_other_columns_than_the_primary_key() {
        let cold = ColdConfig { row_group_rows: 100, ..ColdConfig::default() };
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = open_with(dir.path(), cold).await;
        let e = engine
            .execute_one("CREATE TABLE bad (id BIGINT) WITH (sort_key = 'nope')")
            .await
            .expect_err("no such column")
            .to_string();
        assert!(e.contains("sort_key") && e.contains("no column \"nope\""), "{e}");
        assert!(engine.catalog().table("bad").is_none());
        engine
            .execute_one("CREATE TABLE m (id BIGINT NOT NULL PRIMARY KEY, ts BIGINT) WITH (sort_key = 'ts')")
            .await
            .expect("create");
        // Ids in order, times scrambled.
        let rows = "SELECT value + {base}, (value * 7919) % 1000 FROM generate_series(0, 999)";
        engine.execute_one(&format!("INSERT INTO m {}", rows.replace("{base}", "0"))).await.expect("insert");
        engine.tier("m").await.expect("tier");
        let paths = cold_paths(&engine, "m").await;
        let (times, sorted, blooms) = file_column(&engine, &paths[0], 1).await;
        assert_eq!(times, (0..1000).collect::<Vec<i64>>(), "sorted by ts");
        assert_eq!((sorted, blooms), (vec![1], vec![true, false]), "declared by ts; the bloom filter stays on id");
        let (text, _) = explain_analyze(&engine, "SELECT count(*) FROM m WHERE ts BETWEEN 120 AND 150").await;
        assert!(text.contains("row_groups=1/10 (pruned 9)"), "{text}");

        // Back to the primary key: files written from now on, compacted ones too, are sorted by id.
        let e = engine.execute_one("ALTER TABLE m SET (sort_key = 'id, id')").await.expect_err("twice").to_string();
        assert!(e.contains("named twice"), "{e}");
        engine.execute_one("ALTER TABLE m SET (sort_key = DEFAULT)").await.expect("alter");
        engine.execute_one(&format!("INSERT INTO m {}", rows.replace("{base}", "1000"))).await.expect("insert");
        engine.tier("m").await.expect("tier");
        assert_eq!(engine.compact("m").await.expect("compact").files_out, 1);
        let paths = cold_paths(&engine, "m").await;
        let (ids, sorted, _) = file_column(&engine, &paths[0], 0).await;
        assert_eq!(ids, (0..2000).collect::<Vec<i64>>());
        assert_eq!(sorted, vec![0]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn key_lookups_decode_only_the_pages_the_page_index_may_match() {
        let cold = ColdConfig { row_group_rows: 1000, ..ColdConfig::default() };
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = open_with(dir.path(), cold).await;
        engine.execute_one("CREATE TABLE k (id BIGINT NOT NULL PRIMARY KEY, v BIGINT)").await.expect("create");
        let rows = "SELECT ((value * 7919) % 2000), value FROM generate_series(0, 1999)";
        engine.execute_one(&format!("INSERT INTO k {rows}")).await.expect("insert");
        engine.tier("k").await.expect("tier");
        let v = |id: i64| (0..2000).find(|v| (v * 7919) % 2000 == id).expect("an id");
        let lookup = |sql: &'static str| {
            let engine = &engine;
            async move {
                let batches = engine.execute_one(sql).await.expect("query").collect().await.expect("rows");
                batches
                    .iter()
                    .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
                    .collect::<Vec<_>>()
            }
        };

        // Two row groups of a thousand ids, pages of 125: a lookup reads one page of one row group.
        let (text, _) = explain_analyze(&engine, "SELECT v FROM k WHERE id = 346").await;
        assert!(text.contains("row_groups=1/2 (pruned 1), rows skipped by page index=875"), "{text}");
        assert_eq!(lookup("SELECT v FROM k WHERE id = 346").await, [v(346)]);
        // A range over a page boundary reads two pages; one matching nothing in a row group's range reads none.
        let (text, _) = explain_analyze(&engine, "SELECT v FROM k WHERE id BETWEEN 1120 AND 1130").await;
        assert!(text.contains("rows skipped by page index=750"), "{text}");
        let mut got = lookup("SELECT v FROM k WHERE id BETWEEN 1120 AND 1130").await;
        got.sort_unstable();
        let mut want: Vec<i64> = (1120..=1130).map(v).collect();
        want.sort_unstable();
        assert_eq!(got, want);
        // Pages read in part are not cached; once a full scan has cached the row groups, lookups use them whole.
        assert_eq!(lookup("SELECT count(*) FROM k").await, [2000]);
        assert_eq!(lookup("SELECT sum(id) + sum(v) FROM k").await, [2 * (0..2000).sum::<i64>()]);
        let (text, gets) = explain_analyze(&engine, "SELECT v FROM k WHERE id = 1999").await;
        assert_eq!((gets, metric(&text, "row_groups_reused")), (0, 1), "{text}");
        assert_eq!(lookup("SELECT v FROM k WHERE id = 1999").await, [v(1999)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn decoded_columns_of_cold_row_groups_are_kept_in_the_column_cache() {
        let cold =
            ColdConfig { cache_memory: crate::config::ByteSize(0), row_group_rows: 100, ..ColdConfig::default() };
        let (_dir, engine) = table_t_with(300, cold).await;
        engine.tier("t").await.expect("tier");
        let (text, first_gets) = explain_analyze(&engine, "SELECT sum(x) FROM t").await;
        assert!(first_gets >= 3, "{text}");
        assert_eq!((metric(&text, "row_groups_decoded"), metric(&text, "row_groups_reused")), (3, 0), "{text}");
        let (text, gets) = explain_analyze(&engine, "SELECT sum(x) FROM t").await;
        assert_eq!(gets, 0, "{text}");
        assert_eq!((metric(&text, "row_groups_decoded"), metric(&text, "row_groups_reused")), (0, 3), "{text}");
        assert_eq!(totals(&engine).await, expected(300));
        assert!(engine.metrics().column_cache_hits.get() >= 3);
        // Rows in the same table added after the tiering: both tiers in one answer, the cold part still cached.
        insert(&engine, 301, 350).await;
        let (text, gets) = explain_analyze(&engine, "SELECT count(*), sum(x) FROM t WHERE x > 250").await;
        assert_eq!((gets, metric(&text, "row_groups_reused")), (0, 1), "{text}");
        let ((rows, total), _) = filtered(&engine, "x > 250").await;
        assert_eq!((rows, total), (100, (251..=350).sum::<i64>()));
    }

    /// The text of EXPLAIN ANALYZE of `sql`, and the GETs the node made meanwhile.
    async fn explain_analyze(engine: &Engine, sql: &str) -> (String, u64) {
        let before = engine.metrics().cold_io.totals();
        let batches: Vec<RecordBatch> = engine
            .execute_one(&format!("EXPLAIN ANALYZE {sql}"))
            .await
            .expect("explain")
            .collect()
            .await
            .expect("rows");
        let text = arrow::util::pretty::pretty_format_batches(&batches).expect("format").to_string();
        (text, engine.metrics().cold_io.totals().since(&before).gets)
    }

    /// A metric's value in an EXPLAIN ANALYZE text.
    fn metric(text: &str, name: &str) -> u64 {
        let re = regex::Regex::new(&format!(r"\b{name}=(\d+)")).expect("regex");
        re.captures(text).and_then(|c| c[1].parse().ok()).unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_read_cache_serves_tiered_files_across_restarts_and_explain_analyze_shows_each_scans_requests() {
        let cold = ColdConfig { cache_disk: Some(crate::config::ByteSize(64 << 20)), ..ColdConfig::default() };
        let (dir, engine) = table_t_with(300, cold.clone()).await;
        engine.tier("t").await.expect("tier");
        let sql = "SELECT count(*), sum(x) FROM t WHERE x > 0";
        // The tiered file was written through to the cache: no GET.
        let (text, gets) = explain_analyze(&engine, sql).await;
        assert!(text.contains("ColdScanExec"), "{text}");
        assert_eq!((gets, metric(&text, "bucket_gets")), (0, 0), "{text}");
        assert!(metric(&text, "cache_hits") > 0, "{text}");
        assert_eq!(totals(&engine).await, expected(300));

        // Restarted: the disk tier still has the file.
        engine.shutdown().await.expect("shutdown");
        drop(engine);
        let engine = open_with(dir.path(), cold.clone()).await;
        let (text, gets) = explain_analyze(&engine, sql).await;
        assert_eq!((gets, metric(&text, "bucket_gets")), (0, 0), "{text}");
        assert_eq!(totals(&engine).await, expected(300));

        // Restarted with the cache gone: the scan's GETs are the node's, and the next scan is served from memory.
        engine.shutdown().await.expect("shutdown");
        drop(engine);
        std::fs::remove_dir_all(dir.path().join("cold-cache")).expect("remove the cache");
        let engine = open_with(dir.path(), cold).await;
        let (text, first_gets) = explain_analyze(&engine, sql).await;
        assert!(first_gets > 0, "{text}");
        assert_eq!(metric(&text, "bucket_gets"), first_gets, "{text}");
        assert!(metric(&text, "cache_misses") > 0 && metric(&text, "bucket_get_bytes") > 0, "{text}");
        // The next scan decodes nothing: the column cache has the row group's columns.
        let (text, gets) = explain_analyze(&engine, sql).await;
        assert_eq!((gets, metric(&text, "bucket_gets"), metric(&text, "cache_misses")), (0, 0, 0), "{text}");
        assert_eq!((metric(&text, "row_groups_decoded"), metric(&text, "cache_hits")), (0, 0), "{text}");
        // system.queries keeps each query's counts.
        let batches: Vec<RecordBatch> = engine
            .execute_one(
                "SELECT bucket_gets, cache_misses, cache_hits, rows FROM system.queries \
                 WHERE query LIKE 'EXPLAIN ANALYZE%' ORDER BY query_id",
            )
            .await
            .expect("query log")
            .collect()
            .await
            .expect("rows");
        let column = |i: usize| batches[0].column(i).as_primitive::<arrow::datatypes::UInt64Type>().values().to_vec();
        assert_eq!(column(0), [first_gets, 0]);
        assert!(column(1)[0] > 0 && column(1)[1] == 0 && column(2)[1] == 0, "{batches:?}");
        assert_eq!(column(3), [1, 1], "EXPLAIN ANALYZE returns one row");
        let rendered = engine.metrics().render(0, 0, &Default::default());
        assert!(rendered.contains("quiver_cold_cache_hits_total"), "{rendered}");
    }

    /// The files of table `t`'s cold view on this node.
    fn cold_files(engine: &Engine) -> Vec<ColdFile> {
        match engine.native_table("t").expect("t").only_shard().cold() {
            ColdState::Ready(view) => view.files.clone(),
            ColdState::Unavailable(detail) => panic!("cold tier unavailable: {detail}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tiering_cuts_files_at_the_target_size_and_commits_them_together() {
        // A target of one byte: every chunk (100 rows) is a file of its own.
        let cold = ColdConfig { target_file_bytes: crate::config::ByteSize(1), ..ColdConfig::default() };
        let (dir, engine) = table_t_with(1000, cold.clone()).await;
        let report = engine.tier("t").await.expect("tier");
        assert_eq!((report.rows, report.chunks, report.files, report.manifest_version), (1000, 10, 10, 1));
        let files = cold_files(&engine);
        assert_eq!(files.len(), 10);
        assert!(files.iter().all(|f| f.rows == 100), "{files:?}");
        let mut seqs: Vec<u64> = files.iter().map(|f| f.max_seq).collect();
        seqs.dedup();
        assert_eq!(seqs.len(), 10, "each file holds its own chunks");
        assert_eq!(totals(&engine).await, expected(1000));
        assert_eq!(filtered(&engine, "x > 950").await.0, (50, (951..=1000).sum::<i64>()));
        engine.shutdown().await.expect("shutdown");
        drop(engine);
        let engine = open_with(dir.path(), cold).await;
        assert_eq!(totals(&engine).await, expected(1000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_merges_small_files_and_every_row_stays_readable_once() {
        let cold = ColdConfig { row_group_rows: 100, ..ColdConfig::default() };
        let (dir, engine) = table_t_with(100, cold.clone()).await;
        engine.tier("t").await.expect("tier");
        let files = ColdConfig::default().compact_min_files as i64;
        for round in 1..files {
            insert(&engine, round * 100 + 1, (round + 1) * 100).await;
            engine.tier("t").await.expect("tier");
        }
        let before = cold_files(&engine);
        assert_eq!(before.len(), files as usize);
        let n = files * 100;

        // The background round merges them: one file, the same rows.
        assert!(engine.apply_tier_policies(None).await.is_empty(), "nothing hot to tier");
        let after = cold_files(&engine);
        assert_eq!(after.len(), 1, "{after:?}");
        assert_eq!(after[0].rows, n as u64);
        let ages = |f: &[ColdFile]| {
            let w: Vec<WrittenRange> = f.iter().map(|f| f.written_ms.expect("age")).collect();
            (w.iter().map(|w| w.min).min(), w.iter().map(|w| w.max).max())
        };
        assert_eq!(ages(&after), ages(&before), "the rows keep their write times");
        assert_eq!(totals(&engine).await, expected(n));
        assert_eq!(engine.metrics().cold_files_compacted.get(), files as u64);
        // The merged file's statistics still prune.
        assert_eq!(filtered(&engine, "x > 100000").await, ((0, 0), 0));
        assert_eq!(filtered(&engine, "x > 750").await.0, (n - 750, (751..=n).sum::<i64>()));

        // The replaced files are retired, kept for the garbage collector's grace period (in a block: the table
        // holds the hot store open until it is dropped).
        {
            let table = engine.native_table("t").expect("t");
            let shard = engine.shard_record(table.only_shard()).expect("shard");
            let (_, manifest) = engine.shard_manifest(table.only_shard(), &shard).await.expect("manifest");
            let retired: Vec<&str> = manifest.retired.iter().map(|r| r.path.as_str()).collect();
            assert_eq!(retired.len(), before.len());
            let store = engine.cold_store().expect("store");
            for f in &before {
                assert!(retired.contains(&f.path.as_str()), "{} is retired", f.path);
                store.head(&object_store::path::Path::from(f.path.as_str())).await.expect("still stored");
            }
        }

        // Rows tiered later join the merged file on an explicit compaction; the answers survive a restart.
        insert(&engine, n + 1, n + 50).await;
        engine.tier("t").await.expect("tier");
        let report = engine.compact("t").await.expect("compact");
        assert_eq!((report.files_in, report.files_out, report.rows), (2, 1, n as u64 + 50), "{report:?}");
        assert_eq!(cold_files(&engine).len(), 1);
        assert_eq!(engine.compact("t").await.expect("compact").files_in, 0, "one file is left as it is");
        insert(&engine, n + 51, n + 60).await;
        engine.shutdown().await.expect("shutdown");
        drop(engine);
        let engine = open_with(dir.path(), cold).await;
        assert_eq!(totals(&engine).await, expected(n + 60));
        assert_eq!(cold_files(&engine).len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn system_tables_list_the_files_and_the_lag_of_each_table() {
        let (_dir, engine) = table_t(300).await;
        engine.tier("t").await.expect("tier");
        insert(&engine, 301, 450).await;
        engine.tier("t").await.expect("tier");
        insert(&engine, 451, 500).await;
        let text = |sql: &str| {
            let engine = Arc::clone(&engine);
            let sql = sql.to_string();
            async move {
                let batches: Vec<RecordBatch> =
                    engine.execute_one(&sql).await.expect("query").collect().await.expect("rows");
                arrow::util::pretty::pretty_format_batches(&batches).expect("format").to_string()
            }
        };
        let files = text("SELECT table_name, manifest_version, rows, key_column, key_min, key_max, path LIKE 'tables/%/data/n1-%.parquet' AS p FROM system.tier_files ORDER BY key_min::BIGINT").await;
        let expected = [
            "+------------+------------------+------+------------+---------+---------+------+",
            "| table_name | manifest_version | rows | key_column | key_min | key_max | p    |",
            "+------------+------------------+------+------------+---------+---------+------+",
            "| t          | 2                | 300  | x          | 1       | 300     | true |",
            "| t          | 2                | 150  | x          | 301     | 450     | true |",
            "+------------+------------------+------+------------+---------+---------+------+",
        ];
        assert_eq!(files, expected.join("\n"));
        let lag = text("SELECT table_name, manifest_version, files, cold_rows, hot_rows, hot_bytes > 0 AS h, state FROM system.tiering").await;
        let expected = [
            "+------------+------------------+-------+-----------+----------+------+-------+",
            "| table_name | manifest_version | files | cold_rows | hot_rows | h    | state |",
            "+------------+------------------+-------+-----------+----------+------+-------+",
            "| t          | 2                | 2     | 450       | 50       | true | ready |",
            "+------------+------------------+-------+-----------+----------+------+-------+",
        ];
        assert_eq!(lag, expected.join("\n"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tiered_rows_are_read_across_tiers_and_after_a_restart() {
        let (dir, engine) = table_t(1000).await;
        let report = engine.tier("t").await.expect("tier");
        assert_eq!((report.rows, report.manifest_version), (1000, 1));
        assert!(report.chunks >= 10 && report.bytes > 0, "{report:?}");
        let table = engine.hot_table("t").expect("table");
        assert!(table.only_shard().version().is_empty(), "the tiered hot chunks are gone");
        assert_eq!(totals(&engine).await, expected(1000), "all rows from the cold tier");

        insert(&engine, 1001, 1500).await;
        assert_eq!(totals(&engine).await, expected(1500), "cold and hot rows, each once");
        let again = engine.tier("t").await.expect("tier again");
        assert_eq!((again.rows, again.manifest_version), (500, 2));
        let nothing = engine.tier("t").await.expect("nothing to tier");
        assert_eq!((nothing.rows, nothing.manifest_version), (0, 2));
        insert(&engine, 1501, 1600).await;
        let filtered: Vec<RecordBatch> =
            engine.execute_one("SELECT count(*) FROM t WHERE x > 1400").await.expect("q").collect().await.expect("r");
        assert_eq!(filtered[0].column(0).as_primitive::<Int64Type>().value(0), 200);

        engine.shutdown().await.expect("shutdown");
        drop(table);
        drop(engine);
        let engine = open(dir.path()).await;
        assert_eq!(totals(&engine).await, expected(1600), "the same answer after a restart");
        let files = std::fs::read_dir(dir.path().join("cold")).expect("the cold directory exists").count();
        assert_eq!(files, 1, "one cluster prefix in the default cold directory");
    }

    /// The rows a DELETE or UPDATE affected.
    async fn affected(engine: &Engine, sql: &str) -> u64 {
        match engine.execute_one(sql).await.expect(sql) {
            crate::engine::QueryOutput::Affected { rows, .. } => rows,
            _ => panic!("{sql} reports no row count"),
        }
    }

    /// `count(*)` and `coalesce(sum(x), 0)` of table `t` where `filter`.
    async fn count_sum(engine: &Engine, filter: &str) -> (i64, i64) {
        filtered(engine, filter).await.0
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delete_and_update_reach_tiered_rows_and_take_effect_whole() {
        let cold = ColdConfig { row_group_rows: 100, ..ColdConfig::default() };
        let (dir, engine) = table_t_with(300, cold.clone()).await;
        engine.tier("t").await.expect("tier 1..=300");
        insert(&engine, 301, 600).await;
        engine.tier("t").await.expect("tier 301..=600");
        insert(&engine, 601, 700).await;
        let sum = |from: i64, to: i64| (from..=to).sum::<i64>();
        let first = cold_files(&engine);
        let version = |engine: &Engine| match engine.native_table("t").expect("t").only_shard().cold() {
            ColdState::Ready(view) => view.version,
            ColdState::Unavailable(detail) => panic!("{detail}"),
        };

        // Only cold rows match: the file holding them is replaced, the other file and the hot rows stay.
        assert_eq!(affected(&engine, "DELETE FROM t WHERE x <= 10").await, 10);
        assert_eq!(count_sum(&engine, "true").await, (690, sum(11, 700)));
        let after = cold_files(&engine);
        assert_eq!(after.len(), 2);
        assert!(after.iter().any(|f| f.path == first[1].path), "the file without matches is kept");
        assert!(!after.iter().any(|f| f.path == first[0].path), "the file with matches is replaced");
        assert_eq!(after.iter().map(|f| f.rows).sum::<u64>(), 590);
        assert_eq!(engine.native_table("t").expect("t").only_shard().row_count(), 100, "the hot rows are untouched");
        // The new file's statistics are its new rows': nothing below 11 is left to read.
        assert_eq!(filtered(&engine, "x <= 10").await, ((0, 0), 0));

        // Rows in both tiers: one commit, after which the hot rows live in the cold tier.
        assert_eq!(affected(&engine, "UPDATE t SET x = x + 1000 WHERE x > 590 AND x <= 610").await, 20);
        assert_eq!(count_sum(&engine, "true").await, (690, sum(11, 700) + 20 * 1000));
        assert_eq!(count_sum(&engine, "x > 1000").await, (20, sum(1591, 1610)));
        assert_eq!(
            engine.native_table("t").expect("t").only_shard().row_count(),
            0,
            "the hot rows were tiered with the change"
        );
        assert_eq!(cold_files(&engine).len(), 3);

        // A failed statement changes nothing; one that matches nothing commits nothing.
        let before = version(&engine);
        let e = engine.execute_one("UPDATE t SET x = NULL WHERE x = 100").await.expect_err("NOT NULL");
        assert!(e.report().contains("x"), "{}", e.report());
        assert_eq!(affected(&engine, "DELETE FROM t WHERE x = 999999").await, 0);
        assert_eq!(version(&engine), before);
        assert_eq!(count_sum(&engine, "true").await, (690, sum(11, 700) + 20 * 1000));

        // A DELETE without WHERE empties both tiers; the answers survive a restart.
        insert(&engine, 1, 5).await;
        assert_eq!(affected(&engine, "DELETE FROM t WHERE x > 600").await, 110);
        engine.shutdown().await.expect("shutdown");
        drop(engine);
        let engine = open_with(dir.path(), cold).await;
        assert_eq!(count_sum(&engine, "true").await, (585, sum(1, 5) + sum(11, 590)));
        assert_eq!(affected(&engine, "DELETE FROM t").await, 585);
        assert_eq!(count_sum(&engine, "true").await, (0, 0));
        assert!(cold_files(&engine).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inserts_are_refused_past_the_write_limit_while_the_store_is_down_and_resume_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bucket = dir.path().join("bucket");
        let cold = ColdConfig {
            store: format!("file://{}", bucket.display()),
            hot_bytes_max: crate::config::ByteSize(1),
            write_limit: crate::config::ByteSize(1),
            ..ColdConfig::default()
        };
        let options = EngineOptions { chunk_rows_target: 100, cold, ..EngineOptions::default() };
        let engine = open_options(&dir.path().join("data"), options).await;
        engine.execute_one("CREATE TABLE t (x BIGINT NOT NULL)").await.expect("create");
        insert(&engine, 1, 300).await;
        // The store goes away: its directory becomes a file.
        let away = dir.path().join("bucket.away");
        std::fs::rename(&bucket, &away).expect("move the bucket away");
        std::fs::write(&bucket, b"not a directory").expect("file");
        assert!(engine.apply_tier_policies(None).await.is_empty(), "tiering fails");
        let e = engine.execute_one("INSERT INTO t VALUES (301)").await.expect_err("refused");
        let text = e.report();
        assert!(text.contains("cold tier unavailable") && text.contains("cold.write_limit"), "{text}");
        assert_eq!(totals(&engine).await, expected(300), "reads go on; the refused row is not there");
        // The store is back: the next round tiers the table and inserts resume.
        std::fs::remove_file(&bucket).expect("remove the file");
        std::fs::rename(&away, &bucket).expect("bring the bucket back");
        let tiered = engine.apply_tier_policies(None).await;
        assert_eq!(tiered.len(), 1, "{tiered:?}");
        insert(&engine, 301, 400).await;
        assert_eq!(totals(&engine).await, expected(400));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delete_while_the_store_is_down_fails_whole_and_succeeds_once_it_is_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bucket = dir.path().join("bucket");
        let cold = ColdConfig { store: format!("file://{}", bucket.display()), ..ColdConfig::default() };
        let options = EngineOptions { chunk_rows_target: 100, cold, ..EngineOptions::default() };
        let engine = open_options(&dir.path().join("data"), options).await;
        engine.execute_one("CREATE TABLE t (x BIGINT NOT NULL)").await.expect("create");
        insert(&engine, 1, 300).await;
        engine.tier("t").await.expect("tier");
        insert(&engine, 301, 400).await;
        let files = cold_files(&engine);
        let away = dir.path().join("bucket.away");
        std::fs::rename(&bucket, &away).expect("move the bucket away");
        std::fs::write(&bucket, b"not a directory").expect("file");
        let sql = "DELETE FROM t WHERE x <= 10 OR x > 390";
        let e = engine.execute_one(sql).await.expect_err("the store is down");
        assert!(e.report().contains("cold tier unavailable"), "{}", e.report());
        assert_eq!(cold_files(&engine), files, "no file changed");
        assert_eq!(engine.native_table("t").expect("t").only_shard().row_count(), 100, "no hot row changed");
        std::fs::remove_file(&bucket).expect("remove the file");
        std::fs::rename(&away, &bucket).expect("bring the bucket back");
        assert_eq!(totals(&engine).await, expected(400), "nothing was deleted");
        assert_eq!(affected(&engine, sql).await, 20);
        assert_eq!(count_sum(&engine, "true").await, (380, (11..=390).sum::<i64>()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_table_option_sets_the_tables_own_hot_limit_and_alter_table_changes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = open(dir.path()).await;
        engine.execute_one("CREATE TABLE a (x BIGINT NOT NULL) WITH (hot_bytes_max = '1KiB')").await.expect("a");
        engine.execute_one("CREATE TABLE b (x BIGINT NOT NULL)").await.expect("b");
        for t in ["a", "b"] {
            engine
                .execute_one(&format!("INSERT INTO {t} SELECT value FROM generate_series(1, 2000)"))
                .await
                .expect("insert");
        }
        let names = |tiered: Vec<(String, TierReport)>| tiered.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(names(engine.apply_tier_policies(None).await), ["a"], "only a has a limit");
        let output = engine.execute_one("ALTER TABLE b SET (hot_bytes_max = 1024)").await.expect("alter");
        assert!(matches!(output, crate::engine::QueryOutput::Done { command: crate::engine::Command::AlterTable }));
        assert_eq!(engine.catalog().table("b").expect("b").options["hot_bytes_max"], "1024");
        assert_eq!(names(engine.apply_tier_policies(None).await), ["b"]);
        engine.execute_one("ALTER TABLE a SET (hot_bytes_max = '0')").await.expect("alter");
        engine.execute_one("INSERT INTO a SELECT value FROM generate_series(1, 2000)").await.expect("insert");
        assert!(engine.apply_tier_policies(None).await.is_empty(), "0: never by size");
        engine.execute_one("ALTER TABLE a SET (hot_bytes_max = DEFAULT)").await.expect("reset");
        assert!(engine.catalog().table("a").expect("a").options.is_empty());

        let e = engine.execute_one("ALTER TABLE nope SET (hot_bytes_max = 1)").await.expect_err("unknown");
        assert!(e.to_string().contains("\"nope\" does not exist"), "{e}");
        let e = engine.execute_one("ALTER TABLE a SET (hot_bytes_max = 'much')").await.expect_err("bad");
        assert!(e.to_string().contains("much"), "{e}");
        let e = engine.execute_one("ALTER TABLE a ADD COLUMN y INT").await.expect_err("other alters");
        assert!(e.to_string().contains("not supported"), "{e}");
        let e = engine.execute_one("CREATE TABLE c (x INT) WITH (ttl = '0s')").await.expect_err("ttl");
        assert!(e.to_string().contains("ttl"), "{e}");
        assert!(engine.catalog().table("c").is_none());
    }

    /// The time now, with the clock moved on past it before and after, so that rows written before and after the
    /// mark have times on their own side of it.
    async fn mark() -> u64 {
        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
        let now = crate::clock::unix_ms();
        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
        now
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delete_keeps_the_age_of_the_rows_it_leaves() {
        let (_dir, engine) = table_t(100).await;
        let before = mark().await;
        engine.execute_one("DELETE FROM t WHERE x = 5").await.expect("delete");
        let ages: Vec<u64> =
            engine.native_table("t").expect("t").only_shard().version().iter().map(|c| c.meta.written_ms).collect();
        assert!(!ages.is_empty() && ages.iter().all(|&w| w > 0 && w < before), "{ages:?} vs {before}");
        let dropped = engine.expire("t", before).await.expect("expire");
        assert_eq!(dropped.hot_rows, 99, "retention still drops them on time");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tier_after_moves_rows_by_age_and_ttl_drops_expired_rows_hot_and_cold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = open(dir.path()).await;
        engine.execute_one("CREATE TABLE t (x BIGINT NOT NULL) WITH (tier_after = '1h')").await.expect("create");
        insert(&engine, 1, 100).await;
        let first = mark().await;
        insert(&engine, 101, 200).await;
        assert!(engine.apply_tier_policies(None).await.is_empty(), "no row is an hour old");

        // Only the chunks written before the mark (a run from the oldest on).
        let report = engine.tier_written_before("t", Some(first)).await.expect("tier by age");
        assert_eq!(report.rows, 100);
        assert_eq!(totals(&engine).await, expected(200));
        let files = |engine: &Arc<Engine>| match engine.native_table("t").expect("t").only_shard().cold() {
            ColdState::Ready(view) => view.files.clone(),
            ColdState::Unavailable(why) => panic!("{why}"),
        };
        let written = files(&engine)[0].written_ms.expect("the file knows its rows' age");
        assert!(written.min <= written.max && written.max <= first, "{written:?} vs {first}");

        // tier_after = 0: everything settled is old enough.
        engine.execute_one("ALTER TABLE t SET (tier_after = '0')").await.expect("alter");
        let tiered = engine.apply_tier_policies(None).await;
        assert_eq!(tiered.iter().map(|(n, r)| (n.as_str(), r.rows)).collect::<Vec<_>>(), [("t", 100)]);
        let second = mark().await;
        engine.execute_one("ALTER TABLE t SET (tier_after = DEFAULT)").await.expect("alter");
        insert(&engine, 201, 300).await;

        // Retention: the first file only, then after a restart everything else, hot and cold.
        let dropped = engine.expire("t", first).await.expect("expire");
        assert_eq!(dropped, ExpireReport { chunks: 0, hot_rows: 0, files: 1, cold_rows: 100 });
        let rest = |from: i64, to: i64| (to - from + 1, (from..=to).sum::<i64>(), to - from + 1);
        assert_eq!(totals(&engine).await, rest(101, 300));
        engine.execute_one("ALTER TABLE t SET (ttl = '1h')").await.expect("ttl");
        assert!(engine.apply_tier_policies(None).await.is_empty());
        assert_eq!(totals(&engine).await, rest(101, 300), "no row is an hour old");
        engine.shutdown().await.expect("shutdown");
        drop(engine);
        let engine = open(dir.path()).await;
        assert_eq!(totals(&engine).await, rest(101, 300), "expired rows stay expired after a restart");
        assert_eq!(
            engine.expire("t", second).await.expect("expire"),
            ExpireReport { chunks: 0, hot_rows: 0, files: 1, cold_rows: 100 }
        );
        assert_eq!(totals(&engine).await, rest(201, 300));
        let dropped = engine.expire("t", crate::clock::unix_ms() + 1).await.expect("expire");
        assert_eq!((dropped.chunks, dropped.hot_rows, dropped.files), (1, 100, 0));
        let batches: Vec<RecordBatch> =
            engine.execute_one("SELECT count(*) FROM t").await.expect("count").collect().await.expect("rows");
        assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 0);
        assert!(files(&engine).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_background_tierer_moves_only_tables_over_the_hot_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = open(dir.path()).await;
        engine.execute_one("CREATE TABLE t (x BIGINT NOT NULL)").await.expect("create");
        engine.execute_one("CREATE TABLE small (x BIGINT NOT NULL)").await.expect("create");
        insert(&engine, 1, 2000).await;
        engine.execute_one("INSERT INTO small VALUES (1), (2)").await.expect("insert");
        assert!(engine.apply_tier_policies(None).await.is_empty(), "off unless a limit is set");
        let hot_bytes: u64 =
            engine.hot_table("t").expect("t").only_shard().version().iter().map(|c| c.meta.data_bytes).sum();
        let tiered = engine.apply_tier_policies(Some(hot_bytes / 2)).await;
        let names: Vec<&str> = tiered.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["t"], "only the table over the limit");
        assert_eq!(tiered[0].1.rows, 2000);
        assert_eq!(totals(&engine).await, expected(2000));
        assert!(engine.apply_tier_policies(Some(hot_bytes / 2)).await.is_empty(), "nothing hot is left over the limit");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_partition_reads_both_tiers_in_turn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = EngineOptions { chunk_rows_target: 100, target_partitions: 1, ..EngineOptions::default() };
        let engine = open_options(dir.path(), options).await;
        engine.execute_one("CREATE TABLE t (x BIGINT NOT NULL)").await.expect("create");
        insert(&engine, 1, 300).await;
        engine.tier("t").await.expect("tier");
        insert(&engine, 301, 450).await;
        assert_eq!(totals(&engine).await, expected(450));
        let plan: Vec<RecordBatch> =
            engine.execute_one("EXPLAIN SELECT x FROM t").await.expect("explain").collect().await.expect("rows");
        let text = arrow::util::pretty::pretty_format_batches(&plan).expect("format").to_string();
        assert!(text.contains("ConcatExec") && !text.contains("UnionExec"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_insert_in_progress_during_a_tiering_loses_no_row() {
        let (_dir, engine) = table_t(200).await;
        // An insert writes its first chunks (their numbers taken) and has not committed yet...
        let table = engine.hot_table("t").expect("table");
        let schema = table.schema();
        let slow = arrow::array::Int64Array::from_iter_values(201..=450);
        let slow = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(slow)]).expect("batch");
        let mut appender = table.appender();
        appender.push(&slow).expect("push");
        // ...while another one commits chunks with higher numbers, and the table is tiered.
        insert(&engine, 451, 600).await;
        let report = engine.tier("t").await.expect("tier");
        assert_eq!(report.rows, 200, "only the chunks below the insert in progress move: {report:?}");
        appender.commit().expect("commit");
        assert_eq!(totals(&engine).await, expected(600), "no row of the slow insert is hidden by the mark");
        let report = engine.tier("t").await.expect("tier the rest");
        assert_eq!(report.rows, 400);
        assert_eq!(totals(&engine).await, expected(600));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_inserted_after_a_restart_that_follows_a_full_tiering_are_visible() {
        let (dir, engine) = table_t(500).await;
        engine.tier("t").await.expect("tier");
        // The next commit deletes the tiered chunks' data (a commit with nothing else in it, here).
        engine.tables.commit(crate::storage::WriteBatch::new()).expect("commit");
        engine.shutdown().await.expect("shutdown");
        drop(engine);
        // No chunk is left in the hot store: numbering must still continue above the tiered mark.
        let engine = open(dir.path()).await;
        insert(&engine, 501, 700).await;
        assert_eq!(totals(&engine).await, expected(700));
        engine.shutdown().await.expect("shutdown");
        drop(engine);
        let engine = open(dir.path()).await;
        assert_eq!(totals(&engine).await, expected(700), "and after another restart");
    }

    /// The name the first file of table `t`'s hot chunks up to `max_seq` gets (nonce 1).
    fn first_file_path(engine: &Engine, table: &HotTable, shard: &ShardRecord, max_seq: u64) -> String {
        let replica = table.only_shard();
        Manifest::data_path(table.def().id.0, shard.shard_id.0, engine.node_id, replica.mark_id(), max_seq, 1)
    }

    /// Steps 1 to 3 of a tiering of table `t`'s hot chunks, behind the engine's back: the pointer moves, and the
    /// engine neither learns of it nor removes the chunks (a crash, or a commit whose answer was lost).
    async fn commit_unnoticed(engine: &Engine) -> Vec<Arc<Chunk>> {
        let table = engine.hot_table("t").expect("table");
        let chunks: Vec<Arc<Chunk>> = table.only_shard().version().iter().cloned().collect();
        let max_seq = chunks.iter().map(|c| c.seq).max().expect("chunks");
        let rows = chunks.iter().map(|c| c.meta.rows).sum();
        let store = engine.cold_store().expect("store");
        let shard = engine.shard_record(table.only_shard()).expect("shard");
        let schema = table.schema();
        let batches: Vec<RecordBatch> =
            chunks.iter().map(|c| table.read_chunk(c, None, &schema).expect("read")).collect();
        let path = first_file_path(engine, &table, &shard, max_seq);
        let bytes = cold::write_parquet(
            &store,
            "test",
            &path,
            &schema,
            futures::stream::iter(batches.into_iter().map(Ok)),
            &cold::FileLayout::unsorted(1000),
        )
        .await
        .expect("file");
        let columns = file_columns(&chunks, 1);
        let file = ColdFile {
            path,
            node: engine.node_id,
            store: table.only_shard().mark_id(),
            rows,
            bytes,
            max_seq,
            columns,
            written_ms: None,
            visible_from: 0,
        };
        let mut manifest =
            Manifest::empty(table.def().id.0, "t", shard.shard_id.0, schema.as_ref().clone()).with_file(file);
        let location = engine.store_manifest(&store, &mut manifest).await.expect("manifest");
        let command = MetaCommand::SetShardManifest {
            shard_id: shard.shard_id,
            expected_version: None,
            manifest: ManifestPointer::new(1, location),
            uploaded_from_ms: crate::clock::unix_ms(),
            expected_epoch: Some(shard.epoch),
            tiered_through: manifest.tiered_through(),
            txn: 0,
        };
        engine.meta().propose(command).await.expect("commit").into_result().expect("committed");
        chunks
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tiering_after_a_commit_whose_answer_was_lost_writes_nothing_twice() {
        let (_dir, engine) = table_t(300).await;
        commit_unnoticed(&engine).await;
        assert_eq!(totals(&engine).await, expected(300), "the engine still reads its hot chunks");
        let report = engine.tier("t").await.expect("tier");
        assert_eq!(report.rows, 0, "the committed chunks are not written again: {report:?}");
        assert!(engine.hot_table("t").expect("table").only_shard().version().is_empty(), "and are removed");
        assert_eq!(totals(&engine).await, expected(300));
        insert(&engine, 301, 400).await;
        assert_eq!(engine.tier("t").await.expect("tier").rows, 100);
        assert_eq!(totals(&engine).await, expected(400));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_between_the_commit_and_the_removal_of_hot_chunks_counts_no_row_twice() {
        let (dir, engine) = table_t(300).await;
        let table = engine.hot_table("t").expect("table");
        let chunks = commit_unnoticed(&engine).await;
        assert_eq!(table.only_shard().version().len(), chunks.len(), "the hot chunks are still there");

        engine.shutdown().await.expect("shutdown");
        drop((table, chunks));
        drop(engine);
        let engine = open(dir.path()).await;
        assert_eq!(totals(&engine).await, expected(300), "every row once: the covered hot chunks are skipped");
        let table = engine.hot_table("t").expect("table");
        assert!(table.only_shard().version().is_empty(), "and removed at open");
        insert(&engine, 301, 400).await;
        assert_eq!(engine.tier("t").await.expect("tier").manifest_version, 2);
        assert_eq!(totals(&engine).await, expected(400));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_before_the_commit_leaves_the_rows_hot_and_overwrites_nothing() {
        let (_dir, engine) = table_t(250).await;
        let table = engine.hot_table("t").expect("table");
        let max_seq = table.only_shard().version().iter().map(|c| c.seq).max().expect("chunks");
        let shard = engine.shard_record(table.only_shard()).expect("shard");
        let path = first_file_path(&engine, &table, &shard, max_seq);
        // An upload that never got committed: a stray object, which the retry leaves alone.
        let store = engine.cold_store().expect("store");
        store
            .put(&object_store::path::Path::from(path.as_str()), b"half an upload".to_vec().into())
            .await
            .expect("put");
        assert_eq!(totals(&engine).await, expected(250), "uncommitted objects are not read");
        let report = engine.tier("t").await.expect("tier");
        assert_eq!(report.rows, 250);
        assert_eq!(totals(&engine).await, expected(250));
        let stray = store.get(&object_store::path::Path::from(path.as_str())).await.expect("get");
        assert_eq!(&stray.bytes().await.expect("bytes")[..], b"half an upload", "no object is overwritten");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_store_fails_tiering_clearly_and_keeps_the_rows_hot() {
        let options = EngineOptions {
            cold: ColdConfig {
                store: "s3://bucket/prefix".into(),
                endpoint: Some("http://127.0.0.1:9".into()),
                region: Some("us-east-1".into()),
                allow_http: true,
                access_key_id: Some("key".into()),
                secret_access_key: Some("secret".into()),
                ..ColdConfig::default()
            },
            ..EngineOptions::default()
        };
        let engine = Engine::open(StorageLocation::Memory, options).await.expect("open");
        engine.execute_one("CREATE TABLE t (x BIGINT NOT NULL)").await.expect("create");
        insert(&engine, 1, 100).await;
        let e = engine.tier("t").await.expect_err("unreachable");
        assert_eq!(e.kind(), crate::error::ErrorKind::Unavailable, "{}", e.report());
        assert!(
            e.report().contains("cold tier unavailable") && e.report().contains("s3://bucket/prefix"),
            "{}",
            e.report()
        );
        assert_eq!(totals(&engine).await, expected(100), "the rows are still hot");
        insert(&engine, 101, 200).await;
        assert_eq!(totals(&engine).await, expected(200), "and writes go on");
    }
}
