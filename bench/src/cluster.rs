//! The cluster data path against a single node, in one run: bulk ingest of TPC-H `lineitem` over Flight SQL DoPut
//! and single-row `INSERT` latency over the PostgreSQL gateway, each through one node of a loopback cluster of
//! three servers whose tables keep two copies of every shard, and through a single server.
//!
//! Every server is a full `quiver server` in this process (RocksDB synced on commit, Raft and shard replication
//! over gRPC on loopback). In the cluster an acknowledged write is durable on both copies of its shard; a statement
//! spanning shards is also recorded in the metadata group. The single server is the reference: the ratios say what
//! replication and routing cost.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::data::Table;
use crate::harness::{Running, pg_client_at};
use crate::ingest;

/// What one deployment measured.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Which deployment.
    pub deployment: String,
    /// The bulk load.
    pub ingest: ingest::Measurement,
    /// Single-row INSERT latencies, sorted ascending.
    pub inserts: Vec<Duration>,
}

impl Measurement {
    /// The INSERT latency at quantile `q` (0..=1), nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        crate::latency::quantile(&self.inserts, q)
    }
}

/// The options of the benchmark's tables: sharded by order key (so a load spans every shard), with `replicas`
/// copies when given.
fn with(shard_key: &str, replicas: Option<u64>) -> String {
    match replicas {
        Some(r) => format!(" WITH (shard_key = '{shard_key}', replicas = {r})"),
        None => format!(" WITH (shard_key = '{shard_key}')"),
    }
}

/// Loads `lineitem` and makes `inserts` single-row INSERTs, one at a time, through the node at `(flight, pg)`.
async fn measure(
    deployment: &str,
    (flight, pg): (SocketAddr, SocketAddr),
    lineitem: &Table,
    inserts: usize,
    replicas: Option<u64>,
) -> anyhow::Result<Measurement> {
    let client = pg_client_at(pg).await?;
    client.batch_execute(&format!("{}{}", ingest::lineitem_ddl("lineitem"), with("l_orderkey", replicas))).await?;
    let ingest = ingest::via_flight_at(flight, lineitem, "lineitem", "Flight SQL DoPut").await?;
    let expected = lineitem.batches.iter().map(|b| b.num_rows() as i64).sum::<i64>();
    let counted: i64 = client.query_one("SELECT count(*) FROM lineitem", &[]).await?.get(0);
    anyhow::ensure!(counted == expected, "{deployment}: lineitem holds {counted} rows, {expected} were loaded");
    client
        .batch_execute(&format!("CREATE TABLE points (id BIGINT PRIMARY KEY, v BIGINT){}", with("id", replicas)))
        .await?;
    let mut latencies = Vec::with_capacity(inserts);
    for i in 0..inserts {
        let at = Instant::now();
        client.batch_execute(&format!("INSERT INTO points VALUES ({i}, {})", i * 7)).await?;
        latencies.push(at.elapsed());
    }
    let counted: i64 = client.query_one("SELECT count(*) FROM points", &[]).await?.get(0);
    anyhow::ensure!(counted == inserts as i64, "{deployment}: points holds {counted} rows, {inserts} were inserted");
    latencies.sort();
    Ok(Measurement { deployment: deployment.into(), ingest, inserts: latencies })
}

/// Runs the benchmark on a single server, then on a three-node cluster with two copies of every shard, under `dir`.
pub async fn run(dir: &Path, lineitem: &Table, inserts: usize) -> anyhow::Result<Vec<Measurement>> {
    let server = Running::start(&dir.join("single")).await?;
    let single = measure("single node", (server.flight, server.pg), lineitem, inserts, None).await;
    server.stop().await;
    let cluster = crate::meta::Cluster::start(&dir.join("cluster"), 3).await?;
    let replicated = measure("3 nodes, R = 2", cluster.addrs(0), lineitem, inserts, Some(2)).await;
    cluster.stop().await;
    Ok(vec![single?, replicated?])
}

/// Formats measurements as a table, each with its ratios against the first (the reference).
pub fn render(results: &[Measurement]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut out = format!(
        "{:<16} {:>10} {:>8} {:>12} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}\n",
        "deployment", "rows", "seconds", "rows/s", "vs ref", "inserts", "p50 ms", "vs ref", "p99 ms", "vs ref"
    );
    let Some(reference) = results.first() else { return out };
    for m in results {
        out.push_str(&format!(
            "{:<16} {:>10} {:>8.2} {:>12.0} {:>7.2}x {:>8} {:>9.2} {:>8.2}x {:>9.2} {:>8.2}x\n",
            m.deployment,
            m.ingest.rows,
            m.ingest.seconds,
            m.ingest.rows_per_s(),
            m.ingest.rows_per_s() / reference.ingest.rows_per_s(),
            m.inserts.len(),
            ms(m.quantile(0.5)),
            ms(m.quantile(0.5)) / ms(reference.quantile(0.5)),
            ms(m.quantile(0.99)),
            ms(m.quantile(0.99)) / ms(reference.quantile(0.99)),
        ));
    }
    out
}
