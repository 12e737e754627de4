//! The `system` schema: tables that show the node's own state through SQL.
//!
//! - `system.nodes`: one row per member of the metadata Raft group, as this node sees it — id, role, whether it
//!   leads, its lifecycle state and addresses from the node registry, and (on the leader only, which is the one that
//!   knows) the log index replicated to it and how far it lags.
//! - `system.raft`: one row, this node's replica — cluster id, term, leader, last log / applied / snapshot index,
//!   metadata version, voter and learner counts, and its snapshot counters.
//! - `system.shards`: one row per shard of every native table, from the shard map — its slot range, primary,
//!   replicas, in-sync replicas, configuration epoch, and `state`: `ok`, or `under-replicated` while fewer copies are
//!   in sync than the table's replication factor.
//! - `system.shard_moves`: the copies of shards this node leads that it is bringing in sync (back after a failure, new
//!   for re-replication or a drain), and the last finished ones — table, shard, target node, `phase` (`copying`,
//!   `finishing`, `waiting` after a failed attempt, `in-sync`), attempts, start and last change, chunks and bytes sent
//!   and still to send, the epoch, and the last attempt's error. Moves run on the shard's primary: query that node.
//!
//! - `system.tier_files`: one row per cold-tier file that this node's scans read — table, shard, manifest version,
//!   path under the cluster's prefix, node and hot store it came from, rows, bytes, the highest hot-chunk sequence
//!   number in it, and the minimum and maximum of the table's first primary-key column (or first column).
//! - `system.tiering`: one row per native table on this node — its shard, manifest version, files, cold rows and
//!   bytes, and the lag: hot chunks, rows and bytes not yet tiered; `state` is `ready`, or `unavailable: <why>` when
//!   the cold tier cannot be read.
//!
//! - `system.queries`: the last queries on this node (statements that returned rows; up to 1,000) — id, start, duration,
//!   text, rows returned, and what their scans read from the cold tier: GET requests sent to the bucket and their
//!   bytes, and the read cache's block hits and misses (a statement writes nothing to the bucket: tiering is not a
//!   statement); and the bytes its stages shipped between nodes (NULL until a multi-stage plan's tasks reported).
//!
//! - `system.users`: one row per role — name, whether it may log in, is a superuser, has a password, the roles it is
//!   a member of, and its generation (raised by every change to it; tokens issued before are revoked). No password
//!   or verifier is shown.
//! - `system.grants`: one row per privilege granted — grantee, object (`TABLE t` or `ALL TABLES`), privilege.
//!
//! - `system.audit`: the last 1,000 entries of this node's audit log — id, time, event (`login`, `token`, `ddl`,
//!   `dcl`, `denied`, `peer_refused`, `join_refused`, `insecure`), outcome (`ok`, `failed`, `refused`), user, peer address,
//!   protocol, and detail (the statement, or why it failed). The audit file keeps them all (docs/security.md).
//!
//! With authentication on, only a superuser reads the `system` schema (it shows other users' queries and the
//! cluster's layout).
//!
//! Each scan reads the replica's state at that moment, so the tables are always current and cost nothing when
//! nobody queries them. Every node answers for itself: run the same query on another node to see its view.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use quiver_meta::MetaNode;
use quiver_meta::{NodeRole, NodeState};

use super::moves::{MoveLog, MoveRecord};
use super::statements::{QueryLog, QueryRecord};
use crate::audit::AuditLog;
use crate::cold::{ColdState, ColdView};
use crate::table::{HotTable, ShardReplica};

/// The schema's name.
pub const SYSTEM_SCHEMA: &str = "system";

/// The attached native tables by name, as the engine keeps them.
pub(crate) type HotTables = Arc<RwLock<HashMap<String, Arc<HotTable>>>>;

