//! Errors of the metadata layer.
//!
//! Two families, because callers handle them differently:
//!
//! - [`Error`] with [`ErrorKind`]: the metadata refused a change (the table exists, the node is unknown) or stored
//!   metadata is unreadable. A refusal is deterministic: every replica reaches the same verdict for the same command
//!   at the same log position. In a cluster it therefore travels back to the proposer as a value, a [`Rejection`]
//!   inside [`MetaResponse`](crate::MetaResponse), which converts into an [`Error`].
//! - [`ClusterError`] with [`ClusterErrorKind`]: the replicated service could not do its job right now (no leader,
//!   no quorum in time, a peer unreachable) or has stopped. Whether a command was applied may be unknown; each
//!   variant says.
//!
//! The two are separate types, not one, because a rejection is replicated data (serializable, identical on every
//! replica) while a cluster error is local and transient, and because [`ErrorKind`] is matched exhaustively by the
//! node: adding "retry later" to it is a change to make together with the node's wiring of Raft.

use serde::{Deserialize, Serialize};

use crate::state::ShardId;

/// The result type of the meta crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error source from a lower layer (a transport, a store).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a caller should do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The named object does not exist.
    NotFound,
    /// The named object exists already.
    AlreadyExists,
    /// The request is malformed or does not fit the current metadata: fix it (or re-read and retry).
    InvalidRequest,
    /// Stored metadata is unreadable, or an invariant broke.
    Internal,
}

/// An error of the metadata layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No table of this name exists.
    #[error("table \"{table}\" does not exist")]
    TableNotFound {
        /// The table's name.
        table: String,
    },
    /// A table of this name exists already.
    #[error("table \"{table}\" already exists")]
    TableAlreadyExists {
        /// The table's name.
        table: String,
    },
    /// The table definition is invalid.
    #[error("invalid definition of table \"{table}\": {detail}")]
    InvalidTableDefinition {
        /// The table's name.
        table: String,
        /// What is wrong.
        detail: String,
    },
    /// No node of this id is registered.
    #[error("node {node_id} is not registered")]
    NodeNotFound {
        /// The node's id.
        node_id: u64,
    },
    /// No shard of this id exists.
    #[error("shard {shard_id} does not exist")]
    ShardNotFound {
        /// The shard's id.
        shard_id: ShardId,
    },
    /// No registered node can hold the shards of a new table (there is none, or every one is draining).
    #[error("no node can hold the shards of table \"{table}\": every registered node is draining")]
    NoNodeForShards {
        /// The table's name.
        table: String,
    },
    /// A shard's configuration change expected another epoch than the shard's current one.
    #[error("shard {shard_id} is at epoch {current}, the change expected epoch {expected}")]
    ShardEpochConflict {
        /// The shard's id.
        shard_id: ShardId,
        /// The epoch the change was based on.
        expected: u64,
        /// The shard's current epoch.
        current: u64,
    },
    /// A shard's replica set is invalid.
    #[error("invalid replicas for shard {shard_id}: {detail}")]
    InvalidShardReplicas {
        /// The shard's id.
        shard_id: ShardId,
        /// What is wrong.
        detail: String,
    },
    /// A manifest update was based on a version that is no longer current.
    #[error("manifest of shard {shard_id} is at version {current:?}, the update expected {expected:?}")]
    ManifestVersionConflict {
        /// The shard's id.
        shard_id: ShardId,
        /// The version the update was based on.
        expected: Option<u64>,
        /// The current version.
        current: Option<u64>,
    },
    /// The metadata belongs to another cluster.
    #[error("metadata belongs to cluster \"{current}\", not \"{proposed}\"")]
    ClusterIdMismatch {
        /// The recorded cluster id.
        current: String,
        /// The cluster id in the command.
        proposed: String,
    },
    /// A manifest commit named uploads older than the cold-upload fence: a garbage collection may have deleted them.
    #[error(
        "the cold files of shard {shard_id} began uploading at {uploaded_from_ms} ms, before the garbage collector's \
         fence at {fence_ms} ms; they may have been collected: retry the statement or tiering"
    )]
    ColdUploadsFenced {
        /// The shard's id.
        shard_id: ShardId,
        /// When the uploads began (unix ms).
        uploaded_from_ms: u64,
        /// The fence (unix ms).
        fence_ms: u64,
    },
    /// A shard's manifest cannot change while a statement spanning shards has a manifest pending for it.
    #[error("shard {shard_id} has a manifest pending for statement {txn:x}, not decided yet")]
    ShardManifestPending {
        /// The shard's id.
        shard_id: ShardId,
        /// The undecided statement's transaction id.
        txn: u64,
    },
    /// A transaction's outcome was decided otherwise before.
    #[error("transaction {txn} was decided before: {}", if *commit { "committed" } else { "aborted" })]
    TransactionDecided {
        /// The transaction's id.
        txn: u64,
        /// The decision that stands (true: commit).
        commit: bool,
    },
    /// Stored metadata could not be decoded.
    /// No role of this name exists.
    #[error("role \"{role}\" does not exist")]
    RoleNotFound {
        /// The role's name.
        role: String,
    },
    /// A role of this name exists.
    #[error("role \"{role}\" already exists")]
    RoleAlreadyExists {
        /// The role's name.
        role: String,
    },
    /// A change to the principals that cannot be made.
    #[error("{detail}")]
    InvalidPrincipal {
        /// What is wrong.
        detail: String,
    },
    #[error("metadata could not be decoded")]
    Decode(#[source] serde_json::Error),
}

