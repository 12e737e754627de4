//! The hot store: an ordered key-value store that holds the catalog and the hot table chunks.
//!
//! [`HotStore`] is the seam between Quiver and its storage engine. It is deliberately small (get, atomic write batch,
//! ordered range scan, point-in-time snapshot) so that a second implementation stays cheap: [`RocksStore`] is the
//! production engine, [`MemoryStore`] runs embedded in-memory databases and the simulation, where RocksDB's own
//! threads and I/O cannot be controlled. One conformance suite (`storage/tests.rs`) runs against both.
//!
//! Durability: [`HotStore::write`] returns only once the batch is durable under the requested [`Durability`]. With
//! [`Durability::Sync`] the write-ahead log is fsync'd before the call returns; concurrent writers share one fsync
//! (RocksDB's group commit), so throughput grows with concurrency while every acknowledged write survives power loss.

mod memory;
#[cfg(not(madsim))]
mod rocks;
#[cfg(test)]
mod tests;

pub use memory::MemoryStore;
#[cfg(not(madsim))]
pub use rocks::RocksStore;

use crate::error::Result;

/// How durable a write must be before [`HotStore::write`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The write-ahead log is fsync'd: the write survives a crash of the machine.
    Sync,
    /// The write is in the write-ahead log but not fsync'd: it survives a crash of the process, not of the machine.
    /// Used for data that is not acknowledged until a later [`Durability::Sync`] write commits it.
    Buffered,
}

/// One change inside a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Removes every key in `[start, end)`.
    DeleteRange {
        /// The first key removed.
        start: Vec<u8>,
        /// The first key kept after the range.
        end: Vec<u8>,
    },
}

/// A set of changes applied atomically: after a crash either all of them are visible or none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
    bytes: usize,
}

impl WriteBatch {
    /// Returns an empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        let (key, value) = (key.into(), value.into());
        self.bytes += key.len() + value.len();
        self.ops.push(WriteOp::Put { key, value });
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        let key = key.into();
        self.bytes += key.len();
        self.ops.push(WriteOp::Delete { key });
    }

    /// Adds a range delete of `[start, end)`.
    pub fn delete_range(&mut self, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) {
        let (start, end) = (start.into(), end.into());
        self.bytes += start.len() + end.len();
        self.ops.push(WriteOp::DeleteRange { start, end });
    }

    /// Returns the changes in order.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// Returns whether the batch holds no change.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Adds every operation of `other` after this batch's own.
    pub fn append(&mut self, mut other: WriteBatch) {
        self.bytes += other.bytes;
        self.ops.append(&mut other.ops);
    }

    /// Returns the bytes of keys and values in the batch.
    pub fn size_bytes(&self) -> usize {
        self.bytes
    }
}

/// A key and its value, as returned by scans.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// An ordered key-value store holding Quiver's hot data.
///
/// Implementations are safe to share between threads. Calls block on I/O: async callers run them where blocking is
/// acceptable (they are short: point reads and appends to a log).
pub trait HotStore: Send + Sync + std::fmt::Debug + 'static {
    /// Returns the value of `key`.
    ///
    /// # Errors
    ///
    /// Returns [`crate::Error::Storage`] when the engine fails.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Applies `batch` atomically and returns once it is durable under `durability`.
    ///
    /// # Errors
    ///
    /// Returns [`crate::Error::Storage`] when the engine fails; then none of the batch is applied.
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()>;

    /// Returns every key-value pair with `start <= key < end`, in key order.
    ///
    /// # Errors
    ///
    /// Returns [`crate::Error::Storage`] when the engine fails.
    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Vec<KeyValue>>;

    /// Returns up to `limit` pairs with `start <= key < end`, largest key first.
    ///
    /// # Errors
    ///
    /// Returns [`crate::Error::Storage`] when the engine fails.
    fn scan_reverse(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>> {
        let mut all = self.scan(start, end)?;
        all.reverse();
        all.truncate(limit);
        Ok(all)
    }

    /// Returns every key with `start <= key < end`, in key order, without reading values.
    ///
    /// # Errors
    ///
    /// Returns [`crate::Error::Storage`] when the engine fails.
    fn scan_keys(&self, start: &[u8], end: &[u8]) -> Result<Vec<Vec<u8>>>;

    /// Returns a consistent, read-only view of the store as of now; later writes are not visible through it.
    fn snapshot(&self) -> Box<dyn StoreSnapshot + '_>;

    /// Returns the approximate bytes the store occupies (on disk, or in memory for [`MemoryStore`]).
    fn size_bytes(&self) -> u64;

    /// Returns a short name of the engine, for metrics and logs.
    fn engine_name(&self) -> &'static str;
}

/// A point-in-time view of a [`HotStore`].
pub trait StoreSnapshot {
    /// Returns the value of `key` as of the snapshot.
    ///
    /// # Errors
    ///
    /// Returns [`crate::Error::Storage`] when the engine fails.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Returns every pair with `start <= key < end` as of the snapshot, in key order.
    ///
    /// # Errors
    ///
    /// Returns [`crate::Error::Storage`] when the engine fails.
    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Vec<KeyValue>>;
}

/// Tuning of the RocksDB hot store (`RocksStore`).
#[derive(Debug, Clone)]
pub struct RocksStoreOptions {
    /// Bytes of the LRU block cache shared by all reads.
    pub block_cache_bytes: usize,
    /// Bytes of one memtable before it is flushed.
    pub write_buffer_bytes: usize,
    /// Values at least this large are stored in blob files.
    pub blob_min_bytes: u64,
}

impl Default for RocksStoreOptions {
    fn default() -> Self {
        Self { block_cache_bytes: 256 << 20, write_buffer_bytes: 64 << 20, blob_min_bytes: 16 << 10 }
    }
}
