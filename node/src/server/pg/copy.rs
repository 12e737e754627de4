//! `COPY table FROM STDIN`: rows streamed by the client in `CopyData` messages, appended in one atomic commit.
//!
//! ```text
//!  CopyData ──▶ pending bytes ──(≥ 1 MiB of whole rows)──▶ decode_delimited (blocking pool) ──▶ channel ─┐
//!  CopyDone ──▶ decode the rest ──▶ End ──────────────────────────────────────────────────────────────▶ channel ─┤
//!                                                 append task: Engine::append_stream(table, channel) ◀─┘
//! ```
//!
//! [`CopyIn`] is the state of one COPY on one connection. Its append task starts with the COPY and holds the
//! table's appender for the whole COPY; the appender commits only when the stream ends with the `End` marker that
//! [`CopyIn::finish`] sends after the last row. Every other ending (a line that does not decode, `CopyFail`, an
//! error of the append itself, the connection dropping and with it this state) closes the channel without `End`;
//! the stream then yields an error, the appender is dropped and nothing of the COPY becomes visible.
//!
//! Rows are cut at line ends outside CSV quotes, so a quoted field may span lines; a `\.` line ends the data, as in
//! PostgreSQL. The block size bounds the memory of a COPY to about one block plus the appender's pending chunk.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::BytesMut;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use pgwire::error::PgWireError;
use tokio::task::JoinHandle;

use super::error::protocol_error;
use super::request::Request;
use crate::engine::Engine;
use crate::engine::copy::{CopyFormat, CopyFormatKind, CopyFrom, decode_delimited};
use crate::error::{Error, Result};

/// Whole rows are decoded once this many bytes of them have arrived.
const BLOCK_BYTES: usize = 1024 * 1024;
/// Decoded batches buffered between the connection and the append task.
const CHANNEL_BATCHES: usize = 4;

/// What the connection sends the append task.
enum Chunk {
    /// Rows to append.
    Batch(RecordBatch),
    /// The last row has been sent: commit.
    End,
}

/// A `COPY … FROM STDIN` in progress on one connection.
pub(super) struct CopyIn {
    table: String,
    schema: SchemaRef,
    /// The format; its header flag is cleared once the first block is decoded.
    format: CopyFormat,
    pending: BytesMut,
    scanner: RowScanner,
    /// A `\.` line was seen: later data is ignored.
    ended: bool,
    sender: mpsc::Sender<Chunk>,
    append: Option<JoinHandle<Result<u64>>>,
    request: Request,
}

impl std::fmt::Debug for CopyIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyIn").field("table", &self.table).field("pending", &self.pending.len()).finish()
    }
}

impl CopyIn {
    /// Checks the target table and starts the append task.
    ///
    /// # Errors
    ///
    /// The table does not exist or is external, or the format is not text or CSV.
    pub(super) async fn start(engine: &Arc<Engine>, copy: CopyFrom, mut request: Request) -> Result<Self, PgWireError> {
        let schema = match target_schema(engine, &copy.table).await {
            Ok(schema) => schema,
            Err(e) => return Err(request.fail(&e)),
        };
        let quote = match copy.format.kind {
            CopyFormatKind::Text => None,
            CopyFormatKind::Csv => Some(b'"'),
            CopyFormatKind::Parquet | CopyFormatKind::Json => {
                let e = Error::Unsupported { what: "COPY FROM STDIN in a format other than text or CSV".into() };
                return Err(request.fail(&e));
            }
        };
        let (sender, receiver) = mpsc::channel(CHANNEL_BATCHES);
        let stream = chunk_stream(Arc::clone(&schema), receiver);
        let append_engine = Arc::clone(engine);
        let name = copy.table.clone();
        let append = tokio::spawn(async move { append_engine.append_stream(&name, stream).await });
        Ok(Self {
            table: copy.table,
            schema,
            format: copy.format,
            pending: BytesMut::new(),
            scanner: RowScanner::new(quote),
            ended: false,
            sender,
            append: Some(append),
            request,
        })
    }

    /// Returns the number of columns the client sends per row.
    pub(super) fn columns(&self) -> usize {
        self.schema.fields().len()
    }

