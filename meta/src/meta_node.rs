//! [`MetaNode`]: one replica of the metadata Raft group, the entry point of this crate in a cluster.
//!
//! A `MetaNode` owns a [`MetaRaft`] with its [`LogStore`] and [`StateMachineStore`] on a [`MetaStore`], and offers:
//! - lifecycle: [`MetaNode::start`], [`MetaNode::bootstrap`], [`MetaNode::shutdown`];
//! - membership: [`MetaNode::add_learner`], [`MetaNode::promote`], [`MetaNode::change_membership`] (on the leader);
//! - writes: [`MetaNode::propose`] on any replica; a follower forwards to the leader through [`MetaClient`];
//! - reads: [`MetaNode::read_state`] (linearizable on any replica), [`MetaNode::read_local`] (this replica's applied
//!   state, possibly stale), [`MetaNode::subscribe`] (the applied metadata version);
//! - observation: [`MetaNode::metrics`], [`MetaNode::leader`].
//!
//! Forwarding never applies a command twice: a proposal is retried, on the leader this replica currently knows, only
//! when the previous attempt certainly did not reach a leader's log (this replica or the target said "not leader",
//! or the connection to the target failed before sending). Any other failure is returned; after a timeout the
//! command may still be applied.
//!
//! Linearizable reads use Raft's read index: the leader confirms its leadership with a quorum and names the commit
//! index at that moment; the reading replica waits until it has applied that index, then reads its own state. A
//! follower asks the leader for the index over the `ReadIndex` call.
//!
//! Time is tokio's (the simulator's under madsim); the wall clock is read only to compare it with the leader's
//! (`liveness`), through `SystemTime`, which the simulator also drives.

pub(crate) mod liveness;
mod membership;
mod repair;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, Fatal, ForwardToLeader, InitializeError, RaftError,
};
use openraft::{ChangeMembers, RaftNetworkFactory};
use tokio::sync::watch;
use tokio::time::Instant;

pub use self::membership::{ClusterStatus, JoinRequest, MemberStatus};
use crate::config::MetaConfig;
use crate::error::{ClusterError, ClusterErrorKind};
use crate::raft::election::{self, Elections, PreVoteNetwork};
use crate::raft::log_store::LogStore;
use crate::raft::state_machine::{SharedState, SnapshotStats, StateMachineStore};
use crate::raft::types::{MetaRaft, NodeAddr, RaftMetrics, TypeConfig};
use crate::service::MetaClient;
use crate::state::{MetaCommand, MetaResponse, MetaState, NodeRole};
use crate::store::MetaStore;

/// One replica of the metadata Raft group. Cheap to clone; clones share the replica.
#[derive(Clone)]
pub struct MetaNode {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: u64,
    addr: NodeAddr,
    config: MetaConfig,
    raft: MetaRaft,
    shared: Arc<SharedState>,
    client: MetaClient,
    /// Membership changes this replica is driving now (see `membership::InFlight`): a joint configuration is
    /// finished by the voter keeper only when none is, so that the keeper does not race the change's own second phase.
    changes_in_flight: AtomicUsize,
    /// When the members were last heard from, while this replica leads (`liveness`).
    liveness: liveness::Liveness,
    /// The leader's memory of when each node went down (the repair round's clock).
    down_since: repair::DownSince,
    /// The term in which an operator asked this leader to balance (`quiver admin rebalance`; 0: never): moves start
    /// then as if automatic rebalancing were on, until the nodes are balanced or the leadership ends.
    rebalance_requested: AtomicU64,
    /// Set while this replica must not vote: it started with an empty store and has not rejoined yet.
    votes_held: Arc<std::sync::atomic::AtomicBool>,
    /// This replica's side of the elections: its pre-vote answers and the driver's state.
    elections: Arc<Elections>,
    /// How far the metadata leader's wall clock was ahead of this node's at the last heartbeat, in milliseconds
    /// (`liveness`); [`liveness::SKEW_UNKNOWN`] before one was answered.
    clock_skew_ms: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for MetaNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaNode").field("node_id", &self.inner.node_id).field("addr", &self.inner.addr).finish()
    }
}

