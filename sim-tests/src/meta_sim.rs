//! The metadata Raft group under madsim: real `MetaNode`s talking real gRPC (madsim's simulated tonic) over a
//! simulated network, on a virtual clock, with every choice drawn from one seed.
//!
//! One run ([`run_seed`]):
//! 1. **Boot**: replica 1 bootstraps the cluster; replicas 2.. join through `ClusterService.Join` exactly as
//!    `quiver server --join` does, and the leader promotes them to voters.
//! 2. **Faults** (for [`SimOptions::fault_secs`] of virtual time) while a workload proposes `CREATE TABLE`s of
//!    unique names and reads the table list linearizably, on random replicas (followers forward to the leader):
//!    kill a replica (its disk losing unsynced writes or not, see [`SimDisk`]) and restart it later on the same
//!    disk, lose a replica with its disk (removed by an operator, replaced by an empty one that joins anew), isolate
//!    a replica, cut one direction of a replica's traffic, slow the network down, drop a share of all packets, make
//!    every clock jump forward; on half the seeds the fault points inside the meta crate fire too (`buggify!`).
//! 3. **Heal and liveness**: every fault is lifted; a proposal must then succeed within a bound.
//! 4. **Checks**: at most one leader per term (sampled all along); reads and writes of the catalog are
//!    linearizable (reads see every table acknowledged before they began, nothing proposed after they ended, and
//!    never less than an earlier read); every acknowledged table is in the final state; nothing that was never
//!    proposed is; all replicas converge to the same applied state. The workload also creates users with a grant
//!    and revokes and grants it again: every acknowledged change holds at the end, and no role appears that was
//!    never proposed.
//!
//! The run's trace (faults with their virtual times, the workload's outcomes, the final state) is hashed; the same
//! seed must give the same hash.
//!
//! What is simulated: the meta crate's code (Raft through openraft on the madsim runtime, log and snapshot storage
//! through the `MetaStore` seam on [`SimDisk`], the gRPC services and clients). What is not (yet): the node
//! (engine, RocksDB, Flight SQL and PostgreSQL frontends) and DataFusion.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::rand::{Rng, thread_rng};
use madsim::runtime::{Handle, NodeHandle, Runtime};
use madsim::time::{Instant, sleep};
use openraft::ServerState;
use quiver_meta::raft::{GrpcNetwork, NodeAddr};

use crate::disk::SimDisk;
use crate::faults::{self, Hosts, wait_until};
use crate::linearizability::{self, Operation, TableModel, TableOp, TableOutcome};
use quiver_meta::service::ClusterClient;
use quiver_meta::{
    CatalogCommand, ClusterError, ColumnDef, GrantObject, JoinRequest, MetaCommand, MetaConfig, MetaNode, NodeRole,
    NodeState, PrincipalCommand, Privilege, Rejection, TableKind,
};

/// What one run does.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Replicas in the group (all voters when 3 or 5).
    pub replicas: u64,
    /// Virtual seconds of faults and workload.
    pub fault_secs: u64,
    /// Concurrent proposers in the workload.
    pub clients: usize,
    /// Virtual seconds allowed for a proposal to succeed once every fault is healed.
    pub liveness_secs: u64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions { replicas: 3, fault_secs: 20, clients: 3, liveness_secs: 30 }
    }
}

/// What a passing run reports.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Hash of the run's trace: the same seed must give the same hash.
    pub trace_hash: u64,
    /// Faults injected.
    pub faults: usize,
    /// Proposals acknowledged.
    pub acknowledged: usize,
    /// Proposals whose outcome the client could not know (timeouts, crashes).
    pub uncertain: usize,
    /// Shard copies seen moving for balance (the node workload).
    pub moves: usize,
    /// Times a node stopped itself on a full disk and was started again (the node workload).
    pub self_stops: usize,
    /// The trace, one line per event.
    pub trace: Vec<String>,
}

/// Runs one seed to completion; `Err` carries the violated invariant.
///
/// # Errors
///
/// A message naming the invariant that failed, with the seed.
pub fn run_seed(seed: u64, options: &SimOptions) -> Result<Outcome, String> {
    let mut runtime = Runtime::with_seed_and_config(seed, madsim::Config::default());
    runtime.set_time_limit(Duration::from_secs(options.fault_secs + options.liveness_secs + 600));
    let options = options.clone();
    runtime.block_on(async move { simulate(options).await }).map_err(|e| format!("seed {seed}: {e}"))
}

