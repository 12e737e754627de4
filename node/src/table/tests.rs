//! Tables of several shards on one node: rows land in the shard that owns their slot, statements are atomic across
//! shards, and format 2 directories are rewritten to format 3 at open.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, UInt64Type};

use super::keys;
use crate::engine::{Engine, EngineOptions, StorageLocation};
use crate::shard::slot;

async fn open(dir: &std::path::Path) -> Arc<Engine> {
    let options = EngineOptions { chunk_rows_target: 100, ..EngineOptions::default() };
    Engine::open(StorageLocation::Path(dir.to_path_buf()), options).await.expect("open")
}

/// Change `lsn` of a shard's log, numbered at `term`, as the replication stream carries it.
fn logged(
    lsn: u64,
    term: u64,
    added: Vec<crate::engine::ReplicatedChunk>,
    removed: Vec<u64>,
    resolved: Vec<super::log::Resolution>,
) -> super::log::LoggedChange {
    super::log::LoggedChange { lsn, term, added, removed, resolved, txn: 0 }
}

async fn rows(engine: &Engine, sql: &str) -> Vec<RecordBatch> {
    engine.execute_one(sql).await.expect(sql).collect().await.expect(sql)
}

/// The single BIGINT value `sql` returns.
async fn value(engine: &Engine, sql: &str) -> i64 {
    let batches = rows(engine, sql).await;
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

/// `count(*)` and `sum(v)` of table `name`.
async fn count_sum(engine: &Engine, name: &str) -> (i64, i64) {
    let batches = rows(engine, &format!("SELECT count(*), coalesce(sum(v), 0) FROM {name}")).await;
    (
        batches[0].column(0).as_primitive::<Int64Type>().value(0),
        batches[0].column(1).as_primitive::<Int64Type>().value(0),
    )
}

/// Checks that every hot row of `name` is in the shard owning its slot, and returns the hot rows per shard.
fn rows_per_shard(engine: &Engine, name: &str) -> Vec<u64> {
    let table = engine.hot_table(name).expect("table");
    let key: Vec<usize> =
        table.def().sharding.shard_key.iter().map(|k| table.schema().index_of(k).expect("key column")).collect();
    let mut out = Vec::new();
    for replica in table.shards() {
        let schema = table.schema();
        let mut count = 0;
        for chunk in replica.version().iter() {
            let batch = replica.read_chunk(chunk, None, &schema).expect("read");
            count += batch.num_rows() as u64;
            if key.is_empty() {
                continue;
            }
            for s in slot::slots(&batch, &key).expect("slots") {
                assert_eq!(table.shard_map().shard_of(s), replica.shard_id(), "a row of slot {s} in the wrong shard");
            }
        }
        out.push(count);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_go_to_the_shard_owning_their_slot_and_statements_are_whole_across_shards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path()).await;
    engine.execute_one("CREATE TABLE k (id BIGINT PRIMARY KEY, v BIGINT)").await.expect("create");
    engine.execute_one("INSERT INTO k SELECT value, value * 10 FROM generate_series(1, 1000)").await.expect("insert");
    let per_shard = rows_per_shard(&engine, "k");
    assert_eq!(per_shard.len(), 2, "a single node makes two shards per table by default");
    assert!(per_shard.iter().all(|&n| n > 300), "the keys spread over both shards: {per_shard:?}");
    assert_eq!(per_shard.iter().sum::<u64>(), 1000);
    assert_eq!(engine.hot_table("k").expect("table").misplaced_rows().expect("check"), 0);
    assert_eq!(count_sum(&engine, "k").await, (1000, 5_005_000));

    // system.shards shows each shard's hot rows on this node.
    let batches = rows(&engine, "SELECT hot_rows FROM system.shards WHERE table_name = 'k' ORDER BY shard_id").await;
    let listed: Vec<u64> = batches[0].column(0).as_primitive::<UInt64Type>().values().to_vec();
    assert_eq!(listed, per_shard);

    // DELETE and UPDATE across both shards; each shard keeps only its own rows.
    let deleted = engine.execute_one("DELETE FROM k WHERE id % 2 = 0").await.expect("delete");
    assert!(matches!(deleted, crate::engine::QueryOutput::Affected { rows: 500, .. }), "{deleted:?}");
    engine.execute_one("UPDATE k SET v = v + 1 WHERE id <= 100").await.expect("update");
    assert_eq!(count_sum(&engine, "k").await, (500, 2_500_000 + 50));
    assert_eq!(rows_per_shard(&engine, "k").iter().sum::<u64>(), 500);

    // The shard key cannot change: a row would have to move to another shard.
    let refused = engine.execute_one("UPDATE k SET id = id + 1 WHERE id = 1").await.expect_err("shard key update");
    assert!(refused.to_string().contains("shard key"), "{refused}");

    // After a restart each shard has its chunks back, numbering continues, and nothing moved.
    engine.shutdown().await.expect("shutdown");
    drop(engine);
    let engine = open(dir.path()).await;
    assert_eq!(count_sum(&engine, "k").await, (500, 2_500_050));
    engine.execute_one("INSERT INTO k VALUES (2, 0), (4, 0)").await.expect("insert after restart");
    assert_eq!(count_sum(&engine, "k").await.0, 502);
    assert_eq!(rows_per_shard(&engine, "k").iter().sum::<u64>(), 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_keys_sends_each_statement_whole_to_one_shard_in_turn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path()).await;
    engine.execute_one("CREATE TABLE logs (v BIGINT)").await.expect("create");
    for i in 0..4 {
        engine.execute_one(&format!("INSERT INTO logs SELECT {i} FROM generate_series(1, 10)")).await.expect("insert");
    }
    let table = engine.hot_table("logs").expect("table");
    for replica in table.shards() {
        let schema = table.schema();
        let mut values: Vec<i64> = Vec::new();
        for chunk in replica.version().iter() {
            let batch = replica.read_chunk(chunk, None, &schema).expect("read");
            values.extend(batch.column(0).as_primitive::<Int64Type>().values().iter());
        }
        assert_eq!(values.len(), 20, "two statements of ten rows each per shard");
        values.dedup();
        assert_eq!(values.len(), 2, "each statement whole in one shard: {values:?}");
    }
    assert_eq!(count_sum(&engine, "logs").await, (40, 60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_shard_tiers_into_its_own_manifest_and_reads_stay_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path()).await;
    engine.execute_one("CREATE TABLE k (id BIGINT PRIMARY KEY, v BIGINT)").await.expect("create");
    engine.execute_one("INSERT INTO k SELECT value, value + 0 FROM generate_series(1, 600)").await.expect("insert");
    let report = engine.tier("k").await.expect("tier");
    assert_eq!(report.rows, 600);
    let table = engine.hot_table("k").expect("table");
    let pointers: Vec<_> = table
        .shards()
        .iter()
        .map(|s| engine.meta().read_local(|m| m.shard(s.shard_id()).and_then(|r| r.manifest.clone())))
        .collect();
    assert!(pointers.iter().all(Option::is_some), "both shards have a manifest: {pointers:?}");
    assert_ne!(pointers[0], pointers[1]);
    engine.execute_one("INSERT INTO k SELECT value, value + 0 FROM generate_series(601, 800)").await.expect("insert");
    assert_eq!(count_sum(&engine, "k").await, (800, 320_400));
    engine.execute_one("DELETE FROM k WHERE id > 500 AND id <= 700").await.expect("delete across tiers");
    assert_eq!(count_sum(&engine, "k").await, (600, 320_400 - 120_100));
    drop(table);
    engine.shutdown().await.expect("shutdown");
    drop(engine);
    let engine = open(dir.path()).await;
    assert_eq!(count_sum(&engine, "k").await, (600, 200_300));
    assert_eq!(value(&engine, "SELECT count(DISTINCT id) FROM k").await, 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_2_directory_is_rewritten_to_format_3_keeping_every_row_and_tiering_mark() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path()).await;
    engine.execute_one("CREATE TABLE a (id BIGINT PRIMARY KEY, v BIGINT) WITH (shards = 1)").await.expect("create");
    engine.execute_one("CREATE TABLE b (v BIGINT) WITH (shards = 1)").await.expect("create");
    engine.execute_one("CREATE TABLE gone (v BIGINT) WITH (shards = 1)").await.expect("create");
    engine.execute_one("INSERT INTO a SELECT value, value + 0 FROM generate_series(1, 300)").await.expect("insert");
    engine.execute_one("INSERT INTO gone VALUES (1)").await.expect("insert");
    assert_eq!(engine.tier("a").await.expect("tier").rows, 300);
    engine.execute_one("INSERT INTO a SELECT value, value + 0 FROM generate_series(301, 450)").await.expect("insert");
    engine.execute_one("INSERT INTO b SELECT value FROM generate_series(1, 250)").await.expect("insert");
    let next_seq = 1 + [engine.hot_table("a"), engine.hot_table("b"), engine.hot_table("gone")]
        .iter()
        .map(|t| t.as_ref().expect("table").only_shard().next_seq())
        .max()
        .expect("tables");
    let gone = engine.hot_table("gone").expect("table").def().id;
    engine.shutdown().await.expect("shutdown");
    drop(engine);

    // As a format 2 build left it: chunks keyed by table and number, one floor for the store; plus the chunk of a
    // table dropped before the rewrite (its entry still there) and the data of an insert that never committed.
    let location = StorageLocation::Path(dir.path().to_path_buf());
    let options = EngineOptions::default();
    let store = Engine::open_store(&location, &options).await.expect("store");
    super::upgrade::to_format_2_for_tests(&*store, next_seq);
    let mut batch = crate::storage::WriteBatch::new();
    batch.put(keys::v2::key(false, quiver_meta::TableId(9999), 1), b"orphan".to_vec());
    store.write(batch, crate::storage::Durability::Sync).expect("orphan");
    drop(store);
    {
        let engine = open(dir.path()).await;
        engine.execute_one("DROP TABLE gone").await.expect("drop");
        engine.shutdown().await.expect("shutdown");
    }
    let store = Engine::open_store(&location, &options).await.expect("store");
    assert_eq!(
        store.get(keys::FORMAT_KEY).expect("format"),
        Some(keys::FORMAT_VERSION.to_be_bytes().to_vec()),
        "format 3 after the first open"
    );
    let (start, end) = keys::v2::data_range();
    assert!(store.scan_keys(&start, &end).expect("scan").is_empty(), "no format 2 key is left");
    let [(start, end), ..] = keys::table_ranges(gone);
    assert!(store.scan_keys(&start, &end).expect("scan").is_empty(), "the dropped table's chunks are gone");
    drop(store);

    let engine = open(dir.path()).await;
    assert_eq!(count_sum(&engine, "a").await, (450, 101_475), "tiered rows once, hot rows once");
    assert_eq!(count_sum(&engine, "b").await, (250, 31_375));
    engine.execute_one("INSERT INTO a VALUES (451, 451)").await.expect("insert after the rewrite");
    let seqs: Vec<u64> = engine.hot_table("a").expect("table").only_shard().version().iter().map(|c| c.seq).collect();
    assert!(seqs.iter().all(|&s| s >= 1), "{seqs:?}");
    assert!(*seqs.last().expect("chunks") >= next_seq, "new chunks are numbered above the old floor: {seqs:?}");
    assert_eq!(engine.tier("a").await.expect("tier").rows, 151);
    assert_eq!(count_sum(&engine, "a").await, (451, 101_926));
}

/// An engine in `dir` with two tables of one shard, `source` holding ids 1..=`rows` and `copy` empty; returns it and
/// the committed chunks of `source`, as a primary would send them.
/// Change `lsn` (term 1) of a part of statement `txn` spanning shards that removes the chunks numbered `removed`.
fn removal_part(lsn: u64, removed: Vec<u64>, txn: u64) -> super::log::LoggedChange {
    super::log::LoggedChange { lsn, term: 1, added: Vec::new(), removed, resolved: Vec::new(), txn }
}

async fn source_and_copy(dir: &std::path::Path, rows: i64) -> (Arc<Engine>, Vec<crate::engine::ReplicatedChunk>) {
    let engine = open(dir).await;
    for name in ["source", "copy"] {
        engine
            .execute_one(&format!("CREATE TABLE {name} (id BIGINT PRIMARY KEY, v BIGINT) WITH (shards = 1)"))
            .await
            .expect("create");
    }
    engine
        .execute_one(&format!("INSERT INTO source SELECT value, value + 0 FROM generate_series(1, {rows})"))
        .await
        .expect("insert");
    let chunks = engine.hot_table("source").expect("table").only_shard().committed_chunks().expect("chunks");
    (engine, chunks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_changes_stay_invisible_across_restarts_until_committed_and_discarded_ones_leave_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, chunks) = source_and_copy(dir.path(), 250).await;
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    // Change 1 adds the first two chunks, change 2 the rest, change 3 (later discarded) the first one again under
    // another number.
    let (first, rest) = chunks.split_at(2);
    let again: Vec<_> = first[..1].iter().map(|(_, index, data)| (1000, index.clone(), data.clone())).collect();
    {
        let copy = engine.hot_table("copy").expect("table");
        let replica = copy.only_shard();
        replica.prepare(1, logged(1, 1, first.to_vec(), vec![], vec![])).expect("prepare 1");
        replica.prepare(1, logged(2, 1, rest.to_vec(), vec![], vec![])).expect("prepare 2");
        replica.prepare(1, logged(3, 1, again, vec![], vec![])).expect("prepare 3");
        replica.prepare(1, logged(1, 1, first.to_vec(), vec![], vec![])).expect("prepared twice: nothing changes");
        assert_eq!(replica.prepared_lsns(), [1, 2, 3]);
    }
    assert_eq!(count_sum(&engine, "copy").await.0, 0, "prepared changes are not visible");
    engine.shutdown().await.expect("shutdown");
    drop(engine);

    let engine = open(dir.path()).await;
    let copy = engine.hot_table("copy").expect("table");
    let replica = Arc::clone(copy.only_shard());
    assert_eq!(replica.prepared_lsns(), [1, 2, 3], "prepared changes survive a restart, their data too");
    assert_eq!(count_sum(&engine, "copy").await.0, 0);
    assert_eq!(replica.discard_after(2).expect("discard"), 1);
    assert_eq!(replica.commit_through(1).expect("commit 1"), 1);
    let rows_first: i64 = count_sum(&engine, "copy").await.0;
    assert!(rows_first > 0 && rows_first < 250, "change 1 alone: {rows_first}");
    assert_eq!(replica.commit_through(5).expect("commit the rest"), 1);
    assert_eq!((replica.committed_lsn(), replica.prepared_lsns()), (2, vec![]));
    assert_eq!(count_sum(&engine, "copy").await, count_sum(&engine, "source").await);
    let store = engine.hot_store_bytes();
    assert!(store > 0);
    drop((copy, replica));
    engine.shutdown().await.expect("shutdown");
    drop(engine);

    let engine = open(dir.path()).await;
    let replica = Arc::clone(engine.hot_table("copy").expect("table").only_shard());
    assert_eq!((replica.committed_lsn(), replica.prepared_lsns()), (2, vec![]), "the commit point is durable");
    assert_eq!(count_sum(&engine, "copy").await, (250, 31_375));
    assert!(replica.version().iter().all(|c| c.seq != 1000), "the discarded change's chunk never became visible");
    // A change at or below the commit point is refused: its sender's log is behind this replica's.
    let behind = replica.prepare(1, logged(2, 1, rest.to_vec(), vec![], vec![])).expect_err("an old change");
    assert!(behind.to_string().contains("commit point"), "{behind}");
    assert!(replica.prepared_lsns().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_primarys_change_replaces_an_earlier_primarys_and_the_log_has_no_holes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, chunks) = source_and_copy(dir.path(), 300).await;
    assert_eq!(chunks.len(), 3, "100 rows a chunk");
    let (a, b, c) = (vec![chunks[0].clone()], vec![chunks[1].clone()], vec![chunks[2].clone()]);
    let copy = engine.hot_table("copy").expect("table");
    let replica = copy.only_shard();
    // The primary of epoch 1 sends changes 1 and 2 (term 1).
    replica.prepare(1, logged(1, 1, a.clone(), vec![], vec![])).expect("prepare 1");
    replica.prepare(1, logged(2, 1, b.clone(), vec![], vec![])).expect("prepare 2");
    // A change that skips a number is refused: the replica missed one and must catch up.
    let hole = replica.prepare(1, logged(4, 1, c.clone(), vec![], vec![])).expect_err("a hole in the log");
    assert!(hole.to_string().contains("missing"), "{hole}");
    // The primary of epoch 3 never had change 2: its own change 2 replaces it, and its copy of change 1 (term 1,
    // sent again) is the one the replica holds.
    replica.prepare(3, logged(1, 1, a.clone(), vec![], vec![])).expect("change 1 again");
    replica.prepare(3, logged(2, 3, c.clone(), vec![], vec![])).expect("the new primary's change 2");
    assert_eq!(replica.prepared_lsns(), [1, 2]);
    // A different change 2 under a term as new as the sender's epoch is refused, not replaced.
    let clash = replica.prepare(3, logged(2, 2, b, vec![], vec![])).expect_err("two changes 2 of current terms");
    assert!(clash.to_string().contains("term"), "{clash}");
    assert_eq!(replica.commit_through(2).expect("commit"), 2);
    let expected = |chunk: &(u64, Vec<u8>, Vec<u8>)| chunk.0;
    let seqs: Vec<u64> = replica.version().iter().map(|c| c.seq).collect();
    assert_eq!(seqs, vec![expected(&a[0]), expected(&c[0])], "changes 1 and the new primary's 2");
    assert_eq!(count_sum(&engine, "copy").await.0, 200);
    assert_eq!(replica.log_end(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_sent_to_one_shard_must_hold_only_that_shards_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path()).await;
    engine.execute_one("CREATE TABLE k (id BIGINT PRIMARY KEY, v BIGINT)").await.expect("create");
    let table = engine.hot_table("k").expect("table");
    let schema = table.schema();
    let batch = |ids: Vec<i64>| {
        let values = arrow::array::Int64Array::from(ids.clone());
        RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(arrow::array::Int64Array::from(ids)), Arc::new(values)])
            .expect("batch")
    };
    let all = batch((1..=100).collect());
    let parts = table.shard_map().split(&all).expect("split");
    assert_eq!(parts.len(), 2, "100 keys over two shards");
    let (first, mine) = (&parts[0].0, &parts[0].1);
    let refused = table
        .append_shard_stream(*first, futures::stream::iter(vec![Ok::<_, crate::Error>(all.clone())]))
        .await
        .expect_err("rows of the other shard");
    assert!(refused.to_string().contains("were sent to shard"), "{refused}");
    assert_eq!(count_sum(&engine, "k").await.0, 0, "nothing of the refused part");
    let written = table
        .append_shard_stream(*first, futures::stream::iter(vec![Ok::<_, crate::Error>(mine.clone())]))
        .await
        .expect("its own rows");
    assert_eq!(written, mine.num_rows() as u64);
    assert_eq!(rows_per_shard(&engine, "k"), [mine.num_rows() as u64, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_received_again_after_its_replica_dropped_it_keeps_its_data_when_the_old_one_goes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, chunks) = source_and_copy(dir.path(), 250).await;
    let copy = engine.hot_table("copy").expect("table");
    let replica = Arc::clone(copy.only_shard());
    let next_seq = chunks.iter().map(|c| c.0 + 1).max().expect("chunks");
    replica.apply(chunks.clone(), &[], next_seq).expect("caught up");
    assert_eq!(count_sum(&engine, "copy").await, count_sum(&engine, "source").await);
    // A reader holds the chunks while the shard leaves the node (everything dropped)...
    let held = replica.version();
    replica.reset(Vec::new(), &[], 0, next_seq, &[], 0).expect("dropped");
    assert_eq!(count_sum(&engine, "copy").await.0, 0);
    // ...and comes back: the same chunk numbers are sent again before the reader lets the old ones go.
    replica.apply(chunks.clone(), &[], next_seq).expect("caught up again");
    drop(held);
    // The old chunks' deferred deletions would now run with the next commit: there is none to run.
    engine.execute_one("INSERT INTO source VALUES (100000, 1)").await.expect("a commit");
    assert_eq!(count_sum(&engine, "copy").await, (250, 31_375), "every chunk's data is still there");
    drop((copy, replica));
    engine.shutdown().await.expect("shutdown");
    drop(engine);
    let engine = open(dir.path()).await;
    assert_eq!(count_sum(&engine, "copy").await, (250, 31_375), "and after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_of_statements_spanning_shards_stay_unseen_until_settled_and_settle_durably() {
    use super::chunk;
    use super::log::Resolution;
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, chunks) = source_and_copy(dir.path(), 250).await;
    let schema = engine.hot_table("source").expect("table").schema();
    // The source's chunks as parts of statements 7 (the first two) and 8 (the rest).
    let tag = |txn: u64, c: &crate::engine::ReplicatedChunk| {
        let meta = chunk::decode_meta(&c.1, || "test".into()).expect("meta");
        let tagged = super::ChunkMeta { txn, ..meta };
        (c.0, chunk::encode_meta(&tagged, &schema).expect("encode"), c.2.clone())
    };
    let (first, rest) = chunks.split_at(2);
    let seven: Vec<_> = first.iter().map(|c| tag(7, c)).collect();
    let eight: Vec<_> = rest.iter().map(|c| tag(8, c)).collect();
    let seven_rows: i64 =
        seven.iter().map(|c| chunk::decode_meta(&c.1, || "t".into()).expect("meta").rows as i64).sum();
    {
        let replica = Arc::clone(engine.hot_table("copy").expect("table").only_shard());
        replica.prepare(1, logged(1, 1, seven, vec![], vec![])).expect("prepare 1");
        replica.prepare(1, logged(2, 1, eight, vec![], vec![])).expect("prepare 2");
        assert_eq!(replica.commit_through(2).expect("commit"), 2);
        assert_eq!(replica.unsettled_txns(), [7, 8]);
        assert_eq!(count_sum(&engine, "copy").await.0, 0, "committed in the log, and undecided: unseen");
        // One change settles both: 7 committed at metadata version 1, 8 aborted.
        let resolved =
            vec![Resolution { txn: 7, commit: true, version: 1 }, Resolution { txn: 8, commit: false, version: 2 }];
        replica.prepare(1, logged(3, 1, vec![], vec![], resolved)).expect("prepare 3");
        assert_eq!(count_sum(&engine, "copy").await.0, 0, "a settling change is invisible until committed too");
        assert_eq!(replica.commit_through(3).expect("commit"), 1);
        assert!(replica.unsettled_txns().is_empty());
        assert_eq!(replica.settled_commits(), [Resolution { txn: 7, commit: true, version: 1 }]);
        assert_eq!(count_sum(&engine, "copy").await.0, seven_rows);
    }
    engine.shutdown().await.expect("shutdown");
    drop(engine);
    let engine = open(dir.path()).await;
    let replica = Arc::clone(engine.hot_table("copy").expect("table").only_shard());
    assert_eq!(count_sum(&engine, "copy").await.0, seven_rows, "settled durably");
    assert!(replica.version().iter().all(|c| c.meta.txn == 7 && c.meta.visible_from == 1), "the aborted part is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refilled_replica_takes_a_new_mark_identity_and_new_chunks_are_numbered_above_the_shards_mark() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, _) = source_and_copy(dir.path(), 10).await;
    engine
        .execute_one("INSERT INTO copy SELECT value, value + 0 FROM generate_series(1001, 1300)")
        .await
        .expect("insert");
    assert_eq!(engine.tier("copy").await.expect("tier").rows, 300);
    let copy = engine.hot_table("copy").expect("table");
    let replica = Arc::clone(copy.only_shard());
    let (old_id, mark) = match replica.cold() {
        crate::cold::ColdState::Ready(view) => (view.marked_as, view.hot_through),
        crate::cold::ColdState::Unavailable(why) => panic!("cold view: {why}"),
    };
    assert_eq!(old_id, replica.mark_id());
    assert!(mark > 0);
    // The metadata group knows how far the shard's cold tier reaches: whoever leads the shard numbers above it.
    let record = engine.meta().read_local(|s| s.shard(replica.shard_id()).cloned()).expect("shard");
    assert_eq!(record.tiered_through, mark);
    // The shard leaves the node and comes back empty: the replica takes a new identity, durably, and reads the
    // cold rows once.
    replica.reset(Vec::new(), &[], 0, 0, &[], 0).expect("emptied");
    let id = replica.mark_id();
    assert_ne!(id, old_id, "a new identity");
    let cold = (300, (1001..=1300).sum::<i64>());
    assert_eq!(count_sum(&engine, "copy").await, cold, "the cold rows, once");
    engine.execute_one("INSERT INTO copy SELECT value, value + 0 FROM generate_series(1, 250)").await.expect("insert");
    assert!(replica.version().iter().all(|c| c.seq > mark), "new chunks are numbered above the shard's mark");
    let both = (550, cold.1 + 31_375);
    assert_eq!(count_sum(&engine, "copy").await, both);
    drop((copy, replica));
    engine.shutdown().await.expect("shutdown");
    drop(engine);
    let engine = open(dir.path()).await;
    assert_eq!(engine.hot_table("copy").expect("table").only_shard().mark_id(), id, "the identity is durable");
    assert_eq!(count_sum(&engine, "copy").await, both, "after a restart");
    assert_eq!(engine.tier("copy").await.expect("tier").rows, 250);
    assert_eq!(count_sum(&engine, "copy").await, both, "after tiering the new chunks");
    assert_eq!(engine.hot_table("copy").expect("table").only_shard().version().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_marks_the_chunks_it_replaces_until_settled_and_a_settled_removal_refuses_older_readers() {
    use super::log::Resolution;
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, chunks) = source_and_copy(dir.path(), 250).await;
    assert_eq!(chunks.len(), 3, "100 rows a chunk");
    let seqs: Vec<u64> = chunks.iter().map(|c| c.0).collect();
    {
        let replica = Arc::clone(engine.hot_table("copy").expect("table").only_shard());
        replica.prepare(1, logged(1, 1, chunks.clone(), vec![], vec![])).expect("prepare 1");
        // Statement 9's part removes the first chunk: committed in the log, the chunk is marked, not removed.
        replica.prepare(1, removal_part(2, vec![seqs[0]], 9)).expect("prepare 2");
        assert_eq!(replica.commit_through(2).expect("commit"), 2);
        assert_eq!(replica.unsettled_txns(), [9]);
        let marked = replica.version().iter().find(|c| c.seq == seqs[0]).map(|c| c.meta.removed_by);
        assert_eq!(marked, Some(9));
        assert_eq!(count_sum(&engine, "copy").await.0, 250, "undecided: the rows it removes are still seen");
        assert!(replica.tierable().1 <= seqs[0], "tiering stops below a marked chunk");
    }
    engine.shutdown().await.expect("shutdown");
    drop(engine);

    let engine = open(dir.path()).await;
    let replica = Arc::clone(engine.hot_table("copy").expect("table").only_shard());
    assert_eq!(replica.unsettled_txns(), [9], "the mark is durable");
    // Settled as committed at the metadata version now: the chunk is gone and readers at an older version are
    // refused; settled durably.
    let now = engine.meta().read_local(|s| s.version());
    let commit = vec![Resolution { txn: 9, commit: true, version: now }];
    replica.prepare(1, logged(3, 1, vec![], vec![], commit)).expect("prepare 3");
    assert_eq!(replica.commit_through(3).expect("commit"), 1);
    assert_eq!((replica.removals_settled(), replica.unsettled_txns()), (now, vec![]));
    assert_eq!(count_sum(&engine, "copy").await.0, 150);
    // Statement 10 removes the second chunk and is aborted: the mark is cleared, the chunk stays.
    replica.prepare(1, removal_part(4, vec![seqs[1]], 10)).expect("prepare 4");
    let abort = vec![Resolution { txn: 10, commit: false, version: now + 1 }];
    replica.prepare(1, logged(5, 1, vec![], vec![], abort)).expect("prepare 5");
    assert_eq!(replica.commit_through(5).expect("commit"), 2);
    assert!(replica.version().iter().all(|c| c.meta.removed_by == 0) && replica.unsettled_txns().is_empty());
    assert_eq!(replica.removals_settled(), now, "an abort removes nothing");
    assert_eq!(count_sum(&engine, "copy").await.0, 150);
    drop(replica);
    engine.shutdown().await.expect("shutdown");
    drop(engine);

    let engine = open(dir.path()).await;
    let replica = Arc::clone(engine.hot_table("copy").expect("table").only_shard());
    assert_eq!(replica.removals_settled(), now, "the last settled removal is durable");
    assert_eq!(count_sum(&engine, "copy").await.0, 150);
    // A reader whose snapshot predates the settled removal would miss both the old rows and the new: refused.
    let copy = engine.hot_table("copy").expect("table");
    let read_at = crate::query::provider::ReadAt { meta: engine.meta().clone(), snapshot: Some(now - 1) };
    let shard = copy.only_shard().shard_id();
    let provider = crate::query::provider::HotTableProvider::for_shard(Arc::clone(&copy), shard, read_at);
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("old", Arc::new(provider)).expect("register");
    let refused = ctx.sql("SELECT count(*) FROM old").await.expect("plan").collect().await.expect_err("too old");
    assert!(refused.to_string().contains("retry"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_received_under_a_held_number_with_other_content_replaces_the_held_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, chunks) = source_and_copy(dir.path(), 250).await;
    assert_eq!(chunks.len(), 3, "100 rows a chunk");
    // Rows and sum of `v` of each chunk of the source, in order.
    let source = engine.hot_table("source").expect("table");
    let schema = source.schema();
    let per_chunk: Vec<(i64, i64)> = source
        .only_shard()
        .version()
        .iter()
        .map(|c| {
            let batch = source.only_shard().read_chunk(c, None, &schema).expect("read");
            let v = batch.column(1).as_primitive::<Int64Type>();
            (batch.num_rows() as i64, v.iter().flatten().sum())
        })
        .collect();
    let whole = (250, (1..=250).sum::<i64>());
    let seqs: Vec<u64> = chunks.iter().map(|c| c.0).collect();
    let copy = engine.hot_table("copy").expect("table");
    let replica = Arc::clone(copy.only_shard());
    replica.reset(chunks.clone(), &seqs, 0, 0, &[], 0).expect("filled");
    assert_eq!(count_sum(&engine, "copy").await, whole);
    let second = Arc::clone(&replica.version()[1]);
    // A catch-up sends the first number with the third chunk's content (the shard numbered its chunks anew after it
    // lost every in-sync copy) and the second as held: the first is replaced, the second kept as it is.
    let renumbered = (seqs[0], chunks[2].1.clone(), chunks[2].2.clone());
    replica.reset(vec![renumbered, chunks[1].clone()], &seqs, 0, 0, &[], 0).expect("caught up");
    let expected = (whole.0 - per_chunk[0].0 + per_chunk[2].0, whole.1 - per_chunk[0].1 + per_chunk[2].1);
    assert_eq!(count_sum(&engine, "copy").await, expected, "the first number holds the new content");
    assert!(Arc::ptr_eq(&second, &replica.version()[1]), "a chunk held as sent is not written again");
    // A replicated change does the same: the third number takes the first chunk's content.
    replica.apply(vec![(seqs[2], chunks[0].1.clone(), chunks[0].2.clone())], &[], 0).expect("applied");
    let swapped = (expected.0 - per_chunk[2].0 + per_chunk[0].0, expected.1 - per_chunk[2].1 + per_chunk[0].1);
    assert_eq!(count_sum(&engine, "copy").await, swapped);
    assert_eq!(replica.version().len(), 3);
    drop((second, replica, copy, source));
    engine.shutdown().await.expect("shutdown");
    drop(engine);
    let engine = open(dir.path()).await;
    assert_eq!(count_sum(&engine, "copy").await, swapped, "durable: the replaced data is not deleted by a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_holding_a_chunk_under_an_older_index_entry_reads_its_data_after_the_newer_one_is_removed() {
    use super::log::Resolution;
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, chunks) = source_and_copy(dir.path(), 250).await;
    let seqs: Vec<u64> = chunks.iter().map(|c| c.0).collect();
    let replica = Arc::clone(engine.hot_table("copy").expect("table").only_shard());
    replica.prepare(1, logged(1, 1, chunks.clone(), vec![], vec![])).expect("prepare 1");
    assert_eq!(replica.commit_through(1).expect("commit"), 1);
    // A reader holds the first chunk as it is now.
    let held = replica.version().iter().find(|c| c.seq == seqs[0]).cloned().expect("chunk");
    // Statement 9 marks it removed (the same chunk and data under a rewritten index entry), then settles as
    // committed: the marked object is retired and leaves the version.
    replica.prepare(1, removal_part(2, vec![seqs[0]], 9)).expect("prepare 2");
    assert_eq!(replica.commit_through(2).expect("commit"), 1);
    let now = engine.meta().read_local(|s| s.version());
    let commit = vec![Resolution { txn: 9, commit: true, version: now }];
    replica.prepare(1, logged(3, 1, vec![], vec![], commit)).expect("prepare 3");
    assert_eq!(replica.commit_through(3).expect("commit"), 1);
    assert!(replica.version().iter().all(|c| c.seq != seqs[0]), "settled: the chunk is gone");
    // Later commits carry the store's queued deletions: the data the reader holds is not among them.
    replica.prepare(1, removal_part(4, vec![seqs[1]], 10)).expect("prepare 4");
    assert_eq!(replica.commit_through(4).expect("commit"), 1);
    let schema = replica.schema();
    let rows = replica.read_chunk(&held, None, &schema).expect("the held chunk's data");
    assert_eq!(rows.num_rows() as u64, held.meta.rows);
    // Once the reader lets go, the next commit deletes it.
    let key = held.data_key();
    drop(held);
    let abort = vec![Resolution { txn: 10, commit: false, version: now + 1 }];
    replica.prepare(1, logged(5, 1, vec![], vec![], abort)).expect("prepare 5");
    assert_eq!(replica.commit_through(5).expect("commit"), 1);
    assert!(replica.tables.store.get(&key).expect("get").is_none(), "the retired chunk's data is deleted");
    drop(replica);
    engine.shutdown().await.expect("shutdown");
}
