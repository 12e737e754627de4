//! The shard map: which slots each shard of a table owns, which nodes hold its replicas, which of those are in sync,
//! which is primary, and where the shard's cold-tier manifest is (docs/rfcs/0001-cluster-data-path.md).
//!
//! Rows go to shards by a hash of their shard key over a fixed space of [`SLOT_COUNT`] slots; each shard owns a
//! contiguous [`SlotRange`], so a shard can later split at a slot boundary without rehashing a row. Every change to a
//! shard's configuration (replicas, in-sync set, primary) bumps its `epoch`, so a node can refuse requests routed
//! with an older configuration. Creating a native table creates its shards; dropping the table removes them. The
//! manifest pointer is updated by compare-and-set on its version, so two writers racing to publish a manifest cannot
//! silently overwrite each other.

use std::fmt;

use arrow_schema::DataType;
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

/// The number of slots a table's key space is divided into. Fixed for the life of a cluster: a row's slot is part
/// of where it is stored.
pub const SLOT_COUNT: u32 = 4096;

/// A contiguous range of slots, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotRange {
    /// The first slot of the range.
    pub start: u32,
    /// The slot after the last one.
    pub end: u32,
}

impl SlotRange {
    /// Returns the whole slot space.
    pub const fn all() -> Self {
        Self { start: 0, end: SLOT_COUNT }
    }

    /// Returns the range of shard `index` of `count` equal shards: `[index·N/count, (index+1)·N/count)` with `N` the
    /// slot count, so the ranges of `count` shards cover every slot once.
    ///
    /// # Panics
    ///
    /// Panics unless `index < count <= SLOT_COUNT`; the catalog refuses other shard counts before any is placed.
    pub fn of_shard(index: u32, count: u32) -> Self {
        assert!(index < count && count <= SLOT_COUNT, "shard {index} of {count}");
        let bound = |i: u32| (u64::from(i) * u64::from(SLOT_COUNT) / u64::from(count)) as u32;
        Self { start: bound(index), end: bound(index + 1) }
    }

    /// Returns whether `slot` is in the range.
    pub fn contains(&self, slot: u32) -> bool {
        self.start <= slot && slot < self.end
    }
}

impl Default for SlotRange {
    fn default() -> Self {
        Self::all()
    }
}

impl fmt::Display for SlotRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// Returns whether a column of this type can be part of a shard key: the types whose values have one fixed encoding
/// for hashing (integers, floats, booleans, strings, binaries, dates, times, timestamps, decimals). Nested types,
/// intervals and dictionaries cannot.
pub fn is_shard_key_type(data_type: &DataType) -> bool {
    use DataType as T;
    matches!(
        data_type,
        T::Int8
            | T::Int16
            | T::Int32
            | T::Int64
            | T::UInt8
            | T::UInt16
            | T::UInt32
            | T::UInt64
            | T::Float32
            | T::Float64
            | T::Boolean
            | T::Utf8
            | T::LargeUtf8
            | T::Utf8View
            | T::Binary
            | T::LargeBinary
            | T::BinaryView
            | T::Date32
            | T::Date64
            | T::Time32(_)
            | T::Time64(_)
            | T::Timestamp(_, _)
            | T::Decimal128(_, _)
    )
}

/// Where a shard's current cold-tier manifest is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPointer {
    /// The manifest's version; each new manifest has a larger one.
    pub version: u64,
    /// The manifest's location in the object store.
    pub location: String,
    /// The metadata version that recorded the commit of the latest statement spanning shards whose changes this
    /// manifest holds (0: none). Set by the metadata group, never by a writer: a manifest made current by a decision
    /// ([`MetaCommand::DecideTransaction`](crate::MetaCommand::DecideTransaction)) takes the decision's version, a
    /// later one keeps its predecessor's. A reader whose snapshot is older must not read the manifest's files, and
    /// one whose snapshot is as new must.
    #[serde(default)]
    pub txn_version: u64,
}

impl ManifestPointer {
    /// A pointer to the manifest of `version` at `location`, before the metadata group sets its
    /// [`ManifestPointer::txn_version`].
    pub fn new(version: u64, location: String) -> Self {
        Self { version, location, txn_version: 0 }
    }
}

