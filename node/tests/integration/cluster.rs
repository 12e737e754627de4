//! Three `quiver server` processes on loopback form a cluster with `--join`: DDL made through psql on any node is
//! listed by `\dt` on the others, conflicting DDL has one winner, the cluster keeps serving DDL after its leader is
//! killed, a restarted cluster keeps its catalog, and nodes that must not join are refused with a clear error.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Raft timing short enough that failover takes about a second.
const FAST_RAFT: [(&str, &str); 4] = [
    ("QUIVER_CLUSTER__HEARTBEAT_INTERVAL", "50ms"),
    ("QUIVER_CLUSTER__ELECTION_TIMEOUT_MIN", "400ms"),
    ("QUIVER_CLUSTER__ELECTION_TIMEOUT_MAX", "800ms"),
    ("QUIVER_CLUSTER__JOIN_TIMEOUT", "20s"),
];

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Failure detection fast enough for a test: a node silent for 2 s is down and the shards it led fail over; copies
/// of a node down for 1 s more are made again elsewhere.
const FAST_FAILOVER: [(&str, &str); 3] = [
    ("QUIVER_CLUSTER__NODE_HEARTBEAT_INTERVAL", "200ms"),
    ("QUIVER_CLUSTER__NODE_DOWN_AFTER", "2s"),
    ("QUIVER_CLUSTER__REPLICA_DOWN_TIMEOUT", "1s"),
];

struct Node {
    id: u64,
    grpc: String,
    dir: std::path::PathBuf,
    child: Option<Child>,
    pg_port: u16,
    env: &'static [(&'static str, &'static str)],
    log: Log,
}

/// The last lines a server process logged.
type Log = std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>;
const LOG_LINES_KEPT: usize = 60;

/// What a server process did at startup.
enum Started {
    Serving { child: Child, pg_port: u16, log: Log },
    Exited { log: String },
}

async fn spawn_server(id: u64, dir: &std::path::Path, grpc: &str, join: Option<&str>, env: &[(&str, &str)]) -> Started {
    let mut command = Command::new(env!("CARGO_BIN_EXE_quiver"));
    command
        .args(["server", "--data-dir"])
        .arg(dir)
        .args(["--node-id", &id.to_string(), "--grpc-addr", grpc])
        .args(["--flight-addr", "127.0.0.1:0", "--pg-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        // Every node tiers to one directory beside the data directories, as to a shared bucket.
        .arg("--cold-store")
        .arg(format!(
            "file://{}",
            dir.parent().expect("data directories live in a test directory").join("cold").display()
        ))
        .arg("--cold-shared-dir")
        .env("QUIVER_LOG__FILTER", "info,openraft=warn")
        .envs(FAST_RAFT)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(seed) = join {
        command.args(["--join", seed]);
    }
    let mut child = command.spawn().expect("spawn quiver server");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut log = String::new();
    let pg = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
            if line.contains("quiver is serving")
                && let Some(rest) = line.split(" pg=").nth(1)
            {
                let addr = rest.split_whitespace().next().expect("address").to_string();
                return Some(addr.rsplit(':').next().expect("port").parse::<u16>().expect("port number"));
            }
        }
        None
    })
    .await
    .expect("the server starts or exits within a minute");
    match pg {
        Some(pg_port) => {
            // The last lines of its log, for a test's failure message.
            let kept: Log = std::sync::Arc::default();
            let tail = kept.clone();
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut tail = tail.lock().expect("log");
                    if tail.len() == LOG_LINES_KEPT {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            });
            Started::Serving { child, pg_port, log: kept }
        }
        None => Started::Exited { log },
    }
}

impl Node {
    async fn start(id: u64, dir: std::path::PathBuf, grpc: String, join: Option<&str>) -> Node {
        Node::start_with(id, dir, grpc, join, &[]).await
    }

    async fn start_with(
        id: u64,
        dir: std::path::PathBuf,
        grpc: String,
        join: Option<&str>,
        env: &'static [(&'static str, &'static str)],
    ) -> Node {
        // The internal port is chosen before the node starts (its peers must know it); another test's connection
        // may hold it as its local port for a while, so a bind refused as in use is tried again.
        let mut attempts = 0;
        loop {
            match spawn_server(id, &dir, &grpc, join, env).await {
                Started::Serving { child, pg_port, log } => {
                    return Node { id, grpc, dir, child: Some(child), pg_port, env, log };
                }
                Started::Exited { log } if attempts < 20 && log.contains("Address already in use") => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Started::Exited { log } => panic!("node {id} did not start:\n{log}"),
            }
        }
    }

