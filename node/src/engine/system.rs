//! The `system` schema: tables that show the node's own state through SQL.
//!
//! - `system.nodes`: one row per member of the metadata Raft group, as this node sees it — id, role, whether it
//!   leads, its lifecycle state and addresses from the node registry, and (on the leader only, which is the one that
//!   knows) the log index replicated to it and how far it lags.
//! - `system.raft`: one row, this node's replica — cluster id, term, leader, last log / applied / snapshot index,
//!   metadata version, voter and learner counts, and its snapshot counters.
//!
//! Each scan reads the replica's state at that moment, so the tables are always current and cost nothing when
//! nobody queries them. Every node answers for itself: run the same query on another node to see its view.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use quiver_meta::MetaNode;
use quiver_meta::{NodeRole, NodeState};

/// The schema's name.
pub const SYSTEM_SCHEMA: &str = "system";

/// The `system` schema over one metadata replica.
pub(crate) struct SystemSchema {
    meta: MetaNode,
}

impl SystemSchema {
    pub(crate) fn new(meta: MetaNode) -> Self {
        SystemSchema { meta }
    }
}

impl std::fmt::Debug for SystemSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemSchema").field("node_id", &self.meta.node_id()).finish()
    }
}

/// The tables of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SystemTable {
    Nodes,
    Raft,
}

impl SystemTable {
    const ALL: [SystemTable; 2] = [SystemTable::Nodes, SystemTable::Raft];

    fn name(self) -> &'static str {
        match self {
            SystemTable::Nodes => "nodes",
            SystemTable::Raft => "raft",
        }
    }

    fn schema(self) -> SchemaRef {
        let u64_field = |name: &str, nullable: bool| Field::new(name, DataType::UInt64, nullable);
        let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
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
        }))
    }

    /// Reads the table's rows from the replica now.
    fn rows(self, meta: &MetaNode) -> DfResult<RecordBatch> {
        let status = meta.status();
        let columns: Vec<ArrayRef> = match self {
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
            .map(|table| Arc::new(SystemTableProvider { table, meta: self.meta.clone() }) as _))
    }

    fn table_exist(&self, name: &str) -> bool {
        SystemTable::ALL.iter().any(|t| t.name() == name)
    }
}

/// One system table; its rows are read from the replica at each scan.
struct SystemTableProvider {
    table: SystemTable,
    meta: MetaNode,
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
        let batch = self.table.rows(&self.meta)?;
        MemTable::try_new(batch.schema(), vec![vec![batch]])?.scan(state, projection, filters, limit).await
    }
}
