//! Whole nodes under madsim: each simulated host boots a Quiver node through the binary's own startup
//! (`Server::bind_on_stores`, then `Server::run`) on a [`SimHotDisk`], with its metadata replica, engine (DataFusion
//! confined to one partition) and internal gRPC endpoint on madsim's network. Clients on a host of their own use the
//! nodes' internal `DataService` (SQL and Arrow IPC appends), as node-to-node traffic does.
//!
//! One run ([`run_seed`]):
//! 1. **Boot**: node 1 bootstraps the cluster, the others join it (`cluster.join`), as `quiver server` does.
//! 2. **Faults** (for [`NodeSimOptions::fault_secs`] virtual seconds) while clients create tables, append batches of
//!    rows with unique ids to random nodes, and query them back: kill a node (its disk losing unsynced writes or
//!    not) and restart it on the same disk, lose a node with its disk (removed, an empty replacement joins), isolate
//!    a node, cut one direction of its traffic, slow the network, drop packets, make the clocks jump (with
//!    `--deletes`, clients also DELETE whole batches they saw acknowledged); on half the
//!    seeds the fault points in the production code fire too. An operator drains a random node now and then and stops
//!    the drain a few seconds later, and the copies of a node down for three seconds are made again elsewhere, so
//!    shards move (copies added, caught up, dropped, primaries handed over) under the faults.
//! 3. **Heal and liveness**: every fault is lifted; a CREATE TABLE and an append on every node must then succeed
//!    within a bound.
//! 4. **Checks**, against a model of what each client learned:
//!    - every query answer holds each row at most once, whole batches only, every batch acknowledged on that node
//!      before the query began and not deleted since, no batch whose DELETE was acknowledged before it began, and
//!      nothing that failed or began after the query ended;
//!    - after the faults, on every node, every acknowledged row is present exactly once, a batch whose outcome the
//!      client could not know is present entirely or not at all, and `count(*)`, `sum`, `min`, `max` computed by
//!      DataFusion equal the model's;
//!    - every acknowledged table exists on every node; at most one metadata leader per term; the metadata replicas
//!      converge to the same state;
//!    - every hot row on every node is stored in the shard that owns its slot.
//!
//! Statements route to the shards' primaries, so a row acknowledged through any node is visible on every node. Half
//! the tables keep one copy, the other half three, all tiering to the cold tier on their shards' primaries;
//! [`replicas_of`] says which. Rows of a table with one copy may be lost when any
//! node loses its disk; rows of a replicated table only when two nodes lost their disks since the row was written (an
//! acknowledgement needs two durable copies, `min_in_sync`). Each table has one shard unless `--shards` says more:
//! then every append spanning shards is a transaction (a batch torn across shards is a violation, unless a shard's
//! only copy may have been lost with a disk), and a part whose coordinator died is aborted by its primary after a
//! 3 s hold. Beside them, one table of one shard with three copies is written directly through its primary,
//! under the same faults, with its own checks (`replicated`).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use madsim::rand::{Rng, thread_rng};
use madsim::runtime::{Handle, NodeHandle, Runtime};
use madsim::time::{Instant, sleep};
use madsim_tonic::Code;
use openraft::ServerState;
use quiver_meta::service::ClusterClient;
use quiver_node::Engine;
use quiver_node::cold::ColdStore;
use quiver_node::config::{ByteSize, Config, Millis};
use quiver_node::server::Server;
use quiver_proto::v1::data_service_client::DataServiceClient;
use quiver_proto::v1::{AppendRequest, ExecuteRequest, TierRequest};

use crate::faults::{self, Hosts, wait_until};
use crate::hot_disk::SimHotDisk;
use crate::meta_sim::Outcome;
use crate::object_store::{FaultRates, FaultyStore};
use crate::shard_map::{self, ShardMapChecker};

mod ledger;
mod replicated;

/// What one run does.
#[derive(Debug, Clone)]
pub struct NodeSimOptions {
    /// Nodes in the cluster (all metadata voters when 3 or 5).
    pub nodes: u64,
    /// Virtual seconds of faults and workload.
    pub fault_secs: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Virtual seconds allowed for the cluster to serve again once every fault is healed.
    pub liveness_secs: u64,
    /// A bug injected into every node, to show that the checks catch it.
    pub bug: Option<quiver_node::engine::InjectedBug>,
    /// Shards of each workload table: above 1, an append's rows spread over them and each append is a statement
    /// spanning shards, all or nothing.
    pub shards: u32,
    /// Also run the ledger: UPDATEs spanning shards, audited for atomicity (see `ledger`).
    pub ledger: bool,
    /// Clients also DELETE whole batches they saw acknowledged: each must then be gone from every later answer on
    /// every node, and be gone whole or not at all from every answer.
    pub deletes: bool,
    /// Balance shard copies within a twentieth of the mean load, so that copies move for balance throughout (they
    /// move within the default tenth too, less often).
    pub moves: bool,
    /// The faults also fill nodes' disks: a node whose metadata log cannot be written stops itself and is started
    /// again once its disk is freed.
    pub disk_full: bool,
}

impl Default for NodeSimOptions {
    fn default() -> Self {
        NodeSimOptions {
            nodes: 3,
            fault_secs: 20,
            clients: 3,
            liveness_secs: 30,
            bug: None,
            shards: 1,
            ledger: false,
            deletes: false,
            moves: false,
            disk_full: false,
        }
    }
}

/// Runs one seed to completion; `Err` carries the violated invariant.
///
/// # Errors
///
/// A message naming the invariant that failed, with the seed.
pub fn run_seed(seed: u64, options: &NodeSimOptions) -> Result<Outcome, String> {
    let mut runtime = Runtime::with_seed_and_config(seed, madsim::Config::default());
    runtime.set_time_limit(Duration::from_secs(options.fault_secs + options.liveness_secs + 600));
    let options = options.clone();
    runtime.block_on(async move { simulate(options).await }).map_err(|e| format!("seed {seed}: {e}"))
}

fn ip_of(id: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, id as u8))
}

fn addr_of(id: u64) -> SocketAddr {
    SocketAddr::new(ip_of(id), 7000)
}

