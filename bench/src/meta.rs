//! Metadata proposal throughput and latency on a loopback cluster of `quiver server` nodes in this process.
//!
//! Each node is a full server ([`Server::bind`] with `--join`): its Raft log and snapshots are synced to its own
//! RocksDB directory, and Raft travels over the real gRPC transport on loopback. Proposals are made through
//! [`MetaNode::propose`] by `concurrency` tasks, each waiting for its proposal to be committed and applied before
//! making the next, either on the leader or on a follower (which forwards them to the leader over gRPC).
//!
//! Two commands are measured: `heartbeat` (a node heartbeat: a constant-size state change) and `create-table` (a
//! `CREATE TABLE` of a new name: the catalog grows, so snapshots grow too).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arrow::datatypes::DataType;
use quiver_meta::{CatalogCommand, ColumnDef, MetaCommand, MetaNode, NodeRole, TableKind};
use quiver_node::config::{Config, Overrides};
use quiver_node::server::Server;

/// Which command the proposals carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// A node heartbeat (constant-size state).
    Heartbeat,
    /// CREATE TABLE of a new table (growing state).
    CreateTable,
}

/// Which replica the proposals are made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The leader itself.
    Leader,
    /// A follower, which forwards to the leader.
    Follower,
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// The command proposed.
    pub workload: Workload,
    /// Where proposals were made.
    pub origin: Origin,
    /// Concurrent proposers.
    pub concurrency: usize,
    /// Proposals committed and applied.
    pub proposals: usize,
    /// Wall-clock seconds for all of them.
    pub seconds: f64,
    /// Latencies, sorted ascending.
    pub latencies: Vec<Duration>,
}

impl Measurement {
    /// Proposals per second.
    pub fn per_second(&self) -> f64 {
        self.proposals as f64 / self.seconds
    }

    /// The latency at quantile `q` (0..=1), nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1]
    }
}

