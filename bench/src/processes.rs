//! A cluster of `quiver server` processes on loopback: separate processes, each with its own data directory, joined
//! through the first one, tiering to one directory as to a shared bucket. For tests and benchmarks that must not
//! share a process (and its runtime) between nodes.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The last lines a server logged, kept for error messages.
type Log = Arc<Mutex<VecDeque<String>>>;
const LOG_LINES_KEPT: usize = 40;

/// Returns the `quiver` binary built beside the running executable (a test's or the bench's), as cargo lays out a
/// target directory: `target/<profile>/quiver`, with test executables in `target/<profile>/deps`.
pub fn quiver_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("the executable has no directory")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("deps has no parent")?;
    }
    let binary = dir.join("quiver");
    anyhow::ensure!(binary.exists(), "{} is missing: build it first (cargo build -p quiver-node)", binary.display());
    Ok(binary)
}

/// One running server process.
pub struct ServerProcess {
    /// Its node id.
    pub id: u64,
    /// Its internal gRPC address (Raft, shard replication, the query workers).
    pub grpc: String,
    /// Its Flight SQL address.
    pub flight: SocketAddr,
    /// Its PostgreSQL gateway address.
    pub pg: SocketAddr,
    child: Child,
    log: Log,
}

impl ServerProcess {
    /// Returns the last lines it logged.
    pub fn log_tail(&self) -> String {
        self.log.lock().map(|l| l.iter().cloned().collect::<Vec<_>>().join("\n")).unwrap_or_default()
    }

    /// Kills it (SIGKILL) and waits for it to exit.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// Returns a loopback address with a port free now.
pub fn free_addr() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// Reads `key=ADDR` out of a log line.
fn field(line: &str, key: &str) -> Option<SocketAddr> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse().ok())
}

/// Starts `quiver server` as node `id` with its data in `dir`, joining through `join` when given, with `env` set
/// (e.g. `QUIVER_CLUSTER__…` settings); returns once it serves.
pub async fn spawn(
    binary: &Path,
    id: u64,
    dir: &Path,
    cold: &Path,
    join: Option<&str>,
    env: &[(&str, &str)],
) -> anyhow::Result<ServerProcess> {
    let grpc = free_addr()?;
    let mut command = Command::new(binary);
    command
        .args(["server", "--data-dir"])
        .arg(dir)
        .args(["--node-id", &id.to_string(), "--grpc-addr", &grpc])
        .args(["--flight-addr", "127.0.0.1:0", "--pg-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .arg("--cold-store")
        .arg(format!("file://{}", cold.display()))
        .arg("--cold-shared-dir")
        .env("QUIVER_LOG__FILTER", "info,openraft=warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(seed) = join {
        command.args(["--join", seed]);
    }
    let mut child = command.spawn().with_context(|| format!("spawn {}", binary.display()))?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let mut seen = String::new();
    let serving = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("quiver is serving") {
                return field(&line, "flight=").zip(field(&line, "pg="));
            }
        }
        None
    })
    .await;
    let Ok(Some((flight, pg))) = serving else {
        anyhow::bail!("node {id} did not start serving:\n{seen}");
    };
    let log: Log = Arc::default();
    let tail = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(mut tail) = tail.lock() else { return };
            if tail.len() == LOG_LINES_KEPT {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    });
    Ok(ServerProcess { id, grpc, flight, pg, child, log })
}

/// Server processes forming one cluster.
pub struct ProcessCluster {
    /// The nodes, in id order (node 1 first).
    pub nodes: Vec<ServerProcess>,
    binary: PathBuf,
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl ProcessCluster {
    /// Starts `count` nodes under `dir` (node 1 bootstraps, the others join through it) and returns once every node
    /// lists all of them as serving.
    pub async fn start(binary: &Path, dir: &Path, count: u64, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut cluster = ProcessCluster {
            nodes: Vec::new(),
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        for _ in 0..count {
            cluster.add().await?;
        }
        Ok(cluster)
    }

    /// Starts one more node, joining through node 1, and returns once every node lists it as serving.
    pub async fn add(&mut self) -> anyhow::Result<&ServerProcess> {
        let id = self.nodes.len() as u64 + 1;
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let seed = self.nodes.first().map(|n| n.grpc.clone());
        let node =
            spawn(&self.binary, id, &self.dir.join(format!("node{id}")), &self.dir.join("cold"), seed.as_deref(), &env)
                .await?;
        self.nodes.push(node);
        self.wait_serving(Duration::from_secs(60)).await?;
        Ok(&self.nodes[self.nodes.len() - 1])
    }

    /// Waits until every running node's `system.nodes` lists every node as serving.
    pub async fn wait_serving(&self, within: Duration) -> anyhow::Result<()> {
        let want = self.nodes.len() as i64;
        let deadline = tokio::time::Instant::now() + within;
        for node in &self.nodes {
            loop {
                let counted = async {
                    let client = crate::harness::pg_client_at(node.pg).await?;
                    let row =
                        client.query_one("SELECT count(*) FROM system.nodes WHERE state = 'serving'", &[]).await?;
                    anyhow::Ok(row.get::<_, i64>(0))
                }
                .await;
                if matches!(counted, Ok(n) if n == want) {
                    break;
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "node {} does not list {want} serving nodes ({counted:?}); its log:\n{}",
                    node.id,
                    node.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Returns the logs of every node, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes.iter().map(|n| format!("--- node {}\n{}\n", n.id, n.log_tail())).collect()
    }
}
