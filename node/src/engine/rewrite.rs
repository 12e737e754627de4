//! DELETE and UPDATE across both tiers.
//!
//! Hot chunks with matching rows are rewritten as in [`crate::query::dml`]. Cold files are rewritten the same way,
//! copy-on-write: every file of this node that the WHERE clause may match (judged by the manifest's statistics) is
//! read and its matching rows removed or changed; a file with matches is written again under a new name, with
//! statistics of its new rows, and replaces the old one in a new manifest version (the old file is retired and
//! collected `cold.gc_grace` later, as after compaction); a file without matches is left as it is.
//!
//! A statement must take effect whole or not at all, and the hot store and the manifest are committed separately.
//! So when a statement changes rows in both tiers, its hot side is committed through the manifest too: the table's
//! settled hot chunks, with the statement's changes applied, are tiered into a new file in the same manifest version
//! (one compare-and-set through Raft), and the hot chunks are then removed as after a tiering. A crash before the
//! commit leaves everything as it was (uploads are collected as garbage); after it, the manifest's mark says which
//! hot chunks the new file holds. A statement that changes only hot rows commits only to the hot store; one that
//! changes only cold rows commits only the manifest.
//!
//! A statement over several shards is one transaction (`engine::transactions`). A shard's part that reaches its cold
//! files does not commit its manifest: it proposes it as the shard's pending manifest for the statement
//! (`quiver_meta::ShardRecord::pending`), and the statement's decision, recorded in the metadata group, makes every
//! pending manifest current in the same apply that makes its hot parts visible, or drops them. Until then the shard
//! takes no other DELETE, UPDATE, tiering, compaction or retention, and readers keep the manifest before; a reader
//! matches each cold view to its snapshot by the decision's version the manifest pointer carries.

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::catalog::Session;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use quiver_meta::ShardRecord;

use super::Engine;
use super::compact::read_file;
use crate::cold::{self, ColdFile, ColdState, Manifest, StatsBuilder, WrittenRange};
use crate::error::{Error, Result};
use crate::query::cold::matching_files;
use crate::query::dml::{self, Compiled, HotChange, RowChange};
use crate::table::{Chunk, HotTable, ShardReplica};

/// How often a statement retries its manifest commit when another node moved the pointer meanwhile.
const COMMIT_ATTEMPTS: usize = 8;

/// How long a DELETE or UPDATE waits for the outcome of a statement spanning shards that is removing rows of the same
/// shard, and how often it looks.
const PENDING_REMOVAL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
const PENDING_REMOVAL_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// A file written by a statement, and the rows it matched in what it replaces.
struct Rewritten {
    matched: u64,
    /// `None` when no row is left.
    file: Option<ColdFile>,
}