    /// Takes a `CopyData` payload; decodes and forwards whole blocks of rows.
    ///
    /// # Errors
    ///
    /// A row does not decode, or the append failed; the caller then [`aborts`](Self::abort) the COPY.
    pub(super) async fn push(&mut self, data: &[u8]) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.pending.extend_from_slice(data);
        self.scanner.scan(&self.pending);
        if self.scanner.end_marker {
            self.ended = true;
            let complete = self.scanner.complete;
            self.pending.truncate(complete);
        }
        if self.scanner.complete >= BLOCK_BYTES || (self.ended && self.scanner.complete > 0) {
            let complete = self.scanner.complete;
            let block = self.pending.split_to(complete);
            self.scanner.consume(complete);
            self.forward(block).await?;
        }
        Ok(())
    }

    /// Decodes the rest, commits the COPY and returns the rows appended.
    ///
    /// # Errors
    ///
    /// A row does not decode or the append fails; nothing is appended then.
    pub(super) async fn finish(mut self) -> Result<u64, PgWireError> {
        match self.finish_rows().await {
            Ok(rows) => Ok(rows),
            Err(e) => Err(self.abort(&e).await),
        }
    }

    async fn finish_rows(&mut self) -> Result<u64> {
        let mut rest = std::mem::take(&mut self.pending);
        if !self.ended {
            // The last line may lack its newline; a last line `\.` is the end marker, not data.
            let tail = &rest[self.scanner.line_start..];
            if is_end_marker(tail.strip_suffix(b"\n").unwrap_or(tail)) {
                rest.truncate(self.scanner.line_start);
            }
        }
        if !rest.is_empty() {
            self.forward(rest).await?;
        }
        if self.sender.send(Chunk::End).await.is_err() {
            return Err(self.append_error().await);
        }
        self.sender.close_channel();
        match self.append.take() {
            Some(append) => join(append).await,
            None => Err(Error::Internal("the COPY append task was already joined".into())),
        }
    }

    /// Ends the COPY because of `error`, appending nothing; returns the error for the client.
    pub(super) async fn abort(mut self, error: &Error) -> PgWireError {
        self.stop().await;
        self.request.fail(error)
    }

    /// Ends the COPY because the client sent `CopyFail`, appending nothing.
    pub(super) async fn fail_by_client(mut self, message: &str) -> PgWireError {
        self.stop().await;
        let e = protocol_error("57014", format!("COPY from stdin failed: {message}"));
        self.request.fail_with(e)
    }

    /// Closes the channel without `End` and waits for the append task to roll back.
    async fn stop(&mut self) {
        self.sender.close_channel();
        if let Some(append) = self.append.take()
            && let Ok(rows) = join(append).await
        {
            // Unreachable by construction (no `End` was sent); said loudly because it would break atomicity.
            tracing::error!(table = %self.table, rows, "an aborted COPY committed rows");
        }
    }

    /// Decodes a block of whole rows and sends its batches to the append task.
    async fn forward(&mut self, block: BytesMut) -> Result<()> {
        let schema = Arc::clone(&self.schema);
        let format = self.format.clone();
        let block = block.freeze();
        let batches = tokio::task::spawn_blocking(move || {
            crate::cpu::lower_this_thread();
            decode_delimited(&schema, &format, &block)
        })
        .await
        .map_err(|e| Error::Internal(format!("COPY decode task: {e}")))??;
        self.format.header = false;
        for batch in batches {
            if self.sender.send(Chunk::Batch(batch)).await.is_err() {
                return Err(self.append_error().await);
            }
        }
        Ok(())
    }

    /// Returns why the append task stopped taking rows.
    async fn append_error(&mut self) -> Error {
        match self.append.take() {
            Some(append) => match join(append).await {
                Err(e) => e,
                Ok(_) => Error::Internal("the COPY append ended before its last row".into()),
            },
            None => Error::Internal("the COPY append task was already joined".into()),
        }
    }
}

/// Returns the schema of the native table a COPY appends to.
///
/// # Errors
///
/// [`Error::TableNotFound`], or [`Error::TableReadOnly`] for an external table.
pub(super) async fn target_schema(engine: &Engine, table: &str) -> Result<SchemaRef> {
    match engine.hot_table(table) {
        Some(t) => Ok(t.schema()),
        None if engine.tables().await.iter().any(|t| t.name == table) => {
            Err(Error::TableReadOnly { table: table.to_string() })
        }
        None => Err(Error::TableNotFound { table: table.to_string() }),
    }
}

