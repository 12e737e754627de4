//! Catch-up (docs/rfcs/0001-cluster-data-path.md, "Failure detection, failover, re-replication"): a shard's primary
//! brings a replica that is not in sync (back after a failure, or new) to its own committed state, then admits it
//! to the in-sync set.
//!
//! ```text
//!  primary                                         replica (in `replicas`, not in `in_sync`)
//!   ReplicaStatus ───────────────────────────────▶ committed chunk numbers, commit point
//!   Replicate(lsn 0, chunks it lacks) … ──────────▶ applied as they come (resumable: a new catch-up asks again)
//!   ── DML lock: no change of the shard in flight ──
//!   settle prepared changes here
//!   ReplicaStatus, Replicate(lsn 0, what it still lacks) …
//!   Replicate(reset, keep = committed chunks, commit point) ─▶ exactly the primary's committed chunks
//!   SetShardReplicas { in_sync + replica, expected_epoch } (compare-and-set)
//!   ── lock released: the next change goes to it too ──
//! ```
//!
//! The bulk of the data moves before the lock, throttled to `[cluster] catch_up_rate`; under the lock only what was
//! committed meanwhile moves. A replica admitted holds every committed change and nothing prepared, so the primary's
//! next change (numbered after its commit point) follows its log without a hole.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use quiver_meta::{MetaCommand, MetaResponse, Rejection, ShardId, ShardRecord, TableId};
use quiver_proto::v1::{ReplicaStatusRequest, ReplicateRequest, ReplicatedChunk as WireChunk};

use super::Engine;
use crate::error::{Error, Result};
use crate::table::ShardReplica;

/// The most chunk data one catch-up message carries.
const CATCH_UP_MESSAGE_BYTES: u64 = 8 << 20;

/// What a catch-up moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatchUpReport {
    /// Chunks sent to the replica.
    pub chunks: u64,
    /// Bytes of chunk data sent.
    pub bytes: u64,
    /// The shard's epoch once the replica is in sync.
    pub epoch: u64,
}

/// The numbers of the committed chunks a replica caught up from `replica` must hold: those above the cold tier's mark
/// of this node's view. A chunk at or below it is in the shard's cold files already (tiered here, not yet removed):
/// the caught-up replica reads those files, and must not count the chunk's rows a second time.
fn hot_chunks(record: &ShardRecord, replica: &ShardReplica) -> Result<Vec<u64>> {
    let through = match replica.cold() {
        crate::cold::ColdState::Ready(view) => view.hot_through,
        crate::cold::ColdState::Unavailable(why) if record.manifest.is_some() => {
            return Err(Error::ShardUnavailable {
                shard: record.shard_id.0,
                detail: format!("its cold tier's manifest is unreadable here, so what is still hot is unknown: {why}"),
            });
        }
        crate::cold::ColdState::Unavailable(_) => 0,
    };
    Ok(replica.version().iter().map(|c| c.seq).filter(|seq| *seq > through).collect())
}

impl Engine {
    /// Brings node `target`'s replica of a shard this node leads to this node's committed state and admits it to the
    /// shard's in-sync set; returns what moved. A replica already in sync is left as it is.
    ///
    /// # Errors
    ///
    /// [`Error::ShardUnavailable`] when this node is not the shard's primary, `target` holds no replica of it, the
    /// target cannot be reached or refuses, or the shard's configuration changed meanwhile (a later catch-up resumes
    /// where this one stopped); store errors.
    pub async fn catch_up_replica(&self, table: TableId, shard: ShardId, target: u64) -> Result<CatchUpReport> {
        let replica = self.replica_of(table, shard)?;
        let record = self.catch_up_record(shard, target)?;
        if record.in_sync.contains(&target) {
            // Admitted by an attempt whose answer was lost, or by another: its move, if shown open, is done.
            self.moves.ended(shard, target, Ok(record.epoch));
            return Ok(CatchUpReport { epoch: record.epoch, ..CatchUpReport::default() });
        }
        self.moves.attempt(table, &replica.def().name, shard, target, record.epoch);
        let outcome = self.run_catch_up(replica, record, target).await;
        let ended = outcome.as_ref().map(|report| report.epoch).map_err(|e| e.report().to_string());
        self.moves.ended(shard, target, ended);
        self.metrics.shard_catch_up_bytes_left.set(self.moves.bytes_left());
        outcome
    }

