//! The nodes that run a distributed plan's tasks, and how tasks reach them.
//!
//! - [`NodeWorkers`]: the workers are the cluster's serving nodes, at their internal addresses, from this node's
//!   metadata (the list is rebuilt only when the metadata changed).
//! - [`PeerChannels`]: one HTTP/2 connection per peer, with keepalive pings, so a task on a node that went silent
//!   fails instead of waiting forever.
//! - [`WorkerSessions`]: the session a task runs in on this node: this node's functions, settings and codec.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionState;
use datafusion_distributed::grpc::{BoxCloneSyncChannel, create_worker_client};
use datafusion_distributed::{ChannelResolver, DistributedExt, WorkerChannel, WorkerQueryContext, WorkerResolver};
use quiver_meta::transport::{PeerTls, PeerTransport};
use quiver_meta::{MetaNode, NodeState};
use url::Url;

use super::EngineSlot;
use super::codec::LeafCodec;

/// The serving nodes of this node's cluster, as workers.
#[derive(Debug)]
pub(crate) struct NodeWorkers {
    meta: MetaNode,
    /// The list and the metadata version it was built at.
    known: Mutex<(Option<u64>, Vec<Url>)>,
}

impl NodeWorkers {
    pub(crate) fn new(meta: MetaNode) -> Self {
        Self { meta, known: Mutex::new((None, Vec::new())) }
    }
}

impl WorkerResolver for NodeWorkers {
    fn get_urls(&self) -> DfResult<Vec<Url>> {
        // Asked for every node of a plan being distributed: a read of the metadata's version unless it changed.
        let version = self.meta.read_local(|s| s.version());
        let mut known = self.known.lock().map_err(|_| DataFusionError::Internal("workers lock poisoned".into()))?;
        if known.0 != Some(version) {
            // A node without an internal address (one serving clients only) takes no tasks.
            let urls = self.meta.read_local(|s| {
                s.nodes()
                    .filter(|n| n.state == NodeState::Serving && !n.grpc_addr.is_empty())
                    .filter_map(|n| super::url_of(&n.grpc_addr).ok())
                    .collect()
            });
            *known = (Some(version), urls);
        }
        Ok(known.1.clone())
    }
}

/// Connections to the other nodes' workers, one per node, opened on first use.
#[derive(Debug, Clone)]
pub(crate) struct PeerChannels {
    transport: PeerTransport,
    channels: Arc<Mutex<HashMap<Url, BoxCloneSyncChannel>>>,
}

impl PeerChannels {
    /// Channels that give up connecting after `timeout` and close once a peer stayed silent for about two of them;
    /// over mutual TLS when `tls` says so.
    pub(crate) fn new(timeout: Duration, tls: PeerTls) -> Self {
        Self { transport: PeerTransport::new(timeout, tls), channels: Arc::default() }
    }

    fn channel(&self, url: &Url) -> DfResult<BoxCloneSyncChannel> {
        let mut channels = self.channels.lock().map_err(|_| DataFusionError::Internal("peers lock poisoned".into()))?;
        if let Some(channel) = channels.get(url) {
            return Ok(channel.clone());
        }
        let timeout = self.transport.connect_timeout();
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| DataFusionError::Execution(format!("the worker address {url}: {e}")))?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(timeout)
            .keep_alive_timeout(timeout)
            .keep_alive_while_idle(true);
        let channel = BoxCloneSyncChannel::new(self.transport.connect_lazy(&endpoint));
        channels.insert(url.clone(), channel.clone());
        Ok(channel)
    }
}

#[async_trait]
impl ChannelResolver for PeerChannels {
    async fn get_worker_client_for_url(&self, url: &Url) -> DfResult<Box<dyn WorkerChannel>> {
        self.channel(url).map(create_worker_client)
    }
}

/// Builds the session each task that comes to this node runs in.
#[derive(Debug, Clone)]
pub(crate) struct WorkerSessions {
    pub(crate) engine: EngineSlot,
    pub(crate) channels: PeerChannels,
}

#[async_trait]
impl datafusion_distributed::WorkerSessionBuilder for WorkerSessions {
    async fn build_session_state(&self, ctx: WorkerQueryContext) -> Result<SessionState, DataFusionError> {
        let engine = self
            .engine
            .get()
            .upgrade()
            .ok_or_else(|| DataFusionError::Execution("this node is shutting down".into()))?;
        let mut builder = ctx.builder;
        // Only the distributed library's own settings travel with a task: the rest are this node's (the same
        // configuration file on every node of a cluster), changed in place to keep the task's extensions.
        let ours = engine.session().state();
        let options = ours.config_options();
        if let Some(config) = builder.config().as_mut() {
            let task = config.options_mut();
            task.execution.time_zone.clone_from(&options.execution.time_zone);
            task.execution.target_partitions = options.execution.target_partitions;
            task.execution.batch_size = options.execution.batch_size;
        }
        let builder = builder
            .with_scalar_functions(ours.scalar_functions().values().cloned().collect())
            .with_aggregate_functions(ours.aggregate_functions().values().cloned().collect())
            .with_window_functions(ours.window_functions().values().cloned().collect())
            .with_distributed_user_codec(LeafCodec::new(self.engine.clone()))
            .with_distributed_channel_resolver(self.channels.clone());
        Ok(builder.build())
    }
}
