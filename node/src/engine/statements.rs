//! The log of recent queries on this node and what each read from the cold tier, shown as `system.queries`.
//!
//! A query (a statement that returns rows) runs in a session state of its own carrying a [`ReadTally`] that every
//! scan of cold files adds to (GETs sent to the bucket, their bytes, and the read cache's hits and misses); when its
//! result stream ends, or is dropped by a client that stopped reading, the totals join the log. The log keeps the
//! last [`KEPT`] queries, in memory.
//!
//! A query that ran as a multi-stage plan also gets the bytes its stages shipped between nodes: the planning node
//! gathers the metrics of every task of the plan (the distributed execution library sends them back once the tasks
//! end), sums the bytes each network boundary received, and adds the total to the query's entry, bounded by
//! [`METRICS_WAIT`]; until then, or when they never came, the entry shows none.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::dataframe::DataFrame;
use datafusion::error::Result as DfResult;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::physical_plan::ExecutionPlan;
use futures::Stream;

use crate::cold::cache::ReadTally;

/// Queries kept in the log.
pub(crate) const KEPT: usize = 1000;

/// The longest statement text kept, in bytes.
const TEXT_MAX: usize = 4096;

#[cfg_attr(madsim, allow(dead_code))]
/// How long the log waits, after a multi-stage query ended, for its tasks' metrics.
const METRICS_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The name of the metric counting the bytes a network boundary of a multi-stage plan received (the library's), and a
/// scan of a shard on another node (ours).
pub(crate) const BYTES_SHIPPED_METRIC: &str = "bytes_transferred";

/// The physical plan a query ran (the last, when it was planned again), for counting what it shipped.
#[derive(Debug, Clone, Default)]
pub(crate) struct RanPlan(Arc<Mutex<Option<Arc<dyn ExecutionPlan>>>>);

impl RanPlan {
    fn set(&self, plan: Arc<dyn ExecutionPlan>) {
        *self.0.lock().expect("plan slot poisoned") = Some(plan);
    }

    fn get(&self) -> Option<Arc<dyn ExecutionPlan>> {
        self.0.lock().expect("plan slot poisoned").clone()
    }
}

/// Plans `df` and starts it, keeping its physical plan in `ran`; with `optimized`, its logical plan is optimized
/// already (a prepared statement's) and goes straight to physical planning.
///
/// # Errors
///
/// Planning or starting errors.
pub(crate) async fn start(df: DataFrame, ran: &RanPlan, optimized: bool) -> DfResult<SendableRecordBatchStream> {
    let task = Arc::new(df.task_ctx());
    let plan = if optimized {
        let (state, logical) = df.into_parts();
        state.query_planner().create_physical_plan(&logical, &state).await?
    } else {
        df.create_physical_plan().await?
    };
    ran.set(Arc::clone(&plan));
    datafusion::physical_plan::execute_stream(plan, task)
}

#[cfg_attr(madsim, allow(dead_code))]
/// The bytes that crossed the network boundaries of `plan` (a multi-stage plan, with its tasks' metrics gathered),
/// and that its scans of shards on other nodes received.
fn bytes_shipped(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut bytes = 0u64;
    let _ = plan.apply(|node| {
        if let Some(metrics) = node.metrics() {
            for metric in metrics.iter() {
                if metric.value().name() == BYTES_SHIPPED_METRIC {
                    bytes += metric.value().as_usize() as u64;
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    bytes
}

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
    /// Bytes its stages sent each other between nodes (`None` until its tasks' metrics came, for a multi-stage plan;
    /// 0 for a plan that ran here alone).
    pub(crate) bytes_shipped: Option<u64>,
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

    /// Follows the result `stream` of the query `text`, whose scans count into `reads` and whose physical plan is in
    /// `ran`; logs it when the stream ends or is dropped.
    pub(crate) fn track(
        self: &Arc<Self>,
        text: &str,
        reads: Arc<ReadTally>,
        ran: RanPlan,
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
            ran,
            started_ms: crate::clock::unix_ms(),
            started: tokio::time::Instant::now(),
            rows: 0,
        })
    }

    /// Logs `record`; returns the id it got.
    fn push(&self, mut record: QueryRecord) -> u64 {
        let mut inner = self.inner.lock().expect("query log poisoned");
        inner.0 += 1;
        record.id = inner.0;
        if inner.1.len() == KEPT {
            inner.1.pop_front();
        }
        inner.1.push_back(record);
        inner.0
    }

    #[cfg_attr(madsim, allow(dead_code))]
    /// Sets the bytes shipped of query `id`, while the log keeps it.
    fn set_bytes_shipped(&self, id: u64, bytes: u64) {
        let mut inner = self.inner.lock().expect("query log poisoned");
        // Ids are consecutive in the log: the entry's place follows from the first one's id.
        let Some(first) = inner.1.front().map(|r| r.id) else { return };
        if let Some(record) = id.checked_sub(first).and_then(|i| inner.1.get_mut(i as usize)) {
            record.bytes_shipped = Some(bytes);
        }
    }
}

/// A query's result stream, logged when it ends or is dropped.
struct Tracked {
    inner: SendableRecordBatchStream,
    log: Arc<QueryLog>,
    text: String,
    reads: Arc<ReadTally>,
    ran: RanPlan,
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
        let plan = self.ran.get();
        #[cfg(not(madsim))]
        let distributed = plan.filter(|p| p.is::<datafusion_distributed::DistributedExec>());
        #[cfg(madsim)]
        let distributed: Option<Arc<dyn ExecutionPlan>> = plan.and(None);
        let id = self.log.push(QueryRecord {
            id: 0,
            started_ms: self.started_ms,
            duration_ms: self.started.elapsed().as_millis() as u64,
            text: std::mem::take(&mut self.text),
            rows: self.rows,
            bucket_gets: self.reads.gets.get(),
            bucket_get_bytes: self.reads.get_bytes.get(),
            cache_hits: self.reads.cache_hits.get(),
            bytes_shipped: distributed.is_none().then_some(0),
            cache_misses: self.reads.cache_misses.get(),
        });
        #[cfg(madsim)]
        let _ = (id, distributed);
        // The tasks on other nodes send their metrics once they end: gathered off this path, bounded.
        #[cfg(not(madsim))]
        if let Some(plan) = distributed
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let log = Arc::clone(&self.log);
            runtime.spawn(async move {
                let format = datafusion_distributed::DistributedMetricsFormat::Aggregated;
                let gathered = datafusion_distributed::rewrite_distributed_plan_with_metrics(plan, format);
                match tokio::time::timeout(METRICS_WAIT, gathered).await {
                    Ok(Ok(plan)) => log.set_bytes_shipped(id, bytes_shipped(&plan)),
                    Ok(Err(e)) => tracing::debug!(error = %e, id, "gathering a query's task metrics failed"),
                    Err(_) => tracing::debug!(id, "a query's task metrics did not all come"),
                }
            });
        }
    }
}
