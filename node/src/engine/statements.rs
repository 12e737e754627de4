//! The log of recent queries on this node and what each read from the cold tier, shown as `system.queries`.
//!
//! A query (a statement that returns rows) runs in a session state of its own carrying a [`ReadTally`] that every
//! scan of cold files adds to (GETs sent to the bucket, their bytes, and the read cache's hits and misses); when its
//! result stream ends, or is dropped by a client that stopped reading, the totals join the log. The log keeps the
//! last [`KEPT`] queries, in memory.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::Result as DfResult;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use futures::Stream;

use crate::cold::cache::ReadTally;

/// Queries kept in the log.
pub(crate) const KEPT: usize = 1000;

/// The longest statement text kept, in bytes.
const TEXT_MAX: usize = 4096;

/// One finished query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueryRecord {
    /// Numbered from 1 on this node since it started.
    pub(crate) id: u64,
    /// When it started, in milliseconds since the Unix epoch.
    pub(crate) started_ms: u64,
    /// How long until its result ended.
    pub(crate) duration_ms: u64,
    /// Its text (cut at [`TEXT_MAX`] bytes).
    pub(crate) text: String,
    /// Rows it returned.
    pub(crate) rows: u64,
    /// GET requests its scans sent to the cold tier's store.
    pub(crate) bucket_gets: u64,
    /// Bytes they returned.
    pub(crate) bucket_get_bytes: u64,
    /// Blocks of cold files the read cache had.
    pub(crate) cache_hits: u64,
    /// Blocks it did not have.
    pub(crate) cache_misses: u64,
}

/// The recent queries of this node.
#[derive(Debug, Default)]
pub(crate) struct QueryLog {
    inner: Mutex<(u64, VecDeque<QueryRecord>)>,
}

impl QueryLog {
    /// The queries kept, oldest first.
    pub(crate) fn records(&self) -> Vec<QueryRecord> {
        self.inner.lock().expect("query log poisoned").1.iter().cloned().collect()
    }

    /// Follows the result `stream` of the query `text`, whose scans count into `reads`; logs it when the stream ends
    /// or is dropped.
    pub(crate) fn track(
        self: &Arc<Self>,
        text: &str,
        reads: Arc<ReadTally>,
        stream: SendableRecordBatchStream,
    ) -> SendableRecordBatchStream {
        let mut text = text.to_string();
        if text.len() > TEXT_MAX {
            let mut end = TEXT_MAX;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        Box::pin(Tracked {
            inner: stream,
            log: Arc::clone(self),
            text,
            reads,
            started_ms: crate::clock::unix_ms(),
            started: tokio::time::Instant::now(),
            rows: 0,
        })
    }

    fn push(&self, mut record: QueryRecord) {
        let mut inner = self.inner.lock().expect("query log poisoned");
        inner.0 += 1;
        record.id = inner.0;
        if inner.1.len() == KEPT {
            inner.1.pop_front();
        }
        inner.1.push_back(record);
    }
}

/// A query's result stream, logged when it ends or is dropped.
struct Tracked {
    inner: SendableRecordBatchStream,
    log: Arc<QueryLog>,
    text: String,
    reads: Arc<ReadTally>,
    started_ms: u64,
    started: tokio::time::Instant,
    rows: u64,
}

impl Stream for Tracked {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(batch))) = &next {
            self.rows += batch.num_rows() as u64;
        }
        next
    }
}

impl RecordBatchStream for Tracked {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.log.push(QueryRecord {
            id: 0,
            started_ms: self.started_ms,
            duration_ms: self.started.elapsed().as_millis() as u64,
            text: std::mem::take(&mut self.text),
            rows: self.rows,
            bucket_gets: self.reads.gets.get(),
            bucket_get_bytes: self.reads.get_bytes.get(),
            cache_hits: self.reads.cache_hits.get(),
            cache_misses: self.reads.cache_misses.get(),
        });
    }
}
