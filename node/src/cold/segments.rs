//! Reading and writing manifest versions: a version object and the segments it names (see [`super::manifest`]),
//! with a cache of segments already read, so that loading a shard's next version fetches only what changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::manifest::{ColdFile, CommitMarker, Manifest, SEGMENT_FILES, StoredVersion, decode_segment};
use super::unavailable;
use crate::error::{Error, Result};

/// Segment objects read or written at once.
const CONCURRENT: usize = 16;

/// The files of the segments of the latest version of each shard read or written here. Segments never change, so an
/// entry is valid as long as it is kept; a shard keeps only those its latest version names, so the cache holds one
/// version's worth of entries per shard, as the cold views do.
#[derive(Debug, Default)]
pub struct SegmentCache {
    shards: Mutex<HashMap<(u64, u64), ShardSegments>>,
}

#[derive(Debug, Default)]
struct ShardSegments {
    version: u64,
    segments: HashMap<String, Arc<[ColdFile]>>,
}

impl SegmentCache {
    fn get(&self, shard: (u64, u64), path: &str) -> Option<Arc<[ColdFile]>> {
        self.shards.lock().expect("segment cache poisoned").get(&shard)?.segments.get(path).cloned()
    }

    /// Keeps `segments` as the shard's, unless a later version's are kept already.
    fn keep(&self, shard: (u64, u64), version: u64, segments: HashMap<String, Arc<[ColdFile]>>) {
        let mut shards = self.shards.lock().expect("segment cache poisoned");
        let entry = shards.entry(shard).or_default();
        if entry.version <= version {
            *entry = ShardSegments { version, segments };
        }
    }

