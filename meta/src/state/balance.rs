//! Balance: the shard copies that move so that every node holds about as much hot data
//! (docs/rfcs/0002-distributed-execution-and-rebalancing.md).
//!
//! A node's load is the hot bytes of every copy it holds, as each shard's primary reports them
//! ([`MetaCommand::ReportShardLoads`]), plus [`COPY_WEIGHT`] per copy so that empty shards spread too. The metadata
//! leader plans each round from the state it applied, after repair ([`super::repair`]): while any shard lacks a copy,
//! has one on a gone or draining node, or has one catching up outside a move, no move starts (lost-copy recovery
//! comes first). A move follows the add, catch up, switch, remove protocol of re-replication:
//!
//! 1. **Start** ([`MetaCommand::MoveShardCopy`]): the least loaded node gets a copy of a shard of the most loaded
//!    one, out of sync; the shard's primary catches it up and admits it to the in-sync set.
//! 2. **Finish**: once the new copy is in sync, the old one leaves the shard (a primary among them hands over to the
//!    new copy), so the shard never has fewer in-sync copies than its table asks for.
//!
//! Moves start only while some node's load is outside `tolerance` of the mean, and each must shrink the gap between
//! its two nodes (the copy weighs less than the gap), so the sum of squared loads falls with every move and the plan
//! never sends a copy back and forth; loads drifting inside the tolerance move nothing. At most `moves_max` moves
//! run at once, and a node receives at most [`CATCHING_UP_MAX`] copies at once.

use std::collections::{BTreeMap, BTreeSet};

use super::registry::NodeState;
use super::repair::CATCHING_UP_MAX;
use super::shards::{ShardId, ShardRecord};
use super::{MetaCommand, MetaState};

/// What a copy weighs besides its bytes: its files, its catch-up, its routing. So that empty shards spread too.
pub(crate) const COPY_WEIGHT: u64 = 1 << 20;

/// How the planner balances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BalanceSettings {
    /// Whether moves start on their own (finishing a move under way does not depend on it).
    pub(crate) automatic: bool,
    /// How far from the mean a node's load may be, as a fraction of the mean, before moves start.
    pub(crate) tolerance: f64,
    /// The most moves under way at once.
    pub(crate) moves_max: usize,
}

/// One planned step of a move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BalanceStep {
    /// A copy starts moving from `from` to `to`; it weighs `load`.
    Start {
        /// The node the copy leaves.
        from: u64,
        /// The node receiving it.
        to: u64,
        /// Its weight: hot bytes plus [`COPY_WEIGHT`].
        load: u64,
    },
    /// The copy on `to` is in sync: the one on `from` leaves.
    Finish {
        /// The node the copy leaves.
        from: u64,
        /// The node holding it now.
        to: u64,
    },
    /// The shard has more copies, all in sync, than its table asks for: the one on `node` leaves.
    Trim {
        /// The node whose copy leaves.
        node: u64,
    },
}

/// One planned change of a shard.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Balance {
    /// The shard.
    pub(crate) shard_id: ShardId,
    /// Which step.
    pub(crate) step: BalanceStep,
    /// The command that makes it, a compare-and-set on the shard's epoch.
    pub(crate) command: MetaCommand,
}

/// The weight of one copy of `shard`.
fn weight(shard: &ShardRecord) -> u64 {
    shard.load.hot_bytes.saturating_add(COPY_WEIGHT)
}

/// The nodes moves may involve: serving, not draining, not gone.
fn eligible(state: &MetaState, gone: &BTreeSet<u64>) -> BTreeSet<u64> {
    state
        .nodes()
        .filter(|n| n.state == NodeState::Serving && !n.is_draining() && !gone.contains(&n.node_id))
        .map(|n| n.node_id)
        .collect()
}

