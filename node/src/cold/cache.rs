//! [`CachedStore`]: the cold tier's read cache, between scans and the bucket.
//!
//! Objects of the cold tier are immutable and never reuse a name, so a byte range once read is valid forever and
//! needs no invalidation. Reads are cut into aligned blocks of [`BLOCK`] bytes, keyed by the store, the object and the
//! block number, and kept in a hybrid cache (foyer): a memory tier bounded by `cold.cache_memory`, and a disk tier
//! of `cold.cache_disk` bytes in `cold.cache_dir` that survives restarts. A scan's missing blocks are fetched with
//! one ranged GET per run of nearby blocks (runs less than 1 MiB apart are merged, the gap is cached too), up to ten
//! at a time. Each object's size is cached beside its blocks, so footer reads after a restart need no request.
//!
//! Writes go through: a file the tierer uploads is cut into blocks and cached once the upload completes, so the first
//! query after a tiering does not go to the bucket.
//!
//! Every read is tallied twice: in the node's totals ([`CacheCounters`], metrics) and, through [`ScanStore`], in the
//! scan's own [`ReadTally`], which EXPLAIN ANALYZE shows. With no cache (both sizes 0, or the simulation build, whose
//! disk I/O could not be simulated), reads pass through with the same merging and tallies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};

use crate::metrics::Counter;

/// The cache's unit: reads are cut into aligned blocks of this many bytes.
pub const BLOCK: u64 = 1024 * 1024;

/// Runs of missing blocks closer than this many blocks are fetched with one request.
const MERGE_GAP_BLOCKS: u64 = 1;

/// Requests of one read in flight at once.
const PARALLEL_GETS: usize = 10;

/// Bytes of blocks waiting to be written to the disk tier past which foyer drops further writes.
#[cfg(not(madsim))]
const WRITE_QUEUE_BYTES: usize = 512 << 20;

/// Cache lookups of one read in flight at once.
const PARALLEL_LOOKUPS: usize = 32;

/// The node's totals of the read cache.
#[derive(Debug, Default)]
pub struct CacheCounters {
    /// Blocks found in the cache.
    pub hits: Counter,
    /// Blocks that had to be fetched from the bucket.
    pub misses: Counter,
    /// Blocks evicted from the memory tier (those also on disk stay readable from there).
    pub evictions: Counter,
    /// Bytes put into the cache by reads.
    pub filled_bytes: Counter,
    /// Bytes put into the cache by uploads (write-through).
    pub written_bytes: Counter,
}

/// What one scan read: requests to the bucket and blocks found in the cache. Counts also go to the parent tally
/// (the statement's, which `system.queries` shows).
#[derive(Debug, Default)]
pub struct ReadTally {
    /// GET requests sent to the bucket.
    pub gets: Counter,
    /// Bytes they returned.
    pub get_bytes: Counter,
    /// Blocks served by the cache.
    pub cache_hits: Counter,
    /// Blocks the cache did not have.
    pub cache_misses: Counter,
    parent: Option<Arc<ReadTally>>,
}

impl ReadTally {
    /// A tally whose counts also go to `parent`.
    pub fn within(parent: Option<Arc<ReadTally>>) -> Self {
        ReadTally { parent, ..ReadTally::default() }
    }

    fn add(&self, counter: fn(&ReadTally) -> &Counter, n: u64) {
        counter(self).add(n);
        if let Some(parent) = &self.parent {
            parent.add(counter, n);
        }
    }

    fn get(&self, bytes: u64) {
        self.add(|t| &t.gets, 1);
        self.add(|t| &t.get_bytes, bytes);
    }
}

/// `[cold]` settings of the read cache, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Bytes of the memory tier (0: none).
    pub memory_bytes: u64,
    /// Bytes of the disk tier (0: none).
    pub disk_bytes: u64,
    /// The disk tier's directory.
    pub dir: Option<std::path::PathBuf>,
}

/// A cache key: the object (with its store's name in front, so that two stores never share entries) and a block
/// number; block `u64::MAX` holds the object's size.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockKey {
    object: String,
    block: u64,
}

/// The block number under which an object's size is kept.
const SIZE_BLOCK: u64 = u64::MAX;

