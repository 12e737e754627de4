//! TPC-H on a cluster against a single server, in one run: the same tables (sharded by their keys over every node
//! of the cluster) and the 22 queries over Flight SQL, every answer compared with the single server's.
//!
//! In the cluster a query runs as stages: each node scans the shards it leads, with the filters, projections and
//! partial aggregates above the scan, and only what those produce crosses the network. The single server is the
//! reference: the ratio says what planning stages and moving rows between nodes cost, or gain.

use std::net::SocketAddr;
use std::time::Instant;

use crate::queries;
use crate::tpch::{canonical_rows, run_flight_at};

/// One query on both deployments.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The query number.
    pub query: usize,
    /// Best-of-runs seconds on the single server.
    pub single_s: f64,
    /// Best-of-runs seconds through the cluster.
    pub cluster_s: f64,
    /// The index (from 0) of the cluster node the query went through.
    pub through: usize,
    /// Rows returned by the single server.
    pub rows: usize,
    /// Whether the cluster answered exactly as the single server did (rows compared as sorted text).
    pub same_answer: bool,
}

/// Runs each query of `which` `runs` times on the single server at `single` and through the cluster, query `q`
/// through node `q % cluster.len()` so that every node plans some.
pub async fn compare(
    single: SocketAddr,
    cluster: &[SocketAddr],
    which: &[usize],
    runs: usize,
) -> anyhow::Result<Vec<Comparison>> {
    anyhow::ensure!(!cluster.is_empty(), "a cluster of no nodes");
    let mut out = Vec::new();
    for &q in which {
        let sql = queries::query(q);
        let through = q % cluster.len();
        let (mut single_s, mut cluster_s) = (f64::MAX, f64::MAX);
        let (mut reference, mut answer) = (Vec::new(), Vec::new());
        for _ in 0..runs.max(1) {
            let started = Instant::now();
            reference = run_flight_at(single, sql).await?;
            single_s = single_s.min(started.elapsed().as_secs_f64());
            let started = Instant::now();
            answer = run_flight_at(cluster[through], sql)
                .await
                .map_err(|e| e.context(format!("query {q} through cluster node {}", through + 1)))?;
            cluster_s = cluster_s.min(started.elapsed().as_secs_f64());
        }
        let (a, b) = (canonical_rows(&reference)?, canonical_rows(&answer)?);
        out.push(Comparison { query: q, single_s, cluster_s, through, rows: a.len(), same_answer: a == b });
    }
    Ok(out)
}

/// Formats the comparisons as a table with the total ratio (cluster over single server).
pub fn render(results: &[Comparison]) -> String {
    let mut out = format!(
        "{:>5} {:>12} {:>12} {:>8} {:>8} {:>7} {:>6}\n",
        "query", "single (s)", "cluster (s)", "ratio", "through", "rows", "same"
    );
    let (mut single, mut cluster) = (0.0, 0.0);
    for c in results {
        single += c.single_s;
        cluster += c.cluster_s;
        out.push_str(&format!(
            "{:>5} {:>12.3} {:>12.3} {:>7.2}x {:>8} {:>7} {:>6}\n",
            c.query,
            c.single_s,
            c.cluster_s,
            c.cluster_s / c.single_s,
            format!("node {}", c.through + 1),
            c.rows,
            c.same_answer
        ));
    }
    out.push_str(&format!("{:>5} {single:>12.3} {cluster:>12.3} {:>7.2}x\n", "total", cluster / single));
    out
}

/// The text of EXPLAIN ANALYZE of TPC-H query `q` run through the node at `addr` (the plan column of its rows).
pub async fn explain_analyze(addr: SocketAddr, q: usize) -> anyhow::Result<String> {
    use arrow::array::{Array, AsArray};
    let batches = run_flight_at(addr, &format!("EXPLAIN ANALYZE {}", queries::query(q))).await?;
    let mut out = String::new();
    for b in &batches {
        let plans = b.column(b.num_columns() - 1);
        let plans = arrow::compute::cast(plans, &arrow::datatypes::DataType::Utf8)?;
        let plans = plans.as_string::<i32>();
        for i in 0..plans.len() {
            out.push_str(plans.value(i));
            out.push('\n');
        }
    }
    Ok(out)
}

/// Waits until the primaries of the cluster reached through `addr` reported the size of their shards (what the
/// planner weighs joins by), so that the first queries after the load are planned as the later ones: until every shard
/// has a report, or none came for `quiet` (the shards left are empty), or `patience` passed. Returns the shards
/// still without one.
pub async fn until_sizes_reported(
    addr: SocketAddr,
    quiet: std::time::Duration,
    patience: std::time::Duration,
) -> anyhow::Result<i64> {
    use arrow::array::AsArray;
    let started = Instant::now();
    let (mut last, mut changed) = (i64::MAX, Instant::now());
    loop {
        let sql = "SELECT count(*) FROM system.shards WHERE reported_hot_bytes = 0";
        let batches = run_flight_at(addr, sql).await?;
        let unreported = batches[0].column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0);
        if unreported != last {
            (last, changed) = (unreported, Instant::now());
        }
        if unreported == 0 || changed.elapsed() >= quiet || started.elapsed() >= patience {
            return Ok(unreported);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
