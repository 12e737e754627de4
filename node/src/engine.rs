//! [`Engine`]: one database — its hot store, catalog, tables and SQL execution. Every frontend (the embedded API,
//! Flight SQL, the PostgreSQL wire, the CLI) goes through it.
//!
//! ```text
//!  SQL text ──▶ parse (DataFusion's parser, PostgreSQL dialect) ──▶ logical plan
//!        ├─ CREATE/DROP TABLE ─────────▶ metadata command ─▶ Raft (MetaNode) ─▶ applied ─▶ tables attached/detached
//!        ├─ DELETE/UPDATE ─────────────▶ query::dml (chunk rewrite, one atomic durable write)
//!        ├─ COPY t FROM 'file' ────────▶ read the file with DataFusion ─▶ appender
//!        ├─ BEGIN/COMMIT/SET … ────────▶ accepted (statements autocommit)
//!        └─ SELECT/INSERT/EXPLAIN/COPY TO ─▶ DataFusion (HotTableProvider scans and inserts)
//! ```
//!
//! The catalog is the state of the database's metadata replica ([`quiver_meta::MetaNode`]): CREATE and DROP are
//! proposed through Raft (a single voter in-process for an embedded database, the cluster's group for a server), and
//! the engine attaches and detaches tables as its replica applies catalog changes, whichever node made them
//! (`sync_catalog`). A dropped table's chunks are deleted after the drop is applied; chunks of tables the catalog no
//! longer has are also swept at open, so a crash in between leaves no garbage. Statements autocommit; BEGIN/COMMIT
//! are accepted for client compatibility and do not group statements.

mod catch_up;
mod compact;
pub mod copy;
mod gc;
pub(crate) mod loads;
mod moves;
mod options;
mod primary;
mod registry;
mod replication;
mod retention;
mod rewrite;
pub(crate) mod route;
pub(crate) mod statements;
pub mod system;
mod tier;
mod transactions;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int32Type, SchemaRef};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::logical_expr::{DdlStatement, DmlStatement, Expr, LogicalPlan, WriteOp};
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use futures::StreamExt;
use quiver_meta::{
    Catalog, CatalogCommand, ColumnDef, MetaCommand, MetaNode, MetaOutcome, ShardId, TableDef, TableId, TableKind,
};

pub use crate::table::log::Resolution;
pub use catch_up::CatchUpReport;
pub use compact::CompactReport;
pub use copy::CopyFormat;
pub use gc::GcReport;
#[cfg(madsim)]
pub use options::InjectedBug;
#[cfg(madsim)]
pub(crate) use options::InjectedBug as InjectedBugKind;
#[cfg(not(madsim))]
pub(crate) use options::InjectedBugKind;
pub use options::{ReplicationOptions, ShardingDefaults};
pub use primary::COMMIT_PUSH_INTERVAL;
use registry::TableRegistry;
pub use replication::{ReplicaState, ReplicaStatus, ReplicatedChange, ReplicatedChunk, SCAN_HEAD_BYTES, ShardScan};
pub use retention::ExpireReport;
pub use tier::TierReport;

use crate::audit::{AuditEntry, AuditEvent, Outcome};
use crate::auth::{self, Caller};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::query::provider::HotTableProvider;
use crate::shard::ShardMap;
#[cfg(not(madsim))]
use crate::storage::RocksStore;
use crate::storage::{Durability, HotStore, MemoryStore, RocksStoreOptions, WriteBatch};
use crate::table::{HotTable, TableStore, chunk, keys};

/// The catalog name every table lives in.
pub const CATALOG_NAME: &str = "quiver";
/// The schema name every table lives in.
pub const SCHEMA_NAME: &str = "public";

/// The largest hash join build side, in estimated bytes in memory (or rows, where bytes are not estimated), that a
/// query over several nodes broadcasts to every task of its probe side (one node: DataFusion's own thresholds, 1 MiB
/// and 128K rows).
#[cfg(not(madsim))]
const CLUSTER_BROADCAST_BYTES: usize = 8 << 20;
#[cfg(not(madsim))]
const CLUSTER_BROADCAST_ROWS: usize = 1 << 20;

/// Where an engine keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageLocation {
    /// A directory on disk (created if missing); the hot store is RocksDB in `<dir>/hot`.
    Path(PathBuf),
    /// Memory only; nothing survives the process.
    Memory,
}

/// Tuning of an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Rows per chunk that inserts aim for.
    pub chunk_rows_target: usize,
    /// Whether commits fsync the write-ahead log before they are acknowledged.
    pub durability: Durability,
    /// Parallel partitions per scan and per query stage (0: one per CPU core).
    pub target_partitions: usize,
    /// Rows per batch inside query execution.
    pub batch_size: usize,
    /// Bytes of decoded chunk columns kept in memory for scans (0: none).
    pub column_cache_bytes: usize,
    /// RocksDB tuning.
    pub rocks: RocksStoreOptions,
    /// The cold tier's store (an empty `store`: next to the data).
    pub cold: crate::cold::ColdConfig,
    /// A cold store built by the caller, used instead of `cold` (the simulation's faulty in-memory bucket).
    pub cold_store: Option<crate::cold::ColdStore>,
    /// The shards and copies of a new table whose CREATE TABLE does not say.
    pub sharding: ShardingDefaults,
    /// How a shard's primary replicates its changes.
    pub replication: ReplicationOptions,
    /// Whether statements in a cluster run as multi-stage plans, the parts reading shards on the nodes leading them
    /// (ignored by the simulation build, which keeps single-stage plans).
    pub distributed_execution: bool,
    /// How the rows a multi-stage plan ships between its stages are compressed.
    pub shuffle_compression: ShuffleCompression,
    /// The file the audit log appends to (none: the node's log and `system.audit` only).
    pub audit_file: Option<crate::audit::AuditFileOptions>,
    /// Threads of the runtime that queries run on, apart from the one answering the network (0: one per core).
    pub query_threads: usize,
}

/// How the rows a multi-stage plan ships between nodes are compressed (Arrow IPC buffer compression).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
///
/// None by default: a cluster's nodes usually share a fast network, where compressing costs more CPU than the bytes it
/// saves take to send (TPC-H SF 1 through three nodes on one machine: 1.48x a single node's time with LZ4, 1.25x
/// without).
pub enum ShuffleCompression {
    /// LZ4 frames: cheap to compress and decompress, about a third of the bytes on typical columns.
    Lz4,
    /// Zstandard: fewer bytes than LZ4 for more CPU, for slow or metered links between nodes.
    Zstd,
    /// None: the least CPU, the most bytes, for fast links between nodes.
    #[default]
    None,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            chunk_rows_target: 128 * 1024,
            durability: Durability::Sync,
            target_partitions: 0,
            batch_size: 8192,
            column_cache_bytes: 1 << 30,
            rocks: RocksStoreOptions::default(),
            cold: crate::cold::ColdConfig::default(),
            cold_store: None,
            sharding: ShardingDefaults::default(),
            replication: ReplicationOptions::default(),
            distributed_execution: false,
            shuffle_compression: ShuffleCompression::default(),
            audit_file: None,
            query_threads: 0,
        }
    }
}

/// The statement a [`QueryOutput`] answers, as PostgreSQL names it in its command tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// A query returning rows (SELECT, SHOW, EXPLAIN, DESCRIBE, VALUES).
    Select,
    /// INSERT.
    Insert,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
    /// COPY (to or from a file or the client).
    Copy,
    /// CREATE TABLE.
    CreateTable,
    /// CREATE EXTERNAL TABLE.
    CreateExternalTable,
    /// ALTER TABLE.
    AlterTable,
    /// CREATE VIEW.
    CreateView,
    /// DROP TABLE.
    DropTable,
    /// DROP VIEW.
    DropView,
    /// BEGIN / START TRANSACTION.
    Begin,
    /// COMMIT.
    Commit,
    /// ROLLBACK.
    Rollback,
    /// SET.
    Set,
    /// CREATE USER / CREATE ROLE.
    CreateRole,
    /// ALTER USER / ALTER ROLE.
    AlterRole,
    /// DROP USER / DROP ROLE.
    DropRole,
    /// GRANT.
    Grant,
    /// REVOKE.
    Revoke,
    /// Any other statement that returns no rows.
    Other,
}

impl Command {
    /// Returns the PostgreSQL command tag without the row count (`INSERT`, `CREATE TABLE`, …).
    pub fn tag(self) -> &'static str {
        match self {
            Command::Select => "SELECT",
            Command::Insert => "INSERT",
            Command::Update => "UPDATE",
            Command::Delete => "DELETE",
            Command::Copy => "COPY",
            Command::CreateTable | Command::CreateExternalTable => "CREATE TABLE",
            Command::AlterTable => "ALTER TABLE",
            Command::CreateView => "CREATE VIEW",
            Command::DropTable => "DROP TABLE",
            Command::DropView => "DROP VIEW",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Rollback => "ROLLBACK",
            Command::Set => "SET",
            Command::CreateRole => "CREATE ROLE",
            Command::AlterRole => "ALTER ROLE",
            Command::DropRole => "DROP ROLE",
            Command::Grant => "GRANT",
            Command::Revoke => "REVOKE",
            Command::Other => "OK",
        }
    }
}

/// The result of one statement.
pub enum QueryOutput {
    /// Rows, streamed batch by batch as they are computed.
    Rows {
        /// The rows' schema.
        schema: SchemaRef,
        /// The rows.
        stream: SendableRecordBatchStream,
    },
    /// A statement that changed rows; `rows` is the exact count.
    Affected {
        /// Which statement.
        command: Command,
        /// Rows inserted, updated, deleted or copied.
        rows: u64,
    },
    /// A statement that returns nothing.
    Done {
        /// Which statement.
        command: Command,
    },
}

impl std::fmt::Debug for QueryOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryOutput::Rows { schema, .. } => f.debug_struct("Rows").field("schema", schema).finish(),
            QueryOutput::Affected { command, rows } => {
                f.debug_struct("Affected").field("command", command).field("rows", rows).finish()
            }
            QueryOutput::Done { command } => f.debug_struct("Done").field("command", command).finish(),
        }
    }
}

