//! [`SimDisk`]: a replica's disk in the simulation, with the crash semantics of a write-ahead log.
//!
//! A synced write is durable, and so is every write before it (an fsync of the log covers everything written before
//! it). Unsynced writes are visible at once but may be lost: [`SimDisk::crash`] either keeps them (the operating
//! system had flushed them) or rolls the disk back to its last synced state (they were still in the page cache),
//! as the seed decides.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use quiver_meta::{MemMetaStore, MetaStore, ScanOrder, WriteBatch};

/// The largest key the metadata store uses starts below this.
const KEY_END: [u8; 9] = [0xff; 9];

#[derive(Debug, Default)]
struct Inner {
    /// What reads see.
    current: MemMetaStore,
    /// What survives a crash that loses unsynced writes.
    durable: MemMetaStore,
    /// Unsynced batches since the last synced one, in order.
    pending: Vec<WriteBatch>,
}

/// One replica's disk; clones share it, so the next incarnation of a replica opens what the last one left.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    inner: Arc<Mutex<Inner>>,
}

impl SimDisk {
    /// Returns an empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns whether nothing was ever written.
    pub fn is_empty(&self) -> bool {
        self.lock().current.is_empty()
    }

    /// The machine stops: with `lose_unsynced`, writes since the last sync are gone; otherwise they were flushed.
    /// Returns how many unsynced batches were lost.
    pub fn crash(&self, lose_unsynced: bool) -> usize {
        let mut inner = self.lock();
        let pending = std::mem::take(&mut inner.pending);
        let lost = pending.len();
        if lose_unsynced {
            let restored = MemMetaStore::new();
            let mut batch = WriteBatch::new();
            for (key, value) in inner.durable.scan(&[], &KEY_END, ScanOrder::Ascending, usize::MAX).unwrap_or_default()
            {
                batch.put(key, value);
            }
            let _ = restored.write(batch, true);
            inner.current = restored;
            lost
        } else {
            for batch in pending {
                let _ = inner.durable.write(batch, true);
            }
            0
        }
    }
}

impl MetaStore for SimDisk {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.lock().current.get(key)
    }

    fn scan(&self, start: &[u8], end: &[u8], order: ScanOrder, limit: usize) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.lock().current.scan(start, end, order, limit)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> io::Result<()> {
        let mut inner = self.lock();
        inner.current.write(batch.clone(), sync)?;
        if sync {
            for earlier in std::mem::take(&mut inner.pending) {
                inner.durable.write(earlier, true)?;
            }
            inner.durable.write(batch, true)?;
        } else {
            inner.pending.push(batch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &[u8]) -> WriteBatch {
        let mut batch = WriteBatch::new();
        batch.put(key.to_vec(), b"v".to_vec());
        batch
    }

    #[test]
    fn a_crash_loses_only_unsynced_writes_when_told_to() {
        let disk = SimDisk::new();
        disk.write(put(b"a"), false).expect("write");
        disk.write(put(b"b"), true).expect("write");
        disk.write(put(b"c"), false).expect("write");
        assert!(disk.get(b"c").expect("get").is_some(), "unsynced writes are visible");
        assert_eq!(disk.crash(true), 1);
        assert!(disk.get(b"a").expect("get").is_some(), "a sync makes earlier writes durable");
        assert!(disk.get(b"b").expect("get").is_some());
        assert!(disk.get(b"c").expect("get").is_none(), "the unsynced write is lost");
        disk.write(put(b"d"), false).expect("write");
        assert_eq!(disk.crash(false), 0);
        assert!(disk.get(b"d").expect("get").is_some(), "a flushed write survives");
        assert_eq!(disk.crash(true), 0);
        assert!(disk.get(b"d").expect("get").is_some());
    }

    #[test]
    fn conformance() {
        quiver_meta::store::conformance::check_all(&SimDisk::new());
    }
}
