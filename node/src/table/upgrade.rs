//! The rewrite of a format 2 hot store to format 3 (see [`super::keys`]), run once when such a directory is opened.
//!
//! Format 2 numbered chunks per node and keyed them by table alone. Every chunk of a live table moves whole to the
//! table's first shard (by slot order) and keeps its number, so that the tiering marks the cold tier holds for this
//! store (in that shard's manifest, where format 2 builds tiered every table) still name the same chunks; every
//! shard of the table numbers new chunks from the store's old floor on. Tables created before sharding have one
//! shard, so their rows are where the shard map says; a table created with several shards by a format 2 build keeps
//! its older rows in its first shard, which scans read like any other.
//!
//! Crash safety: the chunks' data is copied first (unsynced), then one synced batch writes the index entries and
//! floors, deletes the format 2 keys and sets format 3. A crash before that batch leaves format 2, and the rewrite
//! starts over at the next open; a crash after it leaves format 3.

use std::collections::{BTreeMap, HashMap};

use quiver_meta::{MetaState, ShardId, TableId};

use super::keys::{self, v2};
use crate::error::{Error, Result};
use crate::storage::{Durability, HotStore, WriteBatch};

/// The most bytes of chunk data copied per unsynced batch.
const COPY_BATCH_BYTES: usize = 64 << 20;

/// Each native table's shards in slot order, as the rewrite needs them.
pub(crate) type TableShards = HashMap<TableId, Vec<ShardId>>;

/// Returns each native table's shards in slot order.
pub(crate) fn table_shards(state: &MetaState) -> TableShards {
    state
        .catalog()
        .tables()
        .filter(|t| t.is_native())
        .map(|t| {
            let mut records: Vec<_> = state.table_shards(t.id).collect();
            records.sort_by_key(|r| r.slots.start);
            (t.id, records.into_iter().map(|r| r.shard_id).collect())
        })
        .collect()
}

/// Rewrites `store`, which holds format 2, to format 3, given each live table's shards ([`table_shards`]).
///
/// # Errors
///
/// [`Error::Corrupt`] when a format 2 key or value is malformed or a committed chunk's data is missing; store
/// errors. Nothing is changed for good unless the rewrite completes.
pub(crate) fn from_format_2(store: &dyn HotStore, shards: &TableShards) -> Result<()> {
    let floor = match store.get(v2::NEXT_SEQ_KEY)? {
        Some(v) => u64::from_be_bytes(v.as_slice().try_into().map_err(|_| Error::Corrupt {
            location: "chunk sequence floor (format 2)".into(),
            detail: format!("{} bytes where 8 were expected", v.len()),
        })?),
        None => 0,
    };
    let malformed =
        |key: &[u8]| Error::Corrupt { location: format!("key {key:?}"), detail: "malformed chunk key".into() };
    let mut max_seq = 0;
    let mut index = BTreeMap::new();
    let (start, end) = v2::index_range();
    for (key, value) in store.scan(&start, &end)? {
        let Some((true, table, seq)) = v2::parse(&key) else { return Err(malformed(&key)) };
        max_seq = max_seq.max(seq);
        if let Some(first) = shards.get(&table).and_then(|s| s.first()) {
            index.insert((table, seq), (*first, value));
        }
    }
    let (start, end) = v2::data_range();
    for key in store.scan_keys(&start, &end)? {
        let Some((false, _, seq)) = v2::parse(&key) else { return Err(malformed(&key)) };
        max_seq = max_seq.max(seq);
    }
    let floor = floor.max(max_seq + 1);

    let mut copy = WriteBatch::new();
    for ((table, seq), (shard, _)) in &index {
        let data = store.get(&v2::key(false, *table, *seq))?.ok_or_else(|| Error::Corrupt {
            location: format!("table {table} chunk {seq} (format 2)"),
            detail: "chunk data is missing".into(),
        })?;
        copy.put(keys::data_key(*table, *shard, *seq), data);
        if copy.size_bytes() >= COPY_BATCH_BYTES {
            store.write(std::mem::take(&mut copy), Durability::Buffered)?;
        }
    }
    if !copy.is_empty() {
        store.write(copy, Durability::Buffered)?;
    }

    let mut commit = WriteBatch::new();
    let chunks = index.len();
    for ((table, seq), (shard, value)) in index {
        commit.put(keys::index_key(table, shard, seq), value);
    }
    for (table, ids) in shards {
        for shard in ids {
            commit.put(keys::floor_key(*table, *shard), floor.to_be_bytes().to_vec());
        }
    }
    let (start, end) = v2::index_range();
    commit.delete_range(start, end);
    let (start, end) = v2::data_range();
    commit.delete_range(start, end);
    commit.delete(v2::NEXT_SEQ_KEY.to_vec());
    commit.put(keys::FORMAT_KEY.to_vec(), keys::FORMAT_VERSION.to_be_bytes().to_vec());
    store.write(commit, Durability::Sync)?;
    tracing::info!(chunks, tables = shards.len(), "rewrote the hot store from format 2 to format 3");
    Ok(())
}

/// Test support: turns a format 3 store back into format 2, as a format 2 build would have left it.
#[cfg(test)]
pub(crate) fn to_format_2_for_tests(store: &dyn HotStore, next_seq: u64) {
    let mut batch = WriteBatch::new();
    for (range, index) in [(keys::all_index_range(), true), (keys::all_data_range(), false)] {
        for (key, value) in store.scan(&range.0, &range.1).expect("scan") {
            let id = keys::parse_chunk_key(&key).expect("chunk key");
            batch.put(v2::key(index, id.table, id.seq), value);
            batch.delete(key);
        }
    }
    let (start, end) = keys::all_floor_range();
    batch.delete_range(start, end);
    batch.put(v2::NEXT_SEQ_KEY.to_vec(), next_seq.to_be_bytes().to_vec());
    batch.put(keys::FORMAT_KEY.to_vec(), v2::FORMAT_VERSION.to_be_bytes().to_vec());
    store.write(batch, Durability::Sync).expect("write");
}
