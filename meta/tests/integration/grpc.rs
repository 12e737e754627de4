//! Replicas talking over real gRPC on loopback: forwarding, failover, restart, snapshot catch-up, and concurrent
//! conflicting DDL.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use quiver_meta::{MetaCommand, MetaConfig, MetaNode, MetaOutcome, NodeRole, Rejection};

use crate::cluster::{
    GrpcReplica, agreed_state, applied_index, create_table, grpc_cluster, init_tracing, test_config, wait_applied,
    wait_leader,
};

const ELECTION_WAIT: Duration = Duration::from_secs(5);

fn nodes(replicas: &[GrpcReplica]) -> Vec<&MetaNode> {
    replicas.iter().map(|r| &r.node).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_forward_proposals_and_agree() -> Result<()> {
    init_tracing();
    tracing::info!("phase: bootstrap node 1, add 2 and 3 as learners, promote them to voters");
    let replicas = grpc_cluster(3, test_config()).await?;
    let all = nodes(&replicas);
    let leader = wait_leader(&all, ELECTION_WAIT).await?;
    assert_eq!(leader, 1, "the bootstrapped node leads while nothing fails");
    let voters: Vec<u64> = all[0].metrics().borrow().membership_config.membership().voter_ids().collect();
    assert_eq!(voters, vec![1, 2, 3]);

    tracing::info!("phase: propose CREATE TABLE on every node; followers forward to the leader");
    let mut subscription = all[2].subscribe();
    for (i, node) in all.iter().enumerate() {
        let name = format!("t{}", i + 1);
        let outcome = node.propose(create_table(&name)).await?.into_result()?;
        ensure!(
            matches!(&outcome, MetaOutcome::TableCreated { shards, .. } if shards.len() == 1),
            "{name}: {outcome:?}"
        );
    }

    tracing::info!("phase: every replica reads the same state, linearizably");
    let state = agreed_state(&all).await?;
    assert_eq!(state.cluster_id(), Some("test-cluster"));
    assert_eq!(state.catalog().tables().map(|t| t.name.as_str()).collect::<Vec<_>>(), vec!["t1", "t2", "t3"]);
    assert_eq!(state.shards().map(|s| s.primary).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(state.nodes().all(|n| n.role == NodeRole::Voter), "promotion is recorded in the registry");
    subscription.wait_for(|v| *v == state.version()).await.context("subscription follows the applied version")?;

    tracing::info!("phase: a follower's linearizable read sees a write made through another follower");
    all[1].propose(create_table("t4")).await?.into_result()?;
    let seen = all[2].read_state(|s| s.catalog().table("t4").is_some()).await?;
    assert!(seen, "read-your-writes across replicas");

    for replica in replicas {
        replica.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conflicting_ddl_has_exactly_one_winner() -> Result<()> {
    init_tracing();
    let replicas = grpc_cluster(3, test_config()).await?;
    let (a, b) = (&replicas[1].node, &replicas[2].node);

    tracing::info!("phase: two followers create the same table at once");
    let (ra, rb) = tokio::join!(a.propose(create_table("dup")), b.propose(create_table("dup")));
    let outcomes = [ra?.outcome, rb?.outcome];
    let created = outcomes.iter().filter(|o| matches!(o, Ok(MetaOutcome::TableCreated { .. }))).count();
    let refused: Vec<&Rejection> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert_eq!(created, 1, "{outcomes:?}");
    assert_eq!(refused, vec![&Rejection::TableAlreadyExists { table: "dup".into() }]);
    assert_eq!(refused[0].to_string(), "table \"dup\" already exists");

    let state = agreed_state(&nodes(&replicas)).await?;
    assert_eq!(state.shards().count(), 1, "the refused command placed no shard");
    for replica in replicas {
        replica.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_keeps_accepting_proposals() -> Result<()> {
    init_tracing();
    let mut replicas = grpc_cluster(3, test_config()).await?;
    replicas[0].node.propose(create_table("before")).await?.into_result()?;

    tracing::info!("phase: stop the leader; the other two elect a new one");
    let old = replicas.remove(0);
    let old_id = old.node.node_id();
    let (old_store, old_addr) = old.stop().await?;
    let survivors = nodes(&replicas);
    let leader = wait_leader(&survivors, ELECTION_WAIT).await?;
    assert_ne!(leader, old_id);

    tracing::info!("phase: proposals continue on both survivors");
    for node in &survivors {
        node.propose(create_table(&format!("after{}", node.node_id()))).await?.into_result()?;
    }
    let state = agreed_state(&survivors).await?;
    assert_eq!(state.catalog().tables().count(), 3);

    tracing::info!("phase: the old leader restarts on its store, rejoins as a follower and catches up");
    let back = GrpcReplica::restart(old_id, old_store, old_addr, test_config()).await?;
    replicas.push(back);
    let all = nodes(&replicas);
    let target = applied_index(all[0]).max(applied_index(all[1]));
    wait_applied(&all, target, ELECTION_WAIT).await?;
    let state = agreed_state(&all).await?;
    assert_eq!(state.catalog().tables().count(), 3);
    for replica in replicas {
        replica.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_of_every_replica_keeps_state() -> Result<()> {
    init_tracing();
    let replicas = grpc_cluster(3, test_config()).await?;
    for i in 0..5 {
        replicas[0].node.propose(create_table(&format!("t{i}"))).await?.into_result()?;
    }
    let before = agreed_state(&nodes(&replicas)).await?;

    tracing::info!("phase: stop every replica, then start each again on its store and address");
    let mut stopped = Vec::new();
    for replica in replicas {
        let id = replica.node.node_id();
        stopped.push((id, replica.stop().await?));
    }
    let mut replicas = Vec::new();
    for (id, (store, addr)) in stopped {
        replicas.push(GrpcReplica::restart(id, store, addr, test_config()).await?);
    }
    let all = nodes(&replicas);
    wait_leader(&all, ELECTION_WAIT).await?;
    let after = agreed_state(&all).await?;
    assert_eq!(after, before, "the restarted cluster has the same metadata");

    tracing::info!("phase: the restarted cluster accepts writes");
    all[1].propose(create_table("later")).await?.into_result()?;
    assert_eq!(agreed_state(&all).await?.version(), before.version() + 1);
    for replica in replicas {
        replica.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_catches_up_by_snapshot() -> Result<()> {
    init_tracing();
    let config = MetaConfig { snapshot_logs_since_last: 20, snapshot_logs_kept: 0, ..test_config() };
    let mut replicas = grpc_cluster(3, config.clone()).await?;
    let leader = wait_leader(&nodes(&replicas), ELECTION_WAIT).await?;

    tracing::info!("phase: stop a follower and write enough that the leader compacts the log past it");
    let position = replicas.iter().position(|r| r.node.node_id() != leader).context("a follower")?;
    let lagging = replicas.remove(position);
    let lagging_id = lagging.node.node_id();
    let lagging_last = lagging.node.metrics().borrow().last_log_index.unwrap_or(0);
    let (store, addr) = lagging.stop().await?;
    let leader_node = replicas.iter().find(|r| r.node.node_id() == leader).context("leader")?.node.clone();
    for at in 1..=60 {
        leader_node.propose(MetaCommand::Heartbeat { node_id: leader, at }).await?.into_result()?;
    }
    leader_node.propose(create_table("late")).await?.into_result()?;
    let metrics = leader_node
        .raft()
        .wait(Some(ELECTION_WAIT))
        .metrics(|m| m.purged.is_some_and(|p| p.index > lagging_last), "leader purges the lagging range")
        .await?;
    tracing::info!(purged = ?metrics.purged, lagging_last, "leader log compacted");
    let leader_store = &replicas.iter().find(|r| r.node.node_id() == leader).context("leader")?.store;
    // Over 60 entries were written; after compaction the store holds the vote, markers, the snapshot and at most
    // the entries since it.
    assert!(leader_store.len() < 30, "the leader's log was not compacted: {} keys", leader_store.len());

    tracing::info!("phase: the follower restarts; the entries it lacks exist only in the snapshot");
    let back = GrpcReplica::restart(lagging_id, store, addr, config).await?;
    let back_node = back.node.clone();
    replicas.push(back);
    let all = nodes(&replicas);
    wait_applied(&all, applied_index(&leader_node), ELECTION_WAIT).await?;
    let snapshot = back_node.metrics().borrow().snapshot;
    ensure!(snapshot.is_some_and(|s| s.index > lagging_last), "installed snapshot {snapshot:?} past {lagging_last}");
    let state = agreed_state(&all).await?;
    assert!(state.catalog().table("late").is_some());
    assert_eq!(state.node(leader).map(|n| n.last_heartbeat), Some(60));
    for replica in replicas {
        replica.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_replicas_survive_two_failures() -> Result<()> {
    init_tracing();
    let mut replicas = grpc_cluster(5, test_config()).await?;
    let leader = wait_leader(&nodes(&replicas), ELECTION_WAIT).await?;

    tracing::info!("phase: stop the leader and one follower; three of five still form a quorum");
    let position = replicas.iter().position(|r| r.node.node_id() == leader).context("leader")?;
    replicas.remove(position).stop().await?;
    let follower = replicas.remove(0);
    follower.stop().await?;
    let survivors = nodes(&replicas);
    let new_leader = wait_leader(&survivors, ELECTION_WAIT).await?;
    assert_ne!(new_leader, leader);
    survivors[2].propose(create_table("survivor")).await?.into_result()?;
    let state = agreed_state(&survivors).await?;
    assert!(state.catalog().table("survivor").is_some());
    for replica in replicas {
        replica.stop().await?;
    }
    Ok(())
}
