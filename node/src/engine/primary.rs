//! The primary's side of a shard's log (docs/rfcs/0001-cluster-data-path.md, "Writes and replication"): a change
//! of a shard this node leads is numbered, made durable here as *prepared*, sent to every in-sync backup, and
//! committed (made visible) only once every in-sync copy has it durable.
//!
//! ```text
//!  write_shard ─▶ dml_lock ─▶ check epoch, role, min_in_sync ─▶ number chunks and change ─▶ prepare here (fsync)
//!      ─▶ Replicate(lsn, term, chunks, commit point) to each in-sync backup, in log order, in parallel
//!      ─▶ all durable ──────────────────────────────────────────────▶ commit here ─▶ acknowledge
//!      └▶ a backup failed ─▶ SetShardReplicas { in_sync − it, expected_epoch } ─▶ applied: commit, acknowledge
//!                                                                            └▶ refused: "outcome unknown"
//! ```
//!
//! Rules:
//!
//! - Nothing is acknowledged before every in-sync copy has the change durable: a backup that did not take it leaves
//!   the in-sync set first, by a compare-and-set on the shard's epoch, which fails once this node was deposed.
//! - A write is refused, before anything is written, when fewer copies are in sync than `min_in_sync` (capped at the
//!   table's `replicas`).
//! - Changes of one shard are serialized (the replica's DML lock), so every backup receives them in log order; a
//!   change left prepared here by an earlier failure is sent again, under its own number and term, before the next
//!   one, and committed with it (a change whose outcome was reported unknown may take effect).
//! - Once a change is prepared anywhere, a failure is reported as [`Error::OutcomeUnknown`], never as a refusal.
//! - Backups learn the commit point with the next change, or from [`Engine::push_commit_points`] when none follows.
//! - A shard whose only in-sync copy is this node, with nothing prepared, commits directly, as a single node does.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use quiver_meta::transport::{PeerTls, PeerTransport};
use quiver_meta::{MetaCommand, Rejection, ShardId, ShardRecord, TableDef, TableId};
use quiver_proto::v1::shard_service_client::ShardServiceClient;
use quiver_proto::v1::{ReplicateRequest, ReplicatedChunk as WireChunk, TransactionOutcome};
use tonic::transport::Channel;

use super::moves::MoveKey;
use super::{Engine, InjectedBugKind, ReplicatedChunk};
use crate::error::{Error, Result};
use crate::table::ShardReplica;
use crate::table::log::LoggedChange;

/// How often a primary tells its backups a commit point no later change carried to them.
pub const COMMIT_PUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Every this many rounds of [`Engine::tend_shards`], every shard whose backups may lag the commit point is swept in.
const COMMIT_SWEEP_ROUNDS: u64 = 25;

/// Every this many rounds of [`Engine::tend_shards`], replicas out of the in-sync set are caught up.
const CATCH_UP_ROUNDS: u64 = 5;

/// Connections to the internal endpoints of other nodes, by address, opened on first use and kept; over mutual TLS
/// when the cluster uses it.
#[derive(Debug, Default)]
pub(crate) struct Peers {
    tls: PeerTls,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Peers {
    /// Connections made with `tls`.
    pub(crate) fn new(tls: PeerTls) -> Self {
        Self { tls, channels: Mutex::default() }
    }

    /// A shard service client for the node at `addr`.
    pub(super) fn client(
        &self,
        addr: &str,
        connect_timeout: Duration,
    ) -> std::result::Result<ShardServiceClient<Channel>, String> {
        let mut channels = self.channels.lock().expect("peers lock poisoned");
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let transport = PeerTransport::new(connect_timeout, self.tls.clone());
                // Pings on open calls: a call that may run long (a rewrite of cold files) fails once its peer has
                // been silent for two timeouts, not at its deadline.
                let endpoint = transport
                    .endpoint(addr)
                    .map_err(|e| e.to_string())?
                    .http2_keep_alive_interval(connect_timeout)
                    .keep_alive_timeout(connect_timeout);
                let channel = transport.connect_lazy(&endpoint);
                channels.insert(addr.to_string(), channel.clone());
                channel
            }
        };
        Ok(ShardServiceClient::new(channel).max_decoding_message_size(usize::MAX))
    }
}