/// The configuration of node `id`, as an operator would write it, with Raft timing short enough that many elections
/// happen per virtual minute.
fn node_config(id: u64, nodes: u64, bootstrap: bool) -> Config {
    let mut config = Config::default();
    config.storage.data_dir = PathBuf::from(format!("/sim/node-{id}"));
    // Small chunks: appends and scans cross many of them.
    config.storage.chunk_rows = 16;
    config.storage.column_cache = ByteSize(1 << 20);
    config.cluster.node_id = id;
    config.cluster.grpc_addr = addr_of(id).to_string();
    config.cluster.cluster_id = Some("sim".into());
    config.cluster.join =
        if bootstrap { Vec::new() } else { (1..=nodes).filter(|n| *n != id).map(|n| addr_of(n).to_string()).collect() };
    config.cluster.voters = if nodes % 2 == 1 { nodes as usize } else { nodes as usize - 1 };
    config.cluster.heartbeat_interval = Millis(50);
    config.cluster.transaction_hold = Millis(3_000);
    config.cluster.election_timeout_min = Millis(300);
    config.cluster.election_timeout_max = Millis(600);
    config.cluster.request_timeout = Millis(2_000);
    config.cluster.join_timeout = Millis(600_000);
    config.cluster.snapshot_every = 40;
    // Failure detection within the faults' time scale: a node cut off or killed for two seconds is marked down, and
    // the shards it led fail over.
    config.cluster.node_heartbeat_interval = Millis(200);
    config.cluster.node_down_after = Millis(2_000);
    // A node down for three seconds more has its shard copies made again on others (where some node holds none).
    config.cluster.replica_down_timeout = Millis(3_000);
    // The background tierer moves a table's hot rows once they pass a few chunks, besides the clients' tierings.
    config.cold.hot_bytes_max = ByteSize(4 << 10);
    config.cold.tier_check_interval = Millis(1_000);
    // Compaction merges a table's files on a node as soon as it has two, under the same faults: the merged file must
    // hold every row of the files it replaces, once.
    config.cold.compact_min_files = 2;
    // The leader collects unreferenced objects often, with a grace period shorter than a slow tiering under
    // faults: tierings that take too long must give up rather than have their uploads collected under them.
    config.cold.gc_interval = Millis(2_000);
    config.cold.gc_grace = Millis(6_000);
    // Primaries report their shards' loads every second: the leader balances copies on what they hold.
    config.cluster.load_report_interval = Millis(1_000);
    config
}

/// The running nodes' engines, as the checkers see them.
type Live = Arc<Mutex<BTreeMap<u64, Arc<Engine>>>>;
/// Each node's disk; a replaced node gets a new, empty one.
type Disks = Arc<Mutex<BTreeMap<u64, SimHotDisk>>>;

fn live_engines(live: &Live) -> Vec<Arc<Engine>> {
    live.lock().expect("live map").values().cloned().collect()
}

/// One incarnation of node `id`, booted as the binary boots: `Server::bind_on_stores` then `Server::run`. Runs until
/// the node is killed; a startup failure is recorded for the checks.
#[allow(clippy::too_many_arguments)]
async fn run_node(
    id: u64,
    nodes: u64,
    (bug, moves): (Option<quiver_node::engine::InjectedBug>, bool),
    disks: Disks,
    live: Live,
    bootstrapped: Arc<AtomicBool>,
    (failures, stopped): (Failures, Stopped),
    bucket: FaultyStore,
) {
    let disk = disks.lock().expect("disks")[&id].clone();
    let full = disk.clone();
    // Only node 1's very first boot bootstraps; every other start of a node with an empty disk joins.
    let bootstrap = id == 1 && !bootstrapped.swap(true, Ordering::SeqCst);
    let mut config = node_config(id, nodes, bootstrap);
    config.cluster.injected_bug = bug;
    if moves {
        // Balance within a twentieth: copies move whenever appends, tierings and deletes shift the loads.
        config.cluster.rebalance_tolerance_pct = 5;
    }
    // Every node's cold tier is the one bucket, which outlives the nodes (and their disks); small row groups, so
    // files have several.
    let cold = ColdStore::new(Arc::new(bucket), "sim-bucket", 16);
    // A start or a run that ends on a write its full disk refused is what a node must do: its supervisor starts it
    // again once the disk has room. Anything else is a failure.
    let ended = |what: &str, e: quiver_node::Error| {
        let report = e.report();
        if full.refused() > 0 && report.contains("No space left on device") {
            tracing::info!(node = id, error = %report, "the node {what} on its full disk");
            stopped.lock().expect("stopped").insert(id);
        } else {
            failures.lock().expect("failures").push(format!("node {id} {what}: {report}"));
        }
    };
    let server = match Server::bind_on_stores(config, Arc::new(disk), Some(cold)).await {
        Ok(server) => server,
        Err(e) => return ended("failed to start", e),
    };
    live.lock().expect("live map").insert(id, Arc::clone(server.engine()));
    if let Err(e) = server.run(std::future::pending()).await {
        live.lock().expect("live map").remove(&id);
        ended("stopped", e);
    }
}

type Failures = Arc<Mutex<Vec<String>>>;