#[cfg(not(madsim))]
mod hybrid {
    //! The cache itself, foyer's hybrid cache. Not in the simulation build: its disk tier does real file I/O on
    //! threads of its own, which the simulation cannot drive.

    use std::sync::Arc;

    use bytes::Bytes;
    use foyer::{
        BlockEngineConfig, Code, DeviceBuilder, Event, EventListener, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
        HybridCachePolicy, RecoverMode,
    };

    use super::{BlockKey, CacheCounters, CacheSettings, WRITE_QUEUE_BYTES};
    use crate::error::{Error, Result};

    impl Code for BlockKey {
        fn encode(&self, writer: &mut impl std::io::Write) -> foyer::Result<()> {
            (self.object.len() as u64).encode(writer)?;
            writer.write_all(self.object.as_bytes()).map_err(foyer::Error::io_error)?;
            self.block.encode(writer)
        }

        fn decode(reader: &mut impl std::io::Read) -> foyer::Result<Self> {
            let len = u64::decode(reader)? as usize;
            let mut object = vec![0; len];
            reader.read_exact(&mut object).map_err(foyer::Error::io_error)?;
            let object = String::from_utf8(object)
                .map_err(|e| foyer::Error::new(foyer::ErrorKind::Parse, "cache key").with_source(e))?;
            Ok(BlockKey { object, block: u64::decode(reader)? })
        }

        fn estimated_size(&self) -> usize {
            16 + self.object.len()
        }
    }

    struct Evictions(Arc<CacheCounters>);

    impl EventListener for Evictions {
        type Key = BlockKey;
        type Value = Bytes;

        fn on_leave(&self, reason: Event, _key: &BlockKey, _value: &Bytes) {
            if reason == Event::Evict {
                self.0.evictions.inc();
            }
        }
    }

    /// The blocks cached, in memory and on disk.
    #[derive(Clone)]
    pub(super) struct Blocks(HybridCache<BlockKey, Bytes>);

    impl std::fmt::Debug for Blocks {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Blocks")
        }
    }

    impl Blocks {
        pub(super) async fn open(settings: &CacheSettings, counters: &Arc<CacheCounters>) -> Result<Option<Blocks>> {
            if settings.memory_bytes == 0 && settings.disk_bytes == 0 {
                return Ok(None);
            }
            let builder = HybridCacheBuilder::new()
                .with_name("quiver_cold_cache")
                .with_policy(HybridCachePolicy::WriteOnInsertion)
                .with_event_listener(Arc::new(Evictions(Arc::clone(counters))))
                .memory(settings.memory_bytes.max(super::BLOCK) as usize)
                .with_weighter(|key: &BlockKey, value: &Bytes| key.object.len() + value.len() + 64)
                .storage();
            let builder = match (&settings.dir, settings.disk_bytes) {
                (Some(dir), bytes) if bytes > 0 => {
                    let failed = |e: &dyn std::fmt::Display| Error::Config {
                        detail: format!("cold.cache_dir: {}: {e}", dir.display()),
                    };
                    std::fs::create_dir_all(dir).map_err(|e| failed(&e))?;
                    let device =
                        FsDeviceBuilder::new(dir).with_capacity(bytes as usize).build().map_err(|e| failed(&e))?;
                    // Blocks of the disk tier: whole units of writing and eviction, several to a cache.
                    let block = (bytes / 16).clamp(4 * super::BLOCK, 16 * super::BLOCK) as usize;
                    builder
                        .with_engine_config(
                            BlockEngineConfig::new(device)
                                .with_block_size(block)
                                // Writes waiting for the disk past this are dropped: room for a whole tiered file
                                // or a scan's fill, so that write-through and fills reach the disk tier.
                                .with_submit_queue_size_threshold(WRITE_QUEUE_BYTES),
                        )
                        .with_recover_mode(RecoverMode::Quiet)
                }
                _ => builder,
            };
            let cache = builder
                .build()
                .await
                .map_err(|e| Error::Config { detail: format!("cold.cache_dir: open the cache: {e}") })?;
            Ok(Some(Blocks(cache)))
        }

        pub(super) async fn get(&self, key: &BlockKey) -> Option<Bytes> {
            match self.0.get(key).await {
                Ok(entry) => entry.map(|e| e.value().clone()),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the cold cache failed; reading the bucket instead");
                    None
                }
            }
        }

        pub(super) fn insert(&self, key: BlockKey, value: Bytes) {
            self.0.insert(key, value);
        }

        pub(super) async fn close(&self) {
            if let Err(e) = self.0.close().await {
                tracing::warn!(error = %e, "closing the cold cache failed");
            }
        }
    }
}