/// What the system tables read: the metadata replica, the engine's tables, its query and move logs.
#[derive(Clone)]
struct Sources {
    meta: MetaNode,
    hot: HotTables,
    queries: Arc<QueryLog>,
    moves: Arc<MoveLog>,
    audit: Arc<AuditLog>,
}

/// The `system` schema over one metadata replica and the engine's state.
pub(crate) struct SystemSchema {
    sources: Sources,
}

impl SystemSchema {
    pub(crate) fn new(
        meta: MetaNode,
        hot: HotTables,
        queries: Arc<QueryLog>,
        moves: Arc<MoveLog>,
        audit: Arc<AuditLog>,
    ) -> Self {
        SystemSchema { sources: Sources { meta, hot, queries, moves, audit } }
    }
}

impl std::fmt::Debug for SystemSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemSchema").field("node_id", &self.sources.meta.node_id()).finish()
    }
}

/// The tables of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SystemTable {
    Nodes,
    Raft,
    Shards,
    ShardMoves,
    TierFiles,
    Tiering,
    Queries,
    Users,
    Grants,
    Audit,
}

impl SystemTable {
    const ALL: [SystemTable; 10] = [
        SystemTable::Nodes,
        SystemTable::Raft,
        SystemTable::Shards,
        SystemTable::ShardMoves,
        SystemTable::TierFiles,
        SystemTable::Tiering,
        SystemTable::Queries,
        SystemTable::Users,
        SystemTable::Grants,
        SystemTable::Audit,
    ];

