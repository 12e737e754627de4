//! The commands that change the replicated metadata and what applying them returns.
//!
//! Naming: a [`MetaCommand`] is proposed and replicated; applying it yields a [`MetaResponse`], whose `outcome` is a
//! [`MetaOutcome`] (what changed) or a [`Rejection`] (why nothing changed). Everything here is serde-serializable,
//! since commands travel in the Raft log and responses travel back to a forwarding node.

use serde::{Deserialize, Serialize};

use crate::catalog::{CatalogCommand, TableDef};
use crate::error::{Error, Rejection};
use crate::principals::PrincipalCommand;
use crate::state::registry::{NodeRole, NodeState};
use crate::state::shards::{ManifestPointer, ShardId, ShardLoad};

/// A change to the replicated metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Records the cluster's id, chosen by the operator at bootstrap. Idempotent for the same id.
    Bootstrap {
        /// The cluster's id.
        cluster_id: String,
    },
    /// Applies a catalog change. Creating a native table also creates its shards, placed on the registered nodes
    /// by the state machine (`state::placement`); dropping a table removes its shards.
    Catalog {
        /// The catalog change.
        command: CatalogCommand,
    },
    /// Changes the roles, users and privileges.
    Principals {
        /// The change.
        command: PrincipalCommand,
    },
    /// Registers a node, or updates the addresses and role of a registered one (its state and heartbeat are kept).
    RegisterNode {
        /// The node's id.
        node_id: u64,
        /// The internal gRPC address.
        grpc_addr: String,
        /// The Arrow Flight SQL address.
        flight_addr: String,
        /// The PostgreSQL wire protocol address.
        pg_addr: String,
        /// The node's role.
        role: NodeRole,
    },
    /// Sets a registered node's lifecycle state.
    UpdateNodeState {
        /// The node's id.
        node_id: u64,
        /// The new state.
        state: NodeState,
    },
    /// Marks a node that was removed from the metadata group as down. The state machine skips it when the node is a
    /// member again by the time it applies (it rejoined after its removal), so the registry follows the membership
    /// in log order.
    MarkRemoved {
        /// The node's id.
        node_id: u64,
    },
    /// Starts (or, with `draining: false`, stops) draining a registered node: it gets no new replica, and the
    /// metadata leader moves each of its replicas to another node, adding the new copy before it drops the old one.
    SetDraining {
        /// The node's id.
        node_id: u64,
        /// Whether the node is to be drained.
        draining: bool,
    },
    /// Records a registered node's Raft role.
    SetNodeRole {
        /// The node's id.
        node_id: u64,
        /// The new role.
        role: NodeRole,
    },
    /// Records a heartbeat of a registered node at a logical time supplied by the proposer. A heartbeat not newer
    /// than the recorded one changes nothing.
    Heartbeat {
        /// The node's id.
        node_id: u64,
        /// The logical time of the heartbeat.
        at: u64,
    },
    /// Takes a node out of every in-sync set, promoting a new primary for each shard it leads, as failover does when
    /// the node is marked down: sent by a node that lost its disk before it serves again (its copies hold nothing
    /// any more), and by operators.
    LeaveInSync {
        /// The node's id.
        node_id: u64,
    },
    /// Replaces a shard's configuration (replica set, in-sync set and primary), bumping its epoch.
    SetShardReplicas {
        /// The shard's id.
        shard_id: ShardId,
        /// The registered nodes holding a replica, without duplicates.
        replicas: Vec<u64>,
        /// The replicas in sync, a subset of `replicas` holding the primary; empty (as in commands written before
        /// in-sync sets existed): all of `replicas`.
        #[serde(default)]
        in_sync: Vec<u64>,
        /// The primary; one of `in_sync`.
        primary: u64,
        /// Applies only while the shard is at this epoch (a compare-and-set); `None`: whatever its epoch.
        #[serde(default)]
        expected_epoch: Option<u64>,
    },
    /// Starts moving a copy of a shard for balance: `to` joins its replicas out of sync (the primary's catch-up brings
    /// it in), and the copy on `from` leaves once it is in sync ([`ShardRecord::moving`](crate::ShardRecord::moving)).
    /// A compare-and-set on the shard's epoch; refused while another move of the shard is under way.
    MoveShardCopy {
        /// The shard's id.
        shard_id: ShardId,
        /// The replica that will leave.
        from: u64,
        /// The serving node, not draining and not holding a copy, that receives one.
        to: u64,
        /// Applies only while the shard is at this epoch.
        expected_epoch: u64,
    },
    /// Records the hot data of shards as their primary `node_id` measured it; entries of shards it does not lead
    /// (any more) are ignored. Not a configuration change: no epoch moves.
    ReportShardLoads {
        /// The reporting node.
        node_id: u64,
        /// Each shard's load.
        loads: Vec<(ShardId, ShardLoad)>,
    },
    /// Publishes a shard's new cold-tier manifest if the current one is still at `expected_version`.
    SetShardManifest {
        /// The shard's id.
        shard_id: ShardId,
        /// The manifest version the writer based its manifest on (`None`: the shard has none yet).
        expected_version: Option<u64>,
        /// The new manifest; its version must be larger than the current one.
        manifest: ManifestPointer,
        /// When the writer began uploading the objects the manifest names (unix ms, by its clock): refused once a
        /// garbage collection fenced uploads begun earlier ([`MetaCommand::FenceColdUploads`]); 0 (commands written
        /// before fences existed): never refused.
        #[serde(default)]
        uploaded_from_ms: u64,
        /// The shard's configuration epoch the writer worked at: refused when the shard moved since (a deposed
        /// primary's late tiering must not list rows its successor changed); `None` (commands written before it
        /// existed): not checked.
        #[serde(default)]
        expected_epoch: Option<u64>,
        /// The highest chunk number the new manifest's tiering marks cover: raises the shard's
        /// [`ShardRecord::tiered_through`](crate::ShardRecord::tiered_through).
        #[serde(default)]
        tiered_through: u64,
        /// A statement spanning shards whose part this manifest is (0: none): the manifest is only proposed, as the
        /// shard's [`ShardRecord::pending`](crate::ShardRecord::pending) manifest, made current by the statement's
        /// commit ([`MetaCommand::DecideTransaction`]) or dropped by its abort; refused once the statement is
        /// decided.
        #[serde(default)]
        txn: u64,
    },
    /// Refuses, from now on, every manifest commit whose uploads began before `before_ms` (unix ms; the fence only
    /// moves forward). A garbage collection fences before it reads the manifest pointers and deletes what they do not
    /// name: a commit that was still in flight (a slow proposal, one settled by proposing it again, one left in a
    /// deposed leader's log) either lands before the fence, and the collection sees it, or is refused, and can never
    /// name objects the collection deleted.
    FenceColdUploads {
        /// Commits of uploads begun before this (unix ms) are refused.
        before_ms: u64,
    },
    /// Records the outcome of transaction `txn` (a statement spanning shards), unless one is recorded already: the
    /// first decision stands, the same one again changes nothing, the other is refused
    /// ([`Rejection::TransactionDecided`](crate::Rejection::TransactionDecided)) naming the one that stands.
    DecideTransaction {
        /// The transaction's id, chosen at random by its coordinator.
        txn: u64,
        /// Commit (true) or abort (false).
        commit: bool,
        /// When the decider decided (unix ms, its clock); decisions older by a day are dropped.
        at_ms: u64,
    },
    /// Drops the decision of transaction `txn` once every part of it is resolved.
    ForgetTransaction {
        /// The transaction's id.
        txn: u64,
    },
}

