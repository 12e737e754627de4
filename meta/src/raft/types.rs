//! The openraft type configuration of the metadata group: [`TypeConfig`], the node type [`NodeAddr`], the runtime
//! choice [`Runtime`] and short aliases for openraft's generic types.
//!
//! The async runtime is chosen here and only here: tokio in ordinary builds, madsim's virtual clock and seeded
//! scheduler under `cfg(madsim)` (`super::sim_runtime`); nothing else in the crate names openraft's runtime.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::state::{MetaCommand, MetaResponse};

/// The async runtime openraft's tasks, timers and channels run on.
#[cfg(not(madsim))]
pub type Runtime = openraft::TokioRuntime;
/// The async runtime openraft's tasks, timers and channels run on: madsim's, in the simulation.
#[cfg(madsim)]
pub type Runtime = super::sim_runtime::MadsimRuntime;

/// How a metadata replica is reached: the `Node` type of the Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The internal gRPC address (Raft and metadata services), host:port.
    pub grpc_addr: String,
}

impl NodeAddr {
    /// Returns the address of a replica reachable at `grpc_addr`.
    pub fn new(grpc_addr: impl Into<String>) -> Self {
        Self { grpc_addr: grpc_addr.into() }
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.grpc_addr)
    }
}

openraft::declare_raft_types!(
    /// The type configuration of the metadata Raft group.
    pub TypeConfig:
        D = MetaCommand,
        R = MetaResponse,
        NodeId = u64,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = Runtime,
);

/// The Raft handle of a metadata replica.
pub type MetaRaft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<u64>;
/// A vote.
pub type Vote = openraft::Vote<u64>;
/// A snapshot with its data.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, NodeAddr>;
/// A membership as stored with the log id that introduced it.
pub type StoredMembership = openraft::StoredMembership<u64, NodeAddr>;
/// Raft's metrics of one replica.
pub type RaftMetrics = openraft::RaftMetrics<u64, NodeAddr>;
/// A storage error reported to openraft.
pub type StorageError = openraft::StorageError<u64>;
