//! The node registry: every node that joined the cluster, its addresses, its declared Raft role and its lifecycle
//! state.
//!
//! A [`NodeRecord`] is data in the replicated state. Its `role` is what the membership operations of
//! [`MetaNode`](crate::MetaNode) last recorded; Raft's own membership (in the log) remains the authority on who votes.
//! `last_heartbeat` is a logical timestamp supplied by the command, never read from a clock, so that applying is
//! deterministic.

use serde::{Deserialize, Serialize};

/// A node's role in the metadata Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRole {
    /// Votes in elections and counts towards the commit quorum.
    Voter,
    /// Receives the log but does not vote.
    Learner,
}

/// A node's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Registered, not yet serving.
    Joining,
    /// Serving reads and writes.
    Serving,
    /// Moving its shards away before leaving (records written before [`NodeRecord::draining`] existed; a node
    /// drained now keeps its liveness state and has that flag set).
    Draining,
    /// Considered down (missed heartbeats, or stopped by an operator).
    Down,
}

/// One registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's id, the same as its Raft node id.
    pub node_id: u64,
    /// The internal gRPC address (Raft and metadata services), host:port.
    pub grpc_addr: String,
    /// The Arrow Flight SQL address, host:port.
    pub flight_addr: String,
    /// The PostgreSQL wire protocol address, host:port.
    pub pg_addr: String,
    /// The role last recorded for the node.
    pub role: NodeRole,
    /// The lifecycle state.
    pub state: NodeState,
    /// The logical time of the last heartbeat recorded (0 before the first one).
    pub last_heartbeat: u64,
    /// Set by an operator (`quiver admin drain`): the node gets no new replica, and every replica it holds moves to
    /// other nodes. Apart from its state, so that a draining node is still marked down when it goes silent, and
    /// stays draining when it comes back.
    #[serde(default)]
    pub draining: bool,
}

impl NodeRecord {
    /// Returns whether the node is being drained of its replicas.
    pub fn is_draining(&self) -> bool {
        self.draining || self.state == NodeState::Draining
    }
}
