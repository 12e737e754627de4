//! Garbage collection of the cold tier: objects that no shard's manifest pointer reaches.
//!
//! Every object in the bucket has a name of its own (see [`crate::cold`]), so an object is garbage exactly when the
//! current manifest of its shard neither is it nor names it (as one of its segments, or one of their files): uploads
//! of tierings that failed before their commit, manifests and segments of earlier versions and of commits that lost
//! their compare-and-set, and everything of a dropped table.
//! Such objects are deleted once they are older than the grace period (`cold.gc_grace`), which protects
//! what is in flight: a tiering gives up before its commit if it has taken more than half the grace period since it
//! began uploading, so its objects cannot be collected under it; a reader that read an older pointer finishes long
//! before the grace period is over.
//!
//! A collection first fences the commits of uploads begun more than half the grace period ago
//! (`MetaCommand::FenceColdUploads`): a commit still in flight after that (a slow proposal, one proposed again to
//! learn its outcome, one left in a deposed leader's log) is refused wherever it lands, so it cannot name an object
//! this collection deletes. The pointers and the catalog are then read linearizably before the bucket is listed, so
//! an object written after the read is young and kept. Any node may collect; the background collector runs on the metadata leader only, so that
//! one node lists the bucket per interval.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;

use quiver_meta::MetaCommand;

use super::Engine;
use crate::cold::{self, Manifest};
use crate::error::{Error, Result};

/// Each shard's manifest pointer (its location), by table and shard id.
type Pointers = BTreeMap<(u64, u64), (Option<String>, Option<String>)>;

/// What a collection deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Objects listed under the cluster's `tables/`.
    pub listed: u64,
    /// Objects deleted.
    pub deleted: u64,
    /// Bytes they held.
    pub deleted_bytes: u64,
    /// The grace period applied.
    pub grace: Duration,
}

/// The table and shard ids of a key `tables/<table>/shards/<shard>/…` (the shard is `None` outside a shard).
fn ids_of(key: &str) -> Option<(u64, Option<u64>)> {
    let mut parts = key.split('/');
    if parts.next()? != "tables" {
        return None;
    }
    let table = parts.next()?.parse().ok()?;
    let shard = match (parts.next(), parts.next()) {
        (Some("shards"), Some(id)) => id.parse().ok(),
        _ => None,
    };
    Some((table, shard))
}

impl Engine {
    /// Collects the cold tier's garbage now, as the background collector does: with the node's `cold.gc_grace`, or
    /// with a longer `grace`.
    ///
    /// # Errors
    ///
    /// [`Error::Plan`] for a `grace` shorter than `cold.gc_grace` (tierings and scans in flight rely on that one:
    /// lower it in the config to collect sooner), and the errors of [`Engine::collect_cold_garbage`].
    pub async fn collect_garbage(&self, grace: Option<Duration>) -> Result<GcReport> {
        let configured = self.cold.gc_grace();
        let grace = match grace {
            Some(g) if g < configured => {
                return Err(Error::Plan {
                    message: format!(
                        "a grace period of {g:?} is shorter than cold.gc_grace ({configured:?}), which tierings, \
                         compactions and scans in flight rely on; lower cold.gc_grace in the config to collect sooner"
                    ),
                });
            }
            Some(g) => g,
            None => configured,
        };
        self.collect_cold_garbage(grace).await
    }

