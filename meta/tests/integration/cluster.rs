//! Helpers shared by the integration tests: short-timeout settings, replicas served over gRPC on port 0, and waits
//! on Raft metrics (never fixed sleeps).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arrow_schema::DataType;
use quiver_meta::raft::{GrpcNetwork, NodeAddr};
use quiver_meta::{
    CatalogCommand, ColumnDef, MemMetaStore, MetaCommand, MetaConfig, MetaNode, MetaState, NodeRole, TableKind,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Settings with short timeouts so that elections and failover take well under a second.
pub(crate) fn test_config() -> MetaConfig {
    MetaConfig {
        cluster_name: "test".into(),
        heartbeat_interval_ms: 50,
        election_timeout_min_ms: 200,
        election_timeout_max_ms: 400,
        snapshot_logs_since_last: 500,
        snapshot_logs_kept: 10,
        snapshot_chunk_bytes_max: 512,
        install_snapshot_timeout_ms: 1_000,
        request_timeout_ms: 3_000,
        connect_timeout_ms: 300,
        voters: 3,
        node_heartbeat_interval_ms: 100,
        node_down_after_ms: 600,
        replica_down_timeout_ms: 1_000,
        ..MetaConfig::default()
    }
}

/// Installs a log subscriber once; `RUST_LOG` selects what is shown.
pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A replica served over gRPC on loopback.
pub(crate) struct GrpcReplica {
    pub(crate) node: MetaNode,
    pub(crate) store: MemMetaStore,
    pub(crate) addr: SocketAddr,
    stop_server: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

impl GrpcReplica {
    /// Starts replica `id` on `store`, serving on `listener`.
    pub(crate) async fn start(id: u64, store: MemMetaStore, listener: TcpListener, config: MetaConfig) -> Result<Self> {
        let addr = listener.local_addr()?;
        let network = GrpcNetwork::new(id, &config);
        let node = MetaNode::start(id, NodeAddr::new(addr.to_string()), Arc::new(store.clone()), config, network)
            .await
            .with_context(|| format!("start node {id}"))?;
        let (stop_server, stopped) = oneshot::channel::<()>();
        let served = node.clone();
        let server = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = quiver_meta::service::serve(&served, listener, shutdown).await {
                tracing::warn!(error = %e, "test server failed");
            }
        });
        Ok(Self { node, store, addr, stop_server, server })
    }

    /// Starts replica `id` on a fresh store and port.
    pub(crate) async fn start_fresh(id: u64, config: MetaConfig) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::start(id, MemMetaStore::new(), listener, config).await
    }

    /// Stops the replica like a process exit: the server closes its connections and Raft stops. Returns the store
    /// and address, to restart on them.
    pub(crate) async fn stop(self) -> Result<(MemMetaStore, SocketAddr)> {
        let _ = self.stop_server.send(());
        self.node.shutdown().await?;
        let mut server = self.server;
        if tokio::time::timeout(Duration::from_secs(2), &mut server).await.is_err() {
            server.abort();
        }
        Ok((self.store, self.addr))
    }

    /// Restarts a stopped replica on its store and address.
    pub(crate) async fn restart(id: u64, store: MemMetaStore, addr: SocketAddr, config: MetaConfig) -> Result<Self> {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("rebind {addr}"))?;
        Self::start(id, store, listener, config).await
    }
}

/// Starts `count` replicas over gRPC, bootstraps the first, adds the others as learners and promotes them all to
/// voters, and registers every node in the registry.
pub(crate) async fn grpc_cluster(count: u64, config: MetaConfig) -> Result<Vec<GrpcReplica>> {
    let mut replicas = Vec::new();
    for id in 1..=count {
        replicas.push(GrpcReplica::start_fresh(id, config.clone()).await?);
    }
    let first = &replicas[0].node;
    first.bootstrap("test-cluster").await?;
    for replica in &replicas {
        first.propose(register(replica.node.node_id(), &replica.addr.to_string())).await?.into_result()?;
    }
    for replica in &replicas[1..] {
        first.add_learner(replica.node.node_id(), replica.node.addr().clone()).await?;
    }
    first.change_membership((1..=count).collect()).await?;
    Ok(replicas)
}

