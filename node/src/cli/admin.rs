//! `quiver admin`: cluster administration over a node's internal gRPC endpoint (`--connect HOST:PORT`).
//!
//! `status` asks the given node for its view and, when another node leads, asks the leader too, since only the
//! leader knows each member's replication progress. Membership changes are sent to the given node and follow its
//! "not leader" answers to the leader.

use std::fmt::Write as _;
use std::time::Duration;

use quiver_meta::service::ClusterClient;
use quiver_meta::transport::{JoinSecret, PeerTls, PeerTransport};
use quiver_proto::v1::{ClusterStatusResponse, RebalanceResponse};

use crate::error::{Error, Result};

/// The node an admin command is sent to, and how to reach it: plaintext, or mutual TLS with a certificate of the
/// cluster CA (and the join secret, for `add`) when the cluster uses them.
#[derive(Debug, Clone)]
pub struct Target {
    addr: String,
    transport: PeerTransport,
    join_secret: Option<JoinSecret>,
}

impl Target {
    /// The node at `addr`, over plaintext.
    pub fn plaintext(addr: &str) -> Self {
        Self { addr: addr.to_string(), transport: PeerTransport::plaintext(CONNECT_TIMEOUT), join_secret: None }
    }

    /// The node at `addr`, reached as `config`'s `[cluster.tls]` and `cluster.join_secret` say (the operator's
    /// certificate must be signed by the cluster CA).
    ///
    /// # Errors
    ///
    /// The certificate files cannot be read.
    pub fn from_config(addr: &str, config: &crate::config::Config) -> Result<Self> {
        let tls = match crate::server::tls::ClusterTls::from_config(config)? {
            Some(tls) => PeerTls::mutual(tls.client),
            None => PeerTls::plaintext(),
        };
        let join_secret = config.cluster.meta_config().join_secret;
        Ok(Self { addr: addr.to_string(), transport: PeerTransport::new(CONNECT_TIMEOUT, tls), join_secret })
    }

    fn client(&self) -> ClusterClient {
        ClusterClient::with_transport(self.transport.clone(), Duration::from_secs(30))
            .with_join_secret(self.join_secret.clone())
    }
}

impl From<&str> for Target {
    fn from(addr: &str) -> Self {
        Self::plaintext(addr)
    }
}

impl From<&String> for Target {
    fn from(addr: &String) -> Self {
        Self::plaintext(addr)
    }
}

/// How long an admin command waits to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Returns the cluster status as text: a header, then one line per member.
///
/// # Errors
///
/// The node cannot be reached.
pub async fn status(target: impl Into<Target>) -> Result<String> {
    let target = target.into();
    let addr = target.addr.as_str();
    let client = target.client();
    let local = client.status(addr).await?;
    let leader_addr = local
        .leader_id
        .filter(|l| *l != local.node_id)
        .and_then(|l| local.members.iter().find(|m| m.node_id == l))
        .map(|m| m.grpc_addr.clone());
    let view = match leader_addr {
        Some(leader) => match client.status(&leader).await {
            Ok(status) => status,
            Err(_) => local,
        },
        None => local,
    };
    Ok(render_status(&view))
}

/// Formats a status.
pub fn render_status(s: &ClusterStatusResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster {}  leader {}  term {}  metadata version {}  voters target {}",
        if s.cluster_id.is_empty() { "(not bootstrapped)" } else { &s.cluster_id },
        opt(s.leader_id),
        s.term,
        s.metadata_version,
        s.target_voters
    );
    let _ = writeln!(
        out,
        "as seen by node {}: last log index {}, applied {}, snapshot {}",
        s.node_id,
        opt(s.last_log_index),
        opt(s.applied_index),
        opt(s.snapshot_index)
    );
    let _ = writeln!(
        out,
        "{:>5}  {:<8} {:<7} {:<8} {:>8} {:>5} {:>8} {:>9}  {:<21} {:<21} {:<21}",
        "node", "role", "leader", "state", "matched", "lag", "replicas", "primaries", "grpc", "flight", "pg"
    );
    for m in &s.members {
        let _ = writeln!(
            out,
            "{:>5}  {:<8} {:<7} {:<8} {:>8} {:>5} {:>8} {:>9}  {:<21} {:<21} {:<21}",
            m.node_id,
            m.role,
            if m.leader { "yes" } else { "" },
            if m.draining { "draining" } else { &m.state },
            opt(m.matched_index),
            opt(m.lag),
            m.replicas,
            m.primaries,
            m.grpc_addr,
            m.flight_addr,
            m.pg_addr
        );
    }
    out
}