/// A manifest a shard's primary proposed as its part of a statement spanning shards: it becomes the shard's
/// manifest in the same apply that records the statement's commit, or is dropped with its abort. While one is
/// pending, no other manifest commit of the shard is taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingManifest {
    /// The statement's transaction id.
    pub txn: u64,
    /// The proposed manifest.
    pub manifest: ManifestPointer,
    /// The highest chunk number its tiering marks cover.
    pub tiered_through: u64,
}

/// One shard of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// The shard's id.
    pub shard_id: ShardId,
    /// The table the shard belongs to.
    pub table_id: TableId,
    /// The slots whose rows this shard holds (shards of metadata written before slots existed own them all).
    #[serde(default)]
    pub slots: SlotRange,
    /// The nodes holding a replica, in placement order, including replicas still catching up.
    pub replicas: Vec<u64>,
    /// The replicas that have every acknowledged write of the shard: the primary and the backups it replicates to
    /// before it acknowledges. A subset of `replicas`; always holds the primary.
    #[serde(default)]
    pub in_sync: Vec<u64>,
    /// The replica that accepts writes; always one of `in_sync`.
    pub primary: u64,
    /// The configuration epoch: 1 at creation, plus one for every change to `replicas`, `in_sync` or `primary`.
    pub epoch: u64,
    /// The current cold-tier manifest, `None` until the shard's data first reaches the cold tier.
    pub manifest: Option<ManifestPointer>,
    /// For each replica out of sync that was in sync before: the epoch at which it last left the in-sync set. The one
    /// that left last holds every acknowledged write (none is acknowledged without every in-sync copy, and at least
    /// `min_in_sync` of them), so it is the one to lead when every in-sync copy is lost.
    #[serde(default)]
    pub left_in_sync: std::collections::BTreeMap<u64, u64>,
    /// The highest chunk number the shard's cold tier covers (the largest tiering mark of its manifest,
    /// [`MetaCommand::SetShardManifest`](crate::MetaCommand::SetShardManifest)): a primary numbers new chunks above
    /// it, so a shard that lost every copy and starts again empty never numbers a chunk that a mark already covers.
    #[serde(default)]
    pub tiered_through: u64,
    /// A manifest proposed as a part of a statement spanning shards, not decided yet.
    #[serde(default)]
    pub pending: Option<PendingManifest>,
    /// The copy moving between nodes for balance ([`MetaCommand::MoveShardCopy`](crate::MetaCommand::MoveShardCopy)),
    /// if any: over once either node has left the replicas.
    #[serde(default)]
    pub moving: Option<ShardMove>,
    /// The shard's hot data, as its primary last reported it
    /// ([`MetaCommand::ReportShardLoads`](crate::MetaCommand::ReportShardLoads)): what rebalancing weighs.
    #[serde(default)]
    pub load: ShardLoad,
}

/// A copy of a shard moving from one node to another for balance: the copy on `to` is added (out of sync, brought in
/// by the primary's catch-up), and the copy on `from` leaves once the one on `to` is in sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMove {
    /// The node the copy leaves.
    pub from: u64,
    /// The node receiving it.
    pub to: u64,
}

/// A shard's hot (not yet tiered) data, as its primary reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLoad {
    /// Bytes of chunk data.
    pub hot_bytes: u64,
    /// Rows.
    pub hot_rows: u64,
}

impl ShardRecord {
    /// Replaces the configuration and bumps the epoch, recording which replicas leave the in-sync set.
    pub(crate) fn reconfigure(&mut self, replicas: Vec<u64>, in_sync: Vec<u64>, primary: u64) {
        self.epoch += 1;
        for node in &self.in_sync {
            if !in_sync.contains(node) {
                self.left_in_sync.insert(*node, self.epoch);
            }
        }
        self.left_in_sync.retain(|node, _| replicas.contains(node) && !in_sync.contains(node));
        self.replicas = replicas;
        self.in_sync = in_sync;
        self.primary = primary;
        if self.moving.is_some_and(|m| !self.replicas.contains(&m.from) || !self.replicas.contains(&m.to)) {
            self.moving = None;
        }
    }
}
