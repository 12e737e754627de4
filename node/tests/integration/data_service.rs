//! The internal data service (`DataService` on the internal gRPC endpoint): statements and Arrow IPC appends from a
//! tonic client against a running server, and the errors bad requests get.

use std::sync::Arc;

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use quiver_node::config::{ByteSize, Config, Overrides};
use quiver_node::server::Server;
use quiver_proto::v1::data_service_client::DataServiceClient;
use quiver_proto::v1::{AppendRequest, CollectGarbageRequest, CompactRequest, ExecuteRequest, TierRequest};
use tonic::Code;
use tonic::transport::Channel;

fn ipc(batch: &RecordBatch) -> Vec<u8> {
    let mut writer = StreamWriter::try_new(Vec::new(), &batch.schema()).expect("writer");
    writer.write(batch).expect("write");
    writer.finish().expect("finish");
    writer.into_inner().expect("bytes")
}

fn rows(bytes: &[u8]) -> Vec<RecordBatch> {
    StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .expect("reader")
        .collect::<Result<_, _>>()
        .expect("batches")
}

/// Runs `quiver admin --connect ADDR ARGS…`: its output, and its standard output as text.
fn quiver_admin(addr: &str, args: &[&str]) -> (std::process::Output, String) {
    let admin = std::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["admin", "--connect", addr])
        .args(args)
        .output()
        .expect("run quiver admin");
    let said = String::from_utf8_lossy(&admin.stdout).into_owned();
    (admin, said)
}

