//! The TPC-H benchmark: Quiver over Flight SQL beside DataFusion in-process on Parquet, same data, same run.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use quiver_node::engine::IngestMode;

use crate::data::Table;
use crate::harness::Running;
use crate::queries;

/// Loads every table into the server's engine (not timed).
pub async fn load_quiver(server: &Running, tables: &[Table]) -> anyhow::Result<()> {
    for t in tables {
        let schema = t.batches[0].schema();
        let stream = Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
            Arc::clone(&schema),
            futures::stream::iter(t.batches.clone().into_iter().map(Ok)),
        ));
        server.engine.ingest(t.name, IngestMode::Replace, schema, stream).await?;
    }
    Ok(())
}

/// The shard key of each TPC-H table in a cluster: its primary key's leading column, so that `orders` and
/// `lineitem` share a key and every table spreads over every shard.
pub fn shard_key(table: &str) -> &'static str {
    match table {
        "region" => "r_regionkey",
        "nation" => "n_nationkey",
        "supplier" => "s_suppkey",
        "customer" => "c_custkey",
        "part" => "p_partkey",
        "partsupp" => "ps_partkey",
        "orders" => "o_orderkey",
        _ => "l_orderkey",
    }
}

/// The `CREATE TABLE` of `t` from its generated schema, with `with` (e.g. ` WITH (shard_key = '…')`) appended.
pub fn ddl(t: &Table, with: &str) -> anyhow::Result<String> {
    use arrow::datatypes::DataType;
    let schema = t.batches[0].schema();
    let mut columns = Vec::new();
    for f in schema.fields() {
        let sql = match f.data_type() {
            DataType::Int64 => "BIGINT".to_string(),
            DataType::Int32 => "INT".to_string(),
            DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
            DataType::Date32 => "DATE".to_string(),
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => "TEXT".to_string(),
            other => anyhow::bail!("{}.{}: no SQL type for {other}", t.name, f.name()),
        };
        let null = if f.is_nullable() { "" } else { " NOT NULL" };
        columns.push(format!("{} {sql}{null}", f.name()));
    }
    Ok(format!("CREATE TABLE {} ({}){with}", t.name, columns.join(", ")))
}

/// Creates every table through the PostgreSQL gateway at `pg` (sharded by [`shard_key`] when `sharded`) and loads
/// it over Flight SQL bulk ingest through `flight`, checking every row arrived.
pub async fn load_over_flight(
    flight: std::net::SocketAddr,
    pg: std::net::SocketAddr,
    tables: &[Table],
    sharded: bool,
) -> anyhow::Result<()> {
    let client = crate::harness::pg_client_at(pg).await?;
    for t in tables {
        let with = if sharded { format!(" WITH (shard_key = '{}')", shard_key(t.name)) } else { String::new() };
        client.batch_execute(&ddl(t, &with)?).await?;
        let loaded = crate::ingest::via_flight_at(flight, t, t.name, "load").await?;
        anyhow::ensure!(loaded.rows as usize == t.rows(), "{}: {} of {} rows loaded", t.name, loaded.rows, t.rows());
    }
    Ok(())
}

/// Writes every table as one Parquet file under `dir` and registers it in a new DataFusion context.
pub async fn parquet_context(dir: &Path, tables: &[Table]) -> anyhow::Result<SessionContext> {
    let ctx = SessionContext::new();
    for t in tables {
        let path = dir.join(format!("{}.parquet", t.name));
        let file = std::fs::File::create(&path)?;
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, t.batches[0].schema(), None)?;
        for b in &t.batches {
            writer.write(b)?;
        }
        writer.close()?;
        ctx.register_parquet(t.name, path.to_string_lossy().as_ref(), ParquetReadOptions::default()).await?;
    }
    Ok(ctx)
}

/// Runs `sql` over Flight SQL and collects the rows.
pub async fn run_flight(server: &Running, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
    run_flight_at(server.flight, sql).await
}

/// Runs `sql` over Flight SQL on the server at `addr` and collects the rows.
pub async fn run_flight_at(addr: std::net::SocketAddr, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
    let mut client = crate::harness::flight_client_at(addr).await?;
    crate::latency::flight_query(&mut client, sql).await
}

