//! Repair: the configuration changes that bring every shard back to its table's number of copies on nodes that are
//! up and not draining (docs/rfcs/0001-cluster-data-path.md, "Failure detection, failover, re-replication").
//!
//! The metadata leader plans them each round from the state it applied ([`plan`]) and proposes each as a
//! compare-and-set on the shard's epoch, so a plan made from a state that moved meanwhile changes nothing. A shard
//! changes in two steps, never losing a copy before its replacement holds the data:
//!
//! 1. **Add.** A shard with fewer copies than its table asks for, not counting those on nodes *gone* (down for longer
//!    than `replica_down_timeout`, or removed) or draining, gets a replica on the serving node holding the fewest
//!    replicas, in `replicas` but not in `in_sync`. Its primary's catch-up copies the committed chunks to it and admits
//!    it to the in-sync set.
//! 2. **Drop.** Once the copies on nodes neither gone nor draining that are in sync number as many as the table asks
//!    for, the replicas on gone or draining nodes leave the shard; a primary among them hands over to the in-sync
//!    copy leading the fewest shards. A deposed primary's later requests carry the old epoch and are refused.
//!
//! Shards with copies gone or missing come before shards that only leave a draining node. A node gets at most
//! [`CATCHING_UP_MAX`] replicas catching up at once, so a new node is filled a few shards at a time. A shard whose
//! primary is down (its only in-sync copy: failover moved every other) is left alone until it returns, since nothing
//! could be copied from it. A shard whose table asks for more copies than there are eligible nodes keeps what it has;
//! a drain that needs a node the cluster does not have waits (the node's replica count shows it).

use std::collections::{BTreeMap, BTreeSet};

use super::registry::NodeState;
use super::shards::{ShardId, ShardRecord};
use super::{MetaCommand, MetaState};

/// The most replicas a node receives at once (in a shard's replicas, not yet in sync).
pub(crate) const CATCHING_UP_MAX: usize = 4;

/// Why a shard's configuration changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RepairReason {
    /// A new replica on `node`, to catch up.
    Add {
        /// The node receiving the copy.
        node: u64,
    },
    /// The replicas on `nodes` (gone or draining) leave the shard; its copies elsewhere are in sync.
    Drop {
        /// The nodes leaving the shard.
        nodes: Vec<u64>,
    },
}

/// One planned configuration change of a shard.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Repair {
    /// The shard.
    pub(crate) shard_id: ShardId,
    /// Why.
    pub(crate) reason: RepairReason,
    /// The command that makes it, a compare-and-set on the shard's epoch.
    pub(crate) command: MetaCommand,
}