impl Engine {
    /// Writes rows of one shard on this node as its primary at `epoch`: durable on every in-sync copy, then visible,
    /// as one change of the shard's log; returns the rows written. The rows of a statement a node routed by slot
    /// (`ShardService.WriteShard`).
    ///
    /// # Errors
    ///
    /// [`Error::ShardUnavailable`] when the epoch is not the shard's, this node is not its primary, or fewer copies
    /// are in sync than `min_in_sync` (nothing was written); [`Error::OutcomeUnknown`] when a failure came after the
    /// rows were durable somewhere; [`Error::Plan`] for a row of another shard; the errors of an insert (schema
    /// mismatch, NOT NULL, store).
    ///
    /// With `txn` other than 0, the rows are one part of that statement spanning shards: replicated and committed in
    /// the shard's log like any write, but visible only once the metadata group records the statement's commit (see
    /// [`Engine::resolve_part`]).
    pub async fn write_shard(
        &self,
        table: TableId,
        shard: ShardId,
        epoch: u64,
        batches: Vec<RecordBatch>,
        txn: u64,
    ) -> Result<u64> {
        let (record, hot, replica) = self.led_shard(table, shard, epoch).await?;
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let _serialized = replica.dml_lock.lock().await;
        // A shard whose only in-sync copy is this one, with nothing left prepared, has no backup to wait for: it
        // commits as a single node does. Decided under the lock, so that no backup joins the in-sync set meanwhile.
        let now = self.meta.read_local(|s| s.shard(shard).cloned()).unwrap_or(record);
        let alone = now.epoch == epoch && now.in_sync.iter().all(|n| *n == self.node_id);
        if alone && txn == 0 && replica.log_end() == replica.committed_lsn() {
            self.check_primary(&now)?;
            self.check_min_in_sync(&now, hot.def())?;
            let stream = futures::stream::iter(batches.into_iter().map(Ok::<_, Error>));
            let written = hot.append_shard_stream(shard, stream).await?;
            // No backup fences a sole copy: a node whose metadata lags (back from a lost disk, replaying the log)
            // could take itself for a primary the cluster has replaced. The configuration is confirmed current
            // (a linearizable read) after the commit and before the acknowledgement.
            if self.injected(InjectedBugKind::DeposedPrimaryAccepts) {
                return Ok(written);
            }
            let confirmed = self.meta.read_state(|s| s.shard(shard).cloned()).await;
            let current = matches!(&confirmed, Ok(Some(r)) if r.epoch == epoch && r.primary == self.node_id);
            if !current {
                self.metrics.shard_outcome_unknown.inc();
                return Err(Error::OutcomeUnknown {
                    shard: shard.0,
                    detail: format!(
                        "the rows were written here as the shard's only in-sync copy at epoch {epoch}, and the \
                         shard's configuration could not be confirmed current afterwards ({})",
                        match confirmed {
                            Ok(Some(r)) => format!("it is at epoch {}, led by node {}", r.epoch, r.primary),
                            Ok(None) => "the shard is gone".to_string(),
                            Err(e) => e.to_string(),
                        }
                    ),
                });
            }
            return Ok(written);
        }
        let (h, r) = (Arc::clone(&hot), Arc::clone(&replica));
        let added = crate::blocking::run("encode a shard's rows", move || -> Result<Vec<ReplicatedChunk>> {
            let parts = batches.iter().map(|b| h.conform_part(shard, b)).collect::<Result<Vec<_>>>()?;
            r.encode_chunks(parts.into_iter().filter(|b| b.num_rows() > 0).collect(), txn, 0)
        })
        .await??;
        if added.is_empty() {
            return Ok(0);
        }
        self.replicate_change(&replica, epoch, added, Vec::new(), Vec::new(), 0).await?;
        self.metrics.rows_ingested.add(rows);
        Ok(rows)
    }

    /// A shard a request names for its primary at `epoch`: its configuration, table and replica here.
    ///
    /// # Errors
    ///
    /// [`Error::ShardUnavailable`] when the epoch is not the shard's, this node does not lead it, or its table is not
    /// attached here.
    pub(super) async fn led_shard(
        &self,
        table: TableId,
        shard: ShardId,
        epoch: u64,
    ) -> Result<(ShardRecord, Arc<crate::table::HotTable>, Arc<ShardReplica>)> {
        let record = self.check_shard_epoch(table, shard, epoch).await?;
        self.check_primary(&record)?;
        let hot = self.hot_table_by_id(table).ok_or_else(|| Error::ShardUnavailable {
            shard: shard.0,
            detail: "its table is not attached here".into(),
        })?;
        let replica = self.replica_of(table, shard)?;
        replica.raise_floor(record.tiered_through + 1);
        Ok((record, hot, replica))
    }

    /// Refuses a shard this node does not lead.
    pub(super) fn check_primary(&self, record: &ShardRecord) -> Result<()> {
        if record.primary == self.node_id {
            return Ok(());
        }
        Err(Error::ShardUnavailable {
            shard: record.shard_id.0,
            detail: format!(
                "node {} is not its primary at epoch {} (node {} is)",
                self.node_id, record.epoch, record.primary
            ),
        })
    }

    /// The fewest in-sync copies a shard of `def` takes writes with.
    pub(super) fn min_in_sync(&self, def: &TableDef) -> usize {
        self.replication.min_in_sync.clamp(1, def.sharding.replicas.max(1)) as usize
    }