    /// Deletes the cold tier's objects that no manifest pointer reaches and that are older than `grace`; see the
    /// module docs.
    ///
    /// # Errors
    ///
    /// [`Error::ColdUnavailable`] when the store cannot be listed or a current manifest cannot be read (nothing is
    /// deleted then), and the metadata group's errors when the pointers cannot be read. A failed deletion is
    /// logged and retried at the next collection.
    pub async fn collect_cold_garbage(&self, grace: Duration) -> Result<GcReport> {
        let store = self.cold_store()?;
        let display = self.cold.display().to_string();
        // First the fence: a manifest commit still in flight (slow, proposed again to settle it, or left in a
        // deposed leader's log) whose uploads began more than half the grace period ago is refused from now on, so
        // none can land after the read below and name an object deleted here. Its objects are at least that old
        // only if the clocks of its node and the bucket are less than half the grace period apart.
        let before_ms = crate::clock::unix_ms().saturating_sub((grace / 2).as_millis() as u64);
        self.meta.propose(MetaCommand::FenceColdUploads { before_ms }).await?.into_result()?;
        let (tables, pointers): (BTreeSet<u64>, Pointers) = self
            .meta
            .read_state(|s| {
                let tables = s.catalog().tables().map(|t| t.id.0).collect();
                let pointers = s
                    .shards()
                    .map(|r| {
                        let current = r.manifest.as_ref().map(|p| p.location.clone());
                        (
                            (r.table_id.0, r.shard_id.0),
                            (current, r.pending.as_ref().map(|p| p.manifest.location.clone())),
                        )
                    })
                    .collect();
                (tables, pointers)
            })
            .await?;
        let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let cutoff = chrono::Utc::now().checked_sub_signed(grace).unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let mut keep: HashSet<String> = HashSet::new();
        for ((table, shard), (current, pending)) in pointers.iter().filter(|((t, _), _)| tables.contains(t)) {
            // A manifest proposed by a part of a statement spanning shards, with every object it names, stays
            // until the statement is decided.
            let listed = current.iter().map(|l| (l, true)).chain(pending.iter().map(|l| (l, false)));
            for (location, committed) in listed {
                let manifest = self.manifest_at(location).await?;
                let version = manifest.version;
                let retired_after = cutoff.timestamp_millis().max(0) as u64;
                // When the version became current (its commit marker's time; never before): a version a statement
                // spanning shards proposed was built, and its files retired, before its statement was decided.
                let mut current_since = 0;
                if committed {
                    // The commit marker, written before anything is deleted when it is missing: a commit whose node
                    // crashed before writing it left the bucket's newest marker naming a version about to be
                    // collected.
                    current_since =
                        cold::ensure_commit_marker(&store, &display, (*table, *shard), manifest.version, location)
                            .await?;
                    keep.insert(Manifest::commit_path(*table, *shard, manifest.version));
                }
                keep.insert(location.clone());
                keep.extend(manifest.segments.into_iter().map(|s| s.path));
                keep.extend(manifest.files.into_iter().map(|f| f.path));
                // Files taken out (retention, compaction, a rewrite) within the grace period: scans of the version
                // before may still read them. Those this version took out count from when it became current.
                let recent = |r: &cold::RetiredFile| {
                    let since = if r.version == version { current_since } else { 0 };
                    r.removed_ms.max(since) > retired_after
                };
                keep.extend(manifest.retired.into_iter().filter(|r| recent(r)).map(|r| r.path));
            }
        }
        let failed = |e: object_store::Error| Error::ColdUnavailable { detail: format!("list {display}: {e}") };
        let mut report = GcReport { grace: grace.to_std().unwrap_or(Duration::MAX), ..GcReport::default() };
        let mut doomed = Vec::new();
        let mut listing = store.list(Some(&Path::from("tables")));
        while let Some(object) = listing.next().await {
            let object = object.map_err(failed)?;
            report.listed += 1;
            let key = object.location.to_string();
            let Some((table, shard)) = ids_of(&key) else { continue };
            if keep.contains(&key) || object.last_modified > cutoff {
                continue;
            }
            // A live table's objects outside a shard the metadata knows are not ours to judge.
            let known_shard = shard.is_some_and(|s| pointers.contains_key(&(table, s)));
            if tables.contains(&table) && !known_shard {
                continue;
            }
            doomed.push((object.location, object.size));
        }
        for (location, size) in doomed {
            match store.delete(&location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    report.deleted += 1;
                    report.deleted_bytes += size;
                }
                Err(e) => tracing::warn!(object = %location, error = %e, "deleting a cold-tier object failed"),
            }
        }
        if report.deleted > 0 {
            tracing::info!(deleted = report.deleted, bytes = report.deleted_bytes, "cold-tier garbage collected");
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, RecordBatch};
    use arrow::datatypes::Int64Type;
    use object_store::PutPayload;

    use super::*;
    use crate::engine::{EngineOptions, StorageLocation};

    async fn sum(engine: &Engine) -> i64 {
        let batches: Vec<RecordBatch> =
            engine.execute_one("SELECT sum(x) FROM t").await.expect("query").collect().await.expect("rows");
        batches[0].column(0).as_primitive::<Int64Type>().value(0)
    }

    /// An engine in `dir` whose table t holds 1..=500 in two files: tiered when it held 1..=300, and again.
    async fn tiered_twice(dir: &std::path::Path) -> Arc<Engine> {
        // One shard per table: the tests count one shard's manifests and files.
        let sharding = crate::engine::ShardingDefaults { shards_per_table: 1, ..Default::default() };
        let options = EngineOptions { chunk_rows_target: 100, sharding, ..EngineOptions::default() };
        let engine: Arc<Engine> = Engine::open(StorageLocation::Path(dir.to_path_buf()), options).await.expect("open");
        engine.execute_one("CREATE TABLE t (x BIGINT NOT NULL)").await.expect("create");
        engine.execute_one("INSERT INTO t SELECT value FROM generate_series(1, 300)").await.expect("insert");
        engine.tier("t").await.expect("tier");
        engine.execute_one("INSERT INTO t SELECT value FROM generate_series(301, 500)").await.expect("insert");
        engine.tier("t").await.expect("tier");
        engine
    }

