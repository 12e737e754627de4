//! The manifest of a shard's cold data, and where things live in the bucket.
//!
//! Layout under the cluster's prefix (`quiver/<cluster id>/`), self-describing so that another process can read a
//! table's cold data from the bucket alone:
//!
//! ```text
//! tables/<table id>/shards/<shard id>/manifests/<version, 20 digits>-<nonce>.json          one per written version
//! tables/<table id>/shards/<shard id>/segments/<version, 20 digits>-<nonce>-<index>.json   lists of files
//! tables/<table id>/shards/<shard id>/data/n<node>-<store>-s<seq>-<nonce>.parquet           the files
//! tables/<table id>/shards/<shard id>/commits/<version, 20 digits>.json                     which version won
//! ```
//!
//! A manifest version lists every file of the shard with its row count, size and per-column statistics, the table's
//! name and Arrow schema, and for each shard replica that tiered (known by its mark identity,
//! `crate::table::ShardReplica::mark_id`) the highest hot-chunk sequence number tiered from it (`hot_through`): that
//! replica's hot chunks up to it are in the files, and its newer ones are still hot. Marks are per replica identity,
//! not per node, because a node that comes back with an empty disk under the same id, or a replica refilled by a
//! catch-up after its shard lost every copy, numbers its chunks from the start again.
//!
//! A version is stored as a small version object (format 3: the schema, the marks, the retired files, and the
//! segments in order, each with its number of files, rows and bytes) and the segments it names: immutable objects
//! listing up to [`SEGMENT_FILES`] files each, in JSON. A new version reuses the segments of the one before whose
//! files it still lists, so a commit writes its own files' entries and the segments it changed, not the whole list;
//! a table of 100,000 files is a hundred segments, and a reader that has the segments of an earlier version fetches
//! only the new ones. (Format 2, which this build still reads, listed the files in the version object.)
//!
//! The metadata Raft group holds only each shard's current manifest version and location (a compare-and-set on the
//! version, `MetaCommand::SetShardManifest`), so Raft state stays small however many files a table has. Every object
//! written gets a random nonce in its name, so no write ever replaces another: two nodes that both build version 7
//! of a manifest write two sets of objects, and the pointer names the one whose compare-and-set won (the simulation
//! found the loser overwriting the winner's manifest when the name was the version alone). Objects no pointer
//! reaches (through its version object and that object's segments) are garbage, for the collector.
//!
//! After its compare-and-set succeeds, a commit writes a [`CommitMarker`] naming the winning version object, and the
//! garbage collector writes the marker of each shard's current version again before it deletes anything (a node
//! that crashed in between left it out), so a process with the bucket alone (backup, an embedded reader) finds each
//! shard's current manifest as the one its newest marker names ([`crate::cold::read_committed`]). Markers of older
//! versions are garbage like their manifests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, StringArray};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;
use serde::{Deserialize, Serialize};

/// The manifest format this build writes.
pub const FORMAT: u32 = 3;

/// The manifest formats this build reads: 2 listed every file in the version object.
pub const READS: [u32; 2] = [2, 3];

/// The most files a manifest segment lists.
pub const SEGMENT_FILES: usize = 1000;

