//! The Raft core of the metadata group, on openraft 0.9.
//!
//! - [`types`]: the type configuration ([`TypeConfig`]), the node type ([`NodeAddr`]) and the runtime choice;
//! - `keys`: the key layout in the [`MetaStore`](crate::MetaStore);
//! - [`LogStore`]: the log and vote ([`openraft::storage::RaftLogStorage`]);
//! - [`StateMachineStore`]: applies entries to the [`MetaState`](crate::MetaState), builds and installs snapshots;
//! - [`election`]: elections with a pre-vote, in place of openraft's election timer;
//! - [`GrpcNetwork`]: the transport over tonic; [`Router`]: an in-process transport with fault injection, for tests;
//! - `sim_runtime`: openraft's runtime on madsim, compiled only with `--cfg madsim`.
//!
//! The log is compacted by snapshots: after `snapshot_logs_since_last` applied entries the state machine builds a
//! snapshot, persists it, and openraft purges the log up to it (keeping `snapshot_logs_kept` entries), so a replica
//! that falls further behind is sent the snapshot instead of the entries.

pub mod election;
pub(crate) mod keys;
pub(crate) mod log_store;
pub(crate) mod network;
mod router;
#[cfg(madsim)]
pub mod sim_runtime;
pub(crate) mod state_machine;
pub mod types;

pub use self::election::{Elections, PreVoteNetwork, PreVoteRequest, PreVoteResponse};
pub use self::log_store::{LogReader, LogStore};
pub use self::network::{GrpcConnection, GrpcNetwork};
pub use self::router::{Router, RouterConnection, RouterNetwork};
pub use self::state_machine::{SnapshotBuilder, SnapshotStats, StateMachineStore};
pub use self::types::{MetaRaft, NodeAddr, Runtime, TypeConfig};

#[cfg(test)]
mod tests;