    fn name(self) -> &'static str {
        match self {
            SystemTable::Nodes => "nodes",
            SystemTable::Raft => "raft",
            SystemTable::Shards => "shards",
            SystemTable::ShardMoves => "shard_moves",
            SystemTable::TierFiles => "tier_files",
            SystemTable::Tiering => "tiering",
            SystemTable::Queries => "queries",
            SystemTable::Users => "users",
            SystemTable::Grants => "grants",
            SystemTable::Audit => "audit",
        }
    }

    fn schema(self) -> SchemaRef {
        let u64_field = |name: &str, nullable: bool| Field::new(name, DataType::UInt64, nullable);
        let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
        let timestamp =
            |name: &str| Field::new(name, DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())), false);
        Arc::new(Schema::new(match self {
            SystemTable::Nodes => vec![
                u64_field("node_id", false),
                text("role", false),
                Field::new("is_leader", DataType::Boolean, false),
                text("state", true),
                text("grpc_addr", false),
                text("flight_addr", true),
                text("pg_addr", true),
                u64_field("matched_index", true),
                u64_field("lag", true),
                Field::new("draining", DataType::Boolean, false),
                u64_field("replicas", false),
                u64_field("primaries", false),
            ],
            SystemTable::Raft => vec![
                u64_field("node_id", false),
                text("cluster_id", false),
                u64_field("term", false),
                u64_field("leader_id", true),
                Field::new("is_leader", DataType::Boolean, false),
                u64_field("last_log_index", true),
                u64_field("applied_index", true),
                u64_field("snapshot_index", true),
                u64_field("metadata_version", false),
                u64_field("voters", false),
                u64_field("learners", false),
                u64_field("target_voters", false),
                u64_field("snapshots_built", false),
                u64_field("snapshots_installed", false),
                u64_field("last_snapshot_bytes", false),
            ],
            SystemTable::Shards => vec![
                text("table_name", false),
                u64_field("shard_id", false),
                text("slots", false),
                u64_field("primary", false),
                text("replicas", false),
                text("in_sync", false),
                u64_field("epoch", false),
                text("state", false),
                u64_field("hot_rows", true),
                u64_field("hot_bytes", true),
                text("catching_up", false),
                u64_field("reported_hot_bytes", false),
            ],
            SystemTable::ShardMoves => vec![
                text("table_name", false),
                u64_field("shard_id", false),
                u64_field("target", false),
                text("phase", false),
                u64_field("attempts", false),
                timestamp("started"),
                timestamp("updated"),
                u64_field("chunks_sent", false),
                u64_field("bytes_sent", false),
                u64_field("chunks_left", false),
                u64_field("bytes_left", false),
                u64_field("rows_sent", false),
                u64_field("rows_left", false),
                u64_field("eta_seconds", true),
                u64_field("source", true),
                u64_field("epoch", false),
                text("error", true),
            ],
            SystemTable::TierFiles => vec![
                text("table_name", false),
                u64_field("shard_id", true),
                u64_field("manifest_version", false),
                text("path", false),
                u64_field("node_id", false),
                text("store", false),
                u64_field("rows", false),
                u64_field("bytes", false),
                u64_field("max_seq", false),
                text("key_column", false),
                text("key_min", true),
                text("key_max", true),
            ],
            SystemTable::Tiering => vec![
                text("table_name", false),
                u64_field("shard_id", true),
                u64_field("manifest_version", true),
                u64_field("files", true),
                u64_field("cold_rows", true),
                u64_field("cold_bytes", true),
                u64_field("hot_chunks", false),
                u64_field("hot_rows", false),
                u64_field("hot_bytes", false),
                text("state", false),
            ],
            SystemTable::Queries => vec![
                u64_field("query_id", false),
                timestamp("started"),
                u64_field("duration_ms", false),
                text("query", false),
                u64_field("rows", false),
                u64_field("bucket_gets", false),
                u64_field("bucket_get_bytes", false),
                u64_field("cache_hits", false),
                u64_field("cache_misses", false),
                u64_field("bytes_shipped", true),
            ],
            SystemTable::Users => vec![
                text("name", false),
                Field::new("login", DataType::Boolean, false),
                Field::new("superuser", DataType::Boolean, false),
                Field::new("has_password", DataType::Boolean, false),
                text("member_of", false),
                u64_field("generation", false),
            ],
            SystemTable::Grants => vec![text("grantee", false), text("object", false), text("privilege", false)],
            SystemTable::Audit => vec![
                u64_field("id", false),
                timestamp("time"),
                text("event", false),
                text("outcome", false),
                text("user_name", true),
                text("peer", true),
                text("protocol", true),
                text("detail", false),
            ],
        }))
    }

    /// Reads the table's rows from the replica and the engine's tables now.
    fn rows(self, sources: &Sources) -> DfResult<RecordBatch> {
        let Sources { meta, hot, queries, moves, audit } = sources;
        let status = meta.status();
        let mut tables: Vec<Arc<HotTable>> = hot.read().expect("hot table map poisoned").values().cloned().collect();
        tables.sort_by(|a, b| a.def().name.cmp(&b.def().name));
        let columns: Vec<ArrayRef> = match self {
            SystemTable::Users => meta.read_local(|state| {
                let roles: Vec<_> = state.principals().roles().collect();
                let flag = |f: fn(&quiver_meta::RoleRecord) -> bool| -> ArrayRef {
                    Arc::new(BooleanArray::from_iter(roles.iter().map(|r| Some(f(r)))))
                };
                vec![
                    Arc::new(StringArray::from_iter_values(roles.iter().map(|r| r.name.as_str()))) as ArrayRef,
                    flag(|r| r.login),
                    flag(|r| r.superuser),
                    flag(|r| r.verifier.is_some()),
                    Arc::new(StringArray::from_iter_values(
                        roles.iter().map(|r| r.member_of.iter().map(String::as_str).collect::<Vec<_>>().join(",")),
                    )),
                    Arc::new(UInt64Array::from_iter_values(roles.iter().map(|r| r.generation))),
                ]
            }),
            SystemTable::Grants => meta.read_local(|state| {
                let grants: Vec<_> = state.principals().grants().collect();
                vec![
                    Arc::new(StringArray::from_iter_values(grants.iter().map(|g| g.grantee))) as ArrayRef,
                    Arc::new(StringArray::from_iter_values(grants.iter().map(|g| g.object.to_string()))),
                    Arc::new(StringArray::from_iter_values(grants.iter().map(|g| g.privilege.keyword()))),
                ]
            }),
            SystemTable::Audit => {
                let a = audit.recent();
                vec![
                    u64_column(&a, |e| e.id),
                    time_column(&a, |e| e.time_ms),
                    Arc::new(StringArray::from_iter_values(a.iter().map(|e| e.event.name()))),
                    Arc::new(StringArray::from_iter_values(a.iter().map(|e| e.outcome.name()))),
                    Arc::new(StringArray::from_iter(a.iter().map(|e| e.user.as_deref()))),
                    Arc::new(StringArray::from_iter(a.iter().map(|e| e.peer.as_deref()))),
                    Arc::new(StringArray::from_iter(a.iter().map(|e| e.protocol))),
                    Arc::new(StringArray::from_iter_values(a.iter().map(|e| e.detail.as_str()))),
                ]
            }
            SystemTable::Queries => {
                let q = queries.records();
                let values = |f: fn(&QueryRecord) -> u64| u64_column(&q, f);
                vec![
                    values(|r| r.id),
                    time_column(&q, |r| r.started_ms),
                    values(|r| r.duration_ms),
                    Arc::new(StringArray::from_iter_values(q.iter().map(|r| r.text.as_str()))),
                    values(|r| r.rows),
                    values(|r| r.bucket_gets),
                    values(|r| r.bucket_get_bytes),
                    values(|r| r.cache_hits),
                    values(|r| r.cache_misses),
                    Arc::new(UInt64Array::from_iter(q.iter().map(|r| r.bytes_shipped))),
                ]
            }
            SystemTable::ShardMoves => {
                let m = moves.records();
                let values = |f: fn(&MoveRecord) -> u64| u64_column(&m, f);
                let time = |f: fn(&MoveRecord) -> u64| time_column(&m, f);
                vec![
                    Arc::new(StringArray::from_iter_values(m.iter().map(|r| r.table_name.as_str()))),
                    values(|r| r.shard.0),
                    values(|r| r.target),
                    Arc::new(StringArray::from_iter_values(m.iter().map(|r| r.phase.name()))),
                    values(|r| r.attempts),
                    time(|r| r.started_ms),
                    time(|r| r.updated_ms),
                    values(|r| r.chunks_sent),
                    values(|r| r.bytes_sent),
                    values(|r| r.chunks_left),
                    values(|r| r.bytes_left),
                    values(|r| r.rows_sent),
                    values(|r| r.rows_left),
                    Arc::new(UInt64Array::from_iter(m.iter().map(MoveLog::eta_seconds))),
                    // The node a copy moving for balance leaves (NULL: a copy made again or brought back).
                    Arc::new(UInt64Array::from_iter(m.iter().map(|r| {
                        meta.read_local(|s| s.shard(r.shard).and_then(|s| s.moving).filter(|m| m.to == r.target))
                            .map(|m| m.from)
                    }))),
                    values(|r| r.epoch),
                    Arc::new(StringArray::from_iter(m.iter().map(|r| r.error.as_deref()))),
                ]
            }
            SystemTable::TierFiles => {
                let mut rows = TierFileRows::default();
                for shard in tables.iter().flat_map(|t| t.shards()) {
                    if let ColdState::Ready(view) = shard.cold() {
                        rows.add(shard, Some(shard.shard_id().0), &view);
                    }
                }
                rows.columns()
            }
            SystemTable::Tiering => {
                let mut rows = TieringRows::default();
                for shard in tables.iter().flat_map(|t| t.shards()) {
                    rows.add(shard, Some(shard.shard_id().0));
                }
                rows.columns()
            }
            SystemTable::Shards => {
                let local: HashMap<u64, (u64, u64)> = tables
                    .iter()
                    .flat_map(|t| t.shards())
                    .map(|shard| {
                        let load = super::loads::hot_load(shard);
                        (shard.shard_id().0, (load.hot_rows, load.hot_bytes))
                    })
                    .collect();
                meta.read_local(|state| shard_columns(state, &local))
            }
            SystemTable::Nodes => {
                let m = &status.members;
                let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
                vec![
                    Arc::new(UInt64Array::from_iter_values(m.iter().map(|n| n.node_id))),
                    Arc::new(StringArray::from_iter_values(m.iter().map(|n| role_name(n.role)))),
                    Arc::new(BooleanArray::from_iter(m.iter().map(|n| Some(n.leader)))),
                    Arc::new(StringArray::from_iter(m.iter().map(|n| n.state.map(state_name)))),
                    Arc::new(StringArray::from_iter_values(m.iter().map(|n| n.grpc_addr.as_str()))),
                    Arc::new(StringArray::from_iter(m.iter().map(|n| non_empty(&n.flight_addr)))),
                    Arc::new(StringArray::from_iter(m.iter().map(|n| non_empty(&n.pg_addr)))),
                    Arc::new(UInt64Array::from_iter(m.iter().map(|n| n.matched_index))),
                    Arc::new(UInt64Array::from_iter(m.iter().map(|n| n.lag))),
                    Arc::new(BooleanArray::from_iter(m.iter().map(|n| Some(n.draining)))),
                    Arc::new(UInt64Array::from_iter_values(m.iter().map(|n| n.replicas))),
                    Arc::new(UInt64Array::from_iter_values(m.iter().map(|n| n.primaries))),
                ]
            }
            SystemTable::Raft => {
                let count = |role: NodeRole| status.members.iter().filter(|n| n.role == role).count() as u64;
                let snapshots = meta.snapshot_stats();
                vec![
                    Arc::new(UInt64Array::from(vec![status.node_id])),
                    Arc::new(StringArray::from(vec![status.cluster_id.clone()])),
                    Arc::new(UInt64Array::from(vec![status.term])),
                    Arc::new(UInt64Array::from(vec![status.leader_id])),
                    Arc::new(BooleanArray::from(vec![status.leader_id == Some(status.node_id)])),
                    Arc::new(UInt64Array::from(vec![status.last_log_index])),
                    Arc::new(UInt64Array::from(vec![status.applied_index])),
                    Arc::new(UInt64Array::from(vec![status.snapshot_index])),
                    Arc::new(UInt64Array::from(vec![status.metadata_version])),
                    Arc::new(UInt64Array::from(vec![count(NodeRole::Voter)])),
                    Arc::new(UInt64Array::from(vec![count(NodeRole::Learner)])),
                    Arc::new(UInt64Array::from(vec![status.target_voters as u64])),
                    Arc::new(UInt64Array::from(vec![snapshots.built])),
                    Arc::new(UInt64Array::from(vec![snapshots.installed])),
                    Arc::new(UInt64Array::from(vec![snapshots.last_bytes])),
                ]
            }
        };
        Ok(RecordBatch::try_new(self.schema(), columns)?)
    }
}

