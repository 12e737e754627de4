//! `quiver-bench`: see the library docs. Run `quiver-bench --help`.

use clap::{Parser, Subcommand};
use quiver_bench::{cluster, cluster_tpch, data, harness::Running, ingest, meta, processes, s3, tier, tpch};

#[derive(Debug, Parser)]
#[command(name = "quiver-bench", about = "Benchmarks that drive a real Quiver server")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bulk-loads TPC-H lineitem over Flight SQL DoPut and PostgreSQL COPY; rows/s.
    Ingest {
        /// TPC-H scale factor (1 = 6M lineitem rows).
        #[arg(long, default_value_t = 1.0)]
        sf: f64,
        /// A PostgreSQL server to load the same CSV into with COPY, as the reference
        /// (e.g. "host=/var/run/postgresql user=postgres").
        #[arg(long)]
        postgres: Option<String>,
    },
    /// Runs the 22 TPC-H queries over Flight SQL and in DataFusion on Parquet; seconds and ratios.
    Tpch(TpchArgs),
    /// TPC-H with every table tiered to a local directory and to a loopback S3 server (moto), after a restart and
    /// warm, beside the hot store; seconds, ratios and GET requests.
    Tier {
        #[command(flatten)]
        tpch: TpchArgs,
        /// Skip the S3 store (no python3 -m moto.server needed).
        #[arg(long)]
        no_s3: bool,
    },
    /// Metadata proposals on a loopback cluster of servers (Raft over gRPC, logs synced to RocksDB); per second
    /// and p50/p90/p99 latency, from the leader and from a follower.
    Meta {
        /// Servers in the cluster (the first three are voters).
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Proposals per measurement.
        #[arg(long, default_value_t = 2000)]
        proposals: usize,
        /// Concurrent proposers (comma-separated: one measurement each).
        #[arg(long, value_delimiter = ',', default_values_t = [1, 16])]
        concurrency: Vec<usize>,
        /// Commands to propose (comma-separated).
        #[arg(long, value_delimiter = ',', value_enum, default_values_t = [meta::Workload::Heartbeat, meta::Workload::CreateTable])]
        workload: Vec<meta::Workload>,
    },
    /// Bulk ingest (lineitem over Flight SQL DoPut) and single-row INSERT p50/p99 through one node of a loopback
    /// cluster of three servers with two copies of every shard, against a single server; ratios.
    Cluster {
        /// TPC-H scale factor of the lineitem load (1 = 6M rows).
        #[arg(long, default_value_t = 1.0)]
        sf: f64,
        /// Single-row INSERTs per deployment.
        #[arg(long, default_value_t = 2000)]
        inserts: usize,
    },
    /// The 22 TPC-H queries over Flight SQL through a cluster of three `quiver server` processes (tables sharded
    /// over every node) and on one `quiver server` process; every answer compared, seconds and ratios.
    ClusterTpch {
        #[command(flatten)]
        tpch: TpchArgs,
        /// Nodes in the cluster.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Also print each query's EXPLAIN ANALYZE through the cluster: its stages, the tasks on each node, and the
        /// rows, bytes and time of each operator.
        #[arg(long)]
        explain: bool,
        /// How the cluster's nodes compress rows shipped between stages (`[cluster] shuffle_compression`).
        #[arg(long, default_value = "none", value_parser = ["lz4", "zstd", "none"])]
        shuffle_compression: String,
    },
}

/// What a TPC-H run takes: scale, runs per query (the best is reported; for `tier`, the hot and the warm runs),
/// and which queries.
#[derive(Debug, clap::Args)]
struct TpchArgs {
    /// TPC-H scale factor.
    #[arg(long, default_value_t = 1.0)]
    sf: f64,
    /// Runs per query; the best is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Only these queries (comma-separated numbers; all 22 when none).
    #[arg(long, value_delimiter = ',')]
    queries: Vec<usize>,
}

