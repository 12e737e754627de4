//! SQL behaviour of the engine, through the embedded API on a real on-disk database (RocksDB).

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, TimeUnit};
use quiver_node::engine::{Command, EngineOptions, StorageLocation};
use quiver_node::{ErrorKind, QueryOutput, Quiver};

async fn open(dir: &std::path::Path) -> Quiver {
    // Small chunks so that pruning and multi-chunk DML are exercised with small tables.
    let options = EngineOptions { chunk_rows_target: 100, target_partitions: 4, ..EngineOptions::default() };
    Quiver::open_with(StorageLocation::Path(dir.to_path_buf()), options).await.expect("open")
}

async fn rows(db: &Quiver, sql: &str) -> Vec<RecordBatch> {
    db.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {}", e.report()))
}

fn pretty(batches: &[RecordBatch]) -> String {
    arrow::util::pretty::pretty_format_batches(batches).expect("format").to_string()
}

async fn single_i64(db: &Quiver, sql: &str) -> i64 {
    let b = rows(db, sql).await;
    let col = arrow::compute::cast(b[0].column(0), &DataType::Int64).expect("cast");
    col.as_primitive::<Int64Type>().value(0)
}

async fn affected(db: &Quiver, sql: &str) -> (Command, u64) {
    match db.engine().execute_one(sql).await.unwrap_or_else(|e| panic!("{sql}: {}", e.report())) {
        QueryOutput::Affected { command, rows } => (command, rows),
        other => panic!("{sql}: expected a row count, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_round_trip_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open(dir.path()).await;
        db.sql(
            "CREATE TABLE all_types (
                b BOOLEAN, i8 TINYINT, i16 SMALLINT, i32 INT, i64 BIGINT NOT NULL,
                u8 TINYINT UNSIGNED, u16 SMALLINT UNSIGNED, u32 INT UNSIGNED, u64 BIGINT UNSIGNED,
                f32 REAL, f64 DOUBLE, d DECIMAL(12, 3), s TEXT, bin BYTEA, day DATE,
                ts TIMESTAMP, ts_ms TIMESTAMP(3), tstz TIMESTAMPTZ,
                PRIMARY KEY (i64))",
        )
        .await
        .expect("create");
        let (command, n) = affected(
            &db,
            "INSERT INTO all_types VALUES
               (true, -8, -16, -32, 1, 8, 16, 32, 64, 1.5, 2.25, 123.456, 'hello', X'DEADBEEF', DATE '2024-02-29',
                TIMESTAMP '2024-02-29 12:34:56.789', TIMESTAMP '2024-02-29 12:34:56.789', TIMESTAMPTZ '2024-02-29 12:34:56+02:00'),
               (NULL, NULL, NULL, NULL, 2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
        )
        .await;
        assert_eq!((command, n), (Command::Insert, 2));
    }
    let db = open(dir.path()).await;
    let schema = db.engine().hot_table("all_types").expect("table").schema();
    let ty = |name: &str| schema.field_with_name(name).expect("field").data_type().clone();
    assert_eq!(ty("u16"), DataType::UInt16);
    assert_eq!(ty("d"), DataType::Decimal128(12, 3));
    assert_eq!(ty("ts_ms"), DataType::Timestamp(TimeUnit::Millisecond, None));
    assert!(matches!(ty("tstz"), DataType::Timestamp(_, Some(_))), "{:?}", ty("tstz"));
    assert!(!schema.field_with_name("i64").expect("i64").is_nullable());
    let text = pretty(&rows(&db, "SELECT b, i8, u64, d, s, bin, day, ts_ms, tstz FROM all_types ORDER BY i64").await);
    for expected in [
        "true",
        "-8",
        "64",
        "123.456",
        "hello",
        "deadbeef",
        "2024-02-29",
        "2024-02-29T12:34:56.789",
        "2024-02-29T10:34:56",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    assert_eq!(single_i64(&db, "SELECT count(*) FROM all_types WHERE b IS NULL").await, 1);
    assert_eq!(
        db.engine().tables().await.iter().find(|t| t.name == "all_types").expect("listed").primary_key,
        vec!["i64".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dml_counts_are_exact_and_atomic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path()).await;
    db.sql("CREATE TABLE t (id BIGINT NOT NULL, grp TEXT NOT NULL, v DOUBLE)").await.expect("create");
    // 1,000 rows in 10 chunks of 100.
    assert_eq!(
        affected(
            &db,
            "INSERT INTO t SELECT value, 'g' || CAST(value % 7 AS TEXT), value * 0.5 FROM generate_series(1, 1000)"
        )
        .await,
        (Command::Insert, 1000)
    );
    assert_eq!(affected(&db, "DELETE FROM t WHERE id <= 150").await, (Command::Delete, 150));
    assert_eq!(affected(&db, "DELETE FROM t WHERE id <= 150").await, (Command::Delete, 0));
    assert_eq!(affected(&db, "DELETE FROM t WHERE false").await, (Command::Delete, 0));
    assert_eq!(affected(&db, "UPDATE t SET v = -1, grp = 'x' WHERE id % 100 = 0").await, (Command::Update, 9));
    assert_eq!(single_i64(&db, "SELECT count(*) FROM t WHERE grp = 'x' AND v = -1").await, 9);
    assert_eq!(affected(&db, "UPDATE t SET v = v + 1 WHERE v IS NULL").await, (Command::Update, 0));
    assert_eq!(single_i64(&db, "SELECT count(*) FROM t").await, 850);
    // A statement that fails part-way changes nothing: the cast of 'x' fails on the updated rows only.
    let err = db.query("UPDATE t SET id = CAST(grp AS BIGINT) WHERE id > 500").await.expect_err("bad cast");
    assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{}", err.report());
    assert_eq!(single_i64(&db, "SELECT sum(id) FROM t").await, (151..=1000).sum::<i64>());
    // NOT NULL is enforced by UPDATE and INSERT, and nothing changes.
    let err = db.query("UPDATE t SET grp = NULL WHERE id = 600").await.expect_err("not null");
    assert!(err.to_string().contains("\"grp\""), "{err}");
    let err = db.query("INSERT INTO t VALUES (5000, NULL, 1.0)").await.expect_err("not null");
    assert_eq!(err.kind(), ErrorKind::ConstraintViolation, "{}", err.report());
    assert_eq!(single_i64(&db, "SELECT count(*) FROM t").await, 850);
    // Subqueries in DELETE are refused rather than misapplied.
    db.sql("CREATE TABLE doomed (id BIGINT)").await.expect("create");
    db.sql("INSERT INTO doomed VALUES (200), (300)").await.expect("insert");
    let err = db.query("DELETE FROM t WHERE id IN (SELECT id FROM doomed)").await.expect_err("subquery");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{}", err.report());
    assert_eq!(single_i64(&db, "SELECT count(*) FROM t").await, 850);
    // Everything survives a reopen.
    drop(db);
    let db = open(dir.path()).await;
    assert_eq!(single_i64(&db, "SELECT count(*) FROM t").await, 850);
    assert_eq!(single_i64(&db, "SELECT count(*) FROM t WHERE grp = 'x'").await, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_select_dialect_works_on_hot_tables() {
    let db = Quiver::open_in_memory().await.expect("open");
    db.sql("CREATE TABLE emp (id INT NOT NULL, dept TEXT, salary BIGINT, boss INT)").await.expect("create");
    db.sql("CREATE TABLE dept (name TEXT, city TEXT)").await.expect("create");
    db.sql(
        "INSERT INTO emp VALUES (1, 'eng', 300, NULL), (2, 'eng', 200, 1), (3, 'ops', 150, 1), (4, 'ops', 100, 3), (5, 'art', 90, 1)",
    )
    .await
    .expect("insert");
    db.sql("INSERT INTO dept VALUES ('eng', 'Berlin'), ('ops', 'Lagos'), ('art', 'Lima')").await.expect("insert");
    // Join + aggregate.
    let text = pretty(&rows(&db, "SELECT d.city, sum(e.salary) AS total FROM emp e JOIN dept d ON e.dept = d.name GROUP BY d.city ORDER BY total DESC").await);
    assert!(text.find("Berlin").expect("Berlin") < text.find("Lagos").expect("Lagos"), "{text}");
    assert!(text.contains("500") && text.contains("250") && text.contains("90"), "{text}");
    // Window function.
    let text = pretty(
        &rows(&db, "SELECT id, rank() OVER (PARTITION BY dept ORDER BY salary DESC) AS r FROM emp ORDER BY id").await,
    );
    assert!(text.contains("| 4  | 2 |"), "{text}");
    // Recursive CTE over the reporting chain.
    assert_eq!(
        single_i64(&db, "WITH RECURSIVE chain(id, depth) AS (SELECT id, 0 FROM emp WHERE boss IS NULL UNION ALL SELECT e.id, c.depth + 1 FROM emp e JOIN chain c ON e.boss = c.id) SELECT max(depth) FROM chain").await,
        2
    );
    // Correlated and scalar subqueries.
    assert_eq!(
        single_i64(
            &db,
            "SELECT count(*) FROM emp e WHERE salary > (SELECT avg(salary) FROM emp x WHERE x.dept = e.dept)"
        )
        .await,
        2
    );
    assert_eq!(
        single_i64(&db, "SELECT count(*) FROM emp WHERE dept IN (SELECT name FROM dept WHERE city LIKE 'L%')").await,
        3
    );
    // Metadata statements.
    let text = pretty(&rows(&db, "SHOW TABLES").await);
    assert!(text.contains("emp") && text.contains("dept"), "{text}");
    let text = pretty(&rows(&db, "DESCRIBE emp").await);
    assert!(text.contains("salary") && text.contains("Int64"), "{text}");
    assert_eq!(single_i64(&db, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'emp'").await, 4);
    // INSERT … SELECT and CREATE TABLE … AS.
    db.sql("CREATE TABLE rich AS SELECT id, salary FROM emp WHERE salary >= 150").await.expect("ctas");
    assert_eq!(single_i64(&db, "SELECT count(*) FROM rich").await, 3);
    assert_eq!(
        affected(&db, "INSERT INTO rich SELECT id, salary FROM emp WHERE salary < 150").await,
        (Command::Insert, 2)
    );
    assert_eq!(single_i64(&db, "SELECT sum(salary) FROM rich").await, 840);
    // DROP TABLE, then the name is free again.
    db.sql("DROP TABLE rich").await.expect("drop");
    let err = db.query("SELECT * FROM rich").await.expect_err("dropped");
    assert!(err.to_string().contains("rich"), "{err}");
    db.sql("CREATE TABLE rich (x INT)").await.expect("recreate");
    assert_eq!(single_i64(&db, "SELECT count(*) FROM rich").await, 0);
    db.sql("CREATE TABLE IF NOT EXISTS rich (y INT)").await.expect("if not exists");
    db.sql("DROP TABLE IF EXISTS nothing_here").await.expect("if exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_prune_chunks_by_statistics_and_run_in_parallel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path()).await;
    db.sql("CREATE TABLE ev (id BIGINT NOT NULL, v BIGINT)").await.expect("create");
    db.sql("INSERT INTO ev SELECT value, value % 10 FROM generate_series(1, 2000)").await.expect("insert");
    let plan = pretty(&rows(&db, "EXPLAIN SELECT sum(v) FROM ev WHERE id BETWEEN 1001 AND 1100").await);
    assert!(plan.contains("chunks=1/20 (pruned 19)"), "{plan}");
    let plan = pretty(&rows(&db, "EXPLAIN SELECT sum(v) FROM ev").await);
    assert!(plan.contains("partitions=4") && plan.contains("chunks=20/20"), "{plan}");
    assert_eq!(single_i64(&db, "SELECT sum(v) FROM ev WHERE id BETWEEN 1001 AND 1100").await, 450);
    assert_eq!(single_i64(&db, "SELECT count(*) FROM ev").await, 2000);
    let analyzed = pretty(&rows(&db, "EXPLAIN ANALYZE SELECT count(*) FROM ev WHERE id > 1990").await);
    assert!(analyzed.contains("ChunkScanExec") && analyzed.contains("output_rows"), "{analyzed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_scans_reuse_decoded_columns_and_see_dml() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path()).await;
    let metrics = std::sync::Arc::clone(db.engine().metrics());
    db.sql("CREATE TABLE c (id BIGINT NOT NULL, v BIGINT)").await.expect("create");
    db.sql("INSERT INTO c SELECT value, value * 2 FROM generate_series(1, 1000)").await.expect("insert");
    assert_eq!(single_i64(&db, "SELECT sum(v) FROM c").await, 1_001_000);
    let misses = metrics.column_cache_misses.get();
    assert!(misses >= 10, "the first scan decodes every chunk's column: {misses}");
    let hits = metrics.column_cache_hits.get();
    assert_eq!(single_i64(&db, "SELECT sum(v) FROM c").await, 1_001_000);
    assert_eq!(metrics.column_cache_misses.get(), misses, "the second scan reads nothing");
    assert!(metrics.column_cache_hits.get() >= hits + 10);
    // Rewritten chunks are new chunks: the cache never serves the old values.
    db.sql("UPDATE c SET v = 0 WHERE id <= 500").await.expect("update");
    assert_eq!(single_i64(&db, "SELECT sum(v) FROM c").await, 1_001_000 - 250_500);
    assert!(metrics.column_cache_bytes.get() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_whose_stream_fails_midway_adds_no_row() {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{Field, Schema};
    use datafusion::error::DataFusionError;
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
    use quiver_node::engine::IngestMode;

    let db = Quiver::open_in_memory().await.expect("open");
    db.sql("CREATE TABLE s (x BIGINT)").await.expect("create");
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
    let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Int64Array::from_iter_values(0..500_000))])
        .expect("batch");
    let items = vec![Ok(batch.clone()), Ok(batch), Err(DataFusionError::Execution("client went away".into()))];
    let stream = Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&schema), futures::stream::iter(items)));
    let err = db.engine().ingest("s", IngestMode::Append, schema, stream).await.expect_err("failed stream");
    assert!(err.report().contains("client went away"), "{}", err.report());
    assert_eq!(single_i64(&db, "SELECT count(*) FROM s").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_statements_get_clear_errors_and_change_nothing() {
    let db = Quiver::open_in_memory().await.expect("open");
    db.sql("CREATE TABLE t (id BIGINT NOT NULL, name TEXT)").await.expect("create");
    db.sql("INSERT INTO t VALUES (1, 'a')").await.expect("insert");
    let cases: [(&str, ErrorKind, &str, &str); 6] = [
        ("SELEC 1", ErrorKind::InvalidRequest, "42601", "SELEC"),
        ("SELECT * FROM nope", ErrorKind::InvalidRequest, "42P01", "nope"),
        ("SELECT nope FROM t", ErrorKind::InvalidRequest, "42703", "nope"),
        ("INSERT INTO t VALUES ('not a number', 'x')", ErrorKind::InvalidRequest, "22P02", "not a number"),
        ("CREATE TABLE t (x INT)", ErrorKind::AlreadyExists, "42P07", "\"t\""),
        ("DROP TABLE nope", ErrorKind::NotFound, "42P01", "nope"),
    ];
    for (sql, kind, sqlstate, named) in cases {
        let err = db.query(sql).await.expect_err(sql);
        assert_eq!(err.kind(), kind, "{sql}: {}", err.report());
        assert_eq!(err.sqlstate(), sqlstate, "{sql}: {}", err.report());
        assert!(err.report().contains(named), "{sql}: {}", err.report());
    }
    assert_eq!(single_i64(&db, "SELECT count(*) FROM t").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_tables_and_copy_import_export() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("people.csv");
    std::fs::write(&csv, "id,name,age\n1,ada,36\n2,alan,41\n3,grace,85\n").expect("write csv");
    let db_dir = dir.path().join("db");
    {
        let db = open(&db_dir).await;
        db.sql(&format!(
            "CREATE EXTERNAL TABLE people STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true')",
            csv.display()
        ))
        .await
        .expect("external");
        assert_eq!(single_i64(&db, "SELECT sum(age) FROM people").await, 162);
        let err = db.query("INSERT INTO people VALUES (4, 'x', 1)").await.expect_err("read-only");
        assert!(err.to_string().contains("read-only"), "{}", err.report());
        // Import by INSERT … SELECT and by COPY FROM.
        db.sql("CREATE TABLE folks (id BIGINT, name TEXT, age BIGINT)").await.expect("create");
        assert_eq!(affected(&db, "INSERT INTO folks SELECT * FROM people").await, (Command::Insert, 3));
        assert_eq!(
            affected(&db, &format!("COPY folks FROM '{}' WITH (FORMAT csv, HEADER true)", csv.display())).await,
            (Command::Copy, 3)
        );
        // Export to Parquet, read it back in place.
        let out = dir.path().join("folks.parquet");
        assert_eq!(
            affected(&db, &format!("COPY (SELECT * FROM folks ORDER BY id) TO '{}' STORED AS PARQUET", out.display()))
                .await,
            (Command::Copy, 6)
        );
        db.sql(&format!("CREATE EXTERNAL TABLE folks_pq STORED AS PARQUET LOCATION '{}'", out.display()))
            .await
            .expect("pq");
        assert_eq!(single_i64(&db, "SELECT count(*) FROM folks_pq WHERE name = 'ada'").await, 2);
    }
    // External tables are part of the catalog and come back after a reopen; the files stayed where they were.
    let db = open(&db_dir).await;
    assert_eq!(single_i64(&db, "SELECT count(*) FROM people").await, 3);
    assert_eq!(single_i64(&db, "SELECT count(*) FROM folks").await, 6);
    let tables = db.engine().tables().await;
    assert_eq!(tables.iter().find(|t| t.name == "people").expect("people").table_type, "EXTERNAL TABLE");
    db.sql("DROP TABLE people").await.expect("drop external");
    assert!(csv.exists(), "dropping an external table never deletes the user's files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_bind_parameters() {
    let db = Quiver::open_in_memory().await.expect("open");
    db.sql("CREATE TABLE kv (k BIGINT NOT NULL, v TEXT)").await.expect("create");
    let engine = db.engine();
    let insert = engine.prepare("INSERT INTO kv VALUES ($1, $2)").await.expect("prepare insert");
    assert_eq!(insert.parameter_types(), &[Some(DataType::Int64), Some(DataType::Utf8)]);
    for (k, v) in [(1, "one"), (2, "two"), (3, "three")] {
        let out = engine
            .execute_prepared(
                &insert,
                vec![datafusion::common::ScalarValue::Int64(Some(k)), datafusion::common::ScalarValue::from(v)],
            )
            .await
            .expect("execute insert");
        assert!(matches!(out, QueryOutput::Affected { rows: 1, .. }), "{out:?}");
    }
    let select = engine.prepare("SELECT v FROM kv WHERE k = $1").await.expect("prepare select");
    for (k, want) in [(2, "two"), (3, "three")] {
        let out = engine
            .execute_prepared(&select, vec![datafusion::common::ScalarValue::Int32(Some(k))])
            .await
            .expect("execute");
        let batches = out.collect().await.expect("rows");
        assert_eq!(batches[0].column(0).as_string::<i32>().value(0), want);
    }
    let err = engine.execute_prepared(&select, vec![]).await.expect_err("missing parameter");
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_control_is_accepted_in_every_spelling() {
    let db = Quiver::open_in_memory().await.expect("open");
    for (sql, command) in [
        ("BEGIN", Command::Begin),
        ("BEGIN WORK", Command::Begin),
        ("START TRANSACTION", Command::Begin),
        ("COMMIT", Command::Commit),
        ("END", Command::Commit),
        ("ROLLBACK", Command::Rollback),
    ] {
        match db.engine().execute_one(sql).await.unwrap_or_else(|e| panic!("{sql}: {}", e.report())) {
            QueryOutput::Done { command: got } => assert_eq!(got, command, "{sql}"),
            other => panic!("{sql}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_sharded_by_their_options_or_the_defaults_and_keep_their_sharding() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open(dir.path()).await;
        // A cluster of one: two shards a node, one copy.
        db.sql("CREATE TABLE d (id BIGINT PRIMARY KEY, v TEXT)").await.expect("default sharding");
        db.sql(
            "CREATE TABLE s (device TEXT, ts BIGINT, v DOUBLE) WITH (shards = 4, replicas = 3, shard_key = 'device')",
        )
        .await
        .expect("sharded");
        let shards = pretty(
            &rows(
                &db,
                "SELECT table_name, shard_id, slots, \"primary\", replicas, in_sync, epoch, state FROM system.shards",
            )
            .await,
        );
        for line in [
            "| d          | 1        | 0..2048    | 1       | 1        | 1       | 1     | ok               |",
            "| d          | 2        | 2048..4096 | 1       | 1        | 1       | 1     | ok               |",
            "| s          | 3        | 0..1024    | 1       | 1        | 1       | 1     | under-replicated |",
            "| s          | 6        | 3072..4096 | 1       | 1        | 1       | 1     | under-replicated |",
        ] {
            assert!(shards.contains(line), "{line} in\n{shards}");
        }
        assert_eq!(single_i64(&db, "SELECT count(*) FROM system.shards").await, 6);
    }
    // The sharding is part of the table's definition: it survives a restart, and it cannot change.
    let db = open(dir.path()).await;
    let def = db.engine().catalog().table("s").expect("s").clone();
    assert_eq!(
        (def.sharding.shards, def.sharding.replicas, def.sharding.shard_key),
        (4, 3, vec!["device".to_string()])
    );
    assert!(def.options.is_empty(), "sharding options are not tiering options: {:?}", def.options);
    let cases = [
        ("ALTER TABLE s SET (replicas = 2)", "replicas after CREATE TABLE"),
        ("CREATE TABLE x (id INT) WITH (shards = 0)", "from 1 to 4096"),
        ("CREATE TABLE x (id INT) WITH (shard_key = 'nope')", "no column \"nope\""),
        ("CREATE TABLE x (id INT, tags INT[]) WITH (shard_key = 'tags')", "cannot be hashed"),
    ];
    for (sql, says) in cases {
        let err = db.query(sql).await.expect_err(sql);
        assert!(err.report().contains(says), "{sql}: {}", err.report());
    }
    assert!(db.engine().catalog().table("x").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_tables_show_the_metadata_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path()).await;
    // An embedded database is a one-voter group that leads itself.
    let raft =
        rows(&db, "SELECT node_id, leader_id, is_leader, voters, learners, metadata_version FROM system.raft").await;
    assert_eq!(raft.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
    let text = pretty(&raft);
    assert!(text.contains("| 1       | 1         | true      | 1      | 0        |"), "{text}");
    let before = single_i64(&db, "SELECT metadata_version FROM system.raft").await;
    let applied = single_i64(&db, "SELECT applied_index FROM system.raft").await;

    // DDL goes through the log: the version and the applied index move, and the tables read them live.
    rows(&db, "CREATE TABLE t (x INT)").await;
    assert!(single_i64(&db, "SELECT metadata_version FROM system.raft").await > before);
    // The applied index comes from the group's metrics, published just after the apply: it follows shortly.
    let mut moved = false;
    for _ in 0..250 {
        if single_i64(&db, "SELECT applied_index FROM system.raft").await > applied {
            moved = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(moved, "the applied index stayed at {applied}");

    let nodes = pretty(&rows(&db, "SELECT node_id, role, is_leader, state FROM system.nodes").await);
    assert!(nodes.contains("| 1       | voter | true      |"), "{nodes}");
    assert_eq!(single_i64(&db, "SELECT count(*) FROM system.nodes").await, 1);
    // The system schema is listed beside public, and its tables are read-only.
    let schemas =
        pretty(&rows(&db, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'system'").await);
    assert!(schemas.contains("nodes") && schemas.contains("raft"), "{schemas}");
    assert!(db.query("INSERT INTO system.nodes VALUES (9)").await.is_err());
    let dropped = db.query("DROP TABLE system.raft").await.expect_err("system tables cannot be dropped");
    assert!(dropped.to_string().contains("read-only"), "{dropped}");
    assert!(rows(&db, "SELECT * FROM t").await.iter().all(|b| b.num_rows() == 0));
}
