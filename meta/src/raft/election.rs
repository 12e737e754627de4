//! Elections with a pre-vote, in place of openraft's election timer.
//!
//! openraft 0.9 starts an election when a follower's timer runs out, and an election raises the candidate's term at
//! once. A replica cut off from the others (a partition, a frozen process, a one-way cut) thus raises its term every
//! election timeout; when it comes back, its answer to the leader's next heartbeat carries the higher term, the
//! leader steps down, and the group elects again, often several times, although the returning replica's log is
//! behind and it cannot win. On a testbed of separate hosts one such return kept the metadata group without a leader
//! for most of a minute.
//!
//! Raft's pre-vote (Ongaro's thesis, section 9.6; etcd and TiKV run it) closes this: before an election the replica
//! asks every voter whether it *would* vote for it, which changes nothing anywhere. A voter says yes only when it has
//! not heard from a leader for a leader lease and the asker's log is at least as up to date as its own. Only with a
//! yes from a majority of every configuration (both halves of a joint one) does the replica start the election. A
//! replica that cannot reach a majority, or whose peers still hear from a leader, never raises its term.
//!
//! openraft 0.9 has no pre-vote, so its timer is switched off (`enable_elect = false`) and `run` takes its place:
//! it waits as openraft's timer would (the leader lease, then a random election timeout, drawn anew before every
//! attempt so that replicas whose attempts collided do not collide again), holds the pre-vote, and on winning
//! triggers openraft's election. A sole voter elects itself without asking. The answering side is
//! [`Elections::answer`], reached through the `PreVote` call of the Raft service (or the in-process
//! [`Router`](crate::raft::Router)).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openraft::{AsyncRuntime, ServerState};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::MetaConfig;
use crate::meta_node::liveness::wall_ms;
use crate::raft::types::{LogId, MetaRaft, NodeAddr, Runtime, Vote};

/// A replica's question to a voter before an election: would it vote for this candidate now?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    /// The asking replica.
    pub candidate: u64,
    /// The asking replica's current term (for the answerer's log; the election it would start takes the next one).
    pub term: u64,
    /// The id of the last entry in the asking replica's log.
    pub last_log_id: Option<LogId>,
    /// The asking replica's wall clock when it asked, in milliseconds since the Unix epoch (0: not given).
    #[serde(default)]
    pub wall_ms: u64,
}

/// A voter's answer to a [`PreVoteRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteResponse {
    /// Whether the voter would vote for the candidate.
    pub granted: bool,
    /// Why not, in words, for the candidate's log (empty when granted).
    pub reason: String,
}

impl PreVoteResponse {
    fn granted() -> Self {
        Self { granted: true, reason: String::new() }
    }

    fn refused(reason: String) -> Self {
        Self { granted: false, reason }
    }
}

/// The answer of one pre-vote call, or why it failed (unreachable, timed out).
pub type PreVoteFuture = Pin<Box<dyn Future<Output = Result<PreVoteResponse, String>> + Send>>;

/// Carries pre-vote questions to other replicas: the gRPC network in a cluster, the [`Router`](crate::raft::Router)
/// in tests. Implemented by every network a [`MetaNode`](crate::MetaNode) starts on.
pub trait PreVoteNetwork: Send + Sync + 'static {
    /// Asks replica `target`, reachable at `node`, the question `request`, waiting at most `timeout`.
    fn pre_vote(&self, target: u64, node: &NodeAddr, request: PreVoteRequest, timeout: Duration) -> PreVoteFuture;
}

/// The id of the last entry in a replica's log, kept by its [`LogStore`](crate::raft::LogStore) and read by the
/// pre-vote (openraft keeps its own copy private). Clones share the value.
#[derive(Debug, Clone, Default)]
pub(crate) struct LastLogId(Arc<Mutex<Option<LogId>>>);

impl LastLogId {
    pub(crate) fn get(&self) -> Option<LogId> {
        // Every critical section is one assignment or copy, so a poisoned lock still holds a consistent value.
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn set(&self, id: Option<LogId>) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = id;
    }
}

/// The timing of elections, from the replica's settings.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// How often the driver looks (the heartbeat interval).
    tick: Duration,
    /// The range a random election timeout is drawn from.
    timeout_ms: (u64, u64),
    /// How long a replica that heard from a leader trusts it is still there (openraft's leader lease: the longest
    /// election timeout).
    lease: Duration,
    /// How far a candidate's wall clock may be from this replica's (0: not checked).
    max_clock_skew_ms: u64,
}