    /// Refuses a write to a shard with fewer in-sync copies than `min_in_sync`.
    fn check_min_in_sync(&self, record: &ShardRecord, def: &TableDef) -> Result<()> {
        let need = self.min_in_sync(def);
        if record.in_sync.len() >= need {
            return Ok(());
        }
        Err(Error::ShardUnavailable {
            shard: record.shard_id.0,
            detail: format!(
                "{} of its copies {} in sync at epoch {}, and writes need {need} (min_in_sync); nothing was written",
                record.in_sync.len(),
                if record.in_sync.len() == 1 { "is" } else { "are" },
                record.epoch
            ),
        })
    }

    /// Makes a change of a shard this node leads at `epoch` durable on every in-sync copy, then visible here: the
    /// change adds `added` (numbered by the replica) and removes the chunks numbered in `removed`, and settles the
    /// statements spanning shards in `resolved`. As a part of statement `txn` spanning shards (unless 0), it marks
    /// the chunks in `removed` removed by that statement instead (`crate::table::ChunkMeta::removed_by`), and `added`
    /// are tagged with it. The caller holds the replica's DML lock.
    ///
    /// # Errors
    ///
    /// [`Error::ShardUnavailable`] when the shard moved past `epoch`, this node is not its primary or too few copies
    /// are in sync (nothing was written); [`Error::ColdUnavailable`] while the shard refuses writes; store errors
    /// preparing the change here (nothing was sent); [`Error::OutcomeUnknown`] for any failure after that.
    pub(crate) async fn replicate_change(
        &self,
        replica: &Arc<ShardReplica>,
        epoch: u64,
        added: Vec<ReplicatedChunk>,
        removed: Vec<u64>,
        resolved: Vec<crate::table::log::Resolution>,
        txn: u64,
    ) -> Result<()> {
        let (table, shard) = (replica.def().id, replica.shard_id());
        let refuse = |detail: String| Error::ShardUnavailable { shard: shard.0, detail };
        // The configuration may have moved while the caller waited for the lock.
        let record = self.meta.read_local(|s| s.shard(shard).cloned()).ok_or_else(|| refuse("no such shard".into()))?;
        if record.epoch != epoch {
            return Err(refuse(format!("the shard moved from epoch {epoch} to {} meanwhile", record.epoch)));
        }
        self.check_primary(&record)?;
        // A change that only settles statements spanning shards writes no rows: it applies what the metadata group
        // decided, and is made below `min_in_sync` and past the write limit too (a catch-up that restores the copies
        // may wait for it), though it is then reported as not durable enough (below).
        let settles_only = added.is_empty() && removed.is_empty();
        if !settles_only {
            self.check_min_in_sync(&record, replica.def())?;
            if let Some(detail) = replica.refusal() {
                return Err(Error::ColdUnavailable { detail });
            }
        }
        let lsn = replica.log_end() + 1;
        let change = LoggedChange { lsn, term: epoch, added, removed, resolved, txn };
        let r = Arc::clone(replica);
        let mine = change.clone();
        let changes = crate::blocking::run("prepare a shard's change", move || -> Result<Vec<LoggedChange>> {
            // Changes an earlier failure left prepared here go first, as they were numbered.
            let mut changes = Vec::new();
            for n in r.prepared_lsns() {
                changes.extend(r.prepared_change(n)?);
            }
            r.prepare(epoch, mine.clone())?;
            changes.push(mine);
            Ok(changes)
        })
        .await??;

        let current = match self.replicate_prepared(replica, record, changes, lsn).await {
            Ok(current) => current,
            Err(e) => {
                self.unsettled.lock().expect("unsettled lock poisoned").insert((table, shard));
                return Err(e);
            }
        };
        // No backup fenced a change made on the only in-sync copy: a node whose metadata lags could take itself for
        // a primary the cluster has replaced. The configuration is confirmed current (a linearizable read) before
        // the acknowledgement, as for a direct write.
        if current.in_sync.iter().all(|n| *n == self.node_id)
            && self.is_clustered()
            && !self.injected(InjectedBugKind::DeposedPrimaryAccepts)
        {
            let confirmed = self.meta.read_state(|s| s.shard(shard).cloned()).await;
            if !matches!(&confirmed, Ok(Some(r)) if r.epoch == current.epoch && r.primary == self.node_id) {
                self.metrics.shard_outcome_unknown.inc();
                return Err(Error::OutcomeUnknown {
                    shard: shard.0,
                    detail: format!(
                        "the change was made here as the shard's only in-sync copy at epoch {}, and the shard's \
                         configuration could not be confirmed current afterwards",
                        current.epoch
                    ),
                });
            }
        }
        let need = self.min_in_sync(replica.def());
        // A settling change is no exception here: until it is durable on `min_in_sync` copies, its statement's
        // decision must be kept (a copy that missed it may lead the shard later and settle from the decision).
        if current.in_sync.len() < need {
            self.metrics.shard_outcome_unknown.inc();
            return Err(Error::OutcomeUnknown {
                shard: shard.0,
                detail: format!(
                    "the write took effect on {} in-sync {}, fewer than min_in_sync ({need}): it is lost if {} lost",
                    current.in_sync.len(),
                    if current.in_sync.len() == 1 { "copy" } else { "copies" },
                    if current.in_sync.len() == 1 { "that copy is" } else { "those copies are" },
                ),
            });
        }
        Ok(())
    }

