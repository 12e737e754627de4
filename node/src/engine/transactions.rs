//! Statements spanning shards (docs/architecture.md, "Statements spanning shards"): all or nothing across them.
//!
//! The node that took the statement (its coordinator) writes each shard's part on the shard's primary as an ordinary
//! change of the shard's log, durable on every in-sync copy, its chunks tagged with the statement's id
//! ([`crate::table::ChunkMeta::txn`]) and visible to nobody. Once every part is written it records the commit in the
//! metadata group (`MetaCommand::DecideTransaction`); from that metadata version on, a reader whose snapshot includes
//! it sees every part, on every shard, and one whose snapshot is older sees none. Only then is the statement
//! acknowledged. A statement that failed part-way records an abort instead. Each part is then settled in its shard's
//! log ([`Engine::resolve_part`]): a committed part's chunks are marked visible from the decision's version on, an
//! aborted part's removed, on every copy alike; once every part is settled the decision is forgotten.
//!
//! The first decision recorded stands. A part whose coordinator vanished is settled by its shard's primary: after
//! [`crate::engine::ReplicationOptions::transaction_hold`] without a decision it records an abort, which either lands
//! first (the statement never happened) or is refused because the coordinator's commit did (the part is settled as
//! committed).

use std::collections::BTreeSet;
use std::sync::Arc;

use quiver_meta::{MetaCommand, MetaOutcome, Rejection, ShardId, TableId};

use super::Engine;
use crate::cold;
use crate::error::{Error, Result};
use crate::table::ShardReplica;
use crate::table::log::Resolution;

/// Registers a statement this node coordinates for as long as it lives (`Engine::coordinating`).
pub(super) struct Coordinating<'a> {
    engine: &'a Engine,
    txn: u64,
}

impl Drop for Coordinating<'_> {
    fn drop(&mut self) {
        self.engine.coordinating.lock().expect("coordinating lock poisoned").remove(&self.txn);
    }
}