/// One Parquet file of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdFile {
    /// Its key under the cluster's prefix.
    pub path: String,
    /// The node whose hot chunks it holds.
    pub node: u64,
    /// The mark identity of the shard replica they came from (`crate::table::ShardReplica::mark_id`; the hot store's
    /// identity for files written before replicas had their own).
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
    /// The metadata version from which its newest rows are visible (the latest commit of a statement spanning shards
    /// among them; 0: rows visible at once): a reader whose snapshot is older cannot be served from this file (it
    /// holds rows that reader must see and rows it must not), and is told to retry.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub visible_from: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
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
    /// Per shard replica (by mark identity), the highest hot-chunk sequence number its files hold.
    pub hot_through: BTreeMap<u64, u64>,
    /// Files taken out by retention, compaction or rewrites, with when: the garbage collector keeps them for its
    /// grace period from then, so that scans still reading an earlier version can finish.
    pub retired: Vec<RetiredFile>,
    /// How the files are stored: the segments of the version this was read as or last stored as, in order. Storing
    /// the next version reuses the segments whose files are all still listed (empty: nothing stored yet, or a
    /// format-2 manifest, which listed its files inline).
    pub segments: Vec<Segment>,
    /// Not stored: the metadata version of the latest commit of a statement spanning shards whose changes this
    /// version holds, from the pointer it was read by (`quiver_meta::ManifestPointer::txn_version`); a version made
    /// from it keeps it, as the metadata group does.
    pub txn_version: u64,
}

/// The key of the shard's own tiering mark in [`Manifest::hot_through`]: chunk numbers belong to the shard (its
/// primary assigns them, and every copy holds a chunk under the same number), so the chunks up to it are in the
/// files on every copy. A shard numbers new chunks above every mark (`ShardRecord::tiered_through`), even after it
/// lost every copy. The other keys are replicas' mark identities, which builds before the shard's mark wrote alone.
pub const SHARD_MARK: u64 = 0;

/// A file a manifest version no longer lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredFile {
    /// Its key under the cluster's prefix.
    pub path: String,
    /// When it was taken out, in milliseconds since the Unix epoch: when the version that took it out was built, or,
    /// once a later version is built on that one, no earlier than then (a version a statement spanning shards
    /// proposed becomes current only at its decision, and scans of the version before may read the file until then).
    pub removed_ms: u64,
    /// The version that took it out (0: not recorded, in versions written before it was).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
}

/// One stored segment of a manifest: an immutable object listing some of the shard's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Its key under the cluster's prefix.
    pub path: String,
    /// The paths of the files it lists, in its order.
    pub files: Vec<String>,
}

/// What a shard's commit of a version wrote to the bucket besides the version's objects: which of the version
/// objects of that version won the compare-and-set (losers' objects stay until they are collected), so that a
/// process with the bucket alone finds each shard's current manifest: the one its newest marker names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMarker {
    /// The version committed.
    pub version: u64,
    /// Its version object's key.
    pub manifest: String,
}

/// A segment as a version object names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRef {
    /// Its key under the cluster's prefix.
    pub path: String,
    /// The files it lists.
    pub files: u64,
    /// Their rows.
    pub rows: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// A version object as stored: everything of a version but its files, which its segments list (format 2 listed them
/// here).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VersionObject {
    format: u32,
    table_id: u64,
    table: String,
    shard_id: u64,
    version: u64,
    schema: Schema,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    segments: Vec<SegmentRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    files: Vec<ColdFile>,
    hot_through: BTreeMap<u64, u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    retired: Vec<RetiredFile>,
}

/// A segment object as stored (`F`: the files, borrowed when writing).
#[derive(Serialize, Deserialize)]
struct SegmentObject<F> {
    format: u32,
    table_id: u64,
    shard_id: u64,
    files: F,
}

/// What storing a manifest version writes: its new segment objects (key and bytes), then its version object.
#[derive(Debug)]
pub struct StoredForm {
    /// The segments this version does not share with the one before.
    pub segments: Vec<(String, Vec<u8>)>,
    /// The version object's key.
    pub location: String,
    /// The version object.
    pub version: Vec<u8>,
}

impl Manifest {
    /// The manifest of a shard with no cold data yet (version 0, never stored).
    pub fn empty(table_id: u64, table: &str, shard_id: u64, schema: Schema) -> Self {
        Manifest {
            table_id,
            table: table.to_string(),
            shard_id,
            version: 0,
            schema,
            files: Vec::new(),
            hot_through: BTreeMap::new(),
            retired: Vec::new(),
            segments: Vec::new(),
            txn_version: 0,
        }
    }