/// Returns a command that registers node `id` as a voter.
pub(crate) fn register(id: u64, grpc_addr: &str) -> MetaCommand {
    MetaCommand::RegisterNode {
        node_id: id,
        grpc_addr: grpc_addr.into(),
        flight_addr: format!("127.0.0.1:{}", 50_000 + id),
        pg_addr: format!("127.0.0.1:{}", 5_400 + id),
        role: NodeRole::Voter,
    }
}

/// Returns a command that creates native table `name` with its shard on `node`.
pub(crate) fn create_table(name: &str) -> MetaCommand {
    MetaCommand::Catalog {
        command: CatalogCommand::CreateTable {
            name: name.into(),
            columns: vec![
                ColumnDef { name: "id".into(), data_type: DataType::Int64, nullable: false },
                ColumnDef { name: "v".into(), data_type: DataType::Utf8, nullable: true },
            ],
            primary_key: vec!["id".into()],
            kind: TableKind::Native,
            options: BTreeMap::new(),
            sharding: Default::default(),
            if_not_exists: false,
        },
    }
}

/// Waits until every node in `nodes` reports the same leader, which is one of them, and returns it.
pub(crate) async fn wait_leader(nodes: &[&MetaNode], timeout: Duration) -> Result<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let views: Vec<(Option<u64>, u64)> = nodes
            .iter()
            .map(|n| {
                let m = n.metrics();
                let m = m.borrow();
                (m.current_leader, m.current_term)
            })
            .collect();
        if let Some((Some(leader), term)) = views.first().copied() {
            let agreed = views.iter().all(|v| *v == (Some(leader), term));
            if agreed && nodes.iter().any(|n| n.node_id() == leader) {
                return Ok(leader);
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no agreed leader within {timeout:?}: {views:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every node has applied at least the entry at `index`.
pub(crate) async fn wait_applied(nodes: &[&MetaNode], index: u64, timeout: Duration) -> Result<()> {
    for node in nodes {
        node.raft()
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "catch up")
            .await
            .with_context(|| format!("node {} did not apply {index}", node.node_id()))?;
    }
    Ok(())
}

/// Returns the last log index applied by `node`.
pub(crate) fn applied_index(node: &MetaNode) -> u64 {
    node.metrics().borrow().last_applied.map(|id| id.index).unwrap_or(0)
}

/// Reads every node's state linearizably and checks that they are all equal; returns it.
pub(crate) async fn agreed_state(nodes: &[&MetaNode]) -> Result<MetaState> {
    let mut states = Vec::new();
    for node in nodes {
        states.push(node.read_state(MetaState::clone).await.with_context(|| format!("read on {}", node.node_id()))?);
    }
    // Linearizable reads may see different applied prefixes when a write lands between them; compare at the last
    // applied index of the leader by waiting for everyone to reach it.
    let first = states[0].clone();
    for (node, state) in nodes.iter().zip(&states) {
        if state.version() != first.version() {
            bail!(
                "node {} is at version {} while node {} is at {}",
                node.node_id(),
                state.version(),
                nodes[0].node_id(),
                first.version()
            );
        }
        if *state != first {
            bail!("node {} disagrees with node {}", node.node_id(), nodes[0].node_id());
        }
    }
    Ok(first)
}

/// Waits until every node has applied everything the leader has, then checks that their local states are equal and
/// returns it. For replicas on the in-process router, whose followers cannot forward a read to the leader.
pub(crate) async fn converged_state(nodes: &[&MetaNode], leader: &MetaNode) -> Result<MetaState> {
    // The leader's own linearizable read fixes a point that every replica must reach.
    let state = leader.read_state(MetaState::clone).await.context("leader read")?;
    wait_applied(nodes, applied_index(leader), Duration::from_secs(5)).await?;
    for node in nodes {
        let local = node.read_local(MetaState::clone);
        if local != state {
            bail!("node {} disagrees with leader {}", node.node_id(), leader.node_id());
        }
    }
    Ok(state)
}