impl QueryOutput {
    /// Collects the rows of a [`QueryOutput::Rows`]; other outputs give no batch.
    ///
    /// # Errors
    ///
    /// Returns the first error of the stream.
    pub async fn collect(self) -> Result<Vec<RecordBatch>> {
        match self {
            QueryOutput::Rows { mut stream, .. } => {
                let mut out = Vec::new();
                while let Some(b) = stream.next().await {
                    out.push(b?);
                }
                Ok(out)
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// A statement planned once and executed many times with different parameters.
#[derive(Debug, Clone)]
pub struct PreparedStatement {
    sql: String,
    /// The metadata version the plan was made at: a later catalog change re-plans it (its tables may be others).
    version: u64,
    plan: LogicalPlan,
    /// The plan as DataFusion's analyzer and optimizer left it, where that holds for every parameter value: each
    /// execution substitutes its values and goes straight to physical planning. `None` where a parameter's type is
    /// unknown, the plan calls a function whose result changes between executions (`now()`, `random()`: the
    /// optimizer would fold it once), or the statement is not a query or an INSERT.
    optimized: Option<LogicalPlan>,
    parameter_types: Vec<Option<DataType>>,
    result_schema: SchemaRef,
}

impl PreparedStatement {
    /// Returns the statement's text.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Returns the type of each positional parameter (`$1`, `$2`, …) where the planner could infer it.
    pub fn parameter_types(&self) -> &[Option<DataType>] {
        &self.parameter_types
    }

    /// Returns whether the statement is a query that returns rows (SELECT, SHOW, EXPLAIN, …) rather than a statement
    /// that changes something (DDL, INSERT, UPDATE, DELETE, COPY, transaction control).
    pub fn returns_rows(&self) -> bool {
        !matches!(
            self.plan,
            LogicalPlan::Dml(_) | LogicalPlan::Ddl(_) | LogicalPlan::Statement(_) | LogicalPlan::Copy(_)
        )
    }

    /// Returns the schema of the rows the statement returns (empty for statements returning none).
    pub fn result_schema(&self) -> SchemaRef {
        Arc::clone(&self.result_schema)
    }
}

/// What a bulk ingest does when the table exists or not (Flight SQL `CommandStatementIngest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestMode {
    /// Create the table; fail if it exists.
    Create,
    /// Append to the table; fail if it does not exist.
    Append,
    /// Create the table if it does not exist, then append.
    CreateOrAppend,
    /// Drop and re-create the table if it exists.
    Replace,
}

/// A table as listed to clients.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// The table's name.
    pub name: String,
    /// Its columns.
    pub schema: SchemaRef,
    /// `TABLE`, `EXTERNAL TABLE` or `VIEW`.
    pub table_type: &'static str,
    /// The declared primary key's columns.
    pub primary_key: Vec<String>,
}

/// The catalog's tables as attached to an engine (name → id), and the catalog version they match (`None`: none yet).
#[derive(Debug, Default)]
struct Attached {
    tables: BTreeMap<String, TableId>,
    version: Option<u64>,
}

/// An open database. Cheap to share: wrap it in an `Arc`.
pub struct Engine {
    location: StorageLocation,
    tables: Arc<TableStore>,
    meta: MetaNode,
    node_id: u64,
    /// The hot store's identity: the cold tier's marks of which hot chunks are tiered are kept per store.
    store_id: u64,
    /// The catalog's tables as attached to this engine, guarded for [`Engine::sync_catalog`].
    attached: tokio::sync::Mutex<Attached>,
    registry: Arc<TableRegistry>,
    /// The attached native tables by name (shared with the `system` schema).
    hot: Arc<RwLock<HashMap<String, Arc<HotTable>>>>,
    /// The same tables by id, for requests that name a shard (the shard service).
    hot_by_id: RwLock<HashMap<TableId, Arc<HotTable>>>,
    ctx: SessionContext,
    metrics: Arc<Metrics>,
    /// The cold tier's store, and the same under this cluster's prefix, metered and cached, once registered with
    /// DataFusion; scans find it through `cold_reads`.
    cold: crate::cold::ColdStore,
    cold_cluster: std::sync::Mutex<Option<Arc<dyn object_store::ObjectStore>>>,
    cold_cache: crate::cold::cache::ReadCache,
    cold_reads: Arc<crate::query::cold::ColdReads>,
    /// The manifest segments of each shard's latest version read or written here.
    manifest_segments: crate::cold::SegmentCache,
    /// Where the rows of cold files being written are sorted: `cold.sort_memory`, spilling to `spill/`.
    sorts: Arc<datafusion::execution::TaskContext>,
    /// Recent queries and what they read from the cold tier (`system.queries`).
    queries: Arc<statements::QueryLog>,
    /// Where statements that read tables run: off the runtime answering the network.
    cpu: crate::cpu::CpuRuntime,
    logins: auth::throttle::LoginThrottle,
    /// Logins, DDL, DCL and refusals (`system.audit`, the audit file).
    audit: Arc<crate::audit::AuditLog>,
    /// The catch-ups of replicas of the shards this node leads, with their progress (`system.shard_moves`).
    moves: Arc<moves::MoveLog>,
    /// The sharding of new tables whose CREATE TABLE does not say.
    sharding: ShardingDefaults,
    /// How this node replicates the changes of the shards it leads, and its connections to their backups.
    replication: ReplicationOptions,
    peers: primary::Peers,
    /// Shards whose backups have not been told this node's latest commit point ([`Engine::tend_shards`]).
    commit_unsent: std::sync::Mutex<std::collections::BTreeSet<(TableId, ShardId)>>,
    /// Shards with changes prepared here and not committed yet, which [`Engine::tend_shards`] settles once this node
    /// leads them.
    unsettled: std::sync::Mutex<std::collections::BTreeSet<(TableId, ShardId)>>,
    /// As a primary: when this node first saw each undecided statement spanning shards with a part in a shard it
    /// leads (`Engine::resolve_abandoned` holds it `transaction_hold` from then; in memory, so a restart or a new
    /// primary holds it longer, never shorter).
    undecided_since: std::sync::Mutex<HashMap<u64, tokio::time::Instant>>,
    /// The DELETE and UPDATE statements spanning shards this node coordinates now: on a node that is its cluster's
    /// only member, a part of any other undecided statement is an orphan (its coordinator crashed, or its caller
    /// gave up on it) and is aborted when a statement needs its shard.
    coordinating: std::sync::Mutex<std::collections::HashSet<u64>>,
    /// Rounds of [`Engine::tend_shards`] so far.
    tend_rounds: std::sync::atomic::AtomicU64,
    /// Whether the metadata replica caught up with the metadata group since the engine opened (shard requests wait
    /// for it: `Engine::check_shard_epoch`).
    meta_confirmed: std::sync::atomic::AtomicBool,
    /// Whether this node takes shard requests: once it has joined its cluster ([`Engine::serve_shards`]); a node back
    /// with an empty disk must first be out of every in-sync set.
    shards_served: std::sync::atomic::AtomicBool,
    /// This engine, for the tables' providers, which route inserts and scans through it, and for its background
    /// duties. Set once the engine is shared.
    me: std::sync::OnceLock<std::sync::Weak<Engine>>,
    /// Catch-ups running from this node, as (table, shard, target node).
    catching_up: std::sync::Mutex<std::collections::BTreeSet<(TableId, ShardId, u64)>>,
    /// Whether the store holds only rows of shards placed on this node ([`keys::PLACED_ONLY_KEY`]): the rows of a
    /// shard that left the node are then deleted ([`Engine::drop_unplaced`]).
    placed_only: bool,
    /// Multi-stage execution: this node's worker and the engine its tasks run on (`None`: single-stage plans).
    #[cfg(not(madsim))]
    distributed: Option<crate::query::distributed::Distributed>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("location", &self.location).finish()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Breaks the catalog's cycle (see `TableRegistry::clear_schemas`), so that the hot store closes now.
        self.registry.clear_schemas();
    }
}

impl Engine {
    /// Opens the database at `location`, creating it if needed, and recovers its state: the catalog (the metadata
    /// replica's state), every table's committed chunks, and the removal of data left behind by inserts that never
    /// committed. The database's metadata replica is a single voter in-process.
    ///
    /// # Errors
    ///
    /// Fails when the store cannot be opened or holds data this build cannot read.
    pub async fn open(location: StorageLocation, options: EngineOptions) -> Result<Arc<Engine>> {
        let store = Self::open_store(&location, &options).await?;
        Self::open_with_store(location, store, options).await
    }

