//! The key layout of the hot store (format 3).
//!
//! ```text
//! 0x00 "format"                           -> the on-disk format version (u32, big-endian)
//! 0x00 "store_id"                         -> this store's random identity (u64, big-endian), told apart in the cold tier
//! 0x04 table:u64be shard:u64be seq:u64be  -> chunk index entry (rows, stats) — the chunk is committed iff this exists
//! 0x05 table:u64be shard:u64be seq:u64be  -> chunk data (compressed Arrow IPC stream)
//! 0x06 table:u64be shard:u64be            -> a floor for the shard's next chunk sequence number (u64, big-endian)
//! 0x07 table:u64be shard:u64be lsn:u64be  -> a prepared change of the shard's log (`crate::table::log`)
//! 0x08 table:u64be shard:u64be            -> the shard's commit point: the last change of its log committed here
//! 0x09 table:u64be shard:u64be            -> the identity the cold tier marks the replica's tiered chunks under
//! 0x0a table:u64be shard:u64be            -> the metadata version of the last removal by a statement spanning shards
//!                                            settled here (u64): older readers are refused
//! 0x10 …                                  -> the metadata replica: Raft log, vote, snapshot (quiver_meta's layout)
//! ```
//!
//! Chunks belong to a shard replica: sequence numbers count per shard (its primary assigns them, so that every
//! replica stores a chunk under the same number), and so do the floors written when chunks are removed.
//!
//! Format 2 keyed chunks by table and a node-wide number (`0x02 table seq` and `0x03 table seq`, with one floor at
//! `0x00 "next_seq"`); [`v2`] names those keys for the rewrite to format 3 at open (`crate::table::upgrade`). The
//! catalog is part of the replicated metadata (under 0x10), not a key of its own: format 1 kept it at
//! `0x01 "catalog"`, and this build refuses such a directory with a clear error rather than guess.
//!
//! Big-endian integers keep a shard's chunks adjacent and in sequence order, and a table's shards adjacent. A
//! chunk's data is written before its index entry, and the index entry is what commits it: data without an index
//! entry (an insert that crashed before its commit, or a chunk retired by DELETE/UPDATE whose deletion was lost in a
//! crash) is garbage, swept at open.

use quiver_meta::{ShardId, TableId};

/// The key of the format version.
pub(crate) const FORMAT_KEY: &[u8] = b"\x00format";
/// The key of the store's identity: the mark identity of a shard replica that has none of its own ([`mark_key`]), so
/// a node that comes back with an empty disk under the same node id does not take the old disk's marks for its own.
pub(crate) const STORE_ID_KEY: &[u8] = b"\x00store_id";
/// Present in a store created by a build that stores only the shards placed on its node: such a store deletes the
/// rows of a shard that left the node. A store without it (made before, when every node wrote rows of every shard)
/// may hold rows whose only copy it is outside their shard's placement, and keeps them.
pub(crate) const PLACED_ONLY_KEY: &[u8] = b"\x00placed_only";
/// The on-disk format this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 3;
/// The prefix of every key of the metadata replica.
pub(crate) const META_PREFIX: u8 = 0x10;

const INDEX_TAG: u8 = 0x04;
const DATA_TAG: u8 = 0x05;
const FLOOR_TAG: u8 = 0x06;
const PREPARED_TAG: u8 = 0x07;
const COMMIT_TAG: u8 = 0x08;
const MARK_TAG: u8 = 0x09;
const REMOVALS_TAG: u8 = 0x0a;
/// The length of a chunk key.
const CHUNK_KEY_LEN: usize = 25;

/// A chunk's place: its table, its shard and its number in the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ChunkId {
    pub(crate) table: TableId,
    pub(crate) shard: ShardId,
    pub(crate) seq: u64,
}

fn shard_prefix(tag: u8, table: TableId, shard: ShardId) -> Vec<u8> {
    let mut k = Vec::with_capacity(CHUNK_KEY_LEN);
    k.push(tag);
    k.extend_from_slice(&table.0.to_be_bytes());
    k.extend_from_slice(&shard.0.to_be_bytes());
    k
}