/// A column of `f` of each of `rows`.
fn u64_column<T>(rows: &[T], f: fn(&T) -> u64) -> ArrayRef {
    Arc::new(UInt64Array::from_iter_values(rows.iter().map(f)))
}

/// A UTC timestamp column of `f` (milliseconds since the Unix epoch) of each of `rows`.
fn time_column<T>(rows: &[T], f: fn(&T) -> u64) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| f(r) as i64)).with_timezone("+00:00"))
}

/// The columns of `system.shards`: every native table's shards, tables by name, shards in slot order, with the hot
/// rows and bytes of this node's replica (`local`, by shard id; NULL where this node holds none), and the hot bytes
/// its primary last reported (what rebalancing weighs).
fn shard_columns(state: &quiver_meta::MetaState, local: &HashMap<u64, (u64, u64)>) -> Vec<ArrayRef> {
    let list = |nodes: &[u64]| nodes.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let (mut table, mut shard, mut slots, mut primary) = (vec![], vec![], vec![], vec![]);
    let (mut replicas, mut in_sync, mut epoch, mut health) = (vec![], vec![], vec![], vec![]);
    let (mut hot_rows, mut hot_bytes, mut reported, mut catching_up) = (vec![], vec![], vec![], vec![]);
    for def in state.catalog().tables() {
        let mut shards: Vec<_> = state.table_shards(def.id).collect();
        shards.sort_by_key(|r| r.slots);
        for r in shards {
            table.push(def.name.clone());
            shard.push(r.shard_id.0);
            slots.push(r.slots.to_string());
            primary.push(r.primary);
            replicas.push(list(&r.replicas));
            in_sync.push(list(&r.in_sync));
            epoch.push(r.epoch);
            let full = r.in_sync.len() as u64 >= u64::from(def.sharding.replicas);
            health.push(if full { "ok" } else { "under-replicated" });
            let here = local.get(&r.shard_id.0);
            hot_rows.push(here.map(|h| h.0));
            hot_bytes.push(here.map(|h| h.1));
            reported.push(r.load.hot_bytes);
            let behind: Vec<u64> = r.replicas.iter().copied().filter(|n| !r.in_sync.contains(n)).collect();
            catching_up.push(list(&behind));
        }
    }
    vec![
        Arc::new(StringArray::from(table)),
        Arc::new(UInt64Array::from(shard)),
        Arc::new(StringArray::from(slots)),
        Arc::new(UInt64Array::from(primary)),
        Arc::new(StringArray::from(replicas)),
        Arc::new(StringArray::from(in_sync)),
        Arc::new(UInt64Array::from(epoch)),
        Arc::new(StringArray::from(health)),
        Arc::new(UInt64Array::from(hot_rows)),
        Arc::new(UInt64Array::from(hot_bytes)),
        Arc::new(StringArray::from(catching_up)),
        Arc::new(UInt64Array::from(reported)),
    ]
}