impl MetaNode {
    /// Starts replica `node_id`, reachable by its peers at `addr`, on the log and snapshot kept in `store`, sending
    /// Raft messages through `network`.
    ///
    /// A replica that ran before on `store` resumes from its snapshot and re-applies its committed entries before
    /// this returns. A fresh one waits to be bootstrapped ([`MetaNode::bootstrap`]) or added by a leader.
    ///
    /// # Errors
    ///
    /// Returns [`ClusterError::InvalidConfig`] for invalid settings and [`ClusterError::Stopped`] when the store
    /// cannot be read.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn example() -> Result<(), quiver_meta::ClusterError> {
    /// use std::sync::Arc;
    /// use quiver_meta::raft::{NodeAddr, Router};
    /// use quiver_meta::{MemMetaStore, MetaConfig, MetaNode};
    ///
    /// let router = Router::new();
    /// let node = MetaNode::start(1, NodeAddr::new("127.0.0.1:7001"), Arc::new(MemMetaStore::new()),
    ///     MetaConfig::default(), router.network(1)).await?;
    /// router.register(&node);
    /// node.bootstrap("cluster-a").await?;
    /// node.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start<N>(
        node_id: u64,
        addr: NodeAddr,
        store: Arc<dyn MetaStore>,
        config: MetaConfig,
        network: N,
    ) -> Result<Self, ClusterError>
    where
        N: RaftNetworkFactory<TypeConfig> + PreVoteNetwork + Clone,
    {
        let raft_config = Arc::new(config.to_openraft()?);
        let stopped = |source: Fatal<u64>| ClusterError::Stopped { node_id, source: Box::new(source) };
        let log = LogStore::open(Arc::clone(&store)).map_err(|e| stopped(Fatal::StorageError(e)))?;
        let state_machine = StateMachineStore::open(store).map_err(|e| stopped(Fatal::StorageError(e)))?;
        let shared = state_machine.shared();
        let last_log_id = log.last_log_id_cell();
        let pre_votes: Arc<dyn PreVoteNetwork> = Arc::new(network.clone());
        let raft = MetaRaft::new(node_id, raft_config, network, log, state_machine).await.map_err(stopped)?;
        let votes_held: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let elections = Arc::new(Elections::new(node_id, raft.clone(), last_log_id, Arc::clone(&votes_held), &config));
        let client = MetaClient::with_transport(config.transport());
        tracing::info!(node_id, %addr, "metadata replica started");
        let inner = Arc::new(Inner {
            node_id,
            addr,
            config,
            raft,
            shared,
            client,
            changes_in_flight: AtomicUsize::new(0),
            liveness: liveness::Liveness::default(),
            down_since: repair::DownSince::default(),
            rebalance_requested: AtomicU64::new(0),
            votes_held,
            elections: Arc::clone(&elections),
            clock_skew_ms: std::sync::atomic::AtomicI64::new(liveness::SKEW_UNKNOWN),
        });
        tokio::spawn(election::run(Arc::downgrade(&elections), pre_votes));
        tokio::spawn(liveness::send_heartbeats(Arc::downgrade(&inner)));
        tokio::spawn(liveness::detect_failures(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// Returns this replica's id.
    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    /// Returns this replica's address.
    pub fn addr(&self) -> &NodeAddr {
        &self.inner.addr
    }

    /// Returns the replica's settings.
    pub fn config(&self) -> &MetaConfig {
        &self.inner.config
    }

    /// Holds (`true`) or releases this replica's votes. A node that comes back under its id with an empty store
    /// (its disk was lost) holds them until the cluster has added it anew: the votes it cast before are gone with
    /// its disk, so answering a candidate of a term it already voted in could elect two leaders in that term.
    pub fn hold_votes(&self, hold: bool) {
        self.inner.votes_held.store(hold, Ordering::SeqCst);
    }

    /// The flag [`MetaNode::hold_votes`] sets, for the Raft service.
    pub(crate) fn votes_held(&self) -> Arc<std::sync::atomic::AtomicBool> {
        Arc::clone(&self.inner.votes_held)
    }

    /// Returns this replica's side of the elections, to answer pre-votes.
    pub fn elections(&self) -> Arc<Elections> {
        Arc::clone(&self.inner.elections)
    }

    /// Returns the Raft handle, to serve its RPCs or wait on its metrics.
    pub fn raft(&self) -> &MetaRaft {
        &self.inner.raft
    }

    /// Returns a receiver of Raft's metrics of this replica.
    pub fn metrics(&self) -> watch::Receiver<RaftMetrics> {
        self.inner.raft.metrics()
    }

    /// Completes when this replica's Raft has stopped on its own (a fatal error: its log or state could not be
    /// written, say on a full disk), with why. A replica in that state answers nothing until its process starts
    /// again on its durable state, so a server stops when this completes.
    pub async fn stopped_by_fault(&self) -> String {
        let mut metrics = self.inner.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return "its Raft task ended".to_string();
            }
        }
    }

    /// How far the metadata leader's wall clock is ahead of this node's (negative: behind), as the last answered
    /// heartbeat measured it (to within half its round trip); zero on the leader; `None` before any was answered.
    pub fn clock_skew(&self) -> Option<i64> {
        let ms = self.inner.clock_skew_ms.load(Ordering::Relaxed);
        (ms != liveness::SKEW_UNKNOWN).then_some(ms)
    }

    /// Returns the leader this replica currently knows, with its address.
    pub fn leader(&self) -> Option<(u64, NodeAddr)> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let node = metrics.membership_config.membership().get_node(&leader)?.clone();
        Some((leader, node))
    }

    /// Returns this replica's snapshot activity (counts, size and build time of the last one).
    pub fn snapshot_stats(&self) -> SnapshotStats {
        self.inner.shared.snapshot_stats()
    }

    /// Returns a receiver of the applied metadata version: it changes after every applied batch of commands that
    /// changed the metadata, on this replica.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.shared.subscribe()
    }

    /// Makes this replica the single voter of a new cluster and records `cluster_id` in the metadata.
    ///
    /// # Errors
    ///
    /// Returns [`ClusterError::AlreadyBootstrapped`] when the replica already belongs to a cluster, and the errors
    /// of [`MetaNode::propose`].
    pub async fn bootstrap(&self, cluster_id: &str) -> Result<MetaResponse, ClusterError> {
        let members = BTreeMap::from([(self.inner.node_id, self.inner.addr.clone())]);
        match self.inner.raft.initialize(members).await {
            Ok(()) => {}
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                return Err(ClusterError::AlreadyBootstrapped { node_id: self.inner.node_id });
            }
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                // Cannot happen: the members are this replica alone.
                return Err(ClusterError::InvalidMembershipChange { detail: e.to_string() });
            }
            Err(RaftError::Fatal(source)) => return Err(self.stopped(source)),
        }
        tracing::info!(node_id = self.inner.node_id, cluster_id, "metadata cluster bootstrapped");
        self.propose(MetaCommand::Bootstrap { cluster_id: cluster_id.to_string() }).await
    }

    /// Adds replica `node_id` at `addr` as a learner and waits until it has caught up with the log (or the request
    /// timeout passes; it stays a learner either way). Records the role if the node is registered.
    ///
    /// # Errors
    ///
    /// Returns [`ClusterError::NotLeader`] or [`ClusterError::LeaderUnknown`] when this replica is not the leader,
    /// [`ClusterError::MembershipChangeInProgress`] while another change runs, and [`ClusterError::Timeout`].
    pub async fn add_learner(&self, node_id: u64, addr: NodeAddr) -> Result<(), ClusterError> {
        let raft = &self.inner.raft;
        self.with_timeout("add learner", raft.add_learner(node_id, addr, true))
            .await?
            .map_err(|e| self.write_error(e))?;
        self.record_role(node_id, NodeRole::Learner).await
    }

    /// Makes the learner `node_id` a voter, keeping the other voters.
    ///
    /// # Errors
    ///
    /// As for [`MetaNode::change_membership`].
    pub async fn promote(&self, node_id: u64) -> Result<(), ClusterError> {
        let (mut voters, _) = self.members();
        voters.insert(node_id);
        self.change_membership(voters).await
    }

    /// Makes `voters` the voting members; voters left out become learners. Every id must already be a member
    /// (added with [`MetaNode::add_learner`]). Records the roles of registered nodes.
    ///
    /// # Errors
    ///
    /// Returns [`ClusterError::NotLeader`] or [`ClusterError::LeaderUnknown`] when this replica is not the leader,
    /// [`ClusterError::InvalidMembershipChange`] for an empty set or an unknown id,
    /// [`ClusterError::MembershipChangeInProgress`] while another change runs, and [`ClusterError::Timeout`].
    pub async fn change_membership(&self, voters: BTreeSet<u64>) -> Result<(), ClusterError> {
        let (before, _) = self.members();
        self.change_members("change membership", ChangeMembers::ReplaceAllVoters(voters.clone()), true).await?;
        tracing::info!(node_id = self.inner.node_id, ?voters, "metadata voters changed");
        for node_id in voters.difference(&before) {
            self.record_role(*node_id, NodeRole::Voter).await?;
        }
        for node_id in before.difference(&voters) {
            self.record_role(*node_id, NodeRole::Learner).await?;
        }
        Ok(())
    }

    /// Replicates `command` and returns its outcome once applied. On a follower the command is forwarded to the
    /// leader.
    ///
    /// A refusal by the metadata (the table exists) is `Ok` with a rejection in the response, because the command
    /// was applied, as a no-op, at its log position; see [`MetaResponse::into_result`].
    ///
    /// # Errors
    ///
    /// Returns [`ClusterError::Timeout`] when no leader applied the command within the request timeout (it may still
    /// be applied), [`ClusterError::Remote`] when the leader failed the forwarded call (it may have been applied),
    /// and [`ClusterError::Stopped`] when this replica has stopped.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled proposal may still be applied.
    pub async fn propose(&self, command: MetaCommand) -> Result<MetaResponse, ClusterError> {
        let deadline = Instant::now() + self.inner.config.request_timeout();
        loop {
            let remaining = self.remaining(deadline, "propose")?;
            let not_applied = match self.with_deadline(deadline, "propose", self.propose_local(command.clone())).await?
            {
                Ok((response, _)) => return Ok(response),
                Err(ClusterError::NotLeader { leader_addr, .. }) => {
                    let forward = self.inner.client.propose(&leader_addr, &command, remaining);
                    match self.with_deadline(deadline, "propose", forward).await? {
                        Ok((response, _)) => return Ok(response),
                        Err(
                            e @ (ClusterError::NotLeader { .. }
                            | ClusterError::LeaderUnknown { .. }
                            | ClusterError::Unreachable { .. }),
                        ) => e,
                        Err(e) => return Err(e),
                    }
                }
                Err(e @ ClusterError::LeaderUnknown { .. }) => e,
                Err(e) => return Err(e),
            };
            tracing::debug!(node_id = self.inner.node_id, error = %not_applied, "proposal not accepted, retrying");
            self.wait_for_leader_change(deadline).await;
        }
    }

    /// Proposes `command` on this replica only, which must be the leader; returns the response and its log index.
    pub(crate) async fn propose_local(&self, command: MetaCommand) -> Result<(MetaResponse, u64), ClusterError> {
        match self.inner.raft.client_write(command).await {
            Ok(written) => Ok((written.data, written.log_id.index)),
            Err(e) => Err(self.write_error(e)),
        }
    }

    /// Runs `read` on the metadata state once this replica has applied every change committed before the call, so
    /// the result is linearizable: it reflects every proposal that returned before `read_state` was called.
    ///
    /// `read` runs under a read lock of the applied state: keep it short, and do not block in it.
    ///
    /// # Errors
    ///
    /// Returns [`ClusterError::Timeout`] when no leader confirmed its leadership with a quorum in time (transient
    /// failures are retried until then), [`ClusterError::Stopped`] when this replica has stopped, and the
    /// non-retryable forwarding errors of [`MetaNode::propose`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a read changes nothing.
    pub async fn read_state<T>(&self, read: impl FnOnce(&MetaState) -> T) -> Result<T, ClusterError> {
        let deadline = Instant::now() + self.inner.config.request_timeout();
        loop {
            let remaining = self.remaining(deadline, "read")?;
            let attempt = match self.with_deadline(deadline, "read", self.read_index_local()).await? {
                Err(ClusterError::NotLeader { leader_addr, .. }) => {
                    let ask = self.inner.client.read_index(&leader_addr, remaining);
                    self.with_deadline(deadline, "read", ask).await?
                }
                local => local,
            };
            match attempt {
                Ok(index) => {
                    self.wait_applied(index, deadline).await?;
                    return Ok(self.read_local(read));
                }
                // A read changes nothing, so every transient failure (no leader yet, a leadership check that missed
                // its quorum by a heartbeat, a leader that just went away) is retried until the deadline.
                Err(e) if e.kind() == ClusterErrorKind::Unavailable => {
                    tracing::debug!(node_id = self.inner.node_id, error = %e, "linearizable read retrying");
                    match e {
                        ClusterError::NotLeader { .. }
                        | ClusterError::LeaderUnknown { .. }
                        | ClusterError::Unreachable { .. } => self.wait_for_leader_change(deadline).await,
                        _ => {
                            let pause = Instant::now() + self.inner.config.heartbeat_interval();
                            tokio::time::sleep_until(pause.min(deadline)).await;
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Confirms that this replica is the leader and returns the log index a linearizable read must wait for.
    ///
    /// That is the end of the leader's log, not openraft's read log id. A leader that restarts keeps its leadership
    /// (its vote is committed and its own) but reloads the commit index it last saved, and that save is not synced:
    /// entries committed before the crash, already applied and read on other replicas, would lie beyond that read log
    /// id, and a read here would miss them (the simulation found it: a table present in one read, absent in a later
    /// one). Every committed entry is in the leader's log, so waiting for its end is safe; the cost is that a read
    /// also waits for proposals the leader has appended but not yet committed.
    pub(crate) async fn read_index_local(&self) -> Result<Option<u64>, ClusterError> {
        match self.inner.raft.get_read_log_id().await {
            Ok((read_log_id, _applied)) => {
                let last_log = self.inner.raft.metrics().borrow().last_log_index;
                Ok(read_log_id.map(|id| id.index).max(last_log))
            }
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => Err(self.not_leader(forward)),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(ClusterError::NoQuorum { node_id: self.inner.node_id })
            }
            Err(RaftError::Fatal(source)) => Err(self.stopped(source)),
        }
    }

    /// Waits until this replica has applied the entry at `index` (nothing to wait for when `None`).
    pub(crate) async fn wait_applied(&self, index: Option<u64>, deadline: Instant) -> Result<(), ClusterError> {
        let Some(index) = index else { return Ok(()) };
        let remaining = self.remaining(deadline, "read")?;
        match self.inner.raft.wait(Some(remaining)).applied_index_at_least(Some(index), "linearizable read").await {
            Ok(_) => Ok(()),
            Err(openraft::metrics::WaitError::Timeout(..)) => Err(self.timeout_error("read")),
            Err(openraft::metrics::WaitError::ShuttingDown) => Err(self.stopped(Fatal::Stopped)),
        }
    }

    /// Runs `read` on this replica's applied state, without checking that it is current: it may miss changes
    /// committed elsewhere but not yet applied here.
    pub fn read_local<T>(&self, read: impl FnOnce(&MetaState) -> T) -> T {
        read(&self.inner.shared.read().state)
    }

    /// Stops the replica's Raft tasks. The store keeps the log and snapshot for a later [`MetaNode::start`].
    ///
    /// # Errors
    ///
    /// Returns [`ClusterError::Stopped`] when a Raft task had panicked.
    pub async fn shutdown(&self) -> Result<(), ClusterError> {
        tracing::info!(node_id = self.inner.node_id, "metadata replica shutting down");
        self.inner.raft.shutdown().await.map_err(|_| self.stopped(Fatal::Panicked))
    }

    /// Records a node's role in the registry, if the node is registered.
    async fn record_role(&self, node_id: u64, role: NodeRole) -> Result<(), ClusterError> {
        let registered = self.read_local(|state| state.node(node_id).map(|n| n.role));
        if registered.is_some_and(|current| current != role) {
            let response = self.propose(MetaCommand::SetNodeRole { node_id, role }).await?;
            if let Err(rejection) = response.outcome {
                tracing::debug!(node_id, %rejection, "node role not recorded");
            }
        }
        Ok(())
    }

    /// Waits until the known leader changes, at most one election timeout and never past `deadline`.
    async fn wait_for_leader_change(&self, deadline: Instant) {
        let mut metrics = self.inner.raft.metrics();
        let before = metrics.borrow_and_update().current_leader;
        let limit = (Instant::now() + Duration::from_millis(self.inner.config.election_timeout_max_ms)).min(deadline);
        let changed = metrics.wait_for(|m| m.current_leader.is_some() && m.current_leader != before);
        // Whether the leader changed or the wait ended, the caller retries: a leader that stayed may accept now
        // (its connection came back), and an unchanged view past the deadline ends the caller's loop.
        let _ = tokio::time::timeout(limit.saturating_duration_since(Instant::now()), changed).await;
        // Do not spin when the view does not move: back off for one heartbeat.
        tokio::time::sleep_until((Instant::now() + self.inner.config.heartbeat_interval()).min(deadline)).await;
    }

    async fn with_timeout<F: Future>(&self, operation: &'static str, future: F) -> Result<F::Output, ClusterError> {
        self.with_deadline(Instant::now() + self.inner.config.request_timeout(), operation, future).await
    }

    async fn with_deadline<F: Future>(
        &self,
        deadline: Instant,
        operation: &'static str,
        future: F,
    ) -> Result<F::Output, ClusterError> {
        tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), future)
            .await
            .map_err(|_| self.timeout_error(operation))
    }

    fn remaining(&self, deadline: Instant, operation: &'static str) -> Result<Duration, ClusterError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() { Err(self.timeout_error(operation)) } else { Ok(remaining) }
    }

    fn timeout_error(&self, operation: &'static str) -> ClusterError {
        ClusterError::Timeout {
            operation,
            node_id: self.inner.node_id,
            timeout_ms: self.inner.config.request_timeout_ms,
        }
    }

    fn stopped(&self, source: Fatal<u64>) -> ClusterError {
        ClusterError::Stopped { node_id: self.inner.node_id, source: Box::new(source) }
    }

    fn not_leader(&self, forward: ForwardToLeader<u64, NodeAddr>) -> ClusterError {
        match (forward.leader_id, forward.leader_node) {
            (Some(leader_id), Some(node)) if leader_id != self.inner.node_id => {
                ClusterError::NotLeader { node_id: self.inner.node_id, leader_id, leader_addr: node.grpc_addr }
            }
            _ => ClusterError::LeaderUnknown { node_id: self.inner.node_id },
        }
    }

    fn write_error(&self, error: RaftError<u64, ClientWriteError<u64, NodeAddr>>) -> ClusterError {
        match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => self.not_leader(forward),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => match e {
                ChangeMembershipError::InProgress(e) => {
                    ClusterError::MembershipChangeInProgress { detail: e.to_string() }
                }
                ChangeMembershipError::EmptyMembership(e) => {
                    ClusterError::InvalidMembershipChange { detail: e.to_string() }
                }
                ChangeMembershipError::LearnerNotFound(e) => {
                    ClusterError::InvalidMembershipChange { detail: e.to_string() }
                }
            },
            RaftError::Fatal(source) => self.stopped(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// The node spawns these futures on a multi-threaded runtime, so they must stay `Send`.
    #[allow(dead_code)]
    fn futures_are_send(node: &MetaNode, command: MetaCommand) {
        assert_send(&node.propose(command));
        assert_send(&node.read_state(|s| s.version()));
        assert_send(&node.bootstrap("c"));
        assert_send(&node.add_learner(2, NodeAddr::default()));
        assert_send(&node.promote(2));
        assert_send(&node.shutdown());
    }
}