    /// The next version: this one plus `file`, which holds its store's hot chunks up to `file.max_seq`.
    pub fn with_file(&self, file: ColdFile) -> Self {
        self.with_files(vec![file])
    }

    /// The next version: this one plus `files`, each holding its store's hot chunks up to its `max_seq`.
    pub fn with_files(&self, files: Vec<ColdFile>) -> Self {
        let mut next = self.successor(crate::clock::unix_ms());
        next.add_all_tiered(files);
        next
    }

    /// The next version, the same as this one, built at `now_ms`. This version was current when it was built on:
    /// the files this version took out count as taken out no earlier than that, and the collector's grace for them
    /// runs from there (see [`RetiredFile::removed_ms`]).
    fn successor(&self, now_ms: u64) -> Self {
        let mut next = self.clone();
        for retired in next.retired.iter_mut().filter(|r| r.version == self.version) {
            retired.removed_ms = retired.removed_ms.max(now_ms);
        }
        next.version += 1;
        next
    }

    /// Adds `file`, which holds its store's hot chunks up to `file.max_seq`, to this version.
    pub fn add_tiered(&mut self, file: ColdFile) {
        self.add_all_tiered(vec![file]);
    }

    /// Adds `files`, each holding its store's hot chunks up to its `max_seq`, to this version, in one pass: a file
    /// listed already (a retried commit) is listed once, as given last.
    fn add_all_tiered(&mut self, files: Vec<ColdFile>) {
        let paths: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
        self.files.retain(|f| !paths.contains(f.path.as_str()));
        let mut added: HashMap<String, usize> = HashMap::new();
        for file in files {
            self.mark_tiered(file.store, file.max_seq);
            match added.get(&file.path) {
                Some(&at) => self.files[at] = file,
                None => {
                    added.insert(file.path.clone(), self.files.len());
                    self.files.push(file);
                }
            }
        }
    }

    /// Marks the chunks up to `max_seq` of the shard replica known as `store` as tiered in this version (held by
    /// its files, or gone), and the shard's own mark ([`SHARD_MARK`]) with them.
    pub fn mark_tiered(&mut self, store: u64, max_seq: u64) {
        for id in [store, SHARD_MARK] {
            let through = self.hot_through.entry(id).or_insert(0);
            *through = (*through).max(max_seq);
        }
    }

    /// The highest chunk number any mark of this version covers: the shard numbers new chunks above it
    /// (`ShardRecord::tiered_through` in the metadata group).
    pub fn tiered_through(&self) -> u64 {
        self.hot_through.values().copied().max().unwrap_or(0)
    }