/// Runs `sql` in-process with DataFusion and collects the rows.
pub async fn run_datafusion(ctx: &SessionContext, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// Returns the rows as sorted text lines, so that answers can be compared whatever the order of ties.
pub fn canonical_rows(batches: &[RecordBatch]) -> anyhow::Result<Vec<String>> {
    rows_with(batches, normalize)
}

/// Returns the rows as sorted text lines with every number in [`comparable`] form, to compare with an engine whose
/// decimal scales and average types differ (DuckDB's `avg` of a decimal is a double).
pub fn comparable_rows(batches: &[RecordBatch]) -> anyhow::Result<Vec<String>> {
    rows_with(batches, comparable)
}

fn rows_with(batches: &[RecordBatch], cell: fn(&str) -> String) -> anyhow::Result<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for b in batches {
        let formatters: Vec<ArrayFormatter> =
            b.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options)).collect::<Result<_, _>>()?;
        for r in 0..b.num_rows() {
            let cells: Vec<String> = formatters.iter().map(|f| cell(&f.value(r).to_string())).collect();
            rows.push(cells.join("|"));
        }
    }
    rows.sort();
    Ok(rows)
}

/// Rounds long floating-point text to 9 significant digits: parallel aggregation may differ in the last bits.
fn normalize(cell: &str) -> String {
    match cell.parse::<f64>() {
        Ok(v) if cell.contains('.') && cell.len() > 12 => format!("{v:.9e}"),
        _ => cell.to_string(),
    }
}

