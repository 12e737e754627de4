//! `quiver-bench`: see the library docs. Run `quiver-bench --help`.

use clap::{Parser, Subcommand};
use quiver_bench::postgres::PostgresServer;
use quiver_bench::{
    cluster, cluster_tpch, data, duckdb, harness::Running, ingest, latency, meta, processes, s3, tier, tpch,
};

#[derive(Debug, Parser)]
#[command(name = "quiver-bench", about = "Benchmarks that drive a real Quiver server")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bulk-loads TPC-H lineitem over Flight SQL DoPut and PostgreSQL COPY, durable; rows/s against PostgreSQL's
    /// COPY of the same CSV and DuckDB's load of the same rows from Parquet, in the same run.
    Ingest {
        /// TPC-H scale factor (1 = 6M lineitem rows).
        #[arg(long, default_value_t = 1.0)]
        sf: f64,
        #[command(flatten)]
        references: References,
    },
    /// Runs the 22 TPC-H queries over Flight SQL on Quiver's tables, in DuckDB (its own tables and the Parquet
    /// files) and in DataFusion on Parquet; the median of each query's runs, ratios, answers compared.
    Tpch {
        #[command(flatten)]
        tpch: TpchArgs,
        /// Skip DuckDB (no `pip install duckdb` needed).
        #[arg(long)]
        no_duckdb: bool,
    },
    /// Small-statement latency (SELECT 1, primary-key point lookup, durable single-row INSERT; p50/p99) over the
    /// PostgreSQL protocol and Flight SQL, concurrent single-row writers (rows/s), and SELECT 1 while a Q1 loop and
    /// a bulk ingest run; against PostgreSQL in the same run. Runs `quiver server` as a process: build it first
    /// (`cargo build --release -p quiver-node`).
    Latency {
        /// Timed statements per measurement.
        #[arg(long, default_value_t = 2000)]
        statements: usize,
        /// Rows in the point-lookup table.
        #[arg(long, default_value_t = 100_000)]
        lookup_rows: usize,
        /// Concurrent single-row writers.
        #[arg(long, default_value_t = 64)]
        writers: usize,
        /// INSERTs per concurrent writer.
        #[arg(long, default_value_t = 200)]
        per_writer: usize,
        /// TPC-H scale factor of the lineitem used by the loaded phase (0 skips that phase).
        #[arg(long, default_value_t = 0.1)]
        load_sf: f64,
        /// Skip the PostgreSQL reference.
        #[arg(long)]
        no_postgres: bool,
    },
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