    /// Sends `changes` (prepared here, in log order) to every in-sync backup of the configuration `record`, takes
    /// those that failed out of the in-sync set, and commits here through change `through`; returns the
    /// configuration that holds then. The caller holds the replica's DML lock.
    ///
    /// # Errors
    ///
    /// [`Error::OutcomeUnknown`] when a backup that failed could not be taken out, or the commit here failed.
    async fn replicate_prepared(
        &self,
        replica: &Arc<ShardReplica>,
        record: ShardRecord,
        changes: Vec<LoggedChange>,
        through: u64,
    ) -> Result<ShardRecord> {
        let (table, shard) = (replica.def().id, replica.shard_id());
        let unknown = |detail: String| {
            self.metrics.shard_outcome_unknown.inc();
            Error::OutcomeUnknown { shard: shard.0, detail }
        };
        let started = tokio::time::Instant::now();
        let backups: Vec<u64> = record.in_sync.iter().copied().filter(|n| *n != self.node_id).collect();
        let commit_point = replica.committed_lsn();
        if self.injected(InjectedBugKind::AckBeforeBackups)
            && !backups.is_empty()
            && let Some(engine) = self.me.get().and_then(std::sync::Weak::upgrade)
        {
            // The injected bug: the backups get the change on the side, after the acknowledgement.
            let (config, next_seq) = (record.clone(), replica.next_seq());
            let sent = changes.clone();
            tokio::spawn(async move {
                for backup in backups {
                    let _ = engine.send_changes(backup, &config, table, &sent, commit_point, next_seq).await;
                }
            });
            let r = Arc::clone(replica);
            crate::blocking::run("commit a shard's change", move || r.commit_through(through))
                .await?
                .map_err(|e| unknown(e.report()))?;
            return Ok(record);
        }
        let (record, failed) = self.send_to_backups(replica, record, &changes, commit_point).await;
        let current = if failed.is_empty() {
            record
        } else if self.injected(InjectedBugKind::DeposedPrimaryAccepts) {
            // The injected bug: a primary whose backups refused or missed the change goes on without them when the
            // metadata group does not take them out of the in-sync set (it deposed this node, or cannot be reached),
            // as if its own view of the configuration were the cluster's.
            match self.take_out_of_sync(&record, &failed).await {
                Ok(current) => current,
                Err(_) => {
                    let out: Vec<u64> = failed.iter().map(|(n, _)| *n).collect();
                    ShardRecord {
                        in_sync: record.in_sync.iter().copied().filter(|n| !out.contains(n)).collect(),
                        ..record
                    }
                }
            }
        } else {
            self.take_out_of_sync(&record, &failed).await.map_err(&unknown)?
        };
        if !backups.is_empty() {
            self.metrics.shard_replication_latency.observe(started.elapsed());
        }
        let r = Arc::clone(replica);
        let committed = crate::blocking::run("commit a shard's change", move || r.commit_through(through)).await?;
        if let Err(e) = committed {
            return Err(unknown(format!(
                "change {through} is durable on every in-sync copy, and committing it here failed: {}",
                e.report()
            )));
        }
        if current.in_sync.len() > 1 {
            self.commit_unsent.lock().expect("commit lock poisoned").insert((table, shard));
        }
        self.metrics.shard_changes_replicated.inc();
        Ok(current)
    }