impl TpchArgs {
    fn queries(&self) -> Vec<usize> {
        if self.queries.is_empty() { (1..=22).collect() } else { self.queries.clone() }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    match args.command {
        Command::Ingest { sf, postgres } => {
            eprintln!("generating lineitem at SF {sf} …");
            let table = data::lineitem(sf);
            let csv = ingest::to_csv(&table.batches)?;
            let server = Running::start(&dir.path().join("quiver")).await?;
            let mut results = vec![ingest::via_flight(&server, &table, "lineitem_flight").await?];
            let pg = server.pg_client().await?;
            pg.batch_execute(&ingest::lineitem_ddl("lineitem_copy")).await?;
            results.push(ingest::via_copy(&pg, &csv, "lineitem_copy", "Quiver PostgreSQL COPY").await?);
            if let Some(conn) = postgres {
                let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                client.batch_execute("DROP TABLE IF EXISTS quiver_bench_lineitem").await?;
                client.batch_execute(&ingest::lineitem_ddl("quiver_bench_lineitem")).await?;
                results.push(
                    ingest::via_copy(&client, &csv, "quiver_bench_lineitem", "PostgreSQL COPY (reference)").await?,
                );
                client.batch_execute("DROP TABLE quiver_bench_lineitem").await?;
            }
            server.stop().await;
            let reference = results.iter().find(|m| m.path.contains("reference")).map(ingest::Measurement::rows_per_s);
            println!("{:<32} {:>12} {:>10} {:>14} {:>10}", "path", "rows", "seconds", "rows/s", "vs ref");
            for m in &results {
                let ratio = reference.map(|r| format!("{:.2}x", m.rows_per_s() / r)).unwrap_or_else(|| "-".into());
                println!("{:<32} {:>12} {:>10.2} {:>14.0} {:>10}", m.path, m.rows, m.seconds, m.rows_per_s(), ratio);
            }
        }
        Command::Tpch(args) => {
            let (sf, runs, which) = (args.sf, args.runs, args.queries());
            eprintln!("generating TPC-H at SF {sf} …");
            let tables = data::all(sf);
            let server = Running::start(&dir.path().join("quiver")).await?;
            tpch::load_quiver(&server, &tables).await?;
            let ctx = tpch::parquet_context(dir.path(), &tables).await?;
            drop(tables);
            let timings = tpch::run_all(&server, &ctx, &which, runs).await?;
            server.stop().await;
            println!(
                "{:>5} {:>12} {:>14} {:>8} {:>7} {:>6}",
                "query", "quiver (s)", "datafusion (s)", "ratio", "rows", "same"
            );
            let (mut q, mut d) = (0.0, 0.0);
            for t in &timings {
                q += t.quiver_s;
                d += t.datafusion_s;
                println!(
                    "{:>5} {:>12.3} {:>14.3} {:>7.2}x {:>7} {:>6}",
                    t.query,
                    t.quiver_s,
                    t.datafusion_s,
                    t.quiver_s / t.datafusion_s,
                    t.rows,
                    t.same_answer
                );
            }
            println!("{:>5} {q:>12.3} {d:>14.3} {:>7.2}x", "total", q / d);
        }
        Command::Tier { tpch: args, no_s3 } => {
            let (sf, runs, which) = (args.sf, args.runs, args.queries());
            eprintln!("generating TPC-H at SF {sf} …");
            let tables = data::all(sf);
            let local =
                tier::run_store(&dir.path().join("local"), "local directory", None, &tables, &which, runs).await?;
            print!("{}", tier::render(&local));
            if !no_s3 {
                let server = s3::S3Server::start();
                server.create_bucket("quiver-bench");
                let cold = server.cold_config("s3://quiver-bench/warehouse");
                let label = format!("S3 (moto at {})", server.endpoint);
                let run = tier::run_store(&dir.path().join("s3"), &label, Some(cold), &tables, &which, runs).await?;
                print!("{}", tier::render(&run));
            }
        }
        Command::Cluster { sf, inserts } => {
            eprintln!("generating lineitem at SF {sf} …");
            let table = data::lineitem(sf);
            let results = cluster::run(dir.path(), &table, inserts).await?;
            print!("{}", cluster::render(&results));
        }
        Command::ClusterTpch { tpch: args, nodes, explain, shuffle_compression } => {
            let (sf, runs, which) = (args.sf, args.runs, args.queries());
            let binary = processes::quiver_binary()?;
            eprintln!("generating TPC-H at SF {sf} …");
            let tables = data::all(sf);
            let single = processes::ProcessCluster::start(&binary, &dir.path().join("single"), 1, &[]).await?;
            let env = [("QUIVER_CLUSTER__SHUFFLE_COMPRESSION", shuffle_compression.as_str())];
            let cluster = processes::ProcessCluster::start(&binary, &dir.path().join("cluster"), nodes, &env).await?;
            eprintln!("loading the single node and the {nodes}-node cluster …");
            let reference = &single.nodes[0];
            tpch::load_over_flight(reference.flight, reference.pg, &tables, false).await?;
            tpch::load_over_flight(cluster.nodes[0].flight, cluster.nodes[0].pg, &tables, true).await?;
            drop(tables);
            let (quiet, patience) = (std::time::Duration::from_secs(12), std::time::Duration::from_secs(60));
            let unreported = cluster_tpch::until_sizes_reported(cluster.nodes[0].flight, quiet, patience).await?;
            eprintln!("shard sizes reported ({unreported} shards without rows or a report)");
            let through: Vec<_> = cluster.nodes.iter().map(|n| n.flight).collect();
            let results = cluster_tpch::compare(reference.flight, &through, &which, runs).await?;
            if explain {
                for &q in &which {
                    println!("-- query {q}, EXPLAIN ANALYZE through cluster node {}", q % through.len() + 1);
                    println!("{}", cluster_tpch::explain_analyze(through[q % through.len()], q).await?);
                }
            }
            print!("{}", cluster_tpch::render(&results));
            anyhow::ensure!(results.iter().all(|c| c.same_answer), "the cluster answered differently");
        }
        Command::Meta { nodes, proposals, concurrency, workload } => {
            let results = meta::run(dir.path(), nodes, proposals, &concurrency, &workload).await?;
            print!("{}", meta::render(&results));
        }
    }
    Ok(())
}
