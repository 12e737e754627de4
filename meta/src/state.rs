//! The replicated metadata: [`MetaState`], the data of the Raft state machine, and the commands that change it.
//!
//! [`MetaState`] holds the [`Catalog`], the node registry ([`NodeRecord`]), the shard map ([`ShardRecord`], with each
//! shard's cold-tier [`ManifestPointer`]), the cluster id and a metadata version. [`MetaState::apply`] is the only way
//! it changes, and it is deterministic and does no I/O: the same commands in the same order give the same state on
//! every replica, including after a restart that replays the log.
//!
//! Invariants:
//! - a command either applies completely or changes nothing and returns a [`Rejection`];
//! - the metadata version grows by exactly one with every command that changes something, and never otherwise;
//! - every shard belongs to a table of the catalog, and every replica of a shard was a registered node when placed;
//! - a native table's shards own disjoint slot ranges that together cover every slot;
//! - a shard's primary is in its in-sync set, which is a subset of its replicas;
//! - a shard's epoch grows by one with every change to its configuration, and never goes back;
//! - table and shard ids are never reused.
//!
//! Module layout: `command` (commands, outcomes, responses), `registry` (nodes), `shards` (shard map, slots),
//! `placement` (where a new table's shards go, and failover), `repair` (the changes that bring shards back to their
//! number of copies, and drain nodes), `balance` (the copies that move so that every node holds about as much).

pub(crate) mod balance;
mod command;
mod placement;
mod registry;
pub(crate) mod repair;
mod shards;
mod transactions;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use self::command::{MetaCommand, MetaOutcome, MetaResponse};
pub use self::registry::{NodeRecord, NodeRole, NodeState};
pub use self::shards::{
    ManifestPointer, PendingManifest, SLOT_COUNT, ShardId, ShardLoad, ShardMove, ShardRecord, SlotRange,
    is_shard_key_type,
};
pub use self::transactions::{DECISION_KEPT_MS, Decision};
use crate::catalog::{Catalog, CatalogCommand, CatalogOutcome, TableId};
use crate::error::{Error, Rejection};
use crate::principals::Principals;

/// The replicated metadata of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetaState {
    cluster_id: Option<String>,
    catalog: Catalog,
    nodes: BTreeMap<u64, NodeRecord>,
    shards: BTreeMap<ShardId, ShardRecord>,
    next_shard_id: u64,
    version: u64,
    /// Manifest commits of uploads begun before this (unix ms) are refused ([`MetaCommand::FenceColdUploads`]).
    #[serde(default)]
    cold_upload_fence_ms: u64,
    /// The decisions of statements spanning shards, by transaction id, until forgotten or expired.
    #[serde(default)]
    transactions: BTreeMap<u64, Decision>,
    /// Shards whose primary was replaced because its node went down or was lost, since the cluster began.
    #[serde(default)]
    failovers: u64,
    /// The shards holding a pending manifest ([`ShardRecord::pending`]), by transaction id: a decision settles
    /// them without a pass over every shard.
    #[serde(default)]
    pending_manifests: BTreeMap<u64, Vec<ShardId>>,
    /// Roles, users and their privileges.
    #[serde(default)]
    principals: Principals,
}

impl MetaState {
    /// Returns the empty state at version 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the metadata version: the number of changes applied so far.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Returns the recorded decision of transaction `txn`, if one was made and is still kept.
    pub fn transaction(&self, txn: u64) -> Option<Decision> {
        self.transactions.get(&txn).copied()
    }

    /// Returns how many times a shard's primary was replaced because its node went down or was lost.
    pub fn failovers(&self) -> u64 {
        self.failovers
    }

    /// Returns how many transaction decisions are kept.
    pub fn transaction_count(&self) -> usize {
        self.transactions.len()
    }

    /// Returns the cold-upload fence: manifest commits of uploads begun before this (unix ms) are refused.
    pub fn cold_upload_fence_ms(&self) -> u64 {
        self.cold_upload_fence_ms
    }

