//! Per-request plumbing of the Flight SQL service: metrics, response streams and DoPut decoding.
//!
//! - [`RequestTimer`] counts one RPC on the Flight SQL frontend's metrics. It is created when a handler starts and
//!   records the latency when dropped; for DoGet it travels inside the response stream, so the latency covers the
//!   whole response, not just the time to the first byte.
//! - [`encode_batches`] turns a stream of record batches into the DoGet response, batch by batch: nothing is
//!   collected, so a result larger than memory streams through.
//! - [`decode_batches`] and [`read_parameter_rows`] read the Arrow IPC data a client sends with DoPut.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::FlightData;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::server::PeekableFlightDataStream;
use datafusion::common::ScalarValue;
use datafusion::execution::SendableRecordBatchStream;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use tonic::Status;

use crate::error::Error;
use crate::metrics::{Frontend, Metrics};
use crate::server::status::{decode_failure, encode_failure, status_from};

/// The response stream type of DoGet, as the Flight service trait names it.
pub(super) type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// Counts one request on the Flight SQL frontend and records its latency when dropped.
#[derive(Debug)]
pub(super) struct RequestTimer {
    metrics: Arc<Metrics>,
    started: Instant,
    failed: bool,
}

impl RequestTimer {
    /// Counts a new request.
    pub(super) fn start(metrics: &Arc<Metrics>) -> Self {
        metrics.frontend(Frontend::FlightSql).requests.inc();
        Self { metrics: Arc::clone(metrics), started: Instant::now(), failed: false }
    }

    /// Counts the request as failed; a request counts as failed once, however many errors it meets.
    fn fail(&mut self) {
        if !self.failed {
            self.failed = true;
            self.metrics.frontend(Frontend::FlightSql).errors.inc();
        }
    }

    /// Ends a request whose whole response is `result`.
    pub(super) fn finish<T>(mut self, result: Result<T, Status>) -> Result<T, Status> {
        if result.is_err() {
            self.fail();
        }
        result
    }

    /// Ends a request whose response is a stream: the request ends when the stream does (or is dropped because the
    /// client went away), and fails if the stream yields an error.
    pub(super) fn stream(
        mut self,
        stream: impl Stream<Item = Result<FlightData, Status>> + Send + 'static,
    ) -> DoGetStream {
        Box::pin(stream.map(move |item| {
            if item.is_err() {
                self.fail();
            }
            item
        }))
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        self.metrics.frontend(Frontend::FlightSql).latency.observe(self.started.elapsed());
    }
}

/// Encodes batches as Flight data, announcing `schema` first even when no batch follows (clients read the schema
/// of an empty result from it). `max_flight_data_bytes` is the size encoded messages aim for.
///
/// View types (`Utf8View`, `BinaryView`) leave as `Utf8` / `Binary`: many Flight SQL clients (JDBC, older pyarrow)
/// cannot read view types, and a sliced view array would carry all of its data buffers in every message.
pub(super) fn encode_batches(
    schema: SchemaRef,
    batches: BoxStream<'static, Result<RecordBatch, Status>>,
    max_flight_data_bytes: usize,
) -> impl Stream<Item = Result<FlightData, Status>> + Send + 'static {
    let wire = wire_schema(&schema);
    let batches = if wire == schema {
        batches
    } else {
        let target = Arc::clone(&wire);
        batches
            .map(move |b| {
                let b = b?;
                let columns = b
                    .columns()
                    .iter()
                    .zip(target.fields())
                    .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| status_from(&Error::Arrow(e)))?;
                RecordBatch::try_new(Arc::clone(&target), columns).map_err(|e| status_from(&Error::Arrow(e)))
            })
            .boxed()
    };
    FlightDataEncoderBuilder::new()
        .with_schema(wire)
        .with_max_flight_data_size(max_flight_data_bytes)
        .build(batches.map_err(|status| FlightError::Tonic(Box::new(status))))
        .map_err(encode_failure)
}

/// Returns `schema` with view types replaced by their classic forms (see [`encode_batches`]).
pub(super) fn wire_schema(schema: &SchemaRef) -> SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    if !schema.fields().iter().any(|f| matches!(f.data_type(), DataType::Utf8View | DataType::BinaryView)) {
        return Arc::clone(schema);
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8View => f.as_ref().clone().with_data_type(DataType::Utf8),
            DataType::BinaryView => f.as_ref().clone().with_data_type(DataType::Binary),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Maps the engine's stream errors to statuses.
pub(super) fn engine_batches(stream: SendableRecordBatchStream) -> BoxStream<'static, Result<RecordBatch, Status>> {
    stream.map_err(|e| status_from(&Error::from(e))).boxed()
}

/// Decodes the Arrow IPC stream of a DoPut into record batches.
///
/// Messages without an IPC header are skipped: the first message of a DoPut may carry only the command (the
/// descriptor), and the IPC decoder rejects an empty header.
pub(super) fn decode_batches(input: PeekableFlightDataStream) -> FlightRecordBatchStream {
    FlightRecordBatchStream::new_from_flight_data(
        input.map_err(FlightError::from).try_filter(|data| futures::future::ready(!data.data_header.is_empty())),
    )
}

/// Reads every row of parameters a DoPut carries, each row as one value per parameter.
///
/// # Errors
///
/// Fails when the data is not valid Arrow IPC, or when the decoded parameters take more than `max_bytes` of memory
/// (parameters are held until the statement is closed, so they are bounded like a message).
pub(super) async fn read_parameter_rows(
    input: PeekableFlightDataStream,
    max_bytes: usize,
) -> Result<Vec<Vec<ScalarValue>>, Status> {
    let mut batches = decode_batches(input);
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(decode_failure)?;
        bytes = bytes.saturating_add(batch.get_array_memory_size());
        if bytes > max_bytes {
            return Err(status_from(&Error::TooLarge { what: "bound parameters", actual: bytes, limit: max_bytes }));
        }
        for row in 0..batch.num_rows() {
            let values = batch
                .columns()
                .iter()
                .map(|column| ScalarValue::try_from_array(column, row))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| status_from(&Error::from(e)))?;
            rows.push(values);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timer_counts_request_error_once_and_latency() {
        let metrics = Arc::new(Metrics::default());
        let timer = RequestTimer::start(&metrics);
        let _ = timer.finish::<()>(Err(Status::internal("x")));
        let ok = RequestTimer::start(&metrics);
        std::thread::sleep(Duration::from_millis(1));
        let _ = ok.finish(Ok(()));
        let f = metrics.frontend(Frontend::FlightSql);
        assert_eq!(f.requests.get(), 2);
        assert_eq!(f.errors.get(), 1);
        assert_eq!(f.latency.count(), 2);
    }

    #[tokio::test]
    async fn timer_in_stream_fails_once_and_ends_with_the_stream() {
        let metrics = Arc::new(Metrics::default());
        let items = vec![Ok(FlightData::default()), Err(Status::internal("a")), Err(Status::internal("b"))];
        let stream = RequestTimer::start(&metrics).stream(futures::stream::iter(items));
        let collected: Vec<_> = stream.collect().await;
        assert_eq!(collected.len(), 3);
        let f = metrics.frontend(Frontend::FlightSql);
        assert_eq!(f.errors.get(), 1);
        assert_eq!(f.latency.count(), 1);
    }
}