/// The rows of `system.tier_files`, column by column.
#[derive(Default)]
struct TierFileRows {
    table: Vec<String>,
    shard: Vec<Option<u64>>,
    version: Vec<u64>,
    path: Vec<String>,
    node: Vec<u64>,
    store: Vec<String>,
    rows: Vec<u64>,
    bytes: Vec<u64>,
    max_seq: Vec<u64>,
    key: Vec<String>,
    key_min: Vec<Option<String>>,
    key_max: Vec<Option<String>>,
}

impl TierFileRows {
    fn add(&mut self, table: &ShardReplica, shard: Option<u64>, view: &ColdView) {
        let def = table.def();
        let schema = table.schema();
        let key = def.primary_key.first().and_then(|k| schema.index_of(k).ok()).unwrap_or(0);
        let key_name = schema.fields().get(key).map(|f| f.name().clone()).unwrap_or_default();
        for file in &view.files {
            self.table.push(def.name.clone());
            self.shard.push(shard);
            self.version.push(view.version);
            self.path.push(file.path.clone());
            self.node.push(file.node);
            self.store.push(format!("{:016x}", file.store));
            self.rows.push(file.rows);
            self.bytes.push(file.bytes);
            self.max_seq.push(file.max_seq);
            self.key.push(key_name.clone());
            let stats = file.columns.get(key);
            self.key_min.push(stats.and_then(|s| s.min.clone()));
            self.key_max.push(stats.and_then(|s| s.max.clone()));
        }
    }

