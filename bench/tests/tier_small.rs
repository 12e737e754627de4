//! The cold-tier benchmark's own check at a tiny scale: with every table tiered to a local directory and to a loopback
//! S3 server, the answers equal the hot ones; the first queries after a restart with an empty cache read from the
//! store, warm queries are served by the read cache, and after another restart the S3 run's disk tier still is.

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
            assert_eq!(t.warm_gets, 0, "{label}: query {} is served by the cache when warm: {t:?}", t.query);
        }
        // Later queries may find blocks an earlier one fetched; the first finds none.
        assert!(run.timings[0].cold_gets > 0, "{label}: reads the store with an empty cache: {:?}", run.timings[0]);
        // The local directory has no disk tier by default (it is read directly), S3 keeps its blocks across restarts.
        let restart_gets: u64 = run.timings.iter().map(|t| t.restart_gets).sum();
        match label {
            "s3" => assert_eq!(restart_gets, 0, "{label}: the disk tier survives the restart: {:?}", run.timings),
            _ => assert!(restart_gets > 0, "{label}: {:?}", run.timings),
        }
        assert!(tier::render(&run).contains("total"));
    }
}
