//! The `quiver` binary: parses the command line and calls the library. See `quiver --help`.

// tokio through madsim's facade, as in the library (an ordinary build gets tokio itself).
extern crate madsim_tokio as tokio;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quiver_node::cli::shell::{self, Target};
use quiver_node::config::{Config, Overrides};
use quiver_node::engine::{Engine, EngineOptions, StorageLocation};
use quiver_node::server::Server;
use quiver_node::{Quiver, cli};

/// Quiver: one database, embedded or served over Arrow Flight SQL and the PostgreSQL wire protocol.
#[derive(Debug, Parser)]
#[command(name = "quiver", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serves a data directory over Flight SQL, the PostgreSQL protocol and HTTP.
    Server {
        /// A TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The data directory (default ./quiver-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The Arrow Flight SQL endpoint, host:port (default 127.0.0.1:50051).
        #[arg(long)]
        flight_addr: Option<String>,
        /// The PostgreSQL endpoint, host:port (default 127.0.0.1:5433).
        #[arg(long)]
        pg_addr: Option<String>,
        /// The HTTP endpoint for /health, /ready and /metrics, host:port (default 127.0.0.1:9464).
        #[arg(long)]
        http_addr: Option<String>,
        /// This node's id in the cluster (1 or more; default 1).
        #[arg(long)]
        node_id: Option<u64>,
        /// The internal gRPC endpoint for Raft and node-to-node traffic, host:port (default 127.0.0.1:50052).
        #[arg(long)]
        grpc_addr: Option<String>,
        /// The internal address of a node of the cluster to join (repeat or separate with commas); without it a
        /// fresh node bootstraps a new cluster.
        #[arg(long, value_delimiter = ',')]
        join: Vec<String>,
        /// Where tiered (cold) data lives: file:///path, s3://bucket/prefix, gs://bucket/prefix or
        /// az://container/prefix (default: the directory `cold` in the data directory).
        #[arg(long)]
        cold_store: Option<String>,
        /// The directory --cold-store names is mounted by every node of the cluster at that path (cold.shared_dir).
        #[arg(long)]
        cold_shared_dir: bool,
        /// Turns authentication on and creates this superuser if no user of its name exists; its password comes
        /// from QUIVER_AUTH__ADMIN_PASSWORD or the file auth.admin_password_file names, never the command line.
        #[arg(long, value_name = "NAME")]
        init_admin: Option<String>,
        /// Serve on addresses other than loopback without authentication and TLS (a trusted network only); without
        /// it such a node refuses to start.
        #[arg(long)]
        insecure: bool,
    },
    /// Administers a cluster through any node's internal gRPC endpoint.
    Admin {
        /// A node's internal gRPC address, host:port.
        #[arg(long, default_value = "127.0.0.1:50052")]
        connect: String,
        /// A settings file whose `[cluster.tls]` (a certificate of the cluster CA) and `cluster.join_secret` are
        /// used to reach the node; the QUIVER_ environment variables count as for `quiver server`.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Runs SQL on a data directory (embedded) or a server (--connect); interactive without -c.
    Sql {
        /// The data directory to open in-process.
        #[arg(long, default_value = "./quiver-data", conflicts_with = "connect")]
        data_dir: PathBuf,
        /// A server's Flight SQL endpoint, e.g. 127.0.0.1:50051.
        #[arg(long)]
        connect: Option<String>,
        /// SQL to run (may be repeated); without it the shell is interactive.
        #[arg(short = 'c', long = "command")]
        commands: Vec<String>,
    },
    /// Creates a sample shop database, runs a few queries and prints the results.
    Demo {
        /// Where the demo database lives; its demo tables are re-created on every run.
        #[arg(long, default_value = "./quiver-demo")]
        data_dir: PathBuf,
    },
    /// Imports CSV, Parquet or JSON files into a table (created from the first file if missing).
    Import {
        /// The files.
        #[arg(required = true)]
        files: Vec<String>,
        /// The target table.
        #[arg(long)]
        table: String,
        /// The data directory.
        #[arg(long, default_value = "./quiver-data")]
        data_dir: PathBuf,
    },
}

/// The `quiver admin` subcommands.
#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Shows the leader, term, voters and learners, and each node's applied index and lag.
    Status,
    /// Admits a node (as a learner, promoted to voter while voters are fewer than configured) before it starts;
    /// start it with `--join` so that it waits to be admitted instead of bootstrapping a cluster of its own.
    Add {
        /// The node's id, unique in the cluster.
        node_id: u64,
        /// Its internal gRPC address, reachable from every node.
        #[arg(long)]
        grpc_addr: String,
        /// Its Arrow Flight SQL address, as clients reach it.
        #[arg(long, default_value = "")]
        flight_addr: String,
        /// Its PostgreSQL address, as clients reach it.
        #[arg(long, default_value = "")]
        pg_addr: String,
    },
    /// Removes a node from the cluster: drains it first (every shard replica it holds is copied to another node),
    /// waits for that, then takes it out of the metadata group.
    Remove {
        /// The node's id.
        node_id: u64,
        /// Remove it at once, without draining (a node that is gone for good: its replicas are made again from the
        /// other copies).
        #[arg(long)]
        now: bool,
        /// The longest to wait for the drain ("30m", "2h").
        #[arg(long, default_value = "1h")]
        timeout: quiver_node::config::Millis,
    },
    /// Drains a node: it gets no new shard replica, and each one it holds is copied to another node, then dropped
    /// from it. Progress shows in `status` (replicas column) and `system.nodes`.
    Drain {
        /// The node's id.
        node_id: u64,
        /// Stop draining: the node takes new replicas again (those moved stay where they are).
        #[arg(long)]
        cancel: bool,
        /// Wait until the node holds no replica.
        #[arg(long)]
        wait: bool,
        /// The longest to wait ("30m", "2h").
        #[arg(long, default_value = "1h")]
        timeout: quiver_node::config::Millis,
    },
    /// Shows the shard copy moves that would balance the nodes' hot data, and starts them (also with `[cluster]
    /// rebalance = false`) until the nodes are balanced. Progress shows in `system.shard_moves`.
    Rebalance {
        /// Only show the plan.
        #[arg(long)]
        dry_run: bool,
    },
    /// Moves the metadata leadership to another voter.
    TransferLeader {
        /// The voter that should lead.
        node_id: u64,
    },
    /// Makes the node build a metadata snapshot now and compact its log.
    Snapshot,
    /// Moves a table's hot rows on the node to the cold tier now.
    Tier {
        /// The table.
        #[arg(long)]
        table: String,
    },
    /// Merges a table's small cold files on the node into larger ones now.
    Compact {
        /// The table.
        #[arg(long)]
        table: String,
    },
    /// Lists every table's shards: slot ranges, primary, replicas, in-sync replicas, epoch and state.
    Shards,
    /// Deletes the cold tier's objects that no manifest reaches any more, now.
    Gc {
        /// Keep objects younger than this ("6h", "2d"); at least the node's cold.gc_grace, which is the default.
        #[arg(long)]
        grace: Option<quiver_node::config::Millis>,
    },
}

