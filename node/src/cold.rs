//! The cold tier: a table's older rows as Parquet files in an object store (a local directory by default, or the
//! user's S3, GCS or Azure bucket), listed in per-shard manifests whose current version the metadata Raft group holds.
//!
//! ```text
//!  hot chunks (RocksDB) ──tier──▶ Parquet file ─put─▶ bucket      1. upload the file (multipart when large)
//!                                 manifest v+1 ─put─▶ bucket      2. write the next manifest
//!                                 SetShardManifest(v → v+1) ─▶ Raft   3. move the pointer (compare-and-set)
//!                                 delete the tiered hot chunks     4. only now
//! ```
//!
//! Every step can be retried and a crash between any two leaves every row readable exactly once: before step 3 the
//! rows are still hot and the uploaded objects are unreferenced (every object has a name of its own, so nothing is
//! ever overwritten); a commit whose answer was lost is seen at the next tiering, which starts from the shard's
//! current manifest; after it, the manifest's `hot_through` mark says
//! which of this node's hot chunks the files hold, scans skip those chunks, and they are deleted at the next open if
//! step 4 did not happen. A scan reads the table's hot version first and its cold view second; tiering installs the
//! cold view before it drops the hot chunks, so a scan running meanwhile neither misses nor double-counts a row.
//!
//! Rows still live on the node that took them (the cluster data path comes later), so each node scans its own files:
//! files carry the node and the hot store (data directory) they came from, and the marks are per store.
//!
//! An insert numbers its chunks when it writes them, before it commits, so a committed chunk can have a higher number
//! than one still to come; tiering therefore takes only chunks below every number an insert in progress may use
//! (`TableStore::settled_below`), and a store that removed chunks keeps a floor for its numbering across restarts.
//!
//! Modules: [`store`] (opening the store from its URL), [`manifest`] (manifest format and bucket layout),
//! [`segments`] (reading and writing manifest versions, with a cache of their segments),
//! [`metered`] (counting requests and bytes), [`writer`] (writing files, sorted by the table's key), [`cache`] (the
//! read cache).

pub mod cache;
pub mod manifest;
pub mod metered;
pub mod segments;
pub mod store;
pub mod writer;

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array, new_null_array};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::DataType;
use arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::Accumulator;

pub use self::manifest::{ColdFile, ColumnStats, Manifest, RetiredFile, SHARD_MARK, WrittenRange};
pub use self::segments::{
    SegmentCache, committed_shards, ensure_commit_marker, mark_commit, read_committed, read_manifest, write_manifest,
};
pub use self::store::{ColdConfig, ColdStore, check_url};
pub use self::writer::{FileLayout, write_parquet};
use crate::error::Error;

/// The URL DataFusion knows the cold store by (the engine registers the cluster's store under it).
pub const OBJECT_STORE_URL: &str = "quiver-cold://tier/";

/// What one node's scans of a table read from the cold tier.
#[derive(Debug, Clone, Default)]
pub struct ColdView {
    /// The manifest version this view comes from (0: none yet).
    pub version: u64,
    /// The shard's files, whichever store tiered them: a shard that moved to this node keeps the files its earlier
    /// holders wrote.
    pub files: Vec<ColdFile>,
    /// The highest of the replica's hot-chunk sequence numbers the files hold, as marked under `marked_as`; hot
    /// chunks up to it are skipped. (A replica caught up from another holder receives only chunks above that holder's
    /// mark.)
    pub hot_through: u64,
    /// The identity `hot_through` is the mark of (`crate::table::ShardReplica::mark_id`).
    pub marked_as: u64,
    /// Every identity's mark in the manifest, to take the view for another identity ([`ColdView::marked_for`]).
    pub marks: std::collections::BTreeMap<u64, u64>,
    /// Per column of the table, its statistics across the files, read once for pruning.
    pub bounds: Vec<ColumnBounds>,
    /// The metadata version of the latest commit of a statement spanning shards whose changes the files hold
    /// ([`Manifest::txn_version`]): a reader whose snapshot is older must not read them.
    pub txn_version: u64,
}

/// One column's statistics across a view's files, in their order: NULL where unknown.
#[derive(Debug, Clone)]
pub struct ColumnBounds {
    /// The minimums.
    pub min: ArrayRef,
    /// The maximums.
    pub max: ArrayRef,
    /// The NULL counts.
    pub nulls: ArrayRef,
}