impl Engine {
    /// Applies a DELETE or UPDATE to table `table`, hot and cold rows alike; returns the rows it affected.
    /// Serialized with tiering, compaction and retention of each of the table's shards; whole or not at all.
    ///
    /// When every shard is this node's alone and none has cold files, the statement changes every shard's hot chunks
    /// in one atomic, durable commit, published as one; a table of one shard with cold files commits in its
    /// manifest. Otherwise each shard's part is written on its primary and the statement's decision, recorded in the
    /// metadata group, makes every part visible at once ([`Engine::change_rows_routed`]).
    pub(super) async fn change_rows(
        &self,
        state: &dyn Session,
        table: &Arc<HotTable>,
        change: &RowChange,
    ) -> Result<u64> {
        if let Some(assigned) = &change.assignments {
            let def = table.def();
            for (column, value) in def.columns.iter().zip(assigned) {
                if value.is_some() && def.sharding.shard_key.contains(&column.name) {
                    return Err(Error::Unsupported {
                        what: format!(
                            "UPDATE of column \"{}\" of table \"{}\": it is part of the shard key, and a changed key \
                             would move rows between shards (DELETE the rows and INSERT them again)",
                            column.name, def.name
                        ),
                    });
                }
            }
        }
        self.raise_floors(table);
        // The cold views must not trail their manifest pointers: a statement judged against a view without the
        // shard's newest files would miss their rows.
        self.follow_shards(table.shards()).await;
        // In a cluster, a shard replicated or led elsewhere changes through its primary's log (`engine::route`). So
        // does a statement over several shards that may reach cold files: each shard's part, hot or cold, then
        // waits for the statement's one decision.
        if self.needs_transaction(table)
            || (self.is_clustered() && self.write_routes(table).iter().any(|r| !r.is_direct()))
        {
            return self.change_rows_routed(state, table, change).await;
        }
        let compiled = dml::compile(state, change)?;
        let mut locks = Vec::with_capacity(table.shards().len());
        for shard in table.shards() {
            locks.push(shard.dml_lock.lock().await);
        }
        // Judged again under the locks: a tiering or a statement spanning shards may have come in between.
        if self.needs_transaction(table) {
            drop(locks);
            return self.change_rows_routed(state, table, change).await;
        }
        // Every shard's version and cold view as of one moment: an insert that spans shards is wholly in or out.
        let mut shards = Vec::with_capacity(table.shards().len());
        for (shard, version, cold) in table.snapshot() {
            match cold {
                ColdState::Ready(view) => shards.push((shard, version, view)),
                ColdState::Unavailable(detail) => return Err(Error::ColdUnavailable { detail }),
            }
        }
        if shards.iter().all(|(_, _, view)| view.files.is_empty()) {
            let mut affected = 0;
            let mut changes = Vec::new();
            for (shard, version, view) in &shards {
                let hot: Vec<Arc<Chunk>> = version.iter().filter(|c| c.seq > view.hot_through).cloned().collect();
                let change = dml::hot_change(state, shard, &compiled, &hot)?;
                if change.changed.is_empty() {
                    continue;
                }
                affected += change.affected;
                let (removed, added): (Vec<Arc<Chunk>>, Vec<RecordBatch>) = change.changed.into_iter().unzip();
                let added: Vec<RecordBatch> = added.into_iter().filter(|b| b.num_rows() > 0).collect();
                changes.push((Arc::clone(shard), removed, added));
            }
            if !changes.is_empty() {
                let t = Arc::clone(table);
                crate::blocking::run("DML commit task", move || t.replace_many(changes)).await??;
            }
            return Ok(affected);
        }
        // The table's one shard has cold files: it commits in its manifest, whole.
        let mut affected = 0;
        for (shard, _, _) in &shards {
            affected += self.change_shard_rows(state, shard, &compiled, None, 0).await?.0;
        }
        drop(locks);
        Ok(affected)
    }

    /// Whether a DELETE or UPDATE of `table` must be a statement spanning shards, each shard's part waiting for one
    /// decision: the table has several shards and one of them has cold files, a manifest pending, or parts of such
    /// statements not settled yet (which a plain rewrite of its hot chunks would not respect).
    fn needs_transaction(&self, table: &HotTable) -> bool {
        table.shards().len() > 1
            && table.shards().iter().any(|s| {
                matches!(s.cold(), ColdState::Ready(v) if !v.files.is_empty())
                    || !s.unsettled_txns().is_empty()
                    || self.meta.read_local(|m| m.shard(s.shard_id()).is_some_and(|r| r.pending.is_some()))
            })
    }