    /// Opens the hot store of `location` (RocksDB in `<dir>/hot`, or memory) and checks its format.
    ///
    /// # Errors
    ///
    /// Fails when the store cannot be opened or has a format this build cannot read.
    pub async fn open_store(location: &StorageLocation, options: &EngineOptions) -> Result<Arc<dyn HotStore>> {
        #[cfg(madsim)]
        let _ = options;
        let store: Arc<dyn HotStore> = match location {
            StorageLocation::Memory => Arc::new(MemoryStore::new()),
            #[cfg(madsim)]
            StorageLocation::Path(dir) => {
                return Err(Error::Config {
                    detail: format!(
                        "{}: the simulation build has no RocksDB; open the engine on a store it provides",
                        dir.display()
                    ),
                });
            }
            #[cfg(not(madsim))]
            StorageLocation::Path(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
                let path = dir.join("hot");
                // A database of this process that was just dropped releases RocksDB's lock once its metadata
                // replica's tasks have seen the drop; wait briefly for that rather than fail.
                let mut attempts = 0;
                loop {
                    let rocks = options.rocks.clone();
                    let path = path.clone();
                    let opened = tokio::task::spawn_blocking(move || RocksStore::open(&path, &rocks))
                        .await
                        .map_err(|e| Error::Internal(format!("open task: {e}")))?;
                    match opened {
                        Ok(store) => break Arc::new(store),
                        Err(e) if attempts < 100 && e.report().contains("lock hold by current process") => {
                            attempts += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        };
        check_format(&*store)?;
        Ok(store)
    }

    /// Opens a database on a given hot store, with a single-voter metadata replica in-process.
    ///
    /// # Errors
    ///
    /// Fails when the store holds data this build cannot read.
    pub async fn open_with_store(
        location: StorageLocation,
        store: Arc<dyn HotStore>,
        options: EngineOptions,
    ) -> Result<Arc<Engine>> {
        check_format(&*store)?;
        let meta = crate::cluster::start_local(Arc::clone(&store), quiver_meta::MetaConfig::default()).await?;
        let engine = Self::open_with_meta(location, store, options, meta).await?;
        // A metadata group of its own: there is no cluster to join, and its shards' requests (settling the parts of
        // its statements spanning shards) are served at once.
        engine.serve_shards();
        Ok(engine)
    }

    /// Opens a database on a given hot store whose catalog is the state of `meta`, a metadata replica started on
    /// the same store (a server's replica, member of a cluster). Catalog changes made anywhere in the cluster are
    /// applied to this engine as its replica applies them.
    ///
    /// # Errors
    ///
    /// Fails when the store holds data this build cannot read.
    pub async fn open_with_meta(
        location: StorageLocation,
        store: Arc<dyn HotStore>,
        options: EngineOptions,
        meta: MetaNode,
    ) -> Result<Arc<Engine>> {
        if check_format(&*store)? == keys::v2::FORMAT_VERSION {
            let store = Arc::clone(&store);
            let shards = meta.read_local(crate::table::upgrade::table_shards);
            crate::blocking::run("rewrite the hot store to format 3", move || {
                crate::table::upgrade::from_format_2(&*store, &shards)
            })
            .await??;
        }
        let catalog = meta.read_local(|s| s.catalog().clone());
        let chunks_by_shard = recover_chunks(&*store, &catalog)?;
        let store_id = store_identity(&*store)?;
        let placed_only = store.get(keys::PLACED_ONLY_KEY)?.is_some();
        let metrics = Arc::new(Metrics::default());
        let tables = Arc::new(TableStore::new(
            Arc::clone(&store),
            options.chunk_rows_target,
            options.durability,
            options.column_cache_bytes,
            Arc::clone(&metrics),
        ));
        let partitions = if options.target_partitions == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
        } else {
            options.target_partitions
        };
        // DataFusion runs partitions in parallel by spawning on tokio's own runtime, which the simulation does not
        // drive; confined to one partition, a query runs inside the task that polls it.
        #[cfg(madsim)]
        let partitions = {
            let _ = partitions;
            1
        };
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG_NAME, SCHEMA_NAME)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true)
            .with_target_partitions(partitions)
            .with_batch_size(options.batch_size);
        // TEXT columns are stored as Utf8, which every Arrow and PostgreSQL client reads; Utf8View is an execution
        // detail DataFusion may still use internally.
        config.options_mut().sql_parser.map_string_types_to_utf8view = false;
        // TIMESTAMPTZ means a UTC-normalized timestamp, as in PostgreSQL.
        config.options_mut().execution.time_zone = Some("+00:00".to_string());
        let cold_reads = Arc::new(crate::query::cold::ColdReads::default());
        let config = config.with_extension(Arc::clone(&cold_reads));
        let runtime = Arc::new(datafusion::execution::runtime_env::RuntimeEnv::default());
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(Arc::clone(&runtime))
            .with_default_features();
        #[cfg(not(madsim))]
        let (state, distributed) = if options.distributed_execution {
            let (state, distributed) =
                crate::query::distributed::Distributed::install(state, &meta, &options, runtime)?;
            (state, Some(distributed))
        } else {
            (state, None)
        };
        #[cfg(madsim)]
        let _ = runtime;
        let peers = primary::Peers::new(meta.config().peer_tls.clone());
        let ctx = SessionContext::new_with_state(state.build());
        let registry = Arc::new(TableRegistry::default());
        registry::install(&ctx, Arc::clone(&registry));
        let hot = Arc::new(RwLock::new(HashMap::new()));
        let queries = Arc::new(statements::QueryLog::default());
        let moves = Arc::new(moves::MoveLog::default());
        let audit = Arc::new(match &options.audit_file {
            Some(file) => crate::audit::AuditLog::with_file(file)?,
            None => crate::audit::AuditLog::in_memory(),
        });
        registry.add_schema(
            system::SYSTEM_SCHEMA,
            Arc::new(system::SystemSchema::new(
                meta.clone(),
                Arc::clone(&hot),
                Arc::clone(&queries),
                Arc::clone(&moves),
                Arc::clone(&audit),
            )),
        );

        let node_id = meta.node_id();
        let data_dir = match &location {
            StorageLocation::Path(dir) => Some(dir.clone()),
            StorageLocation::Memory => None,
        };
        let cold = match &options.cold_store {
            Some(store) => store.clone().with_limits(&options.cold),
            None => crate::cold::ColdStore::open(&options.cold, data_dir.as_deref())?,
        };
        let cache_settings = options.cold.cache_settings(data_dir.as_deref());
        let cold_cache = crate::cold::cache::ReadCache::open(&cache_settings, Arc::clone(&metrics.cold_cache)).await?;
        let sorts = sort_context(&options.cold, data_dir.as_deref())?;
        #[cfg(not(madsim))]
        let cpu = crate::cpu::CpuRuntime::start(options.query_threads)
            .map_err(|e| Error::Internal(format!("starting the query runtime: {e}")))?;
        #[cfg(madsim)]
        let cpu = crate::cpu::CpuRuntime::inline();
        let engine = Engine {
            location,
            tables,
            meta,
            node_id,
            store_id,
            attached: tokio::sync::Mutex::new(Attached::default()),
            registry,
            hot,
            hot_by_id: RwLock::new(HashMap::new()),
            ctx,
            metrics,
            cold,
            cold_cluster: std::sync::Mutex::new(None),
            cold_cache,
            cold_reads,
            manifest_segments: crate::cold::SegmentCache::default(),
            sorts,
            queries,
            cpu,
            logins: auth::throttle::LoginThrottle::default(),
            audit,
            moves,
            sharding: options.sharding,
            replication: options.replication,
            peers,
            commit_unsent: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            unsettled: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            undecided_since: std::sync::Mutex::new(HashMap::new()),
            coordinating: std::sync::Mutex::new(std::collections::HashSet::new()),
            tend_rounds: std::sync::atomic::AtomicU64::new(0),
            meta_confirmed: std::sync::atomic::AtomicBool::new(false),
            shards_served: std::sync::atomic::AtomicBool::new(false),
            me: std::sync::OnceLock::new(),
            catching_up: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            placed_only,
            #[cfg(not(madsim))]
            distributed,
        };
        let engine = Arc::new(engine);
        let _ = engine.me.set(Arc::downgrade(&engine));
        #[cfg(not(madsim))]
        if let Some(distributed) = &engine.distributed {
            distributed.bind(Arc::downgrade(&engine));
        }
        let mut chunks_by_shard = chunks_by_shard;
        {
            let mut attached = engine.attached.lock().await;
            for def in catalog.tables() {
                engine.attach(def, &mut chunks_by_shard).await;
                attached.tables.insert(def.name.clone(), def.id);
            }
            attached.version = Some(catalog.version());
            for ((table, shard), found) in &chunks_by_shard {
                if !found.chunks.is_empty() || !found.prepared.is_empty() {
                    tracing::warn!(%table, %shard, chunks = found.chunks.len(), prepared = found.prepared.len(), "hot chunks of a shard the table does not have are left unread");
                }
            }
        }
        // Changes left prepared by the last run are settled once this node leads their shard.
        for replica in engine.replicas() {
            // Rows an earlier build stored outside their shard's placement are not read: statements read each shard
            // from its primary. They stay on disk (moving them to their primary is still to be built).
            let placed = engine
                .meta
                .read_local(|s| s.shard(replica.shard_id()).is_none_or(|r| r.replicas.contains(&engine.node_id)));
            if !placed && replica.row_count() > 0 && !engine.placed_only {
                tracing::warn!(table = %replica.def().name, shard = %replica.shard_id(), rows = replica.row_count(), "hot rows of a shard not placed on this node, written by an earlier build, are not served");
            }
            if replica.log_end() > replica.committed_lsn() {
                engine
                    .unsettled
                    .lock()
                    .expect("unsettled lock poisoned")
                    .insert((replica.def().id, replica.shard_id()));
            }
        }
        // Catalog changes applied by the replica (made on this node or any other) reach the engine here.
        let mut versions = engine.meta.subscribe();
        let weak = Arc::downgrade(&engine);
        tokio::spawn(async move {
            while versions.changed().await.is_ok() {
                let Some(engine) = weak.upgrade() else { break };
                if let Err(e) = engine.sync_catalog().await {
                    tracing::warn!(error = %e.report(), "applying a catalog change failed");
                }
            }
        });
        // Leader changes, counted for metrics.
        let mut raft_metrics = engine.meta.metrics();
        let weak = Arc::downgrade(&engine);
        tokio::spawn(async move {
            let mut leader = raft_metrics.borrow_and_update().current_leader;
            while raft_metrics.changed().await.is_ok() {
                let now = raft_metrics.borrow_and_update().current_leader;
                let Some(engine) = weak.upgrade() else { break };
                if now != leader && now.is_some() {
                    engine.metrics.meta_leader_changes.inc();
                }
                leader = now;
            }
        });
        // Changes applied between the catalog read above and the subscription.
        engine.sync_catalog().await?;
        Ok(engine)
    }

    /// Returns the metadata replica of this database.
    pub fn meta(&self) -> &MetaNode {
        &self.meta
    }

    /// Returns this node's id in the metadata cluster (1 for an embedded database).
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Returns the metadata replica's Raft state, for metrics.
    pub fn raft_gauges(&self) -> crate::metrics::RaftGauges {
        let metrics = self.meta.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters = membership.voter_ids().count() as u64;
        let learners = membership.learner_ids().count() as u64;
        crate::metrics::RaftGauges {
            term: metrics.current_term,
            leader: metrics.current_leader.unwrap_or(0),
            is_leader: metrics.current_leader == Some(self.node_id),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map_or(0, |l| l.index),
            snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
            voters,
            learners,
            metadata_version: self.meta.read_local(|s| s.version()),
            snapshot: self.meta.snapshot_stats(),
            shard_failovers: self.meta.read_local(|s| s.failovers()),
            clock_skew_ms: self.meta.clock_skew(),
        }
    }

    /// Returns how many registered nodes can take new shards now (neither down nor draining), as this replica knows.
    fn serving_nodes(&self) -> usize {
        use quiver_meta::NodeState;
        self.meta.read_local(|s| s.nodes().filter(|n| n.state != NodeState::Down && !n.is_draining()).count())
    }

    /// Whether the simulation injected `bug` into this node (never, outside the simulation).
    #[allow(clippy::unused_self)]
    pub(crate) fn injected(&self, bug: InjectedBugKind) -> bool {
        #[cfg(madsim)]
        {
            self.replication.injected_bug == Some(bug)
        }
        #[cfg(not(madsim))]
        {
            let _ = bug;
            false
        }
    }

    /// Returns whether the metadata group has other members (a cluster), whose changes may reach this node late.
    fn is_clustered(&self) -> bool {
        self.meta.metrics().borrow().membership_config.membership().nodes().count() > 1
    }

    /// Makes every catalog change acknowledged anywhere in the cluster before this call visible to the statement
    /// about to run here: in a cluster, a linearizable read of the metadata (one round to the leader, which confirms
    /// its leadership with a quorum) and waiting until this node has applied and attached what it returned. Without
    /// it, a statement on a node that has not yet applied a DROP and re-CREATE of a table would write into, or read,
    /// the dropped table, and the rows of an acknowledged append would vanish when the drop is applied. A database
    /// that is the only member of its group has applied everything it acknowledged already.
    async fn see_acknowledged_ddl(&self) -> Result<()> {
        if self.is_clustered() && !self.injected(InjectedBugKind::StaleEpochScan) {
            self.catch_up().await?;
        }
        Ok(())
    }

    /// Makes every change to users and privileges acknowledged anywhere in the cluster before this call visible here
    /// (a login on this node right after a DROP USER or ALTER USER … PASSWORD elsewhere sees it), as every statement
    /// does before it runs.
    ///
    /// # Errors
    ///
    /// When the metadata group cannot answer (no leader).
    pub async fn see_acknowledged_principals(&self) -> Result<()> {
        self.see_acknowledged_ddl().await
    }

    /// Waits until this node has applied every metadata change committed before the call, then attaches them.
    async fn catch_up(&self) -> Result<()> {
        self.meta.read_state(|_| ()).await?;
        self.sync_catalog().await
    }

    /// Returns a copy of the catalog as this node's replica has applied it.
    pub fn catalog(&self) -> Catalog {
        self.meta.read_local(|s| s.catalog().clone())
    }

    /// Stops the metadata replica; the engine answers no more DDL. Committed data is durable already.
    ///
    /// # Errors
    ///
    /// Fails when a Raft task had panicked.
    pub async fn shutdown(&self) -> Result<()> {
        self.meta.shutdown().await?;
        self.cold_cache.close().await;
        Ok(())
    }

    /// Makes the engine's tables match the replica's catalog: attaches tables created since the last call and
    /// detaches dropped ones, deleting their local data. Idempotent; serialized by the `attached` lock. Runs after
    /// every metadata change this node applies and before every statement in a cluster: when the catalog's version
    /// has not moved since the last call, it costs one read of that version, whatever the number of tables.
    async fn sync_catalog(&self) -> Result<()> {
        let mut attached = self.attached.lock().await;
        if attached.version == Some(self.meta.read_local(|s| s.catalog().version())) {
            return Ok(());
        }
        let catalog = self.catalog();
        let gone: Vec<(String, TableId)> = attached
            .tables
            .iter()
            .filter(|(name, id)| catalog.table(name).map(|t| t.id) != Some(**id))
            .map(|(name, id)| (name.clone(), *id))
            .collect();
        for (name, id) in gone {
            self.detach(&name, id).await?;
            attached.tables.remove(&name);
        }
        for def in catalog.tables() {
            if attached.tables.get(&def.name) != Some(&def.id) {
                self.attach(def, &mut HashMap::new()).await;
                attached.tables.insert(def.name.clone(), def.id);
            }
        }
        attached.version = Some(catalog.version());
        Ok(())
    }

    /// Makes a table of the catalog queryable, taking its recovered chunks out of `recovered`.
    async fn attach(&self, def: &TableDef, recovered: &mut RecoveredChunks) {
        match &def.kind {
            TableKind::Native => match self.attach_native(def, recovered).await {
                Ok(table) => {
                    for shard in table.shards() {
                        self.remove_tiered_chunks_if_idle(shard).await;
                    }
                }
                // The metadata gives every native table a shard map; a table without one cannot be read or written.
                Err(e) => tracing::error!(table = %def.name, error = %e.report(), "the table could not be attached"),
            },
            // The node that created an external table registered it before proposing it.
            TableKind::External { .. } if self.registry.contains(&def.name) => {}
            TableKind::External { definition, .. } => {
                // The files may have moved or be unreachable from this node; the database still opens, and
                // queries of this table report the problem.
                if let Err(e) = self.plan_and_run_datafusion(definition).await {
                    tracing::warn!(table = %def.name, error = %e.report(), "external table could not be attached");
                }
            }
        }
    }

    /// Removes a dropped table: its provider, and for a native table its chunks (index entries in one durable batch
    /// now, chunk data once no running query reads it).
    async fn detach(&self, name: &str, id: TableId) -> Result<()> {
        self.registry.remove(name);
        let table = self.hot.write().expect("hot table map poisoned").remove(name);
        self.hot_by_id.write().expect("hot table map poisoned").remove(&id);
        if let Some(table) = table {
            let mut batch = WriteBatch::new();
            let [(index_start, index_end), _, floors, prepared, commits] = keys::table_ranges(id);
            batch.delete_range(index_start, index_end);
            for (start, end) in [floors, prepared, commits] {
                batch.delete_range(start, end);
            }
            self.commit_blocking(batch).await?;
            table.retire_all();
        }
        Ok(())
    }

    /// Attaches a native table as its shards' replicas on this node, each with its recovered chunks and the cold
    /// view of its manifest. Every node holds a replica of every shard until rows move between nodes.
    async fn attach_native(&self, def: &TableDef, recovered: &mut RecoveredChunks) -> Result<Arc<HotTable>> {
        let map = self.meta.read_local(|state| ShardMap::of(state, def))?;
        let mut shards = Vec::new();
        for shard in map.shards() {
            let found = recovered.remove(&(def.id, shard)).unwrap_or_default();
            let replica = Arc::new(crate::table::ShardReplica::new(
                def.clone(),
                shard,
                Arc::clone(&self.tables),
                found,
                self.store_id,
            ));
            replica.set_cold(self.cold_state_of(&replica).await);
            shards.push(replica);
        }
        let table = Arc::new(HotTable::new(def.clone(), Arc::clone(&self.tables), map, shards));
        let engine = self.me.get().cloned().unwrap_or_default();
        self.registry.insert(&def.name, Arc::new(HotTableProvider::new(Arc::clone(&table)).routed_by(engine)));
        self.hot.write().expect("hot table map poisoned").insert(def.name.clone(), Arc::clone(&table));
        self.hot_by_id.write().expect("hot table map poisoned").insert(def.id, Arc::clone(&table));
        Ok(table)
    }

    /// Returns the engine's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Returns where the engine keeps its data.
    pub fn location(&self) -> &StorageLocation {
        &self.location
    }

    /// Returns the bytes the hot store occupies.
    pub fn hot_store_bytes(&self) -> u64 {
        self.tables.store.size_bytes()
    }

    /// Returns the DataFusion session the engine plans with (for frontends that need its catalog or functions).
    pub fn session(&self) -> &SessionContext {
        &self.ctx
    }

    /// This node's side of multi-stage execution, when statements run as multi-stage plans.
    #[cfg(not(madsim))]
    pub(crate) fn distributed(&self) -> Option<&crate::query::distributed::Distributed> {
        self.distributed.as_ref()
    }

    /// Has the tasks of multi-stage plans that are routed to `addr`, this node's internal address as its peers know
    /// it, run in this process rather than through the internal endpoint.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `addr` is not a host and port.
    #[cfg(not(madsim))]
    pub fn run_local_tasks_at(&self, addr: &str) -> Result<()> {
        let Some(distributed) = &self.distributed else { return Ok(()) };
        distributed
            .run_local_tasks_at(&mut self.ctx.state_ref().write(), addr)
            .map_err(|e| Error::Config { detail: format!("the internal address {addr}: {e}") })
    }

    /// Adds a schema beside `public` in the `quiver` catalog (frontends install `pg_catalog` this way).
    pub fn register_schema(&self, name: &str, schema: Arc<dyn datafusion::catalog::SchemaProvider>) {
        self.registry.add_schema(name, schema);
    }

    /// Returns the hot table of this name.
    pub fn hot_table(&self, name: &str) -> Option<Arc<HotTable>> {
        self.hot.read().expect("hot table map poisoned").get(name).cloned()
    }

    /// Returns the attached native table with id `id`.
    pub(crate) fn hot_table_by_id(&self, id: TableId) -> Option<Arc<HotTable>> {
        self.hot_by_id.read().expect("hot table map poisoned").get(&id).cloned()
    }

    /// Returns every table, ordered by name.
    pub async fn tables(&self) -> Vec<TableInfo> {
        let catalog = self.catalog();
        let mut out: Vec<TableInfo> = catalog
            .tables()
            .map(|def| TableInfo {
                name: def.name.clone(),
                schema: match self.registry.get(&def.name) {
                    Some(p) => p.schema(),
                    None => Arc::new(def.arrow_schema()),
                },
                table_type: if def.is_native() { "TABLE" } else { "EXTERNAL TABLE" },
                primary_key: def.primary_key.clone(),
            })
            .collect();
        for (name, provider) in self.registry.views() {
            out.push(TableInfo { name, schema: provider.schema(), table_type: "VIEW", primary_key: vec![] });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Executes every statement of `sql`, in order; returns one output per statement.
    ///
    /// # Errors
    ///
    /// Stops at the first failing statement; the statements before it have taken effect.
    pub async fn execute(&self, sql: &str) -> Result<Vec<QueryOutput>> {
        self.execute_as(&Caller::Trusted, sql).await
    }

    /// Executes the statements of `sql` for `caller`, whose privileges each statement needs; see
    /// [`Engine::execute`].
    ///
    /// # Errors
    ///
    /// As [`Engine::execute`], and [`Error::PermissionDenied`] for a statement the caller may not run.
    pub async fn execute_as(&self, caller: &Caller, sql: &str) -> Result<Vec<QueryOutput>> {
        let statements = parse(sql)?;
        let mut out = Vec::with_capacity(statements.len());
        for s in statements {
            out.push(Box::pin(self.execute_statement(caller, s)).await?);
        }
        Ok(out)
    }

    /// Executes exactly one statement.
    ///
    /// # Errors
    ///
    /// Fails when `sql` holds no statement or several, or when the statement fails.
    pub async fn execute_one(&self, sql: &str) -> Result<QueryOutput> {
        self.execute_one_as(&Caller::Trusted, sql).await
    }

    /// Executes exactly one statement for `caller`.
    ///
    /// # Errors
    ///
    /// As [`Engine::execute_one`], and [`Error::PermissionDenied`] when the caller may not run it.
    pub async fn execute_one_as(&self, caller: &Caller, sql: &str) -> Result<QueryOutput> {
        let mut statements = parse(sql)?;
        match (statements.pop(), statements.is_empty()) {
            (Some(s), true) => Box::pin(self.execute_statement(caller, s)).await,
            (None, _) => Ok(QueryOutput::Done { command: Command::Other }),
            (Some(_), false) => {
                Err(Error::Unsupported { what: "several statements in one request of this kind".into() })
            }
        }
    }

    /// Plans a statement with `$n` parameters for repeated execution.
    ///
    /// # Errors
    ///
    /// Fails when the statement does not parse or plan.
    pub async fn prepare(&self, sql: &str) -> Result<PreparedStatement> {
        self.prepare_as(&Caller::Trusted, sql).await
    }

    /// Plans a statement for `caller`, who must hold the privileges it needs (checked again at every execution).
    ///
    /// # Errors
    ///
    /// As [`Engine::prepare`], and [`Error::PermissionDenied`].
    pub async fn prepare_as(&self, caller: &Caller, sql: &str) -> Result<PreparedStatement> {
        let numbered = number_question_marks(sql);
        let mut statements = parse(numbered.as_deref().unwrap_or(sql))?;
        let statement = match (statements.pop(), statements.is_empty()) {
            (Some(ParsedStatement::DataFusion(s)), true) => s,
            (None, _) => {
                return Err(Error::SqlSyntax { message: "empty statement".into() });
            }
            (Some(ParsedStatement::CopyFrom(_)), true) => {
                return Err(Error::Unsupported { what: "COPY FROM in a prepared statement".into() });
            }
            (Some(ParsedStatement::Dcl(d)), true) => {
                return Err(Error::Unsupported { what: format!("{} in a prepared statement", d.tag()) });
            }
            (Some(_), false) => return Err(Error::Unsupported { what: "several statements in one prepare".into() }),
        };
        self.see_acknowledged_ddl().await?;
        let version = self.meta.read_local(|s| s.version());
        let plan = self.ctx.state().statement_to_plan(statement).await?;
        self.refused(
            caller,
            self.meta.read_local(|s| auth::privileges::check(caller, s.principals(), s.catalog(), &plan)),
        )?;
        let types = plan.get_parameter_types()?;
        let mut parameter_types = Vec::new();
        for (name, ty) in types {
            // Positional parameters are named "$1", "$2", ….
            let Some(n) = name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) else {
                return Err(Error::Parameter { detail: format!("parameter {name} is not positional ($1, $2, …)") });
            };
            if n == 0 {
                return Err(Error::Parameter { detail: "parameters are numbered from $1".into() });
            }
            if parameter_types.len() < n {
                parameter_types.resize(n, None);
            }
            parameter_types[n - 1] = ty;
        }
        let result_schema = match &plan {
            LogicalPlan::Dml(_) | LogicalPlan::Ddl(_) | LogicalPlan::Statement(_) | LogicalPlan::Copy(_) => {
                Arc::new(arrow::datatypes::Schema::empty())
            }
            other => Arc::new(other.schema().as_arrow().clone()),
        };
        let optimized = if parameter_types.iter().all(Option::is_some) && optimizable_once(&plan) {
            // A plan the optimizer cannot take with its parameters unbound is optimized at each execution.
            self.ctx.state().optimize(&plan).ok()
        } else {
            None
        };
        Ok(PreparedStatement { sql: sql.to_string(), version, plan, optimized, parameter_types, result_schema })
    }

    /// Executes a prepared statement with `params` for `$1`, `$2`, ….
    ///
    /// # Errors
    ///
    /// [`Error::Parameter`] when the parameters do not fit; otherwise as [`Engine::execute`].
    pub async fn execute_prepared(
        &self,
        statement: &PreparedStatement,
        params: Vec<ScalarValue>,
    ) -> Result<QueryOutput> {
        self.execute_prepared_as(&Caller::Trusted, statement, params).await
    }

    /// Executes a prepared statement for `caller`, whose privileges are checked anew (a grant may have been revoked
    /// since it was prepared).
    ///
    /// # Errors
    ///
    /// As [`Engine::execute_prepared`], and [`Error::PermissionDenied`].
    pub async fn execute_prepared_as(
        &self,
        caller: &Caller,
        statement: &PreparedStatement,
        params: Vec<ScalarValue>,
    ) -> Result<QueryOutput> {
        self.metrics.statements.inc();
        if params.len() != statement.parameter_types.len() {
            return Err(Error::Parameter {
                detail: format!(
                    "the statement has {} parameters, {} values were given",
                    statement.parameter_types.len(),
                    params.len()
                ),
            });
        }
        let mut values = Vec::with_capacity(params.len());
        for (i, (v, ty)) in params.into_iter().zip(&statement.parameter_types).enumerate() {
            values.push(match ty {
                Some(ty) if v.data_type() != *ty && !v.is_null() => v.cast_to(ty).map_err(|e| Error::Parameter {
                    detail: format!("parameter ${} cannot be used as {ty}: {e}", i + 1),
                })?,
                Some(ty) if v.is_null() => ScalarValue::try_from(ty).unwrap_or(v),
                _ => v,
            });
        }
        // Planned before a catalog change (a table dropped and created again holds other data): plan it anew.
        self.see_acknowledged_ddl().await?;
        let replanned;
        let statement = if self.meta.read_local(|s| s.version()) == statement.version {
            statement
        } else {
            replanned = self.prepare_as(caller, &statement.sql).await?;
            &replanned
        };
        self.refused(
            caller,
            self.meta.read_local(|s| auth::privileges::check(caller, s.principals(), s.catalog(), &statement.plan)),
        )?;
        // A plan that lists tables may need some hidden from this user: it is planned from its logical form.
        let (plan, optimized) = match &statement.optimized {
            Some(optimized) if !auth::privileges::listings(&statement.plan)?.any() => (optimized, true),
            _ => (&statement.plan, false),
        };
        let plan = if values.is_empty() {
            plan.clone()
        } else {
            plan.clone()
                .with_param_values(ParamValues::from(values))
                .map_err(|e| Error::Parameter { detail: Error::from(e).to_string() })?
        };
        let plan = if optimized { plan } else { self.hide_unseen(caller, plan).await? };
        Box::pin(self.execute_plan_with(plan, optimized, BTreeMap::new(), &statement.sql)).await
    }

    /// Runs one parsed statement. Its future is large (planning, routing, replication, each a state machine inside
    /// the next), so the public entry points box it: a caller that awaits many statements in one function keeps a
    /// pointer per await, not the whole machine on its stack.
    async fn execute_statement(&self, caller: &Caller, statement: ParsedStatement) -> Result<QueryOutput> {
        self.metrics.statements.inc();
        match statement {
            ParsedStatement::Dcl(dcl) => self.execute_dcl(caller, dcl).await,
            ParsedStatement::DataFusion(s) => {
                // Transaction control in any PostgreSQL spelling (BEGIN, BEGIN WORK, END, ABORT, …): statements
                // autocommit, so these are accepted and change nothing.
                let mut s = s;
                let mut table_options = BTreeMap::new();
                if let Statement::Statement(inner) = &mut s {
                    use datafusion::sql::sqlparser::ast::{AlterTableOperation, CreateTableOptions, Statement as Sql};
                    match inner.as_mut() {
                        Sql::StartTransaction { .. } => return Ok(QueryOutput::Done { command: Command::Begin }),
                        Sql::Commit { .. } => return Ok(QueryOutput::Done { command: Command::Commit }),
                        Sql::Rollback { .. } => return Ok(QueryOutput::Done { command: Command::Rollback }),
                        // WITH (…) of CREATE TABLE: Quiver's table options, which DataFusion does not take.
                        Sql::CreateTable(create) => {
                            if let CreateTableOptions::With(with) = &create.table_options {
                                table_options =
                                    options::parse(with)?.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
                                create.table_options = CreateTableOptions::None;
                            }
                        }
                        Sql::AlterTable(alter) => {
                            let [AlterTableOperation::SetOptionsParens { options: set }] = alter.operations.as_slice()
                            else {
                                return Err(Error::Unsupported {
                                    what: "ALTER TABLE other than SET (table options)".into(),
                                });
                            };
                            let changes = options::parse(set)?;
                            let name = table_name_of(&alter.name)?;
                            self.see_acknowledged_ddl().await?;
                            self.refused(
                                caller,
                                self.meta.read_local(|s| caller.require_superuser(s.principals(), "alter a table")),
                            )?;
                            let what = alter.to_string();
                            let result = self.alter_table_options(&name, changes).await;
                            self.audit_change(AuditEvent::Ddl, caller, what, &result);
                            return result;
                        }
                        _ => {}
                    }
                }
                self.see_acknowledged_ddl().await?;
                let text = s.to_string();
                let plan = self.ctx.state().statement_to_plan(s).await?;
                self.refused(
                    caller,
                    self.meta.read_local(|s| auth::privileges::check(caller, s.principals(), s.catalog(), &plan)),
                )?;
                let plan = self.hide_unseen(caller, plan).await?;
                let ddl = matches!(plan, LogicalPlan::Ddl(_)).then(|| text.clone());
                let result = self.execute_plan_with(plan, false, table_options, &text).await;
                if let Some(text) = ddl {
                    self.audit_change(AuditEvent::Ddl, caller, text, &result);
                }
                result
            }
            ParsedStatement::CopyFrom(copy) => {
                self.see_acknowledged_ddl().await?;
                self.refused(
                    caller,
                    self.meta
                        .read_local(|s| caller.require_superuser(s.principals(), "COPY from a file on the server")),
                )?;
                self.copy_from_file(copy).await
            }
        }
    }

    /// Runs CREATE/ALTER/DROP USER or ROLE, GRANT or REVOKE: a superuser's change to the principals, replicated
    /// whole through the metadata group.
    async fn execute_dcl(&self, caller: &Caller, dcl: auth::dcl::Dcl) -> Result<QueryOutput> {
        self.see_acknowledged_ddl().await?;
        self.refused(
            caller,
            self.meta.read_local(|s| caller.require_superuser(s.principals(), "change users, roles and privileges")),
        )?;
        let command = match &dcl {
            auth::dcl::Dcl::CreateRole { .. } => Command::CreateRole,
            auth::dcl::Dcl::AlterRole { .. } => Command::AlterRole,
            auth::dcl::Dcl::DropRoles { .. } => Command::DropRole,
            auth::dcl::Dcl::GrantRoles { grant: true, .. } | auth::dcl::Dcl::Privileges { grant: true, .. } => {
                Command::Grant
            }
            auth::dcl::Dcl::GrantRoles { .. } | auth::dcl::Dcl::Privileges { .. } => Command::Revoke,
        };
        let described = dcl.describe();
        let result = async {
            let principals = auth::command_of(dcl).await?;
            self.propose(MetaCommand::Principals { command: principals }).await?;
            Ok(QueryOutput::Done { command })
        }
        .await;
        self.audit_change(AuditEvent::Dcl, caller, described, &result);
        result
    }

    /// Records a change to the catalog or the principals that `caller` made or tried: `what` names it.
    fn audit_change<T>(&self, event: AuditEvent, caller: &Caller, mut what: String, result: &Result<T>) {
        const WHAT_MAX: usize = 1_000;
        if what.len() > WHAT_MAX {
            let mut end = WHAT_MAX;
            while !what.is_char_boundary(end) {
                end -= 1;
            }
            what.truncate(end);
            what.push('…');
        }
        let entry = match result {
            Ok(_) => AuditEntry::new(event, Outcome::Ok, what),
            Err(e) => AuditEntry::new(event, Outcome::Failed, format!("{what}: {}", e.report())),
        };
        self.audit.record(entry.user(caller.name()));
    }

    /// Hides from `plan`'s reads of `information_schema` and `pg_catalog` the tables `caller` holds no privilege on.
    /// A plan that lists nothing of the catalog (almost every statement) is passed on after a walk over the plan
    /// alone; one that reads `pg_attribute` first looks up the hidden tables' oids in `pg_class`.
    async fn hide_unseen(&self, caller: &Caller, plan: LogicalPlan) -> Result<LogicalPlan> {
        let listings = auth::privileges::listings(&plan)?;
        if !listings.any() || matches!(caller, Caller::Trusted) {
            return Ok(plan);
        }
        let names = self.meta.read_local(|s| {
            auth::privileges::unseen(caller, s.principals(), s.catalog().tables().map(|t| t.name.as_str()))
        });
        let oids = if listings.by_oid && !names.is_empty() { self.oids_of(&names).await? } else { Vec::new() };
        auth::privileges::hide(plan, &names, &oids)
    }

    /// The oids `pg_catalog.pg_class` gives the tables named in `names`.
    async fn oids_of(&self, names: &[String]) -> Result<Vec<i32>> {
        let batches = self.ctx.sql("SELECT oid, relname FROM pg_catalog.pg_class").await?.collect().await?;
        let mut oids = Vec::new();
        for batch in &batches {
            let (Some(oid), Some(name)) = (batch.column_by_name("oid"), batch.column_by_name("relname")) else {
                continue;
            };
            let name = arrow::compute::cast(name, &DataType::Utf8)?;
            let (Some(oid), Some(name)) = (oid.as_primitive_opt::<Int32Type>(), name.as_string_opt::<i32>()) else {
                continue;
            };
            for (oid, name) in oid.iter().zip(name.iter()) {
                if let (Some(oid), Some(name)) = (oid, name)
                    && names.iter().any(|n| n == name)
                {
                    oids.push(oid);
                }
            }
        }
        Ok(oids)
    }

    /// Passes `result` on, recording a refusal for want of a privilege in the audit log.
    fn refused<T>(&self, caller: &Caller, result: Result<T>) -> Result<T> {
        if let Err(e @ Error::PermissionDenied { .. }) = &result {
            self.audit.record(AuditEntry::new(AuditEvent::Denied, Outcome::Refused, e.to_string()).user(caller.name()));
        }
        result
    }

    /// Proposes a change to the principals made by the server itself (the initial administrator, the token key).
    ///
    /// # Errors
    ///
    /// When the metadata group refuses it or cannot be reached.
    pub async fn change_principals(&self, command: quiver_meta::PrincipalCommand) -> Result<()> {
        self.propose(MetaCommand::Principals { command }).await.map(|_| ())
    }

    /// Refuses `caller` unless it may append rows to `table` (COPY FROM STDIN, bulk ingest).
    ///
    /// # Errors
    ///
    /// [`Error::PermissionDenied`].
    pub async fn authorize_insert(&self, caller: &Caller, table: &str) -> Result<()> {
        let Caller::User(user) = caller else { return Ok(()) };
        self.see_acknowledged_ddl().await?;
        self.refused(
            caller,
            self.meta
                .read_local(|s| auth::privileges::need(s.principals(), user, table, quiver_meta::Privilege::Insert)),
        )
    }

    /// Refuses `caller` unless it is a superuser; `what` says what it tried.
    ///
    /// # Errors
    ///
    /// [`Error::PermissionDenied`].
    pub async fn authorize_superuser(&self, caller: &Caller, what: &str) -> Result<()> {
        if *caller == Caller::Trusted {
            return Ok(());
        }
        self.see_acknowledged_ddl().await?;
        self.refused(caller, self.meta.read_local(|s| caller.require_superuser(s.principals(), what)))
    }

    /// Returns a copy of the principals as this node's replica has applied them.
    pub fn principals(&self) -> quiver_meta::Principals {
        self.meta.read_local(|s| s.principals().clone())
    }

    /// The failed logins of this node, by user name (the back-off every frontend applies).
    pub fn logins(&self) -> &auth::throttle::LoginThrottle {
        &self.logins
    }

    /// The audit log of this node.
    pub fn audit(&self) -> &crate::audit::AuditLog {
        &self.audit
    }

    /// Reads the principals as this node's replica has applied them, without copying them.
    pub fn with_principals<T>(&self, read: impl FnOnce(&quiver_meta::Principals) -> T) -> T {
        self.meta.read_local(|s| read(s.principals()))
    }

    /// Changes the options of native table `name` through the metadata group.
    async fn alter_table_options(&self, name: &str, options: BTreeMap<String, Option<String>>) -> Result<QueryOutput> {
        self.see_acknowledged_ddl().await?;
        let table = self.native_table(name)?;
        let mut after =
            self.meta.read_local(|s| s.catalog().table(name).map(|d| d.options.clone())).unwrap_or_default();
        for (key, value) in &options {
            match value {
                Some(v) => after.insert(key.clone(), v.clone()),
                None => after.remove(key),
            };
        }
        options::check_alterable(&options)?;
        options::check(&after, &table.schema())?;
        let command = CatalogCommand::SetTableOptions { name: name.to_string(), options };
        self.propose(MetaCommand::Catalog { command }).await?;
        Ok(QueryOutput::Done { command: Command::AlterTable })
    }

    /// Executes a planned statement; `optimized` says DataFusion's analyzer and optimizer made `plan` already (a
    /// prepared statement's), `table_options` are those of a CREATE TABLE, `text` is the statement for the query log.
    async fn execute_plan_with(
        &self,
        plan: LogicalPlan,
        optimized: bool,
        table_options: BTreeMap<String, String>,
        text: &str,
    ) -> Result<QueryOutput> {
        // EXPLAIN of a statement that runs as a multi-stage plan shows its stages (DataFusion's own EXPLAIN is built
        // before the distributed planner runs); any other EXPLAIN is DataFusion's.
        #[cfg(not(madsim))]
        if let LogicalPlan::Explain(explain) = &plan
            && !explain.verbose
            && matches!(explain.explain_format, datafusion::common::format::ExplainFormat::Indent)
            && self.distributed.is_some()
            && let Some((schema, stream)) = crate::query::distributed::explain(&self.query_state(), explain).await
        {
            return Ok(QueryOutput::Rows { schema, stream });
        }
        match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) => {
                let name = table_name(&create.name)?;
                if create.or_replace {
                    return Err(Error::Unsupported { what: "CREATE OR REPLACE TABLE".into() });
                }
                if !create.column_defaults.is_empty() {
                    return Err(Error::Unsupported { what: "column DEFAULT values".into() });
                }
                let schema = create.input.schema().as_arrow().clone();
                let mut table_options = table_options;
                options::check(&table_options, &schema)?;
                let primary_key = primary_key_names(&create.constraints, &schema);
                let sharding = options::take_sharding(
                    &mut table_options,
                    &schema,
                    &primary_key,
                    self.sharding,
                    self.serving_nodes(),
                )?;
                let columns = columns_of(&schema);
                let has_rows = !matches!(create.input.as_ref(), LogicalPlan::EmptyRelation(e) if !e.produce_one_row);
                let created = self
                    .create_table(CatalogCommand::CreateTable {
                        name: name.clone(),
                        columns,
                        primary_key,
                        kind: TableKind::Native,
                        options: table_options,
                        sharding,
                        if_not_exists: create.if_not_exists,
                    })
                    .await?;
                if created && has_rows {
                    // CREATE TABLE … AS SELECT: insert the query's rows.
                    let df = self.ctx.execute_logical_plan(create.input.as_ref().clone()).await?;
                    let stream = df.execute_stream().await?;
                    let rows = self.append_stream(&name, stream).await?;
                    return Ok(QueryOutput::Affected { command: Command::Select, rows });
                }
                Ok(QueryOutput::Done { command: Command::CreateTable })
            }
            LogicalPlan::Ddl(DdlStatement::CreateExternalTable(create)) => {
                let name = table_name(&create.name)?;
                let definition = create
                    .definition
                    .clone()
                    .ok_or_else(|| Error::Internal("external table without its definition".into()))?;
                let exists = self.meta.read_local(|s| s.catalog().table(&name).is_some());
                if exists {
                    return if create.if_not_exists {
                        Ok(QueryOutput::Done { command: Command::CreateExternalTable })
                    } else {
                        Err(Error::TableAlreadyExists { table: name })
                    };
                }
                let location = create.locations.join(",");
                let format = create.file_type.to_lowercase();
                // Let DataFusion build (and check) the listing table first; it registers it in our registry.
                self.ctx.execute_logical_plan(LogicalPlan::Ddl(DdlStatement::CreateExternalTable(create))).await?;
                let provider = self
                    .registry
                    .get(&name)
                    .ok_or_else(|| Error::Internal("external table was not registered".into()))?;
                let schema = provider.schema();
                let command = CatalogCommand::CreateTable {
                    name: name.clone(),
                    columns: columns_of(&schema),
                    primary_key: vec![],
                    kind: TableKind::External { definition, location, format },
                    options: Default::default(),
                    sharding: Default::default(),
                    if_not_exists: false,
                };
                if let Err(e) = self.create_table(command).await {
                    self.registry.remove(&name);
                    return Err(e);
                }
                Ok(QueryOutput::Done { command: Command::CreateExternalTable })
            }
            LogicalPlan::Ddl(DdlStatement::DropTable(drop)) => {
                let name = table_name(&drop.name)?;
                if self.registry.is_view(&name) {
                    return Err(Error::Plan { message: format!("\"{name}\" is a view; use DROP VIEW") });
                }
                self.drop_table(&name, drop.if_exists).await?;
                Ok(QueryOutput::Done { command: Command::DropTable })
            }
            LogicalPlan::Ddl(DdlStatement::CreateView(_)) => {
                self.ctx.execute_logical_plan(plan).await?.collect().await?;
                Ok(QueryOutput::Done { command: Command::CreateView })
            }
            LogicalPlan::Ddl(DdlStatement::DropView(_)) => {
                self.ctx.execute_logical_plan(plan).await?.collect().await?;
                Ok(QueryOutput::Done { command: Command::DropView })
            }
            LogicalPlan::Ddl(other) => Err(Error::Unsupported { what: other.name().to_string() }),
            LogicalPlan::Dml(DmlStatement {
                table_name: t,
                op: op @ (WriteOp::Delete | WriteOp::Update),
                input,
                ..
            }) => {
                let name = table_name(&t)?;
                let table = self.native_table(&name)?;
                let is_update = op == WriteOp::Update;
                let change = crate::query::dml::analyze(&name, &input, is_update)?;
                let state = self.ctx.state();
                let rows = self.change_rows(&state, &table, &change).await?;
                Ok(QueryOutput::Affected { command: if is_update { Command::Update } else { Command::Delete }, rows })
            }
            LogicalPlan::Dml(DmlStatement { table_name: ref t, op: WriteOp::Insert(_), .. }) => {
                let name = table_name(t)?;
                if !self.registry.contains(&name) {
                    return Err(Error::TableNotFound { table: name });
                }
                if self.hot_table(&name).is_none() {
                    return Err(Error::TableReadOnly { table: name });
                }
                let result = if optimized {
                    let state = self.ctx.state();
                    match state.query_planner().create_physical_plan(&plan, &state).await {
                        Ok(physical) => datafusion::physical_plan::collect(physical, state.task_ctx()).await,
                        Err(e) => Err(e),
                    }
                } else {
                    match self.ctx.execute_logical_plan(plan).await {
                        Ok(df) => df.collect().await,
                        Err(e) => Err(e),
                    }
                };
                let rows = count_of(result.map_err(|e| not_null_error(&name, self.hot_table(&name), e.into()))?)?;
                Ok(QueryOutput::Affected { command: Command::Insert, rows })
            }
            LogicalPlan::Dml(DmlStatement { op: WriteOp::Truncate, table_name: t, .. }) => {
                let name = table_name(&t)?;
                let table = self.native_table(&name)?;
                let change = crate::query::dml::RowChange {
                    predicate: None,
                    assignments: None,
                    scan_schema: Arc::new(datafusion::common::DFSchema::try_from(table.schema())?),
                };
                let rows = self.change_rows(&self.ctx.state(), &table, &change).await?;
                Ok(QueryOutput::Affected { command: Command::Delete, rows })
            }
            LogicalPlan::Copy(_) => {
                let rows = count_of(self.ctx.execute_logical_plan(plan).await?.collect().await?)?;
                Ok(QueryOutput::Affected { command: Command::Copy, rows })
            }
            LogicalPlan::Statement(s) => {
                use datafusion::logical_expr::Statement as S;
                use datafusion::logical_expr::TransactionConclusion;
                match s {
                    S::TransactionStart(_) => Ok(QueryOutput::Done { command: Command::Begin }),
                    S::TransactionEnd(end) => Ok(QueryOutput::Done {
                        command: match end.conclusion {
                            TransactionConclusion::Commit => Command::Commit,
                            TransactionConclusion::Rollback => Command::Rollback,
                        },
                    }),
                    S::SetVariable(set) if !set.variable.to_lowercase().starts_with("datafusion.") => {
                        // Client session settings (application_name, extra_float_digits, DateStyle, …) are
                        // accepted and have no effect.
                        Ok(QueryOutput::Done { command: Command::Set })
                    }
                    S::SetVariable(_) => Err(Error::Unsupported {
                        what: "changing engine settings from SQL; use the configuration file".into(),
                    }),
                    S::Prepare(_) | S::Execute(_) | S::Deallocate(_) | S::ResetVariable(_) => Err(Error::Unsupported {
                        what: "SQL-level PREPARE/EXECUTE/RESET; use the protocol's prepared statements".into(),
                    }),
                }
            }
            plan => {
                // A state of its own, so that the query's scans of cold files count into its entry in the log.
                let reads = Arc::new(crate::cold::cache::ReadTally::default());
                let mut state = self.query_state();
                state.config_mut().set_extension(Arc::new(crate::query::cold::StatementReads(Arc::clone(&reads))));
                let df = datafusion::dataframe::DataFrame::new(state.clone(), plan.clone());
                let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
                // The physical plan that runs, kept so that the log can count what its stages shipped.
                let ran = statements::RanPlan::default();
                // A statement that reads tables is planned and runs on the query runtime; one that reads none
                // (`SELECT 1`, `INSERT … VALUES`) runs here, at once.
                let cpu = if reads_tables(&plan) { self.cpu.clone() } else { crate::cpu::CpuRuntime::inline() };
                #[cfg(not(madsim))]
                let meta = self.distributed.as_ref().map(|_| self.meta.clone());
                let start = {
                    let ran = ran.clone();
                    async move {
                        let started = statements::start(df, &ran, optimized).await;
                        // A multi-stage plan that lost a node, or had a shard move under it, before any row came
                        // is planned again from the metadata as it is now (a shard's new primary), read
                        // linearizably first.
                        #[cfg(not(madsim))]
                        let started = match meta {
                            Some(meta) => {
                                let again = move || {
                                    let (meta, ran) = (meta.clone(), ran.clone());
                                    let df = datafusion::dataframe::DataFrame::new(state.clone(), plan.clone());
                                    async move {
                                        if let Err(e) = meta.read_state(|_| ()).await {
                                            tracing::debug!(error = %e, "reading the metadata before planning again failed");
                                        }
                                        statements::start(df, &ran, optimized).await
                                    }
                                };
                                crate::query::distributed::run_again_if_a_node_is_lost(started, again).await
                            }
                            None => started,
                        };
                        #[cfg(madsim)]
                        let _ = (state, plan);
                        started
                    }
                };
                let started = cpu.run(start).await;
                let stream = self.queries.track(text, reads, ran, started?);
                Ok(QueryOutput::Rows { schema, stream })
            }
        }
    }

