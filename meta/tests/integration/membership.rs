//! Membership over real gRPC on loopback, driven through `ClusterService` as a joining node and `quiver admin` do:
//! joining with promotion up to the configured voters, refusals that change nothing, removing and replacing a dead
//! voter, moving leadership, and snapshots on demand.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use quiver_meta::service::ClusterClient;
use quiver_meta::{ClusterError, JoinRequest, NodeState};

use crate::cluster::{GrpcReplica, create_table, init_tracing, register, test_config, wait_leader};

fn client() -> ClusterClient {
    ClusterClient::new(Duration::from_millis(500), Duration::from_secs(5))
}

fn join_request(replica: &GrpcReplica, cluster_id: Option<&str>) -> JoinRequest {
    JoinRequest {
        node_id: replica.node.node_id(),
        grpc_addr: replica.addr.to_string(),
        flight_addr: String::new(),
        pg_addr: String::new(),
        cluster_id: cluster_id.map(str::to_string),
        empty_store: false,
    }
}

/// Three replicas of cluster "c1": node 1 bootstrapped it, nodes 2 and 3 joined through it; returns them and node
/// 1's address.
async fn three_joined(config: &quiver_meta::MetaConfig) -> Result<(Vec<GrpcReplica>, String)> {
    let mut replicas = Vec::new();
    for id in 1..=3 {
        replicas.push(GrpcReplica::start_fresh(id, config.clone()).await?);
    }
    let seed = replicas[0].addr.to_string();
    replicas[0].node.bootstrap("c1").await?;
    replicas[0].node.propose(register(1, &seed)).await?.into_result()?;
    for replica in &replicas[1..] {
        client().join(&seed, &join_request(replica, None)).await?;
    }
    Ok((replicas, seed))
}