/// Admits a node to the cluster before it starts (it then starts with `--join` and finds itself admitted).
///
/// # Errors
///
/// The cluster refuses (the id is taken by another address) or cannot be reached.
pub async fn add(
    target: impl Into<Target>,
    node_id: u64,
    grpc_addr: String,
    flight_addr: String,
    pg_addr: String,
) -> Result<String> {
    let target = target.into();
    let addr = target.addr.as_str();
    // A node admitted ahead of its start is not a member yet: whether its store is empty changes nothing.
    let request =
        quiver_meta::JoinRequest { node_id, grpc_addr, flight_addr, pg_addr, cluster_id: None, empty_store: false };
    let (cluster_id, role) = target.client().join(addr, &request).await?;
    Ok(format!("node {node_id} admitted to cluster {cluster_id} as {role}"))
}

/// Removes a node from the cluster; with `drain_for`, drains it first and waits up to that long for it to hold no
/// replica.
///
/// # Errors
///
/// The cluster refuses (not a member, the last voter) or cannot be reached, or the drain does not finish in time
/// (the node stays, draining).
pub async fn remove(target: impl Into<Target>, node_id: u64, drain_for: Option<Duration>) -> Result<String> {
    let target = target.into();
    let addr = target.addr.as_str();
    let mut out = String::new();
    if let Some(limit) = drain_for {
        out = drain(target.clone(), node_id, false, Some(limit)).await?;
    }
    target.client().remove_node(addr, node_id).await?;
    let _ = writeln!(out, "node {node_id} removed");
    Ok(out)
}

/// Starts draining node `node_id` (or stops, with `cancel`); with `wait`, waits up to that long until it holds no
/// shard replica, telling the progress on stderr.
///
/// # Errors
///
/// The node is not registered, the cluster cannot be reached, or the wait runs out.
pub async fn drain(target: impl Into<Target>, node_id: u64, cancel: bool, wait: Option<Duration>) -> Result<String> {
    let target = target.into();
    let addr = target.addr.as_str();
    let client = target.client();
    let mut left = client.drain_node(addr, node_id, cancel).await?;
    if cancel {
        return Ok(format!("node {node_id} no longer draining; it holds {left} shard replicas"));
    }
    let Some(limit) = wait else {
        return Ok(format!("node {node_id} draining: {left} shard replicas to move (see `quiver admin status`)"));
    };
    let started = tokio::time::Instant::now();
    let mut told = None;
    while left > 0 {
        if started.elapsed() >= limit {
            return Err(Error::Internal(format!(
                "node {node_id} still holds {left} shard replicas after {limit:?}; it stays draining. A shard moves \
                 only to a serving node that holds none of its copies: add a node if every one holds them"
            )));
        }
        if told != Some(left) {
            eprintln!("node {node_id}: {left} shard replicas to move");
            told = Some(left);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let status = client.status(addr).await?;
        left = status.members.iter().find(|m| m.node_id == node_id).map_or(0, |m| m.replicas);
    }
    Ok(format!("node {node_id} drained: it holds no shard replica\n"))
}

/// Shows the moves that would balance the nodes and, unless `dry_run`, has the leader start them.
///
/// # Errors
///
/// The cluster cannot be reached or has no leader.
pub async fn rebalance(target: impl Into<Target>, dry_run: bool) -> Result<String> {
    let target = target.into();
    let addr = target.addr.as_str();
    let r = target.client().rebalance(addr, dry_run).await?;
    Ok(render_rebalance(&r, dry_run))
}

/// Formats a rebalance answer: each node's load, the moves under way, the planned ones.
pub fn render_rebalance(r: &RebalanceResponse, dry_run: bool) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut out = String::from("node  load (MiB)\n");
    let mut loads: Vec<_> = r.loads.iter().collect();
    loads.sort();
    for (node, load) in loads {
        let _ = writeln!(out, "{node:>4}  {:>10.1}", mib(*load));
    }
    for (title, moves) in [("moving", &r.running), ("planned", &r.planned)] {
        if moves.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{title}:\n shard | table                | from | to   | hot MiB | hot rows");
        for m in moves {
            let _ = writeln!(
                out,
                "{:>6} | {:<20} | {:>4} | {:>4} | {:>7.1} | {}",
                m.shard_id,
                m.table_name,
                m.from,
                m.to,
                mib(m.hot_bytes),
                m.hot_rows
            );
        }
    }
    let automatic = if r.automatic { "on" } else { "off" };
    let _ = match (r.planned.is_empty(), dry_run) {
        (true, _) => writeln!(out, "\nbalanced: no move planned (automatic rebalancing {automatic})"),
        (false, true) => writeln!(out, "\n{} moves planned; none started (dry run)", r.planned.len()),
        (false, false) => writeln!(
            out,
            "\n{} moves planned; the leader starts them a few at a time (progress: system.shard_moves)",
            r.planned.len()
        ),
    };
    out
}

/// Moves leadership to `to`.
///
/// # Errors
///
/// The cluster refuses (not a voter) or cannot be reached.
pub async fn transfer_leader(target: impl Into<Target>, to: u64) -> Result<String> {
    let target = target.into();
    let addr = target.addr.as_str();
    let leader = target.client().transfer_leader(addr, to).await?;
    if leader == to {
        Ok(format!("node {to} leads"))
    } else {
        Err(Error::Internal(format!("leadership moved to node {leader}, not {to}; try again")))
    }
}