    /// The planner state a query runs with. Over a cluster of several serving nodes, a hash join broadcasts a build
    /// side estimated up to [`CLUSTER_BROADCAST_BYTES`] rather than shuffling both sides by key: shuffling the probe
    /// side (often the largest table) costs far more between nodes than on one.
    fn query_state(&self) -> datafusion::execution::SessionState {
        #[cfg(not(madsim))]
        if self.distributed.is_some()
            && self
                .meta
                .read_local(|s| s.nodes().filter(|n| n.state == quiver_meta::NodeState::Serving).nth(1).is_some())
        {
            let mut state = self.ctx.state();
            let optimizer = &mut state.config_mut().options_mut().optimizer;
            optimizer.hash_join_single_partition_threshold = CLUSTER_BROADCAST_BYTES;
            optimizer.hash_join_single_partition_threshold_rows = CLUSTER_BROADCAST_ROWS;
            return state;
        }
        self.ctx.state()
    }

    fn native_table(&self, name: &str) -> Result<Arc<HotTable>> {
        match self.hot_table(name) {
            Some(t) => Ok(t),
            None if self.registry.contains(name) => Err(Error::TableReadOnly { table: name.to_string() }),
            None => Err(Error::TableNotFound { table: name.to_string() }),
        }
    }

    /// Proposes a CREATE TABLE through the metadata replica; returns whether a table was created (false for
    /// `IF NOT EXISTS` on an existing table). The table is attached on this node when this returns, and on every
    /// other node as its replica applies the change.
    async fn create_table(&self, command: CatalogCommand) -> Result<bool> {
        let outcome = self.propose(MetaCommand::Catalog { command }).await?;
        self.sync_catalog().await?;
        Ok(matches!(outcome, MetaOutcome::TableCreated { .. }))
    }

