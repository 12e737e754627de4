//! Group commit: the durable writes of concurrent statements share one synced write.
//!
//! A statement that inserts a few rows stages its chunk and index entries in a write batch and hands the batch to
//! the engine's committer, a thread of its own, and waits for the answer without holding any thread. The committer
//! takes every batch waiting when it wakes (up to [`GROUP_BYTES`]), writes them as one batch, synced once, and
//! answers each statement: all of them are durable, or none is (the write is atomic). While one group's fsync runs,
//! the next group gathers, so under load one fsync acknowledges many statements, and a lone statement pays one
//! fsync and two thread hand-offs.
//!
//! Before this, each INSERT parked a thread of the blocking pool in RocksDB's own write group: 64 concurrent
//! writers meant 64 threads waking and sleeping around each fsync.

use std::sync::Arc;
use std::sync::mpsc;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::storage::{Durability, HotStore, WriteBatch};

/// The most bytes of batches one group writes (a batch larger than this is written alone).
const GROUP_BYTES: usize = 16 << 20;

/// A write waiting for its group.
struct Request {
    batch: WriteBatch,
    done: tokio::sync::oneshot::Sender<std::result::Result<(), String>>,
}

/// The handle of a committer thread. Dropping it waits for the thread to write the batches sent and end, so that the
/// store it writes to is closed when the engine is (a database reopened at once finds it free).
#[derive(Debug)]
pub(crate) struct Committer {
    requests: std::sync::Mutex<Option<mpsc::Sender<Request>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Committer {
    fn drop(&mut self) {
        drop(self.requests.lock().map(|mut r| r.take()));
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the committer thread panicked");
        }
    }
}

impl Committer {
    /// Starts a committer writing to `store` with `durability`.
    ///
    /// # Errors
    ///
    /// When the thread cannot be started.
    pub(crate) fn start(store: Arc<dyn HotStore>, durability: Durability, metrics: Arc<Metrics>) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("quiver-commit".into())
            .spawn(move || run(&rx, store.as_ref(), durability, &metrics))
            .map_err(|e| Error::io("starting the committer thread", e))?;
        Ok(Committer { requests: std::sync::Mutex::new(Some(tx)), thread: Some(thread) })
    }

    /// Writes `batch` in the next group; durable (as the engine is configured) when this returns `Ok`.
    ///
    /// # Errors
    ///
    /// The store's error for the group's write (then nothing of the batch was written), or an internal error when
    /// the committer has stopped.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: the batch may be written after the future is dropped. Callers run it in a task of its own.
    pub(crate) async fn commit(&self, batch: WriteBatch) -> Result<()> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let sent = match self.requests.lock().expect("committer lock poisoned").as_ref() {
            Some(requests) => requests.send(Request { batch, done }).is_ok(),
            None => false,
        };
        if !sent {
            return Err(Error::Internal("the committer has stopped".into()));
        }
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(detail)) => Err(Error::storage("commit", detail)),
            Err(_) => Err(Error::Internal("the committer stopped before answering".into())),
        }
    }
}

/// The committer's loop: one synced write per group of waiting batches.
fn run(requests: &mpsc::Receiver<Request>, store: &dyn HotStore, durability: Durability, metrics: &Metrics) {
    while let Ok(first) = requests.recv() {
        let mut bytes = first.batch.size_bytes();
        let mut group = vec![first];
        while bytes < GROUP_BYTES {
            match requests.try_recv() {
                Ok(next) => {
                    bytes += next.batch.size_bytes();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let mut merged = WriteBatch::new();
        let mut answers = Vec::with_capacity(group.len());
        for request in group {
            merged.append(request.batch);
            answers.push(request.done);
        }
        let result = store.write(merged, durability).map_err(|e| e.to_string());
        if result.is_ok() {
            metrics.hot_bytes_written.add(bytes as u64);
            metrics.commit_groups.inc();
            metrics.commit_group_statements.add(answers.len() as u64);
        }
        for done in answers {
            // A statement that stopped waiting (its client went away) has its rows committed all the same.
            let _ = done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::Committer;
    use crate::metrics::Metrics;
    use crate::storage::{Durability, HotStore, MemoryStore, WriteBatch};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_batches_are_written_whole_in_fewer_writes() {
        let store: Arc<dyn HotStore> = Arc::new(MemoryStore::new());
        let metrics = Arc::new(Metrics::default());
        let committer =
            Arc::new(Committer::start(Arc::clone(&store), Durability::Sync, Arc::clone(&metrics)).expect("start"));
        let mut writers = Vec::new();
        for i in 0..200u32 {
            let committer = Arc::clone(&committer);
            writers.push(tokio::spawn(async move {
                let mut batch = WriteBatch::new();
                batch.put(format!("k{i:03}a").into_bytes(), i.to_be_bytes().to_vec());
                batch.put(format!("k{i:03}b").into_bytes(), i.to_be_bytes().to_vec());
                committer.commit(batch).await
            }));
        }
        for w in writers {
            w.await.expect("writer").expect("committed");
        }
        let all = store.scan(b"k", b"l").expect("scan");
        assert_eq!(all.len(), 400, "every put of every batch is there");
        let groups = metrics.commit_groups.get();
        assert!((1..=200).contains(&groups), "{groups} groups");
        assert_eq!(metrics.commit_group_statements.get(), 200, "every batch acknowledged once, in some group");
    }
}
