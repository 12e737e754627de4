//! Engine results as wire responses: command tags, and rows encoded by arrow-pg in text or binary.
//!
//! [`into_response`] turns a [`QueryOutput`] into a pgwire [`Response`]. Rows stay a stream: each record batch is
//! encoded to `DataRow`s when the client side pulls it, so a large result is never held whole. [`fields`] describes
//! the columns (for `RowDescription` and `Describe`), and both use the same [`RowEncoding`], so what `Describe`
//! announces is what `Execute` sends.
//!
//! Arrow types without a PostgreSQL counterpart of their own are sent as the nearest one: `Int8` as `int2`,
//! `UInt8`/`UInt16`/`UInt32` as the next wider signed integer and `UInt64` as `numeric` (arrow-pg's mapping),
//! `Float16` as `float4`, `FixedSizeBinary` as `bytea`, narrow decimals as `numeric`, and anything else arrow-pg
//! cannot encode as its text rendering (`text`).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::types::format::FormatOptions;

use super::error::protocol_error;
use super::request::Request;
use crate::engine::{Command, QueryOutput};
use crate::error::{Error, Result};

/// How the columns of a result are sent: their wire schema and the casts that produce it.
#[derive(Debug)]
pub(super) struct RowEncoding {
    fields: Arc<Vec<FieldInfo>>,
    wire_schema: SchemaRef,
    /// Whether any column is cast before encoding.
    casts: bool,
}

impl RowEncoding {
    /// Plans the encoding of rows of `schema` in `format`.
    ///
    /// # Errors
    ///
    /// A protocol error when `format` names a format per column for another number of columns.
    pub(super) fn new(schema: &Schema, format: &Format, options: Option<Arc<FormatOptions>>) -> PgWireResult<Self> {
        if let Format::Individual(codes) = format
            && codes.len() != schema.fields().len()
        {
            return Err(protocol_error(
                "08P01",
                format!("{} result format codes were sent for {} columns", codes.len(), schema.fields().len()),
            ));
        }
        let wire_fields: Vec<Field> =
            schema.fields().iter().map(|f| f.as_ref().clone().with_data_type(wire_data_type(f.data_type()))).collect();
        let casts = wire_fields.iter().zip(schema.fields()).any(|(w, f)| w.data_type() != f.data_type());
        let wire_schema = Arc::new(Schema::new_with_metadata(wire_fields, schema.metadata().clone()));
        let fields = Arc::new(arrow_schema_to_pg_fields(&wire_schema, format, options)?);
        Ok(Self { fields, wire_schema, casts })
    }

    /// Returns the column descriptions.
    pub(super) fn fields(&self) -> &Arc<Vec<FieldInfo>> {
        &self.fields
    }