    async fn drop_table(&self, name: &str, if_exists: bool) -> Result<()> {
        let command = CatalogCommand::DropTable { name: name.to_string(), if_exists };
        self.propose(MetaCommand::Catalog { command }).await?;
        self.sync_catalog().await
    }

    /// Replicates a metadata command and returns its outcome; a refusal (the table exists) is an error naming it.
    async fn propose(&self, command: MetaCommand) -> Result<MetaOutcome> {
        let started = tokio::time::Instant::now();
        let response = self.meta.propose(command).await;
        self.metrics.observe_meta_proposal(started.elapsed(), response.is_ok());
        match response?.outcome {
            Ok(outcome) => Ok(outcome),
            Err(quiver_meta::Rejection::TableAlreadyExists { table }) => Err(Error::TableAlreadyExists { table }),
            Err(quiver_meta::Rejection::TableNotFound { table }) => Err(Error::TableNotFound { table }),
            Err(rejection) => Err(Error::Meta(rejection.into())),
        }
    }

    async fn commit_blocking(&self, batch: WriteBatch) -> Result<()> {
        let tables = Arc::clone(&self.tables);
        // Fault point: a slow fsync.
        quiver_meta::buggify_delay!(0.05, 500);
        crate::blocking::run("commit task", move || tables.commit(batch)).await?
    }