/// Starts a node that stopped itself on a full disk again once its disk has room, as systemd's
/// `Restart=on-failure` would (every 100 virtual ms); counts the starts in `starts`. Runs until aborted.
async fn supervise(
    handle: Handle,
    hosts: BTreeMap<u64, madsim::task::NodeId>,
    disks: Disks,
    stopped: Stopped,
    starts: Arc<std::sync::atomic::AtomicUsize>,
) {
    loop {
        sleep(Duration::from_millis(100)).await;
        let ready: Vec<u64> = {
            let disks = disks.lock().expect("disks");
            let mut stopped = stopped.lock().expect("stopped");
            let ready: Vec<u64> = stopped.iter().copied().filter(|id| !disks[id].is_full()).collect();
            for id in &ready {
                stopped.remove(id);
            }
            ready
        };
        for id in ready {
            tracing::info!(node = id, "its disk has room again: the node that stopped itself starts again");
            // A kill first: it also takes the stopped process's sockets off the simulated network (a restart alone
            // leaves its listener there, and the new one's peers would reach the old).
            handle.kill(hosts[&id]);
            handle.restart(hosts[&id]);
            starts.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The nodes that stopped themselves on a full disk and have not been started again.
type Stopped = Arc<Mutex<BTreeSet<u64>>>;

/// What a client learned of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fate {
    /// It succeeded.
    Acknowledged,
    /// It was refused with an error that guarantees it had no effect.
    Failed,
    /// The client cannot know (timeout, lost connection, crash).
    Uncertain,
}

fn fate_of(code: Code) -> Fate {
    match code {
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::Unimplemented => Fate::Failed,
        _ => Fate::Uncertain,
    }
}

/// One append as a client saw it: ids `first..first + rows` into `table` on `node`.
#[derive(Debug, Clone)]
struct Append {
    node: u64,
    table: String,
    /// Which life of the table: 0 for the first, one more after each DROP and re-CREATE of its name.
    incarnation: u32,
    first: i64,
    rows: i64,
    invoked: Duration,
    completed: Duration,
    fate: Fate,
}

impl Append {
    fn ids(&self) -> std::ops::Range<i64> {
        self.first..self.first + self.rows
    }
}

/// One DELETE of every row of the acknowledged append that begins at id `first` from `table`, as a client saw it.
#[derive(Debug, Clone)]
struct Delete {
    node: u64,
    table: String,
    first: i64,
    invoked: Duration,
    completed: Duration,
    fate: Fate,
}

/// Whether a table must exist at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Its last CREATE was acknowledged, with no DROP since.
    Present,
    /// Its last DROP was acknowledged, with no CREATE since.
    Absent,
    /// A CREATE or DROP of it had an unknown outcome; its client gave the name up.
    Unknown,
}

/// One DROP TABLE as a client saw it.
#[derive(Debug, Clone)]
struct Dropped {
    node: u64,
    table: String,
    incarnation: u32,
    invoked: Duration,
    /// When it was acknowledged; `None` unless it was.
    acknowledged: Option<Duration>,
}

/// One `SELECT id` answer.
#[derive(Debug, Clone)]
struct Scan {
    node: u64,
    table: String,
    invoked: Duration,
    completed: Duration,
    ids: Vec<i64>,
}

/// Everything the clients saw, and when nodes lost their disks.
#[derive(Debug, Default)]
struct History {
    /// What the clients know of each table name now.
    tables: BTreeMap<String, Expect>,
    /// Every DROP TABLE.
    drops: Vec<Dropped>,
    appends: Vec<Append>,
    /// Every DELETE of a batch.
    deletes: Vec<Delete>,
    /// When a client last saw a tiering of each table (name, incarnation) move rows: batches acknowledged before it
    /// are likely in cold files, and a DELETE prefers them.
    tiered_at: BTreeMap<(String, u32), Duration>,
    scans: Vec<Scan>,
    /// When each node lost its disk (the rows it held are gone by design).
    disk_losses: BTreeMap<u64, Vec<Duration>>,
    /// Nodes in the cluster.
    nodes: u64,
    /// Shards of each table.
    shards: u32,
}

impl History {
    /// Whether rows of `table` written at `from` may have been lost by `to`: every copy of their shard could have
    /// been on a disk lost meanwhile.
    fn may_be_lost(&self, table: &str, from: Duration, to: Duration) -> bool {
        let losses = self.disk_losses.values().flatten().filter(|t| **t >= from && **t <= to).count();
        let copies_needed = if replicas_of(table, self.nodes) == 1 { 1 } else { 2 };
        losses >= copies_needed
    }

    /// The appends of `table`, through any node, whose rows a scan on `node` running from `invoked` to `completed` may
    /// see: not refused and begun before the scan ended. An append whose outcome the client never learned may take
    /// effect at any time after it was sent, and it names its table: once the table was dropped and created again,
    /// it may land in the new table (node seed 8600058: an append held up by a cut link took effect after a DROP and
    /// CREATE of its table's name), so its incarnation's drop does not rule it out.
    fn candidates<'a>(
        &'a self,
        node: u64,
        table: &'a str,
        invoked: Duration,
        completed: Duration,
        settled: bool,
    ) -> impl Iterator<Item = &'a Append> + 'a {
        self.appends.iter().filter(move |a| {
            a.table == table
                && a.fate != Fate::Failed
                && a.invoked <= completed
                && (a.fate == Fate::Uncertain || !self.dropped_for(node, table, a.incarnation, invoked, settled))
        })
    }

    /// Whether a scan on `node` begun at `invoked` must no longer see life `incarnation` of `table`: its DROP was
    /// acknowledged before, by this node (a node applies the DDL it acknowledges before answering), or by any node
    /// once the cluster has `settled` (every node has applied it).
    fn dropped_for(&self, node: u64, table: &str, incarnation: u32, invoked: Duration, settled: bool) -> bool {
        self.drops.iter().any(|d| {
            d.table == table
                && d.incarnation == incarnation
                && d.acknowledged.is_some_and(|at| at < invoked)
                && (settled || d.node == node)
        })
    }

    /// Whether a DROP of life `incarnation` of `table` began before `at` (its rows may be gone since).
    fn drop_began(&self, table: &str, incarnation: u32, at: Duration) -> bool {
        self.drops.iter().any(|d| d.table == table && d.incarnation == incarnation && d.invoked < at)
    }

    /// Checks one answer of `SELECT id FROM table` on `node`, taken between `invoked` and `completed`; `settled`
    /// when no fault runs and every node has applied every catalog change.
    fn check_scan(&self, scan: &Scan, settled: bool) -> Result<(), String> {
        let Scan { node, table, invoked, completed, ids } = scan;
        let mut seen = BTreeSet::new();
        if let Some(dup) = ids.iter().find(|id| !seen.insert(**id)) {
            return Err(format!("row {dup} appears twice in {table} on node {node} (query at {invoked:?})"));
        }
        let candidates: Vec<&Append> = self.candidates(*node, table, *invoked, *completed, settled).collect();
        for append in &candidates {
            let present = append.ids().filter(|id| seen.contains(id)).count() as i64;
            // A batch over several shards loses the part of a shard whose only copy's disk was lost.
            let torn_by_loss = self.shards > 1 && self.may_be_lost(table, append.invoked, *completed);
            if present != 0 && present != append.rows && !torn_by_loss {
                return Err(format!(
                    "a torn batch: {present} of the {} rows appended to {table} on node {} at {:?} are visible on \
                     node {node} (query at {invoked:?})",
                    append.rows, append.node, append.invoked
                ));
            }
            // DELETEs of the batch that may have taken effect; one acknowledged before the query makes it gone.
            let deletes: Vec<&Delete> = self
                .deletes
                .iter()
                .filter(|d| d.table == *table && d.first == append.first && d.fate != Fate::Failed)
                .collect();
            // (Every copy that had the DELETE may have been lost with disks since, the copy left leading without it.)
            if let Some(d) = deletes.iter().find(|d| d.fate == Fate::Acknowledged && d.completed < *invoked)
                && present != 0
                && !self.may_be_lost(table, d.invoked, *completed)
            {
                return Err(format!(
                    "deleted rows seen: the batch {:?} of {table} was deleted through node {} (acknowledged at {:?}), \
                     but {present} of its rows are visible on node {node} (query at {invoked:?})",
                    append.ids(),
                    d.node,
                    d.completed
                ));
            }
            let must = append.fate == Fate::Acknowledged
                && append.completed < *invoked
                && !self.may_be_lost(table, append.invoked, *completed)
                && !self.drop_began(table, append.incarnation, *completed)
                && !deletes.iter().any(|d| d.invoked <= *completed);
            if must && present == 0 {
                return Err(format!(
                    "lost rows: the batch {:?} appended to {table} on node {} was acknowledged at {:?}, but a query \
                     on node {node} at {invoked:?} did not see it",
                    append.ids(),
                    append.node,
                    append.completed
                ));
            }
        }
        let known: BTreeSet<i64> = candidates.iter().flat_map(|a| a.ids()).collect();
        if let Some(stranger) = seen.iter().find(|id| !known.contains(id)) {
            let origin = self.appends.iter().find(|a| a.ids().contains(stranger));
            let dropped: Vec<&Dropped> = self.drops.iter().filter(|d| d.table == *table).collect();
            return Err(format!(
                "row {stranger} is in {table} on node {node} (query at {invoked:?}) but no append that may have \
                 taken effect there wrote it (its append: {origin:?}; drops of the table: {dropped:?})"
            ));
        }
        Ok(())
    }
}

