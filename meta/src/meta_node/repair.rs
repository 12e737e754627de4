//! The leader's repair round: every `node_heartbeat_interval`, the metadata leader plans the configuration changes
//! that bring shards back to their number of copies and drain nodes ([`crate::state::repair`]) and proposes them.
//!
//! What counts as a lost copy needs a clock: a node down for longer than `replica_down_timeout`. As with heartbeats,
//! the leader keeps in memory when it first saw each node down in its term; a new leader starts counting anew, so a
//! change of leader only delays re-replication. A node removed from the metadata group (and so marked down) counts
//! as gone at once. Each change is a compare-and-set on the shard's epoch, proposed through this replica's own log
//! only: a deposed leader's plan must not be applied by its successor.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use tokio::time::Instant;

use super::MetaNode;
use crate::error::ClusterError;
use crate::error::Rejection;
use crate::state::NodeState;
use crate::state::repair::{self, RepairReason};

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
    /// On the leader, proposes the repairs the shard map needs now; returns how many applied.
    pub(super) async fn repair_shards(&self) -> Result<usize, ClusterError> {
        if self.ensure_leader().is_err() {
            return Ok(0);
        }
        let term = self.inner.raft.metrics().borrow().current_term;
        let (_, members) = self.members();
        let members: BTreeSet<u64> = members.iter().map(|(id, _)| *id).collect();
        let down: BTreeSet<u64> =
            self.read_local(|s| s.nodes().filter(|n| n.state == NodeState::Down).map(|n| n.node_id).collect());
        let timeout = self.inner.config.replica_down_timeout();
        let mut gone = self.inner.down_since.gone(term, &down, Instant::now(), timeout);
        gone.extend(down.iter().filter(|n| !members.contains(n)));
        let plans = self.read_local(|s| repair::plan(s, &gone));
        let mut applied = 0;
        for plan in plans {
            let (response, _) = self.with_timeout("repair a shard", self.propose_local(plan.command)).await??;
            match response.outcome {
                Ok(_) => {
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
                Err(Rejection::ShardEpochConflict { .. }) => {}
                Err(rejection) => {
                    tracing::warn!(shard = %plan.shard_id, %rejection, "a planned shard repair was refused");
                }
            }
        }
        Ok(applied)
    }
}
