//! `quiver import FILE… --table T`: load CSV, Parquet or JSON files into a table, with a progress line.
//!
//! Each file is one atomic, durable append: after an error the files before it are in the table and the failing one
//! is not. The table is created from the first file's schema when it does not exist.

use std::sync::Arc;
use std::time::Duration;

use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::{Engine, IngestMode};
use crate::error::{Error, Result};

/// Imports `files` into `table`; returns the rows imported.
///
/// # Errors
///
/// Fails on the first file that cannot be read or does not fit the table.
pub async fn import(engine: &Arc<Engine>, table: &str, files: &[String], show_progress: bool) -> Result<u64> {
    let bar = if show_progress { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}] {human_pos} rows ({per_sec})")
            .expect("static template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut total = 0;
    for file in files {
        bar.set_message(file.clone());
        let lower = file.to_lowercase();
        let ctx = engine.session();
        let ext =
            std::path::Path::new(file).extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
        let df = if lower.ends_with(".parquet") {
            ctx.read_parquet(file.as_str(), ParquetReadOptions::default().file_extension(&ext)).await?
        } else if lower.ends_with(".json") || lower.ends_with(".ndjson") || lower.ends_with(".jsonl") {
            ctx.read_json(file.as_str(), JsonReadOptions::default().file_extension(&ext)).await?
        } else if lower.ends_with(".csv") || lower.ends_with(".tsv") || lower.ends_with(".txt") {
            let delimiter = if lower.ends_with(".tsv") { b'\t' } else { b',' };
            ctx.read_csv(
                file.as_str(),
                CsvReadOptions::new().has_header(true).delimiter(delimiter).file_extension(&ext),
            )
            .await?
        } else {
            return Err(Error::Unsupported {
                what: format!("the format of {file}; use a .csv, .tsv, .parquet, .json or .ndjson file"),
            });
        };
        let schema = Arc::new(df.schema().as_arrow().clone());
        let target_schema = match engine.hot_table(table) {
            Some(t) => t.schema(),
            None => Arc::clone(&schema),
        };
        let stream = df.execute_stream().await?;
        let progress = bar.clone();
        let table_name = table.to_string();
        let cast_schema = Arc::clone(&target_schema);
        let stream = stream.map(move |b| {
            let b = b?;
            progress.inc(b.num_rows() as u64);
            crate::engine::copy::cast_to(&cast_schema, &b, &table_name).map_err(Into::into)
        });
        let stream = Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&target_schema), stream));
        total += engine.ingest(table, IngestMode::CreateOrAppend, target_schema, stream).await?;
    }
    bar.finish_with_message(format!("imported into {table}"));
    Ok(total)
}
