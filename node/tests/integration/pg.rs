//! The PostgreSQL gateway end to end: a real server on a loopback port, in this process, driven by tokio-postgres
//! (simple and extended protocols, binary results, COPY) and, where it is installed, by the `psql` binary.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{NaiveDate, NaiveDateTime};
use futures::SinkExt;
use quiver_node::engine::{Engine, EngineOptions, StorageLocation};
use quiver_node::metrics::Frontend;
use quiver_node::server::pg;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// A gateway on an in-memory engine.
struct Fixture {
    engine: Arc<Engine>,
    port: u16,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Fixture {
    async fn start() -> Self {
        let engine = Engine::open(StorageLocation::Memory, EngineOptions::default()).await.expect("open engine");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn(pg::serve(Arc::clone(&engine), listener, async {
            let _ = stop.await;
        }));
        Self { engine, port, shutdown, server }
    }

    /// Opens a tokio-postgres connection.
    async fn connect(&self) -> Client {
        let config = format!("host=127.0.0.1 port={} user=quiver dbname=quiver", self.port);
        let (client, connection) = tokio_postgres::connect(&config, NoTls).await.expect("connect");
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("connection ended: {e}");
            }
        });
        client
    }

    /// Stops accepting and checks that the server stopped cleanly.
    async fn stop(self) {
        let _ = self.shutdown.send(());
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("the server stops after shutdown")
            .expect("server task")
            .expect("server stopped cleanly");
    }
}

/// Returns the rows of a simple query as text.
async fn simple_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let messages = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect()
}

async fn count(client: &Client, table: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.expect("count").get(0)
}

const CREATE_TRADES: &str = "CREATE TABLE trades (id BIGINT NOT NULL, symbol TEXT, price DOUBLE, active BOOLEAN, \
                             day DATE, ts TIMESTAMP, amount DECIMAL(10, 2))";