    /// Sends `changes` to every in-sync backup of `record`; returns the configuration they were last sent at and the
    /// backups that failed, with why.
    ///
    /// A backup refuses a change sent at an epoch older than its own: the configuration moved while the change was
    /// on its way (a copy added, a move finished; a copy is never admitted meanwhile, the caller holding the shard's
    /// writes). Then, while this node still leads the shard and no copy joined its in-sync set, the change goes again,
    /// at the new epoch, to the failed backups still in sync, instead of taking them out of the set for it.
    async fn send_to_backups(
        &self,
        replica: &Arc<ShardReplica>,
        mut record: ShardRecord,
        changes: &[LoggedChange],
        commit_point: u64,
    ) -> (ShardRecord, Vec<(u64, String)>) {
        let table = replica.def().id;
        let mut backups: Vec<u64> = record.in_sync.iter().copied().filter(|n| *n != self.node_id).collect();
        let mut failed = Vec::new();
        for attempt in 0..3 {
            let sent = futures::future::join_all(
                backups
                    .iter()
                    .map(|b| self.send_changes(*b, &record, table, changes, commit_point, replica.next_seq())),
            )
            .await;
            failed = backups.iter().zip(sent).filter_map(|(b, r)| r.err().map(|why| (*b, why))).collect();
            if failed.is_empty() || attempt == 2 || self.meta.read_state(|_| ()).await.is_err() {
                break;
            }
            let Some(now) = self.meta.read_local(|s| s.shard(record.shard_id).cloned()) else { break };
            let moved = now.epoch != record.epoch
                && now.primary == self.node_id
                && now.in_sync.iter().all(|n| record.in_sync.contains(n));
            if !moved {
                break;
            }
            backups = failed.iter().map(|(n, _)| *n).filter(|n| now.in_sync.contains(n)).collect();
            tracing::debug!(shard = %record.shard_id, from = record.epoch, to = now.epoch, ?backups, "the shard moved under a change; sending it again");
            record = now;
        }
        failed.retain(|(n, _)| record.in_sync.contains(n));
        (record, failed)
    }

    /// Settles the changes left prepared on this node's replica of a shard it leads (a change whose outcome a failure
    /// left unknown, or, on a new primary, changes its predecessor numbered and may have acknowledged): sends them to
    /// every in-sync backup and commits them, so that a read here sees every acknowledged change. Returns whether
    /// nothing is left prepared. The caller holds the replica's DML lock.
    ///
    /// # Errors
    ///
    /// As [`Engine::replicate_change`] after its prepare.
    pub(crate) async fn settle(&self, replica: &Arc<ShardReplica>) -> Result<bool> {
        let shard = replica.shard_id();
        let Some(record) = self.meta.read_local(|s| s.shard(shard).cloned()) else { return Ok(false) };
        if record.primary != self.node_id {
            return Ok(replica.log_end() == replica.committed_lsn());
        }
        let through = replica.log_end();
        if through == replica.committed_lsn() {
            return Ok(true);
        }
        let r = Arc::clone(replica);
        let changes = crate::blocking::run("read prepared changes", move || -> Result<Vec<LoggedChange>> {
            let mut changes = Vec::new();
            for n in r.prepared_lsns() {
                changes.extend(r.prepared_change(n)?);
            }
            Ok(changes)
        })
        .await??;
        tracing::info!(%shard, epoch = record.epoch, through, changes = changes.len(), "settling prepared changes as primary");
        self.replicate_prepared(replica, record, changes, through).await?;
        Ok(true)
    }