#[cfg(madsim)]
mod hybrid {
    //! The simulation build has no read cache (see the module docs).

    use std::sync::Arc;

    use bytes::Bytes;

    use super::{BlockKey, CacheCounters, CacheSettings};
    use crate::error::Result;

    /// No blocks are ever cached.
    #[derive(Debug, Clone)]
    pub(super) enum Blocks {}

    impl Blocks {
        pub(super) async fn open(_settings: &CacheSettings, _counters: &Arc<CacheCounters>) -> Result<Option<Blocks>> {
            Ok(None)
        }

        pub(super) async fn get(&self, _key: &BlockKey) -> Option<Bytes> {
            match *self {}
        }

        pub(super) fn insert(&self, _key: BlockKey, _value: Bytes) {
            match *self {}
        }

        pub(super) async fn close(&self) {
            match *self {}
        }
    }
}

use hybrid::Blocks;

/// The read cache of one node; see the module docs.
#[derive(Debug, Clone)]
pub struct ReadCache {
    blocks: Option<Blocks>,
    counters: Arc<CacheCounters>,
}

impl ReadCache {
    /// Opens the cache `settings` describe (recovering the disk tier's blocks from an earlier run), counting into
    /// `counters`; both sizes 0 means no cache.
    ///
    /// # Errors
    ///
    /// [`crate::error::Error::Config`] when the disk tier's directory cannot be created or opened.
    pub async fn open(settings: &CacheSettings, counters: Arc<CacheCounters>) -> crate::error::Result<Self> {
        Ok(ReadCache { blocks: Blocks::open(settings, &counters).await?, counters })
    }

    /// A read path with no cache.
    pub fn none(counters: Arc<CacheCounters>) -> Self {
        ReadCache { blocks: None, counters }
    }

    /// Whether anything is cached.
    pub fn enabled(&self) -> bool {
        self.blocks.is_some()
    }

    /// Writes what the memory tier holds to disk and stops the disk tier's writers.
    pub async fn close(&self) {
        if let Some(blocks) = &self.blocks {
            blocks.close().await;
        }
    }
}

/// The cold tier's store with the read cache in front; see the module docs. `name` keeps the entries of different
/// stores (and clusters) apart.
#[derive(Debug, Clone)]
pub struct CachedStore {
    inner: Arc<dyn ObjectStore>,
    cache: ReadCache,
    name: Arc<str>,
}

impl fmt::Display for CachedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cached({})", self.inner)
    }
}

impl CachedStore {
    /// Reads of `inner` through `cache`; `name` identifies the store and cluster.
    pub fn new(inner: Arc<dyn ObjectStore>, cache: ReadCache, name: &str) -> Self {
        CachedStore { inner, cache, name: name.into() }
    }

    fn key(&self, location: &Path, block: u64) -> BlockKey {
        BlockKey { object: format!("{}#{location}", self.name), block }
    }

    async fn cached_size(&self, blocks: &Blocks, location: &Path) -> Option<u64> {
        let bytes = blocks.get(&self.key(location, SIZE_BLOCK)).await?;
        Some(u64::from_le_bytes(bytes.as_ref().try_into().ok()?))
    }

    fn remember_size(&self, blocks: &Blocks, location: &Path, size: u64) {
        blocks.insert(self.key(location, SIZE_BLOCK), Bytes::copy_from_slice(&size.to_le_bytes()));
    }

    /// Caches `bytes`, an object's content from offset 0 (a completed upload), block by block.
    fn write_through(&self, location: &Path, bytes: &Bytes) {
        if self.cache.blocks.is_none() || !writes_through(location) {
            return;
        }
        for (i, block) in bytes.chunks(BLOCK as usize).enumerate() {
            self.write_block(location, i as u64, Bytes::copy_from_slice(block));
        }
        self.written(location, bytes.len() as u64);
    }

