//! The node's replica of the metadata Raft group: how a node starts it, bootstraps a cluster or joins one, and keeps
//! the configured number of voters.
//!
//! Every database has a metadata replica, in every deployment mode, and the catalog is its state:
//!
//! - **embedded** ([`start_local`]): a single voter in-process whose Raft messages never leave the process (there is
//!   no peer to send them to); the same state machine applies every catalog change;
//! - **server** ([`start_replica`], [`read_start`], then [`bootstrap_or_join`]): a voter reachable over gRPC at the node's internal
//!   address. Without `--join` a fresh node bootstraps a cluster of one; with `--join ADDR` it asks that node's
//!   cluster to admit it (as a learner, promoted to voter while the cluster has fewer voters than configured).
//!
//! The Raft log, vote and snapshot live in the node's hot store under their own key prefix ([`HotMetaStore`]).

pub mod meta_store;

use std::sync::Arc;
use std::time::Duration;

use quiver_meta::raft::{GrpcNetwork, NodeAddr, Router};
use quiver_meta::service::ClusterClient;
use quiver_meta::{ClusterError, JoinRequest, MetaCommand, MetaConfig, MetaNode, NodeRole, NodeState};

pub use self::meta_store::HotMetaStore;
use crate::error::{Error, Result};
use crate::storage::{Durability, HotStore, WriteBatch};

/// The node id of an embedded database's replica.
pub const LOCAL_NODE_ID: u64 = 1;

/// How a server's metadata replica is reached and which cluster it belongs to.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// This node's id, unique in the cluster (1 or more).
    pub node_id: u64,
    /// The internal gRPC address other nodes reach this one at (the bound address, not a port-0 request).
    pub grpc_addr: String,
    /// Nodes of an existing cluster to join through (any one is enough); empty to bootstrap a new cluster.
    pub join: Vec<String>,
    /// The cluster id: given to a new cluster at bootstrap, or checked when joining; generated when absent.
    pub cluster_id: Option<String>,
    /// The client endpoints recorded in the node registry.
    pub flight_addr: String,
    /// The PostgreSQL endpoint recorded in the node registry.
    pub pg_addr: String,
    /// Raft timing and the number of voters.
    pub meta: MetaConfig,
    /// How long a fresh node keeps trying to join before it gives up.
    pub join_timeout: Duration,
}

fn cluster_error(e: ClusterError) -> Error {
    Error::Cluster(e)
}