impl ColumnBounds {
    /// Column `i` (of type `data_type`) of `files`: the texts of all the files are cast at once, so a view of
    /// 100,000 files takes two casts a column; a text that does not read as the type is unknown.
    fn of(files: &[ColdFile], i: usize, data_type: &DataType) -> Self {
        let read = |pick: fn(&ColumnStats) -> Option<&str>| {
            let texts = StringArray::from_iter(files.iter().map(|f| f.columns.get(i).and_then(pick)));
            cast_with_options(&texts, data_type, &CastOptions { safe: true, ..CastOptions::default() })
                .unwrap_or_else(|_| new_null_array(data_type, files.len()))
        };
        ColumnBounds {
            min: read(|c| c.min.as_deref()),
            max: read(|c| c.max.as_deref()),
            nulls: Arc::new(UInt64Array::from_iter(files.iter().map(|f| f.columns.get(i).map(|c| c.nulls)))),
        }
    }
}

impl ColdView {
    /// The view of a shard's `manifest` for the replica whose tiered chunks are marked under identity `store`.
    pub fn of(manifest: &Manifest, store: u64) -> Self {
        let files: Vec<ColdFile> = manifest.files.clone();
        ColdView {
            version: manifest.version,
            bounds: manifest
                .schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, field)| ColumnBounds::of(&files, i, field.data_type()))
                .collect(),
            files,
            hot_through: mark_of(&manifest.hot_through, store),
            marked_as: store,
            marks: manifest.hot_through.clone(),
            txn_version: manifest.txn_version,
        }
    }

    /// The same view for the replica marked under identity `id`.
    pub fn marked_for(&self, id: u64) -> Self {
        ColdView { hot_through: mark_of(&self.marks, id), marked_as: id, ..self.clone() }
    }
}

/// The mark that covers the hot chunks of the replica known as `id`: the shard's own, or the one the replica's
/// identity got from a build before shard marks, whichever is higher.
pub fn mark_of(marks: &std::collections::BTreeMap<u64, u64>, id: u64) -> u64 {
    let of = |key: u64| marks.get(&key).copied().unwrap_or(0);
    of(id).max(of(SHARD_MARK))
}

/// A table's cold view, or why it could not be read (the store is unreachable): scans fail until it can.
#[derive(Debug, Clone)]
pub enum ColdState {
    /// Loaded.
    Ready(Arc<ColdView>),
    /// The manifest could not be read.
    Unavailable(String),
}

pub(crate) fn unavailable(store: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::ColdUnavailable { detail: format!("{what} in {store}: {e}") }
}

/// Per-column statistics of the rows written to a file, gathered batch by batch as they stream past (for files
/// whose rows are not hot chunks with statistics of their own: rewrites by DELETE and UPDATE).
pub(crate) struct StatsBuilder {
    columns: Vec<ColumnBuilder>,
}

struct ColumnBuilder {
    /// `None` when the column's type has no minimum and maximum.
    bounds: Option<(MinAccumulator, MaxAccumulator)>,
    nulls: u64,
}

impl StatsBuilder {
    /// A builder for rows of `schema`.
    pub(crate) fn new(schema: &SchemaRef) -> Self {
        let columns = schema
            .fields()
            .iter()
            .map(|f| ColumnBuilder {
                bounds: MinAccumulator::try_new(f.data_type())
                    .and_then(|min| Ok((min, MaxAccumulator::try_new(f.data_type())?)))
                    .ok(),
                nulls: 0,
            })
            .collect();
        Self { columns }
    }

    /// Takes in a batch of rows.
    pub(crate) fn observe(&mut self, batch: &RecordBatch) {
        for (column, array) in self.columns.iter_mut().zip(batch.columns()) {
            column.nulls += array.null_count() as u64;
            if let Some((min, max)) = &mut column.bounds
                && (min.update_batch(std::slice::from_ref(array)).is_err()
                    || max.update_batch(std::slice::from_ref(array)).is_err())
            {
                column.bounds = None;
            }
        }
    }

    /// The statistics of every row taken in (bounds unknown where the type has none).
    pub(crate) fn finish(self) -> Vec<ColumnStats> {
        self.columns
            .into_iter()
            .map(|mut c| {
                let (min, max) = match &mut c.bounds {
                    Some((min, max)) => {
                        (min.evaluate().unwrap_or(ScalarValue::Null), max.evaluate().unwrap_or(ScalarValue::Null))
                    }
                    None => (ScalarValue::Null, ScalarValue::Null),
                };
                ColumnStats::from_values(&min, &max, c.nulls)
            })
            .collect()
    }
}