    /// Appends a stream of batches to a native table in one atomic, durable commit; returns the rows appended.
    ///
    /// # Errors
    ///
    /// Fails, appending nothing, when the table does not exist, a batch does not match its schema, or the store fails.
    pub async fn append_stream(&self, table: &str, stream: SendableRecordBatchStream) -> Result<u64> {
        self.see_acknowledged_ddl().await?;
        self.insert_routed(&self.native_table(table)?, stream).await
    }

    /// Bulk-ingests batches into `table`, creating it from the batches' schema as `mode` says; returns the rows
    /// ingested. The ingest is atomic: on error no row of it is visible.
    ///
    /// # Errors
    ///
    /// [`Error::TableNotFound`] / [`Error::TableAlreadyExists`] as `mode` dictates, [`Error::SchemaMismatch`] when the
    /// batches do not fit an existing table.
    pub async fn ingest(
        &self,
        table: &str,
        mode: IngestMode,
        schema: SchemaRef,
        stream: SendableRecordBatchStream,
    ) -> Result<u64> {
        self.see_acknowledged_ddl().await?;
        let exists = self.meta.read_local(|s| s.catalog().table(table).is_some());
        match (mode, exists) {
            (IngestMode::Create, true) => return Err(Error::TableAlreadyExists { table: table.to_string() }),
            (IngestMode::Append, false) => return Err(Error::TableNotFound { table: table.to_string() }),
            (IngestMode::Replace, true) => self.drop_table(table, true).await?,
            _ => {}
        }
        if !exists || mode == IngestMode::Replace {
            let sharding =
                options::take_sharding(&mut BTreeMap::new(), &schema, &[], self.sharding, self.serving_nodes())?;
            self.create_table(CatalogCommand::CreateTable {
                name: table.to_string(),
                columns: columns_of(&schema),
                primary_key: vec![],
                kind: TableKind::Native,
                options: Default::default(),
                sharding,
                if_not_exists: mode == IngestMode::CreateOrAppend,
            })
            .await?;
        }
        self.append_stream(table, stream).await
    }