impl Engine {
    /// Registers statement `txn` as coordinated here until the guard is dropped.
    pub(super) fn coordinate(&self, txn: u64) -> Coordinating<'_> {
        self.coordinating.lock().expect("coordinating lock poisoned").insert(txn);
        Coordinating { engine: self, txn }
    }

    /// On a node that is its cluster's only member, aborts statement `txn` when no statement of this node
    /// coordinates it: nobody else could decide it (a crash or a dropped call left its parts), and the shards it
    /// holds would wait for the hold. Returns whether it aborted it (or found it decided).
    pub(super) async fn abort_orphan(&self, txn: u64) -> bool {
        if self.is_clustered() || self.coordinating.lock().expect("coordinating lock poisoned").contains(&txn) {
            return false;
        }
        match self.decide(txn, false).await {
            Ok(r) => {
                tracing::info!(
                    txn = format!("{txn:x}"),
                    commit = r.commit,
                    "a statement spanning shards left undecided here was decided"
                );
                true
            }
            Err(e) => {
                tracing::debug!(txn, error = %e.report(), "deciding an orphaned statement failed");
                false
            }
        }
    }

    /// A new statement id: random, never 0.
    pub(super) fn new_transaction_id() -> Result<u64> {
        loop {
            let id = crate::random::random_u64()?;
            if id != 0 {
                return Ok(id);
            }
        }
    }

    /// Records the outcome of statement `txn` in the metadata group, unless one is recorded already; returns the
    /// outcome that stands (the first recorded) and the metadata version that recorded it.
    ///
    /// # Errors
    ///
    /// The metadata group could not be reached or did not answer: the outcome is unknown.
    pub(super) async fn decide(&self, txn: u64, commit: bool) -> Result<Resolution> {
        let at_ms = crate::clock::unix_ms();
        let response = self.meta.propose(MetaCommand::DecideTransaction { txn, commit, at_ms }).await?;
        match response.outcome {
            Ok(MetaOutcome::TransactionDecided { .. }) => Ok(Resolution { txn, commit, version: response.version }),
            Ok(_) | Err(Rejection::TransactionDecided { .. }) => {
                let decision = self.meta.read_state(|s| s.transaction(txn)).await?;
                let decision = decision.ok_or_else(|| {
                    Error::Internal(format!("statement {txn:x} was decided, and its decision is gone already"))
                })?;
                Ok(Resolution { txn, commit: decision.commit, version: decision.version })
            }
            Err(rejection) => Err(Error::Meta(rejection.into())),
        }
    }

    /// Forgets the decision of statement `txn`, every part of which is settled.
    pub(super) async fn forget(&self, txn: u64) {
        if let Err(e) = self.meta.propose(MetaCommand::ForgetTransaction { txn }).await {
            // Kept a day at most: the next decision made after that drops it.
            tracing::debug!(txn, error = %e, "forgetting a statement's decision failed");
        }
    }

    /// Settles this node's part of statement `txn` in shard `shard` of `table`, which it leads at `epoch`, as the
    /// metadata group decided it: one change of the shard's log that makes the part's chunks visible from the
    /// decision's version on (commit) or removes them (abort), durable on every in-sync copy; returns how many chunks
    /// it settled (0: none was left to settle).
    ///
    /// # Errors
    ///
    /// [`Error::ShardUnavailable`] when this node does not lead the shard at `epoch`, or no decision is recorded; the
    /// errors of replicating a change of the shard.
    pub async fn resolve_part(&self, table: TableId, shard: ShardId, epoch: u64, txn: u64) -> Result<u64> {
        let (_, _, replica) = self.led_shard(table, shard, epoch).await?;
        let _serialized = replica.dml_lock.lock().await;
        self.resolve_locked(&replica, epoch, txn).await
    }

    /// Settles, in shard `replica` this node leads at `epoch`, every part of a statement spanning shards whose
    /// decision is recorded. The caller holds the replica's DML lock.
    pub(super) async fn resolve_decided_locked(&self, replica: &Arc<ShardReplica>, epoch: u64) -> Result<()> {
        for txn in replica.unsettled_txns() {
            if self.meta.read_local(|s| s.transaction(txn)).is_some() {
                self.resolve_locked(replica, epoch, txn).await?;
            }
        }
        Ok(())
    }

    /// [`Engine::resolve_part`] with the replica's DML lock held.
    async fn resolve_locked(&self, replica: &Arc<ShardReplica>, epoch: u64, txn: u64) -> Result<u64> {
        let shard = replica.shard_id();
        // Changes left prepared go first: the part may be among them.
        if replica.log_end() > replica.committed_lsn() && !self.settle(replica).await? {
            return Err(Error::ShardUnavailable {
                shard: shard.0,
                detail: "its prepared changes are not settled".into(),
            });
        }
        let parts = replica
            .version()
            .iter()
            .filter(|c| (c.meta.txn == txn && c.meta.pending_part()) || c.meta.removed_by == txn)
            .count() as u64;
        if parts == 0 {
            // A part that rewrote the shard's cold files alone has nothing hot to settle.
            self.mark_decided_manifest(replica, txn).await;
            return Ok(0);
        }
        self.mark_decided_manifest(replica, txn).await;
        let decision = match self.meta.read_local(|s| s.transaction(txn)) {
            Some(d) => Some(d),
            None => self.meta.read_state(|s| s.transaction(txn)).await?,
        };
        let Some(decision) = decision else {
            return Err(Error::ShardUnavailable {
                shard: shard.0,
                detail: format!("statement {txn:x} spanning shards is not decided yet"),
            });
        };
        let resolution = Resolution { txn, commit: decision.commit, version: decision.version };
        self.replicate_change(replica, epoch, Vec::new(), Vec::new(), vec![resolution], 0).await?;
        self.metrics.transaction_parts_settled.inc();
        Ok(parts)
    }

    /// Writes the commit marker of the manifest that the commit of statement `txn` made the shard's current one, if
    /// it did: for readers of the bucket alone, and the collector's grace for the files it retired counts from the
    /// marker (see [`cold::ensure_commit_marker`]). A failure is logged: the collector writes a missing marker.
    async fn mark_decided_manifest(&self, replica: &ShardReplica, txn: u64) {
        let decision = match self.meta.read_local(|s| s.transaction(txn)) {
            Some(d) => d,
            None => match self.meta.read_state(|s| s.transaction(txn)).await {
                Ok(Some(d)) => d,
                _ => return,
            },
        };
        let shard = replica.shard_id();
        let Some(pointer) = self.meta.read_local(|s| s.shard(shard).and_then(|r| r.manifest.clone())) else { return };
        if !decision.commit || pointer.txn_version != decision.version {
            return;
        }
        // Under the shard's lock: an unreachable store holds it up for one replication timeout at most.
        let marked = match self.cold_store() {
            Ok(store) => {
                let at = (replica.def().id.0, shard.0);
                let mark =
                    cold::ensure_commit_marker(&store, self.cold.display(), at, pointer.version, &pointer.location);
                match tokio::time::timeout(self.replication.timeout, mark).await {
                    Ok(marked) => marked.map(|_| ()),
                    Err(_) => Err(Error::ColdUnavailable {
                        detail: format!("{}: no answer within {:?}", self.cold.display(), self.replication.timeout),
                    }),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = marked {
            tracing::warn!(shard = %shard, version = pointer.version, error = %e.report(), "writing a commit marker failed");
        }
    }

    /// Settles the parts of statements spanning shards left unsettled in the shards this node leads: those decided
    /// (their coordinator stopped before it settled them) and those undecided for longer than
    /// [`crate::engine::ReplicationOptions::transaction_hold`] (their coordinator is lost: decided aborted here, unless
    /// its commit landed first). Runs on the shards' duty rounds.
    pub(super) async fn resolve_abandoned(&self) {
        let now = tokio::time::Instant::now();
        let hold = self.replication.transaction_hold;
        let mut seen = std::collections::HashSet::new();
        for replica in self.replicas() {
            let Some(record) = self.meta.read_local(|s| s.shard(replica.shard_id()).cloned()) else { continue };
            if record.primary != self.node_id {
                continue;
            }
            let mut decided = BTreeSet::new();
            // A pending manifest is a part too: its decision makes it current or drops it.
            let mut unsettled = replica.unsettled_txns();
            unsettled.extend(record.pending.as_ref().map(|p| p.txn));
            unsettled.sort_unstable();
            unsettled.dedup();
            for txn in unsettled {
                seen.insert(txn);
                let since = *self.undecided_since.lock().expect("undecided lock poisoned").entry(txn).or_insert(now);
                if self.meta.read_local(|s| s.transaction(txn)).is_some() {
                    decided.insert(txn);
                } else if now.saturating_duration_since(since) >= hold {
                    match self.decide(txn, false).await {
                        Ok(r) => {
                            tracing::info!(txn = format!("{txn:x}"), commit = r.commit, shard = %record.shard_id, "a statement spanning shards whose coordinator is gone was decided");
                            decided.insert(txn);
                        }
                        Err(e) => tracing::debug!(txn, error = %e.report(), "deciding an abandoned statement failed"),
                    }
                }
            }
            for txn in decided {
                if let Err(e) = self.resolve_part(record.table_id, record.shard_id, record.epoch, txn).await {
                    tracing::debug!(txn, error = %e.report(), "settling a part of a statement spanning shards failed");
                }
            }
        }
        self.undecided_since.lock().expect("undecided lock poisoned").retain(|txn, _| seen.contains(txn));
    }
}
