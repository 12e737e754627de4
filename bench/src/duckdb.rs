//! DuckDB as a same-run reference, through its Python package (`pip install duckdb`): the script beside this crate
//! (`scripts/duckdb_reference.py`) loads the bench's Parquet files into DuckDB's own tables and times the same
//! queries there and on the Parquet files directly.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde::Deserialize;

const SCRIPT: &str = include_str!("../scripts/duckdb_reference.py");

/// One query's runs in DuckDB.
#[derive(Debug, Clone, Deserialize)]
pub struct QueryRuns {
    /// The query number.
    pub query: usize,
    /// Seconds of each run.
    pub seconds: Vec<f64>,
    /// The answer, each cell as text.
    pub rows: Vec<Vec<String>>,
}

/// The TPC-H reference: DuckDB's own tables (loaded from the Parquet files) and the Parquet files themselves.
#[derive(Debug, Clone, Deserialize)]
pub struct Tpch {
    /// DuckDB's version.
    pub version: String,
    /// Seconds to load every table into DuckDB's own storage and checkpoint it.
    pub load_s: f64,
    /// The queries on DuckDB's tables.
    pub native: Vec<QueryRuns>,
    /// The queries on the Parquet files.
    pub parquet: Vec<QueryRuns>,
}

/// A durable load of one Parquet file into a DuckDB table.
#[derive(Debug, Clone, Deserialize)]
pub struct Load {
    /// DuckDB's version.
    pub version: String,
    /// Rows loaded.
    pub rows: u64,
    /// Seconds, the checkpoint included.
    pub seconds: f64,
}

/// Runs the script with `args` in `dir` and parses what it prints.
fn run<T: for<'de> Deserialize<'de>>(dir: &Path, args: &[&str]) -> anyhow::Result<T> {
    let script = dir.join("duckdb_reference.py");
    std::fs::write(&script, SCRIPT)?;
    let out = Command::new("python3").arg(&script).args(args).output().context("run python3")?;
    anyhow::ensure!(
        out.status.success(),
        "the DuckDB reference failed (pip install duckdb; or pass --no-duckdb): {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    serde_json::from_slice(&out.stdout).context("parse the DuckDB reference's output")
}

/// Runs `queries` (number, SQL) `runs` times on DuckDB's tables loaded from `parquet_dir/<table>.parquet`, and on
/// the files; the database lives in `dir`.
pub fn tpch(dir: &Path, parquet_dir: &Path, queries: &[(usize, &str)], runs: usize) -> anyhow::Result<Tpch> {
    let list = dir.join("queries.json");
    std::fs::write(&list, serde_json::to_vec(queries)?)?;
    let db = dir.join("tpch.duckdb");
    let (parquet_dir, list, db) = (text(parquet_dir)?, text(&list)?, text(&db)?);
    run(dir, &["tpch", parquet_dir, list, &runs.to_string(), db])
}

/// Loads `parquet_file` into a DuckDB database in `dir`, durably.
pub fn ingest(dir: &Path, parquet_file: &Path) -> anyhow::Result<Load> {
    let db = dir.join("ingest.duckdb");
    run(dir, &["ingest", text(parquet_file)?, text(&db)?])
}

fn text(path: &Path) -> anyhow::Result<&str> {
    path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Returns DuckDB's cells normalised as [`crate::tpch::canonical_rows`] normalises Quiver's, sorted, so answers
/// compare whatever the order of ties and each engine's decimal scale.
pub fn canonical_rows(rows: &[Vec<String>]) -> Vec<String> {
    let mut out: Vec<String> =
        rows.iter().map(|r| r.iter().map(|c| crate::tpch::comparable(c)).collect::<Vec<_>>().join("|")).collect();
    out.sort();
    out
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
