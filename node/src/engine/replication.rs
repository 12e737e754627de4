//! The replica side of the cluster data path (docs/rfcs/0001-cluster-data-path.md): changes a shard's primary
//! replicates to this node, the committed chunks a catching-up replica is sent, and scans of one shard's replica
//! (hot and cold rows, from the replica's own consistent view). The primary's side is `super::primary`.
//!
//! Every request names the shard's configuration epoch as its sender knows it, and is checked against this node's
//! metadata replica first ([`Engine::check_shard_epoch`]): an older epoch is refused (its sender was deposed or
//! planned on a configuration that no longer holds), a newer one makes this node catch up with the metadata group
//! before it decides.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use quiver_meta::{ShardId, ShardRecord, TableId};

use super::Engine;
use crate::cold::ColdState;
use crate::error::{Error, Result};
use crate::query::provider::HotTableProvider;
use crate::table::ShardReplica;

/// One chunk as the replication stream carries it: its number, index entry and data.
pub type ReplicatedChunk = (u64, Vec<u8>, Vec<u8>);

/// A change a shard's primary made, as the replication stream carries it.
#[derive(Debug, Clone)]
pub struct ReplicatedChange {
    /// The table and its shard.
    pub table: TableId,
    /// The shard.
    pub shard: ShardId,
    /// The shard's epoch as the primary knows it.
    pub epoch: u64,
    /// The primary.
    pub from_node: u64,
    /// Chunks added, under the primary's numbers.
    pub added: Vec<ReplicatedChunk>,
    /// Numbers of chunks removed.
    pub removed: Vec<u64>,
    /// The primary's next chunk number after the change.
    pub next_seq: u64,
    /// The change's number in the shard's log, kept prepared until `commit_through` passes it; 0: committed as it
    /// arrives (a catching-up replica's committed chunks).
    pub lsn: u64,
    /// The epoch at which the primary numbered the change (0: `epoch`).
    pub term: u64,
    /// The primary's commit point.
    pub commit_through: u64,
    /// Prepared changes above this number are discarded first (a new primary's reconciliation).
    pub discard_after: Option<u64>,
    /// The last message of a catch-up: the committed chunks the replica holds afterwards, exactly (see
    /// `ShardReplica::reset`); `commit_through` is then its commit point.
    pub reset: Option<Vec<u64>>,
    /// The statements spanning shards whose parts the change settles.
    pub resolved: Vec<crate::table::log::Resolution>,
    /// The statement spanning shards the change is a part of (0: none): it marks the chunks it removes.
    pub txn: u64,
}

/// What a replica of one shard holds ([`Engine::replica_status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The numbers of its committed chunks.
    pub chunks: Vec<u64>,
    /// A digest of each of those chunks, in the same order (`ChunkMeta::digest`).
    pub digests: Vec<u64>,
    /// Its commit point.
    pub committed_lsn: u64,
    /// The last change of the shard's log it holds.
    pub log_end: u64,
}

/// What a replica holds after a change was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaState {
    /// The shard's epoch on this node.
    pub epoch: u64,
    /// Chunks held.
    pub chunks: u64,
    /// Rows of those chunks.
    pub rows: u64,
    /// The replica's commit point.
    pub committed_lsn: u64,
    /// The changes it holds prepared above it.
    pub prepared: Vec<u64>,
}

/// The rows of one shard's replica, read by [`Engine::scan_shard`].
pub struct ShardScan {
    /// The projected schema.
    pub schema: SchemaRef,
    /// The rows, as the replica's scan produces them. The stream ends with [`Error::ShardUnavailable`] instead of its
    /// end when the shard moved while it was read: the rows already sent may then miss some of the shard's.
    pub batches: datafusion::physical_plan::SendableRecordBatchStream,
    /// The manifest version of the replica's cold view: the cold rows read are that version's files.
    pub manifest_version: u64,
    /// The highest chunk number the cold view covers: the hot rows read are above it.
    pub hot_through: u64,
}