    fn columns(self) -> Vec<ArrayRef> {
        vec![
            Arc::new(StringArray::from(self.table)),
            Arc::new(UInt64Array::from(self.shard)),
            Arc::new(UInt64Array::from(self.version)),
            Arc::new(StringArray::from(self.path)),
            Arc::new(UInt64Array::from(self.node)),
            Arc::new(StringArray::from(self.store)),
            Arc::new(UInt64Array::from(self.rows)),
            Arc::new(UInt64Array::from(self.bytes)),
            Arc::new(UInt64Array::from(self.max_seq)),
            Arc::new(StringArray::from(self.key)),
            Arc::new(StringArray::from(self.key_min)),
            Arc::new(StringArray::from(self.key_max)),
        ]
    }
}

/// The rows of `system.tiering`, column by column.
#[derive(Default)]
struct TieringRows {
    table: Vec<String>,
    shard: Vec<Option<u64>>,
    version: Vec<Option<u64>>,
    files: Vec<Option<u64>>,
    cold_rows: Vec<Option<u64>>,
    cold_bytes: Vec<Option<u64>>,
    hot_chunks: Vec<u64>,
    hot_rows: Vec<u64>,
    hot_bytes: Vec<u64>,
    state: Vec<String>,
}

impl TieringRows {
    fn add(&mut self, table: &ShardReplica, shard: Option<u64>) {
        let (view, state) = match table.cold() {
            ColdState::Ready(view) => (Some(view), "ready".to_string()),
            ColdState::Unavailable(why) => (None, format!("unavailable: {why}")),
        };
        // Hot chunks the cold view covers are skipped by scans (and about to be removed): not lag.
        let through = view.as_ref().map_or(0, |v| v.hot_through);
        let chunks = table.version();
        let lag: Vec<_> = chunks.iter().filter(|c| c.seq > through).collect();
        self.table.push(table.def().name.clone());
        self.shard.push(shard);
        self.version.push(view.as_ref().map(|v| v.version));
        self.files.push(view.as_ref().map(|v| v.files.len() as u64));
        self.cold_rows.push(view.as_ref().map(|v| v.files.iter().map(|f| f.rows).sum()));
        self.cold_bytes.push(view.as_ref().map(|v| v.files.iter().map(|f| f.bytes).sum()));
        self.hot_chunks.push(lag.len() as u64);
        self.hot_rows.push(lag.iter().map(|c| c.meta.rows).sum());
        self.hot_bytes.push(lag.iter().map(|c| c.meta.data_bytes).sum());
        self.state.push(state);
    }