    /// Hands over the shards this node leads and leaves (it is draining, or a move's new copy took its place) to an
    /// in-sync copy elsewhere ([`quiver_meta::hand_over`]), each with its writes held: nothing this node prepared is
    /// left unsettled, and no write of its is in flight when it stops leading, so a handover fails no write.
    async fn hand_over_leaving(&self) {
        let me = self.node_id;
        let leaving: Vec<(TableId, ShardId)> = self.meta.read_local(|s| {
            s.shards()
                .filter(|r| r.primary == me && quiver_meta::hand_over(s, r.shard_id, me).is_some())
                .map(|r| (r.table_id, r.shard_id))
                .collect()
        });
        for (table, shard) in leaving {
            let Ok(replica) = self.replica_of(table, shard) else { continue };
            // A shard busy with a long write is handed over a later round: this round tends every shard.
            let Ok(_serialized) = replica.dml_lock.try_lock() else { continue };
            match self.settle(&replica).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::debug!(%shard, error = %e.report(), "settling before a handover failed");
                    continue;
                }
            }
            // Every in-sync copy commits what this node committed before another leads: the next primary must
            // not hold prepared a change a copy it leads has committed (a copy a catch-up reset to this node's commit
            // point), which it would send again and that copy refuse.
            let Some(record) = self.meta.read_local(|s| s.shard(shard).cloned()) else { continue };
            if !self.push_commit_point_now(&replica, &record, table).await {
                tracing::debug!(%shard, "a backup did not take the commit point before a handover; tried again later");
                continue;
            }
            // Read again under the lock: the configuration may have moved meanwhile.
            let Some(command) = self.meta.read_local(|s| quiver_meta::hand_over(s, shard, me)) else { continue };
            let outcome = match self.meta.propose(command.clone()).await {
                Ok(response) => response.outcome,
                // Its answer lost: settled before the lock is let go, so that no write here follows a handover.
                Err(_) => self.settle_proposal(command, "a shard's handover").await.outcome,
            };
            match outcome {
                Ok(_) => {
                    self.caught_up_with_metadata().await;
                    tracing::info!(%shard, "shard handed over; this node's copy leaves it");
                }
                Err(e) => tracing::debug!(%shard, rejection = %e, "a shard's handover was refused"),
            }
        }
    }

    /// The duties of the shards this node holds, every [`COMMIT_PUSH_INTERVAL`]: tells backups the commit points no
    /// later change carried to them, and settles prepared changes of shards this node leads (`Engine::settle`).
    pub async fn tend_shards(&self) {
        // Every few seconds, the shards led here whose backups may not know the commit point (this node restarted,
        // or took the shard over, since it last told them) are told again.
        if self.tend_rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(COMMIT_SWEEP_ROUNDS) {
            let stale: Vec<(TableId, ShardId)> = self
                .replicas()
                .iter()
                .filter(|r| r.committed_lsn() > r.pushed_commit())
                .map(|r| (r.def().id, r.shard_id()))
                .collect();
            self.commit_unsent.lock().expect("commit lock poisoned").extend(stale);
        }
        self.push_commit_points().await;
        if self.tend_rounds.load(std::sync::atomic::Ordering::Relaxed).is_multiple_of(CATCH_UP_ROUNDS) {
            self.start_catch_ups();
            self.hand_over_leaving().await;
            self.drop_unplaced().await;
            self.resolve_abandoned().await;
        }
        let pending = std::mem::take(&mut *self.unsettled.lock().expect("unsettled lock poisoned"));
        let mut still = Vec::new();
        for (table, shard) in pending {
            let Ok(replica) = self.replica_of(table, shard) else { continue };
            if replica.log_end() == replica.committed_lsn() {
                continue;
            }
            let settled = match replica.dml_lock.try_lock() {
                Ok(_serialized) => match self.settle(&replica).await {
                    Ok(settled) => settled,
                    Err(e) => {
                        tracing::warn!(%shard, error = %e.report(), "settling prepared changes failed; retrying");
                        false
                    }
                },
                Err(_) => false,
            };
            if !settled {
                still.push((table, shard));
            }
        }
        self.unsettled.lock().expect("unsettled lock poisoned").extend(still);
    }

    /// Deletes the rows of every shard that left this node (drained, or replaced while the node was down), when its
    /// store holds only placed shards ([`crate::table::keys::PLACED_ONLY_KEY`]). Under the shard's DML lock, with its
    /// configuration read again there: a change or catch-up message is applied under that lock and only at the
    /// shard's current epoch, so none lands between the check and the deletion, and a node added back later is sent
    /// everything anew by its catch-up.
    pub(super) async fn drop_unplaced(&self) {
        if !self.placed_only {
            return;
        }
        let me = self.node_id;
        let placed = |replica: &ShardReplica| {
            self.meta.read_local(|s| s.shard(replica.shard_id()).is_none_or(|r| r.replicas.contains(&me)))
        };
        for replica in self.replicas() {
            let holds = !replica.version().is_empty() || replica.log_end() > replica.committed_lsn();
            if !holds || placed(&replica) {
                continue;
            }
            let Ok(_serialized) = replica.dml_lock.try_lock() else { continue };
            if placed(&replica) {
                continue;
            }
            let rows = replica.row_count();
            let r = Arc::clone(&replica);
            let next_seq = replica.next_seq();
            match crate::blocking::run("delete a shard that left this node", move || {
                r.reset(Vec::new(), &[], 0, next_seq, &[], 0)
            })
            .await
            {
                Ok(Ok(())) => {
                    self.metrics.shard_copies_deleted.inc();
                    tracing::info!(table = %replica.def().name, shard = %replica.shard_id(), rows, "rows of a shard that left this node deleted");
                }
                Ok(Err(e)) => {
                    tracing::warn!(shard = %replica.shard_id(), error = %e.report(), "deleting a shard that left this node failed")
                }
                Err(e) => {
                    tracing::warn!(shard = %replica.shard_id(), error = %e.report(), "deleting a shard that left this node failed")
                }
            }
        }
    }

    /// Starts a catch-up ([`Engine::catch_up_replica`]) of every replica of a shard this node leads that is out of the
    /// in-sync set while its node serves, unless one runs already. Each runs on its own task; a failed one is started
    /// again a later round, and resumes where it stopped.
    fn start_catch_ups(&self) {
        use quiver_meta::NodeState;
        let Some(engine) = self.me.get().and_then(std::sync::Weak::upgrade) else { return };
        let me = self.node_id;
        // The moves shown open that are not this node's to make any more, or done, are closed.
        let (open, admitted): (HashSet<MoveKey>, HashMap<MoveKey, u64>) = self.meta.read_local(|s| {
            let led: Vec<&ShardRecord> = s.shards().filter(|r| r.primary == me).collect();
            let open = led.iter().flat_map(|r| {
                r.replicas.iter().filter(|n| !r.in_sync.contains(n)).map(|n| (r.shard_id, *n)).collect::<Vec<_>>()
            });
            let admitted =
                led.iter().flat_map(|r| r.in_sync.iter().map(|n| ((r.shard_id, *n), r.epoch)).collect::<Vec<_>>());
            (open.collect(), admitted.collect())
        });
        let running: HashSet<MoveKey> = {
            let running = self.catching_up.lock().expect("catch-up lock poisoned");
            running.iter().map(|(_, shard, target)| (*shard, *target)).collect()
        };
        self.moves.reconcile(&running, |shard, target| admitted.get(&(shard, target)).copied(), &open);
        let wanted: Vec<(TableId, ShardId, u64)> = self.meta.read_local(|s| {
            s.shards()
                .filter(|r| r.primary == me)
                .flat_map(|r| {
                    r.replicas
                        .iter()
                        .filter(|n| !r.in_sync.contains(n))
                        .filter(|n| s.node(**n).is_some_and(|node| node.state == NodeState::Serving))
                        .map(|n| (r.table_id, r.shard_id, *n))
                        .collect::<Vec<_>>()
                })
                .collect()
        });
        for key in wanted {
            {
                let mut running = self.catching_up.lock().expect("catch-up lock poisoned");
                if !running.insert(key) {
                    continue;
                }
                self.metrics.shard_catch_ups_running.set(running.len() as u64);
            }
            let engine = Arc::clone(&engine);
            tokio::spawn(async move {
                let (table, shard, target) = key;
                if let Err(e) = engine.catch_up_replica(table, shard, target).await {
                    tracing::info!(%shard, target, error = %e.report(), "catching a replica up failed; retrying later");
                }
                let mut running = engine.catching_up.lock().expect("catch-up lock poisoned");
                running.remove(&key);
                engine.metrics.shard_catch_ups_running.set(running.len() as u64);
            });
        }
    }

    /// Sends `changes`, in order, to the backup `backup` of a shard at the configuration `record`, with this node's
    /// commit point; returns why it did not take them all.
    async fn send_changes(
        &self,
        backup: u64,
        record: &ShardRecord,
        table: TableId,
        changes: &[LoggedChange],
        commit_through: u64,
        next_seq: u64,
    ) -> std::result::Result<(), String> {
        let timeout = self.replication.timeout;
        let addr = self
            .meta
            .read_local(|s| s.node(backup).map(|n| n.grpc_addr.clone()))
            .ok_or_else(|| "it is not in the node registry".to_string())?;
        let mut client = self.peers.client(&addr, timeout)?;
        for change in changes {
            let request = ReplicateRequest {
                table_id: table.0,
                shard_id: record.shard_id.0,
                epoch: record.epoch,
                from_node: self.node_id,
                added: change
                    .added
                    .iter()
                    .map(|(seq, index, data)| WireChunk { seq: *seq, index_entry: index.clone(), data: data.clone() })
                    .collect(),
                removed: change.removed.clone(),
                next_seq,
                lsn: change.lsn,
                term: change.term,
                commit_through,
                discard_after: None,
                reset: false,
                keep: Vec::new(),
                resolved: change
                    .resolved
                    .iter()
                    .map(|r| TransactionOutcome { txn: r.txn, commit: r.commit, version: r.version })
                    .collect(),
                txn: change.txn,
            };
            match tokio::time::timeout(timeout, client.replicate(request)).await {
                Ok(Ok(_)) => {}
                Ok(Err(status)) => return Err(format!("change {}: {}", change.lsn, status.message())),
                Err(_) => return Err(format!("change {}: no answer within {timeout:?}", change.lsn)),
            }
        }
        Ok(())
    }

    /// Takes the backups in `failed` out of the shard's in-sync set by a compare-and-set on its epoch, starting from
    /// the configuration `record`; returns the configuration that holds once they are out. Fails (with what to tell
    /// the client) when this node lost the primary role, the in-sync set gained a copy that may lack the change, or
    /// the metadata group did not take the change.
    async fn take_out_of_sync(
        &self,
        record: &ShardRecord,
        failed: &[(u64, String)],
    ) -> std::result::Result<ShardRecord, String> {
        let why = failed.iter().map(|(n, e)| format!("node {n}: {e}")).collect::<Vec<_>>().join("; ");
        let original: BTreeSet<u64> = record.in_sync.iter().copied().collect();
        let out: BTreeSet<u64> = failed.iter().map(|(n, _)| *n).collect();
        let mut current = record.clone();
        for _ in 0..5 {
            if current.primary != self.node_id {
                return Err(format!(
                    "this node lost the shard's primary role (epoch {}) before every in-sync copy had the change \
                     ({why})",
                    current.epoch
                ));
            }
            if let Some(new) = current.in_sync.iter().find(|n| !original.contains(n)) {
                return Err(format!("node {new} joined the in-sync set meanwhile, without the change ({why})"));
            }
            let in_sync: Vec<u64> = current.in_sync.iter().copied().filter(|n| !out.contains(n)).collect();
            if in_sync.len() == current.in_sync.len() {
                return Ok(current);
            }
            tracing::warn!(shard = %current.shard_id, epoch = current.epoch, failed = %why, "taking backups out of the in-sync set");
            let command = MetaCommand::SetShardReplicas {
                shard_id: current.shard_id,
                replicas: current.replicas.clone(),
                in_sync,
                primary: self.node_id,
                expected_epoch: Some(current.epoch),
            };
            match self.meta.propose(command).await.map(|r| r.outcome) {
                Ok(Ok(_)) => {
                    self.metrics.shard_in_sync_removals.add(out.len() as u64);
                }
                Ok(Err(Rejection::ShardEpochConflict { .. })) => {}
                Ok(Err(other)) => return Err(format!("the metadata group refused to take ({why}) out: {other}")),
                Err(e) => {
                    return Err(format!("the metadata group did not take ({why}) out: {}", e));
                }
            }
            if let Err(e) = self.meta.read_state(|_| ()).await {
                return Err(format!("the shard's configuration could not be read back ({why}): {e}"));
            }
            current = self
                .meta
                .read_local(|s| s.shard(current.shard_id).cloned())
                .ok_or_else(|| format!("the shard is gone ({why})"))?;
        }
        Err(format!("the shard's configuration kept changing ({why})"))
    }

    /// Tells the backups of the shards this node leads the commit point no later change carried to them. A backup
    /// that does not answer learns it later.
    async fn push_commit_points(&self) {
        let pending = std::mem::take(&mut *self.commit_unsent.lock().expect("commit lock poisoned"));
        let mut again = Vec::new();
        for (table, shard) in pending {
            let Ok(replica) = self.replica_of(table, shard) else { continue };
            let Some(record) = self.meta.read_local(|s| s.shard(shard).cloned()) else { continue };
            if record.primary != self.node_id {
                continue;
            }
            let commit_through = replica.committed_lsn();
            let next_seq = replica.next_seq();
            let sent = futures::future::join_all(
                record
                    .in_sync
                    .iter()
                    .filter(|n| **n != self.node_id)
                    .map(|backup| self.send_commit_point(*backup, &record, table, commit_through, next_seq)),
            )
            .await;
            // Sent again next round until every in-sync backup has it (one that stays unreachable leaves the
            // in-sync set with the next change, or when it is marked down).
            if sent.iter().any(|ok| !ok) {
                again.push((table, shard));
            } else {
                replica.set_pushed_commit(commit_through);
            }
        }
        self.commit_unsent.lock().expect("commit lock poisoned").extend(again);
    }

    /// Tells every in-sync backup of `record` the commit point of this node's `replica` now, with the shard's writes
    /// held by the caller, so that no in-sync copy is behind it; returns whether every one took it.
    pub(super) async fn push_commit_point_now(
        &self,
        replica: &ShardReplica,
        record: &ShardRecord,
        table: TableId,
    ) -> bool {
        let (through, next_seq) = (replica.committed_lsn(), replica.next_seq());
        let backups = record.in_sync.iter().filter(|n| **n != self.node_id);
        let sent = futures::future::join_all(
            backups.map(|backup| self.send_commit_point(*backup, record, table, through, next_seq)),
        )
        .await;
        let all = sent.iter().all(|ok| *ok);
        if all {
            replica.set_pushed_commit(through);
        }
        all
    }

    /// Sends a commit point alone to one backup; returns whether it took it.
    async fn send_commit_point(
        &self,
        backup: u64,
        record: &ShardRecord,
        table: TableId,
        commit_through: u64,
        next_seq: u64,
    ) -> bool {
        let timeout = self.replication.timeout;
        let Some(addr) = self.meta.read_local(|s| s.node(backup).map(|n| n.grpc_addr.clone())) else { return false };
        let Ok(mut client) = self.peers.client(&addr, timeout) else { return false };
        let request = ReplicateRequest {
            table_id: table.0,
            shard_id: record.shard_id.0,
            epoch: record.epoch,
            from_node: self.node_id,
            added: Vec::new(),
            removed: Vec::new(),
            next_seq,
            lsn: 0,
            term: 0,
            commit_through,
            discard_after: None,
            reset: false,
            keep: Vec::new(),
            resolved: Vec::new(),
            txn: 0,
        };
        match tokio::time::timeout(timeout, client.replicate(request)).await {
            Ok(Ok(_)) => true,
            Ok(Err(status)) => {
                tracing::debug!(shard = %record.shard_id, backup, error = status.message(), "commit point not taken");
                false
            }
            Err(_) => {
                tracing::debug!(shard = %record.shard_id, backup, "commit point not answered");
                false
            }
        }
    }
}