impl std::fmt::Debug for ShardScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardScan")
            .field("schema", &self.schema)
            .field("manifest_version", &self.manifest_version)
            .field("hot_through", &self.hot_through)
            .finish_non_exhaustive()
    }
}

/// How many bytes of rows a reader takes from a shard's scan before it starts passing them on ([`ShardScan::head`]).
pub const SCAN_HEAD_BYTES: usize = 4 << 20;

impl ShardScan {
    /// Reads the scan's first rows, up to about `bytes` of them; returns them with the rest of the stream, `None` when
    /// the scan ended within them. A scan that ends within `bytes` (most of a small shard's) succeeds or fails whole,
    /// before its reader passed on any row: a shard that moved under it is then read again from its new primary
    /// rather than failing the statement.
    ///
    /// # Errors
    ///
    /// The scan's error, when it came within the first `bytes` ([`Error::ShardUnavailable`] when the shard moved).
    pub async fn head(
        self,
        bytes: usize,
    ) -> Result<(Vec<RecordBatch>, Option<datafusion::physical_plan::SendableRecordBatchStream>)> {
        let mut rows = self.batches;
        let (mut head, mut size) = (Vec::new(), 0usize);
        loop {
            match rows.next().await {
                None => return Ok((head, None)),
                Some(Err(e)) => return Err(Error::from(e)),
                Some(Ok(batch)) => {
                    size += batch.get_array_memory_size();
                    head.push(batch);
                    if size >= bytes {
                        return Ok((head, Some(rows)));
                    }
                }
            }
        }
    }
}