    /// The sum of column x of the files of `manifest`, read from the bucket with a plain Parquet reader.
    async fn sum_of_files(store: &Arc<dyn object_store::ObjectStore>, manifest: &Manifest) -> i64 {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let mut total = 0;
        for file in &manifest.files {
            let bytes = store.get(&Path::from(file.path.as_str())).await.expect("get").bytes().await.expect("bytes");
            for batch in ParquetRecordBatchReaderBuilder::try_new(bytes).expect("parquet").build().expect("reader") {
                total += batch.expect("batch").column(0).as_primitive::<Int64Type>().values().iter().sum::<i64>();
            }
        }
        total
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_process_with_the_bucket_alone_finds_each_shards_current_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = tiered_twice(dir.path()).await;
        // Only the bucket from here on (under the cluster's prefix), and a cache of its own.
        let store = engine.cold_store().expect("store");
        let alone = cold::SegmentCache::default();
        let shards = cold::committed_shards(&store, "bucket").await.expect("shards");
        assert_eq!(shards.len(), 1);
        let manifest = cold::read_committed(&store, "bucket", shards[0], &alone).await.expect("read").expect("one");
        assert_eq!((manifest.table.as_str(), manifest.version, manifest.files.len()), ("t", 2, 2));
        assert_eq!(manifest.schema.field(0).name(), "x");
        assert_eq!(sum_of_files(&store, &manifest).await, 500 * 501 / 2);
        assert_eq!(cold::read_committed(&store, "bucket", (9, 9), &alone).await.expect("read"), None);

        // A commit whose node crashed before its marker: the bucket tells the version before, until the collector
        // writes the marker again, before it deletes that version's objects.
        store.delete(&Path::from(Manifest::commit_path(shards[0].0, shards[0].1, 2))).await.expect("delete");
        let older = cold::read_committed(&store, "bucket", shards[0], &alone).await.expect("read").expect("one");
        assert_eq!((older.version, sum_of_files(&store, &older).await), (1, 300 * 301 / 2));
        engine.collect_cold_garbage(Duration::ZERO).await.expect("gc");
        let current = cold::read_committed(&store, "bucket", shards[0], &alone).await.expect("read").expect("one");
        assert_eq!((current.version, sum_of_files(&store, &current).await), (2, 500 * 501 / 2));
        assert!(keys(&engine).await.iter().all(|k| !k.contains("/00000000000000000001")), "version 1 is collected");
    }