/// One replica's side of the elections: answers pre-votes and holds them. Shared by the replica, its Raft service
/// and the driver.
pub struct Elections {
    node_id: u64,
    raft: MetaRaft,
    last_log_id: LastLogId,
    /// Set while the replica must not vote (see [`MetaNode::hold_votes`](crate::MetaNode::hold_votes)); it then
    /// neither answers pre-votes nor campaigns.
    votes_held: Arc<AtomicBool>,
    timing: Timing,
}

impl std::fmt::Debug for Elections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elections").field("node_id", &self.node_id).field("timing", &self.timing).finish()
    }
}

/// What a replica's Raft knows of its leader, read inside its core so that the parts agree.
#[derive(Debug)]
struct View {
    state: ServerState,
    vote: Vote,
    /// How long ago the vote last changed or was confirmed by a leader's message (`None`: never since start).
    quiet: Option<Duration>,
}

impl Elections {
    pub(crate) fn new(
        node_id: u64,
        raft: MetaRaft,
        last_log_id: LastLogId,
        votes_held: Arc<AtomicBool>,
        config: &MetaConfig,
    ) -> Self {
        let timing = Timing {
            tick: config.heartbeat_interval(),
            timeout_ms: (config.election_timeout_min_ms, config.election_timeout_max_ms),
            lease: Duration::from_millis(config.election_timeout_max_ms),
            max_clock_skew_ms: config.max_clock_skew_ms,
        };
        Self { node_id, raft, last_log_id, votes_held, timing }
    }

    /// Whether the replica holds its votes.
    pub(crate) fn votes_held(&self) -> bool {
        self.votes_held.load(Ordering::SeqCst)
    }

    async fn view(&self) -> Result<View, openraft::error::Fatal<u64>> {
        self.raft
            .with_raft_state(|state| View {
                state: state.server_state,
                vote: *state.vote_ref(),
                quiet: state.vote_last_modified().map(|at| openraft::Instant::elapsed(&at)),
            })
            .await
    }

    /// Answers a pre-vote: granted when this replica has not heard from a leader for a lease, is no leader itself,
    /// the candidate's wall clock is within `max_clock_skew_ms` of its own, and the candidate's log is at least as up
    /// to date as its own. Changes nothing.
    pub async fn answer(&self, request: &PreVoteRequest) -> PreVoteResponse {
        if self.votes_held() {
            return PreVoteResponse::refused("it lost its store and votes again once it has rejoined".into());
        }
        let view = match self.view().await {
            Ok(view) => view,
            Err(e) => return PreVoteResponse::refused(format!("its Raft stopped: {e}")),
        };
        if view.state == ServerState::Leader {
            return PreVoteResponse::refused(format!("it leads, in term {}", view.vote.leader_id.term));
        }
        if let Some(quiet) = view.quiet
            && view.vote.is_committed()
            && quiet <= self.timing.lease
        {
            return PreVoteResponse::refused(format!(
                "it heard from leader {} of term {} {} ms ago",
                view.vote.leader_id().voted_for().unwrap_or_default(),
                view.vote.leader_id.term,
                quiet.as_millis()
            ));
        }
        let bound = self.timing.max_clock_skew_ms;
        if bound > 0 && request.wall_ms > 0 {
            let ahead = request.wall_ms as i64 - wall_ms() as i64;
            if ahead.unsigned_abs() > bound {
                let side = if ahead > 0 { "ahead of" } else { "behind" };
                return PreVoteResponse::refused(format!(
                    "the candidate's clock is {} ms {side} this replica's, more than max_clock_skew ({bound} ms)",
                    ahead.unsigned_abs()
                ));
            }
        }
        let mine = self.last_log_id.get();
        if request.last_log_id < mine {
            return PreVoteResponse::refused(format!(
                "its log ends at {}, after the candidate's {}",
                log_id_text(mine),
                log_id_text(request.last_log_id)
            ));
        }
        PreVoteResponse::granted()
    }