    /// Applies a compiled DELETE or UPDATE to one shard this node leads at `epoch`, as a part of statement `txn`
    /// spanning shards unless 0; returns the rows it affected, and whether the change is such a part (to be settled
    /// once the statement is decided). A shard whose only in-sync copy is this node changes here, hot and cold rows
    /// alike, unless a part; otherwise the change is one change of the shard's log, durable on every in-sync copy
    /// before it is visible (a part's stays invisible until its statement commits). A part that reaches the shard's
    /// cold files proposes the shard's manifest, pending the statement's decision.
    ///
    /// Rows a statement spanning shards is removing, undecided, or a shard with a manifest pending, cannot be
    /// changed before the outcome is known: the change waits for it ([`PENDING_REMOVAL_WAIT`]), then is refused
    /// (retryable).
    ///
    /// # Errors
    ///
    /// [`Error::ShardUnavailable`] when the shard moved past `epoch`, its prepared changes could not be settled or
    /// a removal stayed undecided (nothing changed); the errors of [`Engine::replicate_change`].
    pub(super) async fn change_led_shard(
        &self,
        state: &dyn Session,
        replica: &Arc<ShardReplica>,
        compiled: &Compiled,
        epoch: u64,
        txn: u64,
    ) -> Result<(u64, bool)> {
        let shard = replica.shard_id();
        let waited_from = tokio::time::Instant::now();
        let mut caught_up = false;
        let mut orphan_aborted = false;
        let _serialized = loop {
            let serialized = replica.dml_lock.lock().await;
            let record = self.shard_record_of(replica.def().id, shard)?;
            if record.epoch != epoch {
                return Err(Error::ShardUnavailable {
                    shard: shard.0,
                    detail: format!("the shard moved from epoch {epoch} to {} meanwhile", record.epoch),
                });
            }
            self.check_primary(&record)?;
            // Changes left prepared (a new primary's predecessor's, or a failure's) go first: they may hold parts
            // whose marks this statement must see.
            if replica.log_end() > replica.committed_lsn() && !self.settle(replica).await? {
                return Err(Error::ShardUnavailable {
                    shard: shard.0,
                    detail: "its prepared changes are not settled".into(),
                });
            }
            // Parts of statements spanning shards whose decision is recorded are settled first: the statement sees
            // every acknowledged row, and changes none it cannot see. This node's metadata may not have the decision
            // of a statement acknowledged before this one began: with parts left unsettled, it reads the metadata
            // group first (linearizable), so those left undecided began no earlier than this statement.
            if !caught_up && !replica.unsettled_txns().is_empty() {
                drop(serialized);
                self.meta.read_state(|_| ()).await?;
                caught_up = true;
                continue;
            }
            self.resolve_decided_locked(replica, epoch).await?;
            // A part of a statement spanning shards that rewrote the shard's cold files holds them until decided.
            let proposed = record.pending.as_ref().map(|p| p.txn);
            if proposed.is_some_and(|p| p == txn) {
                // An earlier attempt's answer was lost: the statement is aborted whole (not retried here).
                return Err(Error::OutcomeUnknown {
                    shard: shard.0,
                    detail: format!("its part of statement {txn:x} was proposed by an earlier attempt"),
                });
            }
            let removing = replica.version().iter().map(|c| c.meta.removed_by).find(|t| *t != 0);
            let Some(pending) = proposed.or(removing) else {
                break serialized;
            };
            drop(serialized);
            // Alone in its cluster, a node knows every statement in flight: an undecided one it does not coordinate
            // is aborted now (its decision then settles it on the next pass).
            if !orphan_aborted && self.abort_orphan(pending).await {
                orphan_aborted = true;
                continue;
            }
            if waited_from.elapsed() >= PENDING_REMOVAL_WAIT {
                return Err(Error::ShardUnavailable {
                    shard: shard.0,
                    detail: format!(
                        "statement {pending:x} spanning shards is changing its rows and is not decided yet; nothing \
                         was changed: retry the statement"
                    ),
                });
            }
            tokio::time::sleep(PENDING_REMOVAL_POLL).await;
        };
        let record = self.shard_record_of(replica.def().id, shard)?;
        let alone = record.in_sync.iter().all(|n| *n == self.node_id) && replica.log_end() == replica.committed_lsn();
        if alone && txn == 0 {
            return self.change_shard_rows(state, replica, compiled, None, 0).await;
        }
        if !self.settle(replica).await? {
            return Err(Error::ShardUnavailable {
                shard: shard.0,
                detail: "its prepared changes are not settled".into(),
            });
        }
        self.change_shard_rows(state, replica, compiled, Some(epoch), txn).await
    }