/// What applying a [`MetaCommand`] changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaOutcome {
    /// Nothing changed (`IF [NOT] EXISTS`, a repeated registration, a stale heartbeat, or a Raft-internal entry).
    Unchanged,
    /// The cluster id was recorded.
    Bootstrapped {
        /// The cluster's id.
        cluster_id: String,
    },
    /// A table was created, with its shards when native.
    TableCreated {
        /// The new table.
        table: TableDef,
        /// Its shards, in slot order (none for an external table).
        shards: Vec<ShardId>,
    },
    /// A table and its shards were removed; their data must be deleted.
    TableDropped {
        /// The dropped table.
        table: TableDef,
        /// Its removed shards.
        shards: Vec<ShardId>,
    },
    /// A table's options changed.
    TableAltered {
        /// The table as it is now.
        table: TableDef,
    },
    /// The roles, users or privileges changed.
    PrincipalsChanged,
    /// A node was registered for the first time.
    NodeRegistered {
        /// The node's id.
        node_id: u64,
    },
    /// A registered node's record changed.
    NodeUpdated {
        /// The node's id.
        node_id: u64,
    },
    /// A shard's replica set changed.
    ShardReplicasSet {
        /// The shard's id.
        shard_id: ShardId,
        /// Its new configuration epoch.
        epoch: u64,
    },
    /// A shard's manifest pointer moved.
    ShardManifestSet {
        /// The shard's id.
        shard_id: ShardId,
        /// The new manifest version.
        version: u64,
    },
    /// A shard's manifest was proposed as a part of statement `txn`, pending its decision.
    ShardManifestProposed {
        /// The shard's id.
        shard_id: ShardId,
        /// The proposed manifest version.
        version: u64,
        /// The statement's transaction id.
        txn: u64,
    },
    /// The cold-upload fence stands at `before_ms` (it moved there, or was there already, or further).
    ColdUploadsFenced {
        /// The fence now (unix ms).
        before_ms: u64,
    },
    /// The outcome of a transaction was recorded.
    TransactionDecided {
        /// The transaction's id.
        txn: u64,
        /// Commit (true) or abort (false).
        commit: bool,
    },
    /// A transaction's decision was dropped.
    TransactionForgotten {
        /// The transaction's id.
        txn: u64,
    },
}

/// The result of applying one command at one Raft log position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaResponse {
    /// The metadata version after the command: unchanged when the command was rejected or changed nothing.
    pub version: u64,
    /// What changed, or why nothing did.
    pub outcome: Result<MetaOutcome, Rejection>,
}

impl MetaResponse {
    /// Returns the outcome, with a rejection as an [`Error`].
    ///
    /// # Errors
    ///
    /// Returns the [`Error`] matching the [`Rejection`] when the command was refused.
    pub fn into_result(self) -> Result<MetaOutcome, Error> {
        self.outcome.map_err(Error::from)
    }
}