    /// The next version, without the files at `paths` (expired by retention), which are listed as retired at
    /// `now_ms`; retired files older than `keep_ms` are forgotten. The marks stay, so the files' hot chunks are not
    /// read again.
    pub fn without_files(&self, paths: &[String], now_ms: u64, keep_ms: u64) -> Self {
        let mut next = self.successor(now_ms);
        let gone: HashSet<&str> = paths.iter().map(String::as_str).collect();
        next.files.retain(|f| !gone.contains(f.path.as_str()));
        next.retired.retain(|r| r.removed_ms.saturating_add(keep_ms) > now_ms);
        let version = next.version;
        next.retired.extend(paths.iter().map(|path| RetiredFile { path: path.clone(), removed_ms: now_ms, version }));
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

    /// Where the marker of the commit of version `version` of a shard is stored (see [`CommitMarker`]).
    pub fn commit_path(table_id: u64, shard_id: u64, version: u64) -> String {
        format!("tables/{table_id}/shards/{shard_id}/commits/{version:020}.json")
    }

    /// Where segment `index` of the writing of version `version` with nonce `nonce` is stored.
    pub fn segment_path(table_id: u64, shard_id: u64, version: u64, nonce: u64, index: usize) -> String {
        format!("tables/{table_id}/shards/{shard_id}/segments/{version:020}-{nonce:016x}-{index:05}.json")
    }

    /// Where one writing of this shard's file of the chunks of `node`'s hot store `store` up to `max_seq` is stored
    /// (`nonce`: random per writing).
    pub fn data_path(table_id: u64, shard_id: u64, node: u64, store: u64, max_seq: u64, nonce: u64) -> String {
        format!("tables/{table_id}/shards/{shard_id}/data/n{node}-{store:016x}-s{max_seq}-{nonce:016x}.parquet")
    }

    /// Lays this version out for storing under `nonce`, with segments of at most `segment_files` files, and returns
    /// the objects to write. The segments of the version before (`self.segments`) whose files are all still listed,
    /// and that are at least half full, are kept; the other files go into new segments, in the order listed. So a
    /// commit writes its new files, the files of the segments it took files out of, and at most one segment less
    /// than half full from before, whatever the number of files; and the segments number at most twice the files
    /// over `segment_files`, plus one. `self.files` is put in the stored order and `self.segments` becomes the new
    /// layout.
    ///
    /// # Errors
    ///
    /// Never in practice: every field serializes.
    pub fn store(&mut self, nonce: u64, segment_files: usize) -> serde_json::Result<StoredForm> {
        let segment_files = segment_files.max(1);
        let (order, mut layout) = self.kept_segments(segment_files);
        let loose_from = layout.iter().map(|s| s.files.len()).sum::<usize>();
        let mut slots: Vec<Option<ColdFile>> = std::mem::take(&mut self.files).into_iter().map(Some).collect();
        self.files = order.iter().filter_map(|&i| slots[i].take()).collect();
        let mut segments = Vec::new();
        for (i, chunk) in self.files[loose_from..].chunks(segment_files).enumerate() {
            let path = Self::segment_path(self.table_id, self.shard_id, self.version, nonce, i);
            let object =
                SegmentObject { format: FORMAT, table_id: self.table_id, shard_id: self.shard_id, files: chunk };
            segments.push((path.clone(), serde_json::to_vec(&object)?));
            layout.push(Segment { path, files: chunk.iter().map(|f| f.path.clone()).collect() });
        }
        let mut refs = Vec::with_capacity(layout.len());
        let mut at = 0;
        for segment in &layout {
            let listed = &self.files[at..at + segment.files.len()];
            at += listed.len();
            refs.push(SegmentRef {
                path: segment.path.clone(),
                files: listed.len() as u64,
                rows: listed.iter().map(|f| f.rows).sum(),
                bytes: listed.iter().map(|f| f.bytes).sum(),
            });
        }
        self.segments = layout;
        let object = VersionObject {
            format: FORMAT,
            table_id: self.table_id,
            table: self.table.clone(),
            shard_id: self.shard_id,
            version: self.version,
            schema: self.schema.clone(),
            segments: refs,
            files: Vec::new(),
            hot_through: self.hot_through.clone(),
            retired: self.retired.clone(),
        };
        Ok(StoredForm {
            segments,
            location: Self::path_of(self.table_id, self.shard_id, self.version, nonce),
            version: serde_json::to_vec_pretty(&object)?,
        })
    }

    /// The segments of `self.segments` that storing this version keeps (at least half of `segment_files` files,
    /// all still listed, none twice), and the order of the files: those of the kept segments, theirs, then the rest
    /// as listed.
    fn kept_segments(&self, segment_files: usize) -> (Vec<usize>, Vec<Segment>) {
        let listed: HashMap<&str, usize> = self.files.iter().enumerate().map(|(i, f)| (f.path.as_str(), i)).collect();
        let mut taken = vec![false; self.files.len()];
        let mut order = Vec::with_capacity(self.files.len());
        let mut kept = Vec::new();
        for segment in &self.segments {
            if segment.files.len() * 2 < segment_files {
                continue;
            }
            let mut at = Vec::with_capacity(segment.files.len());
            for path in &segment.files {
                match listed.get(path.as_str()) {
                    Some(&i) if !taken[i] => {
                        taken[i] = true;
                        at.push(i);
                    }
                    _ => break,
                }
            }
            if at.len() == segment.files.len() {
                order.extend(at);
                kept.push(segment.clone());
            } else {
                at.iter().for_each(|&i| taken[i] = false);
            }
        }
        order.extend((0..self.files.len()).filter(|&i| !taken[i]));
        (order, kept)
    }
}

/// A version object read, before its segments are.
#[derive(Debug, Clone)]
pub struct StoredVersion(VersionObject);

impl StoredVersion {
    /// Decodes a version object.
    ///
    /// # Errors
    ///
    /// What is wrong with the bytes, or a format this build cannot read.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let object: VersionObject = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if !READS.contains(&object.format) {
            return Err(format!("manifest format {} (this build reads {READS:?})", object.format));
        }
        if object.format < 3 && !object.segments.is_empty() {
            return Err(format!("a format-{} manifest with segments", object.format));
        }
        Ok(StoredVersion(object))
    }

    /// The table and shard ids.
    pub fn shard(&self) -> (u64, u64) {
        (self.0.table_id, self.0.shard_id)
    }

    /// The version.
    pub fn version(&self) -> u64 {
        self.0.version
    }

    /// The segments to read, in order.
    pub fn segments(&self) -> &[SegmentRef] {
        &self.0.segments
    }

    /// The manifest, given the files of each of [`StoredVersion::segments`], in order.
    ///
    /// # Errors
    ///
    /// When the segments do not match the version object (their number, or the files of one).
    pub fn assemble(self, segments: &[Arc<[ColdFile]>]) -> Result<Manifest, String> {
        let o = self.0;
        if segments.len() != o.segments.len() {
            return Err(format!("{} segments given for {}", segments.len(), o.segments.len()));
        }
        let mut files = o.files;
        let mut layout = Vec::with_capacity(segments.len());
        for (r, listed) in o.segments.iter().zip(segments) {
            if listed.len() as u64 != r.files {
                return Err(format!("segment {} lists {} files, not {}", r.path, listed.len(), r.files));
            }
            files.extend(listed.iter().cloned());
            layout.push(Segment { path: r.path.clone(), files: listed.iter().map(|f| f.path.clone()).collect() });
        }
        Ok(Manifest {
            table_id: o.table_id,
            table: o.table,
            shard_id: o.shard_id,
            version: o.version,
            schema: o.schema,
            files,
            hot_through: o.hot_through,
            retired: o.retired,
            segments: layout,
            txn_version: 0,
        })
    }
}

