//! Placement: which nodes hold the replicas of a new table's shards, and which of them is each shard's primary.
//!
//! Placement runs inside the state machine when a CREATE TABLE is applied, from the registry and shard map the state
//! holds, so every replica computes the same answer with no I/O. The rules (docs/rfcs/0001-cluster-data-path.md):
//!
//! - candidates are the registered nodes that are neither down nor draining; when every node is down (as the
//!   registry says: a leader cut off for a while marks its peers down, and its own successor may find itself marked
//!   so), the down ones, since a table must be creatable whenever the metadata group works, and re-replication moves
//!   copies off nodes that stay down; a draining node never gets a new shard;
//! - a shard's primary is the candidate leading the fewest shards, then holding the fewest replicas, then the lowest
//!   id, so primaries, and with them write load, spread evenly;
//! - its backups are the candidates holding the fewest replicas (then lowest id) among the others: never two replicas
//!   of one shard on a node;
//! - with fewer candidates than the replication factor, a shard gets one replica per candidate, and re-replication
//!   adds the missing copies once nodes join.
//!
//! Loads count every existing shard, so successive tables keep the cluster balanced too.
//!
//! Failover ([`fail_over`]) runs in the state machine too, when a node is marked down: each shard it leads gets a new
//! primary among its other in-sync replicas that are not down (the one leading the fewest shards, then the lowest id),
//! and the node leaves every in-sync set, each such shard at a new epoch. An in-sync replica holds every acknowledged
//! change of its shard (the primary acknowledges only what every in-sync copy has durable), so promoting one loses
//! nothing. A shard with no other live in-sync replica keeps its configuration and waits for the node.

use std::collections::BTreeMap;

use super::registry::{NodeRecord, NodeState};
use super::shards::ShardRecord;

/// The replicas of one placed shard: `replicas[0]` is the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placed {
    /// The nodes holding the shard, primary first.
    pub(crate) replicas: Vec<u64>,
}

/// How many primaries and replicas a node holds.
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    primaries: u64,
    replicas: u64,
}

/// Places `shards` shards of `replication` copies each; `None` when no node can hold a shard.
pub(crate) fn place<'a>(
    nodes: impl Iterator<Item = &'a NodeRecord>,
    existing: impl Iterator<Item = &'a ShardRecord>,
    shards: u32,
    replication: u32,
) -> Option<Vec<Placed>> {
    let nodes: Vec<&NodeRecord> = nodes.filter(|n| !n.is_draining()).collect();
    let live = |n: &&&NodeRecord| n.state != NodeState::Down;
    let candidates: Vec<&NodeRecord> =
        if nodes.iter().any(|n| live(&n)) { nodes.into_iter().filter(|n| live(&n)).collect() } else { nodes };
    let mut load: BTreeMap<u64, Load> = candidates.iter().map(|n| (n.node_id, Load::default())).collect();
    if load.is_empty() {
        return None;
    }
    for shard in existing {
        for node_id in &shard.replicas {
            if let Some(l) = load.get_mut(node_id) {
                l.replicas += 1;
                if *node_id == shard.primary {
                    l.primaries += 1;
                }
            }
        }
    }
    // At least the primary, whatever the caller asked (the catalog refuses a factor of 0 before this runs).
    let copies = (replication as usize).clamp(1, load.len());
    let mut placed = Vec::with_capacity(shards as usize);
    for _ in 0..shards {
        let primary = *load
            .iter()
            .min_by_key(|(id, l)| (l.primaries, l.replicas, **id))
            .map(|(id, _)| id)
            .expect("candidates are not empty");
        let mut backups: Vec<(u64, u64)> =
            load.iter().filter(|(id, _)| **id != primary).map(|(id, l)| (l.replicas, *id)).collect();
        backups.sort_unstable();
        let mut replicas = vec![primary];
        replicas.extend(backups.into_iter().take(copies - 1).map(|(_, id)| id));
        for node_id in &replicas {
            let l = load.get_mut(node_id).expect("a candidate");
            l.replicas += 1;
            if *node_id == primary {
                l.primaries += 1;
            }
        }
        placed.push(Placed { replicas });
    }
    Some(placed)
}

