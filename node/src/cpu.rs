//! The CPU runtime: a Tokio runtime of its own on which queries run (planning, DataFusion's partitions, the hot
//! store's chunk reads and decoding, cold Parquet decoding, DML's filtering), so that the runtime answering the
//! network (Flight SQL, PostgreSQL, HTTP, Raft, the internal endpoint) never waits behind a long query. As InfluxDB 3
//! and GreptimeDB do: the network side starts a query there and reads its batches through a bounded channel.
//!
//! Its threads run at a lower scheduling priority (nice 5, on Linux) than the network's, so that when every core
//! is busy with queries the kernel still runs a waking network thread first: a heartbeat, a Raft message or a
//! `SELECT 1` does not queue behind a scan. The blocking pool's threads, where ingests encode and write and commits
//! fsync, take the same lower priority ([`lower_this_thread`]).
//!
//! The runtime lives on a thread of its own, which owns it and drops it when the engine lets it go (a runtime may
//! not be dropped inside another's tasks). The simulation has one executor only: there, and with `threads = 0` in
//! tests that ask for it, queries run inline in the task that asks.

use std::future::Future;
#[cfg(not(madsim))]
use std::pin::Pin;
#[cfg(not(madsim))]
use std::sync::Arc;
#[cfg(not(madsim))]
use std::task::{Context, Poll};

#[cfg(not(madsim))]
use arrow::datatypes::SchemaRef;
#[cfg(not(madsim))]
use arrow::record_batch::RecordBatch;
#[cfg(not(madsim))]
use datafusion::error::DataFusionError;
use datafusion::error::Result as DfResult;
#[cfg(not(madsim))]
use datafusion::execution::RecordBatchStream;
use datafusion::execution::SendableRecordBatchStream;
#[cfg(not(madsim))]
use futures::Stream;

/// Batches a query runs ahead of its reader.
#[cfg(not(madsim))]
const AHEAD: usize = 2;

/// Where queries run: a runtime of their own, or inline.
#[derive(Clone, Default)]
pub(crate) struct CpuRuntime {
    #[cfg(not(madsim))]
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for CpuRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        #[cfg(not(madsim))]
        let dedicated = self.inner.is_some();
        #[cfg(madsim)]
        let dedicated = false;
        f.debug_struct("CpuRuntime").field("dedicated", &dedicated).finish()
    }
}

#[cfg(not(madsim))]
struct Inner {
    handle: tokio::runtime::Handle,
    /// Dropped with the last clone: the owning thread then shuts the runtime down.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl CpuRuntime {
    /// Queries run in the task that asks (the simulation; an engine opened with no query threads).
    pub(crate) fn inline() -> Self {
        CpuRuntime::default()
    }

    /// Starts a runtime of `threads` worker threads (0: one per core).
    ///
    /// # Errors
    ///
    /// The runtime or its thread could not be started.
    #[cfg(not(madsim))]
    pub(crate) fn start(threads: usize) -> std::io::Result<Self> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("quiver-query")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name("quiver-query-owner".into()).spawn(move || {
            // Returns when every clone of the `CpuRuntime` is gone; queries still running are cancelled.
            let _ = runtime.block_on(stopped);
            runtime.shutdown_background();
        })?;
        Ok(CpuRuntime { inner: Some(Arc::new(Inner { handle, _stop: stop })) })
    }

    /// Starts the query `start` makes here and returns its stream, or its error if it fails before its first batch
    /// is asked for. Dropping the stream cancels the query.
    ///
    /// # Errors
    ///
    /// Planning or starting errors; an internal error when the runtime stopped under it.
    pub(crate) async fn run<F>(&self, start: F) -> DfResult<SendableRecordBatchStream>
    where
        F: Future<Output = DfResult<SendableRecordBatchStream>> + Send + 'static,
    {
        #[cfg(madsim)]
        return start.await;
        #[cfg(not(madsim))]
        self.run_dedicated(start).await
    }

    #[cfg(not(madsim))]
    async fn run_dedicated<F>(&self, start: F) -> DfResult<SendableRecordBatchStream>
    where
        F: Future<Output = DfResult<SendableRecordBatchStream>> + Send + 'static,
    {
        let Some(inner) = &self.inner else { return start.await };
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<DfResult<SchemaRef>>();
        let (tx, rx) = tokio::sync::mpsc::channel::<DfResult<RecordBatch>>(AHEAD);
        let task = inner.handle.spawn(async move {
            let mut stream = match start.await {
                Ok(stream) => stream,
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
            };
            if started_tx.send(Ok(stream.schema())).is_err() {
                return;
            }
            use futures::StreamExt;
            while let Some(item) = stream.next().await {
                // The reader is gone (the client stopped reading): stop the query.
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        let mut remote = Remote { rx, task: Some(task), schema: None };
        match started_rx.await {
            Ok(Ok(schema)) => {
                remote.schema = Some(schema);
                Ok(Box::pin(remote))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(remote.failure().await),
        }
    }
}

/// Lowers the calling thread's scheduling priority to the query runtime's, once per thread: for the blocking pool's
/// threads (an ingest's encoding and writes, fsyncs, COPY's parsing), which must not take the cores from the threads
/// answering the network either.
#[cfg_attr(madsim, allow(dead_code))]
pub(crate) fn lower_this_thread() {
    #[cfg(not(madsim))]
    {
        thread_local! {
            static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        if !LOWERED.replace(true) {
            lower_priority();
        }
    }
}

/// Lowers the calling thread's scheduling priority (Linux: a thread has its own nice value).
#[cfg(not(madsim))]
fn lower_priority() {
    // A failure (not permitted) leaves the priority as it was, which is harmless.
    #[cfg(target_os = "linux")]
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 5);
}

/// A query's batches, read from the runtime it runs on.
#[cfg(not(madsim))]
struct Remote {
    rx: tokio::sync::mpsc::Receiver<DfResult<RecordBatch>>,
    task: Option<tokio::task::JoinHandle<()>>,
    schema: Option<SchemaRef>,
}

#[cfg(not(madsim))]
impl Remote {
    /// Why the query's task ended without a result.
    async fn failure(&mut self) -> DataFusionError {
        match self.task.take() {
            Some(task) => match task.await {
                Err(e) => ended(e),
                Ok(()) => DataFusionError::Execution("the query ended before it started".into()),
            },
            None => DataFusionError::Execution("the query ended early".into()),
        }
    }
}

/// The error a reader gets for a query task that panicked or was cancelled.
#[cfg(not(madsim))]
fn ended(e: tokio::task::JoinError) -> DataFusionError {
    DataFusionError::Execution(if e.is_panic() {
        format!("the query failed: {}", panic_text(e))
    } else {
        "the query was cancelled: the engine is shutting down".into()
    })
}

#[cfg(not(madsim))]
fn panic_text(e: tokio::task::JoinError) -> String {
    let panic = e.into_panic();
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

#[cfg(not(madsim))]
impl Stream for Remote {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            Poll::Pending => Poll::Pending,
            // The sender is gone: the query ended, or its task died. A task that died mid-stream must not look
            // like a complete result.
            Poll::Ready(None) => {
                let Some(task) = self.task.as_mut() else { return Poll::Ready(None) };
                match Pin::new(task).poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Ok(())) => {
                        self.task = None;
                        Poll::Ready(None)
                    }
                    Poll::Ready(Err(e)) => {
                        self.task = None;
                        Poll::Ready(Some(Err(ended(e))))
                    }
                }
            }
        }
    }
}