    fn columns(self) -> Vec<ArrayRef> {
        vec![
            Arc::new(StringArray::from(self.table)),
            Arc::new(UInt64Array::from(self.shard)),
            Arc::new(UInt64Array::from(self.version)),
            Arc::new(UInt64Array::from(self.files)),
            Arc::new(UInt64Array::from(self.cold_rows)),
            Arc::new(UInt64Array::from(self.cold_bytes)),
            Arc::new(UInt64Array::from(self.hot_chunks)),
            Arc::new(UInt64Array::from(self.hot_rows)),
            Arc::new(UInt64Array::from(self.hot_bytes)),
            Arc::new(StringArray::from(self.state)),
        ]
    }
}

fn role_name(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Voter => "voter",
        NodeRole::Learner => "learner",
    }
}

fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Joining => "joining",
        NodeState::Serving => "serving",
        NodeState::Draining => "draining",
        NodeState::Down => "down",
    }
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        SystemTable::ALL.iter().map(|t| t.name().to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(SystemTable::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .map(|table| Arc::new(SystemTableProvider { table, sources: self.sources.clone() }) as _))
    }

    fn table_exist(&self, name: &str) -> bool {
        SystemTable::ALL.iter().any(|t| t.name() == name)
    }
}

/// One system table; its rows are read from the replica at each scan.
struct SystemTableProvider {
    table: SystemTable,
    sources: Sources,
}

impl std::fmt::Debug for SystemTableProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemTableProvider").field("table", &self.table).finish()
    }
}

#[async_trait]
impl TableProvider for SystemTableProvider {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batch = self.table.rows(&self.sources)?;
        MemTable::try_new(batch.schema(), vec![vec![batch]])?.scan(state, projection, filters, limit).await
    }
}