    /// Asks every other voter of every configuration; true when a majority of each would vote for this replica.
    async fn canvass(&self, network: &dyn PreVoteNetwork, view: &View, configs: &[BTreeSet<u64>]) -> Canvass {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let request = PreVoteRequest {
            candidate: self.node_id,
            term: view.vote.leader_id.term,
            last_log_id: self.last_log_id.get(),
            wall_ms: wall_ms(),
        };
        let peers: BTreeSet<u64> = configs.iter().flatten().copied().filter(|id| *id != self.node_id).collect();
        let timeout = Duration::from_millis(self.timing.timeout_ms.0);
        let calls: Vec<(u64, PreVoteFuture)> = peers
            .iter()
            .map(|id| {
                let node = membership.membership().get_node(id).cloned().unwrap_or_default();
                (*id, network.pre_vote(*id, &node, request.clone(), timeout))
            })
            .collect();
        let mut granted: BTreeSet<u64> = BTreeSet::from([self.node_id]);
        let mut refusals = Vec::new();
        // Each call ends by its own timeout; waiting on them in turn costs no more than the slowest.
        let tasks: Vec<_> = calls.into_iter().map(|(id, call)| (id, tokio::spawn(call))).collect();
        for (id, task) in tasks {
            match task.await {
                Ok(Ok(answer)) if answer.granted => {
                    granted.insert(id);
                }
                Ok(Ok(answer)) => refusals.push(format!("{id}: {}", answer.reason)),
                Ok(Err(e)) => refusals.push(format!("{id}: {e}")),
                Err(e) => refusals.push(format!("{id}: {e}")),
            }
        }
        let won =
            configs.iter().all(|config| config.iter().filter(|id| granted.contains(id)).count() * 2 > config.len());
        Canvass { won, granted, refusals }
    }
}

/// The outcome of one pre-vote.
struct Canvass {
    won: bool,
    granted: BTreeSet<u64>,
    refusals: Vec<String>,
}

fn log_id_text(id: Option<LogId>) -> String {
    id.map_or_else(|| "nothing".to_string(), |id| format!("{}-{}", id.leader_id.term, id.index))
}

/// Drives the elections of one replica until it shuts down (or its [`Elections`] are dropped): every tick, a voter
/// that has heard from no leader for the lease and a random election timeout (or, as a candidate, for the timeout
/// alone) holds a pre-vote and, on winning it, starts an election.
pub(crate) async fn run(elections: Weak<Elections>, network: Arc<dyn PreVoteNetwork>) {
    let Some(timing) = elections.upgrade().map(|e| e.timing) else { return };
    let draw = || {
        let (min, max) = timing.timeout_ms;
        Duration::from_millis(Runtime::thread_rng().gen_range(min..max.max(min + 1)))
    };
    let mut timeout = draw();
    let mut last_try: Option<Instant> = None;
    // Whether the last pre-vote was lost: later losses in a row are logged at debug level only.
    let mut losing = false;
    loop {
        tokio::time::sleep(timing.tick).await;
        // Holds the replica's elections only while it looks, so that a replica whose handles are dropped stops.
        let Some(this) = elections.upgrade() else { return };
        let Ok(view) = this.view().await else { return };
        match view.state {
            ServerState::Shutdown => return,
            ServerState::Leader => {
                losing = false;
                continue;
            }
            _ => {}
        }
        if this.votes_held() {
            continue;
        }
        let configs: Vec<BTreeSet<u64>> =
            this.raft.metrics().borrow().membership_config.membership().get_joint_config().clone();
        if !configs.iter().any(|c| c.contains(&this.node_id)) {
            continue;
        }
        if configs.iter().all(|c| c.len() == 1) {
            // The sole voter: no one to ask, and no one to disturb.
            if view.state != ServerState::Candidate && this.raft.trigger().elect().await.is_err() {
                return;
            }
            continue;
        }
        let quiet = view.quiet.unwrap_or(Duration::MAX);
        let wait = if view.vote.is_committed() { timing.lease + timeout } else { timeout };
        if quiet < wait || last_try.is_some_and(|at| at.elapsed() < timeout) {
            continue;
        }
        last_try = Some(Instant::now());
        timeout = draw();
        let canvass = this.canvass(network.as_ref(), &view, &configs).await;
        if canvass.won {
            losing = false;
            tracing::info!(
                node_id = this.node_id,
                granted = ?canvass.granted,
                "no leader heard for {} ms; a majority would vote for this replica: starting an election",
                quiet.min(Duration::from_secs(86_400)).as_millis()
            );
            if this.raft.trigger().elect().await.is_err() {
                return;
            }
        } else if losing {
            tracing::debug!(node_id = this.node_id, refusals = ?canvass.refusals, "pre-vote lost again");
        } else {
            losing = true;
            tracing::info!(
                node_id = this.node_id,
                refusals = ?canvass.refusals,
                "no leader heard, but no majority would vote for this replica; its term stays {}",
                view.vote.leader_id.term
            );
        }
    }
}