    /// The segments cached, over all shards.
    pub fn len(&self) -> usize {
        self.shards.lock().expect("segment cache poisoned").values().map(|s| s.segments.len()).sum()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

async fn get(store: &Arc<dyn ObjectStore>, display: &str, location: &str) -> Result<bytes::Bytes> {
    let what = || format!("read manifest {location}");
    store
        .get(&Path::from(location))
        .await
        .map_err(|e| unavailable(display, &what(), e))?
        .bytes()
        .await
        .map_err(|e| unavailable(display, &what(), e))
}

async fn put(store: &Arc<dyn ObjectStore>, display: &str, location: String, bytes: Vec<u8>) -> Result<()> {
    store
        .put(&Path::from(location.as_str()), PutPayload::from(bytes))
        .await
        .map_err(|e| unavailable(display, &format!("write manifest {location}"), e))?;
    Ok(())
}

fn corrupt(location: &str) -> impl Fn(String) -> Error + '_ {
    move |detail| Error::Corrupt { location: location.to_string(), detail }
}

/// Reads the manifest version at `location` and its segments, those not in `cache` up to 16 at a time.
///
/// # Errors
///
/// [`Error::ColdUnavailable`] when the store cannot be read, [`Error::Corrupt`] when an object cannot be decoded or
/// the segments do not match the version object.
pub async fn read_manifest(
    store: &Arc<dyn ObjectStore>,
    display: &str,
    location: &str,
    cache: &SegmentCache,
) -> Result<Manifest> {
    let version = StoredVersion::decode(&get(store, display, location).await?).map_err(corrupt(location))?;
    let shard = version.shard();
    let paths: Vec<String> = version.segments().iter().map(|r| r.path.clone()).collect();
    let segments: Vec<Arc<[ColdFile]>> = futures::stream::iter(paths)
        .map(|path| read_segment(store, display, path, shard, cache))
        .buffered(CONCURRENT)
        .try_collect()
        .await?;
    let kept = version.segments().iter().map(|r| r.path.clone()).zip(segments.iter().cloned()).collect();
    cache.keep(shard, version.version(), kept);
    version.assemble(&segments).map_err(corrupt(location))
}

/// The files segment `path` of shard `shard` lists, from `cache` or the store.
async fn read_segment(
    store: &Arc<dyn ObjectStore>,
    display: &str,
    path: String,
    shard: (u64, u64),
    cache: &SegmentCache,
) -> Result<Arc<[ColdFile]>> {
    if let Some(files) = cache.get(shard, &path) {
        return Ok(files);
    }
    let bytes = get(store, display, &path).await?;
    Ok(Arc::from(decode_segment(&bytes, shard).map_err(corrupt(&path))?))
}

/// Stores `manifest` under names of its own (its version and a random nonce): the segments it does not share with
/// the version it was made from, up to 16 at a time, then its version object, whose name it returns. `manifest`'s
/// files are put in the stored order and its segments become the stored ones.
///
/// # Errors
///
/// [`Error::ColdUnavailable`] when the store refuses a write.
pub async fn write_manifest(
    store: &Arc<dyn ObjectStore>,
    display: &str,
    manifest: &mut Manifest,
    cache: &SegmentCache,
) -> Result<String> {
    let form = manifest
        .store(crate::random_u64()?, SEGMENT_FILES)
        .map_err(|e| Error::Internal(format!("encode a manifest: {e}")))?;
    futures::stream::iter(form.segments)
        .map(|(path, bytes)| put(store, display, path, bytes))
        .buffer_unordered(CONCURRENT)
        .try_collect::<()>()
        .await?;
    put(store, display, form.location.clone(), form.version).await?;
    let shard = (manifest.table_id, manifest.shard_id);
    let mut at = 0;
    let mut kept = HashMap::with_capacity(manifest.segments.len());
    for segment in &manifest.segments {
        let listed =
            cache.get(shard, &segment.path).unwrap_or_else(|| Arc::from(&manifest.files[at..at + segment.files.len()]));
        at += segment.files.len();
        kept.insert(segment.path.clone(), listed);
    }
    cache.keep(shard, manifest.version, kept);
    Ok(form.location)
}

/// Writes the marker of the commit of version `version` of shard `shard` (table and shard ids), stored at
/// `location` (see [`CommitMarker`]); writing it again writes the same bytes.
///
/// # Errors
///
/// [`Error::ColdUnavailable`] when the store refuses the write.
pub async fn mark_commit(
    store: &Arc<dyn ObjectStore>,
    display: &str,
    shard: (u64, u64),
    version: u64,
    location: &str,
) -> Result<()> {
    let marker = CommitMarker { version, manifest: location.to_string() };
    let bytes = serde_json::to_vec_pretty(&marker).map_err(|e| Error::Internal(format!("encode a marker: {e}")))?;
    put(store, display, Manifest::commit_path(shard.0, shard.1, version), bytes).await
}

/// Makes sure the marker of the commit of version `version` of shard `shard` is in the bucket: writes it when it is
/// missing (a node that crashed after its commit left it out, or a commit made current by a statement's decision);
/// returns when it was written, in milliseconds since the Unix epoch (by the store's clock, or by this node's for one
/// written here). A marker is never written before its commit, so this is never before the version became current: the
/// collector's grace for the files the version retired counts from it.
///
/// # Errors
///
/// [`Error::ColdUnavailable`] when the store cannot be read or refuses the write.
pub async fn ensure_commit_marker(
    store: &Arc<dyn ObjectStore>,
    display: &str,
    shard: (u64, u64),
    version: u64,
    location: &str,
) -> Result<u64> {
    let path = Path::from(Manifest::commit_path(shard.0, shard.1, version));
    match store.head(&path).await {
        Ok(meta) => Ok(meta.last_modified.timestamp_millis().max(0) as u64),
        Err(object_store::Error::NotFound { .. }) => {
            mark_commit(store, display, shard, version, location).await?;
            Ok(crate::clock::unix_ms())
        }
        Err(e) => Err(unavailable(display, &format!("read {path}"), e)),
    }
}

/// The current manifest of shard `shard` (table and shard ids) as the bucket alone tells it: the one its newest
/// commit marker names; `None` when it has none.
///
/// # Errors
///
/// [`Error::ColdUnavailable`] when the store cannot be read, [`Error::Corrupt`] when an object cannot be decoded.
pub async fn read_committed(
    store: &Arc<dyn ObjectStore>,
    display: &str,
    shard: (u64, u64),
    cache: &SegmentCache,
) -> Result<Option<Manifest>> {
    let prefix = Path::from(format!("tables/{}/shards/{}/commits", shard.0, shard.1));
    let listed: Vec<object_store::ObjectMeta> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| unavailable(display, &format!("list {prefix}"), e))?;
    let Some(newest) = listed.into_iter().map(|o| o.location).filter(|l| l.as_ref().ends_with(".json")).max() else {
        return Ok(None);
    };
    let bytes = get(store, display, newest.as_ref()).await?;
    let marker: CommitMarker = serde_json::from_slice(&bytes).map_err(|e| corrupt(newest.as_ref())(e.to_string()))?;
    read_manifest(store, display, &marker.manifest, cache).await.map(Some)
}

