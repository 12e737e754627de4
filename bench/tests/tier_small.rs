//! The cold-tier benchmark's own check at a tiny scale: with every table tiered to a local directory and to a loopback
//! S3 server, the answers equal the hot ones, and the queries after the restart read from the store.

use quiver_bench::{data, s3::S3Server, tier};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_tpch_answers_match_the_hot_store_on_both_stores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tables = data::all(0.01);
    let total: u64 = tables.iter().map(|t| t.rows() as u64).sum();
    let server = S3Server::start();
    server.create_bucket("bench");
    let stores = [("local", None), ("s3", Some(server.cold_config("s3://bench/w")))];
    for (label, cold) in stores {
        let run = tier::run_store(&dir.path().join(label), label, cold, &tables, &[1, 3, 6, 14], 1).await.expect("run");
        assert_eq!(run.rows_tiered, total, "{label}: every row is tiered");
        for t in &run.timings {
            assert!(t.same_answer, "{label}: query {} answers differ after tiering", t.query);
            assert!(t.cold_gets > 0 && t.warm_gets > 0, "{label}: query {} reads the store: {t:?}", t.query);
            assert!(t.warm_gets <= t.cold_gets, "{label}: {t:?}");
        }
        let first = &run.timings[0];
        assert!(first.warm_gets < first.cold_gets, "{label}: footers are cached after the first run: {first:?}");
        assert!(tier::render(&run).contains("total"));
    }
}