    /// Commits `change` of hot rows of `replica`: in this store alone (`epoch` `None`), or as one change of the
    /// shard's log, which this node leads at `epoch`, durable on every in-sync copy, a part of statement `txn`
    /// spanning shards unless 0 (its rows tagged with it, the chunks it replaces marked removed by it). Returns the
    /// rows affected, and whether the change is such a part.
    async fn commit_hot_change(
        &self,
        replica: &Arc<ShardReplica>,
        change: HotChange,
        epoch: Option<u64>,
        txn: u64,
    ) -> Result<(u64, bool)> {
        let Some(epoch) = epoch else { return Ok((dml::commit_hot(replica, change).await?, false)) };
        if change.changed.is_empty() {
            return Ok((0, false));
        }
        let removed: Vec<u64> = change.changed.iter().map(|(chunk, _)| chunk.seq).collect();
        // The rows changed are seen by the readers that saw the rows they come from (a part's, once its statement
        // commits, which is later).
        let visible_from = if txn == 0 {
            change.changed.iter().map(|(chunk, _)| chunk.meta.visible_from).max().unwrap_or(0)
        } else {
            0
        };
        let rows: Vec<RecordBatch> =
            change.changed.into_iter().map(|(_, rows)| rows).filter(|b| b.num_rows() > 0).collect();
        let r = Arc::clone(replica);
        let added =
            crate::blocking::run("encode changed rows", move || r.encode_chunks(rows, txn, visible_from)).await??;
        self.replicate_change(replica, epoch, added, removed, Vec::new(), txn).await?;
        Ok((change.affected, txn != 0))
    }