fn chunk_key(tag: u8, table: TableId, shard: ShardId, seq: u64) -> Vec<u8> {
    let mut k = shard_prefix(tag, table, shard);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Returns the key of a chunk's index entry.
pub(crate) fn index_key(table: TableId, shard: ShardId, seq: u64) -> Vec<u8> {
    chunk_key(INDEX_TAG, table, shard, seq)
}

/// Returns the key of a chunk's data.
pub(crate) fn data_key(table: TableId, shard: ShardId, seq: u64) -> Vec<u8> {
    chunk_key(DATA_TAG, table, shard, seq)
}

/// Returns the key of a shard's sequence floor.
pub(crate) fn floor_key(table: TableId, shard: ShardId) -> Vec<u8> {
    shard_prefix(FLOOR_TAG, table, shard)
}

/// Returns the key of a prepared change of a shard's log.
pub(crate) fn prepared_key(table: TableId, shard: ShardId, lsn: u64) -> Vec<u8> {
    chunk_key(PREPARED_TAG, table, shard, lsn)
}

/// Returns the key of a shard's commit point.
pub(crate) fn commit_key(table: TableId, shard: ShardId) -> Vec<u8> {
    shard_prefix(COMMIT_TAG, table, shard)
}

/// Returns the key of the identity under which the cold tier's manifests mark the shard replica's tiered chunks
/// (`crate::table::ShardReplica::mark_id`). A replica without one (made by an earlier build) is marked under the
/// store's identity ([`STORE_ID_KEY`]).
pub(crate) fn mark_key(table: TableId, shard: ShardId) -> Vec<u8> {
    shard_prefix(MARK_TAG, table, shard)
}

/// Returns the key of the metadata version of the last removal by a statement spanning shards that the shard
/// replica settled (`crate::table::ShardReplica::removals_settled`).
pub(crate) fn removals_key(table: TableId, shard: ShardId) -> Vec<u8> {
    shard_prefix(REMOVALS_TAG, table, shard)
}

/// Returns the `[start, end)` range of every shard replica's last settled removal.
pub(crate) fn all_removals_range() -> (Vec<u8>, Vec<u8>) {
    (vec![REMOVALS_TAG], vec![REMOVALS_TAG + 1])
}

/// Returns the `[start, end)` range of every prepared change.
pub(crate) fn all_prepared_range() -> (Vec<u8>, Vec<u8>) {
    (vec![PREPARED_TAG], vec![PREPARED_TAG + 1])
}

/// Returns the `[start, end)` range of every commit point.
pub(crate) fn all_commit_range() -> (Vec<u8>, Vec<u8>) {
    (vec![COMMIT_TAG], vec![COMMIT_TAG + 1])
}

/// Returns the `[start, end)` range of every replica's mark identity.
pub(crate) fn all_mark_range() -> (Vec<u8>, Vec<u8>) {
    (vec![MARK_TAG], vec![MARK_TAG + 1])
}

/// Splits a prepared change's key into its table, shard and log number.
pub(crate) fn parse_prepared_key(key: &[u8]) -> Option<ChunkId> {
    if key.len() != CHUNK_KEY_LEN || key[0] != PREPARED_TAG {
        return None;
    }
    Some(ChunkId {
        table: TableId(u64::from_be_bytes(key[1..9].try_into().ok()?)),
        shard: ShardId(u64::from_be_bytes(key[9..17].try_into().ok()?)),
        seq: u64::from_be_bytes(key[17..25].try_into().ok()?),
    })
}

/// Splits a floor, commit point, mark identity or settled removal key into its table and shard.
pub(crate) fn parse_shard_key(key: &[u8]) -> Option<(TableId, ShardId)> {
    if key.len() != 17 || !matches!(key[0], FLOOR_TAG | COMMIT_TAG | MARK_TAG | REMOVALS_TAG) {
        return None;
    }
    Some((
        TableId(u64::from_be_bytes(key[1..9].try_into().ok()?)),
        ShardId(u64::from_be_bytes(key[9..17].try_into().ok()?)),
    ))
}

/// Returns the `[start, end)` range of every index entry.
pub(crate) fn all_index_range() -> (Vec<u8>, Vec<u8>) {
    (vec![INDEX_TAG], vec![INDEX_TAG + 1])
}

/// Returns the `[start, end)` range of every data key.
pub(crate) fn all_data_range() -> (Vec<u8>, Vec<u8>) {
    (vec![DATA_TAG], vec![DATA_TAG + 1])
}

/// Returns the `[start, end)` range of every sequence floor.
pub(crate) fn all_floor_range() -> (Vec<u8>, Vec<u8>) {
    (vec![FLOOR_TAG], vec![FLOOR_TAG + 1])
}

/// Returns the `[start, end)` ranges (index, data, floors, prepared changes, commit points) holding one table's chunks
/// and logs, all shards.
pub(crate) fn table_ranges(table: TableId) -> [(Vec<u8>, Vec<u8>); 5] {
    let range = |tag: u8| {
        let mut start = vec![tag];
        start.extend_from_slice(&table.0.to_be_bytes());
        let mut end = vec![tag];
        end.extend_from_slice(&(table.0 + 1).to_be_bytes());
        (start, end)
    };
    [range(INDEX_TAG), range(DATA_TAG), range(FLOOR_TAG), range(PREPARED_TAG), range(COMMIT_TAG)]
}

/// Splits a chunk key (index or data) into its table, shard and sequence number.
pub(crate) fn parse_chunk_key(key: &[u8]) -> Option<ChunkId> {
    if key.len() != CHUNK_KEY_LEN || (key[0] != INDEX_TAG && key[0] != DATA_TAG) {
        return None;
    }
    Some(ChunkId {
        table: TableId(u64::from_be_bytes(key[1..9].try_into().ok()?)),
        shard: ShardId(u64::from_be_bytes(key[9..17].try_into().ok()?)),
        seq: u64::from_be_bytes(key[17..25].try_into().ok()?),
    })
}

/// The keys of format 2, read only by the rewrite to format 3.
pub(crate) mod v2 {
    use quiver_meta::TableId;

    /// The format version.
    pub(crate) const FORMAT_VERSION: u32 = 2;
    /// The node-wide floor of chunk sequence numbers.
    pub(crate) const NEXT_SEQ_KEY: &[u8] = b"\x00next_seq";
    const INDEX_TAG: u8 = 0x02;
    const DATA_TAG: u8 = 0x03;

    /// The `[start, end)` range of every index entry.
    pub(crate) fn index_range() -> (Vec<u8>, Vec<u8>) {
        (vec![INDEX_TAG], vec![INDEX_TAG + 1])
    }

    /// The `[start, end)` range of every data key.
    pub(crate) fn data_range() -> (Vec<u8>, Vec<u8>) {
        (vec![DATA_TAG], vec![DATA_TAG + 1])
    }

    /// Splits an index or data key into its table and sequence number; `true` for an index key.
    pub(crate) fn parse(key: &[u8]) -> Option<(bool, TableId, u64)> {
        if key.len() != 17 || (key[0] != INDEX_TAG && key[0] != DATA_TAG) {
            return None;
        }
        let table = u64::from_be_bytes(key[1..9].try_into().ok()?);
        let seq = u64::from_be_bytes(key[9..17].try_into().ok()?);
        Some((key[0] == INDEX_TAG, TableId(table), seq))
    }

    /// The key of a chunk's index entry (`index`) or data.
    pub(crate) fn key(index: bool, table: TableId, seq: u64) -> Vec<u8> {
        let mut k = vec![if index { INDEX_TAG } else { DATA_TAG }];
        k.extend_from_slice(&table.0.to_be_bytes());
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_sort_by_table_shard_and_sequence_and_parse_back() {
        let a = index_key(TableId(1), ShardId(3), 300);
        let b = index_key(TableId(1), ShardId(3), 1 << 40);
        let c = index_key(TableId(1), ShardId(4), 0);
        let d = index_key(TableId(2), ShardId(1), 0);
        assert!(a < b && b < c && c < d);
        assert_eq!(parse_chunk_key(&b), Some(ChunkId { table: TableId(1), shard: ShardId(3), seq: 1 << 40 }));
        assert_eq!(
            parse_chunk_key(&data_key(TableId(7), ShardId(8), 9)),
            Some(ChunkId { table: TableId(7), shard: ShardId(8), seq: 9 })
        );
        assert_eq!(parse_chunk_key(b"\x04short"), None);
        assert_eq!(parse_shard_key(&floor_key(TableId(5), ShardId(6))), Some((TableId(5), ShardId(6))));
        assert_eq!(parse_shard_key(&commit_key(TableId(5), ShardId(6))), Some((TableId(5), ShardId(6))));
        assert_eq!(
            parse_prepared_key(&prepared_key(TableId(5), ShardId(6), 7)),
            Some(ChunkId { table: TableId(5), shard: ShardId(6), seq: 7 })
        );
        let [(s, e), _, (fs, fe), ..] = table_ranges(TableId(1));
        assert!(s <= a && c < e && d >= e);
        let floor = floor_key(TableId(1), ShardId(9));
        assert!(fs <= floor && floor < fe);
    }

    #[test]
    fn format_2_keys_parse_and_format_3_keys_do_not_pass_for_them() {
        assert_eq!(v2::parse(&v2::key(true, TableId(3), 12)), Some((true, TableId(3), 12)));
        assert_eq!(v2::parse(&v2::key(false, TableId(3), 12)), Some((false, TableId(3), 12)));
        assert_eq!(v2::parse(&index_key(TableId(3), ShardId(1), 12)), None);
    }
}
