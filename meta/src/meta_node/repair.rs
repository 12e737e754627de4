//! The leader's repair round: every `node_heartbeat_interval`, the metadata leader plans the configuration changes
//! that bring shards back to their number of copies and drain nodes ([`crate::state::repair`]) and proposes them.
//!
//! What counts as a lost copy needs a clock: a node down for longer than `replica_down_timeout`. As with heartbeats,
//! the leader keeps in memory when it first saw each node down in its term; a new leader starts counting anew, so a
//! change of leader only delays re-replication. A node removed from the metadata group (and so marked down) counts
//! as gone at once. Each change is a compare-and-set on the shard's epoch, proposed through this replica's own log
//! only: a deposed leader's plan must not be applied by its successor. A round with nothing to repair balances
//! instead ([`crate::state::balance`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use quiver_proto::v1::{RebalanceResponse, ShardCopyMove};

use tokio::time::Instant;

use super::MetaNode;
use crate::error::ClusterError;
use crate::error::Rejection;
use crate::state::balance::{self, BalanceStep};
use crate::state::repair::{self, RepairReason};
use crate::state::{MetaCommand, NodeState, ShardId};

/// When the leader first saw each node down, in its current term.
#[derive(Debug, Default)]
pub(crate) struct DownSince {
    inner: Mutex<(Option<u64>, HashMap<u64, Instant>)>,
}

impl DownSince {
    /// Returns the nodes of `down` seen down since at least `timeout` ago in `term`, and forgets the others.
    fn gone(&self, term: u64, down: &BTreeSet<u64>, now: Instant, timeout: std::time::Duration) -> BTreeSet<u64> {
        let mut inner = self.inner.lock().expect("down-since lock poisoned");
        if inner.0 != Some(term) {
            *inner = (Some(term), HashMap::new());
        }
        inner.1.retain(|n, _| down.contains(n));
        down.iter()
            .copied()
            .filter(|n| now.saturating_duration_since(*inner.1.entry(*n).or_insert(now)) >= timeout)
            .collect()
    }
}

impl MetaNode {
    /// On the leader: the registered nodes whose copies count as lost now (down for longer than
    /// `replica_down_timeout` in this term, or removed).
    fn gone(&self) -> BTreeSet<u64> {
        let term = self.inner.raft.metrics().borrow().current_term;
        let (_, members) = self.members();
        let members: BTreeSet<u64> = members.iter().map(|(id, _)| *id).collect();
        let down: BTreeSet<u64> =
            self.read_local(|s| s.nodes().filter(|n| n.state == NodeState::Down).map(|n| n.node_id).collect());
        let timeout = self.inner.config.replica_down_timeout();
        let mut gone = self.inner.down_since.gone(term, &down, Instant::now(), timeout);
        gone.extend(down.iter().filter(|n| !members.contains(n)));
        gone
    }

    /// On the leader: the moves under way, the moves that would balance the nodes, and each node's load; unless
    /// `dry_run`, has the leader start moves from its next round on (also with automatic rebalancing off) until the
    /// nodes are balanced or its leadership ends.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NotLeader`] or [`ClusterError::LeaderUnknown`] unless this replica leads.
    pub async fn rebalance(&self, dry_run: bool) -> Result<RebalanceResponse, ClusterError> {
        self.ensure_leader()?;
        let gone = self.gone();
        let settings = self.inner.config.balance_settings();
        // Planned on a copy: a long plan must not hold up the applying of metadata.
        let state = self.read_local(|s| s.clone());
        let response = {
            let s = &state;
            let copy_move = |shard_id: ShardId, from: u64, to: u64| {
                let record = s.shard(shard_id);
                let table = record.and_then(|r| s.catalog().tables().find(|t| t.id == r.table_id));
                let load = record.map(|r| r.load).unwrap_or_default();
                ShardCopyMove {
                    shard_id: shard_id.0,
                    table_name: table.map(|t| t.name.clone()).unwrap_or_default(),
                    from,
                    to,
                    hot_bytes: load.hot_bytes,
                    hot_rows: load.hot_rows,
                }
            };
            let running = s.shards().filter_map(|r| r.moving.map(|m| copy_move(r.shard_id, m.from, m.to))).collect();
            let planned = balance::starts(s, &gone, settings.tolerance, usize::MAX)
                .into_iter()
                .filter_map(|b| match b.step {
                    BalanceStep::Start { from, to, .. } => Some(copy_move(b.shard_id, from, to)),
                    _ => None,
                })
                .collect();
            let loads = balance::loads(s, &gone).into_iter().collect();
            RebalanceResponse { running, planned, loads, automatic: settings.automatic }
        };
        if !dry_run {
            let term = self.inner.raft.metrics().borrow().current_term;
            self.inner.rebalance_requested.store(term, Ordering::SeqCst);
            tracing::info!(moves = response.planned.len(), "rebalance requested");
        }
        Ok(response)
    }