    /// One attempt of [`Engine::catch_up_replica`], of `replica` at the configuration `record`.
    async fn run_catch_up(
        &self,
        replica: Arc<ShardReplica>,
        record: ShardRecord,
        target: u64,
    ) -> Result<CatchUpReport> {
        let (table, shard) = (record.table_id, record.shard_id);
        let refuse = |detail: String| Error::ShardUnavailable { shard: shard.0, detail };
        let addr = self
            .meta
            .read_local(|s| s.node(target).map(|n| n.grpc_addr.clone()))
            .ok_or_else(|| refuse(format!("node {target} is not in the node registry")))?;
        let mut report = CatchUpReport::default();
        // The bulk, while writes go on.
        let held = self.status_of(&addr, &record, &replica, target).await?;
        self.send_missing((target, &addr), &record, &replica, &held, &mut report).await?;

        let _serialized = replica.dml_lock.lock().await;
        self.moves.finishing(shard, target);
        if !self.settle(&replica).await? {
            return Err(refuse("this node's prepared changes are not settled".into()));
        }
        let record = self.catch_up_record(shard, target)?;
        // A replica is admitted with no removal pending in the shard (its reset clears every mark it holds): removals
        // by statements spanning shards that are decided are settled first, and an undecided one defers the catch-up.
        // (Settled on fewer copies than `min_in_sync`, a settlement is reported as an unknown outcome: it took effect
        // here all the same, which is what the catch-up needs.)
        if let Err(e) = self.resolve_decided_locked(&replica, record.epoch).await {
            tracing::debug!(%shard, error = %e.report(), "settling a shard's decided statements before a catch-up");
        }
        if replica.version().iter().any(|c| c.meta.removed_by != 0) {
            return Err(refuse(
                "a statement spanning shards is removing rows of it; the catch-up resumes next time".into(),
            ));
        }
        if record.in_sync.contains(&target) {
            // Another catch-up admitted it meanwhile.
            return Ok(CatchUpReport { epoch: record.epoch, ..report });
        }
        let held = self.status_of(&addr, &record, &replica, target).await?;
        self.send_missing((target, &addr), &record, &replica, &held, &mut report).await?;
        // The reset brings the replica to this node's commit point: the copies in sync are told it first, so that
        // none is behind the one admitted (a copy behind another it may come to lead would send it changes again
        // that it committed already, and it would refuse them). A copy that does not answer does not hold the
        // admission up: it leaves the in-sync set with the next change, or when it is marked down.
        if !self.push_commit_point_now(&replica, &record, table).await {
            tracing::debug!(%shard, target, "a copy in sync did not take the commit point before an admission");
        }
        let keep = hot_chunks(&record, &replica)?;
        let reset = ReplicateRequest {
            table_id: table.0,
            shard_id: shard.0,
            epoch: record.epoch,
            from_node: self.node_id,
            next_seq: replica.next_seq(),
            commit_through: replica.committed_lsn(),
            reset: true,
            keep,
            resolved: replica
                .settled_commits()
                .into_iter()
                .map(|r| quiver_proto::v1::TransactionOutcome { txn: r.txn, commit: r.commit, version: r.version })
                .collect(),
            ..ReplicateRequest::default()
        };
        let timeout = self.replication.timeout;
        let mut client = self.peers.client(&addr, timeout).map_err(|e| refuse(e.clone()))?;
        match tokio::time::timeout(timeout, client.replicate(reset)).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => return Err(refuse(format!("node {target} refused the catch-up: {}", status.message()))),
            Err(_) => return Err(refuse(format!("node {target} did not answer the catch-up within {timeout:?}"))),
        }
        let mut in_sync = record.in_sync.clone();
        in_sync.push(target);
        let (mut replicas, mut primary) = (record.replicas.clone(), self.node_id);
        // The copy of a move for balance replaces the one it moves from in the same change, made here with the
        // shard's writes held: no write is in flight at the old configuration, and a primary handing over to the new
        // copy has nothing prepared that the new one lacks. (With too few other copies in sync, it is only admitted;
        // the metadata leader finishes the move once they are.)
        let (want, staying) = self.meta.read_local(|s| {
            let want = s.catalog().tables().find(|t| t.id == table).map_or(1, |t| t.sharding.replicas.max(1) as usize);
            // Copies that count towards it: on nodes serving and not draining (the target is admitted now).
            let staying = |n: &u64| {
                *n == target
                    || s.node(*n).is_some_and(|r| r.state == quiver_meta::NodeState::Serving && !r.is_draining())
            };
            (want, in_sync.iter().filter(|n| staying(n)).copied().collect::<Vec<u64>>())
        });
        if let Some(m) = record.moving.filter(|m| m.to == target)
            && staying.iter().filter(|n| **n != m.from).count() >= want
        {
            replicas.retain(|n| *n != m.from);
            in_sync.retain(|n| *n != m.from);
            if m.from == self.node_id {
                primary = target;
            }
        }
        let admit = MetaCommand::SetShardReplicas {
            shard_id: shard,
            replicas,
            in_sync,
            primary,
            expected_epoch: Some(record.epoch),
        };
        let proposed = match self.meta.propose(admit.clone()).await {
            Ok(response) => response,
            Err(e) => {
                // The admission may have been committed unanswered: this node would then write at the old epoch to
                // backups that miss the admitted copy, which a failover may promote without the write. The lock is
                // held until the outcome is settled and this node's metadata replica has it; the next round sees the
                // copy in sync, or catches it up again.
                let _ = self.settle_proposal(admit, "a replica's admission").await;
                return Err(e.into());
            }
        };
        match proposed.outcome {
            Ok(_) => {}
            Err(Rejection::ShardEpochConflict { current, .. }) => {
                return Err(refuse(format!(
                    "the shard moved to epoch {current} during the catch-up of node {target}; it resumes next time"
                )));
            }
            Err(other) => return Err(Error::Meta(other.into())),
        }
        self.metrics.shard_catch_ups.inc();
        // The lock is let go only once this node's metadata has the change: a write waiting for it must not pass the
        // epoch check at the old configuration (with the switch, this node may not even lead the shard any more).
        self.caught_up_with_metadata().await;
        report.epoch = self.meta.read_local(|s| s.shard(shard).map(|r| r.epoch)).unwrap_or(record.epoch + 1);
        tracing::info!(%shard, target, chunks = report.chunks, bytes = report.bytes, epoch = report.epoch, "replica caught up and in sync");
        Ok(report)
    }

    /// Reads the metadata linearizably until a read succeeds, so that this node's replica has applied every change
    /// committed before; the caller holds a shard's lock that must not be let go before.
    pub(super) async fn caught_up_with_metadata(&self) {
        let mut wait = Duration::from_millis(50);
        while let Err(e) = self.meta.read_state(|_| ()).await {
            tracing::warn!(error = %e, "reading the metadata back under a shard's lock failed; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }

    /// Settles a compare-and-set proposal whose outcome is unknown (the metadata group took it, or not, without
    /// answering): proposes the same command again until the group answers, then reads the metadata linearizably, so
    /// this node's replica has applied whatever came of it.
    ///
    /// A read alone is not enough: the first proposal may still sit uncommitted in a leader's log, or in flight to
    /// one, and apply after the read. Its copy settles it. If the copy applies, the compare-and-set's expectation no
    /// longer holds for the first, which then changes nothing wherever it lands; if the copy is refused, the
    /// expectation failed already, and the first was applied before or never will be. The caller holds the shard's
    /// lock throughout, since what it does next depends on the outcome; returns the copy's answer.
    pub(super) async fn settle_proposal(&self, command: MetaCommand, what: &str) -> MetaResponse {
        let mut wait = Duration::from_millis(50);
        loop {
            let answered = match self.meta.propose(command.clone()).await {
                Ok(response) => match self.meta.read_state(|_| ()).await {
                    Ok(()) => return response,
                    Err(e) => e,
                },
                Err(e) => e,
            };
            self.metrics.shard_settle_retries.inc();
            tracing::warn!(error = %answered, what, "a metadata change has an unknown outcome; settling it before the shard changes again");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }

    /// The shard's configuration, checked for a catch-up of `target`: this node leads it and `target` holds a replica.
    fn catch_up_record(&self, shard: ShardId, target: u64) -> Result<ShardRecord> {
        let refuse = |detail: String| Error::ShardUnavailable { shard: shard.0, detail };
        let record = self.meta.read_local(|s| s.shard(shard).cloned()).ok_or_else(|| refuse("no such shard".into()))?;
        self.check_primary(&record)?;
        if !record.replicas.contains(&target) || target == self.node_id {
            return Err(refuse(format!("node {target} holds no replica of it to catch up at epoch {}", record.epoch)));
        }
        Ok(record)
    }

    /// The committed chunks the replica at `addr` holds.
    /// The committed chunks the replica at `addr` holds as this node's replica of the shard (`replica`) holds them:
    /// of the same number and digest.
    async fn status_of(
        &self,
        addr: &str,
        record: &ShardRecord,
        replica: &ShardReplica,
        target: u64,
    ) -> Result<HashSet<u64>> {
        let table = replica.def().id;
        let refuse = |detail: String| Error::ShardUnavailable { shard: record.shard_id.0, detail };
        let timeout = self.replication.timeout;
        let mut client = self.peers.client(addr, timeout).map_err(|e| refuse(e.clone()))?;
        let request = ReplicaStatusRequest {
            table_id: table.0,
            shard_id: record.shard_id.0,
            epoch: record.epoch,
            from_node: self.node_id,
        };
        match tokio::time::timeout(timeout, client.replica_status(request)).await {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                if reply.digests.len() != reply.chunks.len() {
                    // A build without digests: numbers alone.
                    return Ok(reply.chunks.into_iter().collect());
                }
                let mine: HashMap<u64, u64> = replica.version().iter().map(|c| (c.seq, c.meta.digest())).collect();
                Ok(reply
                    .chunks
                    .into_iter()
                    .zip(reply.digests)
                    .filter(|(seq, digest)| mine.get(seq).is_none_or(|d| d == digest))
                    .map(|(seq, _)| seq)
                    .collect())
            }
            Ok(Err(status)) => Err(refuse(format!("node {target} did not say what it holds: {}", status.message()))),
            Err(_) => Err(refuse(format!("node {target} did not say what it holds within {timeout:?}"))),
        }
    }

    /// Sends the replica of node `target` at `addr` the committed chunks of this node's replica it does not hold, in
    /// messages of at most [`CATCH_UP_MESSAGE_BYTES`] of data, at most `[cluster] catch_up_rate` bytes a second.
    async fn send_missing(
        &self,
        (target, addr): (u64, &str),
        record: &ShardRecord,
        replica: &Arc<ShardReplica>,
        held: &HashSet<u64>,
        report: &mut CatchUpReport,
    ) -> Result<()> {
        let shard = record.shard_id;
        let refuse = |detail: String| Error::ShardUnavailable { shard: shard.0, detail };
        let missing: Vec<u64> = hot_chunks(record, replica)?.into_iter().filter(|s| !held.contains(s)).collect();
        // Each missing chunk's rows, and the bytes of them all, for the move's progress.
        let (rows_of, missing_bytes) = {
            let wanted: HashSet<u64> = missing.iter().copied().collect();
            let mut rows_of: HashMap<u64, u64> = HashMap::new();
            let mut bytes = 0;
            for c in replica.version().iter().filter(|c| wanted.contains(&c.seq)) {
                rows_of.insert(c.seq, c.meta.rows);
                bytes += c.meta.data_bytes;
            }
            (rows_of, bytes)
        };
        self.moves.to_send(shard, target, (missing.len() as u64, missing_bytes, rows_of.values().sum()));
        self.metrics.shard_catch_up_bytes_left.set(self.moves.bytes_left());
        let timeout = self.replication.timeout;
        let mut client = self.peers.client(addr, timeout).map_err(|e| refuse(e.clone()))?;
        let mut next = 0;
        while next < missing.len() {
            // One message: chunks read until the size limit (at least one).
            let r = Arc::clone(replica);
            let from = missing[next..].to_vec();
            let (batch, consumed) = crate::blocking::run("read chunks to catch up", move || {
                r.committed_chunks_numbered(&from, CATCH_UP_MESSAGE_BYTES)
            })
            .await??;
            next += consumed;
            if batch.is_empty() {
                // Removed meanwhile (tiered, compacted): the final reset settles it.
                continue;
            }
            let bytes: u64 = batch.iter().map(|c| c.2.len() as u64).sum();
            let rows: u64 = batch.iter().map(|c| rows_of.get(&c.0).copied().unwrap_or(0)).sum();
            let request = ReplicateRequest {
                table_id: record.table_id.0,
                shard_id: shard.0,
                epoch: record.epoch,
                from_node: self.node_id,
                added: batch.into_iter().map(|(seq, index_entry, data)| WireChunk { seq, index_entry, data }).collect(),
                next_seq: replica.next_seq(),
                ..ReplicateRequest::default()
            };
            let count = request.added.len() as u64;
            match tokio::time::timeout(timeout, client.replicate(request)).await {
                Ok(Ok(_)) => {}
                Ok(Err(status)) => return Err(refuse(format!("the catch-up was refused: {}", status.message()))),
                Err(_) => return Err(refuse(format!("the catch-up got no answer within {timeout:?}"))),
            }
            report.chunks += count;
            report.bytes += bytes;
            self.moves.sent(shard, target, (count, bytes, rows));
            self.metrics.shard_catch_up_bytes_left.set(self.moves.bytes_left());
            self.metrics.shard_catch_up_bytes.add(bytes);
            if self.replication.catch_up_rate > 0 {
                tokio::time::sleep(Duration::from_secs_f64(bytes as f64 / self.replication.catch_up_rate as f64)).await;
            }
        }
        Ok(())
    }
}
