//! [`ColumnCache`]: decoded columns kept in memory, bounded by bytes, least recently used evicted first. One cache
//! serves both tiers: columns of hot chunks and of the row groups of cold files.
//!
//! A scan of a chunk otherwise reads the chunk's data from the hot store, checks it, decompresses it and decodes the
//! Arrow IPC stream, every time; a scan of a cold file decompresses and decodes Parquet pages. Chunks and files never
//! change once written, so a decoded column can be kept and shared (`ArrayRef` is reference counted) by every later
//! scan that projects it, at no risk of serving stale data: a chunk object (its shard, number and incarnation) and a file's name are
//! never reused; a retired chunk's entries are dropped with its data, and a dropped file's entries age out.
//!
//! Entries are keyed by where the column comes from ([`Source`]) and the column's index in the table. The cache is
//! moka's concurrent cache, weighted by the bytes of Arrow buffers (as `get_array_memory_size` counts them) and
//! evicting the least recently used first: a hit takes no lock that every scan shares (reads are recorded in
//! lock-free buffers and applied in batches), so concurrent scans on many cores do not queue on the cache. The
//! bytes held may pass `capacity_bytes` for a moment, until the cache applies its pending writes; a column larger
//! than the whole capacity is not kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use arrow::array::{Array, ArrayRef};
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;

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

/// Decoded columns of chunks, bounded by bytes.
pub(crate) struct ColumnCache {
    capacity_bytes: usize,
    /// `None` when disabled.
    columns: Option<moka::sync::Cache<Key, ArrayRef>>,
    /// What the cache's removals are counted in.
    counts: Arc<Counts>,
    /// How many of the evictions the metrics were told of.
    reported: AtomicU64,
}

/// Kept up to date by the cache's eviction listener.
#[derive(Debug, Default)]
struct Counts {
    /// Bytes of the columns inserted and not removed yet (for the metrics; the cache's own weighted size lags until
    /// its pending writes are applied).
    bytes: AtomicI64,
    /// Columns evicted for room since the cache was made.
    evicted: AtomicU64,
}

impl std::fmt::Debug for ColumnCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColumnCache")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("bytes", &self.columns.as_ref().map(moka::sync::Cache::weighted_size))
            .finish_non_exhaustive()
    }
}

/// The weight of a column: the bytes of its buffers (at most `u32::MAX`; larger ones are never kept).
fn weight(array: &ArrayRef) -> u32 {
    u32::try_from(array.get_array_memory_size()).unwrap_or(u32::MAX)
}

impl ColumnCache {
    /// Returns an empty cache holding at most `capacity_bytes` (0 disables it).
    pub(crate) fn new(capacity_bytes: usize) -> Self {
        let counts = Arc::new(Counts::default());
        let columns = (capacity_bytes > 0).then(|| {
            let counted = Arc::clone(&counts);
            moka::sync::Cache::builder()
                .max_capacity(capacity_bytes as u64)
                .weigher(|_: &Key, array: &ArrayRef| weight(array))
                .eviction_policy(EvictionPolicy::lru())
                .eviction_listener(move |_, array: ArrayRef, cause| {
                    counted.bytes.fetch_sub(i64::from(weight(&array)), Ordering::Relaxed);
                    if cause == RemovalCause::Size {
                        counted.evicted.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .build()
        });
        Self { capacity_bytes, columns, counts, reported: AtomicU64::new(0) }
    }

    /// Returns the column if cached, marking it recently used.
    pub(crate) fn get(&self, source: &Source, column: usize, metrics: &Metrics) -> Option<ArrayRef> {
        let columns = self.columns.as_ref()?;
        let found = columns.get(&(source.clone(), column));
        match found {
            Some(_) => metrics.column_cache_hits.inc(),
            None => metrics.column_cache_misses.inc(),
        }
        found
    }

    /// Keeps a decoded column, evicting the least recently used columns to make room.
    pub(crate) fn insert(&self, source: &Source, column: usize, array: ArrayRef, metrics: &Metrics) {
        let Some(columns) = &self.columns else { return };
        if array.get_array_memory_size() > self.capacity_bytes {
            return;
        }
        self.counts.bytes.fetch_add(i64::from(weight(&array)), Ordering::Relaxed);
        columns.insert((source.clone(), column), array);
        self.report(metrics);
    }

    /// Drops every cached column of the chunk `source` with `columns` columns (its data is being deleted or
    /// replaced).
    pub(crate) fn remove_chunk(&self, source: &Source, columns: usize, metrics: &Metrics) {
        let Some(cache) = &self.columns else { return };
        for column in 0..columns {
            cache.invalidate(&(source.clone(), column));
        }
        self.report(metrics);
    }

    /// Brings the metrics up to date with the cache (bytes held, evictions since the last report).
    fn report(&self, metrics: &Metrics) {
        metrics.column_cache_bytes.set(u64::try_from(self.counts.bytes.load(Ordering::Relaxed)).unwrap_or(0));
        let evicted = self.counts.evicted.load(Ordering::Relaxed);
        let before = self.reported.swap(evicted, Ordering::Relaxed);
        metrics.column_cache_evictions.add(evicted.saturating_sub(before));
    }

    /// Returns the bytes held now, pending writes applied.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.columns.as_ref().map_or(0, |c| {
            c.run_pending_tasks();
            usize::try_from(c.weighted_size()).unwrap_or(usize::MAX)
        })
    }

    /// Applies the cache's pending writes and evictions.
    #[cfg(test)]
    fn settle(&self, metrics: &Metrics) {
        if let Some(columns) = &self.columns {
            columns.run_pending_tasks();
            self.report(metrics);
        }
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
        cache.settle(&metrics);
        assert!(cache.get(&Source::Chunk(1, 1, 0), 0, &metrics).is_some(), "1 is now the most recently used");
        cache.settle(&metrics);
        cache.insert(&Source::Chunk(1, 3, 0), 0, column(1000), &metrics);
        cache.settle(&metrics);
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
        cache.settle(&metrics);
        assert!(cache.get(&Source::Chunk(1, 9, 0), 0, &metrics).is_none());
        let disabled = ColumnCache::new(0);
        disabled.insert(&Source::Chunk(1, 1, 0), 0, column(10), &metrics);
        assert!(disabled.get(&Source::Chunk(1, 1, 0), 0, &metrics).is_none());
    }
}
