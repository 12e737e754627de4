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
    let nodes: Vec<&NodeRecord> = nodes.filter(|n| n.state != NodeState::Draining).collect();
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
        };
        let placed = place(nodes.iter(), [&existing].into_iter(), 1, 1).expect("placed");
        assert_eq!(placed, vec![Placed { replicas: vec![2] }], "node 1 leads a shard already");
    }
}