    async fn keys(engine: &Engine) -> Vec<String> {
        let store = engine.cold_store().expect("store");
        let mut keys: Vec<String> =
            store.list(None).map(|o| o.expect("object").location.to_string()).collect::<Vec<_>>().await;
        keys.sort();
        keys
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_of_uploads_begun_before_a_collection_is_refused_and_nothing_is_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = tiered_twice(dir.path()).await;
        let table = engine.hot_table("t").expect("table");
        let replica = table.only_shard();
        let shard = engine.shard_record(replica).expect("shard");
        let store = engine.cold_store().expect("store");
        // A commit held up (a slow proposal, or one proposed again to learn its outcome) while a collection runs:
        // its manifest was uploaded before the collection, which may delete it as unreferenced.
        let uploaded_from_ms = crate::clock::unix_ms().saturating_sub(1);
        let (pointer, current) = engine.shard_manifest(replica, &shard).await.expect("manifest");
        let mut next = current.with_files(Vec::new());
        let location = engine.store_manifest(&store, &mut next).await.expect("store");
        engine.collect_cold_garbage(Duration::ZERO).await.expect("gc");
        assert!(!keys(&engine).await.contains(&location), "the collection deleted the uncommitted manifest");
        let refused = engine
            .propose_manifest(&shard, pointer.as_ref(), &next, location.clone(), uploaded_from_ms, 0)
            .await
            .expect_err("a commit of uploads older than the fence");
        assert!(refused.report().contains("fence"), "{}", refused.report());
        let now = engine.meta.read_local(|s| s.shard(shard.shard_id).and_then(|r| r.manifest.clone()));
        assert_eq!(now, pointer, "the pointer did not move to the deleted manifest");
        assert_eq!(sum(&engine).await, 500 * 501 / 2, "every row is still read");
        // Uploads begun after the collection commit.
        engine.execute_one("INSERT INTO t VALUES (501)").await.expect("insert");
        assert_eq!(engine.tier("t").await.expect("tier").rows, 1);
        assert_eq!(sum(&engine).await, 501 * 502 / 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_a_statements_manifest_retires_are_kept_for_the_grace_period_from_its_decision() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = tiered_twice(dir.path()).await;
        let grace = Duration::from_secs(3);
        // Every object is older than the grace period from here on.
        tokio::time::sleep(grace + Duration::from_millis(500)).await;
        let table = engine.hot_table("t").expect("table");
        let replica = table.only_shard();
        let shard = engine.shard_record(replica).expect("shard");
        let store = engine.cold_store().expect("store");
        // The part of a statement spanning shards that dropped the shard's files, proposed long before its
        // statement was decided: its files were stamped retired when it was built.
        let (pointer, current) = engine.shard_manifest(replica, &shard).await.expect("manifest");
        let files: Vec<String> = current.files.iter().map(|f| f.path.clone()).collect();
        let mut next = current.without_files(&files, 1, u64::MAX);
        let location = engine.store_manifest(&store, &mut next).await.expect("store");
        let (txn, uploaded) = (0x5eed, crate::clock::unix_ms());
        let proposed = engine.propose_manifest(&shard, pointer.as_ref(), &next, location, uploaded, txn).await;
        assert!(proposed.expect("proposed"), "recorded as pending");
        assert!(engine.decide(txn, true).await.expect("decided").commit);
        engine.resolve_part(shard.table_id, shard.shard_id, shard.epoch, txn).await.expect("settled");
        // Its commit marker is written when its part is settled: the bucket alone tells the decided version.
        let alone = cold::SegmentCache::default();
        let at = (shard.table_id.0, shard.shard_id.0);
        let committed = cold::read_committed(&store, "bucket", at, &alone).await.expect("read").expect("one");
        assert_eq!((committed.version, committed.files.len()), (next.version, 0));
        // A scan of the version before may still read the files: the grace counts from the decision.
        engine.collect_cold_garbage(grace).await.expect("gc");
        let kept = keys(&engine).await;
        assert!(files.iter().all(|f| kept.contains(f)), "retired by the decision just now: {kept:?}");
        tokio::time::sleep(grace + Duration::from_millis(500)).await;
        engine.collect_cold_garbage(grace).await.expect("gc");
        let later = keys(&engine).await;
        assert!(files.iter().all(|f| !later.contains(f)), "the grace period is over: {later:?}");
        assert_eq!(sum(&engine).await, 0, "the statement took every row of the files");
    }

    #[test]
    fn keys_name_their_table_and_shard() {
        assert_eq!(ids_of("tables/7/shards/9/data/n1-00-s3-00.parquet"), Some((7, Some(9))));
        assert_eq!(ids_of("tables/7/other"), Some((7, None)));
        assert_eq!(ids_of("tables/x/shards/9/a"), None);
        assert_eq!(ids_of("elsewhere/7"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreferenced_objects_past_the_grace_period_go_and_every_row_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = tiered_twice(dir.path()).await;
        // An upload whose tiering never committed.
        let store = engine.cold_store().expect("store");
        let orphan = Path::from("tables/1/shards/1/data/n1-0000000000000001-s9-00000000000000ff.parquet");
        store.put(&orphan, PutPayload::from_static(b"left behind")).await.expect("put");
        let before = keys(&engine).await;
        assert_eq!(
            before.len(),
            9,
            "two files, two manifests, their segments and commit markers, the orphan: {before:?}"
        );

        let young = engine.collect_garbage(None).await.expect("gc");
        assert_eq!((young.listed, young.deleted), (9, 0), "nothing is older than cold.gc_grace");
        assert_eq!(young.grace, engine.cold.gc_grace());
        let short = engine.collect_garbage(Some(Duration::from_secs(1))).await.expect_err("too short");
        assert!(matches!(short, Error::Plan { .. }) && short.to_string().contains("cold.gc_grace"), "{short}");
        let report = engine.collect_cold_garbage(Duration::ZERO).await.expect("gc");
        assert_eq!(report.deleted, 4, "the orphan, the first manifest, its segment and marker: {report:?}");
        let after = keys(&engine).await;
        assert_eq!(after.len(), 5, "{after:?}");
        assert!(!after.contains(&orphan.to_string()));
        let segments: Vec<&String> = after.iter().filter(|k| k.contains("/segments/00000000000000000002-")).collect();
        assert_eq!(segments.len(), 1, "the current manifest's segment stays: {after:?}");
        assert_eq!(sum(&engine).await, 500 * 501 / 2, "every row is still read");
        engine.execute_one("INSERT INTO t VALUES (501)").await.expect("insert");
        engine.tier("t").await.expect("tiering goes on");
        assert_eq!(sum(&engine).await, 501 * 502 / 2);

        // A dropped table's objects all go.
        engine.execute_one("DROP TABLE t").await.expect("drop");
        let report = engine.collect_cold_garbage(Duration::ZERO).await.expect("gc");
        assert_eq!(report.deleted, 9, "three files, two manifests, their segments and commit markers: {report:?}");
        assert_eq!(keys(&engine).await, Vec::<String>::new());
    }
}