    /// Caches block `index` of an object being written.
    fn write_block(&self, location: &Path, index: u64, block: Bytes) {
        if let Some(blocks) = &self.cache.blocks {
            blocks.insert(self.key(location, index), block);
        }
    }

    /// Records that the object at `location`, of `size` bytes, is written whole.
    fn written(&self, location: &Path, size: u64) {
        if let Some(blocks) = &self.cache.blocks {
            self.remember_size(blocks, location, size);
            self.cache.counters.written_bytes.add(size);
        }
    }

    /// One ranged GET of `range` (clamped to the object's end by the store), tallied.
    async fn fetch(&self, location: &Path, range: Range<u64>, tally: Option<&ReadTally>) -> Result<(Bytes, u64)> {
        let options = GetOptions { range: Some(GetRange::Bounded(range)), ..GetOptions::default() };
        let result = self.inner.get_opts(location, options).await?;
        let size = result.meta.size;
        let bytes = result.bytes().await?;
        if let Some(t) = tally {
            t.get(bytes.len() as u64);
        }
        Ok((bytes, size))
    }

    /// Reads `ranges` of `location`, from the cache where it has them; tallies into `tally` as well.
    ///
    /// # Errors
    ///
    /// What the bucket answers for blocks the cache does not have.
    pub async fn read_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
        tally: Option<&ReadTally>,
    ) -> Result<Vec<Bytes>> {
        if let Some(r) = ranges.iter().find(|r| r.end < r.start) {
            return Err(object_store::Error::Generic {
                store: "cold tier",
                source: format!("range {r:?} of {location} ends before it starts").into(),
            });
        }
        let Some(blocks) = &self.cache.blocks else {
            return self.read_uncached(location, ranges, tally).await;
        };
        let wanted: BTreeSet<u64> =
            ranges.iter().filter(|r| r.end > r.start).flat_map(|r| r.start / BLOCK..=(r.end - 1) / BLOCK).collect();
        let found: Vec<(u64, Option<Bytes>)> = futures::stream::iter(wanted)
            .map(|b| async move { (b, blocks.get(&self.key(location, b)).await) })
            .buffered(PARALLEL_LOOKUPS)
            .collect()
            .await;
        let mut have = BTreeMap::new();
        let mut missing = Vec::new();
        for (b, bytes) in found {
            match bytes {
                Some(bytes) => {
                    have.insert(b, bytes);
                }
                None => missing.push(b),
            }
        }
        let hits = have.len() as u64;
        self.cache.counters.hits.add(hits);
        self.cache.counters.misses.add(missing.len() as u64);
        if let Some(t) = tally {
            t.add(|t| &t.cache_hits, hits);
            t.add(|t| &t.cache_misses, missing.len() as u64);
        }
        let mut runs: Vec<Range<u64>> = Vec::new();
        for b in missing {
            match runs.last_mut() {
                Some(run) if b <= run.end + MERGE_GAP_BLOCKS => run.end = b + 1,
                _ => runs.push(b..b + 1),
            }
        }
        let fetched: Vec<(Range<u64>, Bytes, u64)> = futures::stream::iter(runs)
            .map(|run| async move {
                let (bytes, size) = self.fetch(location, run.start * BLOCK..run.end * BLOCK, tally).await?;
                Ok::<_, object_store::Error>((run, bytes, size))
            })
            .buffered(PARALLEL_GETS)
            .try_collect()
            .await?;
        for (run, bytes, size) in fetched {
            for (i, block) in bytes.chunks(BLOCK as usize).enumerate() {
                let block = Bytes::copy_from_slice(block);
                self.cache.counters.filled_bytes.add(block.len() as u64);
                blocks.insert(self.key(location, run.start + i as u64), block.clone());
                have.insert(run.start + i as u64, block);
            }
            self.remember_size(blocks, location, size);
        }
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            match assemble(&have, r) {
                Some(bytes) => out.push(bytes),
                None => return Err(past_the_end(location, r)),
            }
        }
        Ok(out)
    }

    async fn read_uncached(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
        tally: Option<&ReadTally>,
    ) -> Result<Vec<Bytes>> {
        let non_empty: Vec<Range<u64>> = ranges.iter().filter(|r| r.end > r.start).cloned().collect();
        let merged = super::metered::merge_ranges(&non_empty);
        let fetched: Vec<Bytes> = futures::stream::iter(merged.iter().cloned())
            .map(|range| async move { Ok::<_, object_store::Error>(self.fetch(location, range, tally).await?.0) })
            .buffered(PARALLEL_GETS)
            .try_collect()
            .await?;
        ranges
            .iter()
            .map(|r| {
                if r.end == r.start {
                    return Ok(Bytes::new());
                }
                let i = merged.partition_point(|m| m.start <= r.start) - 1;
                let start = (r.start - merged[i].start) as usize;
                let end = start + (r.end - r.start) as usize;
                if end > fetched[i].len() {
                    return Err(past_the_end(location, r));
                }
                Ok(fetched[i].slice(start..end))
            })
            .collect()
    }

    /// `get_opts`, tallied into `tally`: a plain ranged read of an object whose size the cache knows is served
    /// from the cache; anything else goes to the bucket.
    async fn get_opts_tallied(
        &self,
        location: &Path,
        options: GetOptions,
        tally: Option<&ReadTally>,
    ) -> Result<GetResult> {
        let plain = !options.head
            && options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none()
            && options.version.is_none();
        if let (true, Some(blocks), Some(GetRange::Bounded(range))) = (plain, &self.cache.blocks, &options.range)
            && let Some(size) = self.cached_size(blocks, location).await
            && range.start < size
        {
            let range = range.start..range.end.min(size);
            let bytes = self.read_ranges(location, std::slice::from_ref(&range), tally).await?.remove(0);
            let meta = ObjectMeta {
                location: location.clone(),
                last_modified: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
                size,
                e_tag: None,
                version: None,
            };
            return Ok(GetResult {
                payload: GetResultPayload::Stream(futures::stream::once(async move { Ok(bytes) }).boxed()),
                meta,
                range,
                attributes: Default::default(),
            });
        }
        let head = options.head;
        let result = self.inner.get_opts(location, options).await?;
        if let Some(blocks) = &self.cache.blocks {
            self.remember_size(blocks, location, result.meta.size);
        }
        if let (Some(t), false) = (tally, head) {
            t.get(result.range.end - result.range.start);
        }
        Ok(result)
    }
}