/// The configurations failover gives the shards `down` is in sync for (see the module docs): for each changed shard,
/// its new in-sync set and primary. `nodes` is the registry, with `down` already marked down.
pub(crate) fn fail_over<'a>(
    nodes: &BTreeMap<u64, NodeRecord>,
    shards: impl Iterator<Item = &'a ShardRecord> + Clone,
    down: u64,
    lost: bool,
) -> Vec<(super::ShardId, Vec<u64>, u64)> {
    let live = |id: &u64| *id != down && nodes.get(id).is_some_and(|n| n.state != NodeState::Down);
    let mut primaries: BTreeMap<u64, u64> = BTreeMap::new();
    for shard in shards.clone() {
        *primaries.entry(shard.primary).or_default() += 1;
    }
    let mut changes = Vec::new();
    for shard in shards {
        if !shard.in_sync.contains(&down) {
            continue;
        }
        let in_sync: Vec<u64> = shard.in_sync.iter().copied().filter(|n| *n != down).collect();
        if in_sync.is_empty() {
            // Its only in-sync copy. A node down may come back with it: the shard waits. A copy lost for good leaves
            // the replica that left the in-sync set last (live ones first among those that left together).
            let stale = shard
                .left_in_sync
                .iter()
                .filter(|(n, _)| **n != down && shard.replicas.contains(n))
                .max_by_key(|(n, epoch)| (**epoch, live(n), std::cmp::Reverse(**n)));
            if let (true, Some((next, _))) = (lost, stale) {
                changes.push((shard.shard_id, vec![*next], *next));
            }
            continue;
        }
        let primary = if shard.primary == down {
            let Some(new) =
                in_sync.iter().copied().filter(live).min_by_key(|n| (primaries.get(n).copied().unwrap_or(0), *n))
            else {
                continue;
            };
            *primaries.entry(new).or_default() += 1;
            new
        } else {
            shard.primary
        };
        changes.push((shard.shard_id, in_sync, primary));
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::registry::NodeRole;

    fn node(node_id: u64, state: NodeState) -> NodeRecord {
        NodeRecord {
            node_id,
            grpc_addr: format!("10.0.0.{node_id}:50052"),
            flight_addr: String::new(),
            pg_addr: String::new(),
            role: NodeRole::Voter,
            state,
            last_heartbeat: 0,
            draining: false,
        }
    }

    fn counts(placed: &[Placed]) -> BTreeMap<u64, (u64, u64)> {
        let mut out = BTreeMap::new();
        for p in placed {
            for (i, n) in p.replicas.iter().enumerate() {
                let e: &mut (u64, u64) = out.entry(*n).or_default();
                e.1 += 1;
                if i == 0 {
                    e.0 += 1;
                }
            }
        }
        out
    }

    #[test]
    fn primaries_and_replicas_spread_evenly_and_never_twice_on_a_node() {
        let nodes: Vec<_> = (1..=3).map(|i| node(i, NodeState::Serving)).collect();
        let placed = place(nodes.iter(), std::iter::empty(), 6, 2).expect("placed");
        assert_eq!(placed.len(), 6);
        for p in &placed {
            assert_eq!(p.replicas.len(), 2);
            assert_ne!(p.replicas[0], p.replicas[1], "{p:?}");
        }
        // Six shards of two copies on three nodes: two primaries and four replicas each.
        assert!(counts(&placed).values().all(|c| *c == (2, 4)), "{:?}", counts(&placed));
    }

    #[test]
    fn down_and_draining_nodes_are_passed_over_and_few_nodes_cap_the_copies() {
        let nodes = [
            node(1, NodeState::Serving),
            node(2, NodeState::Down),
            node(3, NodeState::Draining),
            node(4, NodeState::Joining),
        ];
        let placed = place(nodes.iter(), std::iter::empty(), 4, 3).expect("placed");
        for p in &placed {
            let mut r = p.replicas.clone();
            r.sort_unstable();
            assert_eq!(r, vec![1, 4], "two candidates, so two copies: {p:?}");
        }
        assert_eq!(counts(&placed), BTreeMap::from([(1, (2, 4)), (4, (2, 4))]));
        // Every node down: the down ones rather than no table; draining ones never.
        let down = [node(1, NodeState::Down), node(2, NodeState::Draining)];
        assert_eq!(place(down.iter(), std::iter::empty(), 1, 2), Some(vec![Placed { replicas: vec![1] }]));
        let draining = [node(2, NodeState::Draining)];
        assert_eq!(place(draining.iter(), std::iter::empty(), 1, 1), None);
    }

    #[test]
    fn existing_shards_count_towards_the_load() {
        use crate::catalog::TableId;
        use crate::state::shards::{ShardId, SlotRange};
        let nodes: Vec<_> = (1..=2).map(|i| node(i, NodeState::Serving)).collect();
        let existing = ShardRecord {
            shard_id: ShardId(1),
            table_id: TableId(1),
            slots: SlotRange::all(),
            replicas: vec![1],
            in_sync: vec![1],
            primary: 1,
            epoch: 1,
            manifest: None,
            left_in_sync: Default::default(),
            tiered_through: 0,
            pending: None,
            moving: None,
            load: Default::default(),
        };
        let placed = place(nodes.iter(), [&existing].into_iter(), 1, 1).expect("placed");
        assert_eq!(placed, vec![Placed { replicas: vec![2] }], "node 1 leads a shard already");
    }
}
