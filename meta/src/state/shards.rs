//! The shard map: which nodes hold each table's shards, which replica is primary, and where each shard's cold-tier
//! manifest is.
//!
//! Every change to a shard's replica set bumps its configuration `epoch`, so a node can refuse requests routed with
//! an older configuration. Creating a native table creates its first shard; dropping the table removes its shards.
//! The manifest pointer is updated by compare-and-set on its version, so two writers racing to publish a manifest
//! cannot silently overwrite each other.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::catalog::TableId;

/// The identifier of a shard, unique for the life of a cluster and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId(pub u64);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a shard's current cold-tier manifest is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPointer {
    /// The manifest's version; each new manifest has a larger one.
    pub version: u64,
    /// The manifest's location in the object store.
    pub location: String,
}

/// One shard of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// The shard's id.
    pub shard_id: ShardId,
    /// The table the shard belongs to.
    pub table_id: TableId,
    /// The nodes holding a replica, in placement order.
    pub replicas: Vec<u64>,
    /// The replica that accepts writes; always one of `replicas`.
    pub primary: u64,
    /// The configuration epoch: 1 at creation, plus one for every change to `replicas` or `primary`.
    pub epoch: u64,
    /// The current cold-tier manifest, `None` until the shard's data first reaches the cold tier.
    pub manifest: Option<ManifestPointer>,
}
