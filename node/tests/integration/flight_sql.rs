//! Flight SQL end to end: a real server on a loopback port, in this process, driven by arrow-flight's Flight SQL
//! client over a real gRPC channel.

use std::sync::Arc;

use arrow::array::{Array, AsArray, BinaryArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandGetDbSchemas, CommandGetPrimaryKeys, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandStatementIngest, ProstMessageExt, SqlInfo, TableDefinitionOptions,
    TableExistsOption, TableNotExistOption,
};
use arrow_flight::{FlightInfo, IpcMessage, Ticket};
use futures::TryStreamExt;
use prost::Message;
use quiver_node::engine::{Engine, EngineOptions, StorageLocation};
use quiver_node::metrics::Frontend;
use quiver_node::server::flight_sql::{self, FlightSqlLimits};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// A Flight SQL server on an in-memory engine, and a client connected to it.
struct Fixture {
    client: FlightSqlServiceClient<Channel>,
    engine: Arc<Engine>,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Fixture {
    async fn start() -> Self {
        let engine = Engine::open(StorageLocation::Memory, EngineOptions::default()).await.expect("open engine");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (shutdown, stop) = oneshot::channel::<()>();
        let server =
            tokio::spawn(flight_sql::serve(Arc::clone(&engine), FlightSqlLimits::default(), listener, async {
                let _ = stop.await;
            }));
        let channel = Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
        Self { client: FlightSqlServiceClient::new(channel), engine, shutdown, server }
    }

    /// Stops the server gracefully and checks that it stopped without error.
    async fn stop(self) {
        drop(self.client);
        let _ = self.shutdown.send(());
        self.server.await.expect("server task").expect("server stopped cleanly");
    }

    async fn update(&mut self, sql: &str) -> i64 {
        self.client.execute_update(sql.to_string(), None).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    async fn query(&mut self, sql: &str) -> Vec<RecordBatch> {
        let info = self.client.execute(sql.to_string(), None).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        fetch(&mut self.client, info).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    async fn query_error(&mut self, sql: &str) -> Status {
        let result = match self.client.execute(sql.to_string(), None).await {
            Ok(info) => fetch(&mut self.client, info).await.map(|_| ()),
            Err(e) => Err(e),
        };
        status(result.expect_err(sql))
    }

    async fn count(&mut self, table: &str) -> i64 {
        single_i64(&self.query(&format!("SELECT count(*) FROM {table}")).await)
    }
}

/// Reads every endpoint of a FlightInfo.
async fn fetch(
    client: &mut FlightSqlServiceClient<Channel>,
    info: FlightInfo,
) -> Result<Vec<RecordBatch>, FlightError> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("every endpoint has a ticket");
        let stream = client.do_get(ticket).await?;
        batches.extend(stream.try_collect::<Vec<_>>().await?);
    }
    Ok(batches)
}

fn status(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(status) => *status,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

fn i64_column(batches: &[RecordBatch], column: usize) -> Vec<Option<i64>> {
    batches
        .iter()
        .flat_map(|b| {
            let array = arrow::compute::cast(b.column(column), &DataType::Int64).expect("integer column");
            array.as_primitive::<Int64Type>().iter().collect::<Vec<_>>()
        })
        .collect()
}

fn string_column(batches: &[RecordBatch], column: usize) -> Vec<Option<String>> {
    batches
        .iter()
        .flat_map(|b| {
            let array = arrow::compute::cast(b.column(column), &DataType::Utf8).expect("string column");
            array.as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect::<Vec<_>>()
        })
        .collect()
}

fn single_i64(batches: &[RecordBatch]) -> i64 {
    match i64_column(batches, 0).as_slice() {
        [Some(v)] => *v,
        other => panic!("expected one integer, got {other:?}"),
    }
}

fn metadata(status: &Status, key: &str) -> Option<String> {
    status.metadata().get(key).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn ingest_command(
    table: &str,
    if_not_exist: TableNotExistOption,
    if_exists: TableExistsOption,
) -> CommandStatementIngest {
    CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: if_not_exist as i32,
            if_exists: if_exists as i32,
        }),
        table: table.to_string(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_update_query_and_map_errors() {
    let mut f = Fixture::start().await;

    tracing::info!("phase: DDL and DML return their row counts");
    assert_eq!(f.update("CREATE TABLE t (id BIGINT NOT NULL, v BIGINT, name TEXT)").await, 0);
    assert_eq!(f.update("INSERT INTO t VALUES (1, 10, 'a'), (2, 20, 'b'), (3, 30, 'c')").await, 3);

    tracing::info!("phase: queries return the stored values");
    assert_eq!(single_i64(&f.query("SELECT sum(v) FROM t").await), 60);
    let rows = f.query("SELECT id, name FROM t WHERE v > 15 ORDER BY id").await;
    assert_eq!(i64_column(&rows, 0), [Some(2), Some(3)]);
    assert_eq!(string_column(&rows, 1), [Some("b".to_string()), Some("c".to_string())]);
    let empty = f.query("SELECT id FROM t WHERE v > 1000").await;
    assert!(i64_column(&empty, 0).is_empty());

    tracing::info!(
        "phase: a ticket carries the plan GetFlightInfo made; fetched again, or after the table changed, it \
        answers from its SQL text"
    );
    let info = f.client.execute("SELECT sum(v) FROM t".into(), None).await.expect("info");
    assert_eq!(single_i64(&fetch(&mut f.client, info.clone()).await.expect("first fetch")), 60);
    f.update("INSERT INTO t VALUES (4, 40, 'd')").await;
    assert_eq!(single_i64(&fetch(&mut f.client, info.clone()).await.expect("second fetch")), 100);
    let info = f.client.execute("SELECT sum(v) FROM t".into(), None).await.expect("info");
    f.update("DROP TABLE t").await;
    f.update("CREATE TABLE t (id BIGINT NOT NULL, v BIGINT, name TEXT)").await;
    f.update("INSERT INTO t VALUES (1, 10, 'a'), (2, 20, 'b'), (3, 30, 'c')").await;
    assert_eq!(single_i64(&fetch(&mut f.client, info).await.expect("planned before the table changed")), 60);

    tracing::info!("phase: errors carry a precise code, the object's name and the SQLSTATE");
    let missing = f.query_error("SELECT * FROM no_such_table").await;
    assert!(matches!(missing.code(), Code::NotFound | Code::InvalidArgument), "{missing:?}");
    assert!(missing.message().contains("no_such_table"), "{missing:?}");
    assert_eq!(metadata(&missing, "x-quiver-retryable").as_deref(), Some("false"));
    let syntax = f.query_error("SELEC 1").await;
    assert_eq!(syntax.code(), Code::InvalidArgument, "{syntax:?}");
    assert_eq!(metadata(&syntax, "x-quiver-sqlstate").as_deref(), Some("42601"));
    let update_error =
        status(f.client.execute_update("INSERT INTO nowhere VALUES (1)".into(), None).await.expect_err("no table"));
    assert!(update_error.message().contains("nowhere"), "{update_error:?}");

    tracing::info!("phase: a bad ticket is refused as malformed, naming what was wrong");
    let bogus = Ticket::new(
        CommandPreparedStatementQuery { prepared_statement_handle: "nope".into() }.as_any().encode_to_vec(),
    );
    let bad_ticket = status(f.client.do_get(bogus).await.expect_err("unknown handle"));
    assert_eq!(bad_ticket.code(), Code::InvalidArgument);
    assert!(bad_ticket.message().contains("prepared statement handle"), "{bad_ticket:?}");

    tracing::info!("phase: the server still answers after errors, and counted them");
    assert_eq!(single_i64(&f.query("SELECT count(*) FROM t").await), 3);
    let metrics = f.engine.metrics().frontend(Frontend::FlightSql);
    assert!(metrics.requests.get() >= 10, "{}", metrics.requests.get());
    assert!(metrics.errors.get() >= 4, "{}", metrics.errors.get());

    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_bind_parameters_per_execution() {
    let mut f = Fixture::start().await;
    f.update("CREATE TABLE t (id BIGINT NOT NULL, v BIGINT)").await;
    f.update("INSERT INTO t VALUES (1, 10), (2, 20), (3, 30)").await;

    tracing::info!("phase: one prepared query, bound twice, answers for each binding");
    let mut select = f.client.prepare("SELECT v FROM t WHERE id = $1".into(), None).await.expect("prepare");
    let parameters = select.parameter_schema().expect("parameter schema").clone();
    assert_eq!(parameters.fields().len(), 1);
    assert_eq!(parameters.field(0).data_type(), &DataType::Int64);
    assert_eq!(select.dataset_schema().expect("dataset schema").field(0).name(), "v");
    let bind = |id: i64| {
        let schema = Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, true)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![id]))]).expect("batch")
    };
    select.set_parameters(bind(1)).expect("bind");
    let info = select.execute().await.expect("execute");
    assert_eq!(single_i64(&fetch(&mut f.client, info).await.expect("fetch")), 10);
    select.set_parameters(bind(3)).expect("bind");
    let info = select.execute().await.expect("execute");
    assert_eq!(single_i64(&fetch(&mut f.client, info).await.expect("fetch")), 30);
    select.close().await.expect("close");

    tracing::info!("phase: a prepared update runs once per parameter row");
    let mut insert = f.client.prepare("INSERT INTO t VALUES ($1, $2)".into(), None).await.expect("prepare insert");
    assert!(insert.dataset_schema().expect("dataset schema").fields().is_empty());
    let schema =
        Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, true), Field::new("$2", DataType::Int64, true)]));
    let rows = RecordBatch::try_new(
        schema,
        vec![Arc::new(Int64Array::from(vec![4, 5])), Arc::new(Int64Array::from(vec![40, 50]))],
    )
    .expect("batch");
    insert.set_parameters(rows).expect("bind");
    assert_eq!(insert.execute_update().await.expect("execute update"), 2);
    insert.close().await.expect("close");
    assert_eq!(single_i64(&f.query("SELECT sum(v) FROM t").await), 150);

    tracing::info!("phase: a prepared statement without parameters works unbound");
    let mut plain = f.client.prepare("SELECT count(*) FROM t".into(), None).await.expect("prepare");
    let info = plain.execute().await.expect("execute");
    assert_eq!(single_i64(&fetch(&mut f.client, info).await.expect("fetch")), 5);
    plain.close().await.expect("close");

    tracing::info!("phase: preparing bad SQL fails with the planner's reason");
    let bad = status(f.client.prepare("SELECT nope FROM t".into(), None).await.expect_err("unknown column"));
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("nope"), "{bad:?}");

    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_ingest_streams_rows_and_rejects_a_mismatched_schema() {
    let mut f = Fixture::start().await;
    let schema =
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("name", DataType::Utf8, true)]));

    tracing::info!("phase: 10 000 rows in 10 batches create the table");
    let batches: Vec<Result<RecordBatch, FlightError>> = (0..10)
        .map(|b| {
            let ids: Vec<i64> = (b * 1000..(b + 1) * 1000).collect();
            let names: Vec<String> = ids.iter().map(|i| format!("row {i}")).collect();
            Ok(RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(Int64Array::from(ids)), Arc::new(StringArray::from(names))],
            )
            .expect("batch"))
        })
        .collect();
    let command = ingest_command("events", TableNotExistOption::Create, TableExistsOption::Fail);
    let ingested = f.client.execute_ingest(command, futures::stream::iter(batches)).await.expect("ingest");
    assert_eq!(ingested, 10_000);
    assert_eq!(f.count("events").await, 10_000);
    assert_eq!(single_i64(&f.query("SELECT max(id) FROM events").await), 9_999);

    tracing::info!("phase: a batch that does not fit the table fails and appends nothing");
    let other = Arc::new(Schema::new(vec![
        Field::new("label", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
    ]));
    let wrong = RecordBatch::try_new(
        other,
        vec![Arc::new(StringArray::from(vec!["x"])), Arc::new(arrow::array::Float64Array::from(vec![1.5]))],
    )
    .expect("batch");
    let command = ingest_command("events", TableNotExistOption::Fail, TableExistsOption::Append);
    let refused = f.client.execute_ingest(command, futures::stream::iter([Ok(wrong)])).await.expect_err("mismatch");
    let refused = status(refused);
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("events"), "{refused:?}");
    assert_eq!(f.count("events").await, 10_000);

    tracing::info!("phase: Create on an existing table and Append to a missing one fail as the options say");
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![Arc::new(Int64Array::from(vec![1])), Arc::new(StringArray::from(vec!["one"]))],
    )
    .expect("batch");
    let exists = ingest_command("events", TableNotExistOption::Create, TableExistsOption::Fail);
    let exists =
        status(f.client.execute_ingest(exists, futures::stream::iter([Ok(batch.clone())])).await.expect_err("exists"));
    assert_eq!(exists.code(), Code::AlreadyExists, "{exists:?}");
    let missing = ingest_command("nowhere", TableNotExistOption::Fail, TableExistsOption::Append);
    let missing = status(
        f.client.execute_ingest(missing, futures::stream::iter([Ok(batch.clone())])).await.expect_err("missing"),
    );
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    tracing::info!("phase: Append adds to the table");
    let append = ingest_command("events", TableNotExistOption::Fail, TableExistsOption::Append);
    assert_eq!(f.client.execute_ingest(append, futures::stream::iter([Ok(batch)])).await.expect("append"), 1);
    assert_eq!(f.count("events").await, 10_001);

    tracing::info!("phase: strings sent as views or with 64-bit offsets are the table's TEXT");
    let other_layout = |id: i64, name: arrow::array::ArrayRef| {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", name.data_type().clone(), true),
        ]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![id])), name]).expect("batch")
    };
    let viewed = other_layout(20_000, Arc::new(arrow::array::StringViewArray::from(vec!["view"])));
    let large = other_layout(20_001, Arc::new(arrow::array::LargeStringArray::from(vec!["large"])));
    let append = ingest_command("events", TableNotExistOption::Fail, TableExistsOption::Append);
    let appended = f.client.execute_ingest(append, futures::stream::iter([Ok(viewed), Ok(large)])).await;
    assert_eq!(appended.expect("strings of other layouts"), 2);
    let names = f.query("SELECT name FROM events WHERE id >= 20000 ORDER BY id").await;
    let names: Vec<Option<String>> = names
        .iter()
        .flat_map(|b| b.column(0).as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect::<Vec<_>>())
        .collect();
    assert_eq!(names, [Some("view".to_string()), Some("large".to_string())]);

    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_commands_describe_tables_keys_and_server() {
    let mut f = Fixture::start().await;
    f.update(
        "CREATE TABLE accounts (id BIGINT NOT NULL, region TEXT NOT NULL, balance DOUBLE, PRIMARY KEY (id, region))",
    )
    .await;
    f.update("CREATE TABLE notes (body TEXT)").await;

    tracing::info!("phase: catalogs and schemas, with no filter as JDBC asks on connect");
    let info = f.client.get_catalogs().await.expect("catalogs");
    let catalogs = fetch(&mut f.client, info).await.expect("fetch");
    assert_eq!(string_column(&catalogs, 0), [Some("quiver".to_string())]);
    let info = f
        .client
        .get_db_schemas(CommandGetDbSchemas { catalog: None, db_schema_filter_pattern: None })
        .await
        .expect("schemas");
    let schemas = fetch(&mut f.client, info).await.expect("fetch");
    assert_eq!(string_column(&schemas, 1), [Some("public".to_string())]);
    let info = f
        .client
        .get_db_schemas(CommandGetDbSchemas { catalog: None, db_schema_filter_pattern: Some("nothing%".into()) })
        .await
        .expect("schemas");
    assert!(string_column(&fetch(&mut f.client, info).await.expect("fetch"), 1).is_empty());

    tracing::info!("phase: tables, with their Arrow schemas, filtered by name and type");
    let all = CommandGetTables {
        catalog: None,
        db_schema_filter_pattern: None,
        table_name_filter_pattern: None,
        table_types: vec![],
        include_schema: true,
    };
    let info = f.client.get_tables(all.clone()).await.expect("tables");
    let tables = fetch(&mut f.client, info).await.expect("fetch");
    assert_eq!(string_column(&tables, 2), [Some("accounts".to_string()), Some("notes".to_string())]);
    assert_eq!(string_column(&tables, 3), [Some("TABLE".to_string()), Some("TABLE".to_string())]);
    let schema_bytes = tables[0].column(4).as_any().downcast_ref::<BinaryArray>().expect("binary").value(0).to_vec();
    let accounts = Schema::try_from(IpcMessage(schema_bytes.into())).expect("decodable schema");
    let names: Vec<&str> = accounts.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["id", "region", "balance"]);
    assert_eq!(accounts.field(0).data_type(), &DataType::Int64);
    let filtered = CommandGetTables {
        table_name_filter_pattern: Some("acc%".into()),
        table_types: vec!["TABLE".into()],
        include_schema: false,
        ..all.clone()
    };
    let info = f.client.get_tables(filtered).await.expect("tables");
    let tables = fetch(&mut f.client, info).await.expect("fetch");
    assert_eq!(string_column(&tables, 2), [Some("accounts".to_string())]);
    assert_eq!(tables[0].num_columns(), 4);
    let views_only = CommandGetTables { table_types: vec!["VIEW".into()], ..all };
    let info = f.client.get_tables(views_only).await.expect("tables");
    assert!(string_column(&fetch(&mut f.client, info).await.expect("fetch"), 2).is_empty());
    let info = f.client.get_table_types().await.expect("table types");
    let types = string_column(&fetch(&mut f.client, info).await.expect("fetch"), 0);
    assert!(types.contains(&Some("TABLE".to_string())) && types.contains(&Some("VIEW".to_string())), "{types:?}");

    tracing::info!("phase: the declared primary key, in key order");
    let info = f
        .client
        .get_primary_keys(CommandGetPrimaryKeys { catalog: None, db_schema: None, table: "accounts".into() })
        .await
        .expect("primary keys");
    let keys = fetch(&mut f.client, info).await.expect("fetch");
    assert_eq!(
        keys[0].schema().fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>(),
        ["catalog_name", "db_schema_name", "table_name", "column_name", "key_name", "key_sequence"]
    );
    assert_eq!(string_column(&keys, 3), [Some("id".to_string()), Some("region".to_string())]);
    assert_eq!(i64_column(&keys, 5), [Some(1), Some(2)]);
    let info = f
        .client
        .get_primary_keys(CommandGetPrimaryKeys { catalog: None, db_schema: None, table: "notes".into() })
        .await
        .expect("primary keys");
    assert!(string_column(&fetch(&mut f.client, info).await.expect("fetch"), 3).is_empty());

    tracing::info!("phase: server information and type information");
    let info = f
        .client
        .get_sql_info(vec![SqlInfo::FlightSqlServerName, SqlInfo::FlightSqlServerReadOnly])
        .await
        .expect("sql info");
    let sql_info = fetch(&mut f.client, info).await.expect("fetch");
    assert_eq!(sql_info.iter().map(RecordBatch::num_rows).sum::<usize>(), 2);
    let shown = arrow::util::pretty::pretty_format_batches(&sql_info).expect("printable").to_string();
    assert!(shown.contains("Quiver"), "{shown}");
    let info = f.client.get_sql_info(vec![]).await.expect("all sql info");
    assert!(fetch(&mut f.client, info).await.expect("fetch").iter().map(RecordBatch::num_rows).sum::<usize>() > 10);
    let info = f.client.get_xdbc_type_info(CommandGetXdbcTypeInfo { data_type: None }).await.expect("xdbc");
    let types = string_column(&fetch(&mut f.client, info).await.expect("fetch"), 0);
    for expected in ["BIGINT", "BOOLEAN", "VARCHAR", "TIMESTAMP", "DECIMAL"] {
        assert!(types.contains(&Some(expected.to_string())), "{expected} missing from {types:?}");
    }

    tracing::info!("phase: foreign-key commands answer empty, as Quiver has no foreign keys");
    let info = f
        .client
        .get_imported_keys(arrow_flight::sql::CommandGetImportedKeys {
            catalog: None,
            db_schema: None,
            table: "accounts".into(),
        })
        .await
        .expect("imported keys");
    let imported = fetch(&mut f.client, info).await.expect("fetch");
    assert_eq!(imported.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);

    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_invalid_arguments() {
    let mut f = Fixture::start().await;

    tracing::info!("phase: a statement ticket that is not UTF-8");
    let ticket = arrow_flight::sql::TicketStatementQuery { statement_handle: vec![0xff, 0xfe].into() };
    let refused = status(f.client.do_get(Ticket::new(ticket.as_any().encode_to_vec())).await.expect_err("bad ticket"));
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(metadata(&refused, "x-quiver-sqlstate").as_deref(), Some("08P01"));

    tracing::info!("phase: a ticket of a type this server never issues");
    let foreign = arrow_flight::sql::Any { type_url: "type.example/Other".into(), value: vec![1, 2, 3].into() };
    let refused = status(f.client.do_get(Ticket::new(foreign.encode_to_vec())).await.expect_err("foreign ticket"));
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("type.example/Other"), "{refused:?}");

    tracing::info!("phase: an unknown action");
    let action = arrow_flight::Action { r#type: "Explode".into(), body: Default::default() };
    let refused = status(f.client.do_action(action).await.expect_err("unknown action"));
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("Explode"), "{refused:?}");

    tracing::info!("phase: the server still answers");
    assert_eq!(single_i64(&f.query("SELECT 41 + 1").await), 42);

    f.stop().await;
}