const INSERT_TRADES: &str = "INSERT INTO trades VALUES \
     (1, 'AAPL', 187.25, true, '2024-01-02', '2024-01-02 09:30:00', 12.50), \
     (2, 'MSFT', 401.5, false, '2024-01-03', '2024-01-03 10:15:30.25', 7.05), \
     (3, 'NVDA', 495.0, true, '2024-01-04', '2024-01-04 16:00:00', 100.00)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_return_typed_values() {
    let fixture = Fixture::start().await;
    let client = fixture.connect().await;

    tracing::info!("DDL and INSERT through the extended protocol report PostgreSQL's affected-row counts");
    client.batch_execute(CREATE_TRADES).await.expect("create");
    assert_eq!(client.execute(INSERT_TRADES, &[]).await.expect("insert"), 3);

    tracing::info!("a simple query returns every type as PostgreSQL text");
    let rows = simple_rows(&client, "SELECT id, symbol, price, active, day, ts, amount FROM trades ORDER BY id").await;
    assert_eq!(rows.len(), 3);
    let text = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
    // Timestamps come with all six fractional digits (arrow-pg's text form; PostgreSQL drops trailing zeros).
    assert_eq!(rows[0], text(&["1", "AAPL", "187.25", "t", "2024-01-02", "2024-01-02 09:30:00.000000", "12.50"]));
    assert_eq!(rows[1], text(&["2", "MSFT", "401.5", "f", "2024-01-03", "2024-01-03 10:15:30.250000", "7.05"]));

    tracing::info!("an extended query binds an int and a text parameter and reads binary results back typed");
    let statement = client
        .prepare("SELECT id, symbol, price, active, day, ts FROM trades WHERE id >= $1 AND symbol <> $2 ORDER BY id")
        .await
        .expect("prepare");
    assert_eq!(statement.params(), &[tokio_postgres::types::Type::INT8, tokio_postgres::types::Type::TEXT]);
    let rows = client.query(&statement, &[&2i64, &"NVDA"]).await.expect("query");
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.get::<_, i64>(0), 2);
    assert_eq!(row.get::<_, String>(1), "MSFT");
    assert_eq!(row.get::<_, f64>(2), 401.5);
    assert!(!row.get::<_, bool>(3));
    assert_eq!(row.get::<_, NaiveDate>(4), NaiveDate::from_ymd_opt(2024, 1, 3).expect("date"));
    let ts = NaiveDate::from_ymd_opt(2024, 1, 3).and_then(|d| d.and_hms_milli_opt(10, 15, 30, 250)).expect("ts");
    assert_eq!(row.get::<_, NaiveDateTime>(5), ts);

    tracing::info!("the same statement runs again with other parameters; NULL parameters match nothing");
    let rows = client.query(&statement, &[&1i64, &"MSFT"]).await.expect("query again");
    assert_eq!(rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>(), vec![1, 3]);
    let none: Option<i64> = None;
    assert!(client.query(&statement, &[&none, &"MSFT"]).await.expect("null parameter").is_empty());

    tracing::info!("parameters of other types: a date, a timestamp, a boolean, a float and a numeric cast");
    let rows = client
        .query(
            "SELECT id FROM trades WHERE day > $1 AND ts < $2 AND active = $3 AND price > $4 ORDER BY id",
            &[&NaiveDate::from_ymd_opt(2024, 1, 2).expect("date"), &ts, &false, &100.0f64],
        )
        .await
        .expect("typed parameters");
    assert!(rows.is_empty());
    tracing::info!("a parameter the client declares as text is cast to the numeric column's type");
    let statement = client
        .prepare_typed(
            "SELECT id, CAST(amount AS TEXT) FROM trades WHERE amount > $1 ORDER BY id",
            &[tokio_postgres::types::Type::TEXT],
        )
        .await
        .expect("prepare typed");
    let rows = client.query(&statement, &[&"10.00"]).await.expect("declared text parameter");
    assert_eq!(rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(rows[0].get::<_, String>(1), "12.50");

    tracing::info!("narrow and unsigned integers are sent as wider PostgreSQL integers, in binary too");
    let row = client
        .query_one(
            "SELECT arrow_cast(-3, 'Int8') AS a, arrow_cast(200, 'UInt8') AS b, arrow_cast(4000000000, 'UInt32') AS c",
            &[],
        )
        .await
        .expect("narrow integers");
    assert_eq!(row.get::<_, i16>(0), -3);
    assert_eq!(row.get::<_, i16>(1), 200);
    assert_eq!(row.get::<_, i64>(2), 4_000_000_000);

    tracing::info!("a large result streams through");
    let n: i64 = client
        .query("SELECT value FROM generate_series(1, 200000) AS t(value)", &[])
        .await
        .expect("large result")
        .len()
        .try_into()
        .expect("fits");
    assert_eq!(n, 200_000);

    let metrics = fixture.engine.metrics().frontend(Frontend::Postgres);
    assert!(metrics.requests.get() >= 8, "requests: {}", metrics.requests.get());
    drop(client);
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_appends_text_and_csv_atomically() {
    let fixture = Fixture::start().await;
    let client = fixture.connect().await;
    client.batch_execute("CREATE TABLE quotes (id BIGINT, name TEXT, bid DOUBLE)").await.expect("create");

    tracing::info!("text format: tab-separated, \\N for NULL, ended by \\.");
    let sink = client.copy_in("COPY quotes FROM STDIN").await.expect("copy text");
    futures::pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\talpha\t1.5\n2\t\\N\t2.5\n")).await.expect("send");
    sink.send(Bytes::from_static(b"3\tgamma\t3.5\n")).await.expect("send");
    assert_eq!(sink.finish().await.expect("finish text copy"), 3);
    assert_eq!(count(&client, "quotes").await, 3);
    let nulls: i64 = client.query_one("SELECT count(*) FROM quotes WHERE name IS NULL", &[]).await.expect("q").get(0);
    assert_eq!(nulls, 1);

    tracing::info!("CSV with a header, a quoted field spanning lines and a row split across messages");
    let sink = client.copy_in("COPY quotes FROM STDIN WITH (FORMAT csv, HEADER true)").await.expect("copy csv");
    futures::pin_mut!(sink);
    sink.send(Bytes::from_static(b"id,name,bid\n4,\"multi\nline\",4.5\n5,plain,")).await.expect("send");
    sink.send(Bytes::from_static(b"5.5\n")).await.expect("send");
    assert_eq!(sink.finish().await.expect("finish csv copy"), 2);
    let name: String = client.query_one("SELECT name FROM quotes WHERE id = 4", &[]).await.expect("q").get(0);
    assert_eq!(name, "multi\nline");

    tracing::info!("CSV with DELIMITER and NULL options");
    let sink = client
        .copy_in("COPY quotes FROM STDIN WITH (FORMAT csv, DELIMITER ';', NULL 'NA')")
        .await
        .expect("copy options");
    futures::pin_mut!(sink);
    sink.send(Bytes::from_static(b"6;NA;6.5\n7;seven;NA\n")).await.expect("send");
    assert_eq!(sink.finish().await.expect("finish"), 2);
    assert_eq!(count(&client, "quotes").await, 7);

    tracing::info!("a COPY larger than one decode block arrives in many messages and commits once");
    let mut data = Vec::new();
    for i in 0..100_000 {
        data.extend_from_slice(format!("{},name-{i:08},{}.25\n", 1000 + i, i).as_bytes());
    }
    assert!(data.len() > 2 * 1024 * 1024);
    let sink = client.copy_in("COPY quotes FROM STDIN (FORMAT csv)").await.expect("copy large");
    futures::pin_mut!(sink);
    for part in data.chunks(64 * 1024) {
        sink.send(Bytes::copy_from_slice(part)).await.expect("send");
    }
    assert_eq!(sink.finish().await.expect("finish large"), 100_000);
    assert_eq!(count(&client, "quotes").await, 100_007);

    tracing::info!("a bad line fails the COPY, naming the value, and appends nothing, even rows before it");
    let before = count(&client, "quotes").await;
    let sink = client.copy_in("COPY quotes FROM STDIN").await.expect("copy bad");
    futures::pin_mut!(sink);
    sink.send(Bytes::from_static(b"8\tok\t1.0\nnot_a_number\tbad\t2.0\n")).await.expect("send");
    let e = sink.finish().await.expect_err("a bad line fails the COPY");
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.severity(), "ERROR");
    assert!(db.message().contains("not_a_number"), "{}", db.message());
    assert_eq!(count(&client, "quotes").await, before);

    tracing::info!("a bad line in a later block also rolls back the blocks already decoded");
    let sink = client.copy_in("COPY quotes FROM STDIN (FORMAT csv)").await.expect("copy bad late");
    futures::pin_mut!(sink);
    let mut result = Ok(());
    for part in data.chunks(64 * 1024) {
        result = sink.send(Bytes::copy_from_slice(part)).await;
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        let _ = sink.send(Bytes::from_static(b"oops,x,y\n")).await;
        let e = sink.finish().await.expect_err("bad last line");
        assert!(e.as_db_error().is_some_and(|db| db.message().contains("oops")), "{e:?}");
    }
    assert_eq!(count(&client, "quotes").await, before);

    tracing::info!("a bad line in the first block fails the COPY while data is still arriving");
    let mut bad_early = data.clone();
    bad_early.splice(0..0, b"oops,x,y\n".iter().copied());
    let sink = client.copy_in("COPY quotes FROM STDIN (FORMAT csv)").await.expect("copy bad early");
    futures::pin_mut!(sink);
    for part in bad_early.chunks(64 * 1024) {
        if sink.send(Bytes::copy_from_slice(part)).await.is_err() {
            break;
        }
    }
    let e = sink.finish().await.expect_err("bad first line");
    assert!(e.as_db_error().is_some_and(|db| db.message().contains("oops")), "{e:?}");
    assert_eq!(count(&client, "quotes").await, before);

    tracing::info!("a COPY into a missing table fails before any data is sent");
    let Err(e) = client.copy_in::<_, Bytes>("COPY missing FROM STDIN").await else {
        panic!("a COPY into a missing table starts");
    };
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE), "{e:?}");
    assert_eq!(count(&client, "quotes").await, before);

    drop(client);
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_sqlstates_and_the_connection_survives_them() {
    let fixture = Fixture::start().await;
    let client = fixture.connect().await;

    let e = client.simple_query("SELEC 1").await.expect_err("syntax error");
    assert_eq!(e.code(), Some(&SqlState::SYNTAX_ERROR), "{e:?}");
    let e = client.query("SELECT * FROM no_such_table", &[]).await.expect_err("unknown table");
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE), "{e:?}");
    let db = e.as_db_error().expect("a server error");
    assert!(db.message().contains("no_such_table"), "{}", db.message());
    assert_eq!(db.severity(), "ERROR");
    let e = client.simple_query("SELECT * FROM no_such_table").await.expect_err("unknown table, simple");
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE), "{e:?}");

    tracing::info!("an error stops the rest of a multi-statement query; earlier statements took effect");
    client.batch_execute("CREATE TABLE t (a BIGINT)").await.expect("create");
    let e = client.batch_execute("INSERT INTO t VALUES (1); SELEC 2; INSERT INTO t VALUES (3)").await;
    assert_eq!(e.expect_err("second statement fails").code(), Some(&SqlState::SYNTAX_ERROR));
    assert_eq!(count(&client, "t").await, 1);

    tracing::info!("the connection still works, in both protocols");
    assert_eq!(simple_rows(&client, "SELECT 1 + 1").await, vec![vec![Some("2".to_string())]]);
    assert_eq!(client.query_one("SELECT $1::BIGINT + 1", &[&41i64]).await.expect("after errors").get::<_, i64>(0), 42);

    tracing::info!("a cancel request interrupts a long query, in both protocols, and the connection goes on");
    let long = "SELECT sum(value) FROM generate_series(1, 5000000000) AS t(value)";
    for extended in [false, true] {
        let token = client.cancel_token();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            token.cancel_query(NoTls).await
        });
        let e = if extended {
            client.query(long, &[]).await.map(|_| ()).expect_err("cancelled")
        } else {
            client.simple_query(long).await.map(|_| ()).expect_err("cancelled")
        };
        assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e:?}");
        canceller.await.expect("canceller").expect("cancel request sent");
        assert_eq!(simple_rows(&client, "SELECT 1").await, vec![vec![Some("1".to_string())]]);
    }

    let metrics = fixture.engine.metrics().frontend(Frontend::Postgres);
    assert!(metrics.errors.get() >= 4, "errors: {}", metrics.errors.get());
    drop(client);
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_session_statements_and_catalog_queries_work() {
    let fixture = Fixture::start().await;
    let mut client = fixture.connect().await;
    client.batch_execute(CREATE_TRADES).await.expect("create");

    tracing::info!("BEGIN; INSERT; COMMIT in one query, as separate statements, and through the driver's API");
    client.batch_execute("BEGIN; INSERT INTO trades (id, symbol) VALUES (1, 'A'); COMMIT").await.expect("one query");
    client.simple_query("BEGIN").await.expect("begin");
    client.simple_query("INSERT INTO trades (id, symbol) VALUES (2, 'B')").await.expect("insert");
    client.simple_query("COMMIT").await.expect("commit");
    let tx = client.transaction().await.expect("transaction");
    tx.execute("INSERT INTO trades (id, symbol) VALUES (3, 'C')", &[]).await.expect("insert in transaction");
    tx.commit().await.expect("commit");
    assert_eq!(count(&client, "trades").await, 3);

    tracing::info!("session statements clients send on connect");
    client.batch_execute("SET extra_float_digits = 3; SET application_name = 'it'").await.expect("set");
    client.batch_execute("SET DateStyle = 'ISO, MDY'; SET TIME ZONE 'UTC'; RESET ALL").await.expect("set more");
    assert_eq!(simple_rows(&client, "SHOW transaction_isolation").await, vec![vec![Some("read committed".into())]]);
    let version = simple_rows(&client, "SELECT version()").await;
    assert!(version[0][0].as_deref().is_some_and(|v| v.starts_with("PostgreSQL 16")), "{version:?}");
    let isolation: String = client.query_one("SHOW transaction_isolation", &[]).await.expect("show, extended").get(0);
    assert_eq!(isolation, "read committed");
    client.execute("SET statement_timeout = 0", &[]).await.expect("set, extended");
    let regtype: i32 = client.query_one("SELECT to_regtype('integer')", &[]).await.expect("to_regtype").get(0);
    assert_eq!(regtype, 23);
    let e = client.simple_query("SET server_version = '9.6'").await.expect_err("fixed parameter");
    assert_eq!(e.code(), Some(&SqlState::CANT_CHANGE_RUNTIME_PARAM), "{e:?}");

    tracing::info!("the catalog query psql's \\dt sends lists the table");
    let dt = r#"SELECT n.nspname as "Schema",
  c.relname as "Name",
  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' WHEN 'I' THEN 'partitioned index' END as "Type",
  pg_catalog.pg_get_userbyid(c.relowner) as "Owner"
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam
WHERE c.relkind IN ('r','p','')
      AND n.nspname <> 'pg_catalog'
      AND n.nspname !~ '^pg_toast'
      AND n.nspname <> 'information_schema'
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 1,2;"#;
    let rows = simple_rows(&client, dt).await;
    assert!(rows.iter().any(|r| r[0].as_deref() == Some("public") && r[1].as_deref() == Some("trades")), "{rows:?}");

    tracing::info!("the column query of psql's \\d finds the table's columns by the oid of its pg_class row");
    let oid = simple_rows(
        &client,
        "SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relname OPERATOR(pg_catalog.~) '^(trades)$' \
         COLLATE pg_catalog.default AND pg_catalog.pg_table_is_visible(c.oid)",
    )
    .await;
    let oid = oid[0][0].clone().expect("oid");
    let columns = simple_rows(
        &client,
        &format!(
            "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull \
             FROM pg_catalog.pg_attribute a WHERE a.attrelid = '{oid}' AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum"
        ),
    )
    .await;
    let names: Vec<_> = columns.iter().map(|r| r[0].clone().unwrap_or_default()).collect();
    assert_eq!(names, ["id", "symbol", "price", "active", "day", "ts", "amount"]);
    assert_eq!(columns[0][1].as_deref(), Some("bigint"));

    drop(client);
    fixture.stop().await;
}

