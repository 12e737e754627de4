//! Invariants of the shard map (docs/rfcs/0001-cluster-data-path.md), checked on every replica's applied metadata
//! while the node workload runs and once more at its end. They are PacificA's configuration invariants (Lin et al.,
//! "PacificA: Replication in Log-Based Distributed Storage Systems", 2008, section 3) as Quiver states them:
//!
//! - a native table's shards own disjoint slot ranges that cover the slot space, as many as the table declares;
//! - a shard's replicas are distinct registered nodes; its primary is in its in-sync set, a subset of its replicas;
//! - a shard's configuration epoch never goes back on a replica (an incarnation of a node: a node that restarts
//!   replays its metadata from the start and is a new observer);
//! - a copy moving for balance moves between two distinct replicas of its shard, the new one never in sync before
//!   the old one is still there to serve (no shard has fewer in-sync copies than outside a move).

use std::collections::{BTreeMap, BTreeSet};

use quiver_meta::{MetaState, SLOT_COUNT, ShardId};

/// Remembers the epochs each observer has seen, to check that they only grow.
#[derive(Debug, Default)]
pub(crate) struct ShardMapChecker {
    epochs: BTreeMap<(usize, ShardId), u64>,
    /// How many states were checked.
    pub(crate) observed: u64,
    /// The moves for balance seen, by shard and nodes.
    pub(crate) moves: BTreeSet<(ShardId, u64, u64)>,
}

impl ShardMapChecker {
    /// Checks `state`, applied by the observer known as `observer` (one per node incarnation).
    pub(crate) fn observe(&mut self, observer: usize, state: &MetaState) -> Result<(), String> {
        check_state(state)?;
        for shard in state.shards() {
            let seen = self.epochs.entry((observer, shard.shard_id)).or_insert(shard.epoch);
            if shard.epoch < *seen {
                return Err(format!(
                    "shard {}: the epoch went back from {} to {} on one replica",
                    shard.shard_id, *seen, shard.epoch
                ));
            }
            *seen = shard.epoch;
            if let Some(m) = shard.moving {
                self.moves.insert((shard.shard_id, m.from, m.to));
            }
        }
        self.observed += 1;
        Ok(())
    }
}

/// Checks the invariants that hold within one applied state.
pub(crate) fn check_state(state: &MetaState) -> Result<(), String> {
    let tables: BTreeMap<_, _> = state.catalog().tables().map(|t| (t.id, t)).collect();
    let mut by_table: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for shard in state.shards() {
        let id = shard.shard_id;
        let Some(table) = tables.get(&shard.table_id) else {
            return Err(format!("shard {id} belongs to table {}, which the catalog does not have", shard.table_id));
        };
        let replicas: BTreeSet<u64> = shard.replicas.iter().copied().collect();
        if replicas.is_empty() || replicas.len() != shard.replicas.len() {
            return Err(format!(
                "shard {id} of {}: replicas {:?} are empty or repeat a node",
                table.name, shard.replicas
            ));
        }
        if let Some(stranger) = replicas.iter().find(|n| state.node(**n).is_none()) {
            return Err(format!("shard {id} of {}: replica {stranger} is not a registered node", table.name));
        }
        if !shard.in_sync.iter().all(|n| replicas.contains(n)) || !shard.in_sync.contains(&shard.primary) {
            return Err(format!(
                "shard {id} of {}: primary {} and in-sync {:?} must lie within replicas {:?}",
                table.name, shard.primary, shard.in_sync, shard.replicas
            ));
        }
        if let Some(m) = shard.moving
            && (m.from == m.to || !replicas.contains(&m.from) || !replicas.contains(&m.to))
        {
            return Err(format!(
                "shard {id} of {}: a copy moves from node {} to node {}, not two of its replicas {:?}",
                table.name, m.from, m.to, shard.replicas
            ));
        }
        if shard.epoch == 0 {
            return Err(format!("shard {id} of {}: epoch 0", table.name));
        }
        by_table.entry(shard.table_id).or_default().push(shard.slots);
    }
    for (table_id, table) in &tables {
        let mut ranges = by_table.remove(table_id).unwrap_or_default();
        if !table.is_native() {
            if !ranges.is_empty() {
                return Err(format!("external table {} has shards", table.name));
            }
            continue;
        }
        ranges.sort_unstable();
        if ranges.len() != table.sharding.shards as usize {
            return Err(format!(
                "table {} declares {} shards, has {}",
                table.name,
                table.sharding.shards,
                ranges.len()
            ));
        }
        let mut next = 0;
        for r in &ranges {
            if r.start != next || r.end <= r.start {
                return Err(format!("table {}: slot ranges {ranges:?} do not cover the slot space once", table.name));
            }
            next = r.end;
        }
        if next != SLOT_COUNT {
            return Err(format!("table {}: slot ranges {ranges:?} stop at {next}", table.name));
        }
    }
    Ok(())
}