    /// Runs a statement through DataFusion only, for definitions replayed at open.
    async fn plan_and_run_datafusion(&self, sql: &str) -> Result<()> {
        let df = self.ctx.sql(sql).await?;
        df.collect().await?;
        Ok(())
    }
}

/// A statement as parsed: either one DataFusion plans, or a form we handle before DataFusion sees it.
enum ParsedStatement {
    DataFusion(Statement),
    CopyFrom(copy::CopyFrom),
    Dcl(auth::dcl::Dcl),
}

fn parse(sql: &str) -> Result<Vec<ParsedStatement>> {
    if let Some(dcl) = auth::dcl::parse(sql)? {
        return Ok(vec![ParsedStatement::Dcl(dcl)]);
    }
    match DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {}) {
        Ok(statements) => Ok(statements.into_iter().map(ParsedStatement::DataFusion).collect()),
        Err(e) => {
            // DataFusion's parser knows only COPY … TO; COPY … FROM is ours.
            if let Some(copy) = copy::parse_copy_from(sql)? {
                return Ok(vec![ParsedStatement::CopyFrom(copy)]);
            }
            Err(e.into())
        }
    }
}

/// Rewrites JDBC/ODBC-style `?` parameters to PostgreSQL's `$1`, `$2`, … (which DataFusion plans); returns `None`
/// when the text has no `?` outside quotes and comments.
fn number_question_marks(sql: &str) -> Option<String> {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    let mut i = 0;
    let mut last = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'?' => {
                n += 1;
                out.push_str(&sql[last..i]);
                out.push_str(&format!("${n}"));
                last = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if n == 0 {
        return None;
    }
    out.push_str(&sql[last.min(sql.len())..]);
    Some(out)
}

fn table_name_of(name: &datafusion::sql::sqlparser::ast::ObjectName) -> Result<String> {
    table_name(&datafusion::sql::planner::object_name_to_table_reference(name.clone(), true)?)
}

fn table_name(r: &datafusion::common::TableReference) -> Result<String> {
    if let Some(schema) = r.schema()
        && schema != SCHEMA_NAME
    {
        if schema == system::SYSTEM_SCHEMA || schema == "information_schema" || schema == "pg_catalog" {
            return Err(Error::Plan {
                message: format!("schema \"{schema}\" is read-only; tables live in \"{SCHEMA_NAME}\""),
            });
        }
        return Err(Error::Plan {
            message: format!("schema \"{schema}\" does not exist; tables live in \"{SCHEMA_NAME}\""),
        });
    }
    if let Some(catalog) = r.catalog()
        && catalog != CATALOG_NAME
    {
        return Err(Error::Plan { message: format!("catalog \"{catalog}\" does not exist") });
    }
    Ok(r.table().to_string())
}

/// Whether `plan` (its subqueries included) reads a table: a scan of a table, a view, a system table or a table
/// function.
fn reads_tables(plan: &LogicalPlan) -> bool {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut reads = false;
    let _ = plan.apply_with_subqueries(|node| {
        if matches!(node, LogicalPlan::TableScan(_)) {
            reads = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    reads
}

/// Whether a prepared statement's plan may be optimized once for all its executions: a query or an INSERT that calls
/// no function answering differently from one execution to the next (the optimizer folds `now()` to the time it
/// runs), in its own expressions or in a view it reads.
fn optimizable_once(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Dml(dml) if matches!(dml.op, WriteOp::Insert(_)) => {}
        LogicalPlan::Dml(_)
        | LogicalPlan::Ddl(_)
        | LogicalPlan::Statement(_)
        | LogicalPlan::Copy(_)
        | LogicalPlan::Explain(_)
        | LogicalPlan::Analyze(_)
        | LogicalPlan::DescribeTable(_) => return false,
        _ => {}
    }
    immutable(plan)
}

/// Whether every function `plan` calls (its subqueries and the views it reads included) is immutable.
fn immutable(plan: &LogicalPlan) -> bool {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::Volatility;
    let mut immutable = true;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some(view) = scan.source.get_logical_plan()
            && !self::immutable(&view)
        {
            immutable = false;
        }
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::ScalarFunction(f) = e
                    && f.func.signature().volatility != Volatility::Immutable
                {
                    immutable = false;
                }
                Ok(if immutable { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
            })
        })?;
        Ok(if immutable { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
    });
    immutable
}

fn columns_of(schema: &arrow::datatypes::Schema) -> Vec<ColumnDef> {
    schema
        .fields()
        .iter()
        .map(|f| ColumnDef { name: f.name().clone(), data_type: f.data_type().clone(), nullable: f.is_nullable() })
        .collect()
}

/// Where the rows of cold files being written are sorted: a memory pool of `cold.sort_memory`, and the spill
/// directory `spill/` in the data directory (emptied here: a crash can leave spilled runs behind), or the system's
/// temporary directory for an in-memory database.
fn sort_context(
    config: &crate::cold::ColdConfig,
    data_dir: Option<&Path>,
) -> Result<Arc<datafusion::execution::TaskContext>> {
    use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
    use datafusion::execution::memory_pool::FairSpillPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;

    let mode = match data_dir {
        // The simulation runs no sort big enough to spill, and has no disk for it.
        _ if cfg!(madsim) => DiskManagerMode::Disabled,
        Some(dir) => {
            let spill = dir.join("spill");
            if spill.exists() {
                std::fs::remove_dir_all(&spill).map_err(|e| Error::io(format!("empty {}", spill.display()), e))?;
            }
            std::fs::create_dir_all(&spill).map_err(|e| Error::io(format!("create {}", spill.display()), e))?;
            DiskManagerMode::Directories(vec![spill])
        }
        None => DiskManagerMode::OsTmpDirectory,
    };
    let memory = usize::try_from(config.sort_memory.0).unwrap_or(usize::MAX);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(memory)))
        .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(mode))
        .build_arc()?;
    Ok(Arc::new(datafusion::execution::TaskContext::default().with_runtime(runtime)))
}