/// An operator draining a random node now and then, and stopping the drain a few seconds later, until `deadline`;
/// returns how many drains began. Each moves the node's shard copies to others (where a node holds none), under the
/// faults. Every drain is stopped before it returns, so the cluster serves on every node afterwards.
async fn drain_now_and_then(nodes: u64, deadline: Instant) -> usize {
    let client = ClusterClient::new(Duration::from_millis(200), Duration::from_secs(3));
    let mut begun = 0;
    while Instant::now() < deadline {
        sleep(Duration::from_millis(thread_rng().gen_range(2_000..6_000))).await;
        let node = thread_rng().gen_range(1..=nodes);
        let via = addr_of(thread_rng().gen_range(1..=nodes)).to_string();
        if client.drain_node(&via, node, false).await.is_ok() {
            begun += 1;
        }
        sleep(Duration::from_millis(thread_rng().gen_range(1_000..6_000))).await;
        // Stopped whatever happened to the request that began it (it may have taken effect unanswered).
        loop {
            let via = addr_of(thread_rng().gen_range(1..=nodes)).to_string();
            if client.drain_node(&via, node, true).await.is_ok() {
                break;
            }
            sleep(Duration::from_millis(500)).await;
        }
    }
    begun
}

/// How many copies table `table` keeps in a cluster of `nodes`: one for half the names, three (at most `nodes`) for
/// the others, the same for every life of a name.
fn replicas_of(table: &str, nodes: u64) -> u64 {
    let mut hasher = DefaultHasher::new();
    table.hash(&mut hasher);
    if hasher.finish().is_multiple_of(2) { 1 } else { nodes.min(3) }
}

/// The CREATE TABLE of a workload table: `shards` shards, [`replicas_of`] copies.
fn create_sql(table: &str, nodes: u64, shards: u32, if_not_exists: bool) -> String {
    format!(
        "CREATE TABLE {}{table} (id BIGINT NOT NULL, client BIGINT NOT NULL) WITH (shard_key = 'id', shards = \
         {shards}, replicas = {})",
        if if_not_exists { "IF NOT EXISTS " } else { "" },
        replicas_of(table, nodes)
    )
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("client", DataType::Int64, false)]))
}

fn encode(first: i64, rows: i64, client: i64) -> Vec<u8> {
    let ids = Int64Array::from_iter_values(first..first + rows);
    let clients = Int64Array::from_iter_values(std::iter::repeat_n(client, rows as usize));
    let batch =
        RecordBatch::try_new(schema(), vec![Arc::new(ids), Arc::new(clients)]).expect("the batch matches its schema");
    let mut writer = StreamWriter::try_new(Vec::new(), &schema()).expect("IPC writer");
    writer.write(&batch).expect("IPC write");
    writer.finish().expect("IPC finish");
    writer.into_inner().expect("IPC bytes")
}

fn decode(bytes: &[u8]) -> Result<Vec<RecordBatch>, String> {
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(|e| e.to_string())?;
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
}

/// The Int64 values of column `column` of every batch, in order (nulls as `None`).
fn int64s(batches: &[RecordBatch], column: usize) -> Vec<Option<i64>> {
    let mut out = Vec::new();
    for batch in batches {
        let array = batch.column(column).as_primitive::<Int64Type>();
        out.extend((0..array.len()).map(|i| array.is_valid(i).then(|| array.value(i))));
    }
    out
}

/// Connects to `node`'s data service and runs `call` with a deadline; `Err` carries the status code (Unavailable
/// when the node cannot be reached, DeadlineExceeded past the deadline).
async fn data_call<T, F, Fut>(node: u64, deadline: Duration, call: F) -> Result<T, Code>
where
    F: FnOnce(DataServiceClient<madsim_tonic::transport::Channel>) -> Fut,
    Fut: Future<Output = Result<T, Code>>,
{
    let attempt = async {
        let client =
            DataServiceClient::connect(format!("http://{}", addr_of(node))).await.map_err(|_| Code::Unavailable)?;
        call(client).await
    };
    madsim::time::timeout(deadline, attempt).await.unwrap_or(Err(Code::DeadlineExceeded))
}

/// Runs one statement on `node`; returns its rows.
async fn execute(node: u64, sql: String) -> Result<Vec<RecordBatch>, Code> {
    data_call(node, Duration::from_secs(5), |mut client| async move {
        let reply = client.execute(ExecuteRequest { sql }).await.map_err(|s| s.code())?.into_inner();
        if reply.arrow_ipc.is_empty() { Ok(Vec::new()) } else { decode(&reply.arrow_ipc).map_err(|_| Code::DataLoss) }
    })
    .await
}

/// Appends Arrow IPC rows to `table` on `node`; returns the rows appended.
async fn append(node: u64, table: String, arrow_ipc: Vec<u8>) -> Result<u64, Code> {
    data_call(node, Duration::from_secs(5), |mut client| async move {
        Ok(client.append(AppendRequest { table, arrow_ipc }).await.map_err(|s| s.code())?.into_inner().rows)
    })
    .await
}

/// Tiers `table` on `node`; returns the rows moved.
async fn tier(node: u64, table: String) -> Result<u64, Code> {
    data_call(node, Duration::from_secs(10), |mut client| async move {
        Ok(client.tier(TierRequest { table }).await.map_err(|s| s.code())?.into_inner().rows)
    })
    .await
}

struct World {
    hosts: Hosts,
    disks: Disks,
    live: Live,
    history: Arc<Mutex<History>>,
    /// The host the clients (and operators) run on.
    clients: NodeHandle,
    /// When each node was last killed.
    killed_at: BTreeMap<u64, Duration>,
    /// Whether the faults fill disks.
    fills_disks: bool,
}

impl faults::Cluster for World {
    fn hosts(&mut self) -> &mut Hosts {
        &mut self.hosts
    }

