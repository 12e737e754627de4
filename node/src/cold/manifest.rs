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

use arrow::array::{Array, StringArray};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;
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
    /// Per column of the manifest's schema, in order: what scans prune files by (empty: nothing known).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<ColumnStats>,
    /// When its rows were written, oldest and newest, in milliseconds since the Unix epoch: what `tier_after` and
    /// `ttl` judge. `None` in files tiered before chunks carried their age (such files never expire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_ms: Option<WrittenRange>,
}

/// When the rows of a file were written, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenRange {
    /// The oldest row's.
    pub min: u64,
    /// The newest row's.
    pub max: u64,
}

/// A column's statistics in one file: the minimum and maximum as text (Arrow's cast of the value to a string, kept
/// only when it casts back to the same value) and the NULL count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnStats {
    /// The smallest non-NULL value, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<String>,
    /// The largest non-NULL value, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
    /// NULLs in the column.
    pub nulls: u64,
}

impl ColumnStats {
    /// Statistics from values (a NULL scalar: unknown); a value whose text would not cast back is left unknown.
    pub fn from_values(min: &ScalarValue, max: &ScalarValue, nulls: u64) -> Self {
        ColumnStats { min: value_text(min), max: value_text(max), nulls }
    }

    /// The minimum and maximum as values of `data_type` (NULL scalars when unknown or unreadable).
    pub fn values(&self, data_type: &DataType) -> (ScalarValue, ScalarValue) {
        let read = |text: &Option<String>| {
            text.as_deref()
                .and_then(|t| text_value(t, data_type))
                .unwrap_or_else(|| ScalarValue::try_from(data_type).unwrap_or(ScalarValue::Null))
        };
        (read(&self.min), read(&self.max))
    }
}

/// The smallest (`keep` = `Less`) or largest (`Greater`) of `values`, bounds of containers that all hold non-NULL
/// values: NULL (unknown) when any of them is unknown or two cannot be compared, or when there are none.
pub(crate) fn extreme<'a>(values: impl IntoIterator<Item = &'a ScalarValue>, keep: std::cmp::Ordering) -> ScalarValue {
    let mut best: Option<&ScalarValue> = None;
    for v in values {
        if v.is_null() {
            return ScalarValue::Null;
        }
        match best.map(|b| v.partial_cmp(b)) {
            None => best = Some(v),
            Some(Some(o)) if o == keep => best = Some(v),
            Some(Some(_)) => {}
            Some(None) => return ScalarValue::Null,
        }
    }
    best.cloned().unwrap_or(ScalarValue::Null)
}

fn value_text(value: &ScalarValue) -> Option<String> {
    if value.is_null() {
        return None;
    }
    let array = value.to_array().ok()?;
    let text =
        cast_with_options(&array, &DataType::Utf8, &CastOptions { safe: false, ..CastOptions::default() }).ok()?;
    let text = text.as_any().downcast_ref::<StringArray>()?.value(0).to_string();
    (text_value(&text, &value.data_type()).as_ref() == Some(value)).then_some(text)
}

fn text_value(text: &str, data_type: &DataType) -> Option<ScalarValue> {
    let array = StringArray::from(vec![text]);
    let cast = cast_with_options(&array, data_type, &CastOptions { safe: false, ..CastOptions::default() }).ok()?;
    ScalarValue::try_from_array(&cast, 0).ok().filter(|v| !v.is_null())
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
    /// Files taken out by retention, with when: the garbage collector keeps them for its grace period from then, so
    /// that scans still reading an earlier version can finish.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<RetiredFile>,
}

