//! [`HotMetaStore`]: the metadata replica's [`MetaStore`] over the node's own [`HotStore`], under one key prefix.
//!
//! The Raft log, vote and snapshot live in the same RocksDB database as the table data (prefix `0x10`, beside the
//! table keys), so one directory holds the whole node and a synced metadata write shares RocksDB's WAL
//! group commit with data commits. The in-memory store serves embedded in-memory databases and the simulation.

use std::io;
use std::sync::Arc;

use quiver_meta::{MetaStore, ScanOrder, WriteBatch as MetaBatch, WriteOp as MetaOp};

use crate::storage::{Durability, HotStore, WriteBatch};
use crate::table::keys::META_PREFIX;

/// A [`MetaStore`] over a key prefix of a [`HotStore`].
#[derive(Debug, Clone)]
pub struct HotMetaStore {
    store: Arc<dyn HotStore>,
}

impl HotMetaStore {
    /// Returns the metadata store kept in `store`.
    pub fn new(store: Arc<dyn HotStore>) -> Self {
        Self { store }
    }
}

fn prefixed(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(META_PREFIX);
    k.extend_from_slice(key);
    k
}

fn io_error(e: crate::Error) -> io::Error {
    io::Error::other(e.report())
}

impl MetaStore for HotMetaStore {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.store.get(&prefixed(key)).map_err(io_error)
    }

    fn scan(&self, start: &[u8], end: &[u8], order: ScanOrder, limit: usize) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let strip = |(k, v): (Vec<u8>, Vec<u8>)| (k[1..].to_vec(), v);
        match order {
            ScanOrder::Ascending => {
                let rows = self.store.scan(&prefixed(start), &prefixed(end)).map_err(io_error)?;
                Ok(rows.into_iter().take(limit).map(strip).collect())
            }
            ScanOrder::Descending => {
                let rows = self.store.scan_reverse(&prefixed(start), &prefixed(end), limit).map_err(io_error)?;
                Ok(rows.into_iter().map(strip).collect())
            }
        }
    }

    fn write(&self, batch: MetaBatch, sync: bool) -> io::Result<()> {
        let mut out = WriteBatch::new();
        for op in batch {
            match op {
                MetaOp::Put { key, value } => out.put(prefixed(&key), value),
                MetaOp::Delete { key } => out.delete(prefixed(&key)),
                MetaOp::DeleteRange { start, end } => out.delete_range(prefixed(&start), prefixed(&end)),
            }
        }
        let durability = if sync { Durability::Sync } else { Durability::Buffered };
        self.store.write(out, durability).map_err(io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;

    #[test]
    fn passes_the_meta_store_conformance_suite_and_keeps_to_its_prefix() {
        let hot: Arc<dyn HotStore> = Arc::new(MemoryStore::new());
        let mut data = WriteBatch::new();
        data.put(vec![0x02, 1], b"chunk index".to_vec());
        data.put(vec![0x11], b"after the prefix".to_vec());
        hot.write(data, Durability::Sync).expect("write data");
        let meta = HotMetaStore::new(Arc::clone(&hot));
        quiver_meta::store::conformance::check_all(&meta);
        assert_eq!(hot.get(&[0x02, 1]).expect("get"), Some(b"chunk index".to_vec()), "data keys untouched");
        assert_eq!(hot.get(&[0x11]).expect("get"), Some(b"after the prefix".to_vec()));
    }
}