fn voters(replica: &GrpcReplica) -> BTreeSet<u64> {
    replica.node.metrics().borrow().membership_config.membership().voter_ids().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_as_voters_up_to_the_target_and_bad_changes_are_refused() -> Result<()> {
    init_tracing();
    let config = test_config();
    let mut replicas = Vec::new();
    for id in 1..=4 {
        replicas.push(GrpcReplica::start_fresh(id, config.clone()).await?);
    }
    let seed = replicas[0].addr.to_string();
    replicas[0].node.bootstrap("c1").await?;
    replicas[0].node.propose(register(1, &seed)).await?.into_result()?;

    // The last voter cannot be removed.
    let err = client().remove_node(&seed, 1).await.expect_err("last voter");
    ensure!(matches!(&err, ClusterError::InvalidMembershipChange { detail } if detail.contains("last voter")), "{err}");

    // Nodes 2 and 3 become voters (target 3), node 4 stays a learner; joins sent to a follower reach the leader.
    let (cluster, role) = client().join(&seed, &join_request(&replicas[1], None)).await?;
    assert_eq!((cluster.as_str(), role.as_str()), ("c1", "voter"));
    let (_, role) = client().join(&replicas[1].addr.to_string(), &join_request(&replicas[2], Some("c1"))).await?;
    assert_eq!(role, "voter");
    let (_, role) = client().join(&seed, &join_request(&replicas[3], None)).await?;
    assert_eq!(role, "learner");
    assert_eq!(voters(&replicas[0]), BTreeSet::from([1, 2, 3]));
    // Joining again with the same address is a no-op.
    let (_, role) = client().join(&seed, &join_request(&replicas[3], None)).await?;
    assert_eq!(role, "learner");

    // Refusals: another cluster's node, a node id used by another address. Nothing changes.
    let version = replicas[0].node.read_state(|s| s.version()).await?;
    let err = client().join(&seed, &join_request(&replicas[3], Some("other"))).await.expect_err("other cluster");
    ensure!(matches!(&err, ClusterError::JoinRefused { detail } if detail.contains("\"other\"")), "{err}");
    let mut impostor = join_request(&replicas[3], None);
    impostor.node_id = 2;
    let err = client().join(&seed, &impostor).await.expect_err("duplicate id");
    ensure!(
        matches!(&err, ClusterError::JoinRefused { detail } if detail.contains("node id 2 is already used")),
        "{err}"
    );
    assert_eq!(replicas[0].node.read_state(|s| s.version()).await?, version, "refusals change nothing");

    // Status: the leader knows every member's progress.
    let status = client().status(&seed).await?;
    assert_eq!(status.leader_id, Some(1));
    assert_eq!(status.members.len(), 4);
    assert!(status.members.iter().all(|m| m.lag.is_some()), "{status:?}");
    assert!(status.members.iter().filter(|m| m.node_id > 1).all(|m| m.state == "serving"), "joined: {status:?}");

    // Node 3 dies; removing it promotes the learner, node 4, in its place. DDL continues.
    let dead = replicas.remove(2);
    dead.stop().await?;
    client().remove_node(&replicas[1].addr.to_string(), 3).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while voters(&replicas[0]) != BTreeSet::from([1, 2, 4]) {
        ensure!(tokio::time::Instant::now() < deadline, "voters: {:?}", voters(&replicas[0]));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state = replicas[0].node.read_state(|s| s.node(3).map(|n| n.state)).await?;
    assert_eq!(state, Some(NodeState::Down));
    replicas[2].node.propose(create_table("after_replace")).await?.into_result()?;

    // Leadership moves to node 2 on request.
    let leader = client().transfer_leader(&replicas[2].addr.to_string(), 2).await?;
    assert_eq!(leader, 2);
    let nodes: Vec<_> = replicas.iter().map(|r| &r.node).collect();
    assert_eq!(wait_leader(&nodes, Duration::from_secs(5)).await?, 2);
    replicas[0].node.propose(create_table("after_transfer")).await?.into_result()?;

    // A snapshot on demand covers everything applied.
    let applied = replicas[2].node.metrics().borrow().last_applied.map(|l| l.index);
    let index = client().trigger_snapshot(&replicas[2].addr.to_string()).await?;
    ensure!(index >= applied, "snapshot {index:?} < applied {applied:?}");
    assert!(replicas[2].node.snapshot_stats().built >= 1);

    for replica in replicas {
        replica.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_back_with_an_empty_disk_is_added_anew_and_catches_up() -> Result<()> {
    init_tracing();
    let config = test_config();
    let (mut replicas, seed) = three_joined(&config).await?;
    assert_eq!(voters(&replicas[0]), BTreeSet::from([1, 2, 3]));
    for i in 0..20 {
        replicas[0].node.propose(create_table(&format!("before{i}"))).await?.into_result()?;
    }

    tracing::info!("phase: node 3 loses its disk and comes back under its id and address, as an operator would");
    let membership_index = |r: &GrpcReplica| r.node.metrics().borrow().membership_config.log_id().map(|l| l.index);
    let before = membership_index(&replicas[0]);
    let lost = replicas.remove(2);
    let (_, addr) = lost.stop().await?;
    let back = GrpcReplica::restart(3, quiver_meta::MemMetaStore::new(), addr, config.clone()).await?;
    let mut request = join_request(&back, None);
    request.empty_store = true;
    let (_, role) = client().join(&seed, &request).await?;
    assert_eq!(role, "voter", "taken out, added as a learner and promoted again once caught up");
    // Its old membership, which counted a copy of the log it no longer has, was replaced, not kept.
    ensure!(membership_index(&replicas[0]) > before, "no membership change: {before:?}");
    replicas.push(back);

    tracing::info!("phase: it holds the whole log again and the cluster keeps committing");
    replicas[1].node.propose(create_table("after")).await?.into_result()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let tables = replicas[2].node.read_local(|s| s.catalog().tables().count());
        if tables == 21 {
            break;
        }
        ensure!(tokio::time::Instant::now() < deadline, "node 3 has {tables} of 21 tables");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(voters(&replicas[0]), BTreeSet::from([1, 2, 3]));
    for replica in replicas {
        replica.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_drained_and_removed_joins_again_as_a_node_that_takes_copies() -> Result<()> {
    init_tracing();
    let config = test_config();
    let (mut replicas, seed) = three_joined(&config).await?;

    // The operator drains node 3 (it holds no shard copy here, so the drain is done at once) and removes it.
    client().drain_node(&seed, 3, false).await?;
    let draining = |r: &GrpcReplica| r.node.read_local(|s| s.node(3).map(|n| n.draining));
    assert_eq!(draining(&replicas[0]), Some(true));
    client().remove_node(&seed, 3).await?;
    let (_, addr) = replicas.remove(2).stop().await?;

    // A new node on the host, with an empty disk, joins under the same id: it takes copies again.
    let back = GrpcReplica::restart(3, quiver_meta::MemMetaStore::new(), addr, config.clone()).await?;
    let mut request = join_request(&back, None);
    request.empty_store = true;
    client().join(&seed, &request).await?;
    let record = replicas[0].node.read_state(|s| s.node(3).cloned()).await?.expect("registered");
    assert!(!record.draining, "still draining after it joined again: {record:?}");
    assert_eq!(record.state, NodeState::Serving);

    // A node drained but not removed that only restarts stays drained.
    client().drain_node(&seed, 2, false).await?;
    client().join(&seed, &join_request(&replicas[1], None)).await?;
    let drained = replicas[0].node.read_state(|s| s.node(2).map(|n| n.draining)).await?;
    assert_eq!(drained, Some(true), "a member's drain is the operator's to cancel");
    replicas.push(back);
    for replica in replicas {
        replica.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_errors_and_change_nothing() -> Result<()> {
    use quiver_proto::v1::cluster_service_client::ClusterServiceClient;
    use quiver_proto::v1::meta_service_client::MetaServiceClient;
    use quiver_proto::v1::raft_service_client::RaftServiceClient;
    use quiver_proto::v1::{JoinRequest as JoinMessage, ProposeRequest, RaftRequest, RaftVote, SnapshotChunk};

    init_tracing();
    let replica = GrpcReplica::start_fresh(1, test_config()).await?;
    replica.node.bootstrap("c1").await?;
    let addr = replica.addr.to_string();
    replica.node.propose(register(1, &addr)).await?.into_result()?;
    let version = replica.node.read_state(|s| s.version()).await?;
    let url = format!("http://{addr}");

    // Raft messages that do not decode.
    let mut raft = RaftServiceClient::connect(url.clone()).await?;
    let status = raft.append_entries(RaftRequest { payload: b"not json".to_vec() }).await.expect_err("garbage");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("append-entries request"), "{status:?}");
    let status = raft.vote(RaftRequest { payload: vec![0xff; 16] }).await.expect_err("garbage");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let chunk = SnapshotChunk { vote: None, meta: b"{".to_vec(), offset: 0, data: vec![1, 2, 3], done: true };
    let status = raft.install_snapshot(chunk.clone()).await.expect_err("no vote");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let chunk = SnapshotChunk { vote: Some(RaftVote { term: 1, node_id: 9, ..Default::default() }), ..chunk };
    let status = raft.install_snapshot(chunk).await.expect_err("garbage meta");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("snapshot meta"), "{status:?}");

    // A proposal that is not a command.
    let mut meta = MetaServiceClient::connect(url.clone()).await?;
    let status = meta.propose(ProposeRequest { command: b"{\"DropEverything\":{}}".to_vec() }).await.expect_err("bad");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("proposed command"), "{status:?}");

    // Joins with no usable identity or address.
    let mut cluster = ClusterServiceClient::connect(url).await?;
    for (node_id, grpc_addr, expect) in [
        (0, "127.0.0.1:7000", "node id 0 is reserved"),
        (5, "", "must be host:port"),
        (5, "127.0.0.1:0", "must be host:port"),
        (5, "no-port", "must be host:port"),
    ] {
        let message = JoinMessage { node_id, grpc_addr: grpc_addr.into(), ..Default::default() };
        let status = cluster.join(message).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains(expect), "{expect}: {status:?}");
    }

    // Nothing changed, and the replica still commits.
    assert_eq!(replica.node.read_state(|s| s.version()).await?, version);
    assert_eq!(replica.node.status().members.len(), 1);
    replica.node.propose(create_table("still_works")).await?.into_result()?;
    replica.stop().await?;
    Ok(())
}
