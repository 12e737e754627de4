//! The key layout of the hot store.
//!
//! ```text
//! 0x00 "format"                      -> the on-disk format version (u32, big-endian)
//! 0x00 "store_id"                    -> this store's random identity (u64, big-endian), told apart in the cold tier
//! 0x00 "next_seq"                    -> a floor for the next chunk sequence number (u64, big-endian)
//! 0x02 table_id:u64be seq:u64be       -> chunk index entry (rows, stats)  — the chunk is committed iff this exists
//! 0x03 table_id:u64be seq:u64be       -> chunk data (compressed Arrow IPC stream)
//! 0x10 …                             -> the metadata replica: Raft log, vote, snapshot (quiver_meta's key layout)
//! ```
//!
//! The catalog is part of the replicated metadata (under 0x10), not a key of its own: format 1 kept it at
//! `0x01 "catalog"`, and this build refuses such a directory with a clear error rather than guess.
//!
//! Big-endian integers keep a table's chunks adjacent and in sequence order. A chunk's data is written before its
//! index entry, and the index entry is what commits it: data without an index entry (an insert that crashed before
//! its commit, or a chunk retired by DELETE/UPDATE whose deletion was lost in a crash) is garbage, swept at open.

use quiver_meta::TableId;

/// The key of the format version.
pub(crate) const FORMAT_KEY: &[u8] = b"\x00format";
/// The key of the store's identity: a data directory's hot chunks are known by it in the cold tier's manifests, so a
/// node that comes back with an empty disk under the same node id does not take the old disk's marks for its own.
pub(crate) const STORE_ID_KEY: &[u8] = b"\x00store_id";
/// The key of the chunk sequence floor, written whenever chunks are removed: recovery starts numbering at the highest
/// of it and the chunks found.
pub(crate) const NEXT_SEQ_KEY: &[u8] = b"\x00next_seq";
/// The on-disk format this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// The prefix of every key of the metadata replica.
pub(crate) const META_PREFIX: u8 = 0x10;

const INDEX_TAG: u8 = 0x02;
const DATA_TAG: u8 = 0x03;

fn chunk_key(tag: u8, table: TableId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(tag);
    k.extend_from_slice(&table.0.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Returns the key of a chunk's index entry.
pub(crate) fn index_key(table: TableId, seq: u64) -> Vec<u8> {
    chunk_key(INDEX_TAG, table, seq)
}

/// Returns the key of a chunk's data.
pub(crate) fn data_key(table: TableId, seq: u64) -> Vec<u8> {
    chunk_key(DATA_TAG, table, seq)
}

/// Returns the `[start, end)` range of every index entry.
pub(crate) fn all_index_range() -> (Vec<u8>, Vec<u8>) {
    (vec![INDEX_TAG], vec![INDEX_TAG + 1])
}

/// Returns the `[start, end)` range of every data key.
pub(crate) fn all_data_range() -> (Vec<u8>, Vec<u8>) {
    (vec![DATA_TAG], vec![DATA_TAG + 1])
}

/// Returns the `[start, end)` ranges (index, data) holding one table's chunks.
pub(crate) fn table_ranges(table: TableId) -> [(Vec<u8>, Vec<u8>); 2] {
    let next = TableId(table.0 + 1);
    [
        (chunk_key(INDEX_TAG, table, 0), chunk_key(INDEX_TAG, next, 0)),
        (chunk_key(DATA_TAG, table, 0), chunk_key(DATA_TAG, next, 0)),
    ]
}

/// Splits a chunk key (index or data) into its table id and sequence number.
pub(crate) fn parse_chunk_key(key: &[u8]) -> Option<(TableId, u64)> {
    if key.len() != 17 || (key[0] != INDEX_TAG && key[0] != DATA_TAG) {
        return None;
    }
    let table = u64::from_be_bytes(key[1..9].try_into().ok()?);
    let seq = u64::from_be_bytes(key[9..17].try_into().ok()?);
    Some((TableId(table), seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_sort_by_table_then_sequence_and_parse_back() {
        let a = index_key(TableId(1), 300);
        let b = index_key(TableId(1), 1 << 40);
        let c = index_key(TableId(2), 0);
        assert!(a < b && b < c);
        assert_eq!(parse_chunk_key(&b), Some((TableId(1), 1 << 40)));
        assert_eq!(parse_chunk_key(&data_key(TableId(7), 9)), Some((TableId(7), 9)));
        assert_eq!(parse_chunk_key(b"\x02short"), None);
        let [(s, e), _] = table_ranges(TableId(1));
        assert!(s <= a && b < e && c >= e);
    }
}