impl Error {
    /// Returns what a caller should do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::TableNotFound { .. }
            | Error::NodeNotFound { .. }
            | Error::ShardNotFound { .. }
            | Error::RoleNotFound { .. } => ErrorKind::NotFound,
            Error::TableAlreadyExists { .. } | Error::RoleAlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::InvalidTableDefinition { .. }
            | Error::NoNodeForShards { .. }
            | Error::ShardEpochConflict { .. }
            | Error::InvalidShardReplicas { .. }
            | Error::ManifestVersionConflict { .. }
            | Error::ColdUploadsFenced { .. }
            | Error::ShardManifestPending { .. }
            | Error::TransactionDecided { .. }
            | Error::InvalidPrincipal { .. }
            | Error::ClusterIdMismatch { .. } => ErrorKind::InvalidRequest,
            Error::Decode(_) => ErrorKind::Internal,
        }
    }
}

/// Why the replicated state refused a command: the serializable, replicated form of an [`Error`].
///
/// A rejected command still occupies its Raft log position and is applied there as a no-op, so every replica
/// computes the same rejection. Convert it with [`Error::from`] to handle it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// See [`Error::TableNotFound`].
    #[error("table \"{table}\" does not exist")]
    TableNotFound {
        /// The table's name.
        table: String,
    },
    /// See [`Error::TableAlreadyExists`].
    #[error("table \"{table}\" already exists")]
    TableAlreadyExists {
        /// The table's name.
        table: String,
    },
    /// See [`Error::InvalidTableDefinition`].
    #[error("invalid definition of table \"{table}\": {detail}")]
    InvalidTableDefinition {
        /// The table's name.
        table: String,
        /// What is wrong.
        detail: String,
    },
    /// See [`Error::NodeNotFound`].
    #[error("node {node_id} is not registered")]
    NodeNotFound {
        /// The node's id.
        node_id: u64,
    },
    /// See [`Error::ShardNotFound`].
    #[error("shard {shard_id} does not exist")]
    ShardNotFound {
        /// The shard's id.
        shard_id: ShardId,
    },
    /// See [`Error::NoNodeForShards`].
    #[error("no node can hold the shards of table \"{table}\": every registered node is draining")]
    NoNodeForShards {
        /// The table's name.
        table: String,
    },
    /// See [`Error::ShardEpochConflict`].
    #[error("shard {shard_id} is at epoch {current}, the change expected epoch {expected}")]
    ShardEpochConflict {
        /// The shard's id.
        shard_id: ShardId,
        /// The epoch the change was based on.
        expected: u64,
        /// The shard's current epoch.
        current: u64,
    },
    /// See [`Error::InvalidShardReplicas`].
    #[error("invalid replicas for shard {shard_id}: {detail}")]
    InvalidShardReplicas {
        /// The shard's id.
        shard_id: ShardId,
        /// What is wrong.
        detail: String,
    },
    /// See [`Error::ManifestVersionConflict`].
    #[error("manifest of shard {shard_id} is at version {current:?}, the update expected {expected:?}")]
    ManifestVersionConflict {
        /// The shard's id.
        shard_id: ShardId,
        /// The version the update was based on.
        expected: Option<u64>,
        /// The current version.
        current: Option<u64>,
    },
    /// See [`Error::ColdUploadsFenced`].
    #[error(
        "the cold files of shard {shard_id} began uploading at {uploaded_from_ms} ms, before the fence at {fence_ms} ms"
    )]
    ColdUploadsFenced {
        /// The shard's id.
        shard_id: ShardId,
        /// When the uploads began (unix ms).
        uploaded_from_ms: u64,
        /// The fence (unix ms).
        fence_ms: u64,
    },
    /// See [`Error::ShardManifestPending`].
    #[error("shard {shard_id} has a manifest pending for statement {txn:x}, not decided yet")]
    ShardManifestPending {
        /// The shard's id.
        shard_id: ShardId,
        /// The undecided statement's transaction id.
        txn: u64,
    },
    /// See [`Error::TransactionDecided`].
    #[error("transaction {txn} was decided before: {}", if *commit { "committed" } else { "aborted" })]
    TransactionDecided {
        /// The transaction's id.
        txn: u64,
        /// The decision that stands (true: commit).
        commit: bool,
    },
    /// See [`Error::ClusterIdMismatch`].
    #[error("metadata belongs to cluster \"{current}\", not \"{proposed}\"")]
    ClusterIdMismatch {
        /// The recorded cluster id.
        current: String,
        /// The cluster id in the command.
        proposed: String,
    },
    /// See [`Error::RoleNotFound`].
    #[error("role \"{role}\" does not exist")]
    RoleNotFound {
        /// The role's name.
        role: String,
    },
    /// See [`Error::RoleAlreadyExists`].
    #[error("role \"{role}\" already exists")]
    RoleAlreadyExists {
        /// The role's name.
        role: String,
    },
    /// See [`Error::InvalidPrincipal`].
    #[error("{detail}")]
    InvalidPrincipal {
        /// What is wrong.
        detail: String,
    },
}