/// Raft timing for the simulation: short, so that many elections and catch-ups happen per virtual minute.
fn sim_config(voters: usize) -> MetaConfig {
    MetaConfig {
        heartbeat_interval_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        request_timeout_ms: 2_000,
        connect_timeout_ms: 200,
        install_snapshot_timeout_ms: 1_000,
        snapshot_logs_since_last: 40,
        snapshot_logs_kept: 10,
        voters,
        // Failure detection runs under the faults: silent replicas are marked down and back to serving.
        node_heartbeat_interval_ms: 250,
        node_down_after_ms: 1_500,
        ..MetaConfig::default()
    }
}

fn ip_of(id: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8))
}

fn addr_of(id: u64) -> SocketAddr {
    SocketAddr::new(ip_of(id), 7000)
}

/// The replicas as the checkers see them: the handle of each running incarnation.
type Live = Arc<Mutex<BTreeMap<u64, MetaNode>>>;

/// Each replica's disk; a replaced replica gets a new, empty one.
type Disks = Arc<Mutex<BTreeMap<u64, SimDisk>>>;

fn live_nodes(live: &Live) -> Vec<MetaNode> {
    live.lock().expect("live map").values().cloned().collect()
}

/// One incarnation of replica `id`: starts it on its store, serves its gRPC endpoint, bootstraps or joins when the
/// store is fresh, then keeps promoting learners while voters are missing. Runs until the node is killed.
async fn run_replica(id: u64, replicas: u64, voters: usize, disks: Disks, live: Live) {
    let config = sim_config(voters);
    let store = disks.lock().expect("disks")[&id].clone();
    let fresh = store.is_empty();
    let addr = addr_of(id);
    let network = GrpcNetwork::new(id, &config);
    let node = match MetaNode::start(id, NodeAddr::new(addr.to_string()), Arc::new(store), config, network).await {
        Ok(node) => node,
        Err(e) => panic!("replica {id} failed to start: {e}"),
    };
    live.lock().expect("live map").insert(id, node.clone());
    let server = node.clone();
    madsim::task::spawn(async move {
        if let Err(e) = quiver_meta::service::serve(&server, addr, std::future::pending()).await {
            tracing::warn!(id, error = %e, "gRPC server stopped");
        }
    });
    // Only the first boot of replica 1 bootstraps; any other fresh start (a later replica, or a replaced one with an
    // empty disk) joins through the other replicas.
    let first_boot = id == 1 && live.lock().expect("live map").len() == 1;
    let client = ClusterClient::new(Duration::from_millis(200), Duration::from_secs(2));
    let join_request = |cluster_id: Option<String>| JoinRequest {
        node_id: id,
        grpc_addr: addr.to_string(),
        flight_addr: String::new(),
        pg_addr: String::new(),
        empty_store: fresh,
        cluster_id,
    };
    if fresh {
        if first_boot {
            node.bootstrap("sim").await.expect("bootstrap");
            let register = MetaCommand::RegisterNode {
                node_id: 1,
                grpc_addr: addr.to_string(),
                flight_addr: String::new(),
                pg_addr: String::new(),
                role: NodeRole::Voter,
            };
            node.propose(register).await.expect("register the first node");
            let serving = MetaCommand::UpdateNodeState { node_id: 1, state: NodeState::Serving };
            node.propose(serving).await.expect("the first node serves");
        } else {
            // As `quiver server --join` does with an empty store: no vote until the cluster has added it (anew, when
            // it is a member that lost its disk).
            node.hold_votes(true);
            let request = join_request(None);
            let mut seed = 0;
            loop {
                seed = seed % replicas + 1;
                if seed != id && client.join(&addr_of(seed).to_string(), &request).await.is_ok() {
                    break;
                }
                sleep(Duration::from_millis(200)).await;
            }
            node.hold_votes(false);
        }
    } else {
        // A restart on its disk confirms the membership through another replica, as `quiver server --join` does: a
        // replica that was removed meanwhile (a removal whose answer was lost) is admitted again as a learner
        // instead of campaigning, alone, in an old configuration.
        let request = join_request(Some("sim".into()));
        let seeds = (1..=replicas).filter(|s| *s != id).map(|s| addr_of(s).to_string()).collect();
        if let Err(e) = client.confirm_membership(seeds, request, Duration::from_millis(500)).await {
            panic!("replica {id} was refused by its cluster: {e}");
        }
    }
    loop {
        sleep(Duration::from_millis(200)).await;
        let _ = node.keep_voters().await;
    }
}