/// Decodes a segment object of shard `shard` (table and shard ids).
///
/// # Errors
///
/// What is wrong with the bytes: not a segment, a format this build cannot read, or another shard's.
pub fn decode_segment(bytes: &[u8], shard: (u64, u64)) -> Result<Vec<ColdFile>, String> {
    let object: SegmentObject<Vec<ColdFile>> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if object.format != FORMAT {
        return Err(format!("segment format {} (this build reads {FORMAT})", object.format));
    }
    if (object.table_id, object.shard_id) != shard {
        return Err(format!(
            "a segment of table {} shard {}, named by a manifest of table {} shard {}",
            object.table_id, object.shard_id, shard.0, shard.1
        ));
    }
    Ok(object.files)
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{DataType, Field};

    use super::*;

    /// A file of node `node`, whose hot store's identity is `node * 1000` here.
    fn file(node: u64, max_seq: u64) -> ColdFile {
        let store = node * 1000;
        let path = Manifest::data_path(7, 9, node, store, max_seq, 0xab);
        ColdFile {
            path,
            node,
            store,
            rows: 10,
            bytes: 100,
            max_seq,
            columns: Vec::new(),
            written_ms: None,
            visible_from: 0,
        }
    }

    #[test]
    fn versions_grow_files_accumulate_and_a_retried_file_is_not_listed_twice() {
        let schema = Schema::new(vec![Field::new("x", DataType::Int64, false)]);
        let m0 = Manifest::empty(7, "t", 9, schema);
        let m1 = m0.with_file(file(1, 40));
        let m2 = m1.with_file(file(2, 15)).with_file(file(1, 90));
        assert_eq!((m1.version, m2.version), (1, 3));
        assert_eq!(m2.files.len(), 3);
        // Each replica's mark, and the shard's own (key 0) with every one of them.
        assert_eq!(m2.hot_through, BTreeMap::from([(SHARD_MARK, 90), (1000, 90), (2000, 15)]));
        assert_eq!(m2.tiered_through(), 90);
        let again = m2.with_file(file(1, 90));
        assert_eq!(again.files.len(), 3, "the same file committed twice is listed once");
        let mut stored = m2.clone();
        let mut bucket = Bucket::default();
        bucket.store(&mut stored, 0xab, SEGMENT_FILES);
        assert_eq!(bucket.load(&Manifest::path_of(7, 9, 3, 0xab)), stored);
        assert_eq!(stored.files.len(), 3);
        assert_eq!(stored.segments.len(), 1);
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

    /// Objects by key, standing in for the bucket.
    #[derive(Default)]
    struct Bucket {
        objects: HashMap<String, Vec<u8>>,
        /// Segment objects written so far, and their files.
        segments_written: usize,
        files_written: usize,
    }

    impl Bucket {
        fn store(&mut self, manifest: &mut Manifest, nonce: u64, segment_files: usize) -> String {
            let form = manifest.store(nonce, segment_files).expect("store");
            for (path, bytes) in form.segments {
                self.segments_written += 1;
                self.files_written +=
                    decode_segment(&bytes, (manifest.table_id, manifest.shard_id)).expect("segment").len();
                assert!(self.objects.insert(path, bytes).is_none(), "a segment object was replaced");
            }
            assert!(self.objects.insert(form.location.clone(), form.version).is_none(), "a version was replaced");
            form.location
        }

        fn load(&self, location: &str) -> Manifest {
            let version = StoredVersion::decode(&self.objects[location]).expect("version");
            let segments: Vec<Arc<[ColdFile]>> = version
                .segments()
                .iter()
                .map(|r| Arc::from(decode_segment(&self.objects[&r.path], version.shard()).expect("segment")))
                .collect();
            version.assemble(&segments).expect("assemble")
        }

        /// The segments written and their files since the last call.
        fn written(&mut self) -> (usize, usize) {
            (std::mem::take(&mut self.segments_written), std::mem::take(&mut self.files_written))
        }
    }

    #[test]
    fn a_commit_writes_only_the_segments_it_changes() {
        let schema = Schema::new(vec![Field::new("x", DataType::Int64, false)]);
        let mut bucket = Bucket::default();
        let mut m = Manifest::empty(7, "t", 9, schema).with_files((1..=95).map(|s| file(1, s)).collect());
        let location = bucket.store(&mut m, 1, 10);
        assert_eq!(bucket.written(), (10, 95), "nine full segments and one of five");
        assert_eq!(bucket.load(&location), m);

        // An append keeps every segment at least half full and writes the new file alone.
        let mut next = m.with_file(file(1, 96));
        bucket.store(&mut next, 2, 10);
        assert_eq!(bucket.written(), (1, 1));
        assert_eq!(next.segments[..10], m.segments[..]);
        // The next append rewrites that small segment with it.
        let mut next = next.with_file(file(1, 97));
        bucket.store(&mut next, 3, 10);
        assert_eq!(bucket.written(), (1, 2));

        // Taking a file out rewrites its segment and the small one: 9 + 2 files, in two segments of at most 10.
        let gone = m.files[23].path.clone();
        let mut next = next.without_files(std::slice::from_ref(&gone), 1_000, 10);
        let location = bucket.store(&mut next, 4, 10);
        assert_eq!(bucket.written(), (2, 11));
        let loaded = bucket.load(&location);
        assert_eq!(loaded, next);
        assert_eq!(loaded.files.len(), 96);
        assert!(!loaded.files.iter().any(|f| f.path == gone));
        let mut listed: Vec<u64> = loaded.files.iter().map(|f| f.max_seq).collect();
        listed.sort_unstable();
        assert_eq!(listed, (1..=97).filter(|&s| s != 24).collect::<Vec<_>>());
        assert_eq!(loaded.retired, vec![RetiredFile { path: gone.clone(), removed_ms: 1_000, version: next.version }]);
        // A version built on that one counts the file as taken out no earlier than then; later ones leave it.
        let after = next.with_files(Vec::new()).with_files(Vec::new());
        assert!(after.retired[0].removed_ms > 1_000 && after.retired[0].path == gone, "{:?}", after.retired);
        let (stamp, next_stamp) = (after.retired[0].removed_ms, after.with_files(Vec::new()).retired[0].removed_ms);
        assert_eq!(stamp, next_stamp, "only the version right after it restamps it");
        assert!(loaded.segments.iter().all(|s| s.files.len() <= 10));
        assert!(loaded.segments.len() <= 96 * 2 / 10 + 1);
    }

    #[test]
    fn format_2_manifests_with_their_files_inline_are_read_and_stored_anew_in_segments() {
        let schema = Schema::new(vec![Field::new("x", DataType::Int64, false)]);
        let old = VersionObject {
            format: 2,
            table_id: 7,
            table: "t".into(),
            shard_id: 9,
            version: 4,
            schema: schema.clone(),
            segments: Vec::new(),
            files: vec![file(1, 10), file(2, 20)],
            hot_through: BTreeMap::from([(1000, 10), (2000, 20)]),
            retired: Vec::new(),
        };
        let read = StoredVersion::decode(&serde_json::to_vec(&old).expect("encode")).expect("decode");
        assert!(read.segments().is_empty());
        let m = read.assemble(&[]).expect("assemble");
        assert_eq!((m.version, m.files.len(), m.segments.len()), (4, 2, 0));
        let mut next = m.with_file(file(1, 30));
        let mut bucket = Bucket::default();
        let location = bucket.store(&mut next, 5, SEGMENT_FILES);
        assert_eq!(bucket.written(), (1, 3));
        assert_eq!(bucket.load(&location).hot_through, BTreeMap::from([(SHARD_MARK, 30), (1000, 30), (2000, 20)]));
    }

    #[test]
    fn garbage_other_formats_and_mismatched_segments_are_refused() {
        assert!(StoredVersion::decode(b"{").is_err());
        let schema = Schema::new(vec![Field::new("x", DataType::Int64, false)]);
        let mut m = Manifest::empty(1, "t", 1, schema).with_files(vec![file(1, 1), file(1, 2)]);
        let form = m.store(3, SEGMENT_FILES).expect("store");
        let mut object: serde_json::Value = serde_json::from_slice(&form.version).expect("json");
        object["format"] = 99.into();
        let e = StoredVersion::decode(&serde_json::to_vec(&object).expect("encode")).expect_err("format");
        assert!(e.contains("format 99"), "{e}");
        let (_, segment) = &form.segments[0];
        let e = decode_segment(segment, (1, 2)).expect_err("another shard's");
        assert!(e.contains("table 1 shard 1"), "{e}");
        let version = StoredVersion::decode(&form.version).expect("decode");
        let short: Arc<[ColdFile]> = Arc::from(vec![file(1, 1)]);
        let e = version.clone().assemble(&[short]).expect_err("one file short");
        assert!(e.contains("lists 1 files, not 2"), "{e}");
        assert!(version.assemble(&[]).is_err(), "a segment missing");
    }
}
