//! [`FaultyStore`]: an object store for the simulation that misbehaves the way cloud object stores do, with every
//! choice drawn from the seed: requests fail with server errors (S3's 500 and 503 "Slow Down"), take long, or time
//! out; and a write can take effect although its caller gets an error (the response was lost), the case that makes
//! idempotent uploads and commits necessary. It wraps any store (the simulation uses `object_store`'s in-memory one)
//! and injects nothing while its faults are switched off.
//!
//! The cold tier reaches its bucket through this seam in the simulation, so tiering, manifest commits and garbage
//! collection run under object-store faults as well as crashes and partitions.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use madsim::rand::{Rng, thread_rng};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, Result,
};

/// How often each fault happens while faults are on (probabilities per request).
#[derive(Debug, Clone, Copy)]
pub struct FaultRates {
    /// The request fails with a server error before it takes effect.
    pub error: f64,
    /// A write takes effect but its caller gets an error.
    pub lost_response: f64,
    /// The request takes up to `max_latency` longer.
    pub slow: f64,
    /// The most a slow request waits (a timeout is a slow request that then fails).
    pub max_latency: Duration,
}

impl Default for FaultRates {
    fn default() -> Self {
        FaultRates { error: 0.05, lost_response: 0.02, slow: 0.1, max_latency: Duration::from_secs(3) }
    }
}

/// An object store that injects faults into the store it wraps; see the module docs.
#[derive(Debug, Clone)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    rates: FaultRates,
    on: Arc<AtomicBool>,
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

fn server_error(operation: &str) -> object_store::Error {
    let status = if thread_rng().gen_bool(0.5) { "503 Slow Down" } else { "500 Internal Error" };
    object_store::Error::Generic { store: "simulated", source: format!("{operation}: {status}").into() }
}

impl FaultyStore {
    /// Wraps `inner`; faults are off until [`FaultyStore::set_faults`].
    pub fn new(inner: Arc<dyn ObjectStore>, rates: FaultRates) -> Self {
        FaultyStore { inner, rates, on: Arc::new(AtomicBool::new(false)) }
    }

    /// Switches the faults on or off (for every clone).
    pub fn set_faults(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    fn faults(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Before a request: maybe wait, maybe fail (a timeout is a wait that then fails).
    async fn before(&self, operation: &str) -> Result<()> {
        if !self.faults() {
            return Ok(());
        }
        if thread_rng().gen_bool(self.rates.slow) {
            let max = self.rates.max_latency.as_millis().max(2) as u64;
            madsim::time::sleep(Duration::from_millis(thread_rng().gen_range(1..max))).await;
        }
        if thread_rng().gen_bool(self.rates.error) { Err(server_error(operation)) } else { Ok(()) }
    }

    /// After a write took effect: maybe the caller never hears so.
    fn after_write<T>(&self, operation: &str, result: Result<T>) -> Result<T> {
        match result {
            Ok(_) if self.faults() && thread_rng().gen_bool(self.rates.lost_response) => {
                Err(object_store::Error::Generic {
                    store: "simulated",
                    source: format!("{operation}: connection reset before the response").into(),
                })
            }
            other => other,
        }
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.before("put").await?;
        let result = self.inner.put_opts(location, payload, opts).await;
        self.after_write("put", result)
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.before("create multipart upload").await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.before("get").await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.before("get ranges").await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        // Each deletion may fail before it happens, or happen and still report a failure.
        let this = self.clone();
        let inner = Arc::clone(&self.inner);
        locations
            .then(move |location| {
                let this = this.clone();
                let inner = Arc::clone(&inner);
                async move {
                    let location = location?;
                    this.before("delete").await?;
                    let deleted = inner.delete_stream(futures::stream::iter([Ok(location)]).boxed()).next().await;
                    let deleted = deleted.unwrap_or_else(|| Err(server_error("delete")));
                    this.after_write("delete", deleted)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        if self.faults() && thread_rng().gen_bool(self.rates.error) {
            return futures::stream::iter([Err(server_error("list"))]).boxed();
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.before("list").await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.before("copy").await?;
        let result = self.inner.copy_opts(from, to, options).await;
        self.after_write("copy", result)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use madsim::runtime::Runtime;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    /// Writes, reads and deletes with faults on: whatever the store acknowledged is there with its content, a
    /// failed write is there whole or not at all, and with faults off everything succeeds.
    #[test]
    fn acknowledged_writes_stay_and_failed_ones_are_whole_or_absent() {
        for seed in 1..=5 {
            Runtime::with_seed_and_config(seed, madsim::Config::default()).block_on(async {
                let store = FaultyStore::new(Arc::new(InMemory::new()), FaultRates::default());
                store.set_faults(true);
                let mut acknowledged = BTreeMap::new();
                let mut failed = Vec::new();
                let (mut errors, mut lost) = (0, 0);
                for i in 0..300u32 {
                    let path = Path::from(format!("data/{i}.bin"));
                    let body = Bytes::from(vec![(i % 251) as u8; 100 + i as usize]);
                    match store.put(&path, body.clone().into()).await {
                        Ok(_) => {
                            acknowledged.insert(path, body);
                        }
                        Err(_) => failed.push((path, body)),
                    }
                }
                store.set_faults(false);
                for (path, body) in &acknowledged {
                    let got = store.get(path).await.expect("acknowledged object").bytes().await.expect("bytes");
                    assert_eq!(&got, body, "{path}");
                }
                for (path, body) in &failed {
                    match store.get(path).await {
                        Ok(got) => {
                            assert_eq!(&got.bytes().await.expect("bytes"), body, "{path}");
                            lost += 1;
                        }
                        Err(object_store::Error::NotFound { .. }) => errors += 1,
                        Err(e) => panic!("unexpected error with faults off: {e}"),
                    }
                }
                assert!(errors > 0 && lost > 0, "seed {seed}: both kinds of failure happen ({errors}, {lost})");
                let listed = store.list(Some(&Path::from("data"))).count().await;
                assert_eq!(listed, acknowledged.len() + lost, "seed {seed}");
            });
        }
    }
}