/// Whether an upload to `location` is written through: data files, which scans read by ranges; not manifests, which
/// are read whole, once per version, and never from the cache.
fn writes_through(location: &Path) -> bool {
    location.extension() == Some("parquet")
}

/// The error for a range that runs past the end of the object.
fn past_the_end(location: &Path, range: &Range<u64>) -> object_store::Error {
    object_store::Error::Generic {
        store: "cold tier",
        source: format!("range {range:?} of {location} is past the end of the object").into(),
    }
}

/// The bytes of `range` from the blocks in `have`; `None` when a block is missing (past the object's end).
fn assemble(have: &BTreeMap<u64, Bytes>, range: &Range<u64>) -> Option<Bytes> {
    if range.end <= range.start {
        return Some(Bytes::new());
    }
    let (first, last) = (range.start / BLOCK, (range.end - 1) / BLOCK);
    let slice_of = |b: u64| -> Option<Bytes> {
        let block = have.get(&b)?;
        let start = range.start.max(b * BLOCK) - b * BLOCK;
        let end = range.end.min((b + 1) * BLOCK) - b * BLOCK;
        (end as usize <= block.len()).then(|| block.slice(start as usize..end as usize))
    };
    if first == last {
        return slice_of(first);
    }
    let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
    for b in first..=last {
        out.extend_from_slice(&slice_of(b)?);
    }
    Some(out.freeze())
}

