//! Failure detection over real gRPC: members heartbeat to the leader, which marks a silent member down in the node
//! registry and serving again once it is heard from.

use std::time::Duration;

use anyhow::{Result, ensure};
use quiver_meta::{MetaCommand, MetaNode, NodeState};

use crate::cluster::{GrpcReplica, grpc_cluster, init_tracing, test_config, wait_leader};

/// The registry's state of `node_id` as `node` has applied it.
fn state_of(node: &MetaNode, node_id: u64) -> Option<NodeState> {
    node.read_local(|s| s.node(node_id).map(|n| n.state))
}

/// Waits until `node` has applied `state` for `node_id`, up to `timeout`.
async fn wait_state(node: &MetaNode, node_id: u64, state: NodeState, timeout: Duration) -> Result<Duration> {
    let started = tokio::time::Instant::now();
    loop {
        if state_of(node, node_id) == Some(state) {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < timeout,
            "node {node_id} not {state:?} within {timeout:?}: {:?}",
            state_of(node, node_id)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_member_is_marked_down_and_serving_again_when_it_returns() -> Result<()> {
    init_tracing();
    let config = test_config();
    let mut replicas = grpc_cluster(3, config.clone()).await?;
    let all: Vec<&MetaNode> = replicas.iter().map(|r| &r.node).collect();
    let leader = wait_leader(&all, Duration::from_secs(5)).await?;
    for id in 1..=3 {
        all[0].propose(MetaCommand::UpdateNodeState { node_id: id, state: NodeState::Serving }).await?.into_result()?;
    }

    tracing::info!("phase: every member heartbeats, so nobody is marked down over several detection windows");
    tokio::time::sleep(Duration::from_millis(3 * config.node_down_after_ms)).await;
    for id in 1..=3 {
        ensure!(state_of(all[0], id) == Some(NodeState::Serving), "live node {id} was marked down");
    }
    // The heartbeats measured every member's clock against the leader's, and the leader's against its members':
    // one machine's clock, so about zero everywhere.
    for node in &all {
        let skew = node.clock_skew();
        ensure!(skew.is_some_and(|ms| ms.abs() < 1_000), "node {}'s clock skew is {skew:?}", node.node_id());
    }

    tracing::info!("phase: a follower stops; the leader marks it down after node_down_after");
    let victim_index = replicas.iter().position(|r| r.node.node_id() != leader).expect("a follower");
    let victim = replicas.remove(victim_index);
    let victim_id = victim.node.node_id();
    let (store, addr) = victim.stop().await?;
    let leader_node = &replicas.iter().find(|r| r.node.node_id() == leader).expect("leader").node;
    let took = wait_state(leader_node, victim_id, NodeState::Down, Duration::from_secs(5)).await?;
    ensure!(
        took >= Duration::from_millis(config.node_down_after_ms) / 2,
        "marked down after {took:?}, before node_down_after could pass"
    );
    for r in &replicas {
        ensure!(state_of(leader_node, r.node.node_id()) == Some(NodeState::Serving), "a live node was marked down");
    }

    tracing::info!("phase: it restarts on its disk and heartbeats; the leader marks it serving again");
    let back = GrpcReplica::restart(victim_id, store, addr, config.clone()).await?;
    wait_state(leader_node, victim_id, NodeState::Serving, Duration::from_secs(5)).await?;
    wait_state(&back.node, victim_id, NodeState::Serving, Duration::from_secs(5)).await?;
    Ok(())
}
