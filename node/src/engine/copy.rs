//! `COPY … FROM`: bulk import from files (and, through the PostgreSQL gateway, from the client).
//!
//! DataFusion parses only `COPY … TO`; `COPY t FROM 'path' [WITH (...)]` and `COPY t FROM STDIN` are parsed here with
//! sqlparser's PostgreSQL grammar. Files are read with DataFusion's CSV, Parquet and JSON readers (so object-store
//! URLs work as in CREATE EXTERNAL TABLE) and appended in one atomic commit; columns are matched by position and cast
//! to the table's types.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions};
use datafusion::sql::sqlparser::ast::{
    CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement as SqlStatement,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use futures::StreamExt;

use super::{Command, Engine, QueryOutput};
use crate::error::{Error, Result};

/// The data format of a COPY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFormat {
    /// Which format.
    pub kind: CopyFormatKind,
    /// Whether the first line is a header (CSV).
    pub header: bool,
    /// The field delimiter (CSV and text).
    pub delimiter: u8,
    /// The text that means NULL (text: `\N`; CSV: the empty unquoted string).
    pub null: String,
}

/// Formats COPY reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormatKind {
    /// PostgreSQL's text format: tab-separated, `\N` for NULL.
    Text,
    /// Comma-separated values.
    Csv,
    /// Parquet files.
    Parquet,
    /// Newline-delimited JSON.
    Json,
}

impl Default for CopyFormat {
    fn default() -> Self {
        Self { kind: CopyFormatKind::Text, header: false, delimiter: b'\t', null: "\\N".into() }
    }
}

/// A parsed `COPY table FROM …`.
#[derive(Debug, Clone)]
pub struct CopyFrom {
    /// The target table.
    pub table: String,
    /// The file path or URL; `None` for `FROM STDIN`.
    pub path: Option<String>,
    /// The format.
    pub format: CopyFormat,
}

/// Parses `sql` as `COPY … FROM …`; returns `None` when it is another statement.
///
/// # Errors
///
/// [`Error::SqlSyntax`] / [`Error::Unsupported`] for a COPY FROM we cannot run.
pub fn parse_copy_from(sql: &str) -> Result<Option<CopyFrom>> {
    let trimmed = sql.trim_start();
    if trimmed.len() < 4 || !trimmed[..4].eq_ignore_ascii_case("copy") {
        return Ok(None);
    }
    let statements =
        Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| Error::SqlSyntax { message: e.to_string() })?;
    let [SqlStatement::Copy { source, to, target, options, legacy_options, .. }] = statements.as_slice() else {
        return Ok(None);
    };
    if *to {
        return Ok(None);
    }
    let CopySource::Table { table_name, columns } = source else {
        return Err(Error::Unsupported { what: "COPY (query) FROM".into() });
    };
    if !columns.is_empty() {
        return Err(Error::Unsupported { what: "a column list in COPY FROM; give all columns in table order".into() });
    }
    let table = table_name.0.last().map(|p| p.to_string()).unwrap_or_default();
    let table = if table.starts_with('"') { table.trim_matches('"').to_string() } else { table.to_lowercase() };
    let path = match target {
        CopyTarget::Stdin => None,
        CopyTarget::File { filename } => Some(filename.clone()),
        other => return Err(Error::Unsupported { what: format!("COPY FROM {other}") }),
    };
    let mut format = CopyFormat::default();
    if let Some(p) = &path {
        let lower = p.to_lowercase();
        if lower.ends_with(".csv") {
            format = CopyFormat { kind: CopyFormatKind::Csv, header: false, delimiter: b',', null: String::new() };
        } else if lower.ends_with(".parquet") {
            format.kind = CopyFormatKind::Parquet;
        } else if lower.ends_with(".json") || lower.ends_with(".ndjson") {
            format.kind = CopyFormatKind::Json;
        }
    }
    let mut delimiter_set = false;
    for o in options {
        match o {
            CopyOption::Format(ident) => {
                format.kind = match ident.value.to_lowercase().as_str() {
                    "csv" => CopyFormatKind::Csv,
                    "text" => CopyFormatKind::Text,
                    "parquet" => CopyFormatKind::Parquet,
                    "json" => CopyFormatKind::Json,
                    other => return Err(Error::Unsupported { what: format!("COPY format {other}") }),
                };
                if format.kind == CopyFormatKind::Csv {
                    if !delimiter_set {
                        format.delimiter = b',';
                    }
                    if format.null == "\\N" {
                        format.null = String::new();
                    }
                }
            }
            CopyOption::Header(h) => format.header = *h,
            CopyOption::Delimiter(c) => {
                format.delimiter = ascii_byte(*c)?;
                delimiter_set = true;
            }
            CopyOption::Null(n) => format.null = n.clone(),
            other => return Err(Error::Unsupported { what: format!("COPY option {other}") }),
        }
    }
    for o in legacy_options {
        match o {
            CopyLegacyOption::Csv(_) => {
                format.kind = CopyFormatKind::Csv;
                if !delimiter_set {
                    format.delimiter = b',';
                }
                if format.null == "\\N" {
                    format.null = String::new();
                }
            }
            CopyLegacyOption::Delimiter(c) => {
                format.delimiter = ascii_byte(*c)?;
                delimiter_set = true;
            }
            CopyLegacyOption::Null(n) => format.null = n.clone(),
            CopyLegacyOption::Header => format.header = true,
            other => return Err(Error::Unsupported { what: format!("COPY option {other}") }),
        }
    }
    Ok(Some(CopyFrom { table, path, format }))
}

