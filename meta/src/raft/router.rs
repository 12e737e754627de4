//! An in-process Raft transport for tests: [`Router`] delivers Raft messages between replicas of one process by
//! calling the target's [`MetaRaft`] handle directly, and can drop them to simulate failures.
//!
//! It implements the same [`RaftNetworkFactory`] as [`GrpcNetwork`](crate::raft::GrpcNetwork), so a
//! [`MetaNode`](crate::MetaNode) runs unchanged on either. Fault hooks:
//! - [`Router::isolate`]: every message to or from a node is dropped (a partition of one node);
//! - [`Router::cut`]: messages in one direction between two nodes are dropped;
//! - [`Router::drop_next`]: the next `n` messages, whatever their route, are dropped;
//! - [`Router::heal`]: removes every isolation, cut and pending drop.
//!
//! A dropped request, or a dropped reply, is reported to openraft as [`Unreachable`], as a lost packet would be after
//! a connection failure. A node without a registered handle (not started, or shut down) is unreachable too.

// openraft's storage and network traits return its `StorageError` and `RPCError` by value, and these helpers feed
// those signatures directly; boxing them here would only add a conversion at every call.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::AnyError;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

use crate::MetaNode;
use crate::raft::election::{Elections, PreVoteFuture, PreVoteNetwork, PreVoteRequest};
use crate::raft::types::{MetaRaft, NodeAddr, TypeConfig};

type RpcError<E = openraft::error::Infallible> = RPCError<u64, NodeAddr, RaftError<u64, E>>;

#[derive(Default)]
struct Routes {
    nodes: BTreeMap<u64, (MetaRaft, Arc<Elections>)>,
    isolated: BTreeSet<u64>,
    cut: BTreeSet<(u64, u64)>,
    drops_pending: u64,
}

/// Routes Raft messages between the replicas of one process.
#[derive(Clone, Default)]
pub struct Router {
    routes: Arc<Mutex<Routes>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes = self.lock();
        f.debug_struct("Router")
            .field("nodes", &routes.nodes.keys().collect::<Vec<_>>())
            .field("isolated", &routes.isolated)
            .field("cut", &routes.cut)
            .field("drops_pending", &routes.drops_pending)
            .finish()
    }
}

impl Router {
    /// Returns a router with no node.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the network factory that replica `node_id` sends through.
    pub fn network(&self, node_id: u64) -> RouterNetwork {
        RouterNetwork { router: self.clone(), from: node_id }
    }

    /// Makes replica `node` reachable, replacing an earlier incarnation of it (after a restart).
    pub fn register(&self, node: &MetaNode) {
        self.lock().nodes.insert(node.node_id(), (node.raft().clone(), node.elections()));
    }

    /// Makes replica `node_id` unreachable, as if its process had stopped.
    pub fn unregister(&self, node_id: u64) {
        self.lock().nodes.remove(&node_id);
    }

    /// Drops every message to or from `node_id` until [`Router::heal`].
    pub fn isolate(&self, node_id: u64) {
        self.lock().isolated.insert(node_id);
    }

    /// Drops every message from `from` to `to` (one direction) until [`Router::heal`].
    pub fn cut(&self, from: u64, to: u64) {
        self.lock().cut.insert((from, to));
    }

    /// Drops the next `count` messages on any route.
    pub fn drop_next(&self, count: u64) {
        self.lock().drops_pending += count;
    }

    /// Restores every route.
    pub fn heal(&self) {
        let mut routes = self.lock();
        routes.isolated.clear();
        routes.cut.clear();
        routes.drops_pending = 0;
    }

    fn lock(&self) -> MutexGuard<'_, Routes> {
        // Every critical section is a single collection operation, so a poisoned lock still guards consistent data.
        self.routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns the target's handles if a request from `from` to `to` is delivered now.
    fn deliver(&self, from: u64, to: u64) -> Result<(MetaRaft, Arc<Elections>), Unreachable> {
        let mut routes = self.lock();
        Self::pass(&mut routes, from, to)?;
        routes.nodes.get(&to).cloned().ok_or_else(|| Unreachable::from(AnyError::error(format!("node {to} is down"))))
    }

    /// Returns whether a reply from `from` to `to` is delivered now.
    fn deliver_reply(&self, from: u64, to: u64) -> Result<(), Unreachable> {
        Self::pass(&mut self.lock(), from, to)
    }

    fn pass(routes: &mut Routes, from: u64, to: u64) -> Result<(), Unreachable> {
        let blocked =
            routes.isolated.contains(&from) || routes.isolated.contains(&to) || routes.cut.contains(&(from, to));
        if blocked {
            return Err(dropped(from, to));
        }
        if routes.drops_pending > 0 {
            routes.drops_pending -= 1;
            return Err(dropped(from, to));
        }
        Ok(())
    }
}

fn dropped(from: u64, to: u64) -> Unreachable {
    Unreachable::from(AnyError::error(format!("message from node {from} to node {to} dropped")))
}

/// The network factory of one replica on a [`Router`].
#[derive(Debug, Clone)]
pub struct RouterNetwork {
    router: Router,
    from: u64,
}

impl PreVoteNetwork for RouterNetwork {
    fn pre_vote(&self, target: u64, _node: &NodeAddr, request: PreVoteRequest, _timeout: Duration) -> PreVoteFuture {
        let (router, from) = (self.router.clone(), self.from);
        Box::pin(async move {
            let (_, elections) = router.deliver(from, target).map_err(|e| e.to_string())?;
            let answer = elections.answer(&request).await;
            router.deliver_reply(target, from).map_err(|e| e.to_string())?;
            Ok(answer)
        })
    }
}

impl RaftNetworkFactory<TypeConfig> for RouterNetwork {
    type Network = RouterConnection;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> Self::Network {
        RouterConnection { router: self.router.clone(), from: self.from, to: target, node: node.clone() }
    }
}

/// A connection from one replica to another on a [`Router`].
#[derive(Debug)]
pub struct RouterConnection {
    router: Router,
    from: u64,
    to: u64,
    node: NodeAddr,
}

impl RouterConnection {
    /// Delivers a request, runs `call` on the target, and delivers the reply back (it can be dropped too).
    async fn round_trip<T, E, F, Fut>(&self, call: F) -> Result<T, RpcError<E>>
    where
        E: std::error::Error,
        F: FnOnce(MetaRaft) -> Fut,
        Fut: Future<Output = Result<T, RaftError<u64, E>>>,
    {
        let (target, _) = self.router.deliver(self.from, self.to).map_err(RPCError::Unreachable)?;
        let result = call(target).await;
        self.router.deliver_reply(self.to, self.from).map_err(RPCError::Unreachable)?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.to, self.node.clone(), e)))
    }
}

impl RaftNetwork<TypeConfig> for RouterConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcError> {
        self.round_trip(|raft| async move { raft.append_entries(rpc).await }).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcError<InstallSnapshotError>> {
        self.round_trip(|raft| async move { raft.install_snapshot(rpc).await }).await
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, _option: RPCOption) -> Result<VoteResponse<u64>, RpcError> {
        self.round_trip(|raft| async move { raft.vote(rpc).await }).await
    }

    /// Retries a dropped message after 10 ms: in-process delivery has no connection to re-establish, and a pause
    /// longer than the election timeout would turn every dropped message into an election.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(10)))
    }
}