#[cfg(not(madsim))]
impl RecordBatchStream for Remote {
    fn schema(&self) -> SchemaRef {
        self.schema.clone().unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()))
    }
}

#[cfg(not(madsim))]
impl Drop for Remote {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
    use futures::StreamExt;

    fn schema() -> SchemaRef {
        Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            "n",
            arrow::datatypes::DataType::Int64,
            false,
        )]))
    }

    fn batch(i: i64) -> DfResult<RecordBatch> {
        RecordBatch::try_new(schema(), vec![Arc::new(arrow::array::Int64Array::from(vec![i]))])
            .map_err(DataFusionError::from)
    }

    fn numbers(n: i64) -> DfResult<SendableRecordBatchStream> {
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema(), futures::stream::iter((0..n).map(batch)))))
    }

    #[tokio::test]
    async fn a_query_runs_on_the_query_threads_and_streams_back_in_order() {
        let cpu = CpuRuntime::start(2).expect("query runtime");
        let stream = cpu
            .run(async {
                let name = std::thread::current().name().map(str::to_string);
                assert_eq!(name.as_deref(), Some("quiver-query"), "the query must start on the query runtime");
                numbers(50)
            })
            .await
            .expect("a test step");
        assert_eq!(stream.schema().field(0).name(), "n");
        let got: Vec<i64> = stream
            .map(|b| {
                b.expect("a test step")
                    .column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .expect("a test step")
                    .value(0)
            })
            .collect()
            .await;
        assert_eq!(got, (0..50).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn errors_and_panics_reach_the_reader() {
        let cpu = CpuRuntime::start(1).expect("query runtime");
        let Err(e) = cpu.run(async { Err(DataFusionError::Plan("no such column".into())) }).await else {
            panic!("a planning error must fail the start")
        };
        assert!(e.to_string().contains("no such column"), "{e}");
        let Err(e) = cpu.run(async { panic!("boom at start") }).await else { panic!("a panic must fail the start") };
        assert!(e.to_string().contains("boom at start"), "{e}");
        // A panic after some batches: the reader gets the batches, then an error, never a silent end.
        let mut stream = cpu
            .run(async {
                let first = numbers(2)?;
                let rest = futures::stream::once(async { panic!("boom mid-stream") });
                let schema = first.schema();
                Ok(Box::pin(RecordBatchStreamAdapter::new(schema, first.chain(rest))) as SendableRecordBatchStream)
            })
            .await
            .expect("a test step");
        assert!(stream.next().await.expect("a batch").is_ok());
        assert!(stream.next().await.expect("a batch").is_ok());
        let Some(Err(e)) = stream.next().await else { panic!("a panic mid-stream must reach the reader as an error") };
        assert!(e.to_string().contains("boom mid-stream"), "{e}");
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn dropping_the_stream_stops_the_query() {
        let cpu = CpuRuntime::start(1).expect("query runtime");
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        struct Notify(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Notify {
            fn drop(&mut self) {
                let _ = self.0.take().map(|t| t.send(()));
            }
        }
        let mut stream = cpu
            .run(async move {
                let guard = Notify(Some(dropped_tx));
                // An endless query, which holds the guard while it runs.
                let endless = futures::stream::unfold(guard, |g| async move {
                    tokio::task::yield_now().await;
                    Some((batch(1), g))
                });
                Ok(Box::pin(RecordBatchStreamAdapter::new(schema(), endless)) as SendableRecordBatchStream)
            })
            .await
            .expect("a test step");
        assert!(stream.next().await.expect("a batch").is_ok());
        drop(stream);
        tokio::time::timeout(std::time::Duration::from_secs(10), dropped_rx)
            .await
            .expect("the query must stop once its reader is gone")
            .expect("a test step");
    }
}