async fn join(append: JoinHandle<Result<u64>>) -> Result<u64> {
    append.await.map_err(|e| Error::Internal(format!("COPY append task: {e}")))?
}

/// The rows of a COPY as a record batch stream that ends cleanly only at [`Chunk::End`].
fn chunk_stream(schema: SchemaRef, receiver: mpsc::Receiver<Chunk>) -> SendableRecordBatchStream {
    let batches = futures::stream::unfold(Some(receiver), |receiver| async move {
        let mut receiver = receiver?;
        match receiver.next().await {
            Some(Chunk::Batch(batch)) => Some((Ok(batch), Some(receiver))),
            Some(Chunk::End) => None,
            None => {
                let e = Error::Execution { message: "COPY ended without completing; nothing was appended".into() };
                Some((Err(DataFusionError::from(e)), None))
            }
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, batches))
}

/// Whether a line (without its newline) is the `\.` end-of-data marker.
fn is_end_marker(line: &[u8]) -> bool {
    line.strip_suffix(b"\r").unwrap_or(line) == b"\\."
}

/// Finds where whole rows end in the pending bytes, resuming where the previous scan stopped.
#[derive(Debug)]
struct RowScanner {
    /// The CSV quote character; `None` for the text format, which has no quoting.
    quote: Option<u8>,
    /// The next byte to look at.
    pos: usize,
    /// Where the row being scanned starts.
    line_start: usize,
    in_quotes: bool,
    /// Bytes of whole rows from the start.
    complete: usize,
    /// A `\.` line starts at `complete`.
    end_marker: bool,
}

impl RowScanner {
    fn new(quote: Option<u8>) -> Self {
        Self { quote, pos: 0, line_start: 0, in_quotes: false, complete: 0, end_marker: false }
    }

    fn scan(&mut self, data: &[u8]) {
        while self.pos < data.len() && !self.end_marker {
            let b = data[self.pos];
            if Some(b) == self.quote {
                // A doubled quote inside a quoted field toggles twice and so changes nothing.
                self.in_quotes = !self.in_quotes;
            } else if b == b'\n' && !self.in_quotes {
                if is_end_marker(&data[self.line_start..self.pos]) {
                    self.end_marker = true;
                    return;
                }
                self.complete = self.pos + 1;
                self.line_start = self.pos + 1;
            }
            self.pos += 1;
        }
    }

    /// Forgets the first `n` bytes, which were whole rows and have been taken.
    fn consume(&mut self, n: usize) {
        assert!(n <= self.complete, "only whole rows are taken from a COPY buffer");
        self.pos -= n;
        self.line_start -= n;
        self.complete -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(quote: Option<u8>, data: &[u8]) -> RowScanner {
        let mut s = RowScanner::new(quote);
        s.scan(data);
        s
    }

    #[test]
    fn cuts_rows_at_line_ends_outside_quotes() {
        let s = scan(Some(b'"'), b"1,\"a\nb\"\n2,c\n3,\"open\n");
        assert_eq!(s.complete, 12);
        assert!(s.in_quotes);
        let s = scan(None, b"1\ta\"\n2\tb");
        assert_eq!(s.complete, 5);
    }

    #[test]
    fn stops_at_the_end_marker() {
        let s = scan(None, b"1\ta\n\\.\n2\tb\n");
        assert_eq!(s.complete, 4);
        assert!(s.end_marker);
        let s = scan(Some(b'"'), b"1,\"\n\\.\n\"\n");
        assert!(!s.end_marker, "a quoted \\. is data");
    }

    #[test]
    fn resumes_after_consuming_whole_rows() {
        let mut data = b"1\ta\n2\tb".to_vec();
        let mut s = RowScanner::new(None);
        s.scan(&data);
        assert_eq!(s.complete, 4);
        data.drain(..4);
        s.consume(4);
        data.extend_from_slice(b"\n3\tc\n");
        s.scan(&data);
        assert_eq!(s.complete, data.len());
    }
}
