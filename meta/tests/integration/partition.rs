//! Replicas on the in-process router, with messages dropped and nodes partitioned.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, ensure};
use quiver_meta::raft::{NodeAddr, PreVoteRequest, Router};
use quiver_meta::{ClusterError, ClusterErrorKind, MemMetaStore, MetaConfig, MetaNode};

use crate::cluster::{converged_state, create_table, init_tracing, register, test_config, wait_leader};

/// Starts `count` replicas on `router`, bootstraps node 1 and makes every node a voter.
async fn router_cluster(router: &Router, count: u64, config: MetaConfig) -> Result<Vec<MetaNode>> {
    let mut nodes = Vec::new();
    for id in 1..=count {
        let addr = NodeAddr::new(format!("router-node-{id}:0"));
        let node = MetaNode::start(id, addr, Arc::new(MemMetaStore::new()), config.clone(), router.network(id)).await?;
        router.register(&node);
        nodes.push(node);
    }
    nodes[0].bootstrap("router-cluster").await?;
    for node in &nodes {
        nodes[0].propose(register(node.node_id(), &node.addr().grpc_addr)).await?.into_result()?;
    }
    for node in &nodes[1..] {
        nodes[0].add_learner(node.node_id(), node.addr().clone()).await?;
    }
    nodes[0].change_membership((1..=count).collect()).await?;
    Ok(nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_cannot_commit_and_converges_after_heal() -> Result<()> {
    init_tracing();
    let config = MetaConfig { request_timeout_ms: 1_500, ..test_config() };
    let router = Router::new();
    let nodes = router_cluster(&router, 3, config).await?;
    let all: Vec<&MetaNode> = nodes.iter().collect();
    assert_eq!(wait_leader(&all, Duration::from_secs(5)).await?, 1);
    nodes[0].propose(create_table("before")).await?.into_result()?;

    tracing::info!("phase: isolate the leader; the majority side elects a new leader and keeps committing");
    router.isolate(1);
    let majority = [&nodes[1], &nodes[2]];
    let (lost, new_leader) = tokio::join!(nodes[0].propose(create_table("lost")), async {
        let leader = wait_leader(&majority, Duration::from_secs(5)).await?;
        let node = majority.iter().find(|n| n.node_id() == leader).expect("leader is on the majority side");
        node.propose(create_table("after")).await?.into_result()?;
        anyhow::Ok(leader)
    });
    let new_leader = new_leader?;
    assert_ne!(new_leader, 1);
    let err = lost.expect_err("a leader cut off from its quorum cannot commit");
    assert!(matches!(err, ClusterError::Timeout { .. }), "{err}");
    assert_eq!(err.kind(), ClusterErrorKind::Unavailable);

    tracing::info!("phase: the isolated node refuses linearizable reads rather than serve stale metadata");
    let stale = nodes[0].read_state(|s| s.catalog().table("after").is_some()).await;
    ensure!(stale.is_err(), "isolated node answered a linearizable read: {stale:?}");
    assert!(!nodes[0].read_local(|s| s.catalog().table("after").is_some()), "its local state is indeed stale");

    tracing::info!("phase: heal; the old leader steps down, drops its uncommitted entry and converges");
    router.heal();
    let leader = wait_leader(&all, Duration::from_secs(5)).await?;
    let state = converged_state(&all, &nodes[(leader - 1) as usize]).await?;
    let tables: Vec<&str> = state.catalog().tables().map(|t| t.name.as_str()).collect();
    assert_eq!(tables, vec!["after", "before"], "the uncommitted CREATE TABLE lost was discarded");
    shutdown_all(&nodes).await
}

fn term_of(node: &MetaNode) -> u64 {
    node.metrics().borrow().current_term
}

/// Three replicas on a router with the test settings, once they agree on a leader: the router, the replicas and the
/// leader's id.
async fn led_cluster() -> Result<(Router, Vec<MetaNode>, u64)> {
    init_tracing();
    let router = Router::new();
    let nodes = router_cluster(&router, 3, test_config()).await?;
    let leader = wait_leader(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(5)).await?;
    Ok((router, nodes, leader))
}

async fn shutdown_all(nodes: &[MetaNode]) -> Result<()> {
    for node in nodes {
        node.shutdown().await?;
    }
    Ok(())
}

/// A follower cut off from the others (for ten longest election timeouts) asks for votes in vain, and so never
/// raises its term (Raft's pre-vote); when it returns, the leader keeps its term and leadership, and the follower
/// catches up on what was committed without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_follower_keeps_its_term_and_does_not_unseat_the_leader_when_it_returns() -> Result<()> {
    let config = test_config();
    let (router, nodes, leader) = led_cluster().await?;
    let all: Vec<&MetaNode> = nodes.iter().collect();
    let term = term_of(&nodes[0]);
    let follower = nodes.iter().find(|n| n.node_id() != leader).expect("a follower");
    let leader_node = &nodes[(leader - 1) as usize];

    router.isolate(follower.node_id());
    let apart = Duration::from_millis(10 * config.election_timeout_max_ms);
    let until = tokio::time::Instant::now() + apart;
    while tokio::time::Instant::now() < until {
        ensure!(term_of(follower) == term, "the isolated follower raised its term to {}", term_of(follower));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    leader_node.propose(create_table("while_apart")).await?.into_result()?;

    router.heal();
    // Long enough for a disruptive return to show: the follower's next answers reach the leader at once.
    tokio::time::sleep(Duration::from_millis(4 * config.election_timeout_max_ms)).await;
    assert_eq!(wait_leader(&all, Duration::from_secs(5)).await?, leader, "the leader kept its leadership");
    for node in &nodes {
        assert_eq!(term_of(node), term, "node {} is in another term", node.node_id());
    }
    let state = converged_state(&all, leader_node).await?;
    assert!(state.catalog().table("while_apart").is_some());
    shutdown_all(&nodes).await
}

/// A follower that stops hearing the leader (the link from the leader is cut) but still reaches the other follower
/// is refused: the other follower hears the leader. No term changes, and the leader stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_no_longer_hears_the_leader_is_refused_while_the_others_do() -> Result<()> {
    let config = test_config();
    let (router, nodes, leader) = led_cluster().await?;
    let all: Vec<&MetaNode> = nodes.iter().collect();
    let term = term_of(&nodes[0]);
    let deaf = nodes.iter().find(|n| n.node_id() != leader).expect("a follower").node_id();

    router.cut(leader, deaf);
    tokio::time::sleep(Duration::from_millis(10 * config.election_timeout_max_ms)).await;
    for node in &nodes {
        assert_eq!(term_of(node), term, "node {} changed its term while the leader was heard", node.node_id());
    }
    router.heal();
    assert_eq!(wait_leader(&all, Duration::from_secs(5)).await?, leader);
    shutdown_all(&nodes).await
}

/// When the leader stops, the followers, hearing no one, grant each other's pre-votes and elect a new leader within
/// a few election timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_followers_of_a_stopped_leader_elect_a_new_one_promptly() -> Result<()> {
    let config = test_config();
    let (router, nodes, leader) = led_cluster().await?;
    let stopped = &nodes[(leader - 1) as usize];
    router.unregister(leader);
    stopped.shutdown().await?;
    let rest: Vec<&MetaNode> = nodes.iter().filter(|n| n.node_id() != leader).collect();
    let started = tokio::time::Instant::now();
    let next = wait_leader(&rest, Duration::from_secs(5)).await?;
    assert_ne!(next, leader);
    // The lease and one election timeout, each at most the longest timeout, plus the pre-vote and the vote.
    let bound = Duration::from_millis(4 * config.election_timeout_max_ms);
    ensure!(started.elapsed() < bound, "a new leader took {:?}, more than {bound:?}", started.elapsed());
    for node in rest {
        node.shutdown().await?;
    }
    Ok(())
}