    async fn restart(&mut self, join: Option<&str>) {
        *self = Node::start_with(self.id, self.dir.clone(), self.grpc.clone(), join, self.env).await;
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill -9");
        }
    }

    async fn psql(&self, command: &str) -> std::process::Output {
        let output = Command::new("psql")
            .args(["-X", "-w", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &self.pg_port.to_string()])
            .args(["-U", "quiver", "-d", "quiver", "-c", command])
            .env("PGCONNECT_TIMEOUT", "10")
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(Duration::from_secs(60), output).await.expect("psql finishes").expect("run psql")
    }

    /// Runs a statement through psql, retrying while the cluster has no leader (SQLSTATE 57P03 reads "metadata
    /// cluster"), for at most `within`.
    async fn psql_ok(&self, command: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let out = self.psql(command).await;
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).to_string();
            }
            assert!(
                stderr.contains("metadata cluster") && tokio::time::Instant::now() < deadline,
                "node {}: {command}: {stderr}",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `\dt` on this node lists every table of `tables`.
    async fn wait_listed(&self, tables: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let listing = self.psql_ok("\\dt", Duration::from_secs(10)).await;
            if tables.iter().all(|t| listing.lines().any(|l| l.split('|').nth(1).map(str::trim) == Some(*t))) {
                return listing;
            }
            assert!(tokio::time::Instant::now() < deadline, "node {} lists {listing}, not all of {tables:?}", self.id);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Returns the first cell of psql's aligned output (the line after the header's dashes).
fn first_value(output: &str) -> String {
    let mut lines = output.lines().skip_while(|l| !l.starts_with("--"));
    lines.nth(1).and_then(|l| l.split('|').next()).map(|v| v.trim().to_string()).unwrap_or_default()
}

async fn admin(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_quiver")).arg("admin").args(args).output().await.expect("run quiver admin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_server_processes_form_a_cluster_that_agrees_on_ddl_and_survives_its_leader() {
    let root = tempfile::tempdir().expect("tempdir");
    let grpc: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let seed = grpc[0].clone();

    // Node 1 bootstraps; 2 and 3 join through it and become voters.
    let mut nodes = vec![Node::start(1, root.path().join("n1"), grpc[0].clone(), None).await];
    for id in 2..=3u64 {
        nodes.push(
            Node::start(id, root.path().join(format!("n{id}")), grpc[id as usize - 1].clone(), Some(&seed)).await,
        );
    }
    let status = admin(&["--connect", &seed, "status"]).await;
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert_eq!(text.lines().filter(|l| l.contains(" voter ")).count(), 3, "three voters:\n{text}");
    assert!(text.contains("leader 1"), "the bootstrapping node leads:\n{text}");
    // Every node shows the group through SQL: system.nodes lists the three voters, system.raft the leader.
    for node in &nodes {
        let voters = node.psql_ok("SELECT count(*) FROM system.nodes WHERE role = 'voter'", Duration::from_secs(5));
        assert_eq!(first_value(&voters.await), "3", "node {}", node.id);
        let raft = node.psql_ok("SELECT leader_id, node_id, voters FROM system.raft", Duration::from_secs(5)).await;
        assert_eq!(first_value(&raft), "1", "node {} sees node 1 lead: {raft}", node.id);
        assert!(raft.lines().any(|l| l.split('|').nth(1).map(str::trim) == Some(&node.id.to_string())), "{raft}");
    }

    // A fourth node, admitted ahead by an operator and started with --join, stays a learner (three voters is the
    // target); it is then retired.
    let grpc4 = format!("127.0.0.1:{}", free_port());
    let added = admin(&["--connect", &grpc[1], "add", "4", "--grpc-addr", &grpc4]).await;
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    assert!(String::from_utf8_lossy(&added.stdout).contains("as learner"), "{added:?}");
    let mut learner = Node::start(4, root.path().join("n4"), grpc4, Some(&seed)).await;
    let query = "SELECT role, count(*) AS n FROM system.nodes GROUP BY role ORDER BY role";
    let roles = nodes[0].psql_ok(query, Duration::from_secs(5)).await;
    assert!(roles.contains("learner | 1") && roles.contains("voter   | 3"), "{roles}");
    learner.kill().await;
    let removed = admin(&["--connect", &seed, "remove", "4"]).await;
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));

    // DDL on any node is listed by \dt on every node.
    nodes[0].psql_ok("CREATE TABLE t1 (id BIGINT PRIMARY KEY, v TEXT)", Duration::from_secs(5)).await;
    nodes[1].psql_ok("CREATE TABLE t2 (id BIGINT)", Duration::from_secs(5)).await;
    nodes[2].psql_ok("INSERT INTO t1 VALUES (1, 'local to node 3')", Duration::from_secs(5)).await;
    for node in &nodes {
        node.wait_listed(&["t1", "t2"]).await;
    }
    let described = nodes[2].psql_ok("\\d t1", Duration::from_secs(5)).await;
    assert!(described.contains("bigint") && described.contains("text"), "{described}");

    // A sharded table: the metadata group places its shards, every node shows the same shard map.
    let create = "CREATE TABLE sharded (id BIGINT PRIMARY KEY, v TEXT) WITH (shards = 6, replicas = 2)";
    nodes[1].psql_ok(create, Duration::from_secs(5)).await;
    let by_primary = "SELECT \"primary\", count(*) FROM system.shards WHERE table_name = 'sharded' AND state = 'ok' \
                      AND replicas = in_sync AND replicas LIKE '%,%' GROUP BY \"primary\" ORDER BY \"primary\"";
    let mut maps = Vec::new();
    for node in &nodes {
        node.wait_listed(&["sharded"]).await;
        let map = node.psql_ok(by_primary, Duration::from_secs(5)).await;
        let rows: Vec<(String, String)> = map
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(p, n)| (p.trim().to_string(), n.trim().to_string()))
            .filter(|(p, _)| p.parse::<u64>().is_ok())
            .collect();
        let expected: Vec<(String, String)> = (1..=3).map(|p| (p.to_string(), "2".to_string())).collect();
        assert_eq!(rows, expected, "node {}: two of six shards led by each node, two copies each:\n{map}", node.id);
        maps.push(
            node.psql_ok(
                "SELECT table_name, shard_id, slots, \"primary\", replicas, in_sync, epoch, state FROM system.shards \
                 ORDER BY shard_id",
                Duration::from_secs(5),
            )
            .await,
        );
    }
    assert!(maps.iter().all(|m| *m == maps[0]), "every node shows the same shard map: {maps:?}");
    let listed = admin(&["--connect", &grpc[2], "shards"]).await;
    let text = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    assert_eq!(text.lines().filter(|l| l.contains("| sharded ")).count(), 6, "{text}");
    let refused = nodes[0].psql("ALTER TABLE sharded SET (shards = 3)").await;
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && message.contains("shards after CREATE TABLE"), "{message}");

    // Two nodes create the same table at once: exactly one wins, the other gets a clear error.
    let (a, b) = tokio::join!(nodes[1].psql("CREATE TABLE dup (x INT)"), nodes[2].psql("CREATE TABLE dup (x INT)"));
    let wins = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert_eq!(wins, 1, "{a:?} {b:?}");
    let loser = if a.status.success() { &b } else { &a };
    let message = String::from_utf8_lossy(&loser.stderr);
    assert!(message.contains("\"dup\" already exists"), "{message}");

    // Bad joins are refused and change nothing: an id taken by another address, a node of another cluster.
    let dup_dir = root.path().join("dup-id");
    match spawn_server(2, &dup_dir, &format!("127.0.0.1:{}", free_port()), Some(&seed), &[]).await {
        Started::Exited { log } => assert!(log.contains("node id 2 is already used"), "{log}"),
        Started::Serving { .. } => panic!("a duplicate node id was admitted"),
    }
    let other_dir = root.path().join("other-cluster");
    let mut other = Node::start(7, other_dir.clone(), format!("127.0.0.1:{}", free_port()), None).await;
    other.kill().await;
    match spawn_server(7, &other_dir, &other.grpc, Some(&seed), &[]).await {
        Started::Exited { log } => assert!(log.contains("belongs to cluster"), "{log}"),
        Started::Serving { .. } => panic!("a node of another cluster was admitted"),
    }
    let removed = admin(&["--connect", &seed, "remove", "42"]).await;
    assert!(!removed.status.success());
    assert!(String::from_utf8_lossy(&removed.stderr).contains("not a member"), "{removed:?}");

    // Kill the leader: the other two elect a new one and keep serving DDL.
    nodes[0].kill().await;
    nodes[1].psql_ok("CREATE TABLE after_failover (id INT)", Duration::from_secs(15)).await;
    nodes[2].wait_listed(&["t1", "t2", "dup", "after_failover"]).await;
    let status = admin(&["--connect", &grpc[1], "status"]).await;
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(!text.contains("leader 1 "), "a new leader:\n{text}");
    let leader = nodes[2].psql_ok("SELECT leader_id FROM system.raft", Duration::from_secs(5)).await;
    assert!(["2", "3"].contains(&first_value(&leader).as_str()), "{leader}");

    // The old leader comes back and catches up.
    nodes[0].restart(Some(&grpc[1])).await;
    nodes[0].wait_listed(&["t1", "t2", "dup", "after_failover"]).await;

    // Restart every node: the catalog is intact, and node 3 still has its own row.
    for node in &mut nodes {
        node.kill().await;
    }
    for node in &mut nodes {
        node.restart(None).await;
    }
    for node in &nodes {
        node.wait_listed(&["t1", "t2", "dup", "after_failover"]).await;
    }
    let rows = nodes[2].psql_ok("SELECT v FROM t1", Duration::from_secs(10)).await;
    assert!(rows.contains("local to node 3"), "{rows}");
    nodes[0].psql_ok("DROP TABLE t2", Duration::from_secs(15)).await;
    for node in &nodes {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let listing = node.psql_ok("\\dt", Duration::from_secs(10)).await;
            if !listing.contains(" t2 ") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "node {} still lists t2: {listing}", node.id);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What one writer learned of each of its single-row inserts.
