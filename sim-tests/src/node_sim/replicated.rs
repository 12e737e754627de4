//! The replicated shard of the node workload: one table of one shard with a copy on three nodes, written through
//! the shard service on its primary (`ShardService.WriteShard`, routed as a node routes: by the shard's configuration
//! in a node's metadata) and read back from it (`ShardService.ScanShard`), under the workload's faults. Failover comes
//! from the metadata group when a node is marked down; the primary catches up every serving replica that is out of
//! sync on its own (`Engine::tend_shards`).
//!
//! While the faults run, a reader on each node queries the table through it (`SELECT id`, planned and routed as any
//! statement is) every few tens of milliseconds. Each answer must hold every write acknowledged before the query
//! began, every write whole or not at all, nothing refused and nothing never written, each id once: a node cut off
//! from the metadata leader must not answer from a shard configuration the cluster has left behind (a primary it no
//! longer is, a copy no longer in sync).
//!
//! Checks, once the faults are over and every copy is back in sync:
//! - the primary holds every acknowledged write exactly once, every write whole or not at all, and no id that was
//!   never written (a primary acknowledges only what every in-sync copy has durable, and a new primary comes from the
//!   in-sync set: no acknowledged write is lost by a failover, a kill or a lost disk of one node at a time);
//! - every in-sync copy holds the same committed chunks, under the same numbers, as the primary.
//!
//! Its rows stay hot (`hot_bytes_max = '0'`), so that the copies' chunks can be compared whole; the workload's
//! tables of three copies tier on their primaries.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use madsim::rand::{Rng, thread_rng};
use madsim::runtime::NodeHandle;
use madsim::time::{Instant, sleep};
use madsim_tonic::Code;
use quiver_meta::ShardRecord;
use quiver_proto::v1::shard_service_client::ShardServiceClient;
use quiver_proto::v1::{ScanShardRequest, WriteShardRequest};

use super::{Fate, Live, addr_of, decode, encode, fate_of, int64s, live_engines};

/// The table's name (the catalog check knows it).
pub(super) const TABLE: &str = "replicated";

/// Its CREATE TABLE.
pub(super) fn create_sql() -> String {
    format!(
        "CREATE TABLE {TABLE} (id BIGINT NOT NULL, client BIGINT NOT NULL) WITH (shards = 1, replicas = 3, \
         hot_bytes_max = '0')"
    )
}

/// One write as the writer saw it: ids `first..first + rows`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Write {
    first: i64,
    rows: i64,
    fate: Fate,
    /// The primary and epoch it was sent to, and when it was answered (since the run began).
    sent_to: (u64, u64),
    answered: Duration,
}

/// One answer of the reader's query: the ids node `node` returned for a query sent at `invoked` (since the run began).
#[derive(Debug, Clone)]
pub(super) struct Read {
    node: u64,
    invoked: Duration,
    ids: Vec<i64>,
}

/// The shard's configuration as a live node's metadata has it.
fn config(live: &Live) -> Option<ShardRecord> {
    live_engines(live).iter().find_map(|e| {
        let table = e.hot_table(TABLE)?.def().id;
        e.meta().read_local(|s| s.table_shards(table).next().cloned())
    })
}

/// Writes ids `first..first + rows` to the shard's primary; returns the rows written.
async fn write(live: &Live, first: i64, rows: i64, sent_to: &mut (u64, u64)) -> Result<u64, Code> {
    let Some(shard) = config(live) else { return Err(Code::Unavailable) };
    *sent_to = (shard.primary, shard.epoch);
    let request = WriteShardRequest {
        table_id: shard.table_id.0,
        shard_id: shard.shard_id.0,
        epoch: shard.epoch,
        arrow_ipc: encode(first, rows, -2),
        txn: 0,
    };
    let attempt = async {
        let mut client = ShardServiceClient::connect(format!("http://{}", addr_of(shard.primary)))
            .await
            .map_err(|_| Code::Unavailable)?;
        Ok(client.write_shard(request).await.map_err(|s| s.code())?.into_inner().rows)
    };
    madsim::time::timeout(Duration::from_secs(5), attempt).await.unwrap_or(Err(Code::DeadlineExceeded))
}

