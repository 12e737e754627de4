//! Membership changes cut short between their two halves, on three replicas joined by the in-process
//! [`Router`](quiver_meta::raft::Router) under madsim's scheduler and clock.
//!
//! openraft 0.9 changes voters through a joint configuration and proposes the second, uniform one only from the call
//! that made the change; a call that ends early (its timeout) leaves the group joint. The node workload's seed
//! 6660194 found what followed: a replica rejoining while its own removal hung half done was told it was a voter,
//! the next removal, computed from the joint configuration, dropped it as a side effect, and it ran on outside the
//! group. These tests build that half-done removal directly, so they do not depend on a seed's timing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use madsim::time::{Instant, sleep};
use openraft::ChangeMembers;
use quiver_meta::raft::{NodeAddr, Router};
use quiver_meta::{JoinRequest, MemMetaStore, MetaConfig, MetaNode, NodeRole};

fn addr(id: u64) -> String {
    format!("10.0.0.{id}:7000")
}

fn config() -> MetaConfig {
    MetaConfig {
        heartbeat_interval_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        request_timeout_ms: 2_000,
        voters: 3,
        ..MetaConfig::default()
    }
}

fn join_request(id: u64) -> JoinRequest {
    JoinRequest {
        empty_store: false,
        node_id: id,
        grpc_addr: addr(id),
        flight_addr: String::new(),
        pg_addr: String::new(),
        cluster_id: Some("c".into()),
    }
}

/// The configuration's halves (one when uniform) and its members, as `node` sees them.
fn membership(node: &MetaNode) -> (Vec<BTreeSet<u64>>, BTreeSet<u64>) {
    let metrics = node.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    (membership.get_joint_config().clone(), membership.nodes().map(|(id, _)| *id).collect())
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

/// Starts three replicas, node 1 leading, all voters.
async fn three_voters(router: &Router) -> Vec<MetaNode> {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let store = Arc::new(MemMetaStore::new());
        let node = MetaNode::start(id, NodeAddr::new(addr(id)), store, config(), router.network(id))
            .await
            .expect("replica starts");
        router.register(&node);
        nodes.push(node);
    }
    nodes[0].bootstrap("c").await.expect("bootstrap");
    for id in [2, 3] {
        let (_, role) = nodes[0].join(join_request(id)).await.expect("join");
        assert_eq!(role, NodeRole::Voter);
    }
    assert_eq!(membership(&nodes[0]).0, vec![BTreeSet::from([1, 2, 3])]);
    nodes
}

/// Leaves the removal of voter 3 half done on leader 1: its joint configuration is committed, and the call that
/// would propose the uniform one has ended.
async fn leave_removal_of_3_half_done(router: &Router, leader: &MetaNode) {
    // The followers hear nothing while the change starts, so it cannot get past its first half before the call ends.
    router.cut(1, 2);
    router.cut(1, 3);
    let raft = leader.raft().clone();
    let change = madsim::task::spawn(async move {
        let _ = raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([3])), false).await;
    });
    wait_until("the joint configuration is appended", || membership(leader).0.len() == 2).await;
    change.abort();
    router.heal();
    wait_until("the joint configuration is committed", || {
        let metrics = leader.metrics().borrow().clone();
        *metrics.membership_config.log_id() <= metrics.last_applied
    })
    .await;
    // Nothing finishes it by itself.
    sleep(Duration::from_millis(500)).await;
    assert_eq!(membership(leader).0, vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([1, 2])]);
}

#[madsim::test]
async fn a_replica_rejoining_during_its_half_done_removal_stays_a_member() {
    let router = Router::new();
    let nodes = three_voters(&router).await;
    leave_removal_of_3_half_done(&router, &nodes[0]).await;

    // Replica 3 restarts on its disk and confirms its membership: the join settles the configuration first (3 is
    // kept as a learner), then promotes 3 again, since a voter is missing.
    let (_, role) = nodes[0].join(join_request(3)).await.expect("rejoin");
    assert_eq!(role, NodeRole::Voter);
    assert_eq!(membership(&nodes[0]), (vec![BTreeSet::from([1, 2, 3])], BTreeSet::from([1, 2, 3])));

    // A later removal of another voter takes that voter out, and only it.
    nodes[0].remove_node(2).await.expect("remove 2");
    assert_eq!(membership(&nodes[0]), (vec![BTreeSet::from([1, 3])], BTreeSet::from([1, 3])));
    for node in nodes {
        node.shutdown().await.expect("shutdown");
    }
}

#[madsim::test]
async fn the_voter_keeper_finishes_a_half_done_change() {
    let router = Router::new();
    let nodes = three_voters(&router).await;
    leave_removal_of_3_half_done(&router, &nodes[0]).await;

    // The keeper proposes the configuration the removal was heading for, keeping 3 as a learner, and promotes 3
    // again (now or in a later round), since a voter is missing.
    nodes[0].keep_voters().await.expect("keeper");
    assert_eq!(membership(&nodes[0]).0.len(), 1, "uniform: {:?}", membership(&nodes[0]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while membership(&nodes[0]) != (vec![BTreeSet::from([1, 2, 3])], BTreeSet::from([1, 2, 3])) {
        assert!(Instant::now() < deadline, "not promoted: {:?}", membership(&nodes[0]));
        sleep(Duration::from_millis(50)).await;
        nodes[0].keep_voters().await.expect("keeper");
    }
    for node in nodes {
        node.shutdown().await.expect("shutdown");
    }
}