    /// On the leader, proposes the repairs the shard map needs now; returns how many applied.
    pub(super) async fn repair_shards(&self) -> Result<usize, ClusterError> {
        if self.ensure_leader().is_err() {
            return Ok(0);
        }
        let gone = self.gone();
        let plans = self.read_local(|s| repair::plan(s, &gone));
        if plans.is_empty() {
            // Balance only once nothing needs repair.
            return self.balance_shards(&gone).await;
        }
        let mut applied = 0;
        for plan in plans {
            if !self.propose_planned(plan.command, plan.shard_id, "repair a shard").await? {
                continue;
            }
            applied += 1;
            match plan.reason {
                RepairReason::Add { node } => {
                    tracing::info!(shard = %plan.shard_id, node, "shard replica added; it catches up");
                }
                RepairReason::Drop { nodes } => {
                    tracing::info!(shard = %plan.shard_id, ?nodes, "shard replicas on gone or draining nodes dropped");
                }
            }
        }
        Ok(applied)
    }

    /// Proposes a planned change of `shard` through this replica's own log; returns whether it applied (a plan made
    /// from a state that moved meanwhile changes nothing).
    async fn propose_planned(
        &self,
        command: MetaCommand,
        shard: ShardId,
        what: &'static str,
    ) -> Result<bool, ClusterError> {
        let (response, _) = self.with_timeout(what, self.propose_local(command)).await??;
        match response.outcome {
            Ok(_) => Ok(true),
            Err(Rejection::ShardEpochConflict { .. }) => Ok(false),
            Err(rejection) => {
                tracing::warn!(%shard, %rejection, what, "a planned shard change was refused");
                Ok(false)
            }
        }
    }

    /// On the leader, with nothing to repair: finishes the moves whose new copy is in sync and starts the moves that
    /// balance the nodes' loads ([`balance::plan`]); returns how many applied.
    async fn balance_shards(&self, gone: &BTreeSet<u64>) -> Result<usize, ClusterError> {
        let mut settings = self.inner.config.balance_settings();
        let term = self.inner.raft.metrics().borrow().current_term;
        let requested = self.inner.rebalance_requested.load(Ordering::SeqCst) == term;
        settings.automatic |= requested;
        let steps = self.read_local(|s| balance::plan(s, gone, settings));
        if requested && steps.is_empty() && self.read_local(|s| s.shards().all(|r| r.moving.is_none())) {
            // Balanced: the operator's request is done.
            let _ = self.inner.rebalance_requested.compare_exchange(term, 0, Ordering::SeqCst, Ordering::SeqCst);
            tracing::info!("rebalance done");
        }
        let mut applied = 0;
        for step in steps {
            if !self.propose_planned(step.command, step.shard_id, "move a shard copy").await? {
                continue;
            }
            applied += 1;
            match step.step {
                BalanceStep::Start { from, to, load } => {
                    tracing::info!(shard = %step.shard_id, from, to, load, "shard copy moving for balance");
                }
                BalanceStep::Finish { from, to } => {
                    tracing::info!(shard = %step.shard_id, from, to, "shard copy moved");
                }
                BalanceStep::Trim { node } => {
                    tracing::info!(shard = %step.shard_id, node, "extra shard copy dropped");
                }
            }
        }
        Ok(applied)
    }
}
