//! The benchmark's own check at a tiny scale: TPC-H loaded into a real server gives the same answers over Flight SQL
//! as DataFusion on Parquet files of the same data, and the ingest paths load every row.

use quiver_bench::{data, harness::Running, ingest, tpch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_answers_match_datafusion_on_parquet_and_ingest_loads_every_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tables = data::all(0.01);
    let lineitem_rows = tables.iter().find(|t| t.name == "lineitem").expect("lineitem").rows();
    assert!(lineitem_rows > 50_000, "SF 0.01 has about 60k lineitem rows, got {lineitem_rows}");
    let server = Running::start(&dir.path().join("quiver")).await.expect("server");
    tpch::load_quiver(&server, &tables).await.expect("load");
    let ctx = tpch::parquet_context(dir.path(), &tables).await.expect("parquet");
    let timings = tpch::run_all(&server, &ctx, &[1, 3, 5, 6, 10, 12, 14, 19], 1, None).await.expect("queries");
    for t in &timings {
        assert!(t.same_as_datafusion, "query {} answers differ", t.query);
        assert!(t.rows > 0, "query {} returned rows", t.query);
    }

    let lineitem = tables.into_iter().find(|t| t.name == "lineitem").expect("lineitem");
    let flight = ingest::via_flight(&server, &lineitem, "li_flight").await.expect("flight ingest");
    assert_eq!(flight.rows as usize, lineitem_rows);
    let pg = server.pg_client().await.expect("pg");
    pg.batch_execute(&ingest::lineitem_ddl("li_copy")).await.expect("ddl");
    let csv = ingest::to_csv(&lineitem.batches).expect("csv");
    let copy = ingest::via_copy(&pg, &csv, "li_copy", "copy").await.expect("copy");
    assert_eq!(copy.rows as usize, lineitem_rows);
    let row = pg
        .query_one("SELECT count(*), sum(l_quantity) = (SELECT sum(l_quantity) FROM lineitem) FROM li_copy", &[])
        .await
        .expect("count");
    assert_eq!(row.get::<_, i64>(0) as usize, lineitem_rows);
    assert!(row.get::<_, bool>(1), "COPY loaded the same quantities as the generator");
    server.stop().await;
}