/// Makes the node build a metadata snapshot now.
///
/// # Errors
///
/// The node cannot be reached or fails to build it.
pub async fn snapshot(target: impl Into<Target>) -> Result<String> {
    let target = target.into();
    let addr = target.addr.as_str();
    let index = target.client().trigger_snapshot(addr).await?;
    Ok(format!("snapshot built up to log index {}", opt(index)))
}

/// Moves table `table`'s hot rows on the node at `addr` to the cold tier now.
///
/// # Errors
///
/// The node cannot be reached, the table does not exist, or the object store fails (the rows stay hot).
pub async fn tier(target: impl Into<Target>, table: &str) -> Result<String> {
    let target = target.into();
    use quiver_proto::v1::TierRequest;

    let mut client = data_client(&target).await?;
    let reply = client
        .tier(TierRequest { table: table.to_string() })
        .await
        .map_err(|status| Error::Internal(format!("tiering \"{table}\" failed: {}", status.message())))?
        .into_inner();
    if reply.rows == 0 {
        return Ok(format!("table {table}: nothing hot to tier (manifest version {})", reply.manifest_version));
    }
    Ok(format!(
        "table {table}: tiered {} rows from {} hot chunks into {} bytes of Parquet (manifest version {})",
        reply.rows, reply.chunks, reply.bytes, reply.manifest_version
    ))
}

/// Merges table `table`'s small cold files on the node at `addr` now.
///
/// # Errors
///
/// The node cannot be reached, the table does not exist, or the object store fails (the files stay as they were).
pub async fn compact(target: impl Into<Target>, table: &str) -> Result<String> {
    let target = target.into();
    use quiver_proto::v1::CompactRequest;

    let mut client = data_client(&target).await?;
    let reply = client
        .compact(CompactRequest { table: table.to_string() })
        .await
        .map_err(|status| Error::Internal(format!("compacting \"{table}\" failed: {}", status.message())))?
        .into_inner();
    if reply.files_in == 0 {
        return Ok(format!("table {table}: no small files to merge (manifest version {})", reply.manifest_version));
    }
    Ok(format!(
        "table {table}: merged {} files ({} bytes) into {} ({} bytes, {} rows; manifest version {})",
        reply.files_in, reply.bytes_in, reply.files_out, reply.bytes_out, reply.rows, reply.manifest_version
    ))
}

/// Collects the cold tier's garbage through the node at `addr` now, with its `cold.gc_grace` or a longer `grace`.
///
/// # Errors
///
/// The node cannot be reached, the grace period is too short, or the object store fails (nothing is deleted).
pub async fn gc(target: impl Into<Target>, grace: Option<Duration>) -> Result<String> {
    let target = target.into();
    use quiver_proto::v1::CollectGarbageRequest;

    let mut client = data_client(&target).await?;
    let grace_ms = grace.map(|g| u64::try_from(g.as_millis()).unwrap_or(u64::MAX));
    let reply = client
        .collect_garbage(CollectGarbageRequest { grace_ms })
        .await
        .map_err(|status| Error::Internal(format!("collecting garbage failed: {}", status.message())))?
        .into_inner();
    Ok(format!(
        "deleted {} of {} objects ({} bytes) unreferenced for longer than {}",
        reply.deleted,
        reply.listed,
        reply.deleted_bytes,
        crate::config::Millis(reply.grace_ms)
    ))
}

/// Returns the shard map as the node at `addr` has applied it: `system.shards`, as a table.
///
/// # Errors
///
/// The node cannot be reached or its answer cannot be decoded.
pub async fn shards(target: impl Into<Target>) -> Result<String> {
    let target = target.into();
    use quiver_proto::v1::ExecuteRequest;

    let mut client = data_client(&target).await?;
    let sql = "SELECT * FROM system.shards ORDER BY table_name, shard_id";
    let reply = client
        .execute(ExecuteRequest { sql: sql.to_string() })
        .await
        .map_err(|status| Error::Internal(format!("reading the shard map failed: {}", status.message())))?
        .into_inner();
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(reply.arrow_ipc), None)?;
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(arrow::util::pretty::pretty_format_batches(&batches)?.to_string())
}

/// A client of the data service of the target node.
async fn data_client(
    target: &Target,
) -> Result<quiver_proto::v1::data_service_client::DataServiceClient<tonic::transport::Channel>> {
    let channel = target.transport.open(&target.addr).await.map_err(|e| {
        Error::Internal(format!("cannot reach {}: {}", target.addr, quiver_meta::service::error_chain(&e)))
    })?;
    Ok(quiver_proto::v1::data_service_client::DataServiceClient::new(channel))
}
