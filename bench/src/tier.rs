//! The cold-tier benchmark: TPC-H with every table tiered to an object store, beside the same queries on the hot
//! store of the same server, in the same run.
//!
//! For each store: load the tables, time each query on the hot store (best of `runs`), tier every table, stop the
//! server and empty its read cache's disk tier, start it again and time each query once (cold: nothing cached) and
//! `runs` more times (warm: the best is kept); then restart once more and time each query once (restart: what the
//! disk tier kept). The object-store GET requests of the cold, the last warm and the restart run are counted. The
//! answers after tiering must equal those before.

use std::path::Path;
use std::time::Instant;

use quiver_node::cold::ColdConfig;

use crate::data::Table;
use crate::harness::Running;
use crate::{queries, tpch};

/// One query on one store.
#[derive(Debug, Clone)]
pub struct TierTiming {
    /// The query number.
    pub query: usize,
    /// Best-of-`runs` seconds with every row hot.
    pub hot_s: f64,
    /// Seconds of the first run after tiering and a restart.
    pub cold_s: f64,
    /// Best-of-`runs` seconds after that.
    pub warm_s: f64,
    /// GET requests of the first run after the restart.
    pub cold_gets: u64,
    /// GET requests of the last warm run.
    pub warm_gets: u64,
    /// Bytes those GETs returned.
    pub warm_get_bytes: u64,
    /// Seconds of the one run after a second restart (the disk tier of the read cache kept).
    pub restart_s: f64,
    /// GET requests of that run.
    pub restart_gets: u64,
    /// Whether the answers from the cold tier equal the hot answers.
    pub same_answer: bool,
}

/// What one store's run measured.
#[derive(Debug, Clone)]
pub struct StoreRun {
    /// The store, for the report.
    pub label: String,
    /// Rows tiered in all.
    pub rows_tiered: u64,
    /// Bytes of Parquet written.
    pub bytes_tiered: u64,
    /// Seconds the tiering of every table took.
    pub tier_s: f64,
    /// Per query.
    pub timings: Vec<TierTiming>,
}

/// Runs query `q` over Flight SQL; returns its seconds, canonical answer, and the GETs and bytes it made.
async fn timed(server: &Running, q: usize) -> anyhow::Result<(f64, Vec<String>, u64, u64)> {
    let before = server.engine.metrics().cold_io.totals();
    let started = Instant::now();
    let rows = tpch::run_flight(server, queries::query(q)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let io = server.engine.metrics().cold_io.totals().since(&before);
    Ok((seconds, tpch::canonical_rows(&rows)?, io.gets, io.get_bytes))
}

/// Runs the benchmark on one store: `cold` is its `[cold]` settings (`None`: a directory inside `dir`).
pub async fn run_store(
    dir: &Path,
    label: &str,
    cold: Option<ColdConfig>,
    tables: &[Table],
    which: &[usize],
    runs: usize,
) -> anyhow::Result<StoreRun> {
    let runs = runs.max(1);
    let server = Running::start_with(dir, cold.clone()).await?;
    tpch::load_quiver(&server, tables).await?;
    let mut hot = Vec::new();
    for &q in which {
        let mut best = f64::MAX;
        let mut answer = Vec::new();
        for _ in 0..runs {
            let (s, rows, _, _) = timed(&server, q).await?;
            best = best.min(s);
            answer = rows;
        }
        hot.push((best, answer));
    }
    let hot_answers: std::collections::HashMap<usize, Vec<String>> =
        which.iter().zip(&hot).map(|(&q, (_, answer))| (q, answer.clone())).collect();
    let started = Instant::now();
    let (mut rows_tiered, mut bytes_tiered) = (0, 0);
    for t in tables {
        let report = server.engine.tier(t.name).await?;
        anyhow::ensure!(report.rows == t.rows() as u64, "{}: tiered {} of {} rows", t.name, report.rows, t.rows());
        rows_tiered += report.rows;
        bytes_tiered += report.bytes;
    }
    let tier_s = started.elapsed().as_secs_f64();
    server.stop().await;
    let cache_dir = dir.join("cold-cache");
    if cache_dir.exists() {
        std::fs::remove_dir_all(&cache_dir)?;
    }

    let server = Running::start_with(dir, cold.clone()).await?;
    let mut timings = Vec::new();
    for (&q, (hot_s, hot_answer)) in which.iter().zip(hot) {
        let (cold_s, answer, cold_gets, _) = timed(&server, q).await?;
        let mut same_answer = answer == hot_answer;
        let (mut warm_s, mut warm_gets, mut warm_get_bytes) = (f64::MAX, 0, 0);
        for _ in 0..runs {
            let (s, answer, gets, bytes) = timed(&server, q).await?;
            warm_s = warm_s.min(s);
            (warm_gets, warm_get_bytes) = (gets, bytes);
            same_answer &= answer == hot_answer;
        }
        timings.push(TierTiming {
            query: q,
            hot_s,
            cold_s,
            warm_s,
            cold_gets,
            warm_gets,
            warm_get_bytes,
            restart_s: 0.0,
            restart_gets: 0,
            same_answer,
        });
    }
    server.stop().await;
    let server = Running::start_with(dir, cold).await?;
    for t in &mut timings {
        let (s, answer, gets, _) = timed(&server, t.query).await?;
        (t.restart_s, t.restart_gets) = (s, gets);
        t.same_answer &= answer == hot_answers[&t.query];
    }
    server.stop().await;
    Ok(StoreRun { label: label.to_string(), rows_tiered, bytes_tiered, tier_s, timings })
}

/// The report of one store's run as a table.
pub fn render(run: &StoreRun) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "== {}: {} rows tiered into {:.1} MiB of Parquet in {:.1} s",
        run.label,
        run.rows_tiered,
        run.bytes_tiered as f64 / (1024.0 * 1024.0),
        run.tier_s
    );
    let _ = writeln!(
        out,
        "{:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5}",
        "query",
        "hot (s)",
        "cold (s)",
        "warm (s)",
        "cold/hot",
        "warm/hot",
        "rest/hot",
        "GETs cold",
        "GETs warm",
        "GETs rest",
        "same"
    );
    let (mut hot, mut cold, mut warm, mut restart) = (0.0, 0.0, 0.0, 0.0);
    let (mut gets_cold, mut gets_warm, mut gets_restart) = (0, 0, 0);
    for t in &run.timings {
        hot += t.hot_s;
        cold += t.cold_s;
        warm += t.warm_s;
        restart += t.restart_s;
        gets_cold += t.cold_gets;
        gets_warm += t.warm_gets;
        gets_restart += t.restart_gets;
        let _ = writeln!(
            out,
            "{:>5} {:>9.3} {:>9.3} {:>9.3} {:>8.2}x {:>8.2}x {:>8.2}x {:>9} {:>9} {:>9} {:>5}",
            t.query,
            t.hot_s,
            t.cold_s,
            t.warm_s,
            t.cold_s / t.hot_s,
            t.warm_s / t.hot_s,
            t.restart_s / t.hot_s,
            t.cold_gets,
            t.warm_gets,
            t.restart_gets,
            t.same_answer
        );
    }
    let _ = writeln!(
        out,
        "{:>5} {hot:>9.3} {cold:>9.3} {warm:>9.3} {:>8.2}x {:>8.2}x {:>8.2}x {gets_cold:>9} {gets_warm:>9} {gets_restart:>9}",
        "total",
        cold / hot,
        warm / hot,
        restart / hot
    );
    out
}
