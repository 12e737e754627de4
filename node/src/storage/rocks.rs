//! [`RocksStore`]: the production [`HotStore`] on RocksDB.
//!
//! One RocksDB instance per node data directory. Large values (table chunks, already compressed Arrow IPC) go to blob
//! files, so compaction moves only small index entries instead of rewriting chunk bytes level after level. Writes with
//! [`Durability::Sync`] fsync the write-ahead log; RocksDB's write group lets concurrent writers share one fsync.

use std::path::{Path, PathBuf};

use rocksdb::{DB, Direction, IteratorMode, Options, ReadOptions, WriteOptions};

use super::{Durability, HotStore, KeyValue, RocksStoreOptions, StoreSnapshot, WriteBatch, WriteOp};
use crate::error::{Error, Result};

/// A [`HotStore`] on RocksDB.
pub struct RocksStore {
    db: DB,
    path: PathBuf,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore").field("path", &self.path).finish()
    }
}

impl RocksStore {
    /// Opens (or creates) the store in directory `path`.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Storage`] when RocksDB cannot open the directory (permissions, another process holds its
    /// lock, corruption).
    pub fn open(path: &Path, options: &RocksStoreOptions) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_write_buffer_size(options.write_buffer_bytes);
        opts.set_max_write_buffer_number(4);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
        opts.set_enable_blob_files(true);
        opts.set_min_blob_size(options.blob_min_bytes);
        // Chunk bytes are compressed Arrow IPC already; compressing them again costs CPU for nothing.
        opts.set_blob_compression_type(rocksdb::DBCompressionType::None);
        opts.set_enable_blob_gc(true);
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        let mut block = rocksdb::BlockBasedOptions::default();
        let cache = rocksdb::Cache::new_lru_cache(options.block_cache_bytes);
        block.set_block_cache(&cache);
        block.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&block);
        opts.set_blob_cache(&cache);
        let db = DB::open(&opts, path).map_err(|e| Error::storage("open", e))?;
        Ok(Self { db, path: path.to_path_buf() })
    }

    /// Returns the directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn scan_with(db: &DB, start: &[u8], end: &[u8], mut read: ReadOptions) -> Result<Vec<KeyValue>> {
    if start >= end {
        return Ok(Vec::new());
    }
    read.set_iterate_upper_bound(end.to_vec());
    let mut out = Vec::new();
    for item in db.iterator_opt(IteratorMode::From(start, Direction::Forward), read) {
        let (k, v) = item.map_err(|e| Error::storage("scan", e))?;
        out.push((k.into_vec(), v.into_vec()));
    }
    Ok(out)
}

impl HotStore for RocksStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(|e| Error::storage("get", e))
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.ops {
            match op {
                WriteOp::Put { key, value } => wb.put(key, value),
                WriteOp::Delete { key } => wb.delete(key),
                WriteOp::DeleteRange { start, end } => {
                    if start < end {
                        wb.delete_range(start, end)
                    }
                }
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(durability == Durability::Sync);
        self.db.write_opt(wb, &opts).map_err(|e| Error::storage("write", e))
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Vec<KeyValue>> {
        scan_with(&self.db, start, end, ReadOptions::default())
    }

    fn scan_reverse(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound(start.to_vec());
        read.set_iterate_upper_bound(end.to_vec());
        let mut out = Vec::new();
        for item in self.db.iterator_opt(IteratorMode::End, read) {
            let (k, v) = item.map_err(|e| Error::storage("scan", e))?;
            out.push((k.into_vec(), v.into_vec()));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    fn scan_keys(&self, start: &[u8], end: &[u8]) -> Result<Vec<Vec<u8>>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(end.to_vec());
        let mut it = self.db.raw_iterator_opt(read);
        it.seek(start);
        let mut out = Vec::new();
        while let Some(k) = it.key() {
            out.push(k.to_vec());
            it.next();
        }
        it.status().map_err(|e| Error::storage("scan keys", e))?;
        Ok(out)
    }

    fn snapshot(&self) -> Box<dyn StoreSnapshot + '_> {
        Box::new(RocksSnapshot { db: &self.db, snapshot: self.db.snapshot() })
    }

    fn size_bytes(&self) -> u64 {
        let prop = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        prop("rocksdb.total-sst-files-size")
            + prop("rocksdb.total-blob-file-size")
            + prop("rocksdb.cur-size-all-mem-tables")
    }

    fn engine_name(&self) -> &'static str {
        "rocksdb"
    }
}

struct RocksSnapshot<'a> {
    db: &'a DB,
    snapshot: rocksdb::Snapshot<'a>,
}

impl StoreSnapshot for RocksSnapshot<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.snapshot.get(key).map_err(|e| Error::storage("snapshot get", e))
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Vec<KeyValue>> {
        let mut read = ReadOptions::default();
        read.set_snapshot(&self.snapshot);
        scan_with(self.db, start, end, read)
    }
}