    /// Returns the cluster id recorded at bootstrap.
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// Returns the catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Returns the roles, users and privileges.
    pub fn principals(&self) -> &Principals {
        &self.principals
    }

    /// Returns the registered node of this id.
    pub fn node(&self, node_id: u64) -> Option<&NodeRecord> {
        self.nodes.get(&node_id)
    }

    /// Returns every registered node, ordered by id.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    /// Returns the shard of this id.
    pub fn shard(&self, shard_id: ShardId) -> Option<&ShardRecord> {
        self.shards.get(&shard_id)
    }

    /// Returns every shard, ordered by id.
    pub fn shards(&self) -> impl Iterator<Item = &ShardRecord> {
        self.shards.values()
    }

    /// Returns the shards of a table, ordered by id.
    pub fn table_shards(&self, table_id: TableId) -> impl Iterator<Item = &ShardRecord> {
        self.shards.values().filter(move |s| s.table_id == table_id)
    }

    /// Applies a command and returns its outcome with the resulting version.
    ///
    /// A refused command changes nothing; its [`Rejection`] is in the response, not an `Err`, because in a cluster
    /// it was still applied (as a no-op) at its log position.
    pub fn apply(&mut self, command: MetaCommand) -> MetaResponse {
        let outcome = self.apply_inner(command);
        if matches!(outcome, Ok(ref o) if *o != MetaOutcome::Unchanged) {
            self.version += 1;
        }
        MetaResponse { version: self.version, outcome }
    }