/// Returns each eligible node's load, counting a copy under way as already moved.
pub(crate) fn loads(state: &MetaState, gone: &BTreeSet<u64>) -> BTreeMap<u64, u64> {
    let nodes = eligible(state, gone);
    let mut loads: BTreeMap<u64, u64> = nodes.iter().map(|n| (*n, 0)).collect();
    for shard in state.shards() {
        for n in &shard.replicas {
            if shard.moving.is_some_and(|m| m.from == *n) {
                continue;
            }
            if let Some(l) = loads.get_mut(n) {
                *l = l.saturating_add(weight(shard));
            }
        }
    }
    loads
}

/// Plans the steps of this round: the moves under way whose new copy is in sync finish; new moves start when
/// `settings` allow, nothing needs repair, and the loads are out of balance.
pub(crate) fn plan(state: &MetaState, gone: &BTreeSet<u64>, settings: BalanceSettings) -> Vec<Balance> {
    let wanted: BTreeMap<_, usize> =
        state.catalog().tables().map(|t| (t.id, t.sharding.replicas.max(1) as usize)).collect();
    let want = |s: &ShardRecord| wanted.get(&s.table_id).copied().unwrap_or(1);
    let nodes = eligible(state, gone);
    let mut steps = Vec::new();
    let copies = loads(state, gone);
    for shard in state.shards() {
        let Some(m) = shard.moving else {
            // More copies than the table asks for (a drain cancelled between its add and its drop), all in sync on
            // nodes that stay: the copy on the most loaded node leaves.
            let settled = shard.replicas.iter().all(|n| nodes.contains(n) && shard.in_sync.contains(n));
            if settled && shard.replicas.len() > want(shard) {
                // Never the primary's: deposing it here would fail its writes in flight.
                let Some(node) = shard
                    .replicas
                    .iter()
                    .copied()
                    .filter(|n| *n != shard.primary)
                    .max_by_key(|n| (copies.get(n).copied(), *n))
                else {
                    continue;
                };
                let in_sync: Vec<u64> = shard.in_sync.iter().copied().filter(|n| *n != node).collect();
                let Some(&first) = in_sync.first() else { continue };
                let primary = if shard.primary == node { first } else { shard.primary };
                steps.push(Balance {
                    shard_id: shard.shard_id,
                    step: BalanceStep::Trim { node },
                    command: MetaCommand::SetShardReplicas {
                        shard_id: shard.shard_id,
                        replicas: shard.replicas.iter().copied().filter(|n| *n != node).collect(),
                        in_sync,
                        primary,
                        expected_epoch: Some(shard.epoch),
                    },
                });
            }
            continue;
        };
        let in_sync: Vec<u64> = shard.in_sync.iter().copied().filter(|n| *n != m.from).collect();
        if !shard.in_sync.contains(&m.to) || in_sync.len() < want(shard) {
            continue;
        }
        let primary = if shard.primary == m.from {
            // A primary still serving hands over itself, its writes held (`repair::hand_over`).
            if !up(state, gone, m.to) || up(state, gone, m.from) {
                continue;
            }
            m.to
        } else {
            shard.primary
        };
        steps.push(Balance {
            shard_id: shard.shard_id,
            step: BalanceStep::Finish { from: m.from, to: m.to },
            command: MetaCommand::SetShardReplicas {
                shard_id: shard.shard_id,
                replicas: shard.replicas.iter().copied().filter(|n| *n != m.from).collect(),
                in_sync,
                primary,
                expected_epoch: Some(shard.epoch),
            },
        });
    }
    if !settings.automatic {
        return steps;
    }
    let running = state.shards().filter(|s| s.moving.is_some()).count();
    let room = settings.moves_max.saturating_sub(running);
    steps.extend(starts(state, gone, settings.tolerance, room));
    steps
}

