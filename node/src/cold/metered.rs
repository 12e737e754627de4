//! [`MeteredStore`]: counts the requests and bytes that reach the cold tier's object store, so that what the cold
//! tier costs (GETs, PUTs, bytes from the bucket) can be seen in metrics, system tables and benchmarks.
//!
//! Ranged reads are merged the way object stores do it (ranges less than 1 MiB apart become one request, up to ten
//! requests at a time), here rather than inside the wrapped store, so that every request counted is one the store
//! serves: a GET of S3 or a file read of a local directory.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};

use crate::metrics::Counter;

/// Requests to the cold tier's store and their bytes.
#[derive(Debug, Default)]
pub struct IoCounters {
    /// GET requests (whole objects or ranges).
    pub gets: Counter,
    /// Bytes the GETs returned.
    pub get_bytes: Counter,
    /// HEAD requests.
    pub heads: Counter,
    /// PUT requests: whole objects and the parts of multipart uploads.
    pub puts: Counter,
    /// Bytes the PUTs sent.
    pub put_bytes: Counter,
    /// Objects deleted.
    pub deletes: Counter,
    /// LIST requests.
    pub lists: Counter,
    /// Multipart uploads aborted (writes that failed after their first part).
    pub aborts: Counter,
}

/// A snapshot of [`IoCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoTotals {
    /// GET requests.
    pub gets: u64,
    /// Bytes the GETs returned.
    pub get_bytes: u64,
    /// HEAD requests.
    pub heads: u64,
    /// PUT requests.
    pub puts: u64,
    /// Bytes the PUTs sent.
    pub put_bytes: u64,
    /// Objects deleted.
    pub deletes: u64,
    /// LIST requests.
    pub lists: u64,
    /// Multipart uploads aborted.
    pub aborts: u64,
}

impl IoCounters {
    /// The counts now.
    pub fn totals(&self) -> IoTotals {
        IoTotals {
            gets: self.gets.get(),
            get_bytes: self.get_bytes.get(),
            heads: self.heads.get(),
            puts: self.puts.get(),
            put_bytes: self.put_bytes.get(),
            deletes: self.deletes.get(),
            lists: self.lists.get(),
            aborts: self.aborts.get(),
        }
    }
}

impl IoTotals {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &IoTotals) -> IoTotals {
        IoTotals {
            gets: self.gets - earlier.gets,
            get_bytes: self.get_bytes - earlier.get_bytes,
            heads: self.heads - earlier.heads,
            puts: self.puts - earlier.puts,
            put_bytes: self.put_bytes - earlier.put_bytes,
            deletes: self.deletes - earlier.deletes,
            lists: self.lists - earlier.lists,
            aborts: self.aborts - earlier.aborts,
        }
    }
}

/// An object store that counts what passes through it into [`IoCounters`]; see the module docs.
#[derive(Debug, Clone)]
pub struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
    io: Arc<IoCounters>,
}

impl MeteredStore {
    /// Counts the requests to `inner` in `io`.
    pub fn new(inner: Arc<dyn ObjectStore>, io: Arc<IoCounters>) -> Self {
        MeteredStore { inner, io }
    }
}

impl fmt::Display for MeteredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Metered({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for MeteredStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.io.puts.inc();
        self.io.put_bytes.add(payload.content_length() as u64);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(MeteredUpload { inner: upload, io: Arc::clone(&self.io) }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if options.head {
            self.io.heads.inc();
            return self.inner.get_opts(location, options).await;
        }
        self.io.gets.inc();
        let result = self.inner.get_opts(location, options).await?;
        self.io.get_bytes.add(result.range.end - result.range.start);
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let merged = merge_ranges(ranges);
        let fetched: Vec<Bytes> = futures::stream::iter(merged.iter().cloned())
            .map(|range| async move {
                self.io.gets.inc();
                let bytes = self.inner.get_range(location, range).await?;
                self.io.get_bytes.add(bytes.len() as u64);
                Ok::<_, object_store::Error>(bytes)
            })
            .buffered(PARALLEL_GETS)
            .try_collect()
            .await?;
        Ok(ranges
            .iter()
            .map(|r| {
                let i = merged.partition_point(|m| m.start <= r.start) - 1;
                let start = (r.start - merged[i].start) as usize;
                fetched[i].slice(start..start + (r.end - r.start) as usize)
            })
            .collect())
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        let io = Arc::clone(&self.io);
        self.inner
            .delete_stream(locations)
            .inspect(move |deleted| {
                if deleted.is_ok() {
                    io.deletes.inc();
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.io.lists.inc();
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.io.lists.inc();
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// Ranges closer than this are read with one request.
const MERGE_GAP: u64 = 1024 * 1024;

/// Requests of one ranged read in flight at once.
const PARALLEL_GETS: usize = 10;

/// `ranges` sorted and merged where they overlap or lie less than [`MERGE_GAP`] apart.
pub(crate) fn merge_ranges(ranges: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match merged.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(MERGE_GAP) => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// A multipart upload whose parts are counted as PUTs.
#[derive(Debug)]
struct MeteredUpload {
    inner: Box<dyn MultipartUpload>,
    io: Arc<IoCounters>,
}

#[async_trait]
impl MultipartUpload for MeteredUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.io.puts.inc();
        self.io.put_bytes.add(data.content_length() as u64);
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.io.aborts.inc();
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn requests_and_bytes_are_counted_and_near_ranges_are_one_get() {
        let io = Arc::new(IoCounters::default());
        let store = MeteredStore::new(Arc::new(InMemory::new()), Arc::clone(&io));
        let path = Path::from("a/b.bin");
        let body: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        store.put(&path, body.clone().into()).await.expect("put");
        assert_eq!(store.head(&path).await.expect("head").size, body.len() as u64);
        let whole = store.get(&path).await.expect("get").bytes().await.expect("bytes");
        assert_eq!(whole.len(), body.len());
        // Two ranges 100 bytes apart are one request; one 3 MiB further is another (given out of order, overlapping).
        let ranges = [3_500_000..3_500_010, 0..100, 200..300, 250..260];
        let got = store.get_ranges(&path, &ranges).await.expect("ranges");
        for (r, bytes) in ranges.iter().zip(&got) {
            assert_eq!(bytes.as_ref(), &body[r.start as usize..r.end as usize]);
        }
        let listed = store.list(None).count().await;
        assert_eq!(listed, 1);
        store.delete(&path).await.expect("delete");
        let totals = io.totals();
        assert_eq!(
            totals,
            IoTotals {
                gets: 3,
                get_bytes: body.len() as u64 + 300 + 10,
                heads: 1,
                puts: 1,
                put_bytes: body.len() as u64,
                deletes: 1,
                lists: 1,
                aborts: 0,
            }
        );
        assert_eq!(totals.since(&totals), IoTotals::default());
    }
}