    fn leader(&self) -> Option<u64> {
        live_engines(&self.live)
            .iter()
            .map(|e| e.meta().metrics().borrow().clone())
            .find(|m| m.state == ServerState::Leader)
            .map(|m| m.id)
    }

    fn term(&self, id: u64) -> Option<u64> {
        self.live.lock().expect("live map").get(&id).map(|e| e.meta().metrics().borrow().current_term)
    }

    /// Kills node `id`; its disk loses the writes it had not synced when the seed says so.
    fn kill(&mut self, id: u64) -> usize {
        self.live.lock().expect("live map").remove(&id);
        self.hosts.handle.kill(self.hosts.nodes[&id].id());
        self.killed_at.insert(id, self.hosts.started.elapsed());
        self.disks.lock().expect("disks")[&id].crash(thread_rng().gen_bool(0.5))
    }

    /// Splits last up to 8 s: the clients reach both sides, and a node cut off for 2 s is marked down and its shards
    /// fail over, so the cut-off side is asked for rows acknowledged by the others since (a node that served them
    /// from the shard configuration it last applied would miss them).
    fn split_ms(&self) -> Option<std::ops::Range<u64>> {
        Some(500..8_000)
    }

    /// Half the isolations cut a node off from its peers only: its clients still send it statements, which it must
    /// refuse (it cannot confirm the shard configuration) rather than answer from the configuration it last applied.
    fn isolate_from_peers_only(&self) -> bool {
        thread_rng().gen_bool(0.5)
    }

    async fn remove(&mut self, id: u64) -> bool {
        let helper =
            (1..=self.hosts.nodes.len() as u64).find(|n| *n != id && self.live.lock().expect("live").contains_key(n));
        let Some(h) = helper else { return false };
        let remove = self.clients.spawn(async move {
            let client = ClusterClient::new(Duration::from_millis(200), Duration::from_secs(3));
            client.remove_node(&addr_of(h).to_string(), id).await
        });
        matches!(remove.await, Ok(Ok(())))
    }

    fn fills_disks(&self) -> bool {
        self.fills_disks
    }

    fn set_disk_full(&mut self, id: u64, full: bool) {
        self.disks.lock().expect("disks")[&id].set_full(full);
    }

    fn replace_disk(&mut self, id: u64) {
        self.disks.lock().expect("disks").insert(id, SimHotDisk::new());
        let lost_at = self.killed_at.get(&id).copied().unwrap_or_else(|| self.hosts.started.elapsed());
        self.history.lock().expect("history").disk_losses.entry(id).or_default().push(lost_at);
    }
}