    /// Encodes the state for a snapshot.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("metadata state is always representable as JSON")
    }

    /// Decodes a state written by [`MetaState::encode`].
    ///
    /// # Errors
    ///
    /// Returns [`Error::Decode`] when the bytes are not a metadata state.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut state: Self = serde_json::from_slice(bytes).map_err(Error::Decode)?;
        // Shards recorded before in-sync sets existed had every replica in sync (they had one).
        for shard in state.shards.values_mut() {
            if shard.in_sync.is_empty() {
                shard.in_sync = shard.replicas.clone();
            }
        }
        Ok(state)
    }

    /// Validates `command` against the current state and, if it fits, changes the state. Every check that can
    /// refuse the command runs before the first change.
    fn set_node_state(&mut self, node_id: u64, state: NodeState) -> Result<MetaOutcome, Rejection> {
        let node = self.nodes.get_mut(&node_id).ok_or(Rejection::NodeNotFound { node_id })?;
        if node.state == state {
            return Ok(MetaOutcome::Unchanged);
        }
        node.state = state;
        if state == NodeState::Down {
            self.fail_over(node_id, false);
        }
        Ok(MetaOutcome::NodeUpdated { node_id })
    }

    /// Takes `node_id` out of every in-sync set, promoting a new primary for each shard it leads where a live
    /// in-sync replica remains (`placement::fail_over`); returns how many shards changed, each at a new epoch. With
    /// `lost` (the node's copies are gone), a shard whose only in-sync copy it was gets the replica that left the
    /// in-sync set last as its primary, the one copy holding every acknowledged write.
    fn fail_over(&mut self, node_id: u64, lost: bool) -> usize {
        let changes = placement::fail_over(&self.nodes, self.shards.values(), node_id, lost);
        for (shard_id, in_sync, primary) in &changes {
            if let Some(shard) = self.shards.get_mut(shard_id) {
                if shard.primary != *primary {
                    self.failovers += 1;
                }
                let replicas = shard.replicas.clone();
                shard.reconfigure(replicas, in_sync.clone(), *primary);
            }
        }
        if lost {
            // Its copies hold nothing: never the one to lead later.
            for shard in self.shards.values_mut() {
                shard.left_in_sync.remove(&node_id);
            }
        }
        changes.len()
    }

    fn apply_inner(&mut self, command: MetaCommand) -> Result<MetaOutcome, Rejection> {
        match command {
            MetaCommand::Bootstrap { cluster_id } => match &self.cluster_id {
                None => {
                    self.cluster_id = Some(cluster_id.clone());
                    Ok(MetaOutcome::Bootstrapped { cluster_id })
                }
                Some(current) if *current == cluster_id => Ok(MetaOutcome::Unchanged),
                Some(current) => Err(Rejection::ClusterIdMismatch { current: current.clone(), proposed: cluster_id }),
            },
            MetaCommand::Catalog { command } => self.apply_catalog(command),
            MetaCommand::Principals { command } => {
                if let Some(table) = command.granted_tables().into_iter().find(|t| self.catalog.table(t).is_none()) {
                    return Err(Rejection::TableNotFound { table: table.to_string() });
                }
                match self.principals.apply(command)? {
                    true => Ok(MetaOutcome::PrincipalsChanged),
                    false => Ok(MetaOutcome::Unchanged),
                }
            }
            MetaCommand::RegisterNode { node_id, grpc_addr, flight_addr, pg_addr, role } => {
                match self.nodes.get_mut(&node_id) {
                    Some(node) => {
                        if node.grpc_addr == grpc_addr
                            && node.flight_addr == flight_addr
                            && node.pg_addr == pg_addr
                            && node.role == role
                        {
                            return Ok(MetaOutcome::Unchanged);
                        }
                        node.grpc_addr = grpc_addr;
                        node.flight_addr = flight_addr;
                        node.pg_addr = pg_addr;
                        node.role = role;
                        Ok(MetaOutcome::NodeUpdated { node_id })
                    }
                    None => {
                        let record = NodeRecord {
                            node_id,
                            grpc_addr,
                            flight_addr,
                            pg_addr,
                            role,
                            state: NodeState::Joining,
                            last_heartbeat: 0,
                            draining: false,
                        };
                        self.nodes.insert(node_id, record);
                        Ok(MetaOutcome::NodeRegistered { node_id })
                    }
                }
            }
            MetaCommand::UpdateNodeState { node_id, state } => self.set_node_state(node_id, state),
            MetaCommand::MarkRemoved { node_id } => self.set_node_state(node_id, NodeState::Down),
            MetaCommand::LeaveInSync { node_id } => {
                if !self.nodes.contains_key(&node_id) {
                    return Err(Rejection::NodeNotFound { node_id });
                }
                let changed = self.fail_over(node_id, true);
                Ok(if changed == 0 { MetaOutcome::Unchanged } else { MetaOutcome::NodeUpdated { node_id } })
            }
            MetaCommand::SetDraining { node_id, draining } => {
                let node = self.nodes.get_mut(&node_id).ok_or(Rejection::NodeNotFound { node_id })?;
                if node.draining == draining && node.state != NodeState::Draining {
                    return Ok(MetaOutcome::Unchanged);
                }
                node.draining = draining;
                if node.state == NodeState::Draining {
                    // The old way of draining, now carried by the flag.
                    node.state = NodeState::Serving;
                }
                Ok(MetaOutcome::NodeUpdated { node_id })
            }
            MetaCommand::SetNodeRole { node_id, role } => {
                let node = self.nodes.get_mut(&node_id).ok_or(Rejection::NodeNotFound { node_id })?;
                if node.role == role {
                    return Ok(MetaOutcome::Unchanged);
                }
                node.role = role;
                Ok(MetaOutcome::NodeUpdated { node_id })
            }
            MetaCommand::Heartbeat { node_id, at } => {
                let node = self.nodes.get_mut(&node_id).ok_or(Rejection::NodeNotFound { node_id })?;
                if at <= node.last_heartbeat {
                    return Ok(MetaOutcome::Unchanged);
                }
                node.last_heartbeat = at;
                Ok(MetaOutcome::NodeUpdated { node_id })
            }
            MetaCommand::SetShardReplicas { shard_id, replicas, in_sync, primary, expected_epoch } => {
                let in_sync = if in_sync.is_empty() { replicas.clone() } else { in_sync };
                self.validate_replicas(shard_id, &replicas, &in_sync, primary)?;
                let shard = self.shards.get_mut(&shard_id).ok_or(Rejection::ShardNotFound { shard_id })?;
                if let Some(expected) = expected_epoch.filter(|e| *e != shard.epoch) {
                    return Err(Rejection::ShardEpochConflict { shard_id, expected, current: shard.epoch });
                }
                if shard.replicas == replicas && shard.in_sync == in_sync && shard.primary == primary {
                    return Ok(MetaOutcome::Unchanged);
                }
                shard.reconfigure(replicas, in_sync, primary);
                // A move whose source the shard now needs (another copy left meanwhile) is over: both copies stay.
                let want = self.catalog.tables().find(|t| t.id == shard.table_id).map_or(1, |t| t.sharding.replicas);
                if shard.moving.is_some() && shard.replicas.len() <= want.max(1) as usize {
                    shard.moving = None;
                }
                Ok(MetaOutcome::ShardReplicasSet { shard_id, epoch: shard.epoch })
            }
            MetaCommand::MoveShardCopy { shard_id, from, to, expected_epoch } => {
                let eligible = self
                    .nodes
                    .get(&to)
                    .ok_or(Rejection::NodeNotFound { node_id: to })
                    .map(|n| n.state == NodeState::Serving && !n.is_draining())?;
                let shard = self.shards.get_mut(&shard_id).ok_or(Rejection::ShardNotFound { shard_id })?;
                if expected_epoch != shard.epoch {
                    return Err(Rejection::ShardEpochConflict {
                        shard_id,
                        expected: expected_epoch,
                        current: shard.epoch,
                    });
                }
                let invalid = |detail: String| Rejection::InvalidShardReplicas { shard_id, detail };
                if let Some(m) = shard.moving {
                    return Err(invalid(format!("a copy is moving already, from node {} to node {}", m.from, m.to)));
                }
                if !shard.replicas.contains(&from) {
                    return Err(invalid(format!("node {from} holds no copy to move")));
                }
                if shard.replicas.contains(&to) {
                    return Err(invalid(format!("node {to} holds a copy already")));
                }
                if !eligible {
                    return Err(invalid(format!("node {to} is not serving, or is draining")));
                }
                let mut replicas = shard.replicas.clone();
                replicas.push(to);
                let (in_sync, primary) = (shard.in_sync.clone(), shard.primary);
                shard.reconfigure(replicas, in_sync, primary);
                shard.moving = Some(ShardMove { from, to });
                Ok(MetaOutcome::ShardReplicasSet { shard_id, epoch: shard.epoch })
            }
            MetaCommand::ReportShardLoads { node_id, loads } => {
                let mut changed = false;
                for (shard_id, load) in loads {
                    if let Some(shard) = self.shards.get_mut(&shard_id).filter(|s| s.primary == node_id)
                        && shard.load != load
                    {
                        shard.load = load;
                        changed = true;
                    }
                }
                Ok(if changed { MetaOutcome::NodeUpdated { node_id } } else { MetaOutcome::Unchanged })
            }
            MetaCommand::SetShardManifest {
                shard_id,
                expected_version,
                manifest,
                uploaded_from_ms,
                expected_epoch,
                tiered_through,
                txn,
            } => {
                let fence_ms = self.cold_upload_fence_ms;
                let decided = self.transactions.get(&txn).map(|d| d.commit);
                let shard = self.shards.get_mut(&shard_id).ok_or(Rejection::ShardNotFound { shard_id })?;
                if let Some(expected) = expected_epoch
                    && expected != shard.epoch
                {
                    return Err(Rejection::ShardEpochConflict { shard_id, expected, current: shard.epoch });
                }
                if let Some(pending) = &shard.pending {
                    // The same proposal again (its answer was lost) changes nothing; any other waits for the decision.
                    return if txn != 0 && pending.txn == txn && pending.manifest.location == manifest.location {
                        Ok(MetaOutcome::Unchanged)
                    } else {
                        Err(Rejection::ShardManifestPending { shard_id, txn: pending.txn })
                    };
                }
                let current = shard.manifest.as_ref().map(|m| m.version);
                if current != expected_version || current.is_some_and(|c| manifest.version <= c) {
                    return Err(Rejection::ManifestVersionConflict { shard_id, expected: expected_version, current });
                }
                if uploaded_from_ms != 0 && uploaded_from_ms < fence_ms {
                    return Err(Rejection::ColdUploadsFenced { shard_id, uploaded_from_ms, fence_ms });
                }
                let version = manifest.version;
                let txn_version = shard.manifest.as_ref().map_or(0, |m| m.txn_version);
                let manifest = ManifestPointer { txn_version, ..manifest };
                if txn != 0 {
                    // A part of a statement decided already comes too late: an abort dropped it, a commit was
                    // recorded without it.
                    if let Some(commit) = decided {
                        return Err(Rejection::TransactionDecided { txn, commit });
                    }
                    shard.pending = Some(PendingManifest { txn, manifest, tiered_through });
                    // The floor of new chunk numbers rises now: a copy started anew before the decision must not
                    // number a chunk the proposed mark covers (a floor only, so an abort leaves it harmlessly high).
                    shard.tiered_through = shard.tiered_through.max(tiered_through);
                    self.pending_manifests.entry(txn).or_default().push(shard_id);
                    return Ok(MetaOutcome::ShardManifestProposed { shard_id, version, txn });
                }
                shard.manifest = Some(manifest);
                shard.tiered_through = shard.tiered_through.max(tiered_through);
                Ok(MetaOutcome::ShardManifestSet { shard_id, version })
            }
            MetaCommand::FenceColdUploads { before_ms } => {
                self.cold_upload_fence_ms = self.cold_upload_fence_ms.max(before_ms);
                Ok(MetaOutcome::ColdUploadsFenced { before_ms: self.cold_upload_fence_ms })
            }
            MetaCommand::DecideTransaction { txn, commit, at_ms } => {
                if let Some(decided) = self.transactions.get(&txn) {
                    return if decided.commit == commit {
                        Ok(MetaOutcome::Unchanged)
                    } else {
                        Err(Rejection::TransactionDecided { txn, commit: decided.commit })
                    };
                }
                // Decisions made more than a day before this one (by the deciders' clocks) are dropped.
                let expired_before = at_ms.saturating_sub(DECISION_KEPT_MS);
                self.transactions.retain(|_, d| d.at_ms >= expired_before);
                let version = self.version + 1;
                self.transactions.insert(txn, Decision { commit, at_ms, version });
                // The statement's pending manifests become current in this same apply, or are dropped: both tiers of
                // every shard flip at the decision's version.
                for shard_id in self.pending_manifests.remove(&txn).unwrap_or_default() {
                    let Some(shard) = self.shards.get_mut(&shard_id) else { continue };
                    if shard.pending.as_ref().is_none_or(|p| p.txn != txn) {
                        continue;
                    }
                    let Some(pending) = shard.pending.take() else { continue };
                    if commit {
                        shard.manifest = Some(ManifestPointer { txn_version: version, ..pending.manifest });
                        shard.tiered_through = shard.tiered_through.max(pending.tiered_through);
                    }
                }
                Ok(MetaOutcome::TransactionDecided { txn, commit })
            }
            MetaCommand::ForgetTransaction { txn } => match self.transactions.remove(&txn) {
                Some(_) => Ok(MetaOutcome::TransactionForgotten { txn }),
                None => Ok(MetaOutcome::Unchanged),
            },
        }
    }

    fn apply_catalog(&mut self, command: CatalogCommand) -> Result<MetaOutcome, Rejection> {
        // Placement is decided before the catalog changes, and only when the command would create a native table:
        // `IF NOT EXISTS` on an existing table needs no node. The catalog validates the sharding itself.
        let mut placement = None;
        if let CatalogCommand::CreateTable { name, kind, sharding, .. } = &command {
            let creates = self.catalog.table(name).is_none();
            // A sharding the catalog will refuse needs no placement (and placing it would be wasted work).
            let valid = (1..=SLOT_COUNT).contains(&sharding.shards) && sharding.replicas >= 1;
            if creates && valid && matches!(kind, crate::catalog::TableKind::Native) {
                let placed =
                    placement::place(self.nodes.values(), self.shards.values(), sharding.shards, sharding.replicas);
                placement = Some(placed.ok_or_else(|| Rejection::NoNodeForShards { table: name.clone() })?);
            }
        }
        match self.catalog.apply(command).map_err(Rejection::from_catalog)? {
            CatalogOutcome::Created(table) => {
                let placed = placement.unwrap_or_default();
                let count = placed.len() as u32;
                let mut shards = Vec::with_capacity(placed.len());
                for (index, placed) in placed.into_iter().enumerate() {
                    self.next_shard_id += 1;
                    let shard_id = ShardId(self.next_shard_id);
                    let primary = placed.replicas[0];
                    let record = ShardRecord {
                        shard_id,
                        table_id: table.id,
                        slots: SlotRange::of_shard(index as u32, count),
                        in_sync: placed.replicas.clone(),
                        replicas: placed.replicas,
                        primary,
                        epoch: 1,
                        manifest: None,
                        left_in_sync: Default::default(),
                        tiered_through: 0,
                        pending: None,
                        moving: None,
                        load: ShardLoad::default(),
                    };
                    self.shards.insert(shard_id, record);
                    shards.push(shard_id);
                }
                Ok(MetaOutcome::TableCreated { table, shards })
            }
            CatalogOutcome::Dropped(table) => {
                let shards: Vec<ShardId> = self.table_shards(table.id).map(|s| s.shard_id).collect();
                for shard_id in &shards {
                    if let Some(pending) = self.shards.remove(shard_id).and_then(|s| s.pending)
                        && let Some(listed) = self.pending_manifests.get_mut(&pending.txn)
                    {
                        listed.retain(|s| s != shard_id);
                        if listed.is_empty() {
                            self.pending_manifests.remove(&pending.txn);
                        }
                    }
                }
                self.principals.table_dropped(&table.name);
                Ok(MetaOutcome::TableDropped { table, shards })
            }
            CatalogOutcome::Altered(table) => Ok(MetaOutcome::TableAltered { table }),
            CatalogOutcome::Unchanged => Ok(MetaOutcome::Unchanged),
        }
    }

    fn validate_replicas(
        &self,
        shard_id: ShardId,
        replicas: &[u64],
        in_sync: &[u64],
        primary: u64,
    ) -> Result<(), Rejection> {
        let invalid = |detail: String| Rejection::InvalidShardReplicas { shard_id, detail };
        if !self.shards.contains_key(&shard_id) {
            return Err(Rejection::ShardNotFound { shard_id });
        }
        if replicas.is_empty() {
            return Err(invalid("the replica set is empty".into()));
        }
        let mut seen = BTreeSet::new();
        for node_id in replicas {
            if !seen.insert(*node_id) {
                return Err(invalid(format!("node {node_id} is listed twice")));
            }
            if !self.nodes.contains_key(node_id) {
                return Err(Rejection::NodeNotFound { node_id: *node_id });
            }
        }
        if !seen.contains(&primary) {
            return Err(invalid(format!("primary {primary} is not a replica")));
        }
        let mut in_sync_seen = BTreeSet::new();
        for node_id in in_sync {
            if !seen.contains(node_id) {
                return Err(invalid(format!("in-sync node {node_id} is not a replica")));
            }
            if !in_sync_seen.insert(*node_id) {
                return Err(invalid(format!("in-sync node {node_id} is listed twice")));
            }
        }
        if !in_sync_seen.contains(&primary) {
            return Err(invalid(format!("primary {primary} is not in sync")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