/// Reads the configuration file at `path`, if one is given: its name (for errors) and its text.
fn read_config_file(path: Option<&std::path::Path>) -> anyhow::Result<Option<(String, String)>> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the config file {}: {e}", path.display()))?;
    Ok(Some((path.display().to_string(), text)))
}

/// Starts logging to stderr with `filter` (the server's `log.filter`, settable as `QUIVER_LOG__FILTER`).
fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Server {
            config,
            data_dir,
            flight_addr,
            pg_addr,
            http_addr,
            node_id,
            grpc_addr,
            join,
            cold_store,
            cold_shared_dir,
            init_admin,
            insecure,
        } => {
            let file = read_config_file(config.as_deref())?;
            let overrides = Overrides {
                data_dir,
                flight_addr,
                pg_addr,
                http_addr,
                node_id,
                grpc_addr,
                join,
                cold_store,
                cold_shared_dir,
                init_admin,
                insecure,
            };
            let config =
                Config::load(file.as_ref().map(|(o, t)| (o.as_str(), t.as_str())), std::env::vars(), &overrides)?;
            init_logging(&config.log.filter);
            let server = Server::bind(config).await?;
            server.run(shutdown_signal()).await?;
        }
        Command::Admin { connect, config, command } => {
            init_logging("warn");
            // The node's own settings file (and QUIVER_ variables) say how to reach it: [cluster.tls], join_secret.
            let file = read_config_file(config.as_deref())?;
            let config = Config::load(
                file.as_ref().map(|(o, t)| (o.as_str(), t.as_str())),
                std::env::vars(),
                &Overrides::default(),
            )?;
            let connect = cli::admin::Target::from_config(&connect, &config)?;
            let text = match command {
                AdminCommand::Status => cli::admin::status(connect).await?,
                AdminCommand::Add { node_id, grpc_addr, flight_addr, pg_addr } => {
                    cli::admin::add(connect, node_id, grpc_addr, flight_addr, pg_addr).await?
                }
                AdminCommand::Remove { node_id, now, timeout } => {
                    cli::admin::remove(connect, node_id, (!now).then(|| timeout.duration())).await?
                }
                AdminCommand::Drain { node_id, cancel, wait, timeout } => {
                    cli::admin::drain(connect, node_id, cancel, wait.then(|| timeout.duration())).await?
                }
                AdminCommand::Rebalance { dry_run } => cli::admin::rebalance(connect, dry_run).await?,
                AdminCommand::TransferLeader { node_id } => cli::admin::transfer_leader(connect, node_id).await?,
                AdminCommand::Snapshot => cli::admin::snapshot(connect).await?,
                AdminCommand::Tier { table } => cli::admin::tier(connect, &table).await?,
                AdminCommand::Compact { table } => cli::admin::compact(connect, &table).await?,
                AdminCommand::Shards => cli::admin::shards(connect).await?,
                AdminCommand::Gc { grace } => cli::admin::gc(connect, grace.map(|g| g.duration())).await?,
            };
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
        }
        Command::Sql { data_dir, connect, commands } => {
            init_logging("warn");
            let mut target = match connect {
                Some(url) => Target::connect(&url).await?,
                None => {
                    Target::Embedded(Engine::open(StorageLocation::Path(data_dir), EngineOptions::default()).await?)
                }
            };
            if commands.is_empty() {
                shell::interactive(target).await?;
            } else {
                for sql in commands {
                    println!("{}", target.run(&sql).await?);
                }
            }
        }
        Command::Demo { data_dir } => {
            init_logging("warn");
            let db = Quiver::open(&data_dir).await?;
            db.sql("DROP TABLE IF EXISTS orders; DROP TABLE IF EXISTS customers").await?;
            println!("Quiver demo: an embedded database in {}\n", data_dir.display());
            print!("{}", cli::demo::run(&db).await?);
        }
        Command::Import { files, table, data_dir } => {
            init_logging("warn");
            let engine = Engine::open(StorageLocation::Path(data_dir), EngineOptions::default()).await?;
            let rows = cli::import::import(&engine, &table, &files, true).await?;
            println!("imported {rows} rows into {table}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<quiver_node::Error>() {
                Some(q) => eprintln!("error: {}", q.report()),
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
