//! The storage seam under the metadata replica: [`MetaStore`], a small ordered key/value store, and
//! [`MemMetaStore`], its in-memory implementation.
//!
//! The Raft log, the vote and the state machine's snapshot are written through this trait (the layout is in
//! `raft::keys`). The node implements it over a key prefix of its RocksDB database, the simulation over its
//! in-memory engine; this crate therefore names no storage engine.
//!
//! Keys are byte strings compared lexicographically. An implementation over a shared keyspace prefixes them with its
//! own namespace. A [`WriteBatch`] applies atomically and in order: a reader sees all of its operations or none.
//! `sync = true` means the batch is durable (fsync'd) when [`MetaStore::write`] returns; `sync = false` batches are
//! still atomic and ordered before every later batch, but may be lost by a crash of the machine.
//!
//! The methods are synchronous because both engines are: RocksDB blocks on an fsync, the in-memory engine does not
//! block at all. The Raft storage calls them inline on openraft's tasks, so a synced write holds one runtime worker
//! for the length of an fsync. Metadata writes are rare and small, which made that preferable to an async trait
//! (boxed futures on every call) or a hop to the blocking pool.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

/// The direction of a [`MetaStore::scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanOrder {
    /// Smallest key first.
    Ascending,
    /// Largest key first.
    Descending,
}

/// One operation of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Removes `key` (a no-op when absent).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Removes every key in `start..end`.
    DeleteRange {
        /// The first key removed.
        start: Vec<u8>,
        /// The first key kept after the range.
        end: Vec<u8>,
    },
}

/// Operations applied atomically and in order by [`MetaStore::write`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// Returns an empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put of `key` to `value`.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(WriteOp::Put { key: key.into(), value: value.into() });
        self
    }

    /// Adds a delete of `key`.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(WriteOp::Delete { key: key.into() });
        self
    }

    /// Adds a delete of every key in `start..end`.
    pub fn delete_range(&mut self, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(WriteOp::DeleteRange { start: start.into(), end: end.into() });
        self
    }

    /// Returns the operations in order.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// Returns whether the batch has no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl IntoIterator for WriteBatch {
    type Item = WriteOp;
    type IntoIter = std::vec::IntoIter<WriteOp>;

    fn into_iter(self) -> Self::IntoIter {
        self.ops.into_iter()
    }
}

/// An ordered key/value store that holds one metadata replica's Raft log, vote and snapshot.
///
/// Object-safe: the replica holds an `Arc<dyn MetaStore>`.
pub trait MetaStore: Send + Sync + fmt::Debug + 'static {
    /// Returns the value of `key`.
    ///
    /// # Errors
    ///
    /// Returns the engine's I/O error.
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>>;

    /// Returns up to `limit` entries whose keys lie in `start..end`, in `order`.
    ///
    /// # Errors
    ///
    /// Returns the engine's I/O error.
    fn scan(&self, start: &[u8], end: &[u8], order: ScanOrder, limit: usize) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Applies `batch` atomically and in order; with `sync`, the batch is durable when this returns.
    ///
    /// # Errors
    ///
    /// Returns the engine's I/O error; the batch is then not applied.
    fn write(&self, batch: WriteBatch, sync: bool) -> io::Result<()>;
}

/// A [`MetaStore`] in memory: a `BTreeMap` behind a mutex.
///
/// Clones share the same map, so a test can drop a replica and start a new one on a clone of its store, as a process
/// restart would reopen its disk. `sync` has no meaning here: everything is lost with the last clone.
#[derive(Debug, Clone, Default)]
pub struct MemMetaStore {
    map: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
}

