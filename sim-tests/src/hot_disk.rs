//! [`SimHotDisk`]: a node's hot store in the simulation (the node's `HotStore` seam; RocksDB's threads and I/O
//! cannot run inside madsim), with the crash semantics of RocksDB's write-ahead log.
//!
//! A write with `Durability::Sync` is durable, and so is every write before it (the fsync of the log covers
//! everything written before it). `Durability::Buffered` writes are visible at once but may be lost:
//! [`SimHotDisk::crash`] either keeps them (the operating system had flushed them) or rolls the store back to its last
//! synced state (they were still in the page cache), as the seed decides. Batches are atomic either way.
//!
//! A disk can fill up ([`SimHotDisk::set_full`]): every write then fails as RocksDB's does on ENOSPC, whole, until
//! it is freed.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use quiver_node::storage::{Durability, HotStore, KeyValue, StoreSnapshot, WriteBatch, WriteOp};
use quiver_node::{Error, Result};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Default)]
struct Inner {
    /// What reads see (shared with open snapshots; copied on write while one is open).
    current: Arc<Map>,
    /// What survives a crash that loses unsynced writes.
    durable: Map,
    /// The disk is full: writes fail.
    full: bool,
    /// Writes refused since the disk was made.
    refused: u64,
    /// Buffered batches since the last synced one, in order.
    pending: Vec<WriteBatch>,
}

/// One node's hot store; clones share it, so the next incarnation of a node opens what the last one left.
#[derive(Debug, Clone, Default)]
pub struct SimHotDisk {
    inner: Arc<Mutex<Inner>>,
}

fn apply(map: &mut Map, batch: &WriteBatch) {
    for op in batch.ops() {
        match op {
            WriteOp::Put { key, value } => {
                map.insert(key.clone(), value.clone());
            }
            WriteOp::Delete { key } => {
                map.remove(key);
            }
            WriteOp::DeleteRange { start, end } => {
                if start < end {
                    let doomed: Vec<Vec<u8>> = map.range(start.clone()..end.clone()).map(|(k, _)| k.clone()).collect();
                    for key in doomed {
                        map.remove(&key);
                    }
                }
            }
        }
    }
}

fn range<'a>(map: &'a Map, start: &'a [u8], end: &'a [u8]) -> impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> {
    let bounds = if start < end {
        (Bound::Included(start), Bound::Excluded(end))
    } else {
        (Bound::Excluded(start), Bound::Excluded(start))
    };
    map.range::<[u8], _>(bounds)
}

impl SimHotDisk {
    /// Returns an empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The machine stops: with `lose_unsynced`, buffered writes since the last sync are gone; otherwise they were
    /// flushed. Returns how many buffered batches were lost.
    pub fn crash(&self, lose_unsynced: bool) -> usize {
        let mut inner = self.lock();
        let pending = std::mem::take(&mut inner.pending);
        if lose_unsynced {
            inner.current = Arc::new(inner.durable.clone());
            pending.len()
        } else {
            for batch in &pending {
                apply(&mut inner.durable, batch);
            }
            0
        }
    }
}

impl SimHotDisk {
    /// Fills the disk (`true`: every write fails from now on, none applied) or frees it.
    pub fn set_full(&self, full: bool) {
        self.lock().full = full;
    }

    /// Whether the disk is full.
    pub fn is_full(&self) -> bool {
        self.lock().full
    }

    /// Writes refused since the disk was made (for being full).
    pub fn refused(&self) -> u64 {
        self.lock().refused
    }
}

impl HotStore for SimHotDisk {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().current.get(key).cloned())
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        let mut inner = self.lock();
        if inner.full {
            inner.refused += 1;
            let source = std::io::Error::from_raw_os_error(28); // ENOSPC
            return Err(Error::Io { operation: "write to the hot store".into(), source });
        }
        apply(Arc::make_mut(&mut inner.current), &batch);
        inner.pending.push(batch);
        if durability == Durability::Sync {
            let pending = std::mem::take(&mut inner.pending);
            for batch in &pending {
                apply(&mut inner.durable, batch);
            }
        }
        Ok(())
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Vec<KeyValue>> {
        let current = Arc::clone(&self.lock().current);
        Ok(range(&current, start, end).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn scan_keys(&self, start: &[u8], end: &[u8]) -> Result<Vec<Vec<u8>>> {
        let current = Arc::clone(&self.lock().current);
        Ok(range(&current, start, end).map(|(k, _)| k.clone()).collect())
    }

    fn snapshot(&self) -> Box<dyn StoreSnapshot + '_> {
        Box::new(Snapshot { map: Arc::clone(&self.lock().current) })
    }

    fn size_bytes(&self) -> u64 {
        self.lock().current.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }

    fn engine_name(&self) -> &'static str {
        "simulated"
    }
}

struct Snapshot {
    map: Arc<Map>,
}

impl StoreSnapshot for Snapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Vec<KeyValue>> {
        Ok(range(&self.map, start, end).map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> WriteBatch {
        let mut batch = WriteBatch::new();
        batch.put(key.as_bytes().to_vec(), b"v".to_vec());
        batch
    }

    fn keys(disk: &SimHotDisk) -> Vec<String> {
        disk.scan_keys(b"", b"\xff").expect("scan").into_iter().map(|k| String::from_utf8(k).expect("utf8")).collect()
    }

    #[test]
    fn a_sync_write_makes_earlier_buffered_writes_durable() {
        let disk = SimHotDisk::new();
        disk.write(put("a"), Durability::Buffered).expect("write");
        disk.write(put("b"), Durability::Sync).expect("write");
        disk.write(put("c"), Durability::Buffered).expect("write");
        assert_eq!(keys(&disk), ["a", "b", "c"]);
        assert_eq!(disk.crash(true), 1);
        assert_eq!(keys(&disk), ["a", "b"], "the buffered write after the last sync is lost");
    }

    #[test]
    fn a_crash_that_keeps_buffered_writes_makes_them_durable() {
        let disk = SimHotDisk::new();
        disk.write(put("a"), Durability::Buffered).expect("write");
        assert_eq!(disk.crash(false), 0);
        disk.write(put("b"), Durability::Buffered).expect("write");
        disk.crash(true);
        assert_eq!(keys(&disk), ["a"]);
    }

    #[test]
    fn a_full_disk_refuses_whole_writes_until_freed() {
        let disk = SimHotDisk::new();
        disk.write(put("a"), Durability::Sync).expect("write");
        disk.set_full(true);
        assert!(disk.write(put("b"), Durability::Sync).is_err());
        assert!(disk.write(put("c"), Durability::Buffered).is_err());
        assert_eq!((keys(&disk), disk.refused()), (vec!["a".to_string()], 2));
        disk.set_full(false);
        disk.write(put("d"), Durability::Sync).expect("write once freed");
        disk.crash(true);
        assert_eq!(keys(&disk), vec!["a".to_string(), "d".to_string()]);
    }

    #[test]
    fn snapshots_do_not_see_later_writes_and_range_deletes_apply() {
        let disk = SimHotDisk::new();
        disk.write(put("a"), Durability::Sync).expect("write");
        let snapshot = disk.snapshot();
        let mut batch = put("b");
        batch.delete_range(b"a".to_vec(), b"b".to_vec());
        disk.write(batch, Durability::Sync).expect("write");
        assert_eq!(snapshot.scan(b"", b"\xff").expect("scan").len(), 1);
        assert_eq!(keys(&disk), ["b"]);
        disk.crash(true);
        assert_eq!(keys(&disk), ["b"]);
    }
}