#[async_trait]
impl ObjectStore for CachedStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let bytes = (self.cache.enabled() && writes_through(location)).then(|| Bytes::from(payload.clone()));
        let result = self.inner.put_opts(location, payload, opts).await?;
        if let Some(bytes) = bytes {
            self.write_through(location, &bytes);
        }
        Ok(result)
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        if !self.cache.enabled() || !writes_through(location) {
            return Ok(upload);
        }
        Ok(Box::new(CachedUpload {
            inner: upload,
            store: self.clone(),
            location: location.clone(),
            blocks: 0,
            tail: BytesMut::new(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.get_opts_tallied(location, options, None).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.read_ranges(location, ranges, None).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A multipart upload written through to the cache as its parts go: each whole block is cached at once, so the
/// upload holds at most one block (the tail after the last whole one), whatever the object's size; its size is
/// recorded when it completes. An upload that fails leaves blocks under a name that nothing refers to (every object
/// has a name of its own, and a retry takes a new one), for the cache to evict.
#[derive(Debug)]
struct CachedUpload {
    inner: Box<dyn MultipartUpload>,
    store: CachedStore,
    location: Path,
    /// Whole blocks cached so far.
    blocks: u64,
    /// The bytes after them.
    tail: BytesMut,
}

#[async_trait]
impl MultipartUpload for CachedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        for chunk in data.iter() {
            let mut chunk = chunk.as_ref();
            while !chunk.is_empty() {
                let take = chunk.len().min(BLOCK as usize - self.tail.len());
                self.tail.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                if self.tail.len() == BLOCK as usize {
                    let block = std::mem::take(&mut self.tail).freeze();
                    self.store.write_block(&self.location, self.blocks, block);
                    self.blocks += 1;
                }
            }
        }
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let result = self.inner.complete().await?;
        let size = self.blocks * BLOCK + self.tail.len() as u64;
        if !self.tail.is_empty() {
            let block = std::mem::take(&mut self.tail).freeze();
            self.store.write_block(&self.location, self.blocks, block);
        }
        self.store.written(&self.location, size);
        Ok(result)
    }

    async fn abort(&mut self) -> Result<()> {
        self.tail.clear();
        self.inner.abort().await
    }
}

/// The cached store as one scan sees it: reads are tallied into the scan's [`ReadTally`] too.
#[derive(Debug, Clone)]
pub struct ScanStore {
    store: Arc<CachedStore>,
    tally: Arc<ReadTally>,
}

impl ScanStore {
    /// Reads of `store` tallied into `tally`.
    pub fn new(store: Arc<CachedStore>, tally: Arc<ReadTally>) -> Self {
        ScanStore { store, tally }
    }
}

impl fmt::Display for ScanStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scan({})", self.store)
    }
}

