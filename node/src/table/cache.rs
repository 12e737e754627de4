//! [`ColumnCache`]: decoded columns kept in memory, bounded by bytes, least recently used evicted first. One cache
//! serves both tiers: columns of hot chunks and of the row groups of cold files.
//!
//! A scan of a chunk otherwise reads the chunk's data from the hot store, checks it, decompresses it and decodes the
//! Arrow IPC stream, every time; a scan of a cold file decompresses and decodes Parquet pages. Chunks and files never
//! change once written, so a decoded column can be kept and shared (`ArrayRef` is reference counted) by every later
//! scan that projects it, at no risk of serving stale data: a chunk object (its shard, number and incarnation) and a file's name are
//! never reused; a retired chunk's entries are dropped with its data, and a dropped file's entries age out.
//!
//! Entries are keyed by where the column comes from ([`Source`]) and the column's index in the table. Eviction is least-recently-used by a logical tick, kept in a
//! `BTreeMap` ordered by last use; every operation takes one short mutex. The cache holds at most `capacity_bytes` of
//! Arrow buffers (as `get_array_memory_size` counts them); a column larger than the whole capacity is not kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef};

use crate::metrics::Metrics;

/// Where a decoded column comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    /// A hot chunk, by shard, sequence number and incarnation (shard ids are never reused; a replica may hold a number
    /// again, dropped and received anew or replaced by another chunk of that number, each time as another
    /// incarnation).
    Chunk(u64, u64, u64),
    /// A row group (by index) of a cold file (by its path in the bucket).
    RowGroup(Arc<str>, usize),
}

/// A cache key: the source and the column's index in the table.
type Key = (Source, usize);

#[derive(Debug)]
struct Entry {
    array: ArrayRef,
    bytes: usize,
    tick: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Last-use tick → key, oldest first.
    by_use: BTreeMap<u64, Key>,
    bytes: usize,
    tick: u64,
}

/// Decoded columns of chunks, bounded by bytes.
#[derive(Debug)]
pub(crate) struct ColumnCache {
    capacity_bytes: usize,
    inner: Mutex<Inner>,
}

impl ColumnCache {
    /// Returns an empty cache holding at most `capacity_bytes` (0 disables it).
    pub(crate) fn new(capacity_bytes: usize) -> Self {
        Self { capacity_bytes, inner: Mutex::new(Inner::default()) }
    }

    /// Returns whether the cache keeps anything.
    pub(crate) fn enabled(&self) -> bool {
        self.capacity_bytes > 0
    }

    /// Returns the column if cached, marking it recently used.
    pub(crate) fn get(&self, source: &Source, column: usize, metrics: &Metrics) -> Option<ArrayRef> {
        if !self.enabled() {
            return None;
        }
        let mut inner = self.inner.lock().expect("column cache lock poisoned");
        inner.tick += 1;
        let tick = inner.tick;
        let Inner { entries, by_use, .. } = &mut *inner;
        let key = (source.clone(), column);
        match entries.get_mut(&key) {
            Some(entry) => {
                by_use.remove(&entry.tick);
                entry.tick = tick;
                by_use.insert(tick, key);
                metrics.column_cache_hits.inc();
                Some(entry.array.clone())
            }
            None => {
                metrics.column_cache_misses.inc();
                None
            }
        }
    }

    /// Keeps a decoded column, evicting the least recently used columns to make room.
    pub(crate) fn insert(&self, source: &Source, column: usize, array: ArrayRef, metrics: &Metrics) {
        let bytes = array.get_array_memory_size();
        if !self.enabled() || bytes > self.capacity_bytes {
            return;
        }
        let mut inner = self.inner.lock().expect("column cache lock poisoned");
        inner.tick += 1;
        let tick = inner.tick;
        let key = (source.clone(), column);
        if let Some(old) = inner.entries.remove(&key) {
            inner.by_use.remove(&old.tick);
            inner.bytes -= old.bytes;
        }
        while inner.bytes + bytes > self.capacity_bytes {
            let Some((_, key)) = inner.by_use.pop_first() else { break };
            if let Some(evicted) = inner.entries.remove(&key) {
                inner.bytes -= evicted.bytes;
                metrics.column_cache_evictions.inc();
            }
        }
        inner.entries.insert(key.clone(), Entry { array, bytes, tick });
        inner.by_use.insert(tick, key);
        inner.bytes += bytes;
        metrics.column_cache_bytes.set(inner.bytes as u64);
    }