/// Plans the repairs of every shard of `state`, `gone` being the registered nodes whose copies count as lost (down
/// for longer than `replica_down_timeout`, or removed from the cluster). At most one change per shard.
pub(crate) fn plan(state: &MetaState, gone: &BTreeSet<u64>) -> Vec<Repair> {
    let wanted: BTreeMap<_, u32> = state.catalog().tables().map(|t| (t.id, t.sharding.replicas.max(1))).collect();
    let eligible =
        |n: &u64| !gone.contains(n) && state.node(*n).is_some_and(|r| r.state != NodeState::Down && !r.is_draining());
    let leaving = |n: &u64| gone.contains(n) || state.node(*n).is_none_or(super::NodeRecord::is_draining);
    let mut replicas: BTreeMap<u64, usize> = state.nodes().map(|n| (n.node_id, 0)).collect();
    let mut catching_up: BTreeMap<u64, usize> = BTreeMap::new();
    let mut primaries: BTreeMap<u64, usize> = BTreeMap::new();
    for shard in state.shards() {
        *primaries.entry(shard.primary).or_default() += 1;
        for n in &shard.replicas {
            *replicas.entry(*n).or_default() += 1;
            if !shard.in_sync.contains(n) {
                *catching_up.entry(*n).or_default() += 1;
            }
        }
    }
    // Recovery first: shards whose copies are gone or missing, then those that only leave draining nodes.
    let mut order: Vec<(bool, &ShardRecord)> = state
        .shards()
        .map(|s| {
            let want = wanted.get(&s.table_id).copied().unwrap_or(1) as usize;
            let alive = s.replicas.iter().filter(|n| !gone.contains(n)).count();
            (alive >= want, s)
        })
        .collect();
    order.sort_by_key(|(drain_only, s)| (*drain_only, s.shard_id));
    let mut plans = Vec::new();
    for (_, shard) in order {
        let want = wanted.get(&shard.table_id).copied().unwrap_or(1) as usize;
        let keep: Vec<u64> = shard.replicas.iter().copied().filter(|n| !leaving(n)).collect();
        if keep.len() < want {
            let primary_down = state.node(shard.primary).is_none_or(|n| n.state == NodeState::Down);
            if primary_down {
                continue;
            }
            let candidate = replicas
                .iter()
                .filter(|(n, _)| eligible(n) && !shard.replicas.contains(n))
                .filter(|(n, _)| state.node(**n).is_some_and(|r| r.state == NodeState::Serving))
                .filter(|(n, _)| catching_up.get(n).copied().unwrap_or(0) < CATCHING_UP_MAX)
                .min_by_key(|(n, count)| (**count, **n))
                .map(|(n, _)| *n);
            let Some(node) = candidate else { continue };
            *replicas.entry(node).or_default() += 1;
            *catching_up.entry(node).or_default() += 1;
            let mut new_replicas = shard.replicas.clone();
            new_replicas.push(node);
            plans.push(Repair {
                shard_id: shard.shard_id,
                reason: RepairReason::Add { node },
                command: MetaCommand::SetShardReplicas {
                    shard_id: shard.shard_id,
                    replicas: new_replicas,
                    in_sync: shard.in_sync.clone(),
                    primary: shard.primary,
                    expected_epoch: Some(shard.epoch),
                },
            });
            continue;
        }
        let dropped: Vec<u64> = shard.replicas.iter().copied().filter(|n| leaving(n)).collect();
        if dropped.is_empty() {
            continue;
        }
        let in_sync: Vec<u64> = shard.in_sync.iter().copied().filter(|n| keep.contains(n)).collect();
        if in_sync.len() < want {
            // The new copies are still catching up.
            continue;
        }
        let primary_serving = state.node(shard.primary).is_some_and(|n| n.state == NodeState::Serving);
        if dropped.contains(&shard.primary) && primary_serving && !gone.contains(&shard.primary) {
            // A primary still serving hands the shard over itself, with its writes held ([`hand_over`]), so that no
            // write of its is in flight when it stops leading.
            continue;
        }
        let primary = if dropped.contains(&shard.primary) {
            let Some(next) = in_sync
                .iter()
                .copied()
                .filter(|n| state.node(*n).is_some_and(|r| r.state != NodeState::Down))
                .min_by_key(|n| (primaries.get(n).copied().unwrap_or(0), *n))
            else {
                continue;
            };
            *primaries.entry(next).or_default() += 1;
            next
        } else {
            shard.primary
        };
        plans.push(Repair {
            shard_id: shard.shard_id,
            reason: RepairReason::Drop { nodes: dropped },
            command: MetaCommand::SetShardReplicas {
                shard_id: shard.shard_id,
                replicas: keep,
                in_sync,
                primary,
                expected_epoch: Some(shard.epoch),
            },
        });
    }
    plans
}