/// Returns a new random cluster id.
pub fn new_cluster_id() -> String {
    let mut bytes = [0u8; 8];
    // An operating system without a random source cannot run a database anyway; fall back to a fixed id then.
    if getrandom::fill(&mut bytes).is_err() {
        return "quiver".to_string();
    }
    format!("qv-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Starts the metadata replica of an embedded database: a single voter in-process, bootstrapped on first open, and
/// leader before this returns.
///
/// # Errors
///
/// Fails when the store cannot be read or Raft cannot start.
pub async fn start_local(store: Arc<dyn HotStore>, config: MetaConfig) -> Result<MetaNode> {
    let router = Router::new();
    let meta_store = Arc::new(HotMetaStore::new(store));
    let node =
        MetaNode::start(LOCAL_NODE_ID, NodeAddr::new("local"), meta_store, config, router.network(LOCAL_NODE_ID))
            .await
            .map_err(cluster_error)?;
    // The replica is never registered in the router: a sole voter sends no message, and a registration would make
    // the router (owned by the replica's network) keep the replica alive after the database is dropped.
    if node.raft().is_initialized().await.map_err(|e| Error::Internal(format!("metadata replica: {e}")))? {
        elect_if_sole_voter(&node).await?;
    } else {
        node.bootstrap(&new_cluster_id()).await.map_err(cluster_error)?;
        register(&node, LOCAL_NODE_ID, "", "", "").await?;
    }
    Ok(node)
}

/// A replica that is the only voter wins its election at once; without this it would wait out an election
/// timeout after every restart.
async fn elect_if_sole_voter(node: &MetaNode) -> Result<()> {
    let sole = {
        let metrics = node.metrics();
        let metrics = metrics.borrow();
        let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
        voters == [node.node_id()]
    };
    if sole {
        node.raft().trigger().elect().await.map_err(|e| Error::Internal(format!("metadata election: {e}")))?;
        let mut metrics = node.metrics();
        let led = metrics.wait_for(|m| m.current_leader == Some(node.node_id()));
        tokio::time::timeout(node.config().request_timeout(), led)
            .await
            .map_err(|_| Error::Internal("the metadata replica did not become leader".into()))?
            .map_err(|_| Error::Internal("the metadata replica stopped".into()))?;
    }
    Ok(())
}

async fn register(node: &MetaNode, node_id: u64, grpc: &str, flight: &str, pg: &str) -> Result<()> {
    let command = MetaCommand::RegisterNode {
        node_id,
        grpc_addr: grpc.into(),
        flight_addr: flight.into(),
        pg_addr: pg.into(),
        role: NodeRole::Voter,
    };
    node.propose(command).await.map_err(cluster_error)?.into_result()?;
    node.propose(MetaCommand::UpdateNodeState { node_id, state: NodeState::Serving })
        .await
        .map_err(cluster_error)?
        .into_result()?;
    Ok(())
}

/// Starts a server's metadata replica with the gRPC transport. It neither bootstraps nor joins: read what its store
/// held ([`read_start`]), serve its gRPC services, then call [`bootstrap_or_join`].
///
/// # Errors
///
/// Fails when the store cannot be read or the settings are invalid.
pub async fn start_replica(store: Arc<dyn HotStore>, options: &ClusterOptions) -> Result<MetaNode> {
    if options.node_id == 0 {
        return Err(Error::Config { detail: "cluster.node_id: must be 1 or more".into() });
    }
    let network = GrpcNetwork::new(options.node_id, &options.meta);
    let meta_store = Arc::new(HotMetaStore::new(store));
    MetaNode::start(
        options.node_id,
        NodeAddr::new(options.grpc_addr.clone()),
        meta_store,
        options.meta.clone(),
        network,
    )
    .await
    .map_err(cluster_error)
}

/// Present while a node joins with an empty store: until the cluster admitted it anew (taking it out of every shard's
/// in-sync set), a restart joins as empty again.
const REJOIN_KEY: &[u8] = b"\x00rejoin_pending";

/// What a node's store held when it started, read before its internal endpoint serves ([`read_start`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartState {
    /// The metadata replica held a log or a snapshot (and no join with an empty store was left unfinished): the
    /// node was a member and resumes.
    initialized: bool,
}

/// Reads whether a started replica's store held anything, before its internal endpoint serves.
///
/// It must come first: the metadata leader replicates to a member the moment it answers, so a member back with an
/// empty disk (a lost disk, a replaced host) would look initialized moments later, resume as the member it was, and
/// lead shards it holds nothing of (chaos seed 203: a replaced node's empty copies were taken for the shards' data).
/// A node that is to join with an empty store also stops voting here, and marks its store so that a restart before
/// the cluster admitted it joins as empty again.
///
/// # Errors
///
/// Fails when the store cannot be read or written.
pub async fn read_start(node: &MetaNode, options: &ClusterOptions, store: &Arc<dyn HotStore>) -> Result<StartState> {
    let initialized =
        node.raft().is_initialized().await.map_err(|e| Error::Internal(format!("metadata replica: {e}")))?;
    // A node that began joining with an empty store and stopped before the cluster admitted it anew still holds no
    // shard data, even if its metadata replica received the log meanwhile (the leader kept replicating to the
    // member it was): it joins anew, as empty, until a join completes.
    let rejoining = store.get(REJOIN_KEY)?.is_some() && !options.join.is_empty();
    if rejoining {
        tracing::info!(node_id = options.node_id, "an earlier join with an empty store did not finish; joining anew");
    }
    let start = StartState { initialized: initialized && !rejoining };
    if !start.initialized && !options.join.is_empty() {
        // Until the cluster has added this node anew, it must not vote: if it is a member that lost its disk, the
        // votes it cast before are gone with it.
        node.hold_votes(true);
        if !rejoining {
            mark_rejoin(store, true).await?;
        }
    }
    Ok(start)
}

/// Sets or clears the mark of a join with an empty store that has not finished, durably (off the async workers).
async fn mark_rejoin(store: &Arc<dyn HotStore>, pending: bool) -> Result<()> {
    let store = Arc::clone(store);
    crate::blocking::run("mark a join with an empty store", move || {
        let mut batch = WriteBatch::new();
        if pending {
            batch.put(REJOIN_KEY.to_vec(), Vec::new());
        } else {
            batch.delete(REJOIN_KEY.to_vec());
        }
        store.write(batch, Durability::Sync)
    })
    .await?
}

/// Makes a started replica part of a cluster, as its store was when it started (`start`, from [`read_start`]):
///
/// - a fresh node without `join` bootstraps a new cluster and registers itself;
/// - a fresh node with `join` asks the cluster to admit it, retrying until `join_timeout` (the seed may still be
///   starting);
/// - a node that already belongs to a cluster resumes: with `join` it still checks that it asks the same cluster
///   (a refusal is fatal; an unreachable seed is not, since the whole cluster may be restarting).
///
/// # Errors
///
/// A refusal by the cluster (another cluster id, a duplicate node id), or no answer within the join timeout.
pub async fn bootstrap_or_join(
    node: &MetaNode,
    options: &ClusterOptions,
    store: &Arc<dyn HotStore>,
    start: StartState,
) -> Result<()> {
    let StartState { initialized } = start;
    let mine = node.read_local(|s| s.cluster_id().map(str::to_string));
    let request = JoinRequest {
        node_id: options.node_id,
        grpc_addr: options.grpc_addr.clone(),
        flight_addr: options.flight_addr.clone(),
        pg_addr: options.pg_addr.clone(),
        cluster_id: mine.clone().or_else(|| options.cluster_id.clone()),
        // A member that lost its disk comes back under its id with nothing: the cluster must add it anew.
        empty_store: !initialized,
    };
    if let (Some(mine), Some(configured)) = (&mine, &options.cluster_id)
        && mine != configured
    {
        return Err(Error::Config {
            detail: format!(
                "cluster.cluster_id is \"{configured}\", but this data directory belongs to cluster \"{mine}\""
            ),
        });
    }
    let client = ClusterClient::with_transport(options.meta.transport(), options.meta.request_timeout())
        .with_join_secret(options.meta.join_secret.clone());
    match (initialized, options.join.is_empty()) {
        (false, true) => {
            let cluster_id = options.cluster_id.clone().unwrap_or_else(new_cluster_id);
            node.bootstrap(&cluster_id).await.map_err(cluster_error)?;
            register(node, options.node_id, &options.grpc_addr, &options.flight_addr, &options.pg_addr).await?;
            tracing::info!(node_id = options.node_id, cluster_id, "bootstrapped a new cluster");
        }
        (true, true) => {
            elect_if_sole_voter(node).await?;
            tracing::info!(node_id = options.node_id, cluster_id = ?mine, "resumed as a member of the cluster");
        }
        (false, false) => {
            // Held since `read_start`; marked there too.
            node.hold_votes(true);
            let deadline = tokio::time::Instant::now() + options.join_timeout;
            loop {
                let mut last = None;
                for seed in &options.join {
                    match client.join(seed, &request).await {
                        Ok((cluster_id, role)) => {
                            tracing::info!(node_id = options.node_id, cluster_id, role, via = %seed, "joined the cluster");
                            node.hold_votes(false);
                            mark_rejoin(store, false).await?;
                            return Ok(());
                        }
                        Err(e @ (ClusterError::JoinRefused { .. } | ClusterError::InvalidMembershipChange { .. })) => {
                            return Err(Error::Cluster(e));
                        }
                        Err(e) => {
                            tracing::info!(via = %seed, error = %e, "join attempt failed; retrying");
                            last = Some(e);
                        }
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    let e = last.expect("join has at least one seed");
                    return Err(Error::Cluster(e));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        (true, false) => {
            client
                .confirm_membership(options.join.clone(), request, Duration::from_millis(500))
                .await
                .map_err(Error::Cluster)?;
            tracing::info!(node_id = options.node_id, cluster_id = ?mine, "resumed as a member of the cluster");
        }
    }
    Ok(())
}

/// Keeps the configured number of voters while this node leads: every `interval`, promotes a caught-up learner if
/// voters are missing (after a voter was removed). Runs until `shutdown` completes.
pub async fn keep_voters(node: MetaNode, interval: Duration, shutdown: impl Future<Output = ()>) {
    let run = async {
        loop {
            tokio::time::sleep(interval).await;
            if let Err(e) = node.keep_voters().await {
                tracing::debug!(error = %e, "voter keeper: no promotion this round");
            }
        }
    };
    tokio::select! {
        () = shutdown => {}
        () = run => {}
    }
}
