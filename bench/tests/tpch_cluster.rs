//! Three `quiver server` processes answer the 22 TPC-H queries at SF 0.1 through any node exactly as one server
//! does, and EXPLAIN places the scan of each shard on the node leading it.

use std::collections::{BTreeMap, BTreeSet};

use quiver_bench::processes::{ProcessCluster, quiver_binary};
use quiver_bench::{cluster_tpch, data, harness::pg_client_at, tpch};

/// Every `node N: shards [a,b]` of an EXPLAIN, as the shards each node's scan tasks read.
fn scan_tasks(explained: &str) -> BTreeMap<u64, BTreeSet<u64>> {
    let mut tasks: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for part in explained.split("node ").skip(1) {
        let Some((node, rest)) = part.split_once(": shards [") else { continue };
        let (Ok(node), Some((shards, _))) = (node.trim().parse::<u64>(), rest.split_once(']')) else { continue };
        let entry = tasks.entry(node).or_default();
        entry.extend(shards.split(',').filter_map(|s| s.trim().parse::<u64>().ok()));
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_process_cluster_answers_tpch_through_any_node_as_one_server_does() {
    let binary = quiver_binary().expect("the quiver binary");
    let dir = tempfile::tempdir().expect("tempdir");
    let tables = data::all(0.1);
    let single = ProcessCluster::start(&binary, &dir.path().join("single"), 1, &[]).await.expect("one server");
    let cluster = ProcessCluster::start(&binary, &dir.path().join("cluster"), 3, &[]).await.expect("three servers");
    tpch::load_over_flight(single.nodes[0].flight, single.nodes[0].pg, &tables, false).await.expect("load one");
    // Loaded through node 2: any node takes the rows of every shard.
    tpch::load_over_flight(cluster.nodes[1].flight, cluster.nodes[1].pg, &tables, true).await.expect("load three");

    let through: Vec<_> = cluster.nodes.iter().map(|n| n.flight).collect();
    let all: Vec<usize> = (1..=22).collect();
    let results = cluster_tpch::compare(single.nodes[0].flight, &through, &all, 1)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    println!("{}", cluster_tpch::render(&results));
    for c in &results {
        assert!(c.same_answer, "query {} through node {} answers differently", c.query, c.through + 1);
        assert!(c.rows > 0, "query {} returned rows", c.query);
    }
    assert_eq!(results.iter().map(|c| c.through).collect::<BTreeSet<_>>().len(), 3, "every node planned queries");

    // EXPLAIN on node 3: the scan of lineitem is split into one task per node, each reading the shards its node
    // leads, as the shard map says.
    let client = pg_client_at(cluster.nodes[2].pg).await.expect("pg");
    let rows = client
        .simple_query("SELECT shard_id, \"primary\" FROM system.shards WHERE table_name = 'lineitem' AND state = 'ok'")
        .await
        .expect("shard map");
    let mut led: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for r in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = r {
            let number = |i: usize| r.get(i).and_then(|v| v.parse::<u64>().ok()).expect("a number");
            led.entry(number(1)).or_default().insert(number(0));
        }
    }
    assert_eq!(led.len(), 3, "every node leads shards of lineitem: {led:?}");
    let explained: Vec<String> = client
        .query("EXPLAIN SELECT l_returnflag, count(*) FROM lineitem GROUP BY l_returnflag", &[])
        .await
        .expect("explain")
        .iter()
        .map(|r| r.get::<_, String>(1))
        .collect();
    let explained = explained.join("\n");
    assert!(explained.contains("DistributedExec") && explained.contains("ShardsScanExec"), "{explained}");
    assert_eq!(scan_tasks(&explained), led, "scan tasks on the nodes leading the shards:\n{explained}");
}