#[derive(Debug, Default)]
struct Outcomes {
    /// Answered OK.
    acknowledged: Vec<i64>,
    /// Refused with 57P03 (unavailable, nothing written).
    refused: Vec<i64>,
    /// Any other error, a lost connection or no answer: may or may not have taken effect.
    unknown: Vec<i64>,
}

/// Inserts single rows (ids from `client · 10⁹`) into `r` through the node whose pg port `port` holds, reconnecting
/// as needed, until `stop`.
async fn insert_until(
    client: i64,
    port: std::sync::Arc<std::sync::atomic::AtomicU16>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Outcomes {
    use std::sync::atomic::Ordering::Relaxed;
    let mut outcomes = Outcomes::default();
    let mut next = client * 1_000_000_000;
    let mut connection: Option<tokio_postgres::Client> = None;
    while !stop.load(Relaxed) {
        let Some(pg) = connection.as_ref().filter(|c| !c.is_closed()) else {
            let config =
                format!("host=127.0.0.1 port={} user=quiver dbname=quiver connect_timeout=2", port.load(Relaxed));
            match tokio_postgres::connect(&config, tokio_postgres::NoTls).await {
                Ok((pg, driver)) => {
                    tokio::spawn(driver);
                    connection = Some(pg);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            continue;
        };
        let id = next;
        next += 1;
        let sql = format!("INSERT INTO r VALUES ({id}, {client})");
        match tokio::time::timeout(Duration::from_secs(15), pg.simple_query(&sql)).await {
            Ok(Ok(_)) => outcomes.acknowledged.push(id),
            Ok(Err(e)) if e.code() == Some(&tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW) => {
                outcomes.refused.push(id);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => {
                outcomes.unknown.push(id);
                if e.as_db_error().is_none() {
                    connection = None;
                }
            }
            Err(_) => {
                outcomes.unknown.push(id);
                connection = None;
            }
        }
    }
    outcomes
}

/// The ids of `r` as `node` reads them, asked again while the cluster fails over (for at most 30 s).
async fn ids_of_r(node: &Node) -> Vec<i64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let config = format!("host=127.0.0.1 port={} user=quiver dbname=quiver connect_timeout=5", node.pg_port);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        if let Ok((pg, driver)) = tokio_postgres::connect(&config, tokio_postgres::NoTls).await {
            tokio::spawn(driver);
            match pg.query("SELECT id FROM r", &[]).await {
                Ok(rows) => return rows.iter().map(|r| r.get::<_, i64>(0)).collect(),
                Err(e) => last = format!("{e:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("node {} could not read r within 30 s: {last}", node.id);
}

/// Checks `ids`, read on `node`, against what the writers learned: each id once, every acknowledged id there, none
/// refused, none never written.
fn check_rows(node: u64, ids: &[i64], outcomes: &[Outcomes]) {
    let seen: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(seen.len(), ids.len(), "node {node}: an id appears twice");
    for o in outcomes {
        let lost: Vec<&i64> = o.acknowledged.iter().filter(|id| !seen.contains(id)).collect();
        assert!(lost.is_empty(), "node {node}: acknowledged rows are missing: {lost:?}");
        let refused: Vec<&i64> = o.refused.iter().filter(|id| seen.contains(id)).collect();
        assert!(refused.is_empty(), "node {node}: refused rows are there: {refused:?}");
    }
    let written: std::collections::BTreeSet<i64> =
        outcomes.iter().flat_map(|o| o.acknowledged.iter().chain(&o.unknown)).copied().collect();
    let strangers: Vec<&i64> = seen.iter().filter(|id| !written.contains(id)).collect();
    assert!(strangers.is_empty(), "node {node}: rows nobody wrote: {strangers:?}");
}

/// The last lines each of `nodes` logged.
fn logs(nodes: &[Node]) -> String {
    let mut out = String::new();
    for node in nodes {
        out.push_str(&format!("--- node {} ---\n", node.id));
        for line in node.log.lock().expect("log").iter() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Waits until every shard of `r` has two copies, both in sync, as `nodes[0]` sees them.
async fn until_replicated(nodes: &[Node]) {
    let node = &nodes[0];
    let query = "SELECT count(*) FROM system.shards WHERE table_name = 'r' AND replicas = in_sync \
                 AND replicas LIKE '%,%' AND state = 'ok'";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let settled = first_value(&node.psql_ok(query, Duration::from_secs(15)).await);
        if settled == "4" {
            return;
        }
        let map = node.psql_ok("SELECT * FROM system.shards WHERE table_name = 'r'", Duration::from_secs(15)).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "shards of r not back to two copies in sync:\n{map}\n{}",
            logs(nodes)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_table_loses_no_acknowledged_row_to_kill_9_a_lost_disk_and_then_a_second_node() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU16, Ordering::Relaxed};

    let root = tempfile::tempdir().expect("tempdir");
    let grpc: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let seed = grpc[0].clone();
    let mut nodes = vec![Node::start_with(1, root.path().join("n1"), grpc[0].clone(), None, &FAST_FAILOVER).await];
    for id in 2..=3u64 {
        let dir = root.path().join(format!("n{id}"));
        nodes.push(Node::start_with(id, dir, grpc[id as usize - 1].clone(), Some(&seed), &FAST_FAILOVER).await);
    }
    let create = "CREATE TABLE r (id BIGINT PRIMARY KEY, client BIGINT NOT NULL) WITH (shards = 4, replicas = 2)";
    nodes[0].psql_ok(create, Duration::from_secs(15)).await;
    for node in &nodes {
        node.wait_listed(&["r"]).await;
    }
    until_replicated(&nodes).await;

    // One writer through each node, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let ports: Vec<Arc<AtomicU16>> = nodes.iter().map(|n| Arc::new(AtomicU16::new(n.pg_port))).collect();
    let writers: Vec<_> =
        (0..3).map(|k| tokio::spawn(insert_until(k as i64 + 1, ports[k].clone(), stop.clone()))).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // kill -9 of node 2 mid-ingest; the shards it led fail over.
    nodes[1].kill().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Its disk is lost: a replacement with the same id and address and an empty data directory joins.
    std::fs::remove_dir_all(&nodes[1].dir).expect("lose node 2's disk");
    nodes[1] = Node::start_with(2, root.path().join("n2"), grpc[1].clone(), Some(&seed), &FAST_FAILOVER).await;
    ports[1].store(nodes[1].pg_port, Relaxed);
    until_replicated(&nodes).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Relaxed);
    let mut outcomes = Vec::new();
    for writer in writers {
        outcomes.push(writer.await.expect("writer"));
    }
    let acknowledged: usize = outcomes.iter().map(|o| o.acknowledged.len()).sum();
    assert!(acknowledged > 100, "the writers got rows in: {outcomes:?}");
    assert!(!outcomes[0].acknowledged.is_empty() && !outcomes[2].acknowledged.is_empty());

    // Every node reads every acknowledged row once, nothing refused, nothing never written.
    let mut reads = Vec::new();
    for node in &nodes {
        let ids = ids_of_r(node).await;
        check_rows(node.id, &ids, &outcomes);
        reads.push(ids.len());
    }
    assert!(reads.iter().all(|n| *n == reads[0]), "every node reads the same rows: {reads:?}");

    // A second node lost after the shards are back to two copies: still nothing lost.
    nodes[0].kill().await;
    for node in &nodes[1..] {
        let ids = ids_of_r(node).await;
        check_rows(node.id, &ids, &outcomes);
        assert_eq!(ids.len(), reads[0], "node {} after node 1's loss", node.id);
    }
}

/// Authentication on every node of a three-node cluster.
const AUTH: [(&str, &str); 3] = [
    ("QUIVER_AUTH__ENABLED", "true"),
    ("QUIVER_AUTH__ADMIN_USER", "admin"),
    ("QUIVER_AUTH__ADMIN_PASSWORD", "cluster admin password"),
];

/// Logs in to `node` over the PostgreSQL wire, retrying for a few seconds while the user is not yet known there
/// (the metadata that created it is still on its way) or the node is readying its principals.
async fn login(node: &Node, user: &str, password: &str) -> tokio_postgres::Client {
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(node.pg_port).user(user).password(password).dbname("quiver");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match config.connect(tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                return client;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{user} cannot log in to node {}: {e}", node.id),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_grants_made_on_one_node_hold_on_the_next_statement_on_every_node() {
    let root = tempfile::tempdir().expect("tempdir");
    let grpc: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let mut nodes = vec![Node::start_with(1, root.path().join("n1"), grpc[0].clone(), None, &AUTH).await];
    for id in 2..=3u64 {
        let dir = root.path().join(format!("n{id}"));
        nodes.push(Node::start_with(id, dir, grpc[id as usize - 1].clone(), Some(&grpc[0]), &AUTH).await);
    }
    let admin = login(&nodes[0], "admin", "cluster admin password").await;
    admin.batch_execute("CREATE TABLE t (x BIGINT)").await.expect("create");
    admin.batch_execute("INSERT INTO t VALUES (1), (2)").await.expect("insert");
    admin.batch_execute("CREATE USER eve PASSWORD 'eve password'").await.expect("create user");
    admin.batch_execute("GRANT SELECT ON t TO eve").await.expect("grant");

    // The user made on node 1 logs in on the others, and the grant holds there at once.
    let mut eves = Vec::new();
    for node in &nodes[1..] {
        let eve = login(node, "eve", "eve password").await;
        let n: i64 = eve.query_one("SELECT count(*) FROM t", &[]).await.expect("select").get(0);
        assert_eq!(n, 2, "node {}", node.id);
        eves.push(eve);
    }
    // A REVOKE acknowledged on node 1 holds on the very next statement of connections open on the others.
    admin.batch_execute("REVOKE SELECT ON t FROM eve").await.expect("revoke");
    for (eve, node) in eves.iter().zip(&nodes[1..]) {
        let e = eve.query_one("SELECT count(*) FROM t", &[]).await.expect_err("revoked");
        assert_eq!(e.code().map(|c| c.code()), Some("42501"), "node {}: {e}", node.id);
    }
    // Dropping the user ends its logins everywhere.
    admin.batch_execute("DROP USER eve").await.expect("drop user");
    for node in &nodes[1..] {
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(node.pg_port).user("eve").password("eve password").dbname("quiver");
        let e = config.connect(tokio_postgres::NoTls).await.map(|_| ()).expect_err("dropped");
        assert_eq!(e.code().map(|c| c.code()), Some("28P01"), "node {}: {e}", node.id);
    }
}