fn create_table(name: &str) -> MetaCommand {
    MetaCommand::Catalog {
        command: CatalogCommand::CreateTable {
            name: name.to_string(),
            columns: vec![ColumnDef { name: "id".into(), data_type: arrow_schema::DataType::Int64, nullable: false }],
            primary_key: vec![],
            kind: TableKind::Native,
            options: BTreeMap::new(),
            sharding: Default::default(),
            if_not_exists: false,
        },
    }
}

/// Creates the role `name` (a user without a password) holding SELECT on every table.
fn create_role_with_select(name: &str) -> MetaCommand {
    let create = PrincipalCommand::CreateRole {
        name: name.to_string(),
        login: true,
        superuser: false,
        verifier: None,
        if_not_exists: false,
    };
    let MetaCommand::Principals { command: grant } = select_on_all_tables(name, true) else { unreachable!() };
    MetaCommand::Principals { command: PrincipalCommand::All(vec![create, grant]) }
}

/// Grants (or revokes) SELECT on every table to the role `name`.
fn select_on_all_tables(name: &str, grant: bool) -> MetaCommand {
    let (privileges, object, grantee) = (BTreeSet::from([Privilege::Select]), GrantObject::AllTables, name.to_string());
    MetaCommand::Principals {
        command: if grant {
            PrincipalCommand::Grant { privileges, object, grantee }
        } else {
            PrincipalCommand::Revoke { privileges, object, grantee }
        },
    }
}

/// The roles the workload proposed, and what each must hold at the end: `Some(granted)` after an acknowledged last
/// change, `None` when its last change's outcome is unknown (not checked).
#[derive(Debug, Default)]
struct RoleLedger {
    proposed: BTreeSet<String>,
    expected: BTreeMap<String, Option<bool>>,
}

impl RoleLedger {
    /// Checks the final state's principals against the acknowledged changes.
    fn check(&self, state: &quiver_meta::MetaState) -> Result<usize, String> {
        let principals = state.principals();
        let mut checked = 0;
        for (name, expected) in &self.expected {
            let Some(granted) = expected else { continue };
            if principals.role(name).is_none() {
                return Err(format!("role {name}, acknowledged, is missing from the final state"));
            }
            // A grant on ALL TABLES holds for any table name.
            let holds = principals.allows(name, "any_table", Privilege::Select);
            if holds != *granted {
                return Err(format!("role {name} holds SELECT on all tables: {holds}; acknowledged: {granted}"));
            }
            checked += 1;
        }
        if let Some(stranger) = principals.roles().find(|r| !self.proposed.contains(&r.name)) {
            return Err(format!("role {} was never proposed", stranger.name));
        }
        Ok(checked)
    }
}

fn drop_table(name: &str) -> MetaCommand {
    MetaCommand::Catalog { command: CatalogCommand::DropTable { name: name.to_string(), if_exists: false } }
}

/// One catalog change as the workload saw it, with virtual times since the start of the run.
struct Change {
    name: String,
    op: TableOp,
    invoked: Duration,
    /// When it completed and what it returned; `None` when the client could not know (timeout, crash).
    completed: Option<(Duration, TableOutcome)>,
}

/// One linearizable read of the table names.
struct Read {
    /// The replica that served it.
    replica: u64,
    invoked: Duration,
    completed: Duration,
    tables: BTreeSet<String>,
}

