//! The assembled server: every endpoint bound by `Server`, HTTP health and metrics, and the `quiver` binary's
//! commands (`sql -c` embedded and over Flight SQL, `import`, bad configuration).

use std::sync::Arc;

use quiver_node::config::{Config, Overrides};
use quiver_node::engine::{Engine, EngineOptions, StorageLocation};
use quiver_node::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect http");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    (status, response)
}

fn loopback_overrides(dir: &std::path::Path) -> Overrides {
    Overrides::loopback(dir.to_path_buf())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_serves_health_readiness_and_prometheus_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::load(None, Vec::new(), &loopback_overrides(dir.path())).expect("config");
    let engine = Engine::open(StorageLocation::Memory, EngineOptions::default()).await.expect("engine");
    let server = Server::bind_with_engine(config, Arc::clone(&engine)).await.expect("bind");
    let http = server.http_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    engine.execute_one("CREATE TABLE m (x BIGINT)").await.expect("create");
    engine.execute_one("INSERT INTO m SELECT value FROM generate_series(1, 1234)").await.expect("insert");

    let (status, body) = http_get(http, "/health").await;
    assert_eq!((status, body.ends_with("ok\n")), (200, true), "{body}");
    let (status, _) = http_get(http, "/ready").await;
    assert_eq!(status, 200);
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("quiver_rows_ingested_total 1234"), "{body}");
    assert!(body.contains("quiver_tables 1"), "{body}");
    assert!(body.contains("# TYPE quiver_request_duration_seconds histogram"), "{body}");
    let (status, _) = http_get(http, "/nope").await;
    assert_eq!(status, 404);

    let _ = stop_tx.send(());
    running.await.expect("join").expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_open_to_other_hosts_starts_only_secured_or_insecure_on_purpose() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut overrides = loopback_overrides(dir.path());
    // Bound on every interface (no traffic goes anywhere but loopback here).
    overrides.pg_addr = Some("0.0.0.0:0".into());
    let config = Config::load(None, Vec::new(), &overrides).expect("config");
    let Err(refused) = Server::bind(config).await else { panic!("a server open to other hosts started") };
    let report = refused.report();
    assert!(report.contains("refusing to serve other hosts without security"), "{report}");
    assert!(report.contains("server.pg_addr = 0.0.0.0:0 without authentication ([auth] enabled)"), "{report}");
    assert!(report.contains("without TLS") && report.contains("--insecure"), "{report}");
    assert!(std::fs::read_dir(dir.path()).expect("dir").next().is_none(), "the data directory was not touched");

    overrides.insecure = true;
    let config = Config::load(None, Vec::new(), &overrides).expect("config");
    let server = Server::bind(config).await.expect("insecure on purpose");
    let http = server.http_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    let (status, body) = http_get(http, "/health").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\r\n\r\nok\ninsecure: server.pg_addr = 0.0.0.0:0 without authentication"), "{body}");
    let _ = stop_tx.send(());
    running.await.expect("join").expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_fails_startup_naming_the_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut overrides = loopback_overrides(dir.path());
    overrides.pg_addr = Some(taken.local_addr().expect("addr").to_string());
    let config = Config::load(None, Vec::new(), &overrides).expect("config");
    let engine = Engine::open(StorageLocation::Memory, EngineOptions::default()).await.expect("engine");
    let err = Server::bind_with_engine(config, engine).await.expect_err("port in use");
    assert!(err.report().contains("PostgreSQL"), "{}", err.report());
}

fn quiver(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_quiver")).args(args).output().expect("run quiver")
}