impl MemMetaStore {
    /// Returns an empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the number of keys, for tests that check compaction.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Returns whether the store has no key.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // A panic while holding the lock leaves the map consistent (every operation is a single map call or a loop of
        // them under one lock), so a poisoned lock is still usable.
        self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl MetaStore for MemMetaStore {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self.lock().get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: &[u8], order: ScanOrder, limit: usize) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let map = self.lock();
        let range = map.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)));
        let entries = match order {
            ScanOrder::Ascending => range.take(limit).map(|(k, v)| (k.clone(), v.clone())).collect(),
            ScanOrder::Descending => range.rev().take(limit).map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        Ok(entries)
    }

    fn write(&self, batch: WriteBatch, _sync: bool) -> io::Result<()> {
        let mut map = self.lock();
        for op in batch {
            match op {
                WriteOp::Put { key, value } => {
                    map.insert(key, value);
                }
                WriteOp::Delete { key } => {
                    map.remove(&key);
                }
                WriteOp::DeleteRange { start, end } => {
                    if start < end {
                        let doomed: Vec<Vec<u8>> = map
                            .range::<[u8], _>((Bound::Included(start.as_slice()), Bound::Excluded(end.as_slice())))
                            .map(|(k, _)| k.clone())
                            .collect();
                        for key in doomed {
                            map.remove(&key);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A conformance suite for [`MetaStore`] implementations.
///
/// The node runs it against its RocksDB implementation, this crate against [`MemMetaStore`]. Each function panics
/// with a message naming the broken property.
pub mod conformance {
    use super::{MetaStore, ScanOrder, WriteBatch};

    /// Runs every check on `store`, which must be empty.
    pub fn check_all(store: &dyn MetaStore) {
        check_get_put_delete(store);
        check_scan_order_bounds_and_limit(store);
        check_batch_applies_in_order(store);
    }

    fn clear(store: &dyn MetaStore) {
        let mut batch = WriteBatch::new();
        batch.delete_range(vec![], vec![0xff; 8]);
        store.write(batch, true).expect("clear");
    }

    /// Checks that puts are read back, overwritten and deleted.
    pub fn check_get_put_delete(store: &dyn MetaStore) {
        clear(store);
        assert_eq!(store.get(b"a").expect("get"), None, "an empty store has no key");
        let mut batch = WriteBatch::new();
        batch.put(b"a".to_vec(), b"1".to_vec());
        store.write(batch, true).expect("put");
        assert_eq!(store.get(b"a").expect("get"), Some(b"1".to_vec()), "a put is read back");
        let mut batch = WriteBatch::new();
        batch.put(b"a".to_vec(), b"2".to_vec());
        store.write(batch, false).expect("overwrite");
        assert_eq!(store.get(b"a").expect("get"), Some(b"2".to_vec()), "a put overwrites");
        let mut batch = WriteBatch::new();
        batch.delete(b"a".to_vec()).delete(b"never".to_vec());
        store.write(batch, true).expect("delete");
        assert_eq!(store.get(b"a").expect("get"), None, "a delete removes the key");
    }

    /// Checks that scans honour the range bounds, order and limit.
    pub fn check_scan_order_bounds_and_limit(store: &dyn MetaStore) {
        clear(store);
        let mut batch = WriteBatch::new();
        for key in [&b"k\x00"[..], b"k\x01", b"k\x02", b"k\xff", b"l", b"j"] {
            batch.put(key.to_vec(), key.to_vec());
        }
        store.write(batch, true).expect("puts");
        let keys = |order, limit| -> Vec<Vec<u8>> {
            store.scan(b"k", b"l", order, limit).expect("scan").into_iter().map(|(k, _)| k).collect()
        };
        assert_eq!(
            keys(ScanOrder::Ascending, usize::MAX),
            vec![b"k\x00".to_vec(), b"k\x01".to_vec(), b"k\x02".to_vec(), b"k\xff".to_vec()],
            "start is inclusive, end exclusive, ascending"
        );
        assert_eq!(keys(ScanOrder::Descending, 2), vec![b"k\xff".to_vec(), b"k\x02".to_vec()], "descending, limited");
        assert_eq!(keys(ScanOrder::Ascending, 0), Vec::<Vec<u8>>::new(), "a zero limit returns nothing");
        assert!(store.scan(b"l", b"k", ScanOrder::Ascending, 10).expect("scan").is_empty(), "an empty range");
        let values: Vec<Vec<u8>> = store
            .scan(b"k\x01", b"k\x02", ScanOrder::Ascending, 10)
            .expect("scan")
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(values, vec![b"k\x01".to_vec()], "values come with their keys");
    }

    /// Checks that a batch's operations apply in order, including range deletes.
    pub fn check_batch_applies_in_order(store: &dyn MetaStore) {
        clear(store);
        let mut batch = WriteBatch::new();
        batch
            .put(b"r1".to_vec(), b"x".to_vec())
            .put(b"r2".to_vec(), b"x".to_vec())
            .put(b"r3".to_vec(), b"x".to_vec())
            .delete_range(b"r1".to_vec(), b"r3".to_vec())
            .put(b"r2".to_vec(), b"after".to_vec());
        store.write(batch, true).expect("batch");
        let all: Vec<(Vec<u8>, Vec<u8>)> = store.scan(b"r", b"s", ScanOrder::Ascending, 10).expect("scan");
        assert_eq!(
            all,
            vec![(b"r2".to_vec(), b"after".to_vec()), (b"r3".to_vec(), b"x".to_vec())],
            "the range delete removes r1 and r2 but not r3, and the later put survives it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_store_passes_conformance() {
        conformance::check_all(&MemMetaStore::new());
    }

    #[test]
    fn mem_store_clones_share_data() {
        let a = MemMetaStore::new();
        let b = a.clone();
        let mut batch = WriteBatch::new();
        batch.put(b"k".to_vec(), b"v".to_vec());
        a.write(batch, true).expect("write");
        assert_eq!(b.get(b"k").expect("get"), Some(b"v".to_vec()));
        let shared: Arc<dyn MetaStore> = Arc::new(b);
        assert_eq!(shared.get(b"k").expect("get"), Some(b"v".to_vec()));
    }
}