    /// [`Engine::change_rows`] on one shard, this node's store alone (`epoch` `None`) or as the shard's primary at
    /// `epoch`; the caller holds the shard's DML lock.
    ///
    /// A statement that reaches cold files lands whole in one commit of the shard's manifest: the rewritten files,
    /// and the shard's hot rows below it moved into a file of their own with the statement applied, the shard's mark
    /// moved past them. Every copy follows the manifest, skipping (and dropping) the chunks the mark covers. A part
    /// of statement `txn` spanning shards only proposes that manifest; the statement's decision makes it current.
    async fn change_shard_rows(
        &self,
        state: &dyn Session,
        table: &Arc<ShardReplica>,
        compiled: &Compiled,
        epoch: Option<u64>,
        txn: u64,
    ) -> Result<(u64, bool)> {
        self.follow_shards(std::slice::from_ref(table)).await;
        let view = match table.cold() {
            ColdState::Ready(view) => view,
            ColdState::Unavailable(detail) => return Err(Error::ColdUnavailable { detail }),
        };
        if view.files.is_empty() {
            let hot: Vec<Arc<Chunk>> =
                table.version().iter().filter(|c| c.seq > view.hot_through && !c.meta.unsettled()).cloned().collect();
            let change = dml::hot_change(state, table, compiled, &hot)?;
            return self.commit_hot_change(table, change, epoch, txn).await;
        }
        // Work from the shard's current manifest: the files to rewrite and the mark must be the latest.
        let shard = self.shard_record(table)?;
        let (_, current) = self.shard_manifest(table, &shard).await?;
        self.adopt(table, &current).await;
        let view = match table.cold() {
            ColdState::Ready(view) => view,
            ColdState::Unavailable(detail) => return Err(Error::ColdUnavailable { detail }),
        };
        // Every chunk numbered below it is in the version, and none is part of a statement not settled yet (not in
        // the files the mark moves past).
        let (version, settled_below) = table.tierable();
        let hot: Vec<Arc<Chunk>> =
            version.iter().filter(|c| c.seq > view.hot_through && !c.meta.unsettled()).cloned().collect();
        let hot_change = dml::hot_change(state, table, compiled, &hot)?;
        let schema = table.schema();
        let candidates: Vec<ColdFile> =
            matching_files(state, &schema, &view, &compiled.prune)?.into_iter().cloned().collect();
        let store = self.cold_store()?;
        let began = tokio::time::Instant::now();
        let began_ms = crate::clock::unix_ms();
        let (mut replaced, mut files, mut cold_affected) = (Vec::new(), Vec::new(), 0);
        for file in &candidates {
            let rewritten = self.rewrite_file(&store, table, &shard, compiled, file).await?;
            if rewritten.matched > 0 {
                cold_affected += rewritten.matched;
                replaced.push(file.path.clone());
                files.extend(rewritten.file);
            }
        }
        if replaced.is_empty() {
            return self.commit_hot_change(table, hot_change, epoch, txn).await;
        }
        let moved: Vec<Arc<Chunk>> = hot.iter().filter(|c| c.seq < settled_below).cloned().collect();
        let tiered = if hot_change.changed.is_empty() {
            None
        } else if hot_change.changed.iter().any(|(c, _)| c.seq >= settled_below) {
            return Err(Error::ColdUnavailable {
                detail: format!(
                    "table \"{}\" has an insert in progress that this statement would change in part; retry the \
                     statement (its uploads are left for the garbage collector)",
                    table.def().name
                ),
            });
        } else {
            Some(self.tier_changed(&store, table, &shard, &moved, &hot_change).await?)
        };

        for _ in 0..COMMIT_ATTEMPTS {
            let (pointer, current) = self.shard_manifest(table, &shard).await?;
            // Only this node changes its own files and mark, and only under the table's lock.
            let mark = cold::mark_of(&current.hot_through, table.mark_id());
            if mark != view.hot_through || replaced.iter().any(|p| !current.files.iter().any(|f| &f.path == p)) {
                return Err(Error::Internal(format!(
                    "the cold files of table \"{}\" on this node changed under a statement",
                    table.def().name
                )));
            }
            let mut next = current.replacing(
                &replaced,
                files.clone(),
                crate::clock::unix_ms(),
                self.cold.gc_grace().as_millis() as u64,
            );
            match &tiered {
                // The statement left no hot row: the mark moves past the chunks all the same.
                Some(file) if file.rows == 0 => next.mark_tiered(file.store, file.max_seq),
                Some(file) => next.add_tiered(file.clone()),
                None => {}
            }
            let location = self.store_manifest(&store, &mut next).await?;
            if began.elapsed() > self.cold.gc_grace() / 2 {
                return Err(Error::ColdUnavailable {
                    detail: format!(
                        "the statement on table \"{}\" took longer than half of cold.gc_grace ({:?}) to rewrite its \
                         files; nothing was changed: retry it",
                        table.def().name,
                        self.cold.gc_grace()
                    ),
                });
            }
            // A part of a statement spanning shards only proposes its manifest: the statement's decision makes it
            // current (every copy then follows it, dropping the hot chunks its mark covers) or drops it.
            let part = if epoch.is_some() { txn } else { 0 };
            if self.propose_manifest(&shard, pointer.as_ref(), &next, location, began_ms, part).await? {
                if part != 0 {
                    tracing::info!(table = %table.def().name, shard = %shard.shard_id, txn = format!("{txn:x}"), version = next.version, "cold files rewritten as a part of a statement spanning shards; the manifest waits for its decision");
                    let affected = cold_affected + if tiered.is_some() { hot_change.affected } else { 0 };
                    return Ok((affected, true));
                }
                self.adopt(table, &next).await;
                let mut affected = cold_affected;
                if tiered.is_some() {
                    affected += hot_change.affected;
                    // As after a tiering: the mark covers these chunks, scans skip them, and the next open
                    // removes them if this does not.
                    let t = Arc::clone(table);
                    let rows: u64 = moved.iter().map(|c| c.meta.rows).sum();
                    crate::blocking::run("remove tiered chunks", move || t.replace(&moved, Vec::new())).await??;
                    self.metrics.rows_tiered.add(rows);
                }
                return Ok((affected, false));
            }
        }
        Err(Error::ColdUnavailable {
            detail: format!("the manifest of table \"{}\" kept changing; retry the statement", table.def().name),
        })
    }

