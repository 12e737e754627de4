//! The ingest benchmark.

use std::net::SocketAddr;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow_flight::sql::{CommandStatementIngest, TableDefinitionOptions, TableExistsOption, TableNotExistOption};
use bytes::Bytes;
use futures::SinkExt;

use crate::data::Table;
use crate::harness::Running;

/// One measured load.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// What was measured.
    pub path: String,
    /// Rows loaded.
    pub rows: u64,
    /// Seconds it took.
    pub seconds: f64,
}

impl Measurement {
    /// Returns rows per second.
    pub fn rows_per_s(&self) -> f64 {
        self.rows as f64 / self.seconds
    }
}

/// The label of PostgreSQL's COPY, the reference of Quiver's COPY.
pub const POSTGRES: &str = "PostgreSQL COPY (reference)";
/// The label of DuckDB's load from Parquet, the reference of Quiver's DoPut.
pub const DUCKDB: &str = "DuckDB from Parquet (reference)";

/// Formats the loads, each of Quiver's with its ratio to both references.
pub fn render(results: &[Measurement]) -> String {
    let rate = |label: &str| results.iter().find(|m| m.path == label).map(Measurement::rows_per_s);
    let (pg, duck) = (rate(POSTGRES), rate(DUCKDB));
    let ratio = |m: &Measurement, r: Option<f64>| r.map(|r| format!("{:.2}x", m.rows_per_s() / r));
    let mut out = format!(
        "{:<32} {:>10} {:>8} {:>12} {:>12} {:>12}\n",
        "path", "rows", "seconds", "rows/s", "vs PG COPY", "vs DuckDB"
    );
    for m in results {
        out.push_str(&format!(
            "{:<32} {:>10} {:>8.2} {:>12.0} {:>12} {:>12}\n",
            m.path,
            m.rows,
            m.seconds,
            m.rows_per_s(),
            ratio(m, pg).unwrap_or_else(|| "-".into()),
            ratio(m, duck).unwrap_or_else(|| "-".into()),
        ));
    }
    out
}

/// Writes `batches` to one Parquet file at `path`.
pub fn write_parquet(batches: &[RecordBatch], path: &std::path::Path) -> anyhow::Result<()> {
    let Some(first) = batches.first() else { anyhow::bail!("no rows to write") };
    let mut writer = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path)?, first.schema(), None)?;
    for b in batches {
        writer.write(b)?;
    }
    writer.close()?;
    Ok(())
}

/// Loads `table` over Flight SQL bulk ingest (`CommandStatementIngest` in one DoPut).
pub async fn via_flight(server: &Running, table: &Table, target: &str) -> anyhow::Result<Measurement> {
    via_flight_at(server.flight, table, target, "Quiver Flight SQL DoPut").await
}

/// Loads `table` over Flight SQL bulk ingest into the server at `addr` (the table is created unless it exists);
/// `path` names the measurement.
pub async fn via_flight_at(addr: SocketAddr, table: &Table, target: &str, path: &str) -> anyhow::Result<Measurement> {
    let mut client = crate::harness::flight_client_at(addr).await?;
    let command = CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: TableNotExistOption::Create.into(),
            if_exists: TableExistsOption::Append.into(),
        }),
        table: target.to_string(),
        schema: None,
        catalog: None,
        temporary: false,
        transaction_id: None,
        options: Default::default(),
    };
    let batches: Vec<RecordBatch> = table.batches.clone();
    let started = Instant::now();
    let stream = futures::stream::iter(batches.into_iter().map(Ok));
    let rows = client.execute_ingest(command, stream).await?;
    Ok(Measurement { path: path.into(), rows: rows as u64, seconds: started.elapsed().as_secs_f64() })
}

/// Encodes batches as CSV without a header, as a client would stream them to COPY.
pub fn to_csv(batches: &[RecordBatch]) -> anyhow::Result<Vec<Bytes>> {
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        let mut buf = Vec::with_capacity(b.num_rows() * 160);
        {
            let mut writer = arrow::csv::WriterBuilder::new().with_header(false).build(&mut buf);
            writer.write(b)?;
        }
        out.push(Bytes::from(buf));
    }
    Ok(out)
}

/// The `lineitem` DDL in PostgreSQL syntax, for the Quiver gateway and for a PostgreSQL reference server.
pub fn lineitem_ddl(name: &str) -> String {
    format!(
        "CREATE TABLE {name} (l_orderkey BIGINT NOT NULL, l_partkey BIGINT NOT NULL, l_suppkey BIGINT NOT NULL, \
         l_linenumber INT NOT NULL, l_quantity DECIMAL(15,2) NOT NULL, l_extendedprice DECIMAL(15,2) NOT NULL, \
         l_discount DECIMAL(15,2) NOT NULL, l_tax DECIMAL(15,2) NOT NULL, l_returnflag TEXT NOT NULL, \
         l_linestatus TEXT NOT NULL, l_shipdate DATE NOT NULL, l_commitdate DATE NOT NULL, \
         l_receiptdate DATE NOT NULL, l_shipinstruct TEXT NOT NULL, l_shipmode TEXT NOT NULL, \
         l_comment TEXT NOT NULL)"
    )
}

/// Loads CSV chunks into `table` with `COPY … FROM STDIN (FORMAT csv)` over a PostgreSQL connection.
pub async fn via_copy(
    client: &tokio_postgres::Client,
    csv: &[Bytes],
    table: &str,
    path: &str,
) -> anyhow::Result<Measurement> {
    let started = Instant::now();
    let sink = client.copy_in::<_, Bytes>(&format!("COPY {table} FROM STDIN WITH (FORMAT csv)")).await?;
    futures::pin_mut!(sink);
    for chunk in csv {
        sink.send(chunk.clone()).await?;
    }
    let rows = sink.finish().await?;
    Ok(Measurement { path: path.to_string(), rows, seconds: started.elapsed().as_secs_f64() })
}
