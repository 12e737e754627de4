//! The commands of the `quiver` binary other than `server`: the SQL shell, the demo, the file importer and cluster
//! administration.
//! `main.rs` parses flags and calls these.

pub mod admin;
pub mod demo;
pub mod import;
pub mod shell;

use arrow::array::RecordBatch;

use crate::engine::QueryOutput;
use crate::error::Result;

/// Formats one statement's output as the shell prints it.
///
/// # Errors
///
/// Fails when the statement's rows fail while streaming.
pub async fn render_output(output: QueryOutput) -> Result<String> {
    match output {
        QueryOutput::Rows { .. } => {
            let batches = output.collect().await?;
            render_batches(&batches)
        }
        QueryOutput::Affected { command, rows } => Ok(match command {
            crate::engine::Command::Insert => format!("INSERT 0 {rows}"),
            other => format!("{} {rows}", other.tag()),
        }),
        QueryOutput::Done { command } => Ok(command.tag().to_string()),
    }
}

/// Formats batches as a table followed by the row count.
///
/// # Errors
///
/// Fails when a value cannot be formatted.
pub fn render_batches(batches: &[RecordBatch]) -> Result<String> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let table = arrow::util::pretty::pretty_format_batches(batches)?;
    Ok(format!("{table}\n({rows} row{})", if rows == 1 { "" } else { "s" }))
}
