//! Node liveness: which members are alive, as the metadata leader sees it (docs/rfcs/0001-cluster-data-path.md,
//! "Failure detection").
//!
//! Every member sends `ClusterService.Heartbeat` to the leader every `node_heartbeat_interval`
//! ([`send_heartbeats`]). The leader keeps the time it last heard from each member in memory ([`Liveness`]), not in
//! the log: heartbeats are frequent and their times mean nothing to another leader. What is replicated is the
//! transition: a member silent for `node_down_after` is marked `Down` in the node registry ([`detect_failures`]),
//! and a member marked down that heartbeats again is marked `Serving` ([`MetaNode::record_heartbeat`]). Failover of
//! the shards a down node leads keys off that state.
//!
//! A new leader knows nobody's last heartbeat: it counts every member as heard at the moment it took over, so it
//! marks nobody down before a whole `node_down_after` of its own leadership has passed. The leader never marks
//! itself down. A node that is no longer a member (removed) is never marked serving by its heartbeats, so the
//! registry keeps following the membership.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use tokio::time::Instant;

use super::{Inner, MetaNode};
use crate::error::ClusterError;
use crate::state::{MetaCommand, NodeState};

/// The leader's memory of when it last heard from each member.
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    inner: Mutex<Heard>,
    /// How far each member's wall clock was ahead of this leader's at its last heartbeat (ms), and when.
    clocks: Mutex<HashMap<u64, (i64, Instant)>>,
}

#[derive(Debug, Default)]
struct Heard {
    /// The term this replica led in when `since` was set; a new term starts the memory anew.
    term: Option<u64>,
    /// When this replica started leading in `term`.
    since: Option<Instant>,
    /// The last heartbeat of each member in this term.
    last: HashMap<u64, Instant>,
}

impl Liveness {
    /// Starts over when `term` is not the term remembered: a leader keeps only what it heard itself.
    fn leading(heard: &mut Heard, term: u64, now: Instant) {
        if heard.term != Some(term) {
            *heard = Heard { term: Some(term), since: Some(now), last: HashMap::new() };
        }
    }

    /// Records a heartbeat of `node_id` at `now` in `term`.
    fn heard(&self, term: u64, node_id: u64, now: Instant) {
        let mut heard = self.inner.lock().expect("liveness lock poisoned");
        Self::leading(&mut heard, term, now);
        heard.last.insert(node_id, now);
    }

    /// Returns when `node_id` was last heard of in `term`: its last heartbeat, or the start of the leadership.
    fn last_heard(&self, term: u64, node_id: u64, now: Instant) -> Instant {
        let mut heard = self.inner.lock().expect("liveness lock poisoned");
        Self::leading(&mut heard, term, now);
        heard.last.get(&node_id).copied().or(heard.since).unwrap_or(now)
    }
}

impl MetaNode {
    /// Records on the leader that member `node_id` is alive; marks it serving again if it was marked down.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NotLeader`] or [`ClusterError::LeaderUnknown`] unless this replica leads (also when it stops
    /// leading before the member is marked serving), and [`ClusterError::Timeout`].
    pub async fn record_heartbeat(&self, node_id: u64) -> Result<(), ClusterError> {
        self.ensure_leader()?;
        let term = self.inner.raft.metrics().borrow().current_term;
        self.inner.liveness.heard(term, node_id, Instant::now());
        let (_, members) = self.members();
        let member = members.iter().any(|(id, _)| *id == node_id);
        let down = self.read_local(|s| s.node(node_id).is_some_and(|n| n.state == NodeState::Down));
        if member && down {
            tracing::info!(node_id, "node heard from again; marking it serving");
            self.set_state_as_leader(node_id, NodeState::Serving).await?;
        }
        Ok(())
    }

    /// Records on the leader how far member `node_id`'s wall clock (`member_time_ms` when it sent its heartbeat) is
    /// ahead of this node's.
    pub fn record_member_clock(&self, node_id: u64, member_time_ms: u64) {
        let ahead = member_time_ms as i64 - wall_ms() as i64;
        let mut clocks = self.inner.liveness.clocks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        clocks.insert(node_id, (ahead, Instant::now()));
    }

    /// The leader's own clock skew, from its members' heartbeats: how far the members' clocks are ahead of this
    /// node's, as most of them say (the offset in the middle of the closer half, at least two members heard within
    /// `node_down_after`); 0 without other members or with one (two nodes cannot tell whose clock is off); `None`
    /// while too few have said.
    fn leader_clock_skew(&self) -> Option<i64> {
        let (_, members) = self.members();
        let others = members.iter().filter(|(id, _)| *id != self.inner.node_id).count();
        if others < 2 {
            return Some(0);
        }
        let fresh = self.inner.config.node_down_after();
        let clocks = self.inner.liveness.clocks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut offsets: Vec<i64> = clocks
            .iter()
            .filter(|(id, (_, at))| **id != self.inner.node_id && at.elapsed() <= fresh)
            .map(|(_, (ahead, _))| *ahead)
            .collect();
        if offsets.len() < 2 {
            return None;
        }
        offsets.sort_by_key(|o| o.unsigned_abs());
        Some(offsets[(offsets.len() - 1) / 2])
    }

    /// Records on the leader that member `node_id` was heard from now, as it joins (or rejoins): the memory of its last
    /// heartbeat may date from before it stopped, and would have it marked down again at once.
    pub(super) fn heard_at_join(&self, node_id: u64) {
        let term = self.inner.raft.metrics().borrow().current_term;
        self.inner.liveness.heard(term, node_id, Instant::now());
    }

