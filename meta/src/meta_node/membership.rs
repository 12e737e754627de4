//! Cluster membership on a [`MetaNode`]: joining ([`MetaNode::join`]), removing a node ([`MetaNode::remove_node`]),
//! keeping the configured number of voters ([`MetaNode::keep_voters`]), moving leadership
//! ([`MetaNode::transfer_leader`]), snapshots on demand and the status behind `quiver admin status`.
//!
//! A node joins as a learner and is promoted to voter while the cluster has fewer voters than
//! [`MetaConfig::voters`](crate::MetaConfig::voters); later nodes stay learners. When a voter is removed (a dead
//! machine), the leader promotes a caught-up learner in its place. Every change runs on the leader, which checks it
//! against the replicated state first: a node of another cluster, a node id taken by another address and the removal
//! of the last voter are refused and change nothing.
//!
//! A change of voters goes through a joint configuration (old and new voters together), and openraft 0.9 proposes
//! the second, uniform configuration only from the call that made the change: a call that times out, or a leader
//! that loses its leadership, between the two leaves the group joint, and no later leader finishes it by itself.
//! The decisions here read the configuration the group is heading for (the joint configuration's last half), and
//! the voter keeper, a join and a removal first finish a joint configuration that nobody is driving any more
//! ([`MetaNode::finish_membership_change`]). Without that, a replica that rejoined while its own removal hung half
//! done was told it was still a voter, and the next removal, computed from the joint configuration, dropped it from
//! the group as a side effect: it ran on, outside the group, campaigning in its old configuration.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::error::{ChangeMembershipError, ClientWriteError, Fatal, RaftError};
use tokio::time::Instant;

use super::MetaNode;
use crate::error::ClusterError;
use crate::raft::types::NodeAddr;
use crate::state::{MetaCommand, NodeRole, NodeState};

/// A node asking to join the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// The joining node's id.
    pub node_id: u64,
    /// Its internal gRPC address, reachable from every other node.
    pub grpc_addr: String,
    /// Its Arrow Flight SQL address.
    pub flight_addr: String,
    /// Its PostgreSQL address.
    pub pg_addr: String,
    /// The cluster it already belongs to (or was configured with); `None` for a fresh node.
    pub cluster_id: Option<String>,
    /// Whether it starts with no metadata at all (a new node, or a member that lost its disk).
    pub empty_store: bool,
}

/// One member of the metadata group, as a node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// The member's id.
    pub node_id: u64,
    /// Its internal gRPC address.
    pub grpc_addr: String,
    /// Voter or learner.
    pub role: NodeRole,
    /// Whether it leads.
    pub leader: bool,
    /// The last log index known replicated to it (known by the leader only).
    pub matched_index: Option<u64>,
    /// How many entries it is behind the leader (known by the leader only).
    pub lag: Option<u64>,
    /// Its registry record's state, when registered.
    pub state: Option<NodeState>,
    /// Its Flight SQL address, when registered.
    pub flight_addr: String,
    /// Its PostgreSQL address, when registered.
    pub pg_addr: String,
    /// Whether an operator is draining it of its replicas.
    pub draining: bool,
    /// How many shard replicas it holds.
    pub replicas: u64,
    /// Of how many shards it is the primary.
    pub primaries: u64,
}

/// The metadata group as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The cluster id (empty before bootstrap).
    pub cluster_id: String,
    /// The answering node.
    pub node_id: u64,
    /// The leader it knows.
    pub leader_id: Option<u64>,
    /// Its current term.
    pub term: u64,
    /// Its last log index.
    pub last_log_index: Option<u64>,
    /// Its last applied index.
    pub applied_index: Option<u64>,
    /// The last index in its snapshot.
    pub snapshot_index: Option<u64>,
    /// The metadata version of its applied state.
    pub metadata_version: u64,
    /// Every member, by id.
    pub members: Vec<MemberStatus>,
    /// The number of voters the cluster aims for.
    pub target_voters: usize,
}

