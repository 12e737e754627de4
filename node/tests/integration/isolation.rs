//! The query runtime keeps the network answering: `SELECT 1` over the PostgreSQL protocol stays quick while TPC-H
//! Q1 loops and a bulk ingest run on the same server.
//!
//! The bound is relative to the same server's quiet `SELECT 1` (a debug build on a small machine answers `SELECT 1`
//! in a few milliseconds even when idle); the absolute figure (the 5 ms p99) comes from
//! `quiver-bench latency` on a release build. The test runs alone (nextest's `threads-required`,
//! .config/nextest.toml): other tests running beside it would take the cores it measures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quiver_bench::harness::Running;
use quiver_bench::latency::quantile;
use quiver_bench::{data, ingest, latency, queries};

/// How much slower than quiet `SELECT 1` may be under load (p99), with a floor for the scheduler's time slices.
const SLOWER_AT_MOST: u32 = 5;
const FLOOR: Duration = Duration::from_millis(25);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_1_keeps_answering_while_q1_loops_and_a_bulk_ingest_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Running::start(dir.path()).await.expect("server");
    let lineitem = data::lineitem(0.01);
    quiver_bench::tpch::load_quiver(&server, std::slice::from_ref(&lineitem)).await.expect("load lineitem");
    let flight = server.flight;
    let client = server.pg_client().await.expect("pg client");
    let select_one = client.prepare("SELECT 1").await.expect("prepare");
    let quiet = select_one_latencies(&client, &select_one, 100).await;

    // The load's clients run on a runtime of their own, at a lower priority, as if on other hosts: the cores this
    // test measures are the server's.
    let stop = Arc::new(AtomicBool::new(false));
    let (q1_runs, ingested) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients = {
        let (stop, runs, rows) = (Arc::clone(&stop), Arc::clone(&q1_runs), Arc::clone(&ingested));
        let table = data::Table { name: "lineitem", batches: lineitem.batches.clone() };
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .on_thread_start(|| {
                    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10);
                })
                .enable_all()
                .build()
                .expect("the isolation test's setup");
            runtime.block_on(async move {
                let mut load = Vec::new();
                for _ in 0..2 {
                    let (stop, runs) = (Arc::clone(&stop), Arc::clone(&runs));
                    load.push(tokio::spawn(async move {
                        let mut client = quiver_bench::harness::flight_client_at(flight).await.expect("Flight client");
                        while !stop.load(Ordering::Relaxed) {
                            let batches = latency::flight_query(&mut client, queries::query(1)).await.expect("Q1");
                            assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 4, "Q1 has four groups");
                            runs.fetch_add(1, Ordering::Relaxed);
                        }
                    }));
                }
                load.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let m = ingest::via_flight_at(flight, &table, "lineitem_load", "load").await.expect("ingest");
                        rows.fetch_add(m.rows, Ordering::Relaxed);
                    }
                }));
                for task in load {
                    task.await.expect("join");
                }
            });
        })
    };

    // The load is under way once a Q1 has finished; measure while it goes on.
    let until = Instant::now() + Duration::from_secs(60);
    while q1_runs.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < until, "no Q1 finished within a minute");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (runs_before, rows_before) = (q1_runs.load(Ordering::Relaxed), ingested.load(Ordering::Relaxed));
    let latencies = select_one_latencies(&client, &select_one, 300).await;
    let (runs_during, rows_during) =
        (q1_runs.load(Ordering::Relaxed) - runs_before, ingested.load(Ordering::Relaxed) - rows_before);
    stop.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || clients.join()).await.expect("join").expect("the load's clients failed");
    server.stop().await;

    let (p50, p99) = (quantile(&latencies, 0.5), quantile(&latencies, 0.99));
    eprintln!(
        "SELECT 1 quiet: p50 {:?}, p99 {:?}; under load: p50 {p50:?}, p99 {p99:?}; {runs_during} Q1 runs and \
         {rows_during} rows ingested meanwhile",
        quantile(&quiet, 0.5),
        quantile(&quiet, 0.99)
    );
    assert!(runs_during >= 1, "the Q1 loops must have run while SELECT 1 was measured");
    assert!(rows_during > 0, "the ingest must have run while SELECT 1 was measured");
    let bound = (quantile(&quiet, 0.99) * SLOWER_AT_MOST).max(FLOOR);
    assert!(p99 <= bound, "SELECT 1 p99 {p99:?} (p50 {p50:?}) under a Q1 loop and an ingest; the bound is {bound:?}");
}

/// `n` runs of `SELECT 1` a few milliseconds apart (a client asking now and then), sorted.
async fn select_one_latencies(
    client: &tokio_postgres::Client,
    select_one: &tokio_postgres::Statement,
    n: usize,
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for _ in 0..n {
        let at = Instant::now();
        let row = client.query_one(select_one, &[]).await.expect("SELECT 1");
        latencies.push(at.elapsed());
        assert_eq!(row.get::<_, i64>(0), 1);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    latencies.sort();
    latencies
}