impl Engine {
    /// Returns the shard's record when `epoch` is its current epoch as this node knows it, catching up with the
    /// metadata group first when `epoch` is newer.
    ///
    /// # Errors
    ///
    /// [`Error::ShardUnavailable`] for an unknown shard, a shard of another table, or an epoch other than the current one.
    pub(crate) async fn check_shard_epoch(&self, table: TableId, shard: ShardId, epoch: u64) -> Result<ShardRecord> {
        // A node's metadata replica replays old configurations after a start (all of them, after a lost disk), in
        // which it may have led shards it leads no more: its first shard request waits until the replica has caught
        // up with the metadata group once.
        if !self.shards_served.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::ShardUnavailable {
                shard: shard.0,
                detail: "this node is still joining its cluster".into(),
            });
        }
        if !self.injected(super::InjectedBugKind::DeposedPrimaryAccepts) {
            self.confirm_meta().await?;
        }
        let read = || self.meta.read_local(|s| s.shard(shard).cloned());
        let mut record = read();
        if record.as_ref().is_none_or(|r| r.epoch < epoch) {
            // This node may be behind: a newer configuration, or a table created since its last apply.
            self.catch_up().await?;
            record = read();
        }
        let refuse = |detail: String| Error::ShardUnavailable { shard: shard.0, detail };
        let Some(record) = record else { return Err(refuse("no such shard".into())) };
        if record.table_id != table {
            return Err(refuse(format!("the shard belongs to table {}, not {table}", record.table_id)));
        }
        if record.epoch != epoch {
            return Err(refuse(format!("the request is at epoch {epoch}, the shard at epoch {}", record.epoch)));
        }
        Ok(record)
    }

    /// Catches this node's metadata replica up with the metadata group once after the engine opened: until then it
    /// may replay configurations in which this node led shards it leads no more (all of them, after a lost disk), and
    /// its replicas of those would answer for them.
    ///
    /// # Errors
    ///
    /// The metadata group's errors, when no leader confirmed a read in time.
    pub(crate) async fn confirm_meta(&self) -> Result<()> {
        if !self.meta_confirmed.load(std::sync::atomic::Ordering::Acquire) {
            self.catch_up().await?;
            self.meta_confirmed.store(true, std::sync::atomic::Ordering::Release);
        }
        Ok(())
    }

    /// This node's replica of a shard.
    pub(super) fn replica_of(&self, table: TableId, shard: ShardId) -> Result<Arc<ShardReplica>> {
        self.hot_table_by_id(table).and_then(|t| t.shards().iter().find(|r| r.shard_id() == shard).cloned()).ok_or_else(
            || Error::ShardUnavailable { shard: shard.0, detail: format!("no replica of it on node {}", self.node_id) },
        )
    }

    /// Lets shard requests in, once this node has joined its cluster (a node back with an empty disk is then out of
    /// every in-sync set).
    pub fn serve_shards(&self) {
        self.shards_served.store(true, std::sync::atomic::Ordering::Release);
    }

    /// This node's replica of a shard, for a request of its primary `from_node` at `epoch`.
    async fn replica_for(
        &self,
        table: TableId,
        shard: ShardId,
        epoch: u64,
        from_node: u64,
    ) -> Result<Arc<ShardReplica>> {
        let record = self.check_shard_epoch(table, shard, epoch).await?;
        let refuse = |detail: String| Error::ShardUnavailable { shard: shard.0, detail };
        if record.primary != from_node {
            return Err(refuse(format!(
                "node {from_node} is not its primary at epoch {epoch} (node {} is)",
                record.primary
            )));
        }
        if !record.replicas.contains(&self.node_id) {
            return Err(refuse(format!("node {} holds no replica of it at epoch {epoch}", self.node_id)));
        }
        self.replica_of(table, shard)
    }

    /// What this node's replica of a shard holds, asked by its primary `from_node` at `epoch`.
    ///
    /// # Errors
    ///
    /// As [`Engine::apply_replicated`]'s checks.
    pub async fn replica_status(
        &self,
        table: TableId,
        shard: ShardId,
        epoch: u64,
        from_node: u64,
    ) -> Result<ReplicaStatus> {
        let replica = self.replica_for(table, shard, epoch, from_node).await?;
        let version = replica.version();
        Ok(ReplicaStatus {
            chunks: version.iter().map(|c| c.seq).collect(),
            digests: version.iter().map(|c| c.meta.digest()).collect(),
            committed_lsn: replica.committed_lsn(),
            log_end: replica.log_end(),
        })
    }

    /// Applies what a shard's primary sent: discards prepared changes it never had, prepares a change of the shard's
    /// log (or, numbered 0, applies committed chunks directly: `ShardReplica::apply`), and commits the prepared
    /// changes up to the primary's commit point; returns what the replica holds once all that is durable.
    ///
    /// # Errors
    ///
    /// [`Error::ShardUnavailable`] when the epoch is not the shard's, `from_node` is not its primary, or this node holds
    /// no replica of it; [`Error::Parameter`] for a malformed chunk; store errors.
    pub async fn apply_replicated(&self, change: ReplicatedChange) -> Result<ReplicaState> {
        let ReplicatedChange {
            table,
            shard,
            epoch,
            from_node,
            added,
            removed,
            next_seq,
            lsn,
            term,
            commit_through,
            discard_after,
            reset,
            resolved,
            txn,
        } = change;
        let replica = self.replica_for(table, shard, epoch, from_node).await?;
        let refuse = |detail: String| Error::ShardUnavailable { shard: shard.0, detail };
        let _serialized = replica.dml_lock.lock().await;
        // The epoch may have moved while this waited for the lock: a deposed primary's change must not land after
        // its successor's.
        let now = self.meta.read_local(|s| s.shard(shard).map(|r| r.epoch));
        if now != Some(epoch) {
            return Err(refuse(format!("the shard moved from epoch {epoch} to {now:?} meanwhile")));
        }
        // A catch-up replaces the replica's chunks wholesale, after removals by statements spanning shards that the
        // primary settled: readers at a snapshot older than the metadata now may have expected the removed chunks.
        let removals_floor = match reset {
            Some(_) => self.meta.read_state(|s| s.version()).await?,
            None => 0,
        };
        // A replica's commit point never passes its primary's, which settles what it prepared before a catch-up: a
        // sender behind it lost what this replica committed (a node back with an empty disk that took itself for the
        // primary), and its reset would drop acknowledged rows here too.
        let held = replica.committed_lsn();
        if reset.is_some() && commit_through < held {
            return Err(refuse(format!(
                "a catch-up to commit point {commit_through} is refused: this replica committed through {held}, so \
                 the sender's log is behind"
            )));
        }
        let r = Arc::clone(&replica);
        crate::blocking::run("apply a replicated change", move || -> Result<()> {
            if let Some(keep) = reset {
                return r.reset(added, &keep, commit_through, next_seq, &resolved, removals_floor);
            }
            if let Some(lsn) = discard_after {
                r.discard_after(lsn)?;
            }
            if lsn > 0 {
                let term = if term == 0 { epoch } else { term };
                r.prepare(epoch, crate::table::log::LoggedChange { lsn, term, added, removed, resolved, txn })?;
            } else if !added.is_empty() || !removed.is_empty() {
                r.apply(added, &removed, next_seq)?;
            }
            if commit_through > 0 {
                r.commit_through(commit_through)?;
                if r.committed_lsn() < commit_through {
                    return Err(Error::ShardUnavailable {
                        shard: shard.0,
                        detail: format!(
                            "the primary committed through change {commit_through}, this replica holds the log only \
                             through {}; it must catch up",
                            r.log_end()
                        ),
                    });
                }
            }
            Ok(())
        })
        .await??;
        if replica.log_end() > replica.committed_lsn() {
            self.unsettled.lock().expect("unsettled lock poisoned").insert((table, shard));
        }
        let version = replica.version();
        Ok(ReplicaState {
            epoch,
            chunks: version.len() as u64,
            rows: version.iter().map(|c| c.meta.rows).sum(),
            committed_lsn: replica.committed_lsn(),
            prepared: replica.prepared_lsns(),
        })
    }

    /// Every committed chunk of this node's replica of a shard, in number order, as the replication stream carries
    /// them, with the replica's next chunk number: what a replica that catches up is sent.
    ///
    /// # Errors
    ///
    /// [`Error::ShardUnavailable`] when this node holds no replica of the shard; store errors.
    pub async fn committed_chunks(&self, table: TableId, shard: ShardId) -> Result<(Vec<ReplicatedChunk>, u64)> {
        let replica = self.replica_of(table, shard)?;
        let r = Arc::clone(&replica);
        let chunks = crate::blocking::run("read committed chunks", move || r.committed_chunks()).await??;
        Ok((chunks, replica.next_seq()))
    }

    /// Reads the rows of this node's replica of a shard at `epoch`, hot and cold (the replica's own consistent view
    /// of both), with the columns in `projection` (`None`: all; empty: row counts only), at most `limit` rows.
    ///
    /// # Errors
    ///
    /// [`Error::ShardUnavailable`] when the epoch is not the shard's or this node holds no replica of it;
    /// [`Error::Plan`] for a column the table does not have; [`Error::ColdUnavailable`] when the replica's cold
    /// files cannot be read; store errors.
    #[allow(clippy::too_many_arguments)]
    pub async fn scan_shard(
        &self,
        table: TableId,
        shard: ShardId,
        epoch: u64,
        projection: Option<Vec<usize>>,
        filter: Option<&str>,
        limit: Option<usize>,
        snapshot: Option<u64>,
    ) -> Result<ShardScan> {
        let record = if self.injected(super::InjectedBugKind::StaleEpochScan) {
            self.shard_record_of(table, shard)?
        } else {
            self.check_shard_epoch(table, shard, epoch).await?
        };
        let replica = self.replica_of(table, shard)?;
        // A primary serves every change it may have acknowledged: changes left prepared (by a failure, or by its
        // predecessor) are settled first.
        if record.primary == self.node_id && replica.log_end() > replica.committed_lsn() {
            let _serialized = replica.dml_lock.lock().await;
            self.settle(&replica).await.map_err(|e| Error::ShardUnavailable {
                shard: shard.0,
                detail: format!("its prepared changes could not be settled: {}", e.report()),
            })?;
        }
        let hot = self.hot_table_by_id(table).ok_or_else(|| Error::ShardUnavailable {
            shard: shard.0,
            detail: "its table is not attached here".into(),
        })?;
        // The reader's snapshot decides which statements spanning shards it sees; this node judges them once it has
        // applied the metadata up to that snapshot, and follows the shard's manifest from there.
        if snapshot.is_some_and(|s| self.meta.read_local(|m| m.version()) < s) {
            self.meta.read_state(|_| ()).await?;
        }
        // As before any statement: a cold view must not trail the shard's manifest pointer.
        self.follow_shards(std::slice::from_ref(&replica)).await;
        let (manifest_version, hot_through) = match replica.cold() {
            ColdState::Ready(view) => (view.version, view.hot_through),
            ColdState::Unavailable(detail) => return Err(Error::ColdUnavailable { detail }),
        };
        let schema = replica.schema();
        let columns = projection.unwrap_or_else(|| (0..schema.fields().len()).collect());
        if let Some(bad) = columns.iter().find(|c| **c >= schema.fields().len()) {
            return Err(Error::Plan { message: format!("table \"{}\" has no column {bad}", replica.def().name) });
        }
        let read_at = crate::query::provider::ReadAt { meta: self.meta.clone(), snapshot };
        let provider = Arc::new(HotTableProvider::for_shard(hot, shard, read_at));
        let mut frame = self.ctx.read_table(provider)?;
        if let Some(filter) = filter {
            let predicate = frame.parse_sql_expr(filter)?;
            frame = frame.filter(predicate)?;
        }
        // Row counts only: read the narrowest column and keep the counts.
        let counts_only = columns.is_empty();
        let names: Vec<&str> = match columns.first() {
            None => vec![schema.field(0).name().as_str()],
            Some(_) => columns.iter().map(|c| schema.field(*c).name().as_str()).collect(),
        };
        frame = frame.select_columns(&names)?;
        if let Some(limit) = limit {
            frame = frame.limit(0, Some(limit))?;
        }
        let projected: SchemaRef = match counts_only {
            true => Arc::new(arrow::datatypes::Schema::empty()),
            false => Arc::new(frame.schema().as_arrow().clone()),
        };
        let rows = frame.execute_stream().await?;
        let out = Arc::clone(&projected);
        let rows = rows.map(move |batch| {
            let batch = batch?;
            if !counts_only {
                return Ok(batch);
            }
            let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
            Ok(RecordBatch::try_new_with_options(Arc::clone(&out), vec![], &options)?)
        });
        // The shard may have moved while the scan ran (its manifests, the network, a slow reader): a replica dropped
        // from it deletes its rows once it applied the move, so rows read after that are not the shard's (node seed
        // 8177 with `--shards 2`: a scan checked at epoch 7 read the replica after it left at epoch 8). The epoch
        // still current once the last row is read means none was deleted; otherwise the stream ends in an error,
        // never in a quiet end that would miss rows.
        let (meta, epoch) = (self.meta.clone(), record.epoch);
        let moved = futures::stream::once(async move {
            let now = meta.read_local(|s| s.shard(shard).map(|r| r.epoch));
            (now != Some(epoch)).then(|| {
                Err(DataFusionError::from(Error::ShardUnavailable {
                    shard: shard.0,
                    detail: format!("the shard moved from epoch {epoch} to {now:?} during the scan"),
                }))
            })
        })
        .filter_map(futures::future::ready);
        let batches = Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&projected), rows.chain(moved)));
        Ok(ShardScan { schema: projected, batches, manifest_version, hot_through })
    }
}