impl MetaNode {
    /// Fails with [`ClusterError::NotLeader`] or [`ClusterError::LeaderUnknown`] unless this replica leads.
    pub(crate) fn ensure_leader(&self) -> Result<(), ClusterError> {
        match self.leader() {
            Some((id, _)) if id == self.inner.node_id => Ok(()),
            Some((leader_id, addr)) => {
                Err(ClusterError::NotLeader { node_id: self.inner.node_id, leader_id, leader_addr: addr.grpc_addr })
            }
            None => Err(ClusterError::LeaderUnknown { node_id: self.inner.node_id }),
        }
    }

    /// Returns the voters the group is heading for and every member with its address.
    ///
    /// The voters are those of the configuration's last half: in a joint configuration (a change under way, or one
    /// left half done) `voter_ids` would also count the voters being removed.
    pub(crate) fn members(&self) -> (BTreeSet<u64>, Vec<(u64, NodeAddr)>) {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let voters = membership.get_joint_config().last().cloned().unwrap_or_default();
        let nodes = membership.nodes().map(|(id, addr)| (*id, addr.clone())).collect();
        (voters, nodes)
    }

    /// Runs one membership change through openraft, both halves of a joint change, within the request timeout. While
    /// it runs, the voter keeper leaves a joint configuration to it.
    pub(crate) async fn change_members(
        &self,
        operation: &'static str,
        changes: ChangeMembers<u64, NodeAddr>,
        retain: bool,
    ) -> Result<(), ClusterError> {
        let _in_flight = InFlight::new(&self.inner.changes_in_flight);
        let change = self.inner.raft.change_membership(changes, retain);
        self.with_timeout(operation, change).await?.map_err(|e| self.write_error(e))?;
        Ok(())
    }