/// An integer as it is; any other number to 6 significant digits (so `25.500000`, `25.50` and `25.5` agree); other
/// text as it is.
pub fn comparable(cell: &str) -> String {
    if cell.parse::<i64>().is_ok() {
        return cell.to_string();
    }
    match cell.parse::<f64>() {
        Ok(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{}", v as i64),
        Ok(v) => format!("{v:.5e}"),
        Err(_) => cell.to_string(),
    }
}

/// Whether two answers in [`comparable`] form agree: the same rows, numbers within a relative 1e-4 (an average of
/// decimals keeps 6 decimal places in DataFusion, a double in DuckDB: 0.049985 beside 0.0499853).
pub fn agree(a: &[String], b: &[String]) -> bool {
    let close = |x: &str, y: &str| match (x.parse::<f64>(), y.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-4 * x.abs().max(y.abs()),
        _ => x == y,
    };
    a.len() == b.len()
        && a.iter().zip(b).all(|(ra, rb)| {
            let (ca, cb): (Vec<&str>, Vec<&str>) = (ra.split('|').collect(), rb.split('|').collect());
            ca.len() == cb.len() && ca.iter().zip(&cb).all(|(x, y)| close(x, y))
        })
}

/// One query's medians on every engine of the run.
#[derive(Debug, Clone)]
pub struct QueryTiming {
    /// The query number.
    pub query: usize,
    /// Median seconds over Flight SQL on Quiver's own tables.
    pub quiver_s: f64,
    /// Median seconds in DataFusion in-process on Parquet.
    pub datafusion_s: f64,
    /// Median seconds in DuckDB on its own tables, when DuckDB ran.
    pub duckdb_native_s: Option<f64>,
    /// Median seconds in DuckDB on the Parquet files, when DuckDB ran.
    pub duckdb_parquet_s: Option<f64>,
    /// Rows returned.
    pub rows: usize,
    /// Whether Quiver and DataFusion gave the same answer.
    pub same_as_datafusion: bool,
    /// Whether Quiver and DuckDB (its own tables) gave the same answer, when DuckDB ran.
    pub same_as_duckdb: Option<bool>,
}

/// Runs every query `runs` times over Flight SQL and in DataFusion, alternating, and takes each one's median; adds
/// DuckDB's medians and compares its answers when `duckdb` is given.
pub async fn run_all(
    server: &Running,
    ctx: &SessionContext,
    which: &[usize],
    runs: usize,
    duckdb: Option<&crate::duckdb::Tpch>,
) -> anyhow::Result<Vec<QueryTiming>> {
    use crate::duckdb::median;
    let mut out = Vec::new();
    for &q in which {
        let sql = queries::query(q);
        let (mut quiver, mut datafusion) = (Vec::new(), Vec::new());
        let mut quiver_rows = Vec::new();
        let mut df_rows = Vec::new();
        for _ in 0..runs.max(1) {
            let started = Instant::now();
            quiver_rows = run_flight(server, sql).await?;
            quiver.push(started.elapsed().as_secs_f64());
            let started = Instant::now();
            df_rows = run_datafusion(ctx, sql).await?;
            datafusion.push(started.elapsed().as_secs_f64());
        }
        let a = canonical_rows(&quiver_rows)?;
        let b = canonical_rows(&df_rows)?;
        let find = |list: &[crate::duckdb::QueryRuns]| list.iter().find(|r| r.query == q).cloned();
        let native = duckdb.and_then(|d| find(&d.native));
        let parquet = duckdb.and_then(|d| find(&d.parquet));
        let same_as_duckdb = match &native {
            Some(n) => Some(agree(&comparable_rows(&quiver_rows)?, &crate::duckdb::canonical_rows(&n.rows))),
            None => None,
        };
        out.push(QueryTiming {
            query: q,
            quiver_s: median(&quiver),
            datafusion_s: median(&datafusion),
            duckdb_native_s: native.map(|n| median(&n.seconds)),
            duckdb_parquet_s: parquet.map(|p| median(&p.seconds)),
            rows: a.len(),
            same_as_datafusion: a == b,
            same_as_duckdb,
        });
    }
    Ok(out)
}

/// Formats the timings with Quiver's ratio to each reference, and the sums of the medians.
pub fn render(timings: &[QueryTiming]) -> String {
    let opt = |v: Option<f64>| v.map(|s| format!("{s:.3}")).unwrap_or_else(|| "-".into());
    let ratio = |q: f64, r: Option<f64>| r.map(|r| format!("{:.2}x", q / r)).unwrap_or_else(|| "-".into());
    let yes = |b: Option<bool>| b.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
    let mut out = format!(
        "{:>5} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>7} {:>6} {:>6}\n",
        "query",
        "quiver",
        "duckdb",
        "duckdb-pq",
        "datafusion",
        "/duckdb",
        "/duck-pq",
        "/datafus",
        "rows",
        "=df",
        "=duck"
    );
    let (mut q, mut d, mut n, mut p) = (0.0, 0.0, Some(0.0), Some(0.0));
    for t in timings {
        q += t.quiver_s;
        d += t.datafusion_s;
        n = n.zip(t.duckdb_native_s).map(|(a, b)| a + b);
        p = p.zip(t.duckdb_parquet_s).map(|(a, b)| a + b);
        out.push_str(&format!(
            "{:>5} {:>10.3} {:>10} {:>10} {:>10.3} {:>9} {:>9} {:>9} {:>7} {:>6} {:>6}\n",
            t.query,
            t.quiver_s,
            opt(t.duckdb_native_s),
            opt(t.duckdb_parquet_s),
            t.datafusion_s,
            ratio(t.quiver_s, t.duckdb_native_s),
            ratio(t.quiver_s, t.duckdb_parquet_s),
            ratio(t.quiver_s, Some(t.datafusion_s)),
            t.rows,
            t.same_as_datafusion,
            yes(t.same_as_duckdb),
        ));
    }
    out.push_str(&format!(
        "{:>5} {q:>10.3} {:>10} {:>10} {d:>10.3} {:>9} {:>9} {:>9}\n",
        "sum",
        opt(n),
        opt(p),
        ratio(q, n),
        ratio(q, p),
        ratio(q, Some(d)),
    ));
    out.push_str("(seconds: the median of the runs of each query; quiver over Flight SQL on its own tables)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_agree_across_decimal_scales_and_average_types_but_not_across_values() {
        let ours: Vec<String> = ["A|F|25.500000|0.049985|37734107.00"]
            .iter()
            .map(|r| r.split('|').map(comparable).collect::<Vec<_>>().join("|"))
            .collect();
        let theirs = vec![["A", "F", "25.5", "0.04998529583839761", "37734107"].map(comparable).join("|")];
        assert!(agree(&ours, &theirs), "{ours:?} vs {theirs:?}");
        let off = vec![["A", "F", "25.5", "0.0501", "37734107"].map(comparable).join("|")];
        assert!(!agree(&ours, &off));
        let other_key = vec![["N", "F", "25.5", "0.04998529583839761", "37734107"].map(comparable).join("|")];
        assert!(!agree(&ours, &other_key));
        assert!(!agree(&ours, &[]));
    }
}