/// The shards (table and shard ids) that have commits in the bucket, in order.
///
/// # Errors
///
/// [`Error::ColdUnavailable`] when the store cannot be listed.
pub async fn committed_shards(store: &Arc<dyn ObjectStore>, display: &str) -> Result<Vec<(u64, u64)>> {
    let ids = |listed: object_store::ListResult| -> Vec<u64> {
        listed.common_prefixes.iter().filter_map(|p| p.filename().and_then(|n| n.parse().ok())).collect()
    };
    let list = |prefix: String| async move {
        store
            .list_with_delimiter(Some(&Path::from(prefix.as_str())))
            .await
            .map_err(|e| unavailable(display, &format!("list {prefix}"), e))
    };
    let mut shards = Vec::new();
    for table in ids(list("tables".to_string()).await?) {
        for shard in ids(list(format!("tables/{table}/shards")).await?) {
            shards.push((table, shard));
        }
    }
    shards.sort_unstable();
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use object_store::memory::InMemory;

    use super::*;
    use crate::cold::metered::{IoCounters, MeteredStore};
    use crate::cold::{ColdView, ColumnStats, WrittenRange};

    fn file(i: u64) -> ColdFile {
        ColdFile {
            path: Manifest::data_path(3, 4, 1, 77, i, i * 31),
            node: 1,
            store: 77,
            rows: 1000,
            bytes: 64_000 + i,
            max_seq: i,
            columns: vec![ColumnStats {
                min: Some((i * 1000).to_string()),
                max: Some((i * 1000 + 999).to_string()),
                nulls: 0,
            }],
            written_ms: Some(WrittenRange { min: i, max: i + 1 }),
            visible_from: 0,
        }
    }

    #[tokio::test]
    async fn a_shard_of_100_000_files_commits_by_its_changes_and_loads_whole() {
        let io = Arc::new(IoCounters::default());
        let store: Arc<dyn ObjectStore> = Arc::new(MeteredStore::new(Arc::new(InMemory::new()), Arc::clone(&io)));
        let schema = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
        let writer = SegmentCache::default();
        let mut m = Manifest::empty(3, "t", 4, schema).with_files((1..=100_000).map(file).collect());
        let location = write_manifest(&store, "memory", &mut m, &writer).await.expect("write");
        let first = io.totals();
        assert_eq!(first.puts, 101, "a hundred segments and the version object");

        // Another process loads it whole.
        let reader = SegmentCache::default();
        let loaded = read_manifest(&store, "memory", &location, &reader).await.expect("read");
        assert_eq!(loaded, m);
        assert_eq!(io.totals().since(&first).gets, 101);
        let version_bytes = store.head(&Path::from(location.as_str())).await.expect("head").size;
        assert!(version_bytes < 32 * 1024, "the version object names segments, not files: {version_bytes} bytes");

        // One more file: the writer stores one segment and a version object, a fraction of the whole.
        let before = io.totals();
        let mut next = loaded.with_file(file(100_001));
        let location = write_manifest(&store, "memory", &mut next, &writer).await.expect("write");
        let commit = io.totals().since(&before);
        assert_eq!(commit.puts, 2);
        assert!(commit.put_bytes * 50 < first.put_bytes, "{} bytes of {}", commit.put_bytes, first.put_bytes);

        // A reader that has the version before fetches only the version object and the new segment.
        let before = io.totals();
        let loaded = read_manifest(&store, "memory", &location, &reader).await.expect("read");
        assert_eq!(io.totals().since(&before).gets, 2);
        assert_eq!(loaded, next);
        assert_eq!(loaded.files.len(), 100_001);
        assert_eq!(reader.len(), 101, "only the latest version's segments are kept");
        // The view scans prune by: each column's bounds across the files, read in one pass.
        let view = ColdView::of(&loaded, 77);
        let mins = view.bounds[0].min.as_primitive::<Int64Type>();
        assert_eq!((mins.len(), mins.value(0), mins.value(100_000)), (100_001, 1000, 100_001_000));
        assert_eq!(view.bounds[0].max.as_primitive::<Int64Type>().value(41), 42_999);
        let other = ColdView::of(&loaded, 78);
        assert_eq!(
            (other.files.len(), other.hot_through),
            (100_001, view.hot_through),
            "another copy's view: the shard's files and the shard's mark"
        );
        assert!(view.hot_through > 0);

        // Compaction of 20 files spread over the shard: their segments are written again, the others kept.
        let replaced: Vec<String> = (0..20).map(|k| loaded.files[k * 5_000].path.clone()).collect();
        let mut merged = file(200_000);
        merged.rows = 20_000;
        let before = io.totals();
        let mut next = loaded.replacing(&replaced, vec![merged], 5, 10);
        let location = write_manifest(&store, "memory", &mut next, &writer).await.expect("write");
        let commit = io.totals().since(&before);
        assert!(commit.puts <= 22, "{} objects written", commit.puts);
        let fresh = read_manifest(&store, "memory", &location, &SegmentCache::default()).await.expect("read");
        assert_eq!(fresh.files.len(), 100_001 - 20 + 1);
        assert_eq!(fresh.files.iter().map(|f| f.rows).sum::<u64>(), 100_001 * 1000);
        assert_eq!(fresh, next);
    }

    #[tokio::test]
    async fn a_missing_or_damaged_segment_is_an_error_naming_it() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let schema = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
        let mut m = Manifest::empty(3, "t", 4, schema).with_files((1..=3).map(file).collect());
        let location = write_manifest(&store, "memory", &mut m, &SegmentCache::default()).await.expect("write");
        let segment = Path::from(m.segments[0].path.as_str());
        store.put(&segment, PutPayload::from_static(b"[1, 2")).await.expect("damage");
        let e = read_manifest(&store, "memory", &location, &SegmentCache::default()).await.expect_err("damaged");
        assert!(matches!(&e, Error::Corrupt { location, .. } if location == segment.as_ref()), "{e:?}");
        store.delete(&segment).await.expect("delete");
        let e = read_manifest(&store, "memory", &location, &SegmentCache::default()).await.expect_err("missing");
        assert!(matches!(&e, Error::ColdUnavailable { detail } if detail.contains(segment.as_ref())), "{e:?}");
    }
}