    /// Casts a batch's columns to their wire types.
    fn conform(&self, batch: RecordBatch) -> Result<RecordBatch> {
        if !self.casts {
            return Ok(batch);
        }
        let columns = batch
            .columns()
            .iter()
            .zip(self.wire_schema.fields())
            .map(|(column, field)| {
                if column.data_type() == field.data_type() {
                    Ok(Arc::clone(column))
                } else {
                    arrow::compute::cast(column, field.data_type())
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(Arc::clone(&self.wire_schema), columns)?)
    }

    /// Encodes a batch into data rows.
    fn encode(&self, batch: RecordBatch) -> Result<impl Iterator<Item = PgWireResult<DataRow>> + Send + use<>> {
        let batch = self.conform(batch)?;
        if batch.num_columns() != self.fields.len() {
            return Err(Error::Internal(format!(
                "a result batch has {} columns, its schema {}",
                batch.num_columns(),
                self.fields.len()
            )));
        }
        Ok(encode_recordbatch(Arc::clone(&self.fields), batch))
    }
}

/// The Arrow type a column of type `data_type` is encoded as (see the module docs).
fn wire_data_type(data_type: &DataType) -> DataType {
    let wire = match data_type {
        DataType::Int8 => DataType::Int16,
        DataType::Float16 => DataType::Float32,
        DataType::FixedSizeBinary(_) => DataType::Binary,
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) => DataType::Decimal128(*p, *s),
        DataType::Dictionary(_, value) if wire_data_type(value) != **value => wire_data_type(value),
        // arrow-pg maps these to a PostgreSQL type but has no encoder for them.
        DataType::Decimal256(..) | DataType::ListView(_) | DataType::LargeListView(_) => DataType::Utf8,
        other if into_pg_type(other).is_ok() => other.clone(),
        _ => DataType::Utf8,
    };
    if wire == DataType::Utf8 && !arrow::compute::can_cast_types(data_type, &wire) {
        // Nothing better exists; arrow-pg reports the type as unsupported.
        return data_type.clone();
    }
    wire
}

/// Describes the columns of `schema` sent in `format`.
///
/// # Errors
///
/// A protocol error for a format list of the wrong length; arrow-pg's error for a type it cannot describe.
pub(super) fn fields(schema: &Schema, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
    Ok(RowEncoding::new(schema, format, None)?.fields().as_ref().clone())
}

/// Streams `stream` as data rows; an engine error mid-stream ends the rows with that error.
pub(super) fn query_response(
    schema: &Schema,
    stream: SendableRecordBatchStream,
    format: &Format,
    options: Arc<FormatOptions>,
    mut request: Request,
) -> PgWireResult<QueryResponse> {
    let encoding = match RowEncoding::new(schema, format, Some(options)) {
        Ok(e) => Arc::new(e),
        Err(e) => return Err(request.fail_with(e)),
    };
    let fields = Arc::clone(encoding.fields());
    // The request guard lives in the stream, so the latency it records covers sending every row.
    let rows = stream
        .map(move |batch| {
            let rows: Box<dyn Iterator<Item = PgWireResult<DataRow>> + Send> =
                match batch.map_err(Error::from).and_then(|b| encoding.encode(b)) {
                    Ok(rows) => Box::new(rows),
                    Err(e) => Box::new(std::iter::once(Err(request.fail(&e)))),
                };
            futures::stream::iter(rows)
        })
        .flatten();
    Ok(QueryResponse::new(fields, rows))
}

/// Turns a statement's output into its wire response.
pub(super) fn into_response(
    output: QueryOutput,
    format: &Format,
    options: Arc<FormatOptions>,
    request: Request,
) -> PgWireResult<Response> {
    Ok(match output {
        QueryOutput::Rows { schema, stream } => {
            Response::Query(query_response(&schema, stream, format, options, request)?)
        }
        // PostgreSQL's INSERT tag carries the inserted row's oid, always 0 since tables have no oids.
        QueryOutput::Affected { command: Command::Insert, rows } => {
            Response::Execution(Tag::new(Command::Insert.tag()).with_oid(0).with_rows(row_count(rows)))
        }
        QueryOutput::Affected { command, rows } => {
            Response::Execution(Tag::new(command.tag()).with_rows(row_count(rows)))
        }
        QueryOutput::Done { command: command @ Command::Begin } => Response::TransactionStart(Tag::new(command.tag())),
        QueryOutput::Done { command: command @ (Command::Commit | Command::Rollback) } => {
            Response::TransactionEnd(Tag::new(command.tag()))
        }
        QueryOutput::Done { command } => Response::Execution(Tag::new(command.tag())),
    })
}

fn row_count(rows: u64) -> usize {
    usize::try_from(rows).unwrap_or(usize::MAX)
}

/// Whether `error` ended a statement (and the connection may go on), rather than the connection itself.
pub(super) fn is_statement_error(error: &PgWireError) -> bool {
    !matches!(error, PgWireError::IoError(_))
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float32Array, Int8Array, UInt64Array};
    use arrow::datatypes::TimeUnit;
    use pgwire::api::Type;
    use pgwire::api::results::FieldFormat;

    use super::*;

    #[test]
    fn sends_types_without_a_postgres_counterpart_as_the_nearest_one() {
        assert_eq!(wire_data_type(&DataType::Int8), DataType::Int16);
        assert_eq!(wire_data_type(&DataType::Float16), DataType::Float32);
        assert_eq!(wire_data_type(&DataType::UInt64), DataType::UInt64);
        assert_eq!(wire_data_type(&DataType::Decimal256(40, 2)), DataType::Utf8);
        assert_eq!(
            wire_data_type(&DataType::Timestamp(TimeUnit::Nanosecond, None)),
            DataType::Timestamp(TimeUnit::Nanosecond, None)
        );
    }

    #[test]
    fn describes_columns_in_the_requested_formats() {
        let schema = Schema::new(vec![
            Field::new("a", DataType::Int8, true),
            Field::new("b", DataType::UInt64, true),
            Field::new("c", DataType::Utf8, true),
        ]);
        let f = fields(&schema, &Format::Individual(vec![1, 0, 1])).expect("fields");
        assert_eq!(f[0].datatype(), &Type::INT2);
        assert_eq!(f[1].datatype(), &Type::NUMERIC);
        assert_eq!(f[2].datatype(), &Type::TEXT);
        assert_eq!(f[0].format(), FieldFormat::Binary);
        assert_eq!(f[1].format(), FieldFormat::Text);
        assert!(fields(&schema, &Format::Individual(vec![1, 0])).is_err());
    }

    #[test]
    fn encodes_narrow_and_unsigned_integers_in_binary() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int8, true),
            Field::new("b", DataType::Float16, true),
            Field::new("c", DataType::UInt64, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int8Array::from(vec![Some(-3), None])),
                arrow::compute::cast(&Float32Array::from(vec![Some(1.5), None]), &DataType::Float16).expect("f16"),
                Arc::new(UInt64Array::from(vec![Some(u64::MAX), None])),
            ],
        )
        .expect("batch");
        let encoding = RowEncoding::new(&schema, &Format::UnifiedBinary, None).expect("encoding");
        let rows: Vec<DataRow> = encoding.encode(batch).expect("encode").collect::<PgWireResult<_>>().expect("rows");
        assert_eq!(rows.len(), 2);
        // int2 -3: length 2, then 0xfffd; float4 1.5: length 4.
        let first = &rows[0].data;
        assert_eq!(&first[..6], &[0, 0, 0, 2, 0xff, 0xfd]);
        assert_eq!(&first[6..10], &[0, 0, 0, 4]);
    }
}