/// Checks the catalog history for linearizability, table by table: each table's creates and drops, and every read of
/// the table list (the final state included) projected onto that table.
fn check_linearizable(changes: &[Change], reads: &[Read]) -> Result<(), String> {
    let mut by_table: BTreeMap<&str, Vec<Operation<TableOp, TableOutcome>>> = BTreeMap::new();
    for change in changes {
        by_table.entry(change.name.as_str()).or_default().push(Operation {
            input: change.op,
            invoked: change.invoked,
            completed: change.completed,
        });
    }
    for (table, history) in &mut by_table {
        // Reads outside the window of the table's changes need no search: those that ended before the first change
        // began must not see the table; those that began after the last change ended must all agree (one of them
        // joins the search, to pin the final state).
        let first = history.iter().map(|op| op.invoked).min().unwrap_or_default();
        let last = history.iter().map(|op| op.completed.map_or(Duration::MAX, |(t, _)| t)).max().unwrap_or_default();
        let mut after: Option<(&Read, bool)> = None;
        for read in reads {
            let seen = read.tables.contains(*table);
            if read.completed < first {
                if seen {
                    return Err(format!(
                        "table {table}: a read at {:?}..{:?} saw it before any change of it began ({first:?})",
                        read.invoked, read.completed
                    ));
                }
                continue;
            }
            if read.invoked > last {
                match after {
                    Some((earlier, saw)) if saw != seen => {
                        let word = |present: bool| if present { "present" } else { "absent" };
                        return Err(format!(
                            "table {table}: after its last change, a read at {:?} on replica {} found it {} and one at \
                             {:?} on replica {} {}; its changes: {:?}",
                            earlier.invoked,
                            earlier.replica,
                            word(saw),
                            read.invoked,
                            read.replica,
                            word(seen),
                            changes
                                .iter()
                                .filter(|c| c.name == *table)
                                .map(|c| (c.op, c.invoked, c.completed))
                                .collect::<Vec<_>>()
                        ));
                    }
                    Some(_) => continue,
                    None => after = Some((read, seen)),
                }
            }
            history.push(Operation {
                input: TableOp::Read,
                invoked: read.invoked,
                completed: Some((read.completed, TableOutcome::Exists(seen))),
            });
        }
        linearizability::check(&TableModel, history).map_err(|e| format!("table {table}: {e}"))?;
    }
    Ok(())
}

struct World {
    hosts: Hosts,
    disks: Disks,
    live: Live,
}

impl faults::Cluster for World {
    fn hosts(&mut self) -> &mut Hosts {
        &mut self.hosts
    }

    fn leader(&self) -> Option<u64> {
        live_nodes(&self.live)
            .iter()
            .map(|n| n.metrics().borrow().clone())
            .find(|m| m.state == ServerState::Leader && self.hosts.nodes.contains_key(&m.id))
            .map(|m| m.id)
    }

    fn term(&self, id: u64) -> Option<u64> {
        self.live.lock().expect("live map").get(&id).map(|n| n.metrics().borrow().current_term)
    }

    /// Kills replica `id`; its disk loses the writes it had not synced when the seed says so.
    fn kill(&mut self, id: u64) -> usize {
        self.live.lock().expect("live map").remove(&id);
        self.hosts.handle.kill(self.hosts.nodes[&id].id());
        self.disks.lock().expect("disks")[&id].crash(thread_rng().gen_bool(0.5))
    }

    async fn remove(&mut self, id: u64) -> bool {
        // Through another of the fault loop's replicas (not the operator's spare).
        let helper = live_nodes(&self.live)
            .into_iter()
            .map(|n| n.node_id())
            .find(|h| *h != id && self.hosts.nodes.contains_key(h));
        let Some((h, on)) = helper.and_then(|h| self.hosts.handle.get_node(self.hosts.nodes[&h].id()).map(|n| (h, n)))
        else {
            return false;
        };
        let remove = on.spawn(async move {
            let client = ClusterClient::new(Duration::from_millis(200), Duration::from_secs(3));
            client.remove_node(&addr_of(h).to_string(), id).await
        });
        matches!(remove.await, Ok(Ok(())))
    }

    fn replace_disk(&mut self, id: u64) {
        self.disks.lock().expect("disks").insert(id, SimDisk::new());
    }
}