impl Rejection {
    /// Returns what a caller should do about this rejection.
    pub fn kind(&self) -> ErrorKind {
        Error::from(self.clone()).kind()
    }
}

impl From<Rejection> for Error {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::TableNotFound { table } => Error::TableNotFound { table },
            Rejection::TableAlreadyExists { table } => Error::TableAlreadyExists { table },
            Rejection::InvalidTableDefinition { table, detail } => Error::InvalidTableDefinition { table, detail },
            Rejection::NodeNotFound { node_id } => Error::NodeNotFound { node_id },
            Rejection::ShardNotFound { shard_id } => Error::ShardNotFound { shard_id },
            Rejection::NoNodeForShards { table } => Error::NoNodeForShards { table },
            Rejection::ShardEpochConflict { shard_id, expected, current } => {
                Error::ShardEpochConflict { shard_id, expected, current }
            }
            Rejection::InvalidShardReplicas { shard_id, detail } => Error::InvalidShardReplicas { shard_id, detail },
            Rejection::ManifestVersionConflict { shard_id, expected, current } => {
                Error::ManifestVersionConflict { shard_id, expected, current }
            }
            Rejection::ColdUploadsFenced { shard_id, uploaded_from_ms, fence_ms } => {
                Error::ColdUploadsFenced { shard_id, uploaded_from_ms, fence_ms }
            }
            Rejection::ShardManifestPending { shard_id, txn } => Error::ShardManifestPending { shard_id, txn },
            Rejection::TransactionDecided { txn, commit } => Error::TransactionDecided { txn, commit },
            Rejection::ClusterIdMismatch { current, proposed } => Error::ClusterIdMismatch { current, proposed },
            Rejection::RoleNotFound { role } => Error::RoleNotFound { role },
            Rejection::RoleAlreadyExists { role } => Error::RoleAlreadyExists { role },
            Rejection::InvalidPrincipal { detail } => Error::InvalidPrincipal { detail },
        }
    }
}

impl Rejection {
    /// Converts a refusal of [`Catalog::apply`](crate::Catalog::apply) into its replicated form.
    ///
    /// # Panics
    ///
    /// Panics on [`Error`] variants that [`Catalog::apply`](crate::Catalog::apply) never returns (it decodes
    /// nothing and knows no nodes or shards): receiving one is a programming error in this crate.
    pub(crate) fn from_catalog(error: Error) -> Self {
        match error {
            Error::TableNotFound { table } => Rejection::TableNotFound { table },
            Error::TableAlreadyExists { table } => Rejection::TableAlreadyExists { table },
            Error::InvalidTableDefinition { table, detail } => Rejection::InvalidTableDefinition { table, detail },
            other @ (Error::NodeNotFound { .. }
            | Error::ShardNotFound { .. }
            | Error::NoNodeForShards { .. }
            | Error::ShardEpochConflict { .. }
            | Error::InvalidShardReplicas { .. }
            | Error::ManifestVersionConflict { .. }
            | Error::ColdUploadsFenced { .. }
            | Error::ShardManifestPending { .. }
            | Error::TransactionDecided { .. }
            | Error::ClusterIdMismatch { .. }
            | Error::RoleNotFound { .. }
            | Error::RoleAlreadyExists { .. }
            | Error::InvalidPrincipal { .. }
            | Error::Decode(_)) => unreachable!("Catalog::apply returned {other}"),
        }
    }
}

/// What a caller should do about a [`ClusterError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterErrorKind {
    /// The cluster cannot serve the request now (no leader, no quorum, a peer unreachable): retry after a short
    /// backoff, possibly on another node. For proposals the variant says whether the command may have been applied.
    Unavailable,
    /// The request cannot succeed as it is: fix it.
    InvalidRequest,
    /// The node has stopped or an invariant broke: give up on this node.
    Internal,
}