/// The writer: until `deadline`, batches of 1 to 20 rows with ids from 9·10⁹ on, with quiet spells of 1–5 s now and
/// then; `started` is when the run began.
pub(super) async fn writer(live: Live, started: Instant, deadline: Instant) -> Vec<Write> {
    let mut writes = Vec::new();
    let mut next = 9_000_000_000_i64;
    while Instant::now() < deadline {
        let rows = thread_rng().gen_range(1..=20);
        let mut sent_to = (0, 0);
        let fate = match write(&live, next, rows, &mut sent_to).await {
            Ok(n) if n == rows as u64 => Fate::Acknowledged,
            Ok(n) => panic!("a write of {rows} rows to the replicated shard reported {n}"),
            Err(code) => fate_of(code),
        };
        writes.push(Write { first: next, rows, fate, sent_to, answered: started.elapsed() });
        next += rows;
        // Now and then a quiet spell: a primary cut off while its shard is quiet has nothing pending to settle, and
        // could answer from its own copy after the others failed the shard over.
        let pause = if thread_rng().gen_ratio(1, 25) { 1_000..5_000 } else { 10..60 };
        sleep(Duration::from_millis(thread_rng().gen_range(pause))).await;
    }
    writes
}

/// A reader: until `deadline`, `SELECT id` of the table through `node`; the answers it got.
pub(super) async fn reader(node: u64, started: Instant, deadline: Instant) -> Vec<Read> {
    let mut reads = Vec::new();
    while Instant::now() < deadline {
        let invoked = started.elapsed();
        if let Ok(batches) = super::execute(node, format!("SELECT id FROM {TABLE}")).await {
            reads.push(Read { node, invoked, ids: int64s(&batches, 0).into_iter().flatten().collect() });
        }
        sleep(Duration::from_millis(thread_rng().gen_range(10..60))).await;
    }
    reads
}

/// Checks each of the reader's answers against the writes: every write acknowledged before the query was sent is
/// there, every write whole or absent, nothing refused, nothing never written, each id once.
pub(super) fn check_reads(writes: &[Write], reads: &[Read]) -> Result<String, String> {
    for read in reads {
        let Read { node, invoked, ids } = read;
        let mut seen = BTreeSet::new();
        if let Some(dup) = ids.iter().find(|id| !seen.insert(**id)) {
            return Err(format!("replicated shard: id {dup} appears twice in a query on node {node} at {invoked:?}"));
        }
        let mut known = 0;
        for w in writes {
            let present = (w.first..w.first + w.rows).filter(|id| seen.contains(id)).count() as i64;
            known += present as usize;
            if present != 0 && present != w.rows {
                return Err(format!(
                    "replicated shard: {present} of the {} rows of write {} are in a query on node {node} at \
                     {invoked:?}",
                    w.rows, w.first
                ));
            }
            if w.fate == Fate::Acknowledged && w.answered < *invoked && present == 0 {
                return Err(format!(
                    "replicated shard: write {} ({} rows, primary {} at epoch {}), acknowledged at {:?}, is missing \
                     from a query on node {node} at {invoked:?} (a stale read)",
                    w.first, w.rows, w.sent_to.0, w.sent_to.1, w.answered
                ));
            }
            if w.fate == Fate::Failed && present > 0 {
                return Err(format!("replicated shard: write {}, refused, is in a query on node {node}", w.first));
            }
        }
        if known != seen.len() {
            return Err(format!(
                "replicated shard: a query on node {node} at {invoked:?} returned {} ids, of which {known} were written",
                seen.len()
            ));
        }
    }
    Ok(format!("{} reads", reads.len()))
}

/// The ids of the shard's rows on its primary, read from `client`'s host.
async fn scan(client: &NodeHandle, shard: &ShardRecord) -> Result<Vec<i64>, String> {
    let request = ScanShardRequest {
        table_id: shard.table_id.0,
        shard_id: shard.shard_id.0,
        epoch: shard.epoch,
        projection: vec![0],
        all_columns: false,
        limit: None,
        filter: None,
        snapshot: 0,
    };
    let primary = shard.primary;
    client
        .spawn(async move {
            let mut client =
                ShardServiceClient::connect(format!("http://{}", addr_of(primary))).await.map_err(|e| e.to_string())?;
            let mut stream = client.scan_shard(request).await.map_err(|s| s.to_string())?.into_inner();
            let mut ids = Vec::new();
            while let Some(reply) = stream.message().await.map_err(|s| s.to_string())? {
                ids.extend(int64s(&decode(&reply.arrow_ipc)?, 0).into_iter().flatten());
            }
            Ok::<_, String>(ids)
        })
        .await
        .map_err(|e| format!("the scan did not run: {e}"))?
}