/// The change by which `node`, leading `shard_id` and leaving it (draining, or the source of a move whose new copy is
/// in sync), hands the shard over and drops its copy: the in-sync copy elsewhere leading the fewest shards (the
/// move's new copy, for a move) becomes primary. `None` when the node does not lead the shard, does not leave it, or
/// too few other copies are in sync. The primary proposes it itself with the shard's writes held, so that none of
/// its writes is in flight at the old configuration.
pub fn hand_over(state: &MetaState, shard_id: ShardId, node: u64) -> Option<MetaCommand> {
    let shard = state.shard(shard_id).filter(|s| s.primary == node)?;
    let draining = state.node(node).is_some_and(super::NodeRecord::is_draining);
    let moved_to = shard.moving.filter(|m| m.from == node && shard.in_sync.contains(&m.to)).map(|m| m.to);
    if !draining && moved_to.is_none() {
        return None;
    }
    let want = state.catalog().tables().find(|t| t.id == shard.table_id).map_or(1, |t| t.sharding.replicas.max(1));
    let in_sync: Vec<u64> = shard.in_sync.iter().copied().filter(|n| *n != node).collect();
    let serving = |n: &u64| state.node(*n).is_some_and(|r| r.state == NodeState::Serving && !r.is_draining());
    if in_sync.iter().filter(|n| serving(n)).count() < want as usize {
        return None;
    }
    let leads = |n: u64| state.shards().filter(|s| s.primary == n).count();
    let primary = match moved_to.filter(serving) {
        Some(to) => to,
        None => in_sync.iter().copied().filter(serving).min_by_key(|n| (leads(*n), *n))?,
    };
    Some(MetaCommand::SetShardReplicas {
        shard_id,
        replicas: shard.replicas.iter().copied().filter(|n| *n != node).collect(),
        in_sync,
        primary,
        expected_epoch: Some(shard.epoch),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::catalog::{CatalogCommand, ColumnDef, Sharding, TableKind};
    use crate::state::NodeRole;
    use arrow_schema::DataType;

    pub(in crate::state) fn cluster(nodes: u64) -> MetaState {
        let mut s = MetaState::new();
        for node_id in 1..=nodes {
            add_node(&mut s, node_id);
        }
        s
    }

    pub(in crate::state) fn add_node(s: &mut MetaState, node_id: u64) {
        let register = MetaCommand::RegisterNode {
            node_id,
            grpc_addr: format!("10.0.0.{node_id}:50052"),
            flight_addr: String::new(),
            pg_addr: String::new(),
            role: NodeRole::Voter,
        };
        s.apply(register).outcome.expect("registered");
        s.apply(MetaCommand::UpdateNodeState { node_id, state: NodeState::Serving }).outcome.expect("serving");
    }

    pub(in crate::state) fn create(s: &mut MetaState, name: &str, shards: u32, replicas: u32) {
        let command = CatalogCommand::CreateTable {
            name: name.into(),
            columns: vec![ColumnDef { name: "id".into(), data_type: DataType::Int64, nullable: false }],
            primary_key: vec!["id".into()],
            kind: TableKind::Native,
            options: Default::default(),
            sharding: Sharding { shards, replicas, shard_key: vec!["id".into()] },
            if_not_exists: false,
        };
        s.apply(MetaCommand::Catalog { command }).outcome.expect("created");
    }

    /// Applies every planned change; returns the reasons.
    fn apply(s: &mut MetaState, gone: &BTreeSet<u64>) -> Vec<RepairReason> {
        let plans = plan(s, gone);
        for p in &plans {
            s.apply(p.command.clone()).outcome.expect("a plan applies to the state it was made from");
        }
        plans.into_iter().map(|p| p.reason).collect()
    }

    /// What a primary's catch-up does: every replica of every shard in sync; then what a primary leaving its shard
    /// does: it hands it over.
    pub(in crate::state) fn catch_up_all(s: &mut MetaState) {
        admit_all(s);
        let led: Vec<(ShardId, u64)> = s.shards().map(|r| (r.shard_id, r.primary)).collect();
        for (shard, primary) in led {
            if let Some(command) = hand_over(s, shard, primary) {
                s.apply(command).outcome.expect("handed over");
            }
        }
    }

    pub(in crate::state) fn admit_all(s: &mut MetaState) {
        let shards: Vec<ShardRecord> = s.shards().cloned().collect();
        for shard in shards {
            if shard.in_sync.len() < shard.replicas.len() {
                let admit = MetaCommand::SetShardReplicas {
                    shard_id: shard.shard_id,
                    replicas: shard.replicas.clone(),
                    in_sync: shard.replicas.clone(),
                    primary: shard.primary,
                    expected_epoch: Some(shard.epoch),
                };
                s.apply(admit).outcome.expect("admitted");
            }
        }
    }

    pub(in crate::state) fn holders(s: &MetaState) -> Vec<Vec<u64>> {
        s.shards()
            .map(|r| {
                let mut n = r.replicas.clone();
                n.sort_unstable();
                n
            })
            .collect()
    }

    #[test]
    fn a_table_created_on_fewer_nodes_than_its_copies_gets_them_as_nodes_join() {
        let mut s = cluster(1);
        create(&mut s, "t", 2, 2);
        assert_eq!(holders(&s), vec![vec![1], vec![1]]);
        assert!(plan(&s, &BTreeSet::new()).is_empty(), "no node to copy to");
        add_node(&mut s, 2);
        assert_eq!(apply(&mut s, &BTreeSet::new()), vec![RepairReason::Add { node: 2 }; 2]);
        assert!(plan(&s, &BTreeSet::new()).is_empty(), "the new copies are catching up: nothing more to do");
        catch_up_all(&mut s);
        assert_eq!(holders(&s), vec![vec![1, 2], vec![1, 2]]);
        assert!(plan(&s, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn a_gone_node_is_replaced_before_its_copies_are_dropped_and_a_down_primary_waits() {
        let mut s = cluster(4);
        create(&mut s, "t", 4, 2);
        let on_3: Vec<ShardId> = s.shards().filter(|r| r.replicas.contains(&3)).map(|r| r.shard_id).collect();
        assert!(!on_3.is_empty());
        s.apply(MetaCommand::UpdateNodeState { node_id: 3, state: NodeState::Down }).outcome.expect("down");
        // Down, not gone: nothing moves (it may come back and catch up).
        assert!(plan(&s, &BTreeSet::new()).is_empty());
        let gone = BTreeSet::from([3]);
        let added = apply(&mut s, &gone);
        assert_eq!(added.len(), on_3.len(), "{added:?}");
        for shard in &on_3 {
            let r = s.shard(*shard).expect("shard");
            assert_eq!(r.replicas.len(), 3, "added first, nothing dropped: {r:?}");
            assert_ne!(r.primary, 3, "failover moved the primary");
        }
        catch_up_all(&mut s);
        let dropped = apply(&mut s, &gone);
        assert!(dropped.iter().all(|r| *r == RepairReason::Drop { nodes: vec![3] }), "{dropped:?}");
        assert!(s.shards().all(|r| !r.replicas.contains(&3) && r.replicas.len() == 2));
        assert!(plan(&s, &gone).is_empty());

        // A shard whose only in-sync copy is down has nothing to copy from.
        let mut s = cluster(3);
        create(&mut s, "u", 1, 1);
        let primary = s.shards().next().expect("shard").primary;
        s.apply(MetaCommand::UpdateNodeState { node_id: primary, state: NodeState::Down }).outcome.expect("down");
        assert!(plan(&s, &BTreeSet::from([primary])).is_empty());
    }

    #[test]
    fn a_drain_moves_every_replica_primaries_included_and_waits_for_a_node_it_lacks() {
        let mut s = cluster(3);
        create(&mut s, "t", 6, 2);
        s.apply(MetaCommand::SetDraining { node_id: 1, draining: true }).outcome.expect("draining");
        let none = BTreeSet::new();
        let mut rounds = 0;
        while s.shards().any(|r| r.replicas.contains(&1)) {
            rounds += 1;
            assert!(rounds < 10, "the drain does not finish: {:?}", holders(&s));
            apply(&mut s, &none);
            catch_up_all(&mut s);
        }
        assert!(s.shards().all(|r| r.replicas.len() == 2 && r.in_sync.len() == 2 && r.primary != 1));
        // Four copies added to each of two nodes at most per round: 4 shards held node 1, and each got its copy.
        let s2 = s.shards().filter(|r| r.replicas.contains(&2)).count();
        assert_eq!(s2, 6, "two nodes left: every shard on both");

        // Three copies on three nodes: no node to move to, so the drain waits and nothing is lost.
        let mut s = cluster(3);
        create(&mut s, "t", 2, 3);
        s.apply(MetaCommand::SetDraining { node_id: 2, draining: true }).outcome.expect("draining");
        assert!(plan(&s, &none).is_empty());
        // A fourth node lets it finish.
        add_node(&mut s, 4);
        assert_eq!(apply(&mut s, &none), vec![RepairReason::Add { node: 4 }; 2]);
        // The shard node 2 leads it hands over itself (catch_up_all does that); the leader drops its other copy.
        catch_up_all(&mut s);
        assert_eq!(apply(&mut s, &none), vec![RepairReason::Drop { nodes: vec![2] }]);
        assert_eq!(holders(&s), vec![vec![1, 3, 4], vec![1, 3, 4]]);
    }

    #[test]
    fn a_new_node_takes_at_most_a_few_catching_up_replicas_at_once() {
        let mut s = cluster(1);
        create(&mut s, "t", 10, 2);
        add_node(&mut s, 2);
        assert_eq!(apply(&mut s, &BTreeSet::new()).len(), CATCHING_UP_MAX);
        assert!(plan(&s, &BTreeSet::new()).is_empty(), "node 2 is busy");
        catch_up_all(&mut s);
        assert_eq!(apply(&mut s, &BTreeSet::new()).len(), CATCHING_UP_MAX);
    }

    #[test]
    fn a_plan_made_from_a_state_that_moved_changes_nothing() {
        let mut s = cluster(1);
        create(&mut s, "t", 1, 2);
        add_node(&mut s, 2);
        add_node(&mut s, 3);
        let plans = plan(&s, &BTreeSet::new());
        assert_eq!(plans.len(), 1);
        // Meanwhile the shard moved (another leader's repair, say).
        let shard = s.shards().next().expect("shard").clone();
        let elsewhere = MetaCommand::SetShardReplicas {
            shard_id: shard.shard_id,
            replicas: vec![1, 3],
            in_sync: vec![1],
            primary: 1,
            expected_epoch: Some(shard.epoch),
        };
        s.apply(elsewhere).outcome.expect("moved");
        let stale = s.apply(plans[0].command.clone());
        assert!(stale.outcome.is_err(), "compare-and-set on the epoch: {stale:?}");
        assert_eq!(s.shards().next().expect("shard").replicas, vec![1, 3]);
    }
}