/// Plans up to `count` new moves from the loads of `state`, each applied to the loads before the next is chosen.
/// None while the cluster needs repair. Also the whole plan `quiver admin rebalance --dry-run` shows (with a large
/// `count`).
pub(crate) fn starts(state: &MetaState, gone: &BTreeSet<u64>, tolerance: f64, count: usize) -> Vec<Balance> {
    let wanted: BTreeMap<_, usize> =
        state.catalog().tables().map(|t| (t.id, t.sharding.replicas.max(1) as usize)).collect();
    let want = |s: &ShardRecord| wanted.get(&s.table_id).copied().unwrap_or(1);
    let nodes = eligible(state, gone);
    // Recovery first: a copy missing, on a node that is leaving, or catching up outside a move.
    let healthy = state.shards().all(|s| {
        let moving_to = s.moving.map(|m| m.to);
        s.replicas.iter().all(|n| nodes.contains(n) || s.moving.is_some_and(|m| m.from == *n))
            && s.replicas.iter().all(|n| s.in_sync.contains(n) || Some(*n) == moving_to)
            && s.replicas.len() - usize::from(s.moving.is_some()) >= want(s)
    });
    if !healthy || nodes.len() < 2 || count == 0 {
        return Vec::new();
    }
    let mut loads = loads(state, gone);
    let mean = loads.values().map(|l| *l as f64).sum::<f64>() / loads.len() as f64;
    let (high, low) = (mean * (1.0 + tolerance), mean * (1.0 - tolerance));
    let closeness = ((mean * tolerance / 4.0) as u64).max(1);
    let mut catching_up: BTreeMap<u64, usize> = BTreeMap::new();
    for s in state.shards() {
        for n in s.replicas.iter().filter(|n| !s.in_sync.contains(n)) {
            *catching_up.entry(*n).or_default() += 1;
        }
    }
    // Primaries follow their copies: a node leading more shards than its share gives those it leads first.
    let mut primaries: BTreeMap<u64, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    for s in state.shards() {
        let primary = s.moving.filter(|m| m.from == s.primary).map_or(s.primary, |m| m.to);
        if let Some(p) = primaries.get_mut(&primary) {
            *p += 1;
        }
    }
    let share = primaries.values().sum::<usize>() as f64 / primaries.len() as f64;
    let mut holders: BTreeMap<ShardId, Vec<u64>> =
        state.shards().filter(|s| s.moving.is_none()).map(|s| (s.shard_id, s.replicas.clone())).collect();
    let mut steps = Vec::new();
    while steps.len() < count {
        let top = loads.values().copied().max().unwrap_or(0);
        let bottom = loads.values().copied().min().unwrap_or(0);
        if (top as f64) <= high && (bottom as f64) >= low {
            break;
        }
        // The most loaded node that can give to the least loaded one that can take: try pairs by their gap.
        let mut pairs: Vec<(u64, u64, u64)> = Vec::new();
        for (&from, &lf) in &loads {
            for (&to, &lt) in &loads {
                if lf > lt && catching_up.get(&to).copied().unwrap_or(0) < CATCHING_UP_MAX {
                    pairs.push((lf - lt, from, to));
                }
            }
        }
        pairs.sort_by_key(|(gap, from, to)| (std::cmp::Reverse(*gap), *from, *to));
        let mut chosen = None;
        for (gap, from, to) in pairs {
            // Only pairs that bring an outlier back: the source above the band or the target below it.
            if (loads[&from] as f64) <= high && (loads[&to] as f64) >= low {
                continue;
            }
            let best = state
                .shards()
                .filter(|s| holders.get(&s.shard_id).is_some_and(|h| h.contains(&from) && !h.contains(&to)))
                .filter(|s| up(state, gone, s.primary))
                .filter(|s| weight(s) < gap)
                .min_by_key(|s| {
                    // Copies that close the gap about as well (within a quarter of the band) are told apart by
                    // leadership first: the node leading more than its share gives a shard it leads, and the others
                    // keep theirs, so that a node that joins comes to lead shards too.
                    let leads_much = primaries.get(&from).is_some_and(|p| *p as f64 > share);
                    let off = (gap / 2).abs_diff(weight(s));
                    (off / closeness, (s.primary == from) != leads_much, off, s.shard_id)
                });
            if let Some(shard) = best {
                chosen = Some((shard, from, to));
                break;
            }
        }
        let Some((shard, from, to)) = chosen else { break };
        let w = weight(shard);
        *loads.get_mut(&from).expect("a loaded node") -= w;
        *loads.get_mut(&to).expect("a loaded node") += w;
        *catching_up.entry(to).or_default() += 1;
        if shard.primary == from {
            primaries.entry(from).and_modify(|p| *p = p.saturating_sub(1));
            *primaries.entry(to).or_default() += 1;
        }
        holders.remove(&shard.shard_id);
        steps.push(Balance {
            shard_id: shard.shard_id,
            step: BalanceStep::Start { from, to, load: w },
            command: MetaCommand::MoveShardCopy { shard_id: shard.shard_id, from, to, expected_epoch: shard.epoch },
        });
    }
    steps
}