/// Runs psql against the gateway and checks that it succeeded; `None` when psql is not installed.
async fn psql(port: u16, command: &str) -> Option<String> {
    let output = psql_output(port, command).await?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "psql -c {command:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    Some(stdout)
}

/// Runs psql against the gateway; `None` when psql is not installed.
async fn psql_output(port: u16, command: &str) -> Option<std::process::Output> {
    let output = tokio::process::Command::new("psql")
        .args(["-X", "-w", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "quiver"])
        .args(["-d", "quiver", "-c", command])
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGPASSWORD")
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(60), output).await.expect("psql finishes") {
        Ok(output) => Some(output),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("running psql: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_queries_lists_and_describes_tables() {
    let fixture = Fixture::start().await;
    let client = fixture.connect().await;
    client.batch_execute(CREATE_TRADES).await.expect("create");
    client.batch_execute(INSERT_TRADES).await.expect("insert");

    let Some(out) = psql(fixture.port, "select 1+1").await else {
        println!("SKIPPED: psql is not installed; the psql part of this test (select, \\dt, \\d) did not run");
        drop(client);
        fixture.stop().await;
        return;
    };
    assert!(out.contains(" 2\n") && out.contains("(1 row)"), "{out}");

    let out = psql(fixture.port, r"\dt").await.expect("psql");
    assert!(out.contains("trades") && out.contains("table"), "{out}");

    let out = psql(fixture.port, r"\d trades").await.expect("psql");
    for expected in ["\"public.trades\"", "id", "bigint", "symbol", "text", "price", "double precision", "day", "date"]
    {
        assert!(out.contains(expected), "missing {expected:?} in\n{out}");
    }

    let out = psql(fixture.port, "SELECT symbol, amount FROM trades ORDER BY id").await.expect("psql");
    assert!(out.contains("AAPL") && out.contains("12.50") && out.contains("(3 rows)"), "{out}");

    let out = psql(fixture.port, r"\l").await.expect("psql");
    assert!(out.contains("quiver"), "{out}");

    tracing::info!("psql's \\copy streams a file through COPY FROM STDIN");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("trades.csv");
    std::fs::write(&file, "10,TSLA,250.5,true,2024-02-01,2024-02-01 12:00:00,1.25\n").expect("write csv");
    let out =
        psql(fixture.port, &format!(r"\copy trades FROM '{}' WITH (FORMAT csv)", file.display())).await.expect("psql");
    assert!(out.contains("COPY 1"), "{out}");
    assert_eq!(count(&client, "trades").await, 4);

    tracing::info!("a bad line early in a large \\copy fails it cleanly and appends nothing");
    let mut csv = String::from("oops,x,1,true,2024-02-01,2024-02-01 12:00:00,1.25\n");
    for i in 0..40_000 {
        csv.push_str(&format!("{},SYM{i},1.5,false,2024-02-01,2024-02-01 12:00:00,1.25\n", 100 + i));
    }
    std::fs::write(&file, csv).expect("write csv");
    let output = psql_output(fixture.port, &format!(r"\copy trades FROM '{}' WITH (FORMAT csv)", file.display()))
        .await
        .expect("psql");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("oops"), "{stderr}");
    assert_eq!(count(&client, "trades").await, 4);
    let out = psql(fixture.port, "SELECT count(*) FROM trades").await.expect("psql");
    assert!(out.contains(" 4\n"), "{out}");

    drop(client);
    fixture.stop().await;
}