async fn simulate(options: SimOptions) -> Result<Outcome, String> {
    let handle = Handle::current();
    // Half the seeds also fire, during the fault phase, the fault points inside the production code (slow fsyncs and
    // applies, late replies).
    let buggify = thread_rng().gen_bool(0.5);
    let live: Live = Arc::default();
    let mut world = World { hosts: Hosts::new(handle.clone()), disks: Disks::default(), live: live.clone() };
    // Every replica votes when the group is odd-sized; an even group keeps one learner.
    let voters = (options.replicas as usize).saturating_sub(1 - options.replicas as usize % 2).max(1);
    for id in 1..=options.replicas {
        world.disks.lock().expect("disks").insert(id, SimDisk::new());
        let disks = world.disks.clone();
        let live = live.clone();
        let replicas = options.replicas;
        let node = handle
            .create_node()
            .name(format!("meta-{id}"))
            .ip(ip_of(id))
            .init(move || run_replica(id, replicas, voters, disks.clone(), live.clone()))
            .build();
        world.hosts.nodes.insert(id, node);
        // Join one at a time, as an operator would.
        sleep(Duration::from_millis(1_500)).await;
    }
    wait_until(Duration::from_secs(30), || {
        live_nodes(&live).iter().any(|n| {
            let m = n.metrics().borrow().clone();
            m.state == ServerState::Leader && m.membership_config.membership().voter_ids().count() == voters
        })
    })
    .await
    .map_err(|_| "the cluster did not form within 30 s".to_string())?;
    world.hosts.note(format!(
        "formed: {} replicas, fault points {}",
        options.replicas,
        if buggify { "on" } else { "off" }
    ));

    quiver_meta::buggify::set_fault_points(buggify);
    // The leader-per-term checker samples every replica's view all along.
    let leaders: Arc<Mutex<BTreeMap<u64, BTreeSet<u64>>>> = Arc::default();
    let sampler = {
        let live = live.clone();
        let leaders = leaders.clone();
        madsim::task::spawn(async move {
            loop {
                for node in live_nodes(&live) {
                    let m = node.metrics().borrow().clone();
                    if m.state == ServerState::Leader {
                        leaders.lock().expect("leaders").entry(m.current_term).or_default().insert(m.id);
                    }
                }
                sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // The workload: each client creates tables of new names, drops one of its own now and then, or reads the table
    // list linearizably, on a random live replica.
    let changes: Arc<Mutex<Vec<Change>>> = Arc::default();
    let reads: Arc<Mutex<Vec<Read>>> = Arc::default();
    let roles: Arc<Mutex<RoleLedger>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(options.fault_secs);
    let mut clients = Vec::new();
    for client in 0..options.clients {
        let live = live.clone();
        let changes = changes.clone();
        let reads = reads.clone();
        let roles = roles.clone();
        let nodes: Vec<(u64, NodeHandle)> = world.hosts.nodes.iter().map(|(id, n)| (*id, n.clone())).collect();
        let handle = handle.clone();
        let started = world.hosts.started;
        clients.push(madsim::task::spawn(async move {
            let mut n = 0u64;
            // Tables this client created and has not tried to drop.
            let mut mine: Vec<String> = Vec::new();
            // Roles this client created, each with whether it holds its grant now (as acknowledged).
            let mut my_roles: Vec<(String, bool)> = Vec::new();
            while Instant::now() < deadline {
                let (id, on) = &nodes[thread_rng().gen_range(0..nodes.len())];
                let Some(node) = live.lock().expect("live map").get(id).cloned() else {
                    sleep(Duration::from_millis(50)).await;
                    continue;
                };
                // Each operation runs on the replica's simulated node (its current incarnation), so a crash of that
                // node cuts it off.
                let Some(on) = handle.get_node(on.id()) else { continue };
                let invoked = started.elapsed();
                let dice = thread_rng().gen_range(0..100);
                if dice >= 92 {
                    // Users and privileges: create a role with SELECT on every table, or take its grant away or
                    // give it back, in one command each.
                    let (name, command, grant) = if my_roles.is_empty() || dice >= 96 {
                        n += 1;
                        let name = format!("c{client}_r{n}");
                        (name.clone(), create_role_with_select(&name), true)
                    } else {
                        let (name, granted) = my_roles.swap_remove(thread_rng().gen_range(0..my_roles.len()));
                        (name.clone(), select_on_all_tables(&name, !granted), !granted)
                    };
                    roles.lock().expect("roles").proposed.insert(name.clone());
                    let task = on.spawn(async move { node.propose(command).await });
                    match task.await {
                        Ok(Ok(response)) => {
                            if let Err(e) = response.outcome {
                                panic!("a principal command for {name} was rejected: {e}");
                            }
                            roles.lock().expect("roles").expected.insert(name.clone(), Some(grant));
                            my_roles.push((name, grant));
                        }
                        // The outcome is unknown: the role is left alone from now on, and not checked.
                        _ => {
                            roles.lock().expect("roles").expected.insert(name, None);
                        }
                    }
                } else if dice < 30 {
                    let task = on.spawn(async move {
                        node.read_state(|s| s.catalog().tables().map(|t| t.name.clone()).collect::<BTreeSet<_>>()).await
                    });
                    if let Ok(Ok(tables)) = task.await {
                        reads.lock().expect("reads").push(Read {
                            replica: *id,
                            invoked,
                            completed: started.elapsed(),
                            tables,
                        });
                    }
                } else {
                    let (name, op) = if dice < 45 && !mine.is_empty() {
                        (mine.swap_remove(thread_rng().gen_range(0..mine.len())), TableOp::Drop)
                    } else {
                        n += 1;
                        (format!("c{client}_t{n}"), TableOp::Create)
                    };
                    let command = match op {
                        TableOp::Drop => drop_table(&name),
                        _ => create_table(&name),
                    };
                    let task = on.spawn(async move { node.propose(command).await });
                    let completed = match task.await {
                        Ok(Ok(response)) => {
                            let outcome = match response.outcome {
                                Ok(_) => TableOutcome::Done,
                                Err(Rejection::TableAlreadyExists { .. } | Rejection::TableNotFound { .. }) => {
                                    TableOutcome::Refused
                                }
                                Err(other) => panic!("{op:?} {name} rejected: {other}"),
                            };
                            Some((started.elapsed(), outcome))
                        }
                        _ => None,
                    };
                    if op == TableOp::Create && matches!(completed, Some((_, TableOutcome::Done))) {
                        mine.push(name.clone());
                    }
                    changes.lock().expect("changes").push(Change { name, op, invoked, completed });
                }
                sleep(Duration::from_millis(thread_rng().gen_range(0..50))).await;
            }
        }));
    }

    // An operator changes the membership meanwhile: a spare replica joins (as a learner, promoted when a voter is
    // missing) and is removed again, and the leadership is moved to a random voter.
    let spare = options.replicas + 1;
    world.disks.lock().expect("disks").insert(spare, SimDisk::new());
    let spare_host = {
        let (disks, live, replicas) = (world.disks.clone(), live.clone(), options.replicas);
        handle
            .create_node()
            .name(format!("meta-{spare}"))
            .ip(ip_of(spare))
            .init(move || run_replica(spare, replicas, voters, disks.clone(), live.clone()))
            .build()
    };
    handle.kill(spare_host.id());
    let operator = {
        let (handle, disks, live) = (handle.clone(), world.disks.clone(), live.clone());
        let hosts: BTreeMap<u64, NodeHandle> = world.hosts.nodes.clone();
        let spare_id = spare_host.id();
        let started = world.hosts.started;
        madsim::task::spawn(async move {
            let mut log = Vec::new();
            let mut running = false;
            while Instant::now() < deadline {
                sleep(Duration::from_millis(thread_rng().gen_range(1_000..4_000))).await;
                if Instant::now() >= deadline {
                    break;
                }
                let members: Vec<MetaNode> = live_nodes(&live).into_iter().filter(|n| n.node_id() != spare).collect();
                let Some(via) = members.first().map(MetaNode::node_id) else { continue };
                let Some(on) = handle.get_node(hosts[&via].id()) else { continue };
                let at = started.elapsed().as_millis();
                if thread_rng().gen_bool(0.4) {
                    let voters: Vec<u64> = {
                        let m = members[0].metrics().borrow().clone();
                        m.membership_config.membership().voter_ids().collect()
                    };
                    // A replica that has just joined anew may not know the membership yet.
                    if voters.is_empty() {
                        continue;
                    }
                    let to = voters[thread_rng().gen_range(0..voters.len())];
                    let moved = on.spawn(async move {
                        let client = ClusterClient::new(Duration::from_millis(200), Duration::from_secs(3));
                        client.transfer_leader(&addr_of(via).to_string(), to).await
                    });
                    let ok = matches!(moved.await, Ok(Ok(_)));
                    log.push(format!(
                        "{at:>7} ms  operator: transfer leadership to {to}: {}",
                        if ok { "ok" } else { "failed" }
                    ));
                } else if !running {
                    handle.restart(spare_id);
                    running = true;
                    log.push(format!("{at:>7} ms  operator: start spare replica {spare} (it joins)"));
                } else {
                    // Decommission: stop the spare, then remove it through another replica, retrying (an operator
                    // does) until the cluster confirms, or says it is no longer a member (an earlier attempt took
                    // effect); its disk is then wiped.
                    live.lock().expect("live map").remove(&spare);
                    handle.kill(spare_id);
                    let mut attempts = 0;
                    while attempts < 20 {
                        attempts += 1;
                        let helper = live_nodes(&live)
                            .into_iter()
                            .map(|n| n.node_id())
                            .find(|n| hosts.contains_key(n))
                            .unwrap_or(via);
                        let Some(on) = handle.get_node(hosts[&helper].id()) else { break };
                        let removed = on.spawn(async move {
                            let client = ClusterClient::new(Duration::from_millis(200), Duration::from_secs(3));
                            client.remove_node(&addr_of(helper).to_string(), spare).await
                        });
                        match removed.await {
                            Ok(Ok(()) | Err(ClusterError::InvalidMembershipChange { .. })) => break,
                            _ => sleep(Duration::from_millis(500)).await,
                        }
                    }
                    disks.lock().expect("disks").insert(spare, SimDisk::new());
                    running = false;
                    log.push(format!("{at:>7} ms  operator: remove spare replica {spare} ({attempts} attempts)"));
                }
            }
            // A decommissioned spare's join request may still have been in flight and landed after its removal: an
            // operator checks the membership and removes it again until it is gone.
            // A join request outlives its sender by the client's and the leader's timeouts (a few seconds), so the
            // spare must stay out for longer than that.
            if !running {
                let mut absent_for = 0;
                for _ in 0..60 {
                    let members = live_nodes(&live);
                    let present = members.iter().any(|n| {
                        n.metrics().borrow().membership_config.membership().nodes().any(|(id, _)| *id == spare)
                    });
                    if !present {
                        absent_for += 1;
                        if absent_for >= 12 {
                            break;
                        }
                        sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    absent_for = 0;
                    let Some(helper) = members.iter().map(MetaNode::node_id).find(|n| hosts.contains_key(n)) else {
                        break;
                    };
                    if let Some(on) = handle.get_node(hosts[&helper].id()) {
                        let removed = on.spawn(async move {
                            let client = ClusterClient::new(Duration::from_millis(200), Duration::from_secs(3));
                            client.remove_node(&addr_of(helper).to_string(), spare).await
                        });
                        let _ = removed.await;
                    }
                    sleep(Duration::from_millis(500)).await;
                }
            }
            (running, log)
        })
    };

    // Faults, until the deadline; at most one fault at a time, so a majority can work most of the time.
    let faults = faults::inject(&mut world, deadline).await;
    let (spare_running, operations) = operator.await.map_err(|e| format!("the operator task failed: {e}"))?;
    for line in &operations {
        tracing::info!("{line}");
    }
    world.hosts.trace.extend(operations);
    // In time order (each line starts with its virtual time); events of the same millisecond keep their order.
    world.hosts.trace.sort_by_key(|line| line.split_whitespace().next().and_then(|ms| ms.parse::<u64>().ok()));
    for client in clients {
        let _ = client.await;
    }
    quiver_meta::buggify::set_fault_points(false);
    world.hosts.note("faults over".to_string());

    // Liveness: with every fault healed, a proposal succeeds within the bound.
    let healed = Instant::now();
    let recovered_by = healed + Duration::from_secs(options.liveness_secs);
    let mut attempt = 0;
    let probe = loop {
        // A client tries the replicas in turn.
        let nodes = live_nodes(&live);
        let node = nodes.get(attempt % nodes.len().max(1)).cloned().ok_or("no replica is running")?;
        attempt += 1;
        let command = create_table(&format!("probe_{attempt}"));
        // Proposed on the replica's own simulated node, whose address its peers know.
        let on = handle.get_node(world.hosts.nodes[&node.node_id()].id()).ok_or("a replica's node is gone")?;
        let proposal = on.spawn(async move { node.propose(command).await });
        if let Ok(Ok(Ok(response))) = madsim::time::timeout(Duration::from_secs(3), proposal).await
            && response.into_result().is_ok()
        {
            break Instant::now();
        }
        if Instant::now() >= recovered_by {
            return Err(format!("no proposal succeeded within {} s after the faults stopped", options.liveness_secs));
        }
        sleep(Duration::from_millis(100)).await;
    };
    world.hosts.note(format!("available again after {} ms", (probe - healed).as_millis()));

    // Convergence: every replica applies the same log up to the same index and holds the same state.
    let expected_replicas = options.replicas as usize + usize::from(spare_running);
    let converged = wait_until(Duration::from_secs(30), || {
        let nodes = live_nodes(&live);
        let applied: BTreeSet<_> = nodes.iter().map(|n| n.metrics().borrow().last_applied).collect();
        nodes.len() == expected_replicas && applied.len() == 1
    })
    .await;
    sampler.abort();
    let nodes = live_nodes(&live);
    if converged.is_err() {
        let applied: Vec<_> = nodes.iter().map(|n| (n.node_id(), n.metrics().borrow().last_applied)).collect();
        return Err(format!("replicas did not converge: applied {applied:?}"));
    }
    let states: Vec<_> = nodes.iter().map(|n| n.read_local(|s| s.clone())).collect();
    if let Some(i) = states.iter().position(|s| *s != states[0]) {
        return Err(format!("replica {} holds another state than replica {}", nodes[i].node_id(), nodes[0].node_id()));
    }

    // Membership: the members are exactly the running replicas, the target number of voters is back, and the node
    // registry lists every member as serving.
    let running: BTreeSet<u64> = nodes.iter().map(MetaNode::node_id).collect();
    let settled = wait_until(Duration::from_secs(30), || {
        live_nodes(&live).iter().all(|n| {
            let m = n.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            let members: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
            members == running && membership.voter_ids().count() == voters.min(running.len())
        })
    })
    .await;
    if settled.is_err() {
        let m = nodes[0].metrics().borrow().clone();
        return Err(format!(
            "membership did not settle: running {running:?}, membership {:?}",
            m.membership_config.membership()
        ));
    }
    // A replica that joined at the end (a replaced one) may have applied its registration just now: the registry is
    // read again, on every replica, until it agrees (or the bound passes).
    let serving = |n: &MetaNode| {
        running.iter().find(|id| n.read_local(|s| s.node(**id).map(|r| r.state)) != Some(NodeState::Serving)).copied()
    };
    let registered =
        wait_until(Duration::from_secs(30), || live_nodes(&live).iter().all(|n| serving(n).is_none())).await;
    if registered.is_err() {
        for n in live_nodes(&live) {
            if let Some(id) = serving(&n) {
                let record = n.read_local(|s| s.node(id).map(|r| r.state));
                return Err(format!("member {id} is {record:?} in the node registry of replica {}", n.node_id()));
            }
        }
    }

    // Safety: one leader per term.
    for (term, ids) in leaders.lock().expect("leaders").iter() {
        if ids.len() > 1 {
            return Err(format!("term {term} had leaders {ids:?}"));
        }
    }
    // Stability: no replica cut off from the others campaigned.
    if let Some(violation) = world.hosts.violations.first() {
        return Err(violation.clone());
    }
    // Metadata reads and writes are linearizable, the final state read as the last read.
    let tables: BTreeSet<String> = states[0].catalog().tables().map(|t| t.name.clone()).collect();
    let mut reads = std::mem::take(&mut *reads.lock().expect("reads"));
    let end = world.hosts.started.elapsed();
    reads.push(Read { replica: 0, invoked: end, completed: end, tables: tables.clone() });
    let changes = std::mem::take(&mut *changes.lock().expect("changes"));
    check_linearizable(&changes, &reads)?;
    // Nothing that no client created is there.
    let created: BTreeSet<&str> = changes.iter().map(|c| c.name.as_str()).collect();
    if let Some(stranger) = tables.iter().find(|t| !t.starts_with("probe_") && !created.contains(t.as_str())) {
        return Err(format!("table {stranger} was never proposed"));
    }

    // Users and privileges: every acknowledged change holds, nothing unproposed is there.
    let roles_checked = roles.lock().expect("roles").check(&states[0])?;
    world.hosts.note(format!("checked {roles_checked} roles and their grants"));

    let acknowledged = changes.iter().filter(|c| c.completed.is_some()).count();
    let uncertain = changes.len() - acknowledged;
    let drops = changes.iter().filter(|c| c.op == TableOp::Drop).count();
    world.hosts.note(format!(
        "checked: {acknowledged} acknowledged, {uncertain} uncertain ({drops} drops), {} linearizable reads, {} tables, \
         version {}",
        reads.len(),
        tables.len(),
        states[0].version()
    ));
    let mut hasher = DefaultHasher::new();
    world.hosts.trace.hash(&mut hasher);
    for c in &changes {
        (&c.name, c.invoked, c.completed.map(|(t, o)| (t, format!("{o:?}")))).hash(&mut hasher);
    }
    states[0].encode().hash(&mut hasher);
    Ok(Outcome {
        trace_hash: hasher.finish(),
        faults,
        acknowledged,
        uncertain,
        moves: 0,
        self_stops: 0,
        trace: world.hosts.trace,
    })
}