    /// Finishes a joint configuration that no change on this replica is driving any more (its call timed out, or
    /// an earlier leader made it and lost its leadership before the second half) by proposing its last half, the
    /// configuration it was heading for. Voters of the first half only stay as learners: an interrupted removal may
    /// have been answered as failed, and its node may be running again; `remove_node` takes learners out.
    ///
    /// Returns whether the configuration is uniform now: `false` while a change is still under way (its joint
    /// configuration not yet committed, or a change on this replica driving it). Does nothing on a replica that does
    /// not lead.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Timeout`] when the configuration could not be committed in time, and the errors of
    /// [`MetaNode::change_membership`].
    pub(crate) async fn finish_membership_change(&self) -> Result<bool, ClusterError> {
        if self.ensure_leader().is_err() {
            return Ok(false);
        }
        let (joint, target, committed) = {
            let metrics = self.inner.raft.metrics();
            let metrics = metrics.borrow();
            let stored = &metrics.membership_config;
            let configs = stored.membership().get_joint_config();
            (configs.len() > 1, configs.last().cloned().unwrap_or_default(), *stored.log_id() <= metrics.last_applied)
        };
        if !joint {
            return Ok(true);
        }
        if !committed || self.inner.changes_in_flight.load(Ordering::SeqCst) > 0 {
            return Ok(false);
        }
        tracing::info!(node_id = self.inner.node_id, voters = ?target, "finishing a membership change left half done");
        let change = self.inner.raft.change_membership(ChangeMembers::ReplaceAllVoters(target), true);
        match self.with_timeout("finish membership change", change).await? {
            Ok(_) => Ok(true),
            // Another change got there first; it carries the configuration on.
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(_)))) => {
                Ok(false)
            }
            Err(e) => Err(self.write_error(e)),
        }
    }

    /// Waits, within the request timeout, until the configuration is uniform, finishing a joint configuration left
    /// half done; on the leader only.
    ///
    /// # Errors
    ///
    /// [`ClusterError::MembershipChangeInProgress`] when a change is still under way at the deadline, and the errors
    /// of [`MetaNode::finish_membership_change`].
    async fn settle_membership(&self) -> Result<(), ClusterError> {
        self.ensure_leader()?;
        let deadline = Instant::now() + self.inner.config.request_timeout();
        loop {
            if self.finish_membership_change().await? {
                return Ok(());
            }
            // Leadership lost meanwhile: the caller's request goes to the next leader.
            self.ensure_leader()?;
            if Instant::now() >= deadline {
                return Err(ClusterError::MembershipChangeInProgress {
                    detail: format!(
                        "the membership change under way on node {} did not finish within {} ms",
                        self.inner.node_id, self.inner.config.request_timeout_ms
                    ),
                });
            }
            let pause = Instant::now() + Duration::from_millis(self.inner.config.heartbeat_interval_ms);
            tokio::time::sleep_until(pause.min(deadline)).await;
        }
    }

    /// Adds a node to the cluster: registers it, adds it as a learner (waiting until it has caught up) and promotes
    /// it to voter while there are fewer voters than configured. Returns the cluster id and the node's role. Runs on
    /// the leader only.
    ///
    /// Joining again with the same id and address (a restarted node) changes nothing and succeeds. The answer is
    /// given on a uniform configuration: a membership change under way is waited for, one left half done is
    /// finished first, so a node whose removal hung half done is not told it is a voter just before it is dropped.
    ///
    /// # Errors
    ///
    /// [`ClusterError::JoinRefused`] for a node of another cluster or an id already used by another address;
    /// [`ClusterError::NotLeader`] / [`ClusterError::LeaderUnknown`] on a replica that does not lead;
    /// [`ClusterError::MembershipChangeInProgress`] when a change under way does not finish within the request
    /// timeout; the errors of [`MetaNode::propose`] and [`MetaNode::add_learner`].
    pub async fn join(&self, request: JoinRequest) -> Result<(String, NodeRole), ClusterError> {
        self.ensure_leader()?;
        let refused = |detail: String| Err(ClusterError::JoinRefused { detail });
        if request.node_id == 0 {
            return refused("node id 0 is reserved; give every node an id of 1 or more".into());
        }
        let port = request.grpc_addr.rsplit_once(':').and_then(|(host, port)| (!host.is_empty()).then_some(port));
        if port.and_then(|p| p.parse::<u16>().ok()).is_none_or(|p| p == 0) {
            return refused(format!(
                "node {} gave the internal address \"{}\"; it must be host:port with a fixed port, reachable from \
                 every node",
                request.node_id, request.grpc_addr
            ));
        }
        let node_id = request.node_id;
        // Decide on the configuration the group settled on: in a joint configuration left by an interrupted removal
        // of this very node, it would count as a voter, be told so, and then be dropped when the configuration moves
        // on, still running and believing itself a member.
        self.settle_membership().await?;
        let (cluster_id, record) =
            self.read_state(|s| (s.cluster_id().map(str::to_string), s.node(node_id).cloned())).await?;
        let Some(cluster_id) = cluster_id else {
            return Err(ClusterError::LeaderUnknown { node_id: self.inner.node_id });
        };
        if let Some(theirs) = &request.cluster_id
            && *theirs != cluster_id
        {
            return refused(format!(
                "node {node_id} belongs to cluster \"{theirs}\", and this is cluster \"{cluster_id}\"; start it with \
                 an empty data directory to join this cluster"
            ));
        }
        let (voters, nodes) = self.members();
        let member = nodes.iter().find(|(id, _)| *id == node_id).map(|(_, addr)| addr.grpc_addr.clone());
        // A registered node that is no member joins after its removal: a new node under the id, which takes copies
        // again (the drain that preceded the removal is over).
        let drained = member.is_none() && record.as_ref().is_some_and(|r| r.draining);
        let known_addr = member.clone().or_else(|| record.as_ref().map(|r| r.grpc_addr.clone()));
        if let Some(addr) = known_addr
            && addr != request.grpc_addr
        {
            return refused(format!(
                "node id {node_id} is already used by the node at {addr}; give the node at {} another id",
                request.grpc_addr
            ));
        }
        // A member joining with an empty store that leads already was brought up to date and elected by the others
        // meanwhile (it held its votes, not its candidacy): the group counts what it really holds. Any other is
        // taken out and added anew.
        let member = match member {
            Some(_) if request.empty_store && node_id != self.inner.node_id => {
                self.forget_member(node_id, voters.contains(&node_id)).await?;
                None
            }
            member => member,
        };
        // A registered node back with an empty store lost its copies of shards: none may count them as in sync, and
        // the shards it led fail over, before it serves again.
        if request.empty_store && record.is_some() {
            self.propose(MetaCommand::LeaveInSync { node_id })
                .await?
                .into_result()
                .map_err(|e| ClusterError::JoinRefused { detail: e.to_string() })?;
        }
        let (voters, _) = self.members();
        let role = if voters.contains(&node_id) { NodeRole::Voter } else { NodeRole::Learner };
        let register = MetaCommand::RegisterNode {
            node_id,
            grpc_addr: request.grpc_addr.clone(),
            flight_addr: request.flight_addr.clone(),
            pg_addr: request.pg_addr.clone(),
            role,
        };
        self.propose(register).await?.into_result().map_err(|e| ClusterError::JoinRefused { detail: e.to_string() })?;
        if drained {
            tracing::info!(node_id, "a node removed after a drain joins again; it takes shard copies again");
            self.propose(MetaCommand::SetDraining { node_id, draining: false })
                .await?
                .into_result()
                .map_err(|e| ClusterError::JoinRefused { detail: e.to_string() })?;
        }
        if member.is_none() {
            tracing::info!(node_id, addr = %request.grpc_addr, "adding a node as learner");
            self.add_learner(node_id, NodeAddr::new(request.grpc_addr.clone())).await?;
        }
        self.heard_at_join(node_id);
        self.propose(MetaCommand::UpdateNodeState { node_id, state: NodeState::Serving }).await?;
        // While the cluster lacks voters, promote the new learner as soon as it has caught up (the replication
        // progress the leader sees trails the learner by a heartbeat or so), bounded by the request timeout.
        let deadline = Instant::now() + self.inner.config.request_timeout();
        let role = loop {
            let (voters, _) = self.members();
            if voters.contains(&node_id) {
                break NodeRole::Voter;
            }
            if voters.len() >= self.inner.config.voters || Instant::now() >= deadline {
                break NodeRole::Learner;
            }
            if self.keep_voters().await?.is_none() {
                tokio::time::sleep(Duration::from_millis(self.inner.config.heartbeat_interval_ms)).await;
            }
        };
        Ok((cluster_id, role))
    }

    /// Takes member `node_id`, which is joining again with an empty store (it lost its disk), out of the group, so
    /// that it can be added again as a new learner.
    ///
    /// Counting it as the member it was would be unsafe: the leader's record of the entries it holds would be wrong
    /// (a voter would count towards commit quorums for entries it no longer has, and openraft refuses a follower's
    /// log going backwards), and its vote of the current term is gone.
    ///
    /// # Errors
    ///
    /// The errors of [`MetaNode::change_membership`].
    async fn forget_member(&self, node_id: u64, voter: bool) -> Result<(), ClusterError> {
        tracing::warn!(node_id, voter, "a member rejoins with an empty store; taking it out to add it anew");
        self.take_out("rejoin with an empty store", node_id, voter).await
    }

    /// Takes `node_id` out of the group: out of the voters (when `voter`) and out of the members. A removal with
    /// `retain = false` does both for a voter; should the node still be a learner after it (a joint configuration
    /// finished with its voters kept), it is taken out as one, since a replacement with the same id and an empty disk
    /// would be taken for it. A replica that took itself out and no longer leads leaves that second step to nobody.
    ///
    /// # Errors
    ///
    /// The errors of [`MetaNode::change_membership`].
    async fn take_out(&self, operation: &'static str, node_id: u64, voter: bool) -> Result<(), ClusterError> {
        let change = if voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
        };
        self.change_members(operation, change, false).await?;
        if self.members().1.iter().any(|(id, _)| *id == node_id) {
            let change = ChangeMembers::RemoveNodes(BTreeSet::from([node_id]));
            match self.change_members(operation, change, false).await {
                Ok(()) => {}
                Err(e) if node_id == self.inner.node_id => {
                    tracing::info!(node_id, error = %e, "removed voter left as learner");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Promotes one caught-up learner to voter when the cluster has fewer voters than configured; returns the node
    /// promoted. Does nothing on a replica that does not lead. First finishes a membership change left half done
    /// (a joint configuration whose call ended before its second half), and promotes nobody while a change is under
    /// way.
    ///
    /// A learner counts as caught up when the leader has replicated to it all but the last few entries; registered
    /// nodes marked down are never promoted.
    ///
    /// # Errors
    ///
    /// The errors of [`MetaNode::change_membership`].
    pub async fn keep_voters(&self) -> Result<Option<u64>, ClusterError> {
        if self.ensure_leader().is_err() {
            return Ok(None);
        }
        // The keeper runs on every leader, so a joint configuration left by a change that was cut short (by its
        // timeout, or by a leader change between its two halves) is finished here, whoever made it.
        if !self.finish_membership_change().await? {
            return Ok(None);
        }
        let (voters, nodes) = self.members();
        if voters.len() >= self.inner.config.voters {
            return Ok(None);
        }
        let (last, replication) = {
            let metrics = self.inner.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.last_log_index.unwrap_or(0), metrics.replication.clone().unwrap_or_default())
        };
        let down: BTreeSet<u64> =
            self.read_local(|s| s.nodes().filter(|n| n.state == NodeState::Down).map(|n| n.node_id).collect());
        let candidate = nodes.iter().map(|(id, _)| *id).find(|id| {
            let matched = replication.get(id).copied().flatten().map(|l| l.index);
            !voters.contains(id) && !down.contains(id) && matched.is_some_and(|m| m + 16 >= last)
        });
        let Some(node_id) = candidate else { return Ok(None) };
        tracing::info!(node_id, voters = voters.len(), target = self.inner.config.voters, "promoting a learner");
        self.promote(node_id).await?;
        Ok(Some(node_id))
    }

    /// Removes a node from the metadata group (a voter or a learner) and marks it down in the registry; then
    /// promotes a learner if the voters fell below the configured count. Runs on the leader only, from a uniform
    /// configuration: a change under way is waited for, one left half done is finished first.
    ///
    /// # Errors
    ///
    /// [`ClusterError::InvalidMembershipChange`] for a node that is not a member or is the last voter,
    /// [`ClusterError::MembershipChangeInProgress`] when a change under way does not finish within the request
    /// timeout, and the errors of [`MetaNode::change_membership`].
    pub async fn remove_node(&self, node_id: u64) -> Result<(), ClusterError> {
        self.ensure_leader()?;
        // The removal runs with `retain = false`, which drops from the group every voter the new configuration
        // leaves out: computed from a joint configuration left half done, it would drop that change's outgoing
        // voters too, running or not.
        self.settle_membership().await?;
        let invalid = |detail: String| Err(ClusterError::InvalidMembershipChange { detail });
        let (voters, nodes) = self.members();
        if !nodes.iter().any(|(id, _)| *id == node_id) {
            return invalid(format!("node {node_id} is not a member of the cluster"));
        }
        let voter = voters.contains(&node_id);
        if voter && voters.len() == 1 {
            return invalid(format!(
                "node {node_id} is the last voter; a cluster cannot lose its last voter (add another node first)"
            ));
        }
        // A removal answered as done leaves no member behind (see `take_out`).
        self.take_out("remove node", node_id, voter).await?;
        tracing::info!(node_id, "node removed from the metadata group");
        if self.read_local(|s| s.node(node_id).is_some()) {
            self.propose(MetaCommand::MarkRemoved { node_id }).await?;
        }
        self.keep_voters().await?;
        Ok(())
    }

    /// Starts draining node `node_id` (or, with `draining` false, stops): it gets no new replica, and the leader's
    /// repair round (`meta_node/repair.rs`) copies each of its replicas to another node, then drops it. Returns how many
    /// replicas the node still holds, as this replica knows once the change is applied.
    ///
    /// # Errors
    ///
    /// [`ClusterError::InvalidMembershipChange`] for a node that is not registered, and the errors of
    /// [`MetaNode::propose`].
    pub async fn drain_node(&self, node_id: u64, draining: bool) -> Result<u64, ClusterError> {
        if self.read_local(|s| s.node(node_id).is_none()) {
            return Err(ClusterError::InvalidMembershipChange {
                detail: format!("node {node_id} is not a member of the cluster"),
            });
        }
        self.propose(MetaCommand::SetDraining { node_id, draining }).await?;
        tracing::info!(node_id, draining, "node drain set");
        Ok(self.read_local(|s| s.shards().filter(|r| r.replicas.contains(&node_id)).count() as u64))
    }

    /// Returns the metadata group as this replica sees it. Replication progress (matched index, lag) is known by
    /// the leader only.
    pub fn status(&self) -> ClusterStatus {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let last = metrics.last_log_index;
        let replication = metrics.replication.clone();
        let (cluster_id, version, records, loads) = self.read_local(|s| {
            let mut loads: std::collections::BTreeMap<u64, (u64, u64)> = std::collections::BTreeMap::new();
            for shard in s.shards() {
                for node in &shard.replicas {
                    let load = loads.entry(*node).or_default();
                    load.0 += 1;
                    load.1 += u64::from(*node == shard.primary);
                }
            }
            let nodes = s.nodes().cloned().collect::<Vec<_>>();
            (s.cluster_id().unwrap_or_default().to_string(), s.version(), nodes, loads)
        });
        let members = membership
            .nodes()
            .map(|(id, addr)| {
                let matched = match &replication {
                    Some(_) if *id == self.inner.node_id => last,
                    Some(r) => r.get(id).copied().flatten().map(|l| l.index),
                    None => None,
                };
                let lag = replication.as_ref().map(|_| last.unwrap_or(0).saturating_sub(matched.unwrap_or(0)));
                let record = records.iter().find(|r| r.node_id == *id);
                MemberStatus {
                    node_id: *id,
                    grpc_addr: addr.grpc_addr.clone(),
                    role: if voters.contains(id) { NodeRole::Voter } else { NodeRole::Learner },
                    leader: metrics.current_leader == Some(*id),
                    matched_index: matched,
                    lag,
                    state: record.map(|r| r.state),
                    flight_addr: record.map(|r| r.flight_addr.clone()).unwrap_or_default(),
                    pg_addr: record.map(|r| r.pg_addr.clone()).unwrap_or_default(),
                    draining: record.is_some_and(crate::state::NodeRecord::is_draining),
                    replicas: loads.get(id).map_or(0, |l| l.0),
                    primaries: loads.get(id).map_or(0, |l| l.1),
                }
            })
            .collect();
        ClusterStatus {
            cluster_id,
            node_id: self.inner.node_id,
            leader_id: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: last,
            applied_index: metrics.last_applied.map(|l| l.index),
            snapshot_index: metrics.snapshot.map(|l| l.index),
            metadata_version: version,
            members,
            target_voters: self.inner.config.voters,
        }
    }

    /// Builds a snapshot of the applied state now (compacting the log) and returns the last index it includes.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Timeout`] when the snapshot is not built within the request timeout;
    /// [`ClusterError::Stopped`] when the replica stopped.
    pub async fn snapshot_now(&self) -> Result<Option<u64>, ClusterError> {
        let applied = self.inner.raft.metrics().borrow().last_applied.map(|l| l.index);
        self.inner.raft.trigger().snapshot().await.map_err(|e| self.stopped(e))?;
        let mut metrics = self.inner.raft.metrics();
        let built = metrics.wait_for(|m| m.snapshot.map(|l| l.index) >= applied);
        let snapshot = self.with_timeout("snapshot", built).await?.map_err(|_| self.stopped(Fatal::Stopped))?;
        Ok(snapshot.snapshot.map(|l| l.index))
    }

    /// Schedules an election on this replica after `after` (the old leader's lease, at most 10 s), for a
    /// leadership transfer; returns at once.
    ///
    /// # Errors
    ///
    /// [`ClusterError::InvalidMembershipChange`] when this replica is not a voter.
    pub fn campaign(&self, after: Duration) -> Result<(), ClusterError> {
        let (voters, _) = self.members();
        if !voters.contains(&self.inner.node_id) {
            return Err(ClusterError::InvalidMembershipChange {
                detail: format!("node {} is not a voter and cannot lead", self.inner.node_id),
            });
        }
        let node = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after.min(Duration::from_secs(10))).await;
            if let Err(e) = node.inner.raft.trigger().elect().await {
                tracing::warn!(error = %e, "campaign for a leadership transfer failed");
            }
        });
        Ok(())
    }

    /// Moves leadership to the voter `to`: this leader stops its heartbeats, `ask_to_campaign` makes `to` start an
    /// election once the followers' leader lease has run out, and this returns when `to` leads (or the request
    /// timeout passes, after which the heartbeats resume and any voter may win the next election). Returns the
    /// leader afterwards.
    ///
    /// # Errors
    ///
    /// [`ClusterError::InvalidMembershipChange`] when `to` is not a caught-up voter; [`ClusterError::Timeout`] when
    /// another node won; the errors of `ask_to_campaign`.
    pub async fn transfer_leader<F>(
        &self,
        to: u64,
        ask_to_campaign: impl FnOnce(NodeAddr, Duration) -> F,
    ) -> Result<u64, ClusterError>
    where
        F: Future<Output = Result<(), ClusterError>>,
    {
        self.ensure_leader()?;
        if to == self.inner.node_id {
            return Ok(to);
        }
        let (voters, nodes) = self.members();
        let Some(addr) = nodes.iter().find(|(id, _)| *id == to).map(|(_, a)| a.clone()) else {
            return Err(ClusterError::InvalidMembershipChange { detail: format!("node {to} is not a member") });
        };
        if !voters.contains(&to) {
            return Err(ClusterError::InvalidMembershipChange {
                detail: format!("node {to} is a learner; only a voter can lead"),
            });
        }
        let lease =
            Duration::from_millis(self.inner.config.election_timeout_max_ms + self.inner.config.heartbeat_interval_ms);
        let deadline = Instant::now() + lease + self.inner.config.request_timeout();
        self.inner.raft.runtime_config().heartbeat(false);
        let result = async {
            ask_to_campaign(addr, lease).await?;
            let mut metrics = self.inner.raft.metrics();
            let moved = metrics.wait_for(|m| m.current_leader.is_some_and(|l| l != self.inner.node_id));
            let seen = self.with_deadline(deadline, "transfer leadership", moved).await?;
            let leader = seen.map_err(|_| self.stopped(Fatal::Stopped))?.current_leader.unwrap_or(to);
            Ok(leader)
        }
        .await;
        self.inner.raft.runtime_config().heartbeat(true);
        let leader = result?;
        tracing::info!(from = self.inner.node_id, to = leader, "leadership transferred");
        Ok(leader)
    }
}

/// Counts a membership change in flight on this replica for as long as it lives, dropped call included.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