fn primary_key_names(constraints: &datafusion::common::Constraints, schema: &arrow::datatypes::Schema) -> Vec<String> {
    for c in constraints.iter() {
        if let datafusion::common::Constraint::PrimaryKey(idx) = c {
            return idx.iter().filter_map(|i| schema.fields().get(*i).map(|f| f.name().clone())).collect();
        }
    }
    Vec::new()
}

/// Names the table and column of a NULL that DataFusion's insert plan rejected before our sink saw it.
///
/// DataFusion reports it as Arrow's "Column 'columnN' is declared as non-nullable" about its VALUES relation, whose
/// columns map to the table's by position.
fn not_null_error(table: &str, hot: Option<Arc<HotTable>>, e: Error) -> Error {
    let Error::Arrow(arrow::error::ArrowError::InvalidArgumentError(message)) = &e else { return e };
    if !message.contains("is declared as non-nullable") {
        return e;
    }
    let quoted = message.split('\'').nth(1).unwrap_or_default();
    let column = match hot {
        Some(t) if t.schema().field_with_name(quoted).is_ok() => quoted.to_string(),
        Some(t) => quoted
            .strip_prefix("column")
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| t.schema().fields().get(n.wrapping_sub(1)).map(|f| f.name().clone()))
            .unwrap_or_else(|| quoted.to_string()),
        None => quoted.to_string(),
    };
    Error::NotNullViolation { table: table.to_string(), column }
}

/// Reads the `count` column DataFusion's DML and COPY plans return.
fn count_of(batches: Vec<RecordBatch>) -> Result<u64> {
    let mut total = 0;
    for b in batches {
        if b.num_columns() == 0 {
            continue;
        }
        let col = b.column(0);
        let col = arrow::compute::cast(col, &DataType::UInt64)?;
        total += col.as_primitive::<arrow::datatypes::UInt64Type>().iter().flatten().sum::<u64>();
    }
    Ok(total)
}

/// Checks the store's format, marking a new store with this build's; returns the format found.
fn check_format(store: &dyn HotStore) -> Result<u32> {
    match store.get(keys::FORMAT_KEY)? {
        None => {
            let mut batch = WriteBatch::new();
            batch.put(keys::FORMAT_KEY.to_vec(), keys::FORMAT_VERSION.to_be_bytes().to_vec());
            batch.put(keys::PLACED_ONLY_KEY.to_vec(), Vec::new());
            store.write(batch, Durability::Sync)?;
            Ok(keys::FORMAT_VERSION)
        }
        Some(v) if v == keys::FORMAT_VERSION.to_be_bytes() => Ok(keys::FORMAT_VERSION),
        Some(v) if v == keys::v2::FORMAT_VERSION.to_be_bytes() => Ok(keys::v2::FORMAT_VERSION),
        Some(v) => Err(Error::Corrupt {
            location: "format marker".into(),
            detail: match <[u8; 4]>::try_from(v.as_slice()) {
                Ok(b) => format!(
                    "the data directory has format {}; this build reads format {} (export with the build that wrote \
                     it, e.g. COPY (SELECT …) TO, and import here)",
                    u32::from_be_bytes(b),
                    keys::FORMAT_VERSION
                ),
                Err(_) => format!("the format marker is unreadable ({v:?})"),
            },
        }),
    }
}

/// What recovery found of each shard replica, by table and shard.
type RecoveredChunks = HashMap<(TableId, ShardId), crate::table::RecoveredShard>;

/// Loads every committed chunk's index entry, each shard's sequence floor, prepared changes and commit point, and
/// deletes chunk data that neither an index entry nor a prepared change holds, and what tables that are gone left.
fn recover_chunks(store: &dyn HotStore, catalog: &Catalog) -> Result<RecoveredChunks> {
    let live: std::collections::HashSet<TableId> = catalog.tables().map(|t| t.id).collect();
    let mut by_shard: RecoveredChunks = HashMap::new();
    let mut committed = std::collections::HashSet::new();
    let mut garbage = WriteBatch::new();
    let malformed = |key: &[u8], what: &str| Error::Corrupt {
        location: format!("key {key:?}"),
        detail: format!("malformed {what}"),
    };
    let (start, end) = keys::all_index_range();
    for (key, value) in store.scan(&start, &end)? {
        let id = keys::parse_chunk_key(&key).ok_or_else(|| malformed(&key, "chunk index key"))?;
        if !live.contains(&id.table) {
            garbage.delete(key);
            continue;
        }
        let meta =
            chunk::decode_meta(&value, || format!("table {} shard {} chunk {} index", id.table, id.shard, id.seq))?;
        committed.insert(id);
        by_shard.entry((id.table, id.shard)).or_default().chunks.push((id.seq, meta));
    }
    let (start, end) = keys::all_prepared_range();
    for (key, value) in store.scan(&start, &end)? {
        let id = keys::parse_prepared_key(&key).ok_or_else(|| malformed(&key, "prepared change key"))?;
        if !live.contains(&id.table) {
            garbage.delete(key);
            continue;
        }
        let location = || format!("prepared change {} of table {} shard {}", id.seq, id.table, id.shard);
        let change = crate::table::log::PreparedChange::decode(id.seq, &value, location)?;
        for (seq, _) in &change.added {
            committed.insert(keys::ChunkId { seq: *seq, ..id });
        }
        by_shard.entry((id.table, id.shard)).or_default().prepared.push(change);
    }
    for (shard, lsn) in shard_values(store, keys::all_commit_range(), "commit point", &live, &mut garbage)? {
        by_shard.entry(shard).or_default().committed_lsn = lsn;
    }
    let (start, end) = keys::all_data_range();
    for key in store.scan_keys(&start, &end)? {
        let id = keys::parse_chunk_key(&key).ok_or_else(|| malformed(&key, "chunk data key"))?;
        if !committed.contains(&id) {
            garbage.delete(key);
        }
    }
    for (shard, floor) in shard_values(store, keys::all_floor_range(), "sequence floor", &live, &mut garbage)? {
        by_shard.entry(shard).or_default().floor = floor;
    }
    for (shard, id) in shard_values(store, keys::all_mark_range(), "mark identity", &live, &mut garbage)? {
        by_shard.entry(shard).or_default().mark_id = Some(id);
    }
    for (shard, version) in shard_values(store, keys::all_removals_range(), "settled removal", &live, &mut garbage)? {
        by_shard.entry(shard).or_default().removals_settled = version;
    }
    if !garbage.is_empty() {
        tracing::info!(keys = garbage.ops().len(), "removing uncommitted chunk data");
        store.write(garbage, Durability::Sync)?;
    }
    Ok(by_shard)
}

/// The per-shard numbers under `range` (commit points, sequence floors), by table and shard; keys of tables the
/// catalog no longer has go to `garbage`. `what` names them in errors.
fn shard_values(
    store: &dyn HotStore,
    (start, end): (Vec<u8>, Vec<u8>),
    what: &str,
    live: &std::collections::HashSet<TableId>,
    garbage: &mut WriteBatch,
) -> Result<Vec<((TableId, ShardId), u64)>> {
    let mut out = Vec::new();
    for (key, value) in store.scan(&start, &end)? {
        let (table, shard) = keys::parse_shard_key(&key).ok_or_else(|| Error::Corrupt {
            location: format!("key {key:?}"),
            detail: format!("malformed {what} key"),
        })?;
        if !live.contains(&table) {
            garbage.delete(key);
            continue;
        }
        let number = u64::from_be_bytes(value.as_slice().try_into().map_err(|_| Error::Corrupt {
            location: format!("{what} of table {table} shard {shard}"),
            detail: format!("{} bytes where 8 were expected", value.len()),
        })?);
        out.push(((table, shard), number));
    }
    Ok(out)
}

/// Returns the store's identity, choosing one the first time (see [`keys::STORE_ID_KEY`]).
fn store_identity(store: &dyn HotStore) -> Result<u64> {
    if let Some(v) = store.get(keys::STORE_ID_KEY)? {
        return <[u8; 8]>::try_from(v.as_slice()).map(u64::from_be_bytes).map_err(|_| Error::Corrupt {
            location: "store identity".into(),
            detail: format!("{} bytes where 8 were expected", v.len()),
        });
    }
    let id = crate::random_u64()?;
    let mut batch = WriteBatch::new();
    batch.put(keys::STORE_ID_KEY.to_vec(), id.to_be_bytes().to_vec());
    store.write(batch, Durability::Sync)?;
    Ok(id)
}

/// Returns the directory path of a data location, if it has one.
pub fn data_dir(location: &StorageLocation) -> Option<&Path> {
    match location {
        StorageLocation::Path(p) => Some(p),
        StorageLocation::Memory => None,
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    use datafusion::common::ScalarValue;

    use super::{Engine, EngineOptions, StorageLocation, number_question_marks};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prepared_statements_are_optimized_once_unless_a_function_answers_anew_each_time() {
        let engine = Engine::open(StorageLocation::Memory, EngineOptions::default()).await.expect("open");
        for sql in [
            "CREATE TABLE t (id BIGINT NOT NULL, v BIGINT, ts TIMESTAMP, PRIMARY KEY (id))",
            "CREATE VIEW recent AS SELECT id, v FROM t WHERE ts > now() - INTERVAL '1 hour'",
        ] {
            engine.execute_one(sql).await.expect(sql);
        }
        let insert = engine.prepare("INSERT INTO t (id, v, ts) VALUES ($1, $2, now())").await.expect("prepare");
        assert!(insert.optimized.is_none(), "now() is read at each execution");
        let insert = engine.prepare("INSERT INTO t (id, v) VALUES ($1, $2)").await.expect("prepare");
        assert!(insert.optimized.is_some(), "an INSERT of parameters is optimized once");
        for id in 1..=5_i64 {
            let params = vec![ScalarValue::Int64(Some(id)), ScalarValue::Int64(Some(id * 10))];
            engine.execute_prepared(&insert, params).await.expect("insert");
        }
        let lookup = engine.prepare("SELECT v FROM t WHERE id = $1").await.expect("prepare");
        assert!(lookup.optimized.is_some());
        for id in [2_i64, 5, 3] {
            let batches = engine
                .execute_prepared(&lookup, vec![ScalarValue::Int64(Some(id))])
                .await
                .expect("lookup")
                .collect()
                .await
                .expect("rows");
            let values: Vec<i64> =
                batches.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()).collect();
            assert_eq!(values, vec![id * 10], "each execution reads its own parameter");
        }
        for sql in ["SELECT count(*) FROM t WHERE ts < now()", "SELECT count(*) FROM recent WHERE id = $1"] {
            let prepared = engine.prepare(sql).await.expect(sql);
            assert!(prepared.optimized.is_none(), "{sql}: optimized once would keep one moment's now()");
        }
    }

    #[test]
    fn question_marks_become_numbered_parameters_outside_quotes_and_comments() {
        assert_eq!(
            number_question_marks("SELECT * FROM t WHERE a = ? AND b = '?' -- ?\n AND c = ?").as_deref(),
            Some("SELECT * FROM t WHERE a = $1 AND b = '?' -- ?\n AND c = $2")
        );
        assert_eq!(number_question_marks("SELECT '?', \"?\" /* ? */").as_deref(), None);
        assert_eq!(number_question_marks("SELECT $1").as_deref(), None);
    }
}