/// A voter that hears no leader grants a pre-vote to a candidate whose wall clock agrees with its own, and refuses one
/// whose clock is off by more than `max_clock_skew_ms`, saying by how much: a node started with its clock off must not
/// lead, or every node with a good clock would measure itself as the one that is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_whose_clock_is_off_is_refused_a_pre_vote() -> Result<()> {
    let config = test_config();
    let (router, nodes, leader) = led_cluster().await?;
    let voter = nodes.iter().find(|n| n.node_id() != leader).expect("a follower");
    // Cut off, it stops hearing the leader; past the lease, only the clock and the log decide its answer.
    router.isolate(voter.node_id());
    tokio::time::sleep(Duration::from_millis(3 * config.election_timeout_max_ms)).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    let ask = |wall_ms| PreVoteRequest {
        candidate: 9,
        term: 1,
        last_log_id: Some(openraft::LogId::new(openraft::CommittedLeaderId::new(1_000, 9), 1_000_000)),
        wall_ms,
    };
    let elections = voter.elections();
    let granted = elections.answer(&ask(now)).await;
    assert!(granted.granted, "{}", granted.reason);
    let ahead = elections.answer(&ask(now + 5_000)).await;
    assert!(!ahead.granted);
    assert!(ahead.reason.contains("ahead of") && ahead.reason.contains("max_clock_skew (500 ms)"), "{}", ahead.reason);
    let behind = elections.answer(&ask(now - 5_000)).await;
    assert!(!behind.granted && behind.reason.contains("behind"), "{}", behind.reason);
    router.heal();
    shutdown_all(&nodes).await
}

/// The leader measures its own clock against its members' heartbeats: when most members' clocks are 5 s ahead of
/// its own, its skew says it is 5 s behind; when one of two agrees with it, it is not the one that is off. (On the
/// router, members send no heartbeats: the test reports their clocks.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_learns_from_most_members_that_its_own_clock_is_off() -> Result<()> {
    let (_router, nodes, leader) = led_cluster().await?;
    let leading = &nodes[(leader - 1) as usize];
    let members: Vec<u64> = nodes.iter().map(MetaNode::node_id).filter(|id| *id != leader).collect();
    let wall = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64);
    let settles = |range: std::ops::RangeInclusive<i64>| async move {
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            let skew = leading.clock_skew();
            if skew.is_some_and(|s| range.contains(&s)) {
                return Ok::<_, anyhow::Error>(());
            }
            ensure!(tokio::time::Instant::now() < until, "the leader's skew stayed {skew:?}, not in {range:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    for id in &members {
        leading.record_member_clock(*id, wall()? + 5_000);
    }
    settles(4_800..=5_000).await?;
    leading.record_member_clock(members[0], wall()?);
    settles(-200..=0).await?;
    shutdown_all(&nodes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_messages_are_retried_until_committed() -> Result<()> {
    init_tracing();
    let router = Router::new();
    let nodes = router_cluster(&router, 3, test_config()).await?;
    let all: Vec<&MetaNode> = nodes.iter().collect();
    for i in 0..5 {
        // Followers on the router cannot forward, so each proposal goes to the current leader.
        let leader = wait_leader(&all, Duration::from_secs(5)).await?;
        router.drop_next(3);
        nodes[(leader - 1) as usize].propose(create_table(&format!("t{i}"))).await?.into_result()?;
    }
    let leader = wait_leader(&all, Duration::from_secs(5)).await?;
    let state = converged_state(&all, &nodes[(leader - 1) as usize]).await?;
    assert_eq!(state.catalog().tables().count(), 5);
    shutdown_all(&nodes).await
}
