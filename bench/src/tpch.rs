//! The TPC-H benchmark: Quiver over Flight SQL beside DataFusion in-process on Parquet, same data, same run.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::TryStreamExt;
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
    let mut client = server.flight_client().await?;
    let info = client.execute(sql.to_string(), None).await?;
    let mut out = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.ok_or_else(|| anyhow::anyhow!("endpoint without ticket"))?;
        let mut got: Vec<RecordBatch> = client.do_get(ticket).await?.try_collect().await?;
        out.append(&mut got);
    }
    Ok(out)
}

/// Runs `sql` in-process with DataFusion and collects the rows.
pub async fn run_datafusion(ctx: &SessionContext, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// Returns the rows as sorted text lines, so that answers can be compared whatever the order of ties.
pub fn canonical_rows(batches: &[RecordBatch]) -> anyhow::Result<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for b in batches {
        let formatters: Vec<ArrayFormatter> =
            b.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options)).collect::<Result<_, _>>()?;
        for r in 0..b.num_rows() {
            let cells: Vec<String> = formatters.iter().map(|f| normalize(&f.value(r).to_string())).collect();
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

/// The result of one query on both engines.
#[derive(Debug, Clone)]
pub struct QueryTiming {
    /// The query number.
    pub query: usize,
    /// Best-of-`runs` seconds over Flight SQL.
    pub quiver_s: f64,
    /// Best-of-`runs` seconds in DataFusion on Parquet.
    pub datafusion_s: f64,
    /// Rows returned.
    pub rows: usize,
    /// Whether both engines gave the same answer.
    pub same_answer: bool,
}

/// Runs every query `runs` times on both engines.
pub async fn run_all(
    server: &Running,
    ctx: &SessionContext,
    which: &[usize],
    runs: usize,
) -> anyhow::Result<Vec<QueryTiming>> {
    let mut out = Vec::new();
    for &q in which {
        let sql = queries::query(q);
        let mut quiver_s = f64::MAX;
        let mut datafusion_s = f64::MAX;
        let mut quiver_rows = Vec::new();
        let mut df_rows = Vec::new();
        for _ in 0..runs.max(1) {
            let started = Instant::now();
            quiver_rows = run_flight(server, sql).await?;
            quiver_s = quiver_s.min(started.elapsed().as_secs_f64());
            let started = Instant::now();
            df_rows = run_datafusion(ctx, sql).await?;
            datafusion_s = datafusion_s.min(started.elapsed().as_secs_f64());
        }
        let a = canonical_rows(&quiver_rows)?;
        let b = canonical_rows(&df_rows)?;
        out.push(QueryTiming { query: q, quiver_s, datafusion_s, rows: a.len(), same_answer: a == b });
    }
    Ok(out)
}