    /// Drops every cached column of the chunk `source` with `columns` columns (its data is being deleted or
    /// replaced).
    pub(crate) fn remove_chunk(&self, source: &Source, columns: usize, metrics: &Metrics) {
        if !self.enabled() {
            return;
        }
        let mut inner = self.inner.lock().expect("column cache lock poisoned");
        for column in 0..columns {
            if let Some(old) = inner.entries.remove(&(source.clone(), column)) {
                inner.by_use.remove(&old.tick);
                inner.bytes -= old.bytes;
            }
        }
        metrics.column_cache_bytes.set(inner.bytes as u64);
    }

    /// Returns the bytes held now.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.inner.lock().expect("column cache lock poisoned").bytes
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;

    use super::*;

    fn column(n: i64) -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(0..n))
    }

    #[test]
    fn evicts_least_recently_used_within_capacity() {
        let metrics = Metrics::default();
        let one = column(1000).get_array_memory_size();
        let cache = ColumnCache::new(one * 2 + one / 2);
        cache.insert(&Source::Chunk(1, 1, 0), 0, column(1000), &metrics);
        cache.insert(&Source::Chunk(1, 2, 0), 0, column(1000), &metrics);
        assert!(cache.get(&Source::Chunk(1, 1, 0), 0, &metrics).is_some(), "1 is now the most recently used");
        cache.insert(&Source::Chunk(1, 3, 0), 0, column(1000), &metrics);
        assert!(cache.get(&Source::Chunk(1, 2, 0), 0, &metrics).is_none(), "2 was least recently used");
        assert!(cache.get(&Source::Chunk(1, 1, 0), 0, &metrics).is_some());
        assert!(cache.get(&Source::Chunk(1, 3, 0), 0, &metrics).is_some());
        assert!(cache.bytes() <= one * 2 + one / 2);
        assert_eq!(metrics.column_cache_evictions.get(), 1);
        assert_eq!(metrics.column_cache_misses.get(), 1);
        assert_eq!(metrics.column_cache_hits.get(), 3);
    }

    #[test]
    fn removing_a_chunk_frees_its_columns_and_oversized_columns_are_not_kept() {
        let metrics = Metrics::default();
        let cache = ColumnCache::new(1 << 20);
        cache.insert(&Source::Chunk(1, 7, 0), 0, column(10), &metrics);
        cache.insert(&Source::Chunk(1, 7, 0), 1, column(10), &metrics);
        cache.insert(&Source::Chunk(1, 8, 0), 0, column(10), &metrics);
        cache.remove_chunk(&Source::Chunk(1, 7, 0), 2, &metrics);
        assert!(
            cache.get(&Source::Chunk(1, 7, 0), 0, &metrics).is_none()
                && cache.get(&Source::Chunk(1, 7, 0), 1, &metrics).is_none()
        );
        assert_eq!(cache.get(&Source::Chunk(1, 8, 0), 0, &metrics).map(|a| a.len()), Some(10));
        cache.insert(&Source::Chunk(1, 9, 0), 0, column(1 << 20), &metrics);
        assert!(cache.get(&Source::Chunk(1, 9, 0), 0, &metrics).is_none());
        let disabled = ColumnCache::new(0);
        disabled.insert(&Source::Chunk(1, 1, 0), 0, column(10), &metrics);
        assert!(disabled.get(&Source::Chunk(1, 1, 0), 0, &metrics).is_none());
    }
}