fn ascii_byte(c: char) -> Result<u8> {
    if c.is_ascii() {
        Ok(c as u8)
    } else {
        Err(Error::Unsupported { what: format!("a non-ASCII COPY delimiter {c:?}") })
    }
}

/// Decodes a block of CSV or text-format lines (whole lines only) into batches of `schema`.
///
/// # Errors
///
/// [`Error::Execution`] naming the line's problem when a value does not parse as its column's type.
pub fn decode_delimited(schema: &SchemaRef, format: &CopyFormat, data: &[u8]) -> Result<Vec<RecordBatch>> {
    let mut builder = arrow::csv::ReaderBuilder::new(Arc::clone(schema))
        .with_header(format.header)
        .with_delimiter(format.delimiter)
        .with_batch_size(64 * 1024);
    let null = if format.kind == CopyFormatKind::Text && format.null == "\\N" {
        "^\\\\N$".to_string()
    } else if format.null.is_empty() {
        "^$".to_string()
    } else {
        format!("^{}$", regex_escape(&format.null))
    };
    builder = builder.with_null_regex(
        regex::Regex::new(&null).map_err(|e| Error::Execution { message: format!("NULL marker: {e}") })?,
    );
    if format.kind == CopyFormatKind::Text {
        // The text format has no quoting; a quote character is data.
        builder = builder.with_quote(0).with_escape(b'\\');
    }
    let reader = builder.build(std::io::Cursor::new(data)).map_err(|e| Error::Execution { message: e.to_string() })?;
    let mut out = Vec::new();
    for b in reader {
        out.push(b.map_err(|e| Error::Execution { message: format!("COPY data: {e}") })?);
    }
    Ok(out)
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Casts a batch's columns, by position, to `schema`.
pub(crate) fn cast_to(schema: &SchemaRef, batch: &RecordBatch, table: &str) -> Result<RecordBatch> {
    if batch.num_columns() != schema.fields().len() {
        return Err(Error::SchemaMismatch {
            table: table.to_string(),
            detail: format!("expected {} columns, the source has {}", schema.fields().len(), batch.num_columns()),
        });
    }
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, col) in schema.fields().iter().zip(batch.columns()) {
        columns.push(if col.data_type() == field.data_type() {
            Arc::clone(col)
        } else {
            arrow::compute::cast(col, field.data_type()).map_err(|e| Error::SchemaMismatch {
                table: table.to_string(),
                detail: format!("column \"{}\": {e}", field.name()),
            })?
        });
    }
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

impl Engine {
    pub(super) async fn copy_from_file(&self, copy: CopyFrom) -> Result<QueryOutput> {
        let Some(path) = copy.path.clone() else {
            return Err(Error::Unsupported { what: "COPY FROM STDIN outside the PostgreSQL protocol".into() });
        };
        let table = self.native_table(&copy.table)?;
        let schema = table.schema();
        let extension =
            std::path::Path::new(&path).extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
        let df = match copy.format.kind {
            CopyFormatKind::Csv | CopyFormatKind::Text => {
                let options = CsvReadOptions::new()
                    .schema(&schema)
                    .has_header(copy.format.header)
                    .delimiter(copy.format.delimiter)
                    .file_extension(&extension);
                self.ctx.read_csv(path.as_str(), options).await?
            }
            CopyFormatKind::Parquet => {
                self.ctx.read_parquet(path.as_str(), ParquetReadOptions::default().file_extension(&extension)).await?
            }
            CopyFormatKind::Json => {
                self.ctx.read_json(path.as_str(), JsonReadOptions::default().file_extension(&extension)).await?
            }
        };
        let stream = df.execute_stream().await?;
        let cast = stream.map(|batch| cast_to(&schema, &batch?, &copy.table));
        let rows = self.insert_routed(&table, cast).await?;
        Ok(QueryOutput::Affected { command: Command::Copy, rows })
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn parses_copy_from_forms() {
        let c = parse_copy_from("COPY t FROM STDIN WITH (FORMAT csv, HEADER true)").expect("parse").expect("copy");
        assert_eq!(c.table, "t");
        assert_eq!(c.path, None);
        assert_eq!(c.format.kind, CopyFormatKind::Csv);
        assert!(c.format.header);
        assert_eq!(c.format.delimiter, b',');
        let c = parse_copy_from("copy T from '/data/x.parquet'").expect("parse").expect("copy");
        assert_eq!((c.table.as_str(), c.format.kind), ("t", CopyFormatKind::Parquet));
        let c = parse_copy_from("COPY t FROM STDIN").expect("parse").expect("copy");
        assert_eq!(c.format, CopyFormat::default());
        assert!(parse_copy_from("COPY t TO '/x.csv'").expect("parse").is_none());
        assert!(parse_copy_from("SELECT 1").expect("parse").is_none());
    }

    #[test]
    fn decodes_text_and_csv_blocks() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let text = b"1\talpha\n2\t\\N\n";
        let batches = decode_delimited(&schema, &CopyFormat::default(), text).expect("text");
        let b = &batches[0];
        assert_eq!(b.num_rows(), 2);
        assert!(b.column(1).is_null(1));
        let csv = CopyFormat { kind: CopyFormatKind::Csv, header: true, delimiter: b',', null: String::new() };
        let batches = decode_delimited(&schema, &csv, b"id,name\n7,\"x,y\"\n8,\n").expect("csv");
        assert_eq!(batches[0].num_rows(), 2);
        assert!(batches[0].column(1).is_null(1));
        let err = decode_delimited(&schema, &CopyFormat::default(), b"notanumber\tx\n").expect_err("bad int");
        assert!(err.to_string().contains("COPY data"), "{err}");
    }
}
