//! The cold tier against a real S3-compatible server: moto's server (from PyPI; the README's test command installs
//! it) started on a loopback port by the test. Create, ingest, tier, query across tiers, restart, query again: the
//! answers must be identical, and the bucket must hold the documented layout.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use quiver_bench::s3::S3Server;
use quiver_node::cold::ColdConfig;
use quiver_node::{Engine, EngineOptions, StorageLocation};

async fn open(dir: &std::path::Path, cold: ColdConfig) -> Arc<Engine> {
    let options = EngineOptions { chunk_rows_target: 500, cold, ..EngineOptions::default() };
    Engine::open(StorageLocation::Path(dir.to_path_buf()), options).await.expect("open")
}

async fn rows(engine: &Engine, sql: &str) -> Vec<RecordBatch> {
    engine.execute_one(sql).await.expect("query").collect().await.expect("rows")
}

/// The answers a user would compare: aggregates, a filtered count, and the rows themselves in order.
async fn answers(engine: &Engine) -> String {
    let summary = rows(engine, "SELECT count(*), sum(id), min(id), max(id), count(DISTINCT name) FROM readings").await;
    let filtered = rows(engine, "SELECT count(*) FROM readings WHERE id % 7 = 0 AND id > 2500").await;
    let sample = rows(engine, "SELECT id, name, value FROM readings WHERE id % 997 = 0 ORDER BY id").await;
    let mut out = String::new();
    for batches in [summary, filtered, sample] {
        out.push_str(&arrow::util::pretty::pretty_format_batches(&batches).expect("format").to_string());
    }
    out
}

fn count(batches: &[RecordBatch]) -> i64 {
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_rows_live_in_the_bucket_and_answer_the_same_across_a_restart() {
    let s3 = S3Server::start();
    s3.create_bucket("quiver-test");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ColdConfig { row_group_rows: 1_000, ..s3.cold_config("s3://quiver-test/warehouse") };
    let engine = open(dir.path(), config.clone()).await;
    // One shard, so that each tiering commits one manifest version.
    engine
        .execute_one("CREATE TABLE readings (id BIGINT NOT NULL, name TEXT, value DOUBLE) WITH (shards = 1)")
        .await
        .expect("create");
    let insert = |from: i64, to: i64| {
        format!(
            "INSERT INTO readings SELECT value, 'sensor-' || (value % 13), value * 0.5 FROM generate_series({from}, \
             {to})"
        )
    };
    engine.execute_one(&insert(1, 4000)).await.expect("insert");
    let hot_only = answers(&engine).await;

    let report = engine.tier("readings").await.expect("tier to S3");
    assert_eq!(report.rows, 4000, "{report:?}");
    assert!(report.bytes > 0 && report.manifest_version == 1, "{report:?}");
    assert_eq!(answers(&engine).await, hot_only, "the same answers from the bucket");

    engine.execute_one(&insert(4001, 6000)).await.expect("insert more");
    let across = answers(&engine).await;
    assert_eq!(count(&rows(&engine, "SELECT count(*) FROM readings").await), 6000);

    engine.shutdown().await.expect("shutdown");
    drop(engine);
    let engine = open(dir.path(), config.clone()).await;
    assert_eq!(answers(&engine).await, across, "identical answers after a restart");
    let again = engine.tier("readings").await.expect("tier the rest");
    assert_eq!((again.rows, again.manifest_version), (2000, 2));
    assert_eq!(answers(&engine).await, across, "identical answers with every row in the bucket");

    // The bucket holds the documented layout under the configured prefix and the cluster's.
    let bucket = AmazonS3Builder::new()
        .with_bucket_name("quiver-test")
        .with_endpoint(&s3.endpoint)
        .with_region("us-east-1")
        .with_allow_http(true)
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .expect("client");
    let objects: Vec<String> = bucket
        .list(Some(&object_store::path::Path::from("warehouse/quiver")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list");
    let data = objects.iter().filter(|p| p.contains("/data/") && p.ends_with(".parquet")).count();
    let manifests = objects.iter().filter(|p| p.contains("/manifests/") && p.ends_with(".json")).count();
    assert_eq!((data, manifests), (2, 2), "{objects:?}");
    assert!(objects.iter().all(|p| p.starts_with("warehouse/quiver/") && p.contains("/tables/")), "{objects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_a_clear_error_and_the_rows_stay_hot() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path(), s3.cold_config("s3://no-such-bucket/x")).await;
    engine.execute_one("CREATE TABLE readings (id BIGINT NOT NULL)").await.expect("create");
    engine.execute_one("INSERT INTO readings SELECT value FROM generate_series(1, 100)").await.expect("insert");
    let e = engine.tier("readings").await.expect_err("no bucket");
    let report = e.report();
    assert!(report.contains("cold tier unavailable") && report.contains("no-such-bucket"), "{report}");
    assert_eq!(count(&rows(&engine, "SELECT count(*) FROM readings").await), 100, "the rows are still hot");
}