#[test]
fn binary_sql_import_and_config_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("db");
    let data = data.to_str().expect("utf-8 path");
    let csv = dir.path().join("cities.csv");
    std::fs::write(&csv, "name,population\nLagos,15388000\nLima,10719000\nOslo,709000\n").expect("csv");

    let out = quiver(&["import", csv.to_str().expect("path"), "--table", "cities", "--data-dir", data]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 3 rows into cities"));

    let out =
        quiver(&["sql", "--data-dir", data, "-c", "SELECT name FROM cities WHERE population > 1000000 ORDER BY name"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Lagos") && stdout.contains("Lima") && !stdout.contains("Oslo"), "{stdout}");
    assert!(stdout.contains("(2 rows)"), "{stdout}");

    let out = quiver(&["sql", "--data-dir", data, "-c", "SELECT * FROM nowhere"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"), "{}", String::from_utf8_lossy(&out.stderr));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nflight_adr = \"127.0.0.1:1\"\n").expect("write");
    let out = quiver(&["server", "--config", bad.to_str().expect("path"), "--data-dir", data]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("flight_adr") && stderr.contains("bad.toml"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_sql_connects_to_a_server_over_flight_sql() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::load(None, Vec::new(), &loopback_overrides(dir.path())).expect("config");
    let server = Server::bind(config).await.expect("bind");
    let flight = server.flight_addr().to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    let out = tokio::task::spawn_blocking(move || {
        quiver(&["sql", "--connect", &flight, "-c", "SELECT 40 + 2 AS answer, 'flight' AS via"])
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("42") && stdout.contains("flight"), "{stdout}");
    let _ = stop_tx.send(());
    running.await.expect("join").expect("clean shutdown");
}

/// Serves `config` until the returned sender fires (or is dropped); a Flight SQL client connected to it.
async fn serve_flight(
    config: Config,
) -> (
    arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<quiver_node::Result<()>>,
) {
    let server = Server::bind(config).await.expect("bind");
    let flight = server.flight_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{flight}")).expect("uri").connect().await.expect("c");
    (arrow_flight::sql::client::FlightSqlServiceClient::new(channel), stop_tx, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_sends_view_types_as_classic_types() {
    use arrow::datatypes::DataType;
    use futures::TryStreamExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::load(None, Vec::new(), &loopback_overrides(dir.path())).expect("config");
    let (mut client, stop_tx, running) = serve_flight(config).await;
    let sql = "SELECT arrow_cast(CAST(value AS TEXT), 'Utf8View') AS v FROM generate_series(1, 50000)";
    let info = client.execute(sql.to_string(), None).await.expect("execute");
    let announced = info.clone().try_decode_schema().expect("schema");
    assert_eq!(announced.field(0).data_type(), &DataType::Utf8);
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let batches: Vec<_> = client.do_get(ticket).await.expect("do_get").try_collect().await.expect("rows");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 50_000);
    assert!(batches.iter().all(|b| b.column(0).data_type() == &DataType::Utf8));
    let _ = stop_tx.send(());
    running.await.expect("join").expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_closes_a_stream_that_does_not_finish_by_the_shutdown_timeout() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = ("test.toml", "[server]\nshutdown_timeout = \"1s\"\n");
    let config = Config::load(Some(file), Vec::new(), &loopback_overrides(dir.path())).expect("config");
    let (mut client, stop_tx, running) = serve_flight(config).await;
    // A result far larger than HTTP/2's flow-control windows, of which the client reads one batch and then nothing:
    // the server's stream stalls, and a graceful stop alone would wait for it for ever.
    let info = client.execute("SELECT value FROM generate_series(1, 20000000)".to_string(), None).await.expect("run");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let mut rows = client.do_get(ticket).await.expect("do_get");
    let first = rows.next().await.expect("a batch").expect("rows");
    assert!(first.num_rows() > 0);

    let asked = std::time::Instant::now();
    let _ = stop_tx.send(());
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(30), running).await;
    let stopped = stopped.expect("the server stops within its shutdown timeout, not waiting on the stalled stream");
    stopped.expect("join").expect("a clean stop");
    assert!(asked.elapsed() >= std::time::Duration::from_millis(900), "the stream got its time to finish");
    drop(rows);
}