/// A file a manifest version no longer lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredFile {
    /// Its key under the cluster's prefix.
    pub path: String,
    /// When it was taken out, in milliseconds since the Unix epoch.
    pub removed_ms: u64,
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
            retired: Vec::new(),
        }
    }

    /// The next version: this one plus `file`, which holds its store's hot chunks up to `file.max_seq`.
    pub fn with_file(&self, file: ColdFile) -> Self {
        self.with_files(vec![file])
    }

    /// The next version: this one plus `files`, each holding its store's hot chunks up to its `max_seq`.
    pub fn with_files(&self, files: Vec<ColdFile>) -> Self {
        let mut next = self.clone();
        next.version += 1;
        for file in files {
            next.add_tiered(file);
        }
        next
    }

    /// Adds `file`, which holds its store's hot chunks up to `file.max_seq`, to this version.
    pub fn add_tiered(&mut self, file: ColdFile) {
        self.mark_tiered(file.store, file.max_seq);
        self.files.retain(|f| f.path != file.path);
        self.files.push(file);
    }

    /// Marks hot store `store`'s chunks up to `max_seq` as tiered in this version (held by its files, or gone).
    pub fn mark_tiered(&mut self, store: u64, max_seq: u64) {
        let through = self.hot_through.entry(store).or_insert(0);
        *through = (*through).max(max_seq);
    }

    /// The next version, without the files at `paths` (expired by retention), which are listed as retired at
    /// `now_ms`; retired files older than `keep_ms` are forgotten. The marks stay, so the files' hot chunks are not
    /// read again.
    pub fn without_files(&self, paths: &[String], now_ms: u64, keep_ms: u64) -> Self {
        let mut next = self.clone();
        next.version += 1;
        next.files.retain(|f| !paths.contains(&f.path));
        next.retired.retain(|r| r.removed_ms.saturating_add(keep_ms) > now_ms);
        next.retired.extend(paths.iter().map(|path| RetiredFile { path: path.clone(), removed_ms: now_ms }));
        next
    }

    /// The next version, with the files at `paths` replaced by `files`, which hold the same rows (compaction); the
    /// replaced files are listed as retired, as in [`Manifest::without_files`]. The marks do not change.
    pub fn replacing(&self, paths: &[String], files: Vec<ColdFile>, now_ms: u64, keep_ms: u64) -> Self {
        let mut next = self.without_files(paths, now_ms, keep_ms);
        next.files.extend(files);
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
        ColdFile { path, node, store, rows: 10, bytes: 100, max_seq, columns: Vec::new(), written_ms: None }
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
    fn column_statistics_keep_only_values_that_read_back_the_same() {
        use arrow::datatypes::TimeUnit;
        let cases = [
            ScalarValue::Int64(Some(-42)),
            ScalarValue::Float64(Some(0.1 + 0.2)),
            ScalarValue::Utf8(Some("a, \"quoted\" text".into())),
            ScalarValue::Date32(Some(10_000)),
            ScalarValue::Decimal128(Some(-12_345), 15, 2),
            ScalarValue::TimestampMicrosecond(Some(1_700_000_000_123_456), None),
            ScalarValue::Boolean(Some(true)),
        ];
        for v in cases {
            let stats = ColumnStats::from_values(&v, &v, 3);
            let json = serde_json::to_string(&stats).expect("encode");
            let back: ColumnStats = serde_json::from_str(&json).expect("decode");
            assert_eq!(back.values(&v.data_type()), (v.clone(), v.clone()), "{v:?} as {json}");
        }
        let unknown = ColumnStats::from_values(&ScalarValue::Int64(None), &ScalarValue::Int64(None), 0);
        assert_eq!(unknown.values(&DataType::Int64), (ScalarValue::Int64(None), ScalarValue::Int64(None)));
        // Binary text would not cast back to the same bytes: left unknown.
        let binary = ScalarValue::Binary(Some(vec![0, 255, 7]));
        assert_eq!(ColumnStats::from_values(&binary, &binary, 0).min, None);
        let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
        let garbage = ColumnStats { min: Some("not a time".into()), max: None, nulls: 0 };
        assert_eq!(garbage.values(&ts).0, ScalarValue::TimestampMicrosecond(None, None));
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