/// Whether `node` is serving and not gone.
fn up(state: &MetaState, gone: &BTreeSet<u64>, node: u64) -> bool {
    state.node(node).is_some_and(|r| r.state == NodeState::Serving) && !gone.contains(&node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ShardLoad;
    use crate::state::repair::tests::{add_node, admit_all, catch_up_all, cluster, create};

    const AUTO: BalanceSettings = BalanceSettings { automatic: true, tolerance: 0.1, moves_max: 2 };

    /// Applies every planned step; returns them.
    fn apply(s: &mut MetaState, settings: BalanceSettings) -> Vec<BalanceStep> {
        let steps = plan(s, &BTreeSet::new(), settings);
        for step in &steps {
            s.apply(step.command.clone()).outcome.expect("a plan applies to the state it was made from");
        }
        steps.into_iter().map(|p| p.step).collect()
    }

    /// Rounds of planning and catch-up until nothing moves; returns the moves started.
    fn settle(s: &mut MetaState, settings: BalanceSettings) -> usize {
        let mut started = 0;
        for _ in 0..100 {
            let steps = apply(s, settings);
            started += steps.iter().filter(|p| matches!(p, BalanceStep::Start { .. })).count();
            catch_up_all(s);
            if steps.is_empty() {
                return started;
            }
        }
        panic!("the balance does not settle: {:?}", loads(s, &BTreeSet::new()));
    }

    fn copies(s: &MetaState, node: u64) -> usize {
        s.shards().filter(|r| r.replicas.contains(&node)).count()
    }

    fn report(s: &mut MetaState, bytes: impl Fn(ShardId) -> u64) {
        let by_primary: Vec<(u64, ShardId)> = s.shards().map(|r| (r.primary, r.shard_id)).collect();
        for (node_id, shard) in by_primary {
            let load = ShardLoad { hot_bytes: bytes(shard), hot_rows: bytes(shard) / 100 };
            let command = MetaCommand::ReportShardLoads { node_id, loads: vec![(shard, load)] };
            s.apply(command).outcome.expect("reported");
        }
    }

    #[test]
    fn a_new_node_receives_copies_until_the_loads_are_within_the_tolerance_and_nothing_moves_back() {
        let mut s = cluster(3);
        create(&mut s, "t", 12, 2);
        assert!(plan(&s, &BTreeSet::new(), AUTO).is_empty(), "balanced at creation");
        add_node(&mut s, 4);
        let started = settle(&mut s, AUTO);
        assert_eq!(started, 6, "24 copies over 4 nodes: 6 move to node 4");
        for n in 1..=4 {
            assert_eq!(copies(&s, n), 6, "node {n}");
        }
        assert!(s.shards().all(|r| r.replicas.len() == 2 && r.in_sync.len() == 2 && r.moving.is_none()));
        // Primaries went with some of the copies: each node leads three of the twelve shards.
        for n in 1..=4 {
            assert_eq!(s.shards().filter(|r| r.primary == n).count(), 3, "node {n} leads");
        }
        // Loads drifting inside the tolerance move nothing.
        report(&mut s, |shard| (10 << 20) + shard.0 * 1024);
        assert!(plan(&s, &BTreeSet::new(), AUTO).is_empty(), "{:?}", loads(&s, &BTreeSet::new()));
    }

    #[test]
    fn bytes_weigh_more_than_copies_and_a_move_never_overshoots() {
        let mut s = cluster(2);
        create(&mut s, "t", 4, 1);
        // One shard on node 1 holds most of the data.
        let big = s.shards().find(|r| r.primary == 1).expect("a shard on node 1").shard_id;
        report(&mut s, |shard| if shard == big { 100 << 20 } else { 1 << 20 });
        let before = loads(&s, &BTreeSet::new());
        settle(&mut s, AUTO);
        let after = loads(&s, &BTreeSet::new());
        let spread =
            |l: &BTreeMap<u64, u64>| l.values().max().copied().unwrap_or(0) - l.values().min().copied().unwrap_or(0);
        assert!(spread(&after) <= spread(&before), "{before:?} → {after:?}");
        // The big shard stays: moving it would only swap which node is heavy; the small ones left node 1.
        assert_eq!(s.shard(big).expect("big").replicas, vec![1]);
        assert_eq!(copies(&s, 1), 1, "{after:?}");
    }

    #[test]
    fn no_move_starts_while_a_copy_is_missing_or_with_automatic_moves_off_and_moves_under_way_finish() {
        let mut s = cluster(3);
        create(&mut s, "t", 6, 2);
        add_node(&mut s, 4);
        // Node 3 down: its copies need repair first.
        s.apply(MetaCommand::UpdateNodeState { node_id: 3, state: NodeState::Down }).outcome.expect("down");
        assert!(plan(&s, &BTreeSet::new(), AUTO).is_empty());
        s.apply(MetaCommand::UpdateNodeState { node_id: 3, state: NodeState::Serving }).outcome.expect("up");
        assert!(plan(&s, &BTreeSet::new(), AUTO).is_empty(), "node 3's copies catch up first");
        catch_up_all(&mut s);
        let off = BalanceSettings { automatic: false, ..AUTO };
        assert!(plan(&s, &BTreeSet::new(), off).is_empty(), "automatic moves off");
        let started = apply(&mut s, AUTO);
        assert_eq!(started.len(), 2, "two moves at once at most: {started:?}");
        assert!(plan(&s, &BTreeSet::new(), AUTO).is_empty(), "the new copies catch up first");
        admit_all(&mut s);
        // Moves under way finish with automatic moves off: a backup's copy leaves by the leader's change, a
        // primary's by the primary's own handover.
        let finished = apply(&mut s, off);
        assert!(finished.iter().all(|f| matches!(f, BalanceStep::Finish { to: 4, .. })), "{finished:?}");
        catch_up_all(&mut s);
        assert!(s.shards().all(|r| r.moving.is_none() && r.replicas.len() == 2));
        assert_eq!(copies(&s, 4), 2);
    }

    #[test]
    fn a_move_whose_target_leaves_is_over_and_extra_copies_are_trimmed() {
        let mut s = cluster(3);
        create(&mut s, "t", 3, 2);
        add_node(&mut s, 4);
        let started = apply(&mut s, BalanceSettings { moves_max: 1, ..AUTO });
        let [BalanceStep::Start { from, to: 4, .. }] = started[..] else { panic!("{started:?}") };
        let shard = s.shards().find(|r| r.moving.is_some()).expect("moving").clone();
        // The target's copy is dropped before it caught up (its node drained, say): the move is over.
        let back: Vec<u64> = shard.replicas.iter().copied().filter(|n| *n != 4).collect();
        let drop = MetaCommand::SetShardReplicas {
            shard_id: shard.shard_id,
            replicas: back.clone(),
            in_sync: shard.in_sync.clone(),
            primary: shard.primary,
            expected_epoch: Some(shard.epoch),
        };
        s.apply(drop).outcome.expect("dropped");
        assert_eq!(s.shard(shard.shard_id).expect("shard").moving, None);
        assert!(back.contains(&from));
        // A shard left with three copies in sync (a drain cancelled between its add and its drop) loses one.
        let shard = s.shard(shard.shard_id).expect("shard").clone();
        let extra = (1..=4).find(|n| !shard.replicas.contains(n)).expect("a node without a copy");
        let mut three = shard.replicas.clone();
        three.push(extra);
        let add = MetaCommand::SetShardReplicas {
            shard_id: shard.shard_id,
            replicas: three.clone(),
            in_sync: three,
            primary: shard.primary,
            expected_epoch: Some(shard.epoch),
        };
        s.apply(add).outcome.expect("three copies");
        let trimmed = apply(&mut s, BalanceSettings { automatic: false, ..AUTO });
        assert!(matches!(trimmed[..], [BalanceStep::Trim { .. }]), "{trimmed:?}");
        assert_eq!(s.shard(shard.shard_id).expect("shard").replicas.len(), 2);
    }

    #[test]
    fn a_move_whose_source_the_shard_comes_to_need_is_over_and_both_copies_stay() {
        let mut s = cluster(3);
        create(&mut s, "t", 1, 2);
        add_node(&mut s, 4);
        let shard = s.shards().next().expect("shard").clone();
        let (from, other) = (shard.replicas[0], shard.replicas[1]);
        let to = (1..=4).find(|n| !shard.replicas.contains(n)).expect("a free node");
        let mv = MetaCommand::MoveShardCopy { shard_id: shard.shard_id, from, to, expected_epoch: shard.epoch };
        s.apply(mv).outcome.expect("moving");
        // The other copy is lost meanwhile (its node gone) and dropped, with the new one in sync: the source stays.
        let now = s.shard(shard.shard_id).expect("shard").clone();
        let primary = if now.primary == other { from } else { now.primary };
        let drop = MetaCommand::SetShardReplicas {
            shard_id: shard.shard_id,
            replicas: vec![from, to],
            in_sync: vec![from, to],
            primary,
            expected_epoch: Some(now.epoch),
        };
        s.apply(drop).outcome.expect("dropped");
        assert_eq!(s.shard(shard.shard_id).expect("shard").moving, None, "the move is over");
        assert!(plan(&s, &BTreeSet::new(), BalanceSettings { automatic: false, ..AUTO }).is_empty());
    }

    #[test]
    fn a_move_is_refused_onto_a_node_holding_a_copy_or_draining_and_while_another_runs() {
        let mut s = cluster(3);
        create(&mut s, "t", 1, 2);
        let shard = s.shards().next().expect("shard").clone();
        let holder = shard.replicas[1];
        let free = (1..=3).find(|n| !shard.replicas.contains(n)).expect("free node");
        let mv = |to, epoch| MetaCommand::MoveShardCopy {
            shard_id: shard.shard_id,
            from: shard.primary,
            to,
            expected_epoch: epoch,
        };
        assert!(s.apply(mv(holder, shard.epoch)).outcome.is_err());
        assert!(s.apply(mv(free, shard.epoch + 1)).outcome.is_err(), "compare-and-set on the epoch");
        s.apply(MetaCommand::SetDraining { node_id: free, draining: true }).outcome.expect("draining");
        assert!(s.apply(mv(free, shard.epoch)).outcome.is_err(), "onto a draining node");
        s.apply(MetaCommand::SetDraining { node_id: free, draining: false }).outcome.expect("not draining");
        s.apply(mv(free, shard.epoch)).outcome.expect("moves");
        add_node(&mut s, 4);
        let again = MetaCommand::MoveShardCopy {
            shard_id: shard.shard_id,
            from: holder,
            to: 4,
            expected_epoch: shard.epoch + 1,
        };
        assert!(s.apply(again).outcome.is_err(), "one move of a shard at a time");
    }
}
