//! The manifest of a shard's cold data, and where things live in the bucket.
//!
//! Layout under the cluster's prefix (`quiver/<cluster id>/`), self-describing so that another process can read a
//! table's cold data from the bucket alone:
//!
//! ```text
//! tables/<table id>/shards/<shard id>/manifests/<version, 20 digits>-<nonce>.json   one per written version
//! tables/<table id>/shards/<shard id>/data/n<node>-<store>-s<seq>-<nonce>.parquet    the files the manifests list
//! ```
//!
//! A manifest lists every file of the shard with its row count and size, the table's name and Arrow schema, and for
//! each hot store (a node's data directory, known by the random identity it got when it was created) the highest
//! hot-chunk sequence number tiered from it (`hot_through`): that store's hot chunks up to it are in the files, and
//! its newer ones are still hot. Marks are per store, not per node, because a node that comes back with an empty
//! disk under the same id numbers its chunks from the start again. The metadata Raft group holds only each shard's current
//! manifest version and location (a compare-and-set on the version, `MetaCommand::SetShardManifest`), so Raft state
//! stays small however many files a table has. Every object written gets a random nonce in its name, so no write
//! ever replaces another: two nodes that both build version 7 of a manifest write two objects, and the pointer names
//! the one whose compare-and-set won (the simulation found the loser overwriting the winner's manifest when the name
//! was the version alone). Objects no pointer reaches are garbage, for the collector.

use std::collections::BTreeMap;

use arrow::datatypes::Schema;
use serde::{Deserialize, Serialize};

/// The manifest format this build writes and reads.
pub const FORMAT: u32 = 2;

/// One Parquet file of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdFile {
    /// Its key under the cluster's prefix.
    pub path: String,
    /// The node whose hot chunks it holds.
    pub node: u64,
    /// The identity of the hot store (the node's data directory) they came from.
    pub store: u64,
    /// Rows.
    pub rows: u64,
    /// Bytes.
    pub bytes: u64,
    /// The highest hot-chunk sequence number in it.
    pub max_seq: u64,
}

/// One version of a shard's cold data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The table's id.
    pub table_id: u64,
    /// The table's name when this version was written.
    pub table: String,
    /// The shard's id.
    pub shard_id: u64,
    /// This version; each commit makes a larger one.
    pub version: u64,
    /// The table's columns.
    pub schema: Schema,
    /// Every file of the shard.
    pub files: Vec<ColdFile>,
    /// Per hot store (by identity), the highest hot-chunk sequence number its files hold.
    pub hot_through: BTreeMap<u64, u64>,
}

impl Manifest {
    /// The manifest of a shard with no cold data yet (version 0, never stored).
    pub fn empty(table_id: u64, table: &str, shard_id: u64, schema: Schema) -> Self {
        Manifest {
            format: FORMAT,
            table_id,
            table: table.to_string(),
            shard_id,
            version: 0,
            schema,
            files: Vec::new(),
            hot_through: BTreeMap::new(),
        }
    }

    /// The next version: this one plus `file`, which holds its store's hot chunks up to `file.max_seq`.
    pub fn with_file(&self, file: ColdFile) -> Self {
        let mut next = self.clone();
        next.version += 1;
        let through = next.hot_through.entry(file.store).or_insert(0);
        *through = (*through).max(file.max_seq);
        next.files.retain(|f| f.path != file.path);
        next.files.push(file);
        next
    }

    /// Where one writing of version `version` of this shard's manifest is stored (`nonce`: random per writing).
    pub fn path_of(table_id: u64, shard_id: u64, version: u64, nonce: u64) -> String {
        format!("tables/{table_id}/shards/{shard_id}/manifests/{version:020}-{nonce:016x}.json")
    }

    /// Where one writing of this shard's file of the chunks of `node`'s hot store `store` up to `max_seq` is stored
    /// (`nonce`: random per writing).
    pub fn data_path(table_id: u64, shard_id: u64, node: u64, store: u64, max_seq: u64, nonce: u64) -> String {
        format!("tables/{table_id}/shards/{shard_id}/data/n{node}-{store:016x}-s{max_seq}-{nonce:016x}.parquet")
    }

    /// Encodes the manifest as JSON.
    ///
    /// # Errors
    ///
    /// Never in practice: every field serializes.
    pub fn encode(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec_pretty(self)
    }

    /// Decodes a manifest.
    ///
    /// # Errors
    ///
    /// What is wrong with the bytes, or a format this build cannot read.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if manifest.format != FORMAT {
            return Err(format!("manifest format {} (this build reads {FORMAT})", manifest.format));
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{DataType, Field};

    use super::*;

    /// A file of node `node`, whose hot store's identity is `node * 1000` here.
    fn file(node: u64, max_seq: u64) -> ColdFile {
        let store = node * 1000;
        let path = Manifest::data_path(7, 9, node, store, max_seq, 0xab);
        ColdFile { path, node, store, rows: 10, bytes: 100, max_seq }
    }

    #[test]
    fn versions_grow_files_accumulate_and_a_retried_file_is_not_listed_twice() {
        let schema = Schema::new(vec![Field::new("x", DataType::Int64, false)]);
        let m0 = Manifest::empty(7, "t", 9, schema);
        let m1 = m0.with_file(file(1, 40));
        let m2 = m1.with_file(file(2, 15)).with_file(file(1, 90));
        assert_eq!((m1.version, m2.version), (1, 3));
        assert_eq!(m2.files.len(), 3);
        assert_eq!(m2.hot_through, BTreeMap::from([(1000, 90), (2000, 15)]));
        let again = m2.with_file(file(1, 90));
        assert_eq!(again.files.len(), 3, "the same file committed twice is listed once");
        let decoded = Manifest::decode(&m2.encode().expect("encode")).expect("decode");
        assert_eq!(decoded, m2);
        assert_eq!(
            Manifest::path_of(7, 9, 3, 0xab),
            "tables/7/shards/9/manifests/00000000000000000003-00000000000000ab.json"
        );
    }

    #[test]
    fn garbage_and_other_formats_are_refused() {
        assert!(Manifest::decode(b"{").is_err());
        let schema = Schema::new(vec![Field::new("x", DataType::Int64, false)]);
        let mut m = Manifest::empty(1, "t", 1, schema);
        m.format = 99;
        let e = Manifest::decode(&m.encode().expect("encode")).expect_err("format");
        assert!(e.contains("format 99"), "{e}");
    }
}