#[async_trait]
impl ObjectStore for ScanStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.store.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.store.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.store.get_opts_tallied(location, options, Some(&self.tally)).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.store.read_ranges(location, ranges, Some(&self.tally)).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.store.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.store.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.store.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.store.copy_opts(from, to, options).await
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;
    use crate::cold::metered::{IoCounters, MeteredStore};

    fn body(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    async fn cached(dir: &std::path::Path, disk: u64, memory: u64) -> (CachedStore, Arc<IoCounters>, Arc<InMemory>) {
        let bucket = Arc::new(InMemory::new());
        let io = Arc::new(IoCounters::default());
        let metered: Arc<dyn ObjectStore> = Arc::new(MeteredStore::new(bucket.clone(), Arc::clone(&io)));
        let settings = CacheSettings { memory_bytes: memory, disk_bytes: disk, dir: Some(dir.to_path_buf()) };
        let cache = ReadCache::open(&settings, Arc::default()).await.expect("cache");
        (CachedStore::new(metered, cache, "memory://test"), io, bucket)
    }

    #[tokio::test]
    async fn ranges_are_read_once_then_served_from_the_cache() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, io, bucket) = cached(dir.path(), 0, 64 << 20).await;
        let path = Path::from("t/f.parquet");
        let data = body(5 * BLOCK as usize + 1234);
        bucket.put(&path, data.clone().into()).await.expect("put");
        let tally = ReadTally::default();
        // Within one block, across blocks, at the very end, and empty.
        let ranges = [10..20, BLOCK - 5..2 * BLOCK + 7, data.len() as u64 - 100..data.len() as u64, 30..30];
        for _ in 0..2 {
            let got = store.read_ranges(&path, &ranges, Some(&tally)).await.expect("read");
            for (r, bytes) in ranges.iter().zip(&got) {
                assert_eq!(bytes.as_ref(), &data[r.start as usize..r.end as usize]);
            }
        }
        // Blocks 0–2 are one run; block 5 (the last, partial) is another, more than one block away.
        assert_eq!(io.totals().gets, 2, "{:?}", io.totals());
        assert_eq!(tally.gets.get(), 2);
        assert_eq!(tally.cache_misses.get(), 4);
        assert_eq!(tally.cache_hits.get(), 4);
        // A ranged get_opts is served from the cache too, with the object's size.
        let got = store.get_range(&path, 100..200).await.expect("range");
        assert_eq!(got.as_ref(), &data[100..200]);
        let result = store.get_opts(&path, GetOptions { range: Some((0..10).into()), ..Default::default() }).await;
        assert_eq!(result.expect("get").meta.size, data.len() as u64);
        assert_eq!(io.totals().gets, 2);
        // A range past the end is the bucket's error, as without a cache.
        let past = data.len() as u64 + 10;
        assert!(store.read_ranges(&path, std::slice::from_ref(&(past..past + 5)), None).await.is_err());
        let across = data.len() as u64 - 5..data.len() as u64 + 5;
        assert!(store.read_ranges(&path, std::slice::from_ref(&across), None).await.is_err(), "no short read");
        let across = data.len() as u64 - 5..data.len() as u64 + 5;
        assert!(store.read_ranges(&path, std::slice::from_ref(&across), None).await.is_err(), "no short read");
    }

    #[tokio::test]
    async fn uploads_are_written_through_and_the_disk_tier_survives_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let path = Path::from("t/g.parquet");
        let data = body(3 * BLOCK as usize + 77);
        let (bucket, io_after_restart) = {
            let (store, io, bucket) = cached(dir.path(), 64 << 20, 4 << 20).await;
            // A multipart upload, as the tierer's writer makes for large files, in parts that do not end on blocks.
            let mut upload = store.put_multipart(&path).await.expect("multipart");
            let cut = [0, 300, BLOCK as usize + 5, 2 * BLOCK as usize + 9, data.len()];
            for part in cut.windows(2) {
                upload.put_part(Bytes::from(data[part[0]..part[1]].to_vec()).into()).await.expect("part");
            }
            upload.complete().await.expect("complete");
            let got =
                store.read_ranges(&path, std::slice::from_ref(&(0..data.len() as u64)), None).await.expect("read");
            assert_eq!(got[0].as_ref(), data.as_slice());
            assert_eq!(io.totals().gets, 0, "written through: no GET");
            store.cache.close().await;
            (bucket, Arc::new(IoCounters::default()))
        };
        let metered: Arc<dyn ObjectStore> = Arc::new(MeteredStore::new(bucket, Arc::clone(&io_after_restart)));
        let settings = CacheSettings { memory_bytes: 4 << 20, disk_bytes: 64 << 20, dir: Some(dir.path().into()) };
        let cache = ReadCache::open(&settings, Arc::default()).await.expect("reopen");
        let store = CachedStore::new(metered, cache, "memory://test");
        let got = store.get_range(&path, 5..BLOCK + 5).await.expect("range");
        assert_eq!(got.as_ref(), &data[5..BLOCK as usize + 5]);
        let got = store.read_ranges(&path, std::slice::from_ref(&(0..data.len() as u64)), None).await.expect("read");
        assert_eq!(got[0].as_ref(), data.as_slice());
        assert_eq!(io_after_restart.totals().gets, 0, "served from the disk tier after a restart");
        // Another store's entries are not this one's.
        let other = CachedStore::new(Arc::new(InMemory::new()), store.cache.clone(), "memory://other");
        assert!(other.read_ranges(&path, std::slice::from_ref(&(0..10)), None).await.is_err());
    }

    #[tokio::test]
    async fn without_a_cache_near_ranges_are_one_get() {
        let bucket = Arc::new(InMemory::new());
        let path = Path::from("t/h.parquet");
        let data = body(4 * 1024 * 1024);
        bucket.put(&path, data.clone().into()).await.expect("put");
        let store = CachedStore::new(bucket, ReadCache::none(Arc::default()), "memory://test");
        let tally = ReadTally::default();
        let ranges = [3_500_000..3_500_010, 0..100, 200..300, 250..260, 7..7];
        let got = store.read_ranges(&path, &ranges, Some(&tally)).await.expect("read");
        for (r, bytes) in ranges.iter().zip(&got) {
            assert_eq!(bytes.as_ref(), &data[r.start as usize..r.end as usize]);
        }
        assert_eq!(tally.gets.get(), 2);
        assert_eq!(tally.get_bytes.get(), 310);
    }
}
