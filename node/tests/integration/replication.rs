//! The shard service between two in-process nodes on loopback: a primary's committed chunks replicated to a backup
//! under the same numbers, scans of either replica, and the epoch fencing that refuses a deposed primary.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use arrow::ipc::reader::StreamReader;
use quiver_meta::ShardId;
use quiver_meta::{MetaCommand, ShardRecord};
use quiver_node::config::{Config, Overrides};
use quiver_node::server::Server;
use quiver_node::{Engine, RemoteShardScanExec};
use quiver_proto::v1::shard_service_client::ShardServiceClient;
use quiver_proto::v1::{ChangeShardRequest, ReplicateRequest, ReplicatedChunk, ScanShardRequest, WriteShardRequest};
use tonic::Code;
use tonic::transport::Channel;

struct Node {
    engine: Arc<Engine>,
    grpc: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: tokio::task::JoinHandle<quiver_node::Result<()>>,
    _dir: tempfile::TempDir,
}

/// A node's settings on loopback ports: its data in `dir`, its cold tier in `cold` (a shared directory) or, without
/// one, the default directory of its own.
fn overrides(node_id: u64, dir: &std::path::Path, join: Vec<String>, cold: Option<&std::path::Path>) -> Overrides {
    Overrides {
        node_id: Some(node_id),
        join,
        cold_store: cold.map(|c| format!("file://{}", c.display())),
        cold_shared_dir: cold.is_some(),
        ..Overrides::loopback(dir.to_path_buf())
    }
}

/// Starts node `node_id` with automatic rebalancing off: the tests that start nodes so check what happens on the
/// node a shard was placed on, and a copy moving for balance meanwhile would move their ground.
async fn start(node_id: u64, join: Vec<String>, cold: &std::path::Path) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    start_on(node_id, dir, "127.0.0.1:0", join, cold, &[("QUIVER_CLUSTER__REBALANCE", "false")]).await
}

/// Starts node `node_id` on the data directory `dir`, its internal endpoint at `grpc`, with settings `env` (as
/// `QUIVER_…` environment variables).
async fn start_on(
    node_id: u64,
    dir: tempfile::TempDir,
    grpc: &str,
    join: Vec<String>,
    cold: &std::path::Path,
    env: &[(&str, &str)],
) -> Node {
    let mut overrides = overrides(node_id, dir.path(), join, Some(cold));
    overrides.grpc_addr = Some(grpc.to_string());
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    // A restart on the port of a node just stopped may find it held a little longer.
    let mut attempts = 0;
    let server = loop {
        let config = Config::load(None, env.clone(), &overrides).expect("config");
        match Server::bind(config).await {
            Ok(server) => break server,
            Err(e) if attempts < 50 && e.report().contains("in use") => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("bind: {e}"),
        }
    };
    let grpc = server.grpc_addr().expect("internal endpoint").to_string();
    let engine = Arc::clone(server.engine());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Node { engine, grpc, stop: Some(stop), running, _dir: dir }
}

impl Node {
    /// Stops the node; returns its data directory.
    async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.stop.take().expect("running").send(());
        self.running.await.expect("join").expect("clean shutdown");
        self._dir
    }

    async fn client(&self) -> ShardServiceClient<Channel> {
        ShardServiceClient::connect(format!("http://{}", self.grpc)).await.expect("connect")
    }
}