    /// Records a liveness transition through this replica's own log only: a leader deposed meanwhile must not have
    /// what it observed, now stale, applied by its successor (which forwarding would do).
    async fn set_state_as_leader(&self, node_id: u64, state: NodeState) -> Result<(), ClusterError> {
        let command = MetaCommand::UpdateNodeState { node_id, state };
        self.with_timeout("record a node's state", self.propose_local(command)).await??;
        Ok(())
    }

    /// On the leader, marks down every serving member silent for longer than `node_down_after`; returns them.
    async fn mark_silent_down(&self) -> Result<Vec<u64>, ClusterError> {
        if self.ensure_leader().is_err() {
            return Ok(Vec::new());
        }
        let term = self.inner.raft.metrics().borrow().current_term;
        let now = Instant::now();
        let limit = self.inner.config.node_down_after();
        let (_, members) = self.members();
        let serving: Vec<u64> = self.read_local(|s| {
            members
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| *id != self.inner.node_id)
                .filter(|id| s.node(*id).is_some_and(|n| n.state == NodeState::Serving))
                .collect()
        });
        let mut marked = Vec::new();
        for node_id in serving {
            let silent = now.saturating_duration_since(self.inner.liveness.last_heard(term, node_id, now));
            if silent > limit {
                tracing::warn!(node_id, silent_ms = silent.as_millis() as u64, "node silent; marking it down");
                self.set_state_as_leader(node_id, NodeState::Down).await?;
                marked.push(node_id);
            }
        }
        Ok(marked)
    }
}

/// [`MetaNode::clock_skew`] before a heartbeat was answered.
pub(super) const SKEW_UNKNOWN: i64 = i64::MIN;

/// This machine's wall clock, in milliseconds since the Unix epoch: only to compare with the leader's.
pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The replica, while it runs: `None` once its handles are all dropped or Raft has stopped, which ends the task.
fn running(replica: &Weak<Inner>) -> Option<MetaNode> {
    let inner = replica.upgrade()?;
    let stopped = inner.raft.metrics().borrow().state == openraft::ServerState::Shutdown;
    (!stopped).then_some(MetaNode { inner })
}

/// Sends this member's heartbeat to the leader every `node_heartbeat_interval`, for as long as the replica runs. The
/// leader records its own directly.
pub(super) async fn send_heartbeats(replica: Weak<Inner>) {
    let Some((interval, client)) = replica.upgrade().map(|r| {
        let c = &r.config;
        (c.node_heartbeat_interval(), crate::service::ClusterClient::with_transport(c.transport(), c.request_timeout()))
    }) else {
        return;
    };
    loop {
        tokio::time::sleep(interval).await;
        let Some(node) = running(&replica) else { return };
        let node_id = node.inner.node_id;
        match node.leader() {
            Some((leader, _)) if leader == node_id => {
                let skew = node.leader_clock_skew().unwrap_or(SKEW_UNKNOWN);
                node.inner.clock_skew_ms.store(skew, Ordering::Relaxed);
                if let Err(e) = node.record_heartbeat(node_id).await {
                    tracing::debug!(node_id, error = %e, "recording this leader's own heartbeat failed");
                }
            }
            Some((_, addr)) => {
                let skew = Arc::downgrade(&node.inner);
                drop(node);
                let sent = wall_ms();
                match client.heartbeat(&addr.grpc_addr, node_id).await {
                    Ok(leader_time_ms) if leader_time_ms > 0 => {
                        // The leader read its clock about halfway through the round trip.
                        let midway = sent + wall_ms().saturating_sub(sent) / 2; // a clock stepped back: no round trip
                        if let Some(inner) = skew.upgrade() {
                            inner.clock_skew_ms.store(leader_time_ms as i64 - midway as i64, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(node_id, error = %e, "heartbeat to the metadata leader failed"),
                }
            }
            None => {}
        }
    }
}

/// On the leader, looks for silent members and repairs the shard map ([`super::repair`]) every
/// `node_heartbeat_interval`, for as long as the replica runs.
pub(super) async fn detect_failures(replica: Weak<Inner>) {
    let Some(interval) = replica.upgrade().map(|r| r.config.node_heartbeat_interval()) else { return };
    loop {
        tokio::time::sleep(interval).await;
        let Some(node) = running(&replica) else { return };
        if let Err(e) = node.mark_silent_down().await {
            tracing::debug!(node_id = node.inner.node_id, error = %e, "marking silent nodes down failed");
        }
        if let Err(e) = node.repair_shards().await {
            tracing::debug!(node_id = node.inner.node_id, error = %e, "repairing shards failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_new_leader_counts_every_member_as_heard_when_it_took_over() {
        let liveness = Liveness::default();
        let t0 = Instant::now();
        assert_eq!(liveness.last_heard(5, 2, t0), t0, "unknown member: heard when leadership began");
        liveness.heard(5, 2, t0 + Duration::from_secs(3));
        assert_eq!(liveness.last_heard(5, 2, t0 + Duration::from_secs(9)), t0 + Duration::from_secs(3));
        assert_eq!(liveness.last_heard(5, 3, t0 + Duration::from_secs(9)), t0);
        // Another term: what this replica heard as leader before means nothing now.
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(liveness.last_heard(6, 2, t1), t1);
    }
}