    /// Writes `file`'s rows with the statement applied as a new file (deleted again when nothing matched or no row
    /// is left).
    async fn rewrite_file(
        &self,
        store: &Arc<dyn ObjectStore>,
        table: &ShardReplica,
        shard: &ShardRecord,
        change: &Compiled,
        file: &ColdFile,
    ) -> Result<Rewritten> {
        let schema = table.schema();
        let display = self.cold.display();
        let path = self.new_file_path(table, shard, file.max_seq)?;
        let source = read_file(self.readers(store), display.to_string(), file.path.clone(), file.bytes).await?;
        let (mut matched, mut rows, mut stats) = (0u64, 0u64, StatsBuilder::new(&schema));
        let batches = source.map(|batch| {
            let batch = as_table_rows(table, &batch?)?;
            let (m, replacement) = change.rewrite(table, &batch)?;
            let out = replacement.unwrap_or(batch);
            matched += m;
            rows += out.num_rows() as u64;
            stats.observe(&out);
            Ok(out)
        });
        let bytes = cold::write_parquet(store, display, &path, &schema, batches, &self.file_layout(table)).await?;
        if matched == 0 || rows == 0 {
            // Unreferenced either way; the garbage collector takes it if this fails.
            let _ = store.delete(&object_store::path::Path::from(path.as_str())).await;
        }
        if matched == 0 {
            return Ok(Rewritten { matched, file: None });
        }
        let file = (rows > 0).then(|| ColdFile {
            path,
            node: self.node_id,
            store: table.mark_id(),
            rows,
            bytes,
            max_seq: file.max_seq,
            columns: stats.finish(),
            written_ms: file.written_ms,
            visible_from: file.visible_from,
        });
        Ok(Rewritten { matched, file })
    }

    /// Writes the settled hot chunks `moved`, with the statement's changes (`change`) applied, as one file that
    /// holds this store's chunks up to the highest of them (with no rows when none is left: then it is deleted again
    /// and only the mark moves).
    async fn tier_changed(
        &self,
        store: &Arc<dyn ObjectStore>,
        table: &ShardReplica,
        shard: &ShardRecord,
        moved: &[Arc<Chunk>],
        change: &HotChange,
    ) -> Result<ColdFile> {
        let schema = table.schema();
        let max_seq = moved.iter().map(|c| c.seq).max().unwrap_or(0);
        let path = self.new_file_path(table, shard, max_seq)?;
        let replacements: std::collections::HashMap<u64, &RecordBatch> =
            change.changed.iter().map(|(c, b)| (c.seq, b)).collect();
        let mut stats = StatsBuilder::new(&schema);
        let mut rows = 0u64;
        let batches = futures::stream::iter(moved.iter().map(|chunk| {
            let batch = match replacements.get(&chunk.seq) {
                Some(b) => (*b).clone(),
                None => table.read_chunk(chunk, None, &schema)?,
            };
            rows += batch.num_rows() as u64;
            stats.observe(&batch);
            Ok(batch)
        }));
        let layout = self.file_layout(table);
        let bytes = cold::write_parquet(store, self.cold.display(), &path, &schema, batches, &layout).await?;
        if rows == 0 {
            // Not listed (see `change_rows`); the garbage collector takes it if this fails.
            let _ = store.delete(&object_store::path::Path::from(path.as_str())).await;
        }
        Ok(ColdFile {
            path,
            node: self.node_id,
            store: table.mark_id(),
            rows,
            bytes,
            max_seq,
            columns: stats.finish(),
            written_ms: Some(WrittenRange {
                min: moved.iter().map(|c| c.meta.written_ms).min().unwrap_or(0),
                max: moved.iter().map(|c| c.meta.written_ms).max().unwrap_or(0),
            }),
            visible_from: moved.iter().map(|c| c.meta.visible_from).max().unwrap_or(0),
        })
    }

    /// A new data file's name for this node's store in `table`'s shard.
    pub(super) fn new_file_path(&self, table: &ShardReplica, shard: &ShardRecord, max_seq: u64) -> Result<String> {
        Ok(Manifest::data_path(
            table.def().id.0,
            shard.shard_id.0,
            self.node_id,
            table.mark_id(),
            max_seq,
            crate::random_u64()?,
        ))
    }
}

/// A batch read from a cold file as rows of the table: its schema, checked (a file written under another schema is
/// refused, not rewritten).
pub(super) fn as_table_rows(table: &ShardReplica, batch: &RecordBatch) -> Result<RecordBatch> {
    RecordBatch::try_new(table.schema(), batch.columns().to_vec()).map_err(|e| Error::Corrupt {
        location: format!("table \"{}\" cold files", table.def().name),
        detail: format!("a file's columns do not match the table's: {e}"),
    })
}