/// A running loopback cluster.
pub struct Cluster {
    nodes: Vec<(MetaNode, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    /// Each node's Flight SQL and PostgreSQL addresses, in node order.
    addrs: Vec<(std::net::SocketAddr, std::net::SocketAddr)>,
}

impl Cluster {
    /// Starts `count` servers under `dir`: node 1 bootstraps, the others join through it. Returns once every node is
    /// a member and the cluster has `min(count, 3)` voters.
    pub async fn start(dir: &Path, count: u64) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        let mut seed = None;
        for id in 1..=count {
            let overrides = Overrides {
                node_id: Some(id),
                join: seed.iter().cloned().collect(),
                // One directory for every node's cold tier, as a shared bucket would be.
                cold_store: Some(format!("file://{}", dir.join("cold").display())),
                cold_shared_dir: true,
                ..Overrides::loopback(dir.join(format!("node{id}")))
            };
            let config = Config::load(None, Vec::new(), &overrides)?;
            let server = Server::bind(config).await.with_context(|| format!("start node {id}"))?;
            let meta = server.engine().meta().clone();
            addrs.push((server.flight_addr(), server.pg_addr()));
            if seed.is_none() {
                seed = server.grpc_addr().map(|a| a.to_string());
            }
            let (tx, task) = crate::harness::run_in_background(server);
            nodes.push((meta, tx, task));
        }
        let cluster = Cluster { nodes, addrs };
        let want = count.min(3) as usize;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = cluster.nodes[0].0.status();
            let voters = status.members.iter().filter(|m| m.role == NodeRole::Voter).count();
            if status.members.len() == count as usize && voters == want && cluster.leader().is_some() {
                return Ok(cluster);
            }
            anyhow::ensure!(Instant::now() < deadline, "the cluster did not form: {status:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Returns the leader's replica, when every node agrees on one.
    fn leader(&self) -> Option<&MetaNode> {
        let id = self.nodes[0].0.status().leader_id?;
        self.nodes.iter().all(|(m, ..)| m.status().leader_id == Some(id)).then_some(())?;
        self.nodes.iter().map(|(m, ..)| m).find(|m| m.node_id() == id)
    }

    /// Returns a replica of the given origin.
    pub fn replica(&self, origin: Origin) -> anyhow::Result<&MetaNode> {
        let leader = self.leader().context("no agreed leader")?;
        Ok(match origin {
            Origin::Leader => leader,
            Origin::Follower => {
                self.nodes.iter().map(|(m, ..)| m).find(|m| m.node_id() != leader.node_id()).context("no follower")?
            }
        })
    }

    /// Node `index`'s (from 0) Flight SQL and PostgreSQL addresses.
    pub fn addrs(&self, index: usize) -> (std::net::SocketAddr, std::net::SocketAddr) {
        self.addrs[index]
    }

    /// Returns every node's replica.
    pub fn replicas(&self) -> impl Iterator<Item = &MetaNode> {
        self.nodes.iter().map(|(m, ..)| m)
    }

    /// Stops every node and waits for them.
    pub async fn stop(self) {
        for (_, tx, task) in self.nodes {
            let _ = tx.send(());
            let _ = task.await;
        }
    }
}

fn command(workload: Workload, origin: Origin, concurrency: usize, task: usize, n: usize) -> MetaCommand {
    match workload {
        Workload::Heartbeat => MetaCommand::Heartbeat { node_id: 1, at: (task * 1_000_000 + n) as u64 },
        Workload::CreateTable => MetaCommand::Catalog {
            command: CatalogCommand::CreateTable {
                name: format!("bench_{origin:?}_c{concurrency}_{task}_{n}").to_lowercase(),
                columns: vec![
                    ColumnDef { name: "id".into(), data_type: DataType::Int64, nullable: false },
                    ColumnDef { name: "at".into(), data_type: DataType::Int64, nullable: false },
                    ColumnDef { name: "v".into(), data_type: DataType::Utf8, nullable: true },
                ],
                primary_key: vec!["id".into()],
                kind: TableKind::Native,
                options: Default::default(),
                sharding: Default::default(),
                if_not_exists: false,
            },
        },
    }
}

/// Makes `proposals` proposals of `workload` on `origin` from `concurrency` tasks and measures them. Every proposal
/// must be accepted (a rejection or an error fails the run).
pub async fn measure(
    cluster: &Cluster,
    workload: Workload,
    origin: Origin,
    proposals: usize,
    concurrency: usize,
) -> anyhow::Result<Measurement> {
    let node = cluster.replica(origin)?.clone();
    let concurrency = concurrency.max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        let node = node.clone();
        let count = proposals / concurrency + usize::from(task < proposals % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            for n in 0..count {
                let at = Instant::now();
                let response = node.propose(command(workload, origin, concurrency, task, n)).await?;
                latencies.push(at.elapsed());
                response.into_result().map_err(|r| anyhow::anyhow!("proposal rejected: {r:?}"))?;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(proposals);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    Ok(Measurement { workload, origin, concurrency, proposals: latencies.len(), seconds, latencies })
}

/// Formats measurements as a table.
pub fn render(results: &[Measurement]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut out = format!(
        "{:<13} {:<9} {:>5} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9}\n",
        "command", "on", "conc", "proposals", "per s", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for m in results {
        out.push_str(&format!(
            "{:<13} {:<9} {:>5} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}\n",
            format!("{:?}", m.workload).to_lowercase(),
            format!("{:?}", m.origin).to_lowercase(),
            m.concurrency,
            m.proposals,
            m.per_second(),
            ms(m.quantile(0.5)),
            ms(m.quantile(0.9)),
            ms(m.quantile(0.99)),
            ms(m.quantile(1.0)),
        ));
    }
    out
}

/// Runs every workload from the leader and from a follower at each concurrency on a fresh `nodes`-node cluster.
pub async fn run(
    dir: &Path,
    nodes: u64,
    proposals: usize,
    concurrencies: &[usize],
    workloads: &[Workload],
) -> anyhow::Result<Vec<Measurement>> {
    let cluster = Cluster::start(dir, nodes).await?;
    let mut results = Vec::new();
    for &workload in workloads {
        for &concurrency in concurrencies {
            for origin in [Origin::Leader, Origin::Follower] {
                results.push(measure(&cluster, workload, origin, proposals, concurrency).await?);
            }
        }
    }
    cluster.stop().await;
    Ok(results)
}