/// The same-run references of a load.
#[derive(Debug, clap::Args)]
struct References {
    /// A running PostgreSQL server to load the same CSV into with COPY (e.g. "host=127.0.0.1 user=postgres"); by
    /// default the bench starts its own (Debian's PostgreSQL) in a temporary directory.
    #[arg(long)]
    postgres: Option<String>,
    /// Skip the PostgreSQL reference.
    #[arg(long)]
    no_postgres: bool,
    /// Skip the DuckDB reference (no `pip install duckdb` needed).
    #[arg(long)]
    no_duckdb: bool,
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
        Command::Ingest { sf, references } => {
            eprintln!("generating lineitem at SF {sf} …");
            let table = data::lineitem(sf);
            let csv = ingest::to_csv(&table.batches)?;
            let server = Running::start(&dir.path().join("quiver")).await?;
            let mut results = vec![ingest::via_flight(&server, &table, "lineitem_flight").await?];
            let pg = server.pg_client().await?;
            pg.batch_execute(&ingest::lineitem_ddl("lineitem_copy")).await?;
            results.push(ingest::via_copy(&pg, &csv, "lineitem_copy", "Quiver PostgreSQL COPY").await?);
            server.stop().await;
            let mut started = None;
            let conninfo = match (&references.postgres, references.no_postgres) {
                (Some(conn), _) => Some(conn.clone()),
                (None, true) => None,
                (None, false) => {
                    let pg = PostgresServer::start(&dir.path().join("postgres"))?;
                    eprintln!("reference: {}", pg.version);
                    let conninfo = pg.conninfo();
                    started = Some(pg);
                    Some(conninfo)
                }
            };
            if let Some(conn) = conninfo {
                let client = latency::pg_connect(&conn).await?;
                client.batch_execute("DROP TABLE IF EXISTS quiver_bench_lineitem").await?;
                client.batch_execute(&ingest::lineitem_ddl("quiver_bench_lineitem")).await?;
                results.push(ingest::via_copy(&client, &csv, "quiver_bench_lineitem", ingest::POSTGRES).await?);
                client.batch_execute("DROP TABLE quiver_bench_lineitem").await?;
            }
            drop(started);
            if !references.no_duckdb {
                let parquet = dir.path().join("lineitem.parquet");
                ingest::write_parquet(&table.batches, &parquet)?;
                let load = duckdb::ingest(dir.path(), &parquet)?;
                eprintln!("reference: DuckDB {}", load.version);
                anyhow::ensure!(load.rows as usize == table.rows(), "DuckDB loaded {} rows", load.rows);
                results.push(ingest::Measurement {
                    path: ingest::DUCKDB.into(),
                    rows: load.rows,
                    seconds: load.seconds,
                });
            }
            print!("{}", ingest::render(&results));
        }
        Command::Tpch { tpch: args, no_duckdb } => {
            let (sf, runs, which) = (args.sf, args.runs, args.queries());
            eprintln!("generating TPC-H at SF {sf} …");
            let tables = data::all(sf);
            let parquet = dir.path().join("parquet");
            std::fs::create_dir_all(&parquet)?;
            let ctx = tpch::parquet_context(&parquet, &tables).await?;
            let reference = if no_duckdb {
                None
            } else {
                eprintln!("running the queries in DuckDB …");
                let texts: Vec<(usize, &str)> = which.iter().map(|&q| (q, quiver_bench::queries::query(q))).collect();
                let d = duckdb::tpch(dir.path(), &parquet, &texts, runs)?;
                eprintln!("reference: DuckDB {} (load into its tables {:.2} s)", d.version, d.load_s);
                Some(d)
            };
            let server = Running::start(&dir.path().join("quiver")).await?;
            let started = std::time::Instant::now();
            tpch::load_quiver(&server, &tables).await?;
            eprintln!("loaded Quiver's tables in {:.2} s", started.elapsed().as_secs_f64());
            drop(tables);
            let timings = tpch::run_all(&server, &ctx, &which, runs, reference.as_ref()).await?;
            server.stop().await;
            print!("{}", tpch::render(&timings));
        }
        Command::Latency { statements, lookup_rows, writers, per_writer, load_sf, no_postgres } => {
            let plan = latency::Plan { statements, lookup_rows, writers, per_writer };
            let binary = processes::quiver_binary()?;
            let mut results = Vec::new();
            let mut loaded = None;
            {
                let quiver = processes::ProcessCluster::start(&binary, &dir.path().join("quiver"), 1, &[]).await?;
                let node = &quiver.nodes[0];
                let conninfo = format!("host={} port={} user=quiver", node.pg.ip(), node.pg.port());
                eprintln!("measuring Quiver over the PostgreSQL protocol …");
                results.extend(latency::over_pg("Quiver pg", &conninfo, &plan).await?);
                eprintln!("measuring Quiver over Flight SQL …");
                results.extend(latency::over_flight(node.flight, &conninfo, &plan).await?);
                if load_sf > 0.0 {
                    eprintln!("measuring SELECT 1 under a Q1 loop and a bulk ingest (lineitem SF {load_sf}) …");
                    let table = data::lineitem(load_sf);
                    let pg = latency::pg_connect(&conninfo).await?;
                    pg.batch_execute(&ingest::lineitem_ddl("lineitem")).await?;
                    ingest::via_flight_at(node.flight, &table, "lineitem", "load").await?;
                    loaded = Some(latency::under_load(node.flight, &conninfo, &table, statements).await?);
                }
            }
            if !no_postgres {
                let pg = PostgresServer::start(&dir.path().join("postgres"))?;
                eprintln!("measuring the reference, {} …", pg.version);
                results.extend(latency::over_pg("PostgreSQL", &pg.conninfo(), &plan).await?);
            }
            print!("{}", latency::render(&results, "PostgreSQL"));
            if let Some((m, loops, rows)) = loaded {
                let quiet = results.iter().find(|r| r.system == "Quiver pg" && r.what == "SELECT 1");
                println!(
                    "SELECT 1 over pg while {loops} Q1 runs and {rows} ingested rows ran: p50 {:.3} ms, p99 {:.3} ms \
                     (quiet: p99 {:.3} ms)",
                    m.quantile(0.5).as_secs_f64() * 1e3,
                    m.quantile(0.99).as_secs_f64() * 1e3,
                    quiet.map_or(0.0, |q| q.quantile(0.99).as_secs_f64() * 1e3),
                );
            }
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