/// An error of a metadata replica: replication, leadership, forwarding and the node's lifecycle.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// This node is not the leader; the leader is known. The request was not accepted; retry on the leader.
    #[error("node {node_id} is not the metadata leader; the leader is node {leader_id} at {leader_addr}")]
    NotLeader {
        /// This node's id.
        node_id: u64,
        /// The leader's id.
        leader_id: u64,
        /// The leader's gRPC address.
        leader_addr: String,
    },
    /// No leader is known (an election is running, or the cluster is not bootstrapped). The request was not
    /// accepted.
    #[error("node {node_id} knows no metadata leader")]
    LeaderUnknown {
        /// This node's id.
        node_id: u64,
    },
    /// This node is the leader but could not confirm it with a quorum (a partition, or peers down); retry later.
    #[error("metadata leader {node_id} cannot reach a quorum")]
    NoQuorum {
        /// This node's id.
        node_id: u64,
    },
    /// The operation did not finish in time. A proposal may still be applied later: retry only commands whose
    /// second application is harmless (`IF NOT EXISTS`, compare-and-set).
    #[error("{operation} on node {node_id} did not finish within {timeout_ms} ms")]
    Timeout {
        /// What timed out, e.g. "propose".
        operation: &'static str,
        /// This node's id.
        node_id: u64,
        /// The time allowed.
        timeout_ms: u64,
    },
    /// A previous membership change has not finished; retry later.
    #[error("a membership change is in progress: {detail}")]
    MembershipChangeInProgress {
        /// openraft's description of the change in progress.
        detail: String,
    },
    /// The membership change cannot be made as requested.
    #[error("invalid membership change: {detail}")]
    InvalidMembershipChange {
        /// What is wrong.
        detail: String,
    },
    /// The node already belongs to an initialized cluster.
    #[error("node {node_id} is already part of an initialized cluster")]
    AlreadyBootstrapped {
        /// This node's id.
        node_id: u64,
    },
    /// A peer could not be reached. For a forwarded proposal this is reported only when the request was never sent,
    /// so it was not applied.
    #[error("metadata node at {addr} is unreachable")]
    Unreachable {
        /// The peer's address.
        addr: String,
        /// The transport's error.
        #[source]
        source: BoxError,
    },
    /// A peer answered a forwarded call with an error, or the call failed after it was sent; a proposal may have
    /// been applied.
    #[error("metadata node at {addr} failed the call (code {code}): {message}")]
    Remote {
        /// The peer's address.
        addr: String,
        /// The stable numeric error code the peer reported (0 when it sent none).
        code: u32,
        /// Whether the peer marked the error retryable.
        retryable: bool,
        /// The peer's message.
        message: String,
    },
    /// The Raft node stopped (shut down, or a storage failure made it stop).
    #[error("the metadata raft node {node_id} has stopped")]
    Stopped {
        /// This node's id.
        node_id: u64,
        /// openraft's reason (boxed: openraft's error types are large, and this one is rare).
        #[source]
        source: Box<openraft::error::Fatal<u64>>,
    },
    /// A message received from a peer is malformed or could not be decoded.
    #[error("{what} could not be decoded")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's error.
        #[source]
        source: BoxError,
    },
    /// The metadata configuration is invalid.
    /// A node asked to join and was refused: it belongs to another cluster, or its id is taken by another node.
    #[error("join refused: {detail}")]
    JoinRefused {
        /// Why.
        detail: String,
    },
    #[error("invalid metadata configuration: {detail}")]
    InvalidConfig {
        /// What is wrong.
        detail: String,
    },
}

impl ClusterError {
    /// Returns what a caller should do about this error.
    pub fn kind(&self) -> ClusterErrorKind {
        match self {
            ClusterError::NotLeader { .. }
            | ClusterError::LeaderUnknown { .. }
            | ClusterError::NoQuorum { .. }
            | ClusterError::Timeout { .. }
            | ClusterError::MembershipChangeInProgress { .. }
            | ClusterError::Unreachable { .. } => ClusterErrorKind::Unavailable,
            ClusterError::Remote { retryable, .. } => {
                if *retryable {
                    ClusterErrorKind::Unavailable
                } else {
                    ClusterErrorKind::Internal
                }
            }
            ClusterError::InvalidMembershipChange { .. }
            | ClusterError::JoinRefused { .. }
            | ClusterError::AlreadyBootstrapped { .. }
            | ClusterError::InvalidConfig { .. } => ClusterErrorKind::InvalidRequest,
            ClusterError::Stopped { .. } | ClusterError::Decode { .. } => ClusterErrorKind::Internal,
        }
    }
}
