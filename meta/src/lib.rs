//! Quiver's metadata: the catalog of tables, the node registry and the shard map, replicated through Raft.
//!
//! Metadata changes are [`MetaCommand`]s applied to the [`MetaState`] state machine (whose catalog part is the
//! [`Catalog`], changed by [`CatalogCommand`]s). Applying is deterministic and does no I/O, so the same commands give
//! the same state on every replica. In a single node or an embedded database the node applies [`CatalogCommand`]s to
//! its [`Catalog`] in-process; in a cluster, [`MetaNode`] replicates [`MetaCommand`]s through an openraft group whose
//! log, vote and snapshot live in a [`MetaStore`].
//!
//! ```text
//!  propose(cmd) ──► MetaNode ──(follower: MetaService.Propose to leader)──► leader MetaNode
//!                                                                           │ raft.client_write
//!           RaftService.AppendEntries / Vote / InstallSnapshot ◄────────────┘ (raft::GrpcNetwork)
//!                       │
//!  every replica: LogStore (MetaStore) ─► commit ─► StateMachineStore::apply ─► MetaState ─► subscribe()
//! ```
//!
//! Module layout: [`catalog`](Catalog), `principals` ([`Principals`]: roles, users, privileges) and `state` (the
//! data), [`store`] (the storage seam), [`raft`] (openraft plumbing), [`transport`] (channels to peers: plaintext or mutual TLS), `meta_node` ([`MetaNode`]), [`service`] (gRPC
//! servers, client, error mapping), `config` ([`MetaConfig`]), `error`.
//!
//! This crate depends on `openraft`, `tonic` and the generated protocol, but on no storage engine or query engine:
//! the node supplies the [`MetaStore`] implementation.
//!
//! Tokio and tonic are used through madsim's facades under their usual names: an ordinary build gets tokio and
//! tonic themselves, and a build with `--cfg madsim` (the simulation) gets madsim's simulated time, tasks and
//! network, so the same code runs under a seeded, deterministic scheduler.

extern crate madsim_tokio as tokio;
extern crate madsim_tonic as tonic;

#[macro_use]
pub mod buggify;
mod catalog;
mod config;
mod error;
mod meta_node;
mod principals;
pub mod raft;
pub mod service;
mod state;
pub mod store;
pub mod transport;

pub use catalog::{
    Catalog, CatalogCommand, CatalogOutcome, ColumnDef, REPLICAS_MAX, Sharding, TableDef, TableId, TableKind,
};
pub use config::MetaConfig;
pub use error::{BoxError, ClusterError, ClusterErrorKind, Error, ErrorKind, Rejection, Result};
pub use meta_node::{ClusterStatus, JoinRequest, MemberStatus, MetaNode};
pub use principals::{
    GrantObject, GrantRow, PrincipalCommand, Principals, Privilege, ROLE_NAME_MAX, RoleRecord, ScramVerifier, TokenKey,
};
pub use state::repair::hand_over;
pub use state::{
    DECISION_KEPT_MS, Decision, ManifestPointer, MetaCommand, MetaOutcome, MetaResponse, MetaState, NodeRecord,
    NodeRole, NodeState, PendingManifest, SLOT_COUNT, ShardId, ShardLoad, ShardMove, ShardRecord, SlotRange,
    is_shard_key_type,
};
pub use store::{MemMetaStore, MetaStore, ScanOrder, WriteBatch, WriteOp};