/// Waits until `engine` has the table `name` attached.
async fn until_attached(engine: &Engine, name: &str) {
    for _ in 0..100 {
        if engine.hot_table(name).is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("table {name} never reached the node");
}

/// The ids a scan of one shard on `node` returns, sorted.
async fn scan_ids(node: &Node, shard: &ShardRecord, epoch: u64) -> Result<Vec<i64>, tonic::Status> {
    let request = ScanShardRequest {
        table_id: shard.table_id.0,
        shard_id: shard.shard_id.0,
        epoch,
        projection: vec![0],
        all_columns: false,
        limit: None,
        filter: None,
        snapshot: 0,
    };
    let mut stream = node.client().await.scan_shard(request).await?.into_inner();
    let mut ids = Vec::new();
    while let Some(reply) = stream.message().await? {
        let batches: Vec<RecordBatch> = StreamReader::try_new(std::io::Cursor::new(reply.arrow_ipc), None)
            .expect("ipc")
            .collect::<Result<_, _>>()
            .expect("batches");
        for b in batches {
            ids.extend(b.column(0).as_primitive::<Int64Type>().values().iter());
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Rows `(id, id)` of table `t` as an Arrow IPC stream.
fn arrow_ipc_of(engine: &Engine, ids: Vec<i64>) -> Vec<u8> {
    rows_of(engine, "t", ids)
}

/// Rows `(id, id)` of table `table` as an Arrow IPC stream.
fn rows_of(engine: &Engine, table: &str, ids: Vec<i64>) -> Vec<u8> {
    let schema = engine.hot_table(table).expect("table").schema();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![Arc::new(arrow::array::Int64Array::from(ids.clone())), Arc::new(arrow::array::Int64Array::from(ids))],
    )
    .expect("batch");
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema).expect("writer");
    writer.write(&batch).expect("write");
    writer.finish().expect("finish");
    writer.into_inner().expect("bytes")
}

fn request(
    shard: &ShardRecord,
    epoch: u64,
    from: u64,
    chunks: &[(u64, Vec<u8>, Vec<u8>)],
    next: u64,
) -> ReplicateRequest {
    ReplicateRequest {
        table_id: shard.table_id.0,
        shard_id: shard.shard_id.0,
        epoch,
        from_node: from,
        added: chunks
            .iter()
            .map(|(seq, index, data)| ReplicatedChunk { seq: *seq, index_entry: index.clone(), data: data.clone() })
            .collect(),
        removed: vec![],
        next_seq: next,
        lsn: 0,
        term: 0,
        commit_through: 0,
        discard_after: None,
        reset: false,
        keep: vec![],
        resolved: vec![],
        txn: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_replicates_its_chunks_to_a_backup_and_a_deposed_one_is_refused() {
    let cold = tempfile::tempdir().expect("tempdir");
    let one = start(1, vec![], cold.path()).await;
    let two = start(2, vec![one.grpc.clone()], cold.path()).await;
    one.engine
        .execute_one("CREATE TABLE t (id BIGINT PRIMARY KEY, v BIGINT) WITH (shards = 1, replicas = 2)")
        .await
        .expect("create");
    until_attached(&two.engine, "t").await;
    let table = one.engine.hot_table("t").expect("table").def().id;
    let shard: ShardRecord =
        one.engine.meta().read_local(|s| s.table_shards(table).next().cloned()).expect("the table's shard");
    assert_eq!(shard.replicas.len(), 2, "{shard:?}");
    let (primary, backup) = if shard.primary == 1 { (&one, &two) } else { (&two, &one) };
    let backup_id = if shard.primary == 1 { 2 } else { 1 };
    until_attached(&primary.engine, "t").await;

    primary
        .engine
        .execute_one("INSERT INTO t SELECT value, value + 0 FROM generate_series(1, 500)")
        .await
        .expect("insert");
    primary.engine.execute_one("INSERT INTO t VALUES (501, 0)").await.expect("insert");
    let (chunks, next_seq) = primary.engine.committed_chunks(table, shard.shard_id).await.expect("chunks");
    assert!(chunks.len() >= 2, "two inserts, two chunks at least");
    let all: Vec<i64> = (1..=501).collect();
    assert_eq!(scan_ids(primary, &shard, shard.epoch).await.expect("scan the primary"), all);
    // Inserts route to the primary, which acknowledges once the backup has every change: the backup holds every
    // chunk under the primary's number, with the same index entries and data (committed there once the primary's
    // commit point reaches it, with its next change or within a push interval).
    let mut copied = Vec::new();
    for _ in 0..100 {
        copied = backup.engine.committed_chunks(table, shard.shard_id).await.expect("backup chunks").0;
        if copied == chunks {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(copied, chunks, "the same numbers, index entries and data on both replicas");
    assert_eq!(scan_ids(backup, &shard, shard.epoch).await.expect("scan the backup"), all);
    // The same rows through the other node: its statement reads the shard on the primary.
    let counted = backup.engine.execute_one("SELECT count(*) FROM t").await.expect("count").collect().await;
    assert_eq!(counted.expect("rows")[0].column(0).as_primitive::<Int64Type>().value(0), 501);

    // Chunks sent again (as a catch-up sends them) change nothing.
    let mut client = backup.client().await;
    let again = client.replicate(request(&shard, shard.epoch, shard.primary, &chunks, next_seq)).await.expect("again");
    assert_eq!((again.get_ref().chunks, again.get_ref().rows), (chunks.len() as u64, 501), "applied once");
    // A catch-up that would bring the backup back to an empty log (a primary that lost its disk and took itself for
    // the shard's primary) is refused, and the backup keeps every row.
    let mut wipe = request(&shard, shard.epoch, shard.primary, &[], next_seq);
    wipe.reset = true;
    let refused = client.replicate(wipe).await.expect_err("a reset below the backup's commit point");
    assert!(refused.message().contains("the sender's log is behind"), "{}", refused.message());
    assert_eq!(backup.engine.committed_chunks(table, shard.shard_id).await.expect("backup chunks").0, chunks);

    // The DataFusion leaf of a remote shard scan: an unreachable replica is skipped, the next one answers.
    let remote = |replicas: Vec<String>, projection: Option<Vec<usize>>| {
        let schema = one.engine.hot_table("t").expect("table").schema();
        let projected = match &projection {
            Some(p) => Arc::new(schema.project(p).expect("project")),
            None => schema,
        };
        Arc::new(RemoteShardScanExec::new(
            table,
            shard.shard_id,
            shard.epoch,
            replicas,
            projection,
            projected,
            None,
            Duration::from_secs(2),
            64 << 20,
        ))
    };
    let task = one.engine.session().task_ctx();
    let unreachable = "127.0.0.1:1".to_string();
    let read = datafusion::physical_plan::collect(
        remote(vec![unreachable.clone(), backup.grpc.clone()], None),
        Arc::clone(&task),
    )
    .await
    .expect("remote scan");
    let mut ids: Vec<i64> =
        read.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()).collect();
    ids.sort_unstable();
    assert_eq!(ids, all, "every row of the shard, from the second replica");
    let counted =
        datafusion::physical_plan::collect(remote(vec![primary.grpc.clone()], Some(vec![])), Arc::clone(&task))
            .await
            .expect("row counts only");
    assert_eq!(counted.iter().map(RecordBatch::num_rows).sum::<usize>(), 501);
    // Filters travel as SQL: the replica sends only the rows they keep.
    let scan = Arc::try_unwrap(remote(vec![primary.grpc.clone()], Some(vec![0]))).expect("one owner");
    let filtered = datafusion::physical_plan::collect(
        Arc::new(scan.with_filter(Some("id > 490 AND v IS NOT NULL".into()))),
        Arc::clone(&task),
    )
    .await
    .expect("a filtered remote scan");
    assert_eq!(filtered.iter().map(RecordBatch::num_rows).sum::<usize>(), 11);
    // Only the primary tiers a replicated shard; every copy then reads the rows from the files, once.
    assert_eq!(backup.engine.tier("t").await.expect("tier on the backup").rows, 0);
    let tiered = primary.engine.tier("t").await.expect("tier on the primary");
    assert_eq!(tiered.rows, all.len() as u64, "{tiered:?}");
    assert_eq!(scan_ids(backup, &shard, shard.epoch).await.expect("the backup reads the files"), all);
    assert_eq!(scan_ids(primary, &shard, shard.epoch).await.expect("and so does the primary"), all);
    let failed = datafusion::physical_plan::collect(remote(vec![unreachable], None), task).await;
    let message = failed.expect_err("no replica reachable").to_string();
    assert!(message.contains("no replica could be scanned"), "{message}");

    // Requests that do not match the shard's configuration are refused, retryably, and change nothing.
    let from_backup = client.replicate(request(&shard, shard.epoch, backup_id, &chunks, next_seq)).await;
    let status = from_backup.expect_err("a sender that is not the primary");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("not its primary"), "{}", status.message());
    let newer = client.replicate(request(&shard, shard.epoch + 5, shard.primary, &chunks, next_seq)).await;
    assert_eq!(newer.expect_err("an epoch the cluster never had").code(), Code::Unavailable);
    let mut garbage = request(&shard, shard.epoch, shard.primary, &chunks, next_seq);
    garbage.added[0].seq = 10_000;
    garbage.added[0].index_entry = vec![1, 2, 3];
    let status = client.replicate(garbage).await.expect_err("a malformed chunk");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // The metadata group moves the shard to a new epoch without the backup: the old primary's changes at the old
    // epoch are refused from now on, and so are scans planned at it.
    let moved = MetaCommand::SetShardReplicas {
        shard_id: shard.shard_id,
        replicas: vec![shard.primary],
        in_sync: vec![shard.primary],
        primary: shard.primary,
        expected_epoch: Some(shard.epoch),
    };
    one.engine.meta().propose(moved).await.expect("propose").into_result().expect("committed");
    let epoch = shard.epoch + 1;
    until_epoch(backup, shard.shard_id, epoch).await;
    let stale = client.replicate(request(&shard, shard.epoch, shard.primary, &chunks, next_seq)).await;
    let status = stale.expect_err("a change at the old epoch");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("epoch"), "{}", status.message());
    assert_eq!(
        scan_ids(backup, &shard, shard.epoch).await.expect_err("a scan at the old epoch").code(),
        Code::Unavailable
    );
    until_epoch(primary, shard.shard_id, epoch).await;
    assert_eq!(scan_ids(primary, &shard, epoch).await.expect("at the new epoch"), all);
    // A scan planned at the old epoch, refused by every replica it was given, asks where the shard is now and reads
    // it there; without a locator it fails, retryably.
    let stale_plan = || remote(vec![backup.grpc.clone()], Some(vec![0]));
    let refused = datafusion::physical_plan::collect(stale_plan(), one.engine.session().task_ctx()).await;
    assert!(refused.expect_err("planned at the old epoch").to_string().contains("epoch"));
    let located =
        Arc::try_unwrap(stale_plan()).expect("one owner").with_locator(Arc::new(Located(Arc::clone(&one.engine))));
    let read = datafusion::physical_plan::collect(Arc::new(located), one.engine.session().task_ctx())
        .await
        .expect("relocated to the new epoch");
    let mut ids: Vec<i64> =
        read.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()).collect();
    ids.sort_unstable();
    assert_eq!(ids, all);

    // Rows routed to the shard's primary are refused by a node that is not the primary, at another epoch, below
    // min_in_sync, or when they are not Arrow IPC.
    let rows = |ids: Vec<i64>| arrow_ipc_of(&primary.engine, ids);
    let write = |node: &Node, epoch: u64, ids: Vec<i64>| {
        let request =
            WriteShardRequest { table_id: table.0, shard_id: shard.shard_id.0, epoch, arrow_ipc: rows(ids), txn: 0 };
        let addr = node.grpc.clone();
        async move {
            ShardServiceClient::connect(format!("http://{addr}")).await.expect("connect").write_shard(request).await
        }
    };
    // One copy of the table's two is in sync: below min_in_sync (2 by default), writes are refused.
    let refused = write(primary, epoch, vec![601]).await.expect_err("one copy of two in sync");
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(refused.message().contains("min_in_sync"), "{}", refused.message());
    let not_primary = write(backup, epoch, vec![604]).await.expect_err("a backup takes no writes");
    assert_eq!(not_primary.code(), Code::Unavailable);
    assert!(not_primary.message().contains("not its primary"), "{}", not_primary.message());
    let stale = write(primary, epoch - 1, vec![604]).await.expect_err("an old epoch");
    assert_eq!(stale.code(), Code::Unavailable);
    let garbage =
        WriteShardRequest { table_id: table.0, shard_id: shard.shard_id.0, epoch, arrow_ipc: vec![1, 2], txn: 0 };
    let status = primary.client().await.write_shard(garbage).await.expect_err("not Arrow IPC");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(scan_ids(primary, &shard, epoch).await.expect("scan"), all, "the refused writes left nothing");

    // A member of a cluster of several nodes that comes back with a cold store only it can read is refused.
    let dir = two.stop().await;
    let config = Config::load(None, Vec::new(), &overrides(2, dir.path(), vec![], None)).expect("config");
    let Err(refused) = Server::bind(config).await else { panic!("a node-local cold store in a cluster was accepted") };
    assert!(refused.to_string().contains("cold.store"), "{refused}");
    one.stop().await;
}

/// A shard's current primary and epoch, as a node's metadata replica knows them after a linearizable read.
#[derive(Debug)]
struct Located(Arc<Engine>);

#[async_trait::async_trait]
impl quiver_node::ShardLocator for Located {
    async fn locate(&self, _table: quiver_meta::TableId, shard: ShardId) -> Result<(u64, String), String> {
        self.0.meta().read_state(|_| ()).await.map_err(|e| e.to_string())?;
        self.0
            .meta()
            .read_local(|s| {
                let record = s.shard(shard)?;
                Some((record.epoch, s.node(record.primary)?.grpc_addr.clone()))
            })
            .ok_or_else(|| "no such shard".to_string())
    }
}

/// Waits until `node` has applied epoch `epoch` of shard `shard`; returns its record there.
async fn until_epoch(node: &Node, shard: ShardId, epoch: u64) -> ShardRecord {
    for _ in 0..200 {
        if let Some(record) = node.engine.meta().read_local(|s| s.shard(shard).cloned())
            && record.epoch >= epoch
        {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("node never reached epoch {epoch} of shard {shard}");
}

/// Waits until `node` has applied a configuration of `shard` with these replicas, all in sync, and this primary;
/// returns its record there.
async fn until_config(node: &Node, shard: ShardId, replicas: &[u64], primary: u64) -> ShardRecord {
    for _ in 0..200 {
        if let Some(record) = node.engine.meta().read_local(|s| s.shard(shard).cloned())
            && record.replicas == replicas
            && record.in_sync == replicas
            && record.primary == primary
        {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("node never applied the configuration {replicas:?} led by {primary} of shard {shard}");
}

/// Waits until a scan of `shard` on `node`, at the shard's epoch there (`epoch` or later), returns `expected`.
async fn until_rows(node: &Node, shard: &ShardRecord, epoch: u64, expected: &[i64]) {
    let mut last = Vec::new();
    for _ in 0..200 {
        let now = node.engine.meta().read_local(|s| s.shard(shard.shard_id).map(|r| r.epoch)).unwrap_or(epoch);
        // A scan at an epoch that moved meanwhile is refused: asked again at the next one.
        if let Ok(ids) = scan_ids(node, shard, now.max(epoch)).await {
            last = ids;
            if last == expected {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let record = node.engine.meta().read_local(|s| s.shard(shard.shard_id).cloned());
    let held = node
        .engine
        .replica_status(
            shard.table_id,
            shard.shard_id,
            record.as_ref().map_or(0, |r| r.epoch),
            record.as_ref().map_or(0, |r| r.primary),
        )
        .await;
    panic!(
        "node {} shows {} rows of shard {}, not {}; its configuration {record:?}, its replica {held:?}",
        node.grpc,
        last.len(),
        shard.shard_id,
        expected.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_acknowledges_only_what_every_in_sync_copy_holds_and_drops_a_backup_that_fails() {
    let cold = tempfile::tempdir().expect("tempdir");
    let one = start(1, vec![], cold.path()).await;
    let two = start(2, vec![one.grpc.clone()], cold.path()).await;
    let three = start(3, vec![one.grpc.clone()], cold.path()).await;
    for (name, replicas) in [("t3", 3), ("t2", 2)] {
        one.engine
            .execute_one(&format!(
                "CREATE TABLE {name} (id BIGINT PRIMARY KEY, v BIGINT) WITH (shards = 1, replicas = {replicas})"
            ))
            .await
            .expect("create");
    }
    for node in [&one, &two, &three] {
        until_attached(&node.engine, "t3").await;
        until_attached(&node.engine, "t2").await;
    }
    // Node 1 leads both shards; node 3 is a backup of both, node 2 of the first (the default min_in_sync is 2).
    let shard_of = |name: &str| {
        let table = one.engine.hot_table(name).expect("table").def().id;
        one.engine.meta().read_local(|s| s.table_shards(table).next().cloned()).expect("the table's shard")
    };
    let mut shards = Vec::new();
    let replicas_of = |name: &str| if name == "t3" { vec![1, 2, 3] } else { vec![1, 3] };
    for name in ["t3", "t2"] {
        let replicas = replicas_of(name);
        let shard = shard_of(name);
        let placed = MetaCommand::SetShardReplicas {
            shard_id: shard.shard_id,
            replicas: replicas.clone(),
            in_sync: replicas,
            primary: 1,
            expected_epoch: None,
        };
        one.engine.meta().propose(placed).await.expect("propose").into_result().expect("placed");
        let placed = until_config(&one, shard.shard_id, &replicas_of(name), 1).await;
        for node in [&two, &three] {
            until_epoch(node, shard.shard_id, placed.epoch).await;
        }
        shards.push((name, placed));
    }
    let (t3, t2) = (shards[0].1.clone(), shards[1].1.clone());
    let write = |table: &'static str, shard: &ShardRecord, epoch: u64, ids: Vec<i64>| {
        let request = WriteShardRequest {
            table_id: shard.table_id.0,
            shard_id: shard.shard_id.0,
            epoch,
            arrow_ipc: rows_of(&one.engine, table, ids),
            txn: 0,
        };
        let addr = one.grpc.clone();
        async move {
            ShardServiceClient::connect(format!("http://{addr}")).await.expect("connect").write_shard(request).await
        }
    };

    // Every write is on every in-sync copy before it is acknowledged, under the same numbers; backups make it
    // visible once the primary's commit point reaches them (with the next change, or pushed on its own).
    let first: Vec<i64> = (1..=300).collect();
    assert_eq!(write("t3", &t3, t3.epoch, first.clone()).await.expect("write").into_inner().rows, 300);
    let second: Vec<i64> = (301..=310).collect();
    assert_eq!(write("t3", &t3, t3.epoch, second).await.expect("write").into_inner().rows, 10);
    assert_eq!(write("t2", &t2, t2.epoch, first.clone()).await.expect("write").into_inner().rows, 300);
    let all: Vec<i64> = (1..=310).collect();
    for node in [&one, &two, &three] {
        until_rows(node, &t3, t3.epoch, &all).await;
    }
    until_rows(&three, &t2, t2.epoch, &first).await;
    let (chunks, _) = one.engine.committed_chunks(t3.table_id, t3.shard_id).await.expect("primary chunks");
    for node in [&two, &three] {
        let (copied, _) = node.engine.committed_chunks(t3.table_id, t3.shard_id).await.expect("backup chunks");
        assert_eq!(copied, chunks, "the same chunks, numbers and data on every copy");
    }
    // Rows of another shard, or that do not fit the table, are refused before anything is written.
    let t2_rows = WriteShardRequest {
        table_id: t3.table_id.0,
        shard_id: t3.shard_id.0,
        epoch: t3.epoch,
        arrow_ipc: vec![9, 9, 9],
        txn: 0,
    };
    let status = one.client().await.write_shard(t2_rows).await.expect_err("not Arrow IPC");
    assert_eq!(status.code(), Code::InvalidArgument);

    // A backup that fails is taken out of the in-sync set (a new epoch) before the write is acknowledged.
    three.stop().await;
    let third: Vec<i64> = (311..=320).collect();
    let written = write("t3", &t3, t3.epoch, third).await.expect("acknowledged by the copies still in sync");
    assert_eq!(written.into_inner().rows, 10);
    let after = until_epoch(&one, t3.shard_id, t3.epoch + 1).await;
    assert_eq!((after.in_sync.clone(), after.replicas.clone(), after.primary), (vec![1, 2], vec![1, 2, 3], 1));
    let all: Vec<i64> = (1..=320).collect();
    until_epoch(&two, t3.shard_id, after.epoch).await;
    until_rows(&two, &t3, after.epoch, &all).await;
    // A write planned at the old epoch is refused: the shard moved on.
    let stale = write("t3", &t3, t3.epoch, vec![999]).await.expect_err("an old epoch");
    assert_eq!(stale.code(), Code::Unavailable, "{stale:?}");

    // With its only backup gone, a shard of two copies falls below min_in_sync: the write that finds out took
    // effect on the primary alone and says its outcome is unknown; the next one is refused and writes nothing.
    let status = write("t2", &t2, t2.epoch, vec![301]).await.expect_err("fewer copies than min_in_sync");
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(status.message().contains("min_in_sync"), "{}", status.message());
    let t2_after = until_epoch(&one, t2.shard_id, t2.epoch + 1).await;
    assert_eq!(t2_after.in_sync, vec![1]);
    let status = write("t2", &t2, t2_after.epoch, vec![302]).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("min_in_sync"), "{}", status.message());
    let mut expected = first.clone();
    expected.push(301);
    assert_eq!(scan_ids(&one, &t2, t2_after.epoch).await.expect("scan"), expected);
    let metrics = one.engine.metrics().render(0, 0, &Default::default());
    assert!(metrics.contains("quiver_shard_in_sync_removals_total 2"), "{metrics}");
    assert!(metrics.contains("quiver_shard_outcome_unknown_total 1"), "{metrics}");

    // The metadata group hands the shard to node 2: node 1 takes no more writes for it, node 2 does, and
    // replicates them to node 1 under the next number of the same log.
    let handed = MetaCommand::SetShardReplicas {
        shard_id: t3.shard_id,
        replicas: vec![1, 2, 3],
        in_sync: vec![1, 2],
        primary: 2,
        expected_epoch: Some(after.epoch),
    };
    one.engine.meta().propose(handed).await.expect("propose").into_result().expect("handed over");
    let moved = until_epoch(&two, t3.shard_id, after.epoch + 1).await;
    until_epoch(&one, t3.shard_id, moved.epoch).await;
    let deposed = write("t3", &t3, moved.epoch, vec![998]).await.expect_err("not the primary any more");
    assert!(deposed.message().contains("not its primary"), "{}", deposed.message());
    let request = WriteShardRequest {
        table_id: t3.table_id.0,
        shard_id: t3.shard_id.0,
        epoch: moved.epoch,
        arrow_ipc: rows_of(&two.engine, "t3", vec![321, 322]),
        txn: 0,
    };
    assert_eq!(two.client().await.write_shard(request).await.expect("the new primary").into_inner().rows, 2);
    let all: Vec<i64> = (1..=322).collect();
    until_rows(&one, &t3, moved.epoch, &all).await;
    until_rows(&two, &t3, moved.epoch, &all).await;
    two.stop().await;
    one.stop().await;
}

/// Failure detection fast enough for a test.
const FAST_FAILOVER: &[(&str, &str)] = &[
    ("QUIVER_CLUSTER__NODE_HEARTBEAT_INTERVAL", "200ms"),
    ("QUIVER_CLUSTER__NODE_DOWN_AFTER", "3s"),
    ("QUIVER_CLUSTER__HEARTBEAT_INTERVAL", "100ms"),
    ("QUIVER_CLUSTER__ELECTION_TIMEOUT_MIN", "400ms"),
    ("QUIVER_CLUSTER__ELECTION_TIMEOUT_MAX", "800ms"),
];

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// Three nodes at fixed addresses (returned) that fail shards over quickly, and a table `name` (`id`, `v`) of one
/// shard with a copy on each, led by node 2 (node 1 leads the metadata group, which must stay up to fail the shard
/// over); returns the table's id and the shard's placed configuration too.
async fn three_led_by_two(
    cold: &std::path::Path,
    name: &str,
) -> ([Node; 3], Vec<String>, quiver_meta::TableId, ShardRecord) {
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let tmp = || tempfile::tempdir().expect("tempdir");
    let one = start_on(1, tmp(), &addrs[0], vec![], cold, FAST_FAILOVER).await;
    let two = start_on(2, tmp(), &addrs[1], vec![addrs[0].clone()], cold, FAST_FAILOVER).await;
    let three = start_on(3, tmp(), &addrs[2], vec![addrs[0].clone()], cold, FAST_FAILOVER).await;
    one.engine
        .execute_one(&format!("CREATE TABLE {name} (id BIGINT PRIMARY KEY, v BIGINT) WITH (shards = 1, replicas = 3)"))
        .await
        .expect("create");
    for node in [&one, &two, &three] {
        until_attached(&node.engine, name).await;
    }
    let table = one.engine.hot_table(name).expect("table").def().id;
    let shard = one.engine.meta().read_local(|s| s.table_shards(table).next().cloned()).expect("shard");
    let placed = MetaCommand::SetShardReplicas {
        shard_id: shard.shard_id,
        replicas: vec![1, 2, 3],
        in_sync: vec![1, 2, 3],
        primary: 2,
        expected_epoch: None,
    };
    one.engine.meta().propose(placed).await.expect("propose").into_result().expect("placed");
    let placed = until_config(&two, shard.shard_id, &[1, 2, 3], 2).await;
    until_epoch(&one, shard.shard_id, placed.epoch).await;
    until_epoch(&three, shard.shard_id, placed.epoch).await;
    ([one, two, three], addrs, table, placed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_takes_over_a_primary_that_went_down_and_the_old_primary_catches_up_when_it_returns() {
    let cold = tempfile::tempdir().expect("tempdir");
    let ([one, two, three], addrs, table, placed) = three_led_by_two(cold.path(), "f").await;
    let shard = placed.clone();
    let write = |node: &Node, epoch: u64, ids: Vec<i64>| {
        let request = WriteShardRequest {
            table_id: table.0,
            shard_id: shard.shard_id.0,
            epoch,
            arrow_ipc: rows_of(&one.engine, "f", ids),
            txn: 0,
        };
        let addr = node.grpc.clone();
        async move {
            ShardServiceClient::connect(format!("http://{addr}")).await.expect("connect").write_shard(request).await
        }
    };
    write(&two, placed.epoch, (1..=100).collect()).await.expect("write");
    // Acknowledged, then the primary stops at once: its backups may hold this change prepared only.
    write(&two, placed.epoch, (101..=110).collect()).await.expect("write");
    let two_dir = two.stop().await;

    // The metadata leader marks node 2 down and promotes an in-sync backup at a new epoch; the new primary serves
    // every acknowledged row, and takes writes replicated to the remaining backup.
    let mut failed_over = None;
    for _ in 0..300 {
        let record = one.engine.meta().read_local(|s| s.shard(shard.shard_id).cloned()).expect("shard");
        if record.primary != 2 {
            failed_over = Some(record);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = failed_over.expect("the shard failed over");
    assert!(after.epoch > placed.epoch, "{after:?}");
    assert!(one.engine.raft_gauges().shard_failovers >= 1, "the failover is counted");
    assert_eq!((after.in_sync.contains(&2), after.replicas.clone()), (false, vec![1, 2, 3]), "{after:?}");
    let (new, other) = if after.primary == 1 { (&one, &three) } else { (&three, &one) };
    until_epoch(new, shard.shard_id, after.epoch).await;
    let acknowledged: Vec<i64> = (1..=110).collect();
    assert_eq!(scan_ids(new, &shard, after.epoch).await.expect("scan the new primary"), acknowledged);
    write(new, after.epoch, (111..=120).collect()).await.expect("write to the new primary");
    let all: Vec<i64> = (1..=120).collect();
    until_epoch(other, shard.shard_id, after.epoch).await;
    until_rows(other, &shard, after.epoch, &all).await;

    // Node 2 returns on its disk: a replica, not in sync. The primary catches it up and admits it; it then holds
    // exactly the primary's committed chunks, and takes the next change.
    let two = start_on(2, two_dir, &addrs[1], vec![addrs[0].clone()], cold.path(), FAST_FAILOVER).await;
    until_attached(&two.engine, "f").await;
    let mut report = None;
    for _ in 0..100 {
        match new.engine.catch_up_replica(table, shard.shard_id, 2).await {
            Ok(r) => {
                report = Some(r);
                break;
            }
            // Node 2 may not know the shard's current epoch or be reachable yet.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let report = report.expect("caught up");
    assert!(report.epoch > after.epoch, "{report:?}");
    let admitted = until_epoch(&two, shard.shard_id, report.epoch).await;
    assert!(admitted.in_sync.contains(&2), "{admitted:?}");
    let (theirs, _) = new.engine.committed_chunks(table, shard.shard_id).await.expect("primary chunks");
    let (mine, _) = two.engine.committed_chunks(table, shard.shard_id).await.expect("caught-up chunks");
    assert_eq!(mine, theirs, "the returning replica holds exactly the primary's committed chunks");
    write(new, report.epoch, (121..=130).collect()).await.expect("write with node 2 in sync");
    let all: Vec<i64> = (1..=130).collect();
    until_rows(&two, &shard, report.epoch, &all).await;
    // Caught up already: nothing moves.
    let again = new.engine.catch_up_replica(table, shard.shard_id, 2).await.expect("in sync");
    assert_eq!(again.chunks, 0);
    // The primary shows the move, finished (the chunks written while node 2 was away moved, by this catch-up or by
    // the primary's own round).
    let moved = format!(
        "SELECT phase, CAST(bytes_sent AS BIGINT), CAST(bytes_left AS BIGINT), CAST(epoch AS BIGINT), \
         CAST(chunks_sent AS BIGINT) FROM system.shard_moves WHERE table_name = 'f' AND shard_id = {} AND target = 2",
        shard.shard_id.0
    );
    let batches = new.engine.execute_one(&moved).await.expect("moves").collect().await.expect("moves");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1, "one move of the shard to node 2");
    let row = &batches.iter().find(|b| b.num_rows() > 0).expect("a row");
    assert_eq!(row.column(0).as_string::<i32>().value(0), "in-sync");
    let (sent, left, epoch, chunks) = (
        row.column(1).as_primitive::<Int64Type>().value(0),
        row.column(2).as_primitive::<Int64Type>().value(0),
        row.column(3).as_primitive::<Int64Type>().value(0),
        row.column(4).as_primitive::<Int64Type>().value(0),
    );
    assert!(sent > 0 && chunks > 0 && left == 0, "sent {sent} bytes in {chunks} chunks, {left} left");
    assert_eq!(epoch as u64, report.epoch);
    for node in [one, two, three] {
        node.stop().await;
    }
}

/// One number of the first row of a statement's answer on `node`.
async fn number(node: &Node, sql: &str) -> i64 {
    let batches = node.engine.execute_one(sql).await.expect(sql).collect().await.expect(sql);
    let column = batches[0].column(0);
    match column.data_type() {
        arrow::datatypes::DataType::Int64 => column.as_primitive::<Int64Type>().value(0),
        arrow::datatypes::DataType::UInt64 => column.as_primitive::<arrow::datatypes::UInt64Type>().value(0) as i64,
        other => panic!("{sql}: a {other} answer"),
    }
}

/// Three nodes, the second and third joined through the first, each serving statements; their cold tier in `cold`.
async fn three_serving(cold: &std::path::Path) -> (Node, Node, Node) {
    let one = start(1, vec![], cold).await;
    let two = start(2, vec![one.grpc.clone()], cold).await;
    let three = start(3, vec![one.grpc.clone()], cold).await;
    for node in [&one, &two, &three] {
        node.engine.execute_one("SELECT 1").await.expect("serving");
    }
    (one, two, three)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_through_any_node_are_stored_on_their_shards_copies_and_read_the_same_from_every_node() {
    let cold = tempfile::tempdir().expect("tempdir");
    let (one, two, three) = three_serving(cold.path()).await;
    let nodes = [&one, &two, &three];
    one.engine
        .execute_one("CREATE TABLE r (id BIGINT PRIMARY KEY, v BIGINT) WITH (shards = 4, replicas = 2)")
        .await
        .expect("create");
    for node in nodes {
        until_attached(&node.engine, "r").await;
    }
    // Each node takes a statement whose rows span every shard: each shard's rows go to its primary.
    for (i, node) in nodes.iter().enumerate() {
        let (lo, hi) = (i as i64 * 1000 + 1, i as i64 * 1000 + 1000);
        let sql = format!("INSERT INTO r SELECT value, {i} FROM generate_series({lo}, {hi})");
        node.engine.execute_one(&sql).await.expect("insert");
    }
    // Through the ingest path (a Flight DoPut or a pg COPY), on the third node.
    let schema = three.engine.hot_table("r").expect("table").schema();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(arrow::array::Int64Array::from_iter_values(3001..=3500)),
            Arc::new(arrow::array::Int64Array::from_iter_values((3001..=3500).map(|_| 3))),
        ],
    )
    .expect("batch");
    let stream = datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
        Arc::clone(&schema),
        futures::stream::iter(vec![Ok(batch)]),
    );
    assert_eq!(three.engine.append_stream("r", Box::pin(stream)).await.expect("append"), 500);

    // Every node reads every row, once.
    for node in nodes {
        assert_eq!(number(node, "SELECT count(*) FROM r").await, 3500);
        assert_eq!(number(node, "SELECT count(DISTINCT id) FROM r").await, 3500);
        assert_eq!(number(node, "SELECT sum(id) FROM r").await, 3500 * 3501 / 2);
        assert_eq!(number(node, "SELECT count(*) FROM r WHERE v = 3 AND id > 3400").await, 100);
    }
    // Scans of shards led elsewhere carry the statement's filters to their primaries.
    let plan = one.engine.execute_one("EXPLAIN SELECT id FROM r WHERE v = 3 AND id > 3400").await.expect("explain");
    let plan =
        arrow::util::pretty::pretty_format_batches(&plan.collect().await.expect("plan")).expect("text").to_string();
    assert!(plan.contains("ShardsScanExec") && plan.contains("filter=((v = 3) AND (id > 3400))"), "{plan}");
    // DELETE and UPDATE through any node change each shard on its primary, as a change its backups take too.
    let deleted = two.engine.execute_one("DELETE FROM r WHERE id <= 10 OR id > 3490").await.expect("delete");
    assert!(matches!(deleted, quiver_node::QueryOutput::Affected { rows: 20, .. }), "{deleted:?}");
    let updated = three.engine.execute_one("UPDATE r SET v = v + 100 WHERE r.id > 3000").await.expect("update");
    assert!(matches!(updated, quiver_node::QueryOutput::Affected { rows: 490, .. }), "{updated:?}");
    let key = one.engine.execute_one("UPDATE r SET id = id + 1").await.expect_err("the shard key");
    assert!(key.to_string().contains("shard key"), "{key}");
    for node in nodes {
        assert_eq!(number(node, "SELECT count(*) FROM r").await, 3480);
        assert_eq!(number(node, "SELECT count(*) FROM r WHERE v = 103").await, 490);
        assert_eq!(number(node, "SELECT min(id) FROM r").await, 11);
    }
    // A node stores only the shards placed on it, and each copy of a shard holds the same rows.
    let table = one.engine.hot_table("r").expect("table").def().id;
    let records: Vec<ShardRecord> = one.engine.meta().read_local(|s| s.table_shards(table).cloned().collect());
    assert_eq!(records.len(), 4);
    for record in &records {
        assert_eq!(record.replicas.len(), 2, "{record:?}");
        let mut held = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let sql = format!(
                "SELECT hot_rows FROM system.shards WHERE table_name = 'r' AND shard_id = {}",
                record.shard_id.0
            );
            let mut rows = number(node, &sql).await;
            // A backup commits a change once the primary's commit point reaches it.
            for _ in 0..100 {
                if !record.replicas.contains(&(i as u64 + 1)) || rows == held.first().copied().unwrap_or(rows) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                rows = number(node, &sql).await;
            }
            if record.replicas.contains(&(i as u64 + 1)) {
                held.push(rows);
            } else {
                assert_eq!(rows, 0, "node {} holds rows of shard {} not placed on it", i + 1, record.shard_id);
            }
        }
        assert_eq!(held.len(), 2);
        assert!(held[0] > 0 && held[0] == held[1], "shard {}: {held:?}", record.shard_id);
    }
    assert_eq!(records.iter().map(|r| r.primary).collect::<std::collections::BTreeSet<_>>().len(), 3, "{records:?}");

    // A table of one copy per shard tiers on each shard's node; every node reads the shard's cold rows from there.
    one.engine
        .execute_one("CREATE TABLE c (id BIGINT PRIMARY KEY, v BIGINT) WITH (shards = 3, replicas = 1)")
        .await
        .expect("create");
    for node in nodes {
        until_attached(&node.engine, "c").await;
    }
    two.engine.execute_one("INSERT INTO c SELECT value, 1 FROM generate_series(1, 900)").await.expect("insert");
    // A shard tiers a statement's rows once its part of the statement is settled (shortly after the acknowledgement,
    // in the background): rounds go on until every row was tiered, each counted by the round that moved it.
    let mut tiered = 0;
    for _ in 0..100 {
        for node in nodes {
            tiered += node.engine.tier("c").await.expect("tier").rows;
        }
        if tiered >= 900 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tiered, 900, "each shard tiered once, by the node holding it");
    for node in nodes {
        assert_eq!(number(node, "SELECT count(*) FROM c").await, 900);
        assert_eq!(number(node, "SELECT sum(id) FROM c WHERE id > 800").await, (801..=900).sum::<i64>());
    }
    for node in [three, two, one] {
        node.stop().await;
    }
}

/// The rows `engine` answers `sql` with, as sorted lines of text.
async fn answer(engine: &Engine, sql: &str) -> Vec<String> {
    let batches = engine.execute_one(sql).await.expect(sql).collect().await.expect(sql);
    let text = arrow::util::pretty::pretty_format_batches(&batches).expect("text").to_string();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_runs_its_shard_scans_on_the_nodes_leading_them_and_answers_as_one_node_does() {
    let cold = tempfile::tempdir().expect("tempdir");
    let (one, two, three) = three_serving(cold.path()).await;
    let nodes = [&one, &two, &three];
    // The same tables and rows in a cluster and on one embedded node.
    let single = Engine::open(quiver_node::StorageLocation::Memory, Default::default()).await.expect("open");
    let statements = [
        "CREATE TABLE f (id BIGINT PRIMARY KEY, k BIGINT, v DOUBLE) WITH (shards = 6, replicas = 2)",
        "CREATE TABLE d (k BIGINT PRIMARY KEY, name TEXT) WITH (shards = 3, replicas = 1)",
    ];
    for sql in statements {
        one.engine.execute_one(sql).await.expect(sql);
        single.execute_one(sql).await.expect(sql);
    }
    for node in nodes {
        until_attached(&node.engine, "f").await;
        until_attached(&node.engine, "d").await;
    }
    let inserts = [
        "INSERT INTO f SELECT value, value % 50, value * 0.5 FROM generate_series(1, 20000)",
        "INSERT INTO d SELECT value, 'k' || value FROM generate_series(0, 49)",
    ];
    for sql in inserts {
        two.engine.execute_one(sql).await.expect(sql);
        single.execute_one(sql).await.expect(sql);
    }
    let queries = [
        "SELECT count(*), sum(v), min(id), max(id) FROM f",
        "SELECT k, count(*), sum(v) FROM f GROUP BY k ORDER BY k",
        "SELECT d.name, count(*), max(f.v) FROM f JOIN d ON f.k = d.k WHERE f.id % 7 = 0 GROUP BY d.name",
        "SELECT id, v FROM f WHERE k = 3 ORDER BY id DESC LIMIT 5",
        "SELECT count(DISTINCT k) FROM f WHERE v > 100",
        "SELECT * FROM d WHERE k IN (SELECT k FROM f WHERE id < 4)",
        // A stage reading this node's own data (here, its catalog) with shards read elsewhere.
        "SELECT count(*) FROM f UNION ALL SELECT count(*) FROM information_schema.tables WHERE table_name = 'f'",
    ];
    for round in ["hot", "hot and cold"] {
        for sql in queries {
            let expected = answer(&single, sql).await;
            assert!(expected.len() > 4, "{sql}: {expected:?}");
            for node in nodes {
                let got = answer(&node.engine, sql).await;
                assert_eq!(got, expected, "{sql} on node {}, rows {round}", node.engine.node_id());
            }
        }
        // Each node tiers the shards it leads; more rows come in hot.
        let mut tiered = 0;
        for node in nodes {
            tiered += node.engine.tier("f").await.expect("tier").rows;
        }
        assert!(round != "hot" || tiered == 20_000, "{tiered} rows tiered");
        single.tier("f").await.expect("tier");
        let sql = "INSERT INTO f SELECT value, value % 50, value * 0.5 FROM generate_series(20001, 23000)";
        three.engine.execute_one(sql).await.expect(sql);
        single.execute_one(sql).await.expect(sql);
    }
    // EXPLAIN shows the stages, with a task scanning shards on each node that leads some.
    let explained = answer(&one.engine, "EXPLAIN SELECT k, count(*) FROM f WHERE v > 10 GROUP BY k").await.join("\n");
    assert!(explained.contains("DistributedExec") && explained.contains("Stage 1"), "{explained}");
    for node in nodes {
        let leads = format!("node {}: shards [", node.engine.node_id());
        assert!(explained.contains(&leads), "no scan task on node {}:\n{explained}", node.engine.node_id());
    }
    assert!(explained.contains("filter=") && explained.contains("v > 10"), "{explained}");
    // EXPLAIN ANALYZE shows the stages run, with rows and the bytes shipped into each network boundary.
    let analyzed = answer(&two.engine, "EXPLAIN ANALYZE SELECT k, count(*) FROM f GROUP BY k").await.join("\n");
    assert!(analyzed.contains("Stage 1") && analyzed.contains("bytes_transferred="), "{analyzed}");
    assert!(analyzed.contains("output_rows="), "{analyzed}");
    // system.queries gets the bytes a multi-stage query shipped between nodes once its tasks reported them; a query
    // that ran here alone shipped none.
    answer(&three.engine, "SELECT k, sum(v) FROM f GROUP BY k").await;
    answer(&three.engine, "SELECT count(*) FROM information_schema.tables").await;
    let logged = |query: &str, bytes: &str| {
        format!("SELECT count(*) FROM system.queries WHERE query = '{query}' AND bytes_shipped {bytes}")
    };
    let mut staged = 0;
    for _ in 0..100 {
        staged = number(&three, &logged("SELECT k, sum(v) FROM f GROUP BY k", "> 1000")).await;
        if staged == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = answer(&three.engine, "SELECT query, bytes_shipped FROM system.queries").await;
    assert_eq!(staged, 1, "{seen:#?}");
    let alone = logged("SELECT count(*) FROM information_schema.tables", "= 0");
    assert_eq!(number(&three, &alone).await, 1, "{seen:#?}");
    // EXPLAIN of what does not run as stages is DataFusion's.
    for sql in ["EXPLAIN SELECT count(*) FROM information_schema.tables", "EXPLAIN DELETE FROM f WHERE id = 1"] {
        let plan = answer(&two.engine, sql).await.join("\n");
        assert!(plan.contains("logical_plan") && !plan.contains("DistributedExec"), "{sql}: {plan}");
    }
    for node in [three, two, one] {
        node.stop().await;
    }
}

/// Waits until every shard of table `table`, as `node` knows the shard map, satisfies `done`; returns the shards.
async fn until_shards(
    node: &Node,
    table: quiver_meta::TableId,
    what: &str,
    done: impl Fn(&ShardRecord) -> bool,
) -> Vec<ShardRecord> {
    let mut records = Vec::new();
    for _ in 0..600 {
        records = node.engine.meta().read_local(|s| s.table_shards(table).cloned().collect::<Vec<_>>());
        if !records.is_empty() && records.iter().all(&done) {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: never; the shards are {records:#?}");
}

/// A committed chunk as a copy holds it: its number, index entry and data.
type Copied = (u64, Vec<u8>, Vec<u8>);

/// Checks that every copy of each shard holds exactly its primary's committed chunks.
async fn copies_equal(nodes: &[&Node], records: &[ShardRecord]) {
    for record in records {
        let holder = |id: u64| nodes.iter().find(|n| n.engine.node_id() == id).expect("a running holder");
        let table = record.table_id;
        let primary_chunks = || async {
            holder(record.primary).engine.committed_chunks(table, record.shard_id).await.expect("primary chunks").0
        };
        for backup in record.replicas.iter().filter(|n| **n != record.primary) {
            let (mut mine, mut theirs) = (Vec::new(), Vec::new());
            // A backup commits a change once the primary's commit point reaches it, and a part of a statement
            // spanning shards is settled on each copy in turn: both are read again until they agree.
            for _ in 0..100 {
                theirs = primary_chunks().await;
                mine = holder(*backup).engine.committed_chunks(table, record.shard_id).await.expect("chunks").0;
                if mine == theirs {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if mine != theirs {
                // Chunk numbers, and those whose contents differ: the bytes themselves say little.
                let numbers = |c: &[Copied]| c.iter().map(|c| c.0).collect::<Vec<_>>();
                let differ = |part: fn(&Copied) -> &Vec<u8>| -> Vec<u64> {
                    mine.iter()
                        .filter(|c| theirs.iter().any(|t| t.0 == c.0 && part(t) != part(c)))
                        .map(|c| c.0)
                        .collect()
                };
                // A chunk's index entry starts with two bytes, then rows, data bytes, written at, the statement that
                // wrote it, the version it became visible at and the statement removing it (little-endian u64s).
                let header = |c: &Copied| -> Vec<u64> {
                    c.1[2..50].chunks(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).collect()
                };
                let headers: Vec<_> = differ(|c| &c.1)
                    .into_iter()
                    .map(|seq| {
                        let at = |c: &[Copied]| c.iter().find(|c| c.0 == seq).map(header);
                        (seq, at(&mine), at(&theirs))
                    })
                    .collect();
                panic!(
                    "node {backup}'s copy of {record:?} holds chunks {:?}, its primary {:?}; differing in their \
                     metadata (backup's and primary's [rows, bytes, written, txn, visible from, removed by]): {:?}, \
                     in their rows: {:?}",
                    numbers(&mine),
                    numbers(&theirs),
                    headers,
                    differ(|c| &c.2)
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_get_their_copies_on_joining_nodes_and_move_off_nodes_that_are_gone_or_drained() {
    let cold = tempfile::tempdir().expect("tempdir");
    let addrs: Vec<String> = (0..4).map(|_| free_addr()).collect();
    let tmp = || tempfile::tempdir().expect("tempdir");
    let mut env = FAST_FAILOVER.to_vec();
    env.push(("QUIVER_CLUSTER__REPLICA_DOWN_TIMEOUT", "0s"));
    let join = vec![addrs[0].clone()];
    let one = start_on(1, tmp(), &addrs[0], vec![], cold.path(), &env).await;
    one.engine.execute_one("SELECT 1").await.expect("serving");
    // Created while the cluster has one node: one copy of each shard, though the table asks for two.
    one.engine
        .execute_one("CREATE TABLE m (id BIGINT PRIMARY KEY, v BIGINT) WITH (shards = 4, replicas = 2)")
        .await
        .expect("create");
    one.engine.execute_one("INSERT INTO m SELECT value, value * 2 FROM generate_series(1, 400)").await.expect("insert");
    let table = one.engine.hot_table("m").expect("table").def().id;
    assert!(one.engine.meta().read_local(|s| s.table_shards(table).all(|r| r.replicas == [1])));
    // A table of one copy, partly tiered: its shards move whole (cold files stay in the shared bucket).
    one.engine.execute_one("CREATE TABLE c (id BIGINT PRIMARY KEY) WITH (shards = 2, replicas = 1)").await.expect("c");
    one.engine.execute_one("INSERT INTO c SELECT value FROM generate_series(1, 300)").await.expect("insert");
    assert_eq!(one.engine.tier("c").await.expect("tier").rows, 300);
    one.engine.execute_one("INSERT INTO c SELECT value FROM generate_series(301, 400)").await.expect("insert");

    // Two nodes join: each shard gets its second copy, caught up by its primary and admitted in sync.
    let two = start_on(2, tmp(), &addrs[1], join.clone(), cold.path(), &env).await;
    let three = start_on(3, tmp(), &addrs[2], join.clone(), cold.path(), &env).await;
    let copied = until_shards(&one, table, "two in-sync copies of each shard", |r| {
        r.replicas.len() == 2 && r.in_sync.len() == 2
    })
    .await;
    copies_equal(&[&one, &two, &three], &copied).await;
    for node in [&one, &two, &three] {
        until_attached(&node.engine, "m").await;
        assert_eq!(number(node, "SELECT count(*) FROM m").await, 400);
    }

    // A node holding copies is gone for good (down, and the timeout is 0): its copies are made again on the others.
    let holds = |id: u64| copied.iter().filter(|r| r.replicas.contains(&id)).count();
    let (gone, two) = if holds(2) >= holds(3) { (two, three) } else { (three, two) };
    let gone_id = gone.engine.node_id();
    assert!(holds(gone_id) > 0);
    drop(gone.stop().await);
    let moved = until_shards(&one, table, "no copy on the node gone", |r| {
        !r.replicas.contains(&gone_id) && r.in_sync.len() == 2 && r.replicas.len() == 2
    })
    .await;
    copies_equal(&[&one, &two], &moved).await;
    two.engine
        .execute_one("INSERT INTO m SELECT value, value * 2 FROM generate_series(401, 500)")
        .await
        .expect("insert");
    for node in [&one, &two] {
        assert_eq!(number(node, "SELECT count(*) FROM m").await, 500);
    }

    // Node 1 is drained onto a fourth node, primaries included: the operator's command waits for it.
    let four = start_on(4, tmp(), &addrs[3], join.clone(), cold.path(), &env).await;
    until_attached(&four.engine, "m").await;
    let said =
        quiver_node::cli::admin::drain(&two.grpc, 1, false, Some(Duration::from_secs(60))).await.expect("drained");
    assert!(said.contains("drained"), "{said}");
    // The table of one copy moved too; its rows written after the move land on its new holder.
    four.engine.execute_one("INSERT INTO c SELECT value FROM generate_series(401, 450)").await.expect("insert");
    one.engine.execute_one("DELETE FROM c WHERE id > 400").await.expect("delete");
    let drained = until_shards(&two, table, "no copy on node 1", |r| {
        !r.replicas.contains(&1) && r.in_sync.len() == 2 && r.replicas.len() == 2
    })
    .await;
    let other = two.engine.node_id();
    assert!(drained.iter().all(|r| r.primary != 1 && r.replicas.contains(&other) && r.replicas.contains(&4)));
    copies_equal(&[&two, &four], &drained).await;
    four.engine
        .execute_one("INSERT INTO m SELECT value, value * 2 FROM generate_series(501, 600)")
        .await
        .expect("insert");
    until_attached(&four.engine, "c").await;
    let c = four.engine.hot_table("c").expect("table").def().id;
    // (A copy may be moving for balance meanwhile.)
    until_shards(&four, c, "one copy of each shard of c, off node 1", |r| {
        r.replicas.len() == 1 && r.primary != 1 && r.moving.is_none()
    })
    .await;
    for node in [&one, &two, &four] {
        assert_eq!(number(node, "SELECT count(*) FROM m").await, 600);
        assert_eq!(number(node, "SELECT sum(v) FROM m").await, 600 * 601);
        assert_eq!(number(node, "SELECT count(*) FROM c").await, 400);
        assert_eq!(number(node, "SELECT sum(id) FROM c").await, 400 * 401 / 2);
    }
    // The drained node deletes its rows of the shards that left it, and gets no new replica.
    let mut held = -1;
    for _ in 0..200 {
        held = number(
            &one,
            "SELECT CAST(coalesce(sum(hot_rows), 0) AS BIGINT) FROM system.shards WHERE table_name IN ('m', 'c')",
        )
        .await;
        if held == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(held, 0, "node 1 still holds rows of shards that left it");
    assert!(one.engine.metrics().shard_copies_deleted.get() >= 4);
    let caught_up: u64 = [&one, &two, &four].iter().map(|n| n.engine.metrics().shard_catch_ups.get()).sum();
    let sent: u64 = [&one, &two, &four].iter().map(|n| n.engine.metrics().shard_catch_up_bytes.get()).sum();
    assert!(caught_up >= 8 && sent > 0, "{caught_up} catch-ups, {sent} bytes");
    let moving = "SELECT count(*) FROM system.shards WHERE table_name IN ('m', 'c') AND catching_up <> ''";
    assert_eq!(number(&two, moving).await, 0);
    two.engine
        .execute_one("CREATE TABLE later (id BIGINT PRIMARY KEY) WITH (shards = 3, replicas = 2)")
        .await
        .expect("create");
    until_attached(&two.engine, "later").await;
    let later = two.engine.hot_table("later").expect("table").def().id;
    assert!(two.engine.meta().read_local(|s| s.table_shards(later).all(|r| !r.replicas.contains(&1))));
    let status = two.engine.meta().status();
    let member = status.members.iter().find(|m| m.node_id == 1).expect("node 1");
    assert!(member.draining && member.replicas == 0 && member.primaries == 0, "{member:?}");

    // With node 4 draining as well, a table of two copies gets one, on node 2: the cluster has other members, so a
    // write to it is refused (nothing written) until a second copy is in sync, never acknowledged on one disk.
    quiver_node::cli::admin::drain(&two.grpc, 4, false, None).await.expect("drain node 4");
    two.engine
        .execute_one("CREATE TABLE lone (id BIGINT PRIMARY KEY) WITH (shards = 1, replicas = 2)")
        .await
        .expect("create");
    until_attached(&two.engine, "lone").await;
    let lone = two.engine.hot_table("lone").expect("table").def().id;
    assert!(two.engine.meta().read_local(|s| s.table_shards(lone).all(|r| r.replicas == [other])));
    let refused = two.engine.execute_one("INSERT INTO lone VALUES (1), (2)").await.expect_err("one copy of two");
    assert!(refused.to_string().contains("min_in_sync"), "{refused}");
    assert_eq!(number(&two, "SELECT count(*) FROM lone").await, 0);
    // Once node 4 takes copies again, the shard gets its second one and takes writes.
    quiver_node::cli::admin::drain(&two.grpc, 4, true, None).await.expect("stop draining node 4");
    until_shards(&two, lone, "a second in-sync copy", |r| r.in_sync.len() == 2).await;
    two.engine.execute_one("INSERT INTO lone VALUES (1), (2)").await.expect("insert");
    until_attached(&four.engine, "lone").await;
    for node in [&two, &four] {
        assert_eq!(number(node, "SELECT sum(id) FROM lone").await, 3);
    }
    for node in [one, two, four] {
        node.stop().await;
    }
}

/// The hot rows of `table` held on every copy, as the nodes tell of the copies each holds.
async fn rows_held(nodes: &[&Node], table: &str) -> i64 {
    let sql =
        format!("SELECT CAST(coalesce(sum(hot_rows), 0) AS BIGINT) FROM system.shards WHERE table_name = '{table}'");
    let mut held = 0;
    for node in nodes {
        held += number(node, &sql).await;
    }
    held
}

/// Three nodes that hold a part undecided for 1 s before aborting it, sharing the cold directory `cold`, with a table
/// `w (id BIGINT PRIMARY KEY, <column>)` of four shards and two copies attached on each.
async fn three_with_w(cold: &std::path::Path, column: &str) -> (Node, Node, Node) {
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let tmp = || tempfile::tempdir().expect("tempdir");
    // (Rebalancing off: the tests follow each shard's primary as placed.)
    let env = [("QUIVER_CLUSTER__TRANSACTION_HOLD", "1s"), ("QUIVER_CLUSTER__REBALANCE", "false")];
    let one = start_on(1, tmp(), &addrs[0], vec![], cold, &env).await;
    let two = start_on(2, tmp(), &addrs[1], vec![addrs[0].clone()], cold, &env).await;
    let three = start_on(3, tmp(), &addrs[2], vec![addrs[0].clone()], cold, &env).await;
    let create = format!("CREATE TABLE w (id BIGINT PRIMARY KEY, {column}) WITH (shards = 4, replicas = 2)");
    one.engine.execute_one(&create).await.expect("create");
    for node in [&one, &two, &three] {
        until_attached(&node.engine, "w").await;
    }
    (one, two, three)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_spanning_shards_is_seen_whole_or_not_at_all_and_an_abandoned_part_is_aborted() {
    let cold = tempfile::tempdir().expect("tempdir");
    let (one, two, three) = three_with_w(cold.path(), "pad VARCHAR NOT NULL").await;
    let nodes = [&one, &two, &three];
    // A statement over every shard commits as one: each part is durable on its copies, and visible with the others.
    two.engine.execute_one("INSERT INTO w SELECT value, 'x' FROM generate_series(1, 1000)").await.expect("insert");
    for node in nodes {
        assert_eq!(number(node, "SELECT count(*) FROM w").await, 1000);
    }
    assert!(two.engine.metrics().transactions_committed.get() >= 1);
    // Wide rows send parts to the shards' primaries before the statement ends; a NULL in its last rows fails it
    // after that, and no row of it is ever seen.
    let failed = three
        .engine
        .execute_one(
            "INSERT INTO w SELECT value, CASE WHEN value = 100000 THEN NULL ELSE repeat('x', 300) END \
             FROM generate_series(1001, 100000)",
        )
        .await
        .expect_err("a NULL in a NOT NULL column");
    assert!(failed.to_string().to_lowercase().contains("null"), "{failed}");
    assert!(three.engine.metrics().transactions_aborted.get() >= 1, "parts were written before it failed");
    for node in nodes {
        assert_eq!(number(node, "SELECT count(*) FROM w").await, 1000);
    }
    // Every part is settled and the commits forgotten (an abort is kept, for a part whose answer was lost and that
    // lands late); the aborted parts' rows are gone from every copy (each node tells of the copies it holds).
    let aborted = nodes.iter().map(|n| n.engine.metrics().transactions_aborted.get()).sum::<u64>() as usize;
    let mut left = (usize::MAX, i64::MAX);
    for _ in 0..200 {
        let decisions = one.engine.meta().read_local(|s| s.transaction_count());
        let held = rows_held(&nodes, "w").await;
        left = (decisions, held);
        if left == (aborted, 2000) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, (aborted, 2000), "decisions kept, and rows held on the copies");

    // A part whose coordinator never decides stays unseen; after the hold its primary records an abort and removes it.
    one.engine
        .execute_one("CREATE TABLE o (id BIGINT PRIMARY KEY, v BIGINT) WITH (shards = 1, replicas = 2)")
        .await
        .expect("create");
    for node in nodes {
        until_attached(&node.engine, "o").await;
    }
    let o = one.engine.hot_table("o").expect("table").def().id;
    let shard = one.engine.meta().read_local(|s| s.table_shards(o).next().cloned()).expect("shard");
    let primary = nodes.iter().find(|n| n.engine.node_id() == shard.primary).expect("primary");
    let part = |txn: u64, ids: Vec<i64>| WriteShardRequest {
        table_id: o.0,
        shard_id: shard.shard_id.0,
        epoch: shard.epoch,
        arrow_ipc: rows_of(&one.engine, "o", ids),
        txn,
    };
    let abandoned = 0xabad_0001;
    assert_eq!(
        primary.client().await.write_shard(part(abandoned, vec![1, 2, 3])).await.expect("part").into_inner().rows,
        3
    );
    for node in nodes {
        assert_eq!(number(node, "SELECT count(*) FROM o").await, 0, "an undecided part is seen");
    }
    let mut decided = None;
    for _ in 0..200 {
        decided = one.engine.meta().read_local(|s| s.transaction(abandoned));
        if decided.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(decided.map(|d| d.commit), Some(false), "the primary records the abandoned statement's abort");
    let late = MetaCommand::DecideTransaction { txn: abandoned, commit: true, at_ms: 0 };
    let refused = one.engine.meta().propose(late).await.expect("answered").outcome;
    assert!(refused.is_err(), "a commit after the abort: {refused:?}");
    // A part whose commit is recorded is seen by every reader from then on, settled or not yet.
    let committed = 0xc0de_0001;
    primary.client().await.write_shard(part(committed, vec![10, 20])).await.expect("part");
    let decide = MetaCommand::DecideTransaction { txn: committed, commit: true, at_ms: 0 };
    assert!(one.engine.meta().propose(decide).await.expect("answered").outcome.is_ok());
    for node in nodes {
        node.engine.execute_one("SELECT 1").await.expect("serving");
        assert_eq!(number(node, "SELECT sum(id) FROM o").await, 30);
    }
    let mut held = -1;
    for _ in 0..200 {
        held = rows_held(&nodes, "o").await;
        if held == 4 && primary.engine.metrics().transaction_parts_settled.get() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(held, 4, "the aborted part is removed from both copies, the committed one kept");
    for node in nodes {
        assert_eq!(number(node, "SELECT sum(id) FROM o").await, 30);
    }
    for node in [one, two, three] {
        node.stop().await;
    }
}

/// `count(*)` and `sum(v - id)` of table `w` as `node` reads it, and how many distinct `v - id` it holds.
async fn offsets(node: &Node) -> (i64, i64, i64) {
    let sql = "SELECT count(*), CAST(coalesce(sum(v - id), 0) AS BIGINT), count(DISTINCT v - id) FROM w";
    let batches = node.engine.execute_one(sql).await.expect(sql).collect().await.expect(sql);
    let at = |i: usize| batches[0].column(i).as_primitive::<Int64Type>().value(0);
    (at(0), at(1), at(2))
}

/// Sends a DELETE of every row of table `w` to the primary of its first shard, as the part of statement `txn`
/// spanning shards whose coordinator never decides it; returns that primary.
async fn abandoned_delete<'a>(nodes: &[&'a Node], w: quiver_meta::TableId, txn: u64) -> &'a Node {
    let shard = nodes[0].engine.meta().read_local(|s| s.table_shards(w).next().cloned()).expect("shard");
    let primary = *nodes.iter().find(|n| n.engine.node_id() == shard.primary).expect("primary");
    let part = ChangeShardRequest {
        table_id: w.0,
        shard_id: shard.shard_id.0,
        epoch: shard.epoch,
        statement: "DELETE FROM w".into(),
        txn,
    };
    let answer = primary.client().await.change_shard(part).await.expect("part").into_inner();
    assert!(answer.rows > 0 && answer.tagged, "{answer:?}");
    primary
}

/// Runs UPDATEs of table `w` through `through` that fail in the shard holding row `id`, for each id of `ids`, after
/// other shards took their parts: `offsets` stays `expect` on every node of `nodes`.
async fn failed_updates_change_nothing(
    through: &Node,
    nodes: &[&Node],
    ids: impl IntoIterator<Item = i64>,
    expect: (i64, i64, i64),
) {
    for id in ids {
        let sql = format!("UPDATE w SET v = CASE WHEN id = {id} THEN NULL ELSE v + 1000 END");
        let failed = through.engine.execute_one(&sql).await.expect_err("a NULL in a NOT NULL column");
        assert!(failed.to_string().to_lowercase().contains("null"), "{failed}");
        for node in nodes {
            assert_eq!(offsets(node).await, expect, "after a failed statement, node {}", node.engine.node_id());
        }
    }
}

/// Runs `updates` UPDATEs of every row of table `w` (`rows` of them) through `writer` while `reader` reads it: every
/// answer holds every row with the same offset (a reader told to retry is counted, and tries again).
async fn readers_see_whole_statements(writer: &Node, reader: &Node, updates: usize, rows: i64) {
    let writing = {
        let engine = Arc::clone(&writer.engine);
        tokio::spawn(async move {
            for _ in 0..updates {
                engine.execute_one("UPDATE w SET v = v + 1").await.expect("update");
            }
        })
    };
    let (mut reads, mut retried) = (0, 0);
    while !writing.is_finished() {
        let sql = "SELECT count(*), count(DISTINCT v - id) FROM w";
        let read = match reader.engine.execute_one(sql).await {
            Ok(stream) => stream.collect().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match read {
            Ok(batches) => {
                let at = |i: usize| batches[0].column(i).as_primitive::<Int64Type>().value(0);
                assert_eq!((at(0), at(1)), (rows, 1), "a reader saw part of a statement");
                reads += 1;
            }
            Err(e) if e.contains("retry") => retried += 1,
            Err(e) => panic!("{e}"),
        }
    }
    writing.await.expect("writer");
    assert!(reads > 0, "{reads} reads, {retried} told to retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_or_update_spanning_shards_is_seen_whole_or_not_at_all() {
    let cold = tempfile::tempdir().expect("tempdir");
    let (one, two, three) = three_with_w(cold.path(), "v BIGINT NOT NULL").await;
    let nodes = [&one, &two, &three];
    one.engine
        .execute_one("INSERT INTO w SELECT value, value + 0 FROM generate_series(1, 1000)")
        .await
        .expect("insert");
    // An UPDATE of every shard through a node that leads some of them and not others commits as one statement.
    let before = two.engine.metrics().transactions_committed.get();
    two.engine.execute_one("UPDATE w SET v = v + 1").await.expect("update");
    assert!(two.engine.metrics().transactions_committed.get() > before, "one statement spanning shards");
    for node in nodes {
        assert_eq!(offsets(node).await, (1000, 1000, 1), "node {}", node.engine.node_id());
    }
    // A statement that fails in one shard after others changed rows takes no effect anywhere: for some of these
    // rows, the shard that fails is not the first one changed.
    failed_updates_change_nothing(&three, &nodes, 1..=8, (1000, 1000, 1)).await;
    assert!(three.engine.metrics().transactions_aborted.get() >= 1, "parts were written before a failure");
    // Readers on another node see each statement whole while statements spanning shards run: every row has the same
    // offset (a reader too old for a settled removal is told to retry).
    readers_see_whole_statements(&one, &three, 10, 1000).await;
    for node in nodes {
        assert_eq!(offsets(node).await, (1000, 11_000, 1), "node {}", node.engine.node_id());
    }
    // A DELETE over every shard, through the third node.
    three.engine.execute_one("DELETE FROM w WHERE id % 2 = 0").await.expect("delete");
    for node in nodes {
        assert_eq!(offsets(node).await, (500, 5_500, 1), "node {}", node.engine.node_id());
    }

    // A part whose coordinator never decides leaves the rows it removes in place, seen by everyone; after the hold
    // its primary records an abort and clears its marks, and the next statement changes the rows.
    let w = one.engine.hot_table("w").expect("table").def().id;
    abandoned_delete(&nodes, w, 0xabad_0002).await;
    for node in nodes {
        assert_eq!(offsets(node).await, (500, 5_500, 1), "an undecided removal took effect");
    }
    one.engine.execute_one("UPDATE w SET v = v + 1").await.expect("waits for the abandoned statement's abort");
    let decided = one.engine.meta().read_local(|s| s.transaction(0xabad_0002)).map(|d| d.commit);
    assert_ne!(decided, Some(true), "the abandoned statement is aborted");
    for node in nodes {
        assert_eq!(offsets(node).await, (500, 6_000, 1), "node {}", node.engine.node_id());
    }
    for node in [one, two, three] {
        node.stop().await;
    }
}

/// The transactions of table `table`'s shards' pending manifests, as `node` has applied the metadata.
fn pending_manifests(node: &Node, table: &str) -> Vec<u64> {
    let id = node.engine.hot_table(table).expect("table").def().id;
    node.engine.meta().read_local(|s| s.table_shards(id).filter_map(|r| r.pending.as_ref().map(|p| p.txn)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_or_update_spanning_shards_with_cold_files_is_seen_whole_or_not_at_all() {
    let cold = tempfile::tempdir().expect("tempdir");
    let (one, two, three) = three_with_w(cold.path(), "v BIGINT NOT NULL").await;
    let nodes = [&one, &two, &three];
    one.engine
        .execute_one("INSERT INTO w SELECT value, value + 0 FROM generate_series(1, 1000)")
        .await
        .expect("insert");
    // Every shard's rows go to its cold files (each primary tiers its own, once the insert's parts are settled),
    // and more rows stay hot.
    let mut tiered = 0;
    for _ in 0..100 {
        for node in nodes {
            tiered += node.engine.tier("w").await.expect("tier").rows;
        }
        if tiered >= 1000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tiered, 1000);
    one.engine
        .execute_one("INSERT INTO w SELECT value, value + 0 FROM generate_series(1001, 1200)")
        .await
        .expect("insert");
    // An UPDATE of every shard rewrites every shard's files (and moves its hot rows into a file): each shard's
    // manifest becomes current with the statement's commit, on every node at once.
    let before = two.engine.metrics().transactions_committed.get();
    two.engine.execute_one("UPDATE w SET v = v + 1").await.expect("update");
    assert!(two.engine.metrics().transactions_committed.get() > before, "one statement spanning shards");
    let w = one.engine.hot_table("w").expect("table").def().id;
    let decided: Vec<u64> = one
        .engine
        .meta()
        .read_state(|s| s.table_shards(w).map(|r| r.manifest.as_ref().map_or(0, |m| m.txn_version)).collect())
        .await
        .expect("state");
    assert!(
        decided.iter().all(|v| *v > 0 && *v == decided[0]),
        "every shard's manifest flipped at one decision: {decided:?}"
    );
    for node in nodes {
        assert_eq!(offsets(node).await, (1200, 1200, 1), "node {}", node.engine.node_id());
        assert_eq!(pending_manifests(node, "w"), Vec::<u64>::new());
    }
    // A statement that fails in one shard after others proposed their manifests takes no effect anywhere.
    failed_updates_change_nothing(&three, &nodes, [1, 2, 3, 5, 8, 13], (1200, 1200, 1)).await;
    assert!(three.engine.metrics().transactions_aborted.get() >= 1, "parts were proposed before a failure");
    assert_eq!(pending_manifests(&one, "w"), Vec::<u64>::new(), "the aborts dropped every proposal");
    // Readers on another node see each statement whole, in both tiers, while statements spanning shards run.
    readers_see_whole_statements(&one, &three, 5, 1200).await;
    three.engine.execute_one("DELETE FROM w WHERE id % 2 = 0").await.expect("delete");
    for node in nodes {
        assert_eq!(offsets(node).await, (600, 3_600, 1), "node {}", node.engine.node_id());
    }

    // A part whose coordinator never decides holds its proposal, and the rows stay as they were for everyone; after
    // the hold its primary records an abort, which drops the proposal, and the next statement changes the rows.
    let primary = abandoned_delete(&nodes, w, 0xabad_0003).await;
    assert_eq!(pending_manifests(primary, "w"), vec![0xabad_0003]);
    for node in nodes {
        assert_eq!(offsets(node).await, (600, 3_600, 1), "an undecided proposal took effect");
    }
    one.engine.execute_one("UPDATE w SET v = v + 1").await.expect("waits for the abandoned statement's abort");
    let decided = one.engine.meta().read_local(|s| s.transaction(0xabad_0003)).map(|d| d.commit);
    assert_ne!(decided, Some(true), "the abandoned statement is aborted");
    for node in nodes {
        assert_eq!(offsets(node).await, (600, 4_200, 1), "node {}", node.engine.node_id());
        assert_eq!(pending_manifests(node, "w"), Vec::<u64>::new());
    }
    for node in [one, two, three] {
        node.stop().await;
    }
}

/// `count(*)` and `sum(id)` of table `table` as `node` reads it.
async fn count_sum(node: &Node, table: &str) -> (i64, i64) {
    let sql = format!("SELECT count(*), CAST(coalesce(sum(id), 0) AS BIGINT) FROM {table}");
    let batches = node.engine.execute_one(&sql).await.expect(&sql).collect().await.expect(&sql);
    (
        batches[0].column(0).as_primitive::<Int64Type>().value(0),
        batches[0].column(1).as_primitive::<Int64Type>().value(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_shard_tiers_on_its_primary_and_every_copy_reads_its_rows_once_also_after_a_failover() {
    let cold = tempfile::tempdir().expect("tempdir");
    let ([one, two, three], _, table, shard) = three_led_by_two(cold.path(), "c").await;
    let sum = |lo: i64, hi: i64| (lo..=hi).sum::<i64>();
    one.engine.execute_one("INSERT INTO c SELECT value, 1 FROM generate_series(1, 1000)").await.expect("insert");

    // Only the primary tiers; every copy then reads the rows from the files, once, and drops its hot chunks.
    assert_eq!(one.engine.tier("c").await.expect("tier").rows, 0, "a backup does not tier");
    assert_eq!(two.engine.tier("c").await.expect("tier").rows, 1000);
    for node in [&one, &two, &three] {
        assert_eq!(count_sum(node, "c").await, (1000, sum(1, 1000)));
    }
    let mut held = -1;
    for _ in 0..100 {
        held = rows_held(&[&one, &two, &three], "c").await;
        if held == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(held, 0, "every copy dropped the tiered chunks");
    let record = one.engine.meta().read_local(|s| s.shard(shard.shard_id).cloned()).expect("shard");
    assert!(record.tiered_through > 0, "the shard's mark is in its record: {record:?}");

    // New rows are numbered above the mark and stay hot on every copy; a DELETE reaching the cold files commits
    // through the shard's manifest, which every copy follows.
    one.engine.execute_one("INSERT INTO c SELECT value, 2 FROM generate_series(1001, 1500)").await.expect("insert");
    three.engine.execute_one("DELETE FROM c WHERE id % 10 = 0").await.expect("delete across tiers");
    let left = (1350, sum(1, 1500) - (1..=150).map(|k| k * 10).sum::<i64>());
    for node in [&one, &two, &three] {
        assert_eq!(count_sum(node, "c").await, left);
    }

    // The primary goes: a backup takes over with the same rows, hot and cold, and tiers in its turn.
    let _dir = two.stop().await;
    let record = until_shards(&one, table, "a failover", |r| r.primary != 2 && !r.in_sync.contains(&2)).await;
    let primary = if record[0].primary == 1 { &one } else { &three };
    until_epoch(&three, shard.shard_id, record[0].epoch).await;
    for node in [&one, &three] {
        assert_eq!(count_sum(node, "c").await, left, "after the failover");
    }
    one.engine.execute_one("INSERT INTO c SELECT value, 3 FROM generate_series(1501, 1600)").await.expect("insert");
    let now = (left.0 + 100, left.1 + sum(1501, 1600));
    primary.engine.tier("c").await.expect("tier");
    for node in [&one, &three] {
        assert_eq!(count_sum(node, "c").await, now, "after the new primary tiered");
    }
    one.stop().await;
    three.stop().await;
}

/// What the writer and readers of a table saw while its shards moved.
#[derive(Debug, Default)]
struct Traffic {
    /// Statements of `BATCH` rows the writer had acknowledged.
    acknowledged: std::sync::atomic::AtomicI64,
    /// Answers the readers checked.
    answers: std::sync::atomic::AtomicU64,
    /// The first error or wrong answer.
    failure: std::sync::Mutex<Option<String>>,
    stop: std::sync::atomic::AtomicBool,
}

impl Traffic {
    fn fail(&self, what: String) {
        self.failure.lock().expect("failure lock").get_or_insert(what);
    }
}

const BATCH: i64 = 40;

/// Writes statements of `BATCH` rows (`id` counting up from `first`, `v = 2·id`) through `node` until told to stop.
async fn write_batches(engine: Arc<Engine>, first: i64, traffic: Arc<Traffic>) {
    use std::sync::atomic::Ordering;
    let mut next = first;
    while !traffic.stop.load(Ordering::SeqCst) {
        let sql = format!("INSERT INTO r SELECT value, value * 2 FROM generate_series({next}, {})", next + BATCH - 1);
        match engine.execute_one(&sql).await {
            Ok(_) => {
                next += BATCH;
                traffic.acknowledged.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                traffic.fail(format!("INSERT: {}", e.report()));
                return;
            }
        }
    }
}

/// Reads through `nodes` in turn until told to stop: every answer holds whole statements, each row once, and every
/// statement acknowledged before the query began (`base` rows loaded first).
async fn read_whole(nodes: Vec<Arc<Engine>>, base: i64, traffic: Arc<Traffic>) {
    use std::sync::atomic::Ordering;
    let sql = "SELECT count(*), count(DISTINCT id), coalesce(max(id), 0), coalesce(sum(v) - 2 * sum(id), 0) FROM r";
    let mut turn = 0;
    while !traffic.stop.load(Ordering::SeqCst) {
        let engine = &nodes[turn % nodes.len()];
        turn += 1;
        let before = traffic.acknowledged.load(Ordering::SeqCst);
        let batches = match engine.execute_one(sql).await {
            Ok(stream) => stream.collect().await,
            Err(e) => Err(e),
        };
        let after = traffic.acknowledged.load(Ordering::SeqCst);
        let batches = match batches {
            Ok(b) => b,
            Err(e) => return traffic.fail(format!("node {}: query: {}", engine.node_id(), e.report())),
        };
        let cell = |i: usize| batches[0].column(i).as_primitive::<Int64Type>().value(0);
        let (count, distinct, max, diff) = (cell(0), cell(1), cell(2), cell(3));
        let whole = (count - base) % BATCH == 0;
        let statements = (count - base) / BATCH;
        if count != distinct || count != max || diff != 0 || !whole || statements < before || statements > after + 1 {
            return traffic.fail(format!(
                "node {}: {count} rows, {distinct} distinct, max id {max}, sum(v) - 2·sum(id) = {diff}, with \
                 {before}..={after} statements acknowledged",
                engine.node_id()
            ));
        }
        traffic.answers.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_receives_shards_while_queries_and_ingest_run_and_a_drain_empties_a_node() {
    use std::sync::atomic::Ordering;
    let cold = tempfile::tempdir().expect("tempdir");
    let tmp = || tempfile::tempdir().expect("tempdir");
    let mut env = FAST_FAILOVER.to_vec();
    env.push(("QUIVER_CLUSTER__LOAD_REPORT_INTERVAL", "200ms"));
    let one = start_on(1, tmp(), "127.0.0.1:0", vec![], cold.path(), &env).await;
    let join = vec![one.grpc.clone()];
    let two = start_on(2, tmp(), "127.0.0.1:0", join.clone(), cold.path(), &env).await;
    let three = start_on(3, tmp(), "127.0.0.1:0", join.clone(), cold.path(), &env).await;
    let create = "CREATE TABLE r (id BIGINT PRIMARY KEY, v BIGINT) WITH (shards = 12, replicas = 2)";
    one.engine.execute_one(create).await.expect("create");
    let base = 4000;
    let load = format!("INSERT INTO r SELECT value, value * 2 FROM generate_series(1, {base})");
    two.engine.execute_one(&load).await.expect("load");
    let table = one.engine.hot_table("r").expect("table").def().id;
    let copies_on = |node: &Node, id: u64| {
        node.engine.meta().read_local(|s| s.table_shards(table).filter(|r| r.replicas.contains(&id)).count())
    };
    assert_eq!(copies_on(&one, 1) + copies_on(&one, 2) + copies_on(&one, 3), 24);

    // Ingest through node 2 and queries through nodes 1 and 3 run throughout.
    let traffic = Arc::new(Traffic::default());
    let writer = tokio::spawn(write_batches(Arc::clone(&two.engine), base + 1, Arc::clone(&traffic)));
    let readers = vec![Arc::clone(&one.engine), Arc::clone(&three.engine)];
    let reader = tokio::spawn(read_whole(readers, base, Arc::clone(&traffic)));

    // A fourth node joins: copies move to it, a few at a time, until every node holds six.
    let four = start_on(4, tmp(), "127.0.0.1:0", join.clone(), cold.path(), &env).await;
    let balanced = until_shards(&one, table, "six copies on each of four nodes, none moving", |_| {
        let moving = one.engine.meta().read_local(|s| s.table_shards(table).any(|r| r.moving.is_some()));
        !moving && (1..=4).all(|n| copies_on(&one, n) == 6)
    })
    .await;
    assert!(balanced.iter().all(|r| r.replicas.len() == 2 && r.in_sync.len() == 2), "{balanced:#?}");
    assert!(balanced.iter().any(|r| r.primary == 4), "node 4 leads shards too");
    let planned = quiver_node::cli::admin::rebalance(&three.grpc, true).await.expect("dry run");
    assert!(planned.contains("balanced: no move planned"), "{planned}");
    // The primaries show the moves to node 4 they made, each in sync now.
    let mut shown = 0;
    for node in [&one, &two, &three] {
        let sql = "SELECT count(*) FROM system.shard_moves WHERE target = 4 AND phase = 'in-sync'";
        shown += number(node, sql).await;
    }
    assert!(shown >= 6, "{shown} moves to node 4 shown");

    // Node 1 is drained while the traffic goes on: it ends up holding nothing, and nothing moves back to it.
    let said =
        quiver_node::cli::admin::drain(&two.grpc, 1, false, Some(Duration::from_secs(90))).await.expect("drained");
    assert!(said.contains("drained"), "{said}");
    let drained = until_shards(&two, table, "no copy on node 1, all in sync", |r| {
        !r.replicas.contains(&1) && r.in_sync.len() == 2 && r.moving.is_none()
    })
    .await;
    assert!(drained.iter().all(|r| r.primary != 1));

    traffic.stop.store(true, Ordering::SeqCst);
    writer.await.expect("writer");
    reader.await.expect("reader");
    if let Some(failure) = traffic.failure.lock().expect("failure lock").take() {
        panic!("{failure}");
    }
    let statements = traffic.acknowledged.load(Ordering::SeqCst);
    assert!(statements > 0 && traffic.answers.load(Ordering::SeqCst) > 0, "{traffic:?}");
    let rows = base + statements * BATCH;
    let drained = until_shards(&two, table, "every copy in sync", |r| r.in_sync.len() == 2).await;
    copies_equal(&[&two, &three, &four], &drained).await;
    for node in [&one, &two, &three, &four] {
        assert_eq!(number(node, "SELECT count(*) FROM r").await, rows, "node {}", node.engine.node_id());
        assert_eq!(number(node, "SELECT sum(v) - 2 * sum(id) FROM r").await, 0);
    }
    for node in [four, three, two, one] {
        node.stop().await;
    }
}
