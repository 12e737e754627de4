//! [`MemoryStore`]: the in-memory [`HotStore`], for in-memory embedded databases and for the simulation.
//!
//! A `BTreeMap` behind a read-write lock. Snapshots copy the map lazily: the map lives in an `Arc` and writers clone
//! it only while a snapshot still holds the old version (copy on write), so snapshots are cheap when unused.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use super::{Durability, HotStore, KeyValue, StoreSnapshot, WriteBatch, WriteOp};
use crate::error::Result;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// An in-memory [`HotStore`]. Nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: RwLock<Arc<Map>>,
}

impl MemoryStore {
    /// Returns an empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn current(&self) -> Arc<Map> {
        Arc::clone(&self.map.read().expect("memory store lock poisoned: a writer panicked"))
    }
}

fn scan_map(map: &Map, start: &[u8], end: &[u8]) -> Vec<KeyValue> {
    if start >= end {
        return Vec::new();
    }
    map.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end))).map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl HotStore for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.current().get(key).cloned())
    }

    fn write(&self, batch: WriteBatch, _durability: Durability) -> Result<()> {
        let mut guard = self.map.write().expect("memory store lock poisoned: a writer panicked");
        let map = Arc::make_mut(&mut guard);
        for op in batch.ops {
            match op {
                WriteOp::Put { key, value } => {
                    map.insert(key, value);
                }
                WriteOp::Delete { key } => {
                    map.remove(&key);
                }
                WriteOp::DeleteRange { start, end } => {
                    if start < end {
                        let doomed: Vec<Vec<u8>> = map.range(start..end).map(|(k, _)| k.clone()).collect();
                        for k in doomed {
                            map.remove(&k);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Vec<KeyValue>> {
        Ok(scan_map(&self.current(), start, end))
    }

    fn scan_keys(&self, start: &[u8], end: &[u8]) -> Result<Vec<Vec<u8>>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let map = self.current();
        Ok(map.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end))).map(|(k, _)| k.clone()).collect())
    }

    fn snapshot(&self) -> Box<dyn StoreSnapshot + '_> {
        Box::new(MemorySnapshot { map: self.current() })
    }

    fn size_bytes(&self) -> u64 {
        self.current().iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }

    fn engine_name(&self) -> &'static str {
        "memory"
    }
}

struct MemorySnapshot {
    map: Arc<Map>,
}

impl StoreSnapshot for MemorySnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Vec<KeyValue>> {
        Ok(scan_map(&self.map, start, end))
    }
}