/// Waits (up to `bound`) until every replica of the shard is in sync and its primary runs; then checks the writes
/// against the primary's rows and every copy's committed chunks against the primary's. Returns a summary.
pub(super) async fn check(
    live: &Live,
    client: &NodeHandle,
    writes: &[Write],
    bound: Duration,
) -> Result<String, String> {
    let started = Instant::now();
    // The primary's rows (it settles what it holds prepared before it answers), once every copy is in sync; a scan
    // that meets a configuration change is asked again.
    let (shard, scanned) = loop {
        let engines: BTreeSet<u64> = live_engines(live).iter().map(|e| e.node_id()).collect();
        let last = match config(live) {
            Some(s) if s.in_sync.len() == s.replicas.len() && engines.contains(&s.primary) => {
                match scan(client, &s).await {
                    Ok(ids) => break (s, ids),
                    Err(e) => format!("{s:?}: {e}"),
                }
            }
            other => format!("{other:?}"),
        };
        if started.elapsed() > bound {
            return Err(format!("the replicated shard is not back in sync and readable within {bound:?}: {last}"));
        }
        sleep(Duration::from_millis(100)).await;
    };
    let mut seen = BTreeSet::new();
    for id in &scanned {
        if !seen.insert(*id) {
            return Err(format!("replicated shard: id {id} appears twice"));
        }
    }
    let mut written = 0;
    for w in writes {
        let present = (w.first..w.first + w.rows).filter(|id| seen.contains(id)).count() as i64;
        if present != 0 && present != w.rows {
            return Err(format!("replicated shard: {present} of the {} rows of write {} are there", w.rows, w.first));
        }
        if w.fate == Fate::Acknowledged && present == 0 {
            return Err(format!(
                "replicated shard: acknowledged write {} ({} rows) is lost (primary {} at epoch {}, answered at {:?})",
                w.first, w.rows, w.sent_to.0, w.sent_to.1, w.answered
            ));
        }
        if w.fate == Fate::Failed && present > 0 {
            return Err(format!("replicated shard: write {}, refused, is there", w.first));
        }
        written += present;
    }
    if written as usize != seen.len() {
        return Err(format!("replicated shard: {} ids, of which {written} were written", seen.len()));
    }
    // Every copy commits what the primary committed once its commit point reaches it.
    let engines: BTreeMap<u64, _> = live_engines(live).into_iter().map(|e| (e.node_id(), e)).collect();
    let primary_engine = &engines[&shard.primary];
    let (expected, _) = primary_engine
        .committed_chunks(shard.table_id, shard.shard_id)
        .await
        .map_err(|e| format!("the primary's committed chunks: {}", e.report()))?;
    for id in shard.in_sync.iter().filter(|n| **n != shard.primary) {
        let Some(engine) = engines.get(id) else { return Err(format!("in-sync node {id} does not run")) };
        let mut tries = 0;
        loop {
            let (held, _) = engine
                .committed_chunks(shard.table_id, shard.shard_id)
                .await
                .map_err(|e| format!("node {id}'s committed chunks: {}", e.report()))?;
            if held == expected {
                break;
            }
            tries += 1;
            if tries > 50 {
                let seqs = |c: &[(u64, Vec<u8>, Vec<u8>)]| c.iter().map(|c| c.0).collect::<BTreeSet<_>>();
                let (mine, theirs) = (seqs(&held), seqs(&expected));
                let primary_has: BTreeMap<u64, &(u64, Vec<u8>, Vec<u8>)> = expected.iter().map(|c| (c.0, c)).collect();
                let differ: Vec<u64> =
                    held.iter().filter(|c| primary_has.get(&c.0).is_some_and(|p| *p != *c)).map(|c| c.0).collect();
                let here = engine.replica_status(shard.table_id, shard.shard_id, shard.epoch, shard.primary).await;
                let there =
                    primary_engine.replica_status(shard.table_id, shard.shard_id, shard.epoch, shard.primary).await;
                return Err(format!(
                    "replicated shard: in-sync node {id} holds chunks {:?} the primary {} does not, lacks {:?}, and \
                     holds chunks {differ:?} other than the primary's of the same numbers; its log {:?}, the \
                     primary's {:?}",
                    mine.difference(&theirs).collect::<Vec<_>>(),
                    shard.primary,
                    theirs.difference(&mine).collect::<Vec<_>>(),
                    here.map(|s| (s.committed_lsn, s.log_end)).map_err(|e| e.report()),
                    there.map(|s| (s.committed_lsn, s.log_end)).map_err(|e| e.report()),
                ));
            }
            sleep(Duration::from_millis(100)).await;
        }
    }
    let acknowledged = writes.iter().filter(|w| w.fate == Fate::Acknowledged).count();
    Ok(format!(
        "replicated shard: {} writes ({acknowledged} acknowledged), {} rows, epoch {}, {} copies in sync",
        writes.len(),
        seen.len(),
        shard.epoch,
        shard.in_sync.len()
    ))
}