#[allow(clippy::too_many_lines)]
async fn simulate(options: NodeSimOptions) -> Result<Outcome, String> {
    let handle = Handle::current();
    let buggify = thread_rng().gen_bool(0.5);
    let live: Live = Arc::default();
    let failures: Failures = Arc::default();
    let bootstrapped = Arc::new(AtomicBool::new(false));
    // The clients run on a host of their own and reach the nodes over the simulated network.
    let client_host = handle.create_node().name("clients").ip(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1))).build();
    let mut world = World {
        hosts: Hosts::new(handle.clone()),
        disks: Disks::default(),
        live: live.clone(),
        history: Arc::new(Mutex::new(History { nodes: options.nodes, shards: options.shards, ..History::default() })),
        clients: client_host.clone(),
        killed_at: BTreeMap::new(),
        fills_disks: options.disk_full,
    };
    let stopped = Stopped::default();
    let voters = node_config(1, options.nodes, false).cluster.voters;
    // The cold tier's bucket: in memory, shared by the nodes, failing and stalling while the faults run.
    let bucket = FaultyStore::new(Arc::new(object_store::memory::InMemory::new()), FaultRates::default());
    for id in 1..=options.nodes {
        world.disks.lock().expect("disks").insert(id, SimHotDisk::new());
        let (disks, live, bootstrapped, failures, bucket) =
            (world.disks.clone(), live.clone(), bootstrapped.clone(), failures.clone(), bucket.clone());
        let stopped = stopped.clone();
        let (nodes, bug, moves) = (options.nodes, options.bug, options.moves);
        let node = handle
            .create_node()
            .name(format!("node-{id}"))
            .ip(ip_of(id))
            .init(move || {
                run_node(
                    id,
                    nodes,
                    (bug, moves),
                    disks.clone(),
                    live.clone(),
                    bootstrapped.clone(),
                    (failures.clone(), stopped.clone()),
                    bucket.clone(),
                )
            })
            .build();
        world.hosts.nodes.insert(id, node);
        sleep(Duration::from_millis(1_500)).await;
    }
    let formed = wait_until(Duration::from_secs(60), || {
        let engines = live_engines(&live);
        engines.len() == options.nodes as usize
            && engines.iter().any(|e| {
                let m = e.meta().metrics().borrow().clone();
                m.state == ServerState::Leader && m.membership_config.membership().voter_ids().count() == voters
            })
    })
    .await;
    if formed.is_err() {
        let failures = failures.lock().expect("failures").clone();
        return Err(format!("the cluster did not form within 60 s; {failures:?}"));
    }
    world.hosts.note(format!("formed: {} nodes, fault points {}", options.nodes, if buggify { "on" } else { "off" }));
    quiver_meta::buggify::set_fault_points(buggify);
    bucket.set_faults(true);

    let leaders: Arc<Mutex<BTreeMap<u64, BTreeSet<u64>>>> = Arc::default();
    let shard_map: Arc<Mutex<(ShardMapChecker, Option<String>)>> = Arc::default();
    let sampler = {
        let (live, leaders, shard_map) = (live.clone(), leaders.clone(), shard_map.clone());
        madsim::task::spawn(async move {
            // Each engine seen, as one observer of the shard map: a restarted node is a new engine and replays its
            // metadata from the start (a freed engine's address may come back, hence the weak references).
            let mut incarnations: Vec<std::sync::Weak<Engine>> = Vec::new();
            for round in 0u64.. {
                for engine in live_engines(&live) {
                    let m = engine.meta().metrics().borrow().clone();
                    if m.state == ServerState::Leader {
                        leaders.lock().expect("leaders").entry(m.current_term).or_default().insert(m.id);
                    }
                    // The shard map every 100 ms on each replica; an engine is one incarnation of its node.
                    if round % 10 == 0 {
                        let known =
                            incarnations.iter().position(|w| w.upgrade().is_some_and(|e| Arc::ptr_eq(&e, &engine)));
                        let observer = known.unwrap_or_else(|| {
                            incarnations.push(Arc::downgrade(&engine));
                            incarnations.len() - 1
                        });
                        let mut checked = shard_map.lock().expect("shard map");
                        if checked.1.is_none()
                            && let Err(e) = engine.meta().read_local(|s| checked.0.observe(observer, s))
                        {
                            checked.1 = Some(format!("node {}: {e}", engine.node_id()));
                        }
                    }
                }
                sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // Two tables every client appends to, scans and tiers (never dropped): inserts, scans and tierings of one table
    // then overlap on a node, the interleavings a lone client cannot produce.
    let shared: Vec<String> = vec!["shared_0".into(), "shared_1".into()];
    for table in &shared {
        let create = create_sql(table, options.nodes, options.shards, false);
        let created = client_host.spawn(async move { execute(1, create).await });
        if !matches!(created.await, Ok(Ok(_))) {
            return Err(format!("the shared table {table} could not be created before the faults"));
        }
        world.history.lock().expect("history").tables.insert(table.clone(), Expect::Present);
    }
    // The replicated shard written directly through its primary (see `replicated`).
    let created = client_host.spawn(async move { execute(1, replicated::create_sql()).await });
    if !matches!(created.await, Ok(Ok(_))) {
        return Err(format!("the table {} could not be created before the faults", replicated::TABLE));
    }
    // The ledger, changed by UPDATEs spanning shards (see `ledger`).
    if options.ledger {
        let created = client_host.spawn(async move { execute(1, ledger::create_sql()).await });
        if !matches!(created.await, Ok(Ok(_))) {
            return Err(format!("the table {} could not be created before the faults", ledger::TABLE));
        }
        client_host.spawn(ledger::open()).await.map_err(|e| format!("the ledger's opening: {e}"))??;
    }
    let deadline = Instant::now() + Duration::from_secs(options.fault_secs);
    let ledger_runs = options.ledger.then(|| {
        let client = client_host.spawn(ledger::transfers(options.nodes, world.hosts.started, deadline));
        let auditor = client_host.spawn(ledger::auditor(options.nodes, world.hosts.started, deadline));
        (client, auditor)
    });
    let replicated_writer = client_host.spawn(replicated::writer(live.clone(), world.hosts.started, deadline));
    let replicated_readers: Vec<_> = (1..=options.nodes)
        .map(|node| client_host.spawn(replicated::reader(node, world.hosts.started, deadline)))
        .collect();
    let tiered: Arc<Mutex<(usize, u64)>> = Arc::default();
    let operator = client_host.spawn(drain_now_and_then(options.nodes, deadline));
    let mut clients = Vec::new();
    for client in 0..options.clients {
        let history = world.history.clone();
        let started = world.hosts.started;
        let (nodes, shards, deletes) = (options.nodes, options.shards, options.deletes);
        let tiered = tiered.clone();
        let shared = shared.clone();
        clients.push(client_host.spawn(async move {
            // A table to append to, scan or tier: one of this client's, or a shared one.
            let pick = |mine: &[(String, u32)]| {
                if thread_rng().gen_bool(0.4) {
                    (shared[thread_rng().gen_range(0..shared.len())].clone(), 0)
                } else {
                    mine[thread_rng().gen_range(0..mine.len())].clone()
                }
            };
            // This client's tables, with the life of each.
            let mut mine: Vec<(String, u32)> = Vec::new();
            let mut next_id = (client as i64 + 1) * 1_000_000_000;
            let mut made = 0;
            let create = |table: String| create_sql(&table, nodes, shards, false);
            while Instant::now() < deadline {
                let node = thread_rng().gen_range(1..=nodes);
                let invoked = started.elapsed();
                let dice = thread_rng().gen_range(0..100);
                if mine.is_empty() || dice < 8 {
                    let table = format!("t{client}_{made}");
                    made += 1;
                    let expect = match execute(node, create(table.clone())).await {
                        Ok(_) => {
                            mine.push((table.clone(), 0));
                            Expect::Present
                        }
                        Err(code) if fate_of(code) == Fate::Failed => panic!("CREATE TABLE {table} refused: {code:?}"),
                        Err(_) => Expect::Unknown,
                    };
                    history.lock().expect("history").tables.insert(table, expect);
                } else if dice < 12 {
                    // DROP one of this client's tables, then CREATE it again on another random node: the new table
                    // must start empty everywhere. After an unknown outcome the client gives the name up.
                    let (table, incarnation) = mine.swap_remove(thread_rng().gen_range(0..mine.len()));
                    let dropped = execute(node, format!("DROP TABLE {table}")).await;
                    let acknowledged = dropped.as_ref().ok().map(|_| started.elapsed());
                    {
                        let mut history = history.lock().expect("history");
                        let expect = if acknowledged.is_some() { Expect::Absent } else { Expect::Unknown };
                        history.drops.push(Dropped { node, table: table.clone(), incarnation, invoked, acknowledged });
                        history.tables.insert(table.clone(), expect);
                    }
                    if acknowledged.is_some() {
                        let again = thread_rng().gen_range(1..=nodes);
                        let expect = match execute(again, create(table.clone())).await {
                            Ok(_) => {
                                mine.push((table.clone(), incarnation + 1));
                                Expect::Present
                            }
                            Err(_) => Expect::Unknown,
                        };
                        history.lock().expect("history").tables.insert(table, expect);
                    }
                } else if dice < 22 {
                    // Move the table's hot rows on that node to the cold tier: no row may be lost or counted twice,
                    // whatever the bucket, the network or a crash does meanwhile.
                    let (table, incarnation) = pick(&mine);
                    // With DELETEs, every node is asked (each tiers the shards it leads), so that DELETEs find rows
                    // in the cold files of every shard.
                    let mut asked = vec![node];
                    if deletes {
                        asked.extend((1..=nodes).filter(|n| *n != node));
                    }
                    for node in asked {
                        if let Ok(rows) = tier(node, table.clone()).await {
                            {
                                let mut tiered = tiered.lock().expect("tiered");
                                tiered.0 += 1;
                                tiered.1 += rows;
                            }
                            if rows > 0 {
                                let at = started.elapsed();
                                history.lock().expect("history").tiered_at.insert((table.clone(), incarnation), at);
                            }
                        }
                    }
                } else if deletes && dice < 28 {
                    // DELETE an acknowledged batch of the table, whole: gone from every later answer on every node,
                    // whatever its shard's copies, tiers and primaries went through.
                    // Mostly a table a tiering moved rows of (this client's, or a shared one).
                    let (table, incarnation) = {
                        let history = history.lock().expect("history");
                        let tiered: Vec<&(String, u32)> = history
                            .tiered_at
                            .keys()
                            .filter(|(t, i)| {
                                mine.iter().any(|(m, j)| m == t && j == i) || (*i == 0 && shared.contains(t))
                            })
                            .collect();
                        if !tiered.is_empty() && thread_rng().gen_bool(0.75) {
                            tiered[thread_rng().gen_range(0..tiered.len())].clone()
                        } else {
                            pick(&mine)
                        }
                    };
                    let target = {
                        let history = history.lock().expect("history");
                        let done: Vec<&Append> = history
                            .appends
                            .iter()
                            .filter(|a| a.table == table && a.incarnation == incarnation)
                            .filter(|a| a.fate == Fate::Acknowledged)
                            .collect();
                        // Mostly a batch acknowledged before a tiering of the table, so that DELETEs reach cold
                        // files (spanning shards, with `--shards`) as often as hot chunks.
                        let tiered_at = history.tiered_at.get(&(table.clone(), incarnation)).copied();
                        let cold: Vec<&Append> =
                            done.iter().copied().filter(|a| tiered_at.is_some_and(|t| a.completed < t)).collect();
                        let from = if !cold.is_empty() && thread_rng().gen_bool(0.75) { cold } else { done };
                        (!from.is_empty()).then(|| {
                            let a = from[thread_rng().gen_range(0..from.len())];
                            (a.first, a.rows)
                        })
                    };
                    if let Some((first, rows)) = target {
                        let sql = format!("DELETE FROM {table} WHERE id BETWEEN {first} AND {}", first + rows - 1);
                        let fate = match execute(node, sql).await {
                            Ok(_) => Fate::Acknowledged,
                            Err(code) => fate_of(code),
                        };
                        let completed = started.elapsed();
                        let delete = Delete { node, table, first, invoked, completed, fate };
                        history.lock().expect("history").deletes.push(delete);
                    }
                } else if dice < 70 {
                    let (table, incarnation) = pick(&mine);
                    let rows = thread_rng().gen_range(1..40);
                    let first = next_id;
                    next_id += rows;
                    let result = append(node, table.clone(), encode(first, rows, client as i64)).await;
                    let fate = match result {
                        Ok(n) if n == rows as u64 => Fate::Acknowledged,
                        Ok(n) => panic!("an append of {rows} rows reported {n}"),
                        Err(code) => fate_of(code),
                    };
                    let completed = started.elapsed();
                    history.lock().expect("history").appends.push(Append {
                        node,
                        table,
                        incarnation,
                        first,
                        rows,
                        invoked,
                        completed,
                        fate,
                    });
                } else {
                    let (table, _) = pick(&mine);
                    if let Ok(batches) = execute(node, format!("SELECT id FROM {table}")).await {
                        let ids = int64s(&batches, 0).into_iter().flatten().collect();
                        let completed = started.elapsed();
                        history.lock().expect("history").scans.push(Scan { node, table, invoked, completed, ids });
                    }
                }
                sleep(Duration::from_millis(thread_rng().gen_range(0..40))).await;
            }
        }));
    }

    let self_stops = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Only where disks fill, so that the other runs' schedules are as they were.
    let supervisor = options.disk_full.then(|| {
        madsim::task::spawn(supervise(
            handle.clone(),
            world.hosts.nodes.iter().map(|(id, node)| (*id, node.id())).collect(),
            world.disks.clone(),
            stopped.clone(),
            self_stops.clone(),
        ))
    });
    let faults = faults::inject(&mut world, deadline).await;
    for client in clients {
        let _ = client.await;
    }
    let drains = operator.await.unwrap_or_default();
    world.hosts.note(format!("{drains} drains begun"));
    quiver_meta::buggify::set_fault_points(false);
    bucket.set_faults(false);
    world.hosts.note("faults over".to_string());

    // Liveness: every node serves DDL and appends again within the bound.
    let healed = Instant::now();
    let recovered_by = healed + Duration::from_secs(options.liveness_secs);
    let (nodes, shards) = (options.nodes, options.shards);
    for node in 1..=options.nodes {
        let table = format!("probe_{node}");
        loop {
            let probe = client_host.spawn({
                let table = table.clone();
                async move {
                    let created = execute(node, create_sql(&table, nodes, shards, true)).await;
                    match created {
                        Ok(_) => append(node, table, encode(-1, 1, -1)).await.is_ok(),
                        Err(_) => false,
                    }
                }
            });
            if matches!(probe.await, Ok(true)) {
                break;
            }
            if Instant::now() >= recovered_by {
                let failures = failures.lock().expect("failures").clone();
                return Err(format!(
                    "node {node} did not serve within {} s after the faults stopped; {failures:?}",
                    options.liveness_secs
                ));
            }
            sleep(Duration::from_millis(200)).await;
        }
    }
    world.hosts.note(format!("every node serves again after {} ms", healed.elapsed().as_millis()));
    // The replicated shard: back in sync, every acknowledged write there once, every copy the primary's.
    let writes = replicated_writer.await.map_err(|e| format!("the replicated shard's writer: {e}"))?;
    let mut reads = Vec::new();
    for reader in replicated_readers {
        reads.extend(reader.await.map_err(|e| format!("a reader of the replicated shard: {e}"))?);
    }
    let read_summary = replicated::check_reads(&writes, &reads)?;
    let summary = replicated::check(&live, &client_host, &writes, Duration::from_secs(options.liveness_secs)).await?;
    world.hosts.note(format!("{summary}; {read_summary} through the nodes"));
    if let Some((client, auditor)) = ledger_runs {
        let transfers = client.await.map_err(|e| format!("the ledger's client: {e}"))?;
        let audits = auditor.await.map_err(|e| format!("the ledger's auditor: {e}"))?;
        let bound = Duration::from_secs(options.liveness_secs);
        let second_loss = {
            let history = world.history.lock().expect("history");
            let mut losses: Vec<Duration> = history.disk_losses.values().flatten().copied().collect();
            losses.sort_unstable();
            losses.get(1).copied()
        };
        let summary = ledger::check(&client_host, options.nodes, &transfers, &audits, second_loss, bound).await?;
        world.hosts.note(summary);
    }

    // The metadata replicas converge.
    let converged = wait_until(Duration::from_secs(30), || {
        let engines = live_engines(&live);
        let applied: BTreeSet<_> = engines.iter().map(|e| e.meta().metrics().borrow().last_applied).collect();
        engines.len() == options.nodes as usize && applied.len() == 1
    })
    .await;
    sampler.abort();
    let engines = live_engines(&live);
    if converged.is_err() {
        let applied: Vec<_> = engines.iter().map(|e| (e.node_id(), e.meta().metrics().borrow().last_applied)).collect();
        return Err(format!("metadata replicas did not converge: applied {applied:?}"));
    }
    let states: Vec<_> = engines.iter().map(|e| e.meta().read_local(|s| s.clone())).collect();
    if let Some(i) = states.iter().position(|s| *s != states[0]) {
        return Err(format!(
            "node {} holds another metadata state than node {}",
            engines[i].node_id(),
            engines[0].node_id()
        ));
    }
    for (term, ids) in leaders.lock().expect("leaders").iter() {
        if ids.len() > 1 {
            return Err(format!("term {term} had leaders {ids:?}"));
        }
    }
    // No metadata replica cut off from the others campaigned.
    if let Some(violation) = world.hosts.violations.first() {
        return Err(violation.clone());
    }
    // The shard map held its invariants on every replica all along, and holds them in the converged state.
    let moves;
    {
        let mut checked = shard_map.lock().expect("shard map");
        if let Some(violation) = checked.1.take() {
            return Err(format!("shard map: {violation}"));
        }
        shard_map::check_state(&states[0]).map_err(|e| format!("shard map after the faults: {e}"))?;
        world.hosts.note(format!("shard map checked in {} replica states", checked.0.observed));
        moves = checked.0.moves.len();
        world.hosts.note(format!("{moves} shard copies seen moving for balance"));
    }

    // Every answer during the faults was consistent with the model.
    let history = std::mem::take(&mut *world.history.lock().expect("history"));
    for scan in &history.scans {
        history.check_scan(scan, false)?;
    }
    // Every acknowledged table exists everywhere; nothing unproposed does.
    let catalog: BTreeSet<String> = states[0].catalog().tables().map(|t| t.name.clone()).collect();
    for (table, expect) in &history.tables {
        match expect {
            Expect::Present if !catalog.contains(table) => {
                return Err(format!("table {table}, acknowledged, is missing"));
            }
            Expect::Absent if catalog.contains(table) => {
                return Err(format!("table {table} is there though its DROP was acknowledged"));
            }
            _ => {}
        }
    }
    if let Some(stranger) = catalog.iter().find(|t| {
        !t.starts_with("probe_")
            && ![replicated::TABLE, ledger::TABLE].contains(&t.as_str())
            && !history.tables.contains_key(*t)
    }) {
        return Err(format!("table {stranger} was never created"));
    }

    // After the faults: on every node, every acknowledged row exactly once, uncertain batches whole or absent, and
    // DataFusion's aggregates equal the model's.
    let mut final_rows = BTreeMap::new();
    let tables: Vec<String> =
        history.tables.iter().filter(|(_, e)| **e == Expect::Present).map(|(t, _)| t.clone()).collect();
    for node in 1..=options.nodes {
        for table in &tables {
            let invoked = world.hosts.started.elapsed();
            let query = client_host.spawn({
                let table = table.clone();
                async move {
                    // An append whose client gave up during the faults may still take effect now (its request
                    // outlives the client's wait, node seed 8900114): the rows and the aggregates are compared once
                    // two readings of the rows around the aggregates agree, so both describe one state.
                    let mut tries = 0;
                    loop {
                        let ids = execute(node, format!("SELECT id FROM {table}")).await;
                        let sums =
                            execute(node, format!("SELECT count(*), sum(id), min(id), max(id) FROM {table}")).await;
                        let again = execute(node, format!("SELECT id FROM {table}")).await;
                        let settled = match (&ids, &again) {
                            (Ok(a), Ok(b)) => int64s(a, 0) == int64s(b, 0),
                            _ => true,
                        };
                        tries += 1;
                        if settled || tries == 10 {
                            break (ids, sums);
                        }
                        sleep(Duration::from_millis(500)).await;
                    }
                }
            });
            let (ids, sums) = match query.await.map_err(|e| format!("the final query task failed: {e}"))? {
                (Ok(ids), Ok(sums)) => (ids, sums),
                (ids, sums) => {
                    let codes = (ids.err(), sums.err());
                    return Err(format!("the final query of {table} on node {node} failed: {codes:?}"));
                }
            };
            let ids: Vec<i64> = int64s(&ids, 0).into_iter().flatten().collect();
            let scan = Scan { node, table: table.clone(), invoked, completed: world.hosts.started.elapsed(), ids };
            history.check_scan(&scan, true)?;
            let model: Vec<i64> = {
                let mut ids = scan.ids.clone();
                ids.sort_unstable();
                ids
            };
            let expected = (
                Some(model.len() as i64),
                (!model.is_empty()).then(|| model.iter().sum::<i64>()),
                model.first().copied(),
                model.last().copied(),
            );
            let got = (int64s(&sums, 0)[0], int64s(&sums, 1)[0], int64s(&sums, 2)[0], int64s(&sums, 3)[0]);
            if got != expected {
                return Err(format!(
                    "aggregates of {table} on node {node}: DataFusion says (count, sum, min, max) = {got:?}, the rows \
                     give {expected:?}"
                ));
            }
            final_rows.insert((node, table.clone()), model);
        }
    }

    // Every hot row on every node is in the shard that owns its slot: appends split by slot, DELETE, tiering and
    // restarts keep it so.
    for engine in live_engines(&live) {
        for table in &tables {
            let Some(hot) = engine.hot_table(table) else { continue };
            let misplaced =
                hot.misplaced_rows().map_err(|e| format!("reading {table} on node {}: {e}", engine.node_id()))?;
            if misplaced > 0 {
                return Err(format!(
                    "{misplaced} rows of {table} on node {} are in a shard that does not own them",
                    engine.node_id()
                ));
            }
        }
    }

    let acknowledged = history.appends.iter().filter(|a| a.fate == Fate::Acknowledged).count();
    let uncertain = history.appends.iter().filter(|a| a.fate == Fate::Uncertain).count();
    let rows: usize = final_rows.values().map(Vec::len).sum();
    let (tierings, rows_tiered) = *tiered.lock().expect("tiered");
    let compacted: u64 = live_engines(&live).iter().map(|e| e.metrics().cold_files_compacted.get()).sum();
    let deleted = history.deletes.iter().filter(|d| d.fate == Fate::Acknowledged).count();
    world.hosts.note(format!(
        "checked: {} appends ({acknowledged} acknowledged, {uncertain} uncertain), {} deletes ({deleted} \
         acknowledged), {} scans, {} tables, {rows} rows, {tierings} tierings ({rows_tiered} rows moved), {compacted} \
         files compacted by the nodes now running",
        history.appends.len(),
        history.deletes.len(),
        history.scans.len(),
        tables.len()
    ));
    let mut hasher = DefaultHasher::new();
    world.hosts.trace.hash(&mut hasher);
    final_rows.hash(&mut hasher);
    if let Some(supervisor) = supervisor {
        supervisor.abort();
    }
    let self_stops = self_stops.load(Ordering::SeqCst);
    Ok(Outcome {
        trace_hash: hasher.finish(),
        faults,
        acknowledged,
        uncertain,
        moves,
        self_stops,
        trace: world.hosts.trace,
    })
}
