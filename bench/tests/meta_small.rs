//! The metadata benchmark's own check at a small size: on a three-server loopback cluster every measured proposal
//! is committed, and every replica ends with the tables the benchmark created.

use std::time::Duration;

use quiver_bench::meta::{Cluster, Origin, Workload, measure};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_from_leader_and_follower_are_measured_and_replicated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::start(dir.path(), 3).await.expect("cluster");
    let mut results = Vec::new();
    for workload in [Workload::Heartbeat, Workload::CreateTable] {
        for origin in [Origin::Leader, Origin::Follower] {
            let m = measure(&cluster, workload, origin, 40, 4).await.expect("measure");
            assert_eq!(m.proposals, 40);
            assert_eq!(m.latencies.len(), 40);
            assert!(m.quantile(0.5) <= m.quantile(0.99) && m.quantile(0.99) <= m.quantile(1.0));
            assert!(m.quantile(0.5) > Duration::ZERO);
            results.push(m);
        }
    }
    let table = quiver_bench::meta::render(&results);
    assert_eq!(table.lines().count(), 5, "{table}");

    // Every replica applies the 80 tables (read-index reads wait for each replica to catch up).
    for replica in cluster.replicas() {
        let count = replica
            .read_state(|s| s.catalog().tables().filter(|t| t.name.starts_with("bench_")).count())
            .await
            .expect("linearizable read");
        assert_eq!(count, 80, "node {}", replica.node_id());
    }
    cluster.stop().await;
}