async fn execute(
    client: &mut DataServiceClient<Channel>,
    sql: &str,
) -> Result<quiver_proto::v1::ExecuteReply, tonic::Status> {
    client.execute(ExecuteRequest { sql: sql.into() }).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_and_appends_over_the_internal_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let overrides = Overrides::loopback(dir.path().to_path_buf());
    let mut config = Config::load(None, Vec::new(), &overrides).expect("config");
    config.limits.flight_message_max = ByteSize(1 << 20);
    let server = Server::bind(config).await.expect("bind");
    let grpc = server.grpc_addr().expect("a server has an internal endpoint");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    let mut client = DataServiceClient::connect(format!("http://{grpc}")).await.expect("connect");

    let created =
        execute(&mut client, "CREATE TABLE t (id BIGINT NOT NULL, name TEXT) WITH (shards = 1)").await.expect("create");
    assert_eq!(created.command, "CREATE TABLE");
    assert!(created.arrow_ipc.is_empty());

    let schema =
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("name", DataType::Utf8, true)]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![Arc::new(Int64Array::from(vec![1, 2, 3])), Arc::new(StringArray::from(vec![Some("a"), None, Some("c")]))],
    )
    .expect("batch");
    let appended = client.append(AppendRequest { table: "t".into(), arrow_ipc: ipc(&batch) }).await.expect("append");
    assert_eq!(appended.into_inner().rows, 3);

    let inserted = execute(&mut client, "INSERT INTO t VALUES (4, 'd')").await.expect("insert");
    assert_eq!((inserted.command.as_str(), inserted.rows_affected), ("INSERT", 1));

    let selected = execute(&mut client, "SELECT id, name FROM t ORDER BY id").await.expect("select");
    assert_eq!(selected.command, "SELECT");
    let batches = rows(&selected.arrow_ipc);
    let ids: Vec<i64> =
        batches.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    let names: Vec<Option<String>> = batches
        .iter()
        .flat_map(|b| b.column(1).as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect::<Vec<_>>())
        .collect();
    assert_eq!(names, [Some("a".into()), None, Some("c".into()), Some("d".into())]);

    // Bad requests get clear errors and change nothing.
    let garbage = client.append(AppendRequest { table: "t".into(), arrow_ipc: vec![1, 2, 3] }).await;
    let status = garbage.expect_err("garbage");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("Arrow IPC"), "{}", status.message());

    let unknown = client.append(AppendRequest { table: "nope".into(), arrow_ipc: ipc(&batch) }).await;
    assert_eq!(unknown.expect_err("unknown table").code(), Code::NotFound);

    let other = Arc::new(Schema::new(vec![Field::new("x", DataType::Utf8, true)]));
    let wrong = RecordBatch::try_new(other, vec![Arc::new(StringArray::from(vec!["x"]))]).expect("batch");
    let mismatch = client.append(AppendRequest { table: "t".into(), arrow_ipc: ipc(&wrong) }).await;
    assert_eq!(mismatch.expect_err("wrong schema").code(), Code::InvalidArgument);

    let bad_sql = execute(&mut client, "SELEC 1").await.expect_err("bad SQL");
    assert_eq!(bad_sql.code(), Code::InvalidArgument);

    // A result over the message limit (1 MiB here) is refused rather than sent.
    let large = execute(&mut client, "SELECT value FROM generate_series(1, 300000)").await.expect_err("too large");
    assert_eq!(large.code(), Code::ResourceExhausted, "{large:?}");

    let counted = execute(&mut client, "SELECT count(*) AS n FROM t").await.expect("count");
    let n = rows(&counted.arrow_ipc)[0].column(0).as_primitive::<Int64Type>().value(0);
    assert_eq!(n, 4, "the failed requests appended nothing");

    // Tiering over the endpoint, and with `quiver admin tier`: the rows move to the cold tier and read the same.
    let tiered = client.tier(TierRequest { table: "t".into() }).await.expect("tier").into_inner();
    assert_eq!((tiered.rows, tiered.manifest_version), (4, 1));
    assert!(tiered.bytes > 0);
    execute(&mut client, "INSERT INTO t VALUES (5, 'e')").await.expect("insert after tiering");
    let (admin, said) = quiver_admin(&grpc.to_string(), &["tier", "--table", "t"]);
    assert!(
        admin.status.success() && said.contains("tiered 1 rows"),
        "{said} {}",
        String::from_utf8_lossy(&admin.stderr)
    );
    let missing = client.tier(TierRequest { table: "nope".into() }).await.expect_err("unknown table");
    assert_eq!(missing.code(), Code::NotFound);
    // Two small files: `quiver admin compact` merges them into one.
    let (admin, said) = quiver_admin(&grpc.to_string(), &["compact", "--table", "t"]);
    assert!(
        admin.status.success() && said.contains("merged 2 files") && said.contains("5 rows"),
        "{said} {}",
        String::from_utf8_lossy(&admin.stderr)
    );
    let missing = client.compact(CompactRequest { table: "nope".into() }).await.expect_err("unknown table");
    assert_eq!(missing.code(), Code::NotFound);
    let selected = execute(&mut client, "SELECT id FROM t ORDER BY id").await.expect("select");
    let ids: Vec<i64> = rows(&selected.arrow_ipc)
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5], "every row once, from the cold tier");
    assert!(dir.path().join("cold").is_dir(), "the default cold store is next to the data");

    // Garbage collection now: the replaced files and manifests are younger than cold.gc_grace (6h), so they stay;
    // a shorter grace period is refused, a longer one is taken.
    let (admin, said) = quiver_admin(&grpc.to_string(), &["gc"]);
    assert!(
        admin.status.success() && said.contains("deleted 0 of 12 objects") && said.contains("longer than 360m"),
        "three files, three manifests, their segments and commit markers: {said} {}",
        String::from_utf8_lossy(&admin.stderr)
    );
    let short = client.collect_garbage(CollectGarbageRequest { grace_ms: Some(1000) }).await.expect_err("short");
    assert_eq!(short.code(), Code::InvalidArgument);
    assert!(short.message().contains("cold.gc_grace"), "{}", short.message());
    let long = client.collect_garbage(CollectGarbageRequest { grace_ms: Some(86_400_000) }).await.expect("gc");
    let long = long.into_inner();
    assert_eq!((long.listed, long.deleted, long.grace_ms), (12, 0, 86_400_000));
    let still = execute(&mut client, "SELECT count(*) FROM t").await.expect("count");
    assert_eq!(rows(&still.arrow_ipc)[0].column(0).as_primitive::<Int64Type>().value(0), 5);

    let _ = stop_tx.send(());
    running.await.expect("join").expect("clean shutdown");
}
