//! Routing of a statement's rows and scans to the shards' primaries (docs/rfcs/0001-cluster-data-path.md, "The
//! switch"): any node takes a statement, and every shard's rows are written and read where its primary is.
//!
//! ```text
//!  insert ─▶ conform, split by slot ─┬▶ shard whose only copy is here ─▶ direct: one durable batch for all such
//!                                    │                                    shards (a single node's every shard)
//!                                    └▶ any other shard ─▶ buffered ─▶ a change of the shard's log, on its primary:
//!                                         Engine::write_shard here, ShardService.WriteShard on another node
//!  scan ─▶ per shard: led here ─▶ this node's replica (prepared changes settled first)
//!                     otherwise ─▶ RemoteShardScanExec on the primary, at the shard's epoch
//! ```
//!
//! A database that is the only member of its group writes and reads every shard here, as it always did: one batch per
//! statement. A shard with other copies always goes through its log, even while they are all out of sync (its primary
//! then commits alone, under the shard's DML lock, which a catch-up holds while it admits a copy). In a cluster, rows for another copy are buffered per shard and sent in changes of at most
//! [`CHANGE_BYTES`]; until multi-shard transactions exist, a statement whose rows span several shards is atomic per
//! change only, and a failure after one of its changes took effect is reported as [`Error::OutcomeUnknown`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::StreamExt;
use quiver_meta::{ShardId, ShardRecord, TableId};
use quiver_proto::v1::shard_service_client::ShardServiceClient;
use quiver_proto::v1::{ChangeShardRequest, ResolveTransactionRequest, WriteShardRequest};
use tonic::Code;
use tonic::transport::Channel;

use super::Engine;
use crate::error::{Error, Result};
use crate::query::dml::{self, RowChange};
use crate::table::HotTable;

/// The most bytes of rows (in Arrow memory) buffered for one shard before they are sent to its primary as a change.
pub(crate) const CHANGE_BYTES: usize = 4 << 20;

/// How often a part is sent again after its shard's primary refused it (nothing was written): the configuration moved.
const ROUTE_ATTEMPTS: usize = 4;

/// Where a shard's part of a statement goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// The shard's only copy is here, it leads it at `epoch`, and one copy is all the table needs in sync: written
    /// here, in the statement's one batch.
    Direct { epoch: u64 },
    /// A change of the shard's log on its primary (this node or another).
    Primary,
}

impl Route {
    pub(crate) fn is_direct(self) -> bool {
        matches!(self, Route::Direct { .. })
    }
}

impl Engine {
    /// Where each shard of `table` is written from this node now, in the table's shard order.
    pub(super) fn write_routes(&self, table: &HotTable) -> Vec<Route> {
        let me = self.node_id;
        // A sole copy takes writes directly only when the table asks for no more in-sync copies than one, or the
        // cluster has no other member to hold them. A table of three copies placed on one node while the others were
        // down or draining goes through its primary, which refuses writes below `min_in_sync` until re-replication
        // has added copies: acknowledged on a single disk, its rows would be lost with it (node seed 7713).
        let sole_copy_suffices = self.min_in_sync(table.def()) <= 1 || !self.is_clustered();
        self.meta.read_local(|s| {
            table
                .shards()
                .iter()
                .map(|replica| match s.shard(replica.shard_id()) {
                    // A shard with other copies goes through its log even while they are all out of sync: a
                    // catch-up admits a backup under the shard's DML lock, which `write_shard` takes.
                    Some(r)
                        if sole_copy_suffices
                            && r.primary == me
                            && r.replicas.iter().all(|n| *n == me)
                            && r.in_sync.iter().all(|n| *n == me)
                            && replica.log_end() == replica.committed_lsn() =>
                    {
                        Route::Direct { epoch: r.epoch }
                    }
                    _ => Route::Primary,
                })
                .collect()
        })
    }

    /// Inserts every batch of `stream` into `table`, each shard's rows written on its primary (see the module docs);
    /// returns the rows inserted.
    ///
    /// # Errors
    ///
    /// As [`HotTable::append_stream`]; [`Error::ShardUnavailable`] when a shard's primary refused its rows (nothing of
    /// the statement was written); [`Error::OutcomeUnknown`] when a failure came after part of the statement took
    /// effect.
    pub(crate) async fn insert_routed<S, E>(&self, table: &Arc<HotTable>, stream: S) -> Result<u64>
    where
        S: futures::Stream<Item = std::result::Result<RecordBatch, E>> + Unpin + Send,
        Error: From<E>,
    {
        let clustered = self.is_clustered();
        if clustered {
            self.check_serving(table).await?;
        }
        self.raise_floors(table);
        // In a cluster, a statement that may span shards is one transaction: its parts go through the shards'
        // primaries, tagged with its id, and become visible together once the metadata group records its commit
        // (`engine::transactions`).
        let spanning = clustered && table.shards().len() > 1;
        let (routes, txn) = if spanning {
            (vec![Route::Primary; table.shards().len()], Self::new_transaction_id()?)
        } else {
            (self.write_routes(table), 0)
        };
        let whole = table.pick_whole();
        if routes.iter().all(|r| r.is_direct()) {
            let rows = table.append_stream_into(whole, stream).await?;
            if clustered {
                self.confirm_direct(table, &routes).await?;
            }
            return Ok(rows);
        }
        // The direct shards' rows stream into one appender, beside the parts sent to primaries.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(2);
        let direct_rows = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        let direct = {
            let table = Arc::clone(table);
            async move { table.append_stream_into::<_, Error>(whole, Box::pin(direct_rows)).await }
        };
        let tagged = std::sync::Mutex::new(BTreeSet::new());
        let routed = self.route_parts(table, &routes, whole, stream, tx, txn, &tagged);
        let (direct, routed) = futures::join!(direct, routed);
        let tagged = tagged.into_inner().expect("tagged lock poisoned");
        if !tagged.is_empty() {
            return self.finish_transaction(table, txn, &tagged, routed.map(|(rows, _)| rows)).await;
        }
        let (routed_rows, written) = routed?;
        let direct_rows = match direct {
            Ok(rows) => rows,
            Err(e) if written => return Err(partial(e)),
            Err(e) => return Err(e),
        };
        if direct_rows > 0 {
            self.confirm_direct(table, &routes).await.map_err(|e| if written { partial(e) } else { e })?;
        }
        Ok(direct_rows + routed_rows)
    }

    /// Pulls `stream`, sending direct shards' rows into `direct` and every other shard's to its primary; returns the
    /// rows sent to primaries and whether any part took effect. On failure, fails `direct` too (its rows roll back).
    ///
    /// With `txn` other than 0, the parts are written as parts of that statement spanning shards, and the position
    /// of every shard sent one (whatever came of it) is added to `tagged`; a statement whose rows all belong to one
    /// shard, sent at once, is written plainly (it needs no decision).
    #[allow(clippy::too_many_arguments)]
    async fn route_parts<S, E>(
        &self,
        table: &Arc<HotTable>,
        routes: &[Route],
        whole: usize,
        mut stream: S,
        direct: tokio::sync::mpsc::Sender<Result<RecordBatch>>,
        txn: u64,
        tagged: &std::sync::Mutex<BTreeSet<usize>>,
    ) -> std::result::Result<(u64, bool), Error>
    where
        S: futures::Stream<Item = std::result::Result<RecordBatch, E>> + Unpin + Send,
        Error: From<E>,
    {
        let mut pending: BTreeMap<usize, (Vec<RecordBatch>, usize)> = BTreeMap::new();
        let mut rows = 0;
        let mut written = false;
        let outcome: Result<()> = async {
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                if batch.num_rows() == 0 {
                    continue;
                }
                let t = Arc::clone(table);
                let parts =
                    crate::blocking::run("split rows by shard", move || t.split_by_shard(&batch, whole)).await??;
                for (i, part) in parts {
                    if routes[i].is_direct() {
                        if direct.send(Ok(part)).await.is_err() {
                            return Ok(()); // The appender failed; its error is the statement's.
                        }
                        continue;
                    }
                    let (batches, bytes) = pending.entry(i).or_default();
                    *bytes += part.get_array_memory_size();
                    batches.push(part);
                    if *bytes >= CHANGE_BYTES {
                        let (batches, _) = pending.remove(&i).unwrap_or_default();
                        if txn != 0 {
                            tagged.lock().expect("tagged lock poisoned").insert(i);
                        }
                        // A statement spanning shards fails whole: no part it wrote is ever seen.
                        rows += self
                            .write_part(table, i, batches, txn)
                            .await
                            .map_err(|e| part_error(e, written && txn == 0))?;
                        written = true;
                    }
                }
            }
            // The rest, every shard's part at once; one shard's rows alone need no transaction.
            let txn =
                if pending.len() == 1 && tagged.lock().expect("tagged lock poisoned").is_empty() { 0 } else { txn };
            if txn != 0 {
                tagged.lock().expect("tagged lock poisoned").extend(pending.keys().copied());
            }
            let sent = futures::future::join_all(
                pending.into_iter().map(|(i, (batches, _))| self.write_part(table, i, batches, txn)),
            )
            .await;
            let mut failure = None;
            for result in sent {
                match result {
                    Ok(n) => {
                        rows += n;
                        written = true;
                    }
                    Err(e) => failure = failure.or(Some(e)),
                }
            }
            match failure {
                Some(e) => Err(part_error(e, written && txn == 0)),
                None => Ok(()),
            }
        }
        .await;
        match outcome {
            Ok(()) => Ok((rows, written)),
            Err(e) => {
                let _ = direct.send(Err(Error::Internal("the statement failed in another shard".into()))).await;
                Err(e)
            }
        }
    }

    /// Writes one shard's part (the shard at position `i` of `table`) on its primary, following the configuration
    /// when it moved, as a part of statement `txn` unless 0; returns the rows written.
    async fn write_part(&self, table: &Arc<HotTable>, i: usize, batches: Vec<RecordBatch>, txn: u64) -> Result<u64> {
        let schema = table.schema();
        self.on_primary(table, i, |record| {
            let (batches, schema) = (batches.clone(), Arc::clone(&schema));
            async move {
                if record.primary == self.node_id {
                    self.write_shard(record.table_id, record.shard_id, record.epoch, batches, txn).await
                } else {
                    self.write_remote(&record, &schema, &batches, txn).await
                }
            }
        })
        .await
    }

    /// Runs `call` with the configuration of the shard at position `i` of `table` as this node knows it; when the
    /// shard's primary refused it (nothing was done: the configuration moved, a failover, a new primary's first
    /// change), learns the configuration again and calls again, a few times.
    async fn on_primary<T, F, Fut>(&self, table: &HotTable, i: usize, mut call: F) -> Result<T>
    where
        F: FnMut(ShardRecord) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let shard = table.shards()[i].shard_id();
        let id = table.def().id;
        let mut last = None;
        for attempt in 0..ROUTE_ATTEMPTS {
            if attempt > 0 {
                self.catch_up().await?;
            }
            match call(self.shard_record_of(id, shard)?).await {
                Err(e @ Error::ShardUnavailable { .. }) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| Error::Internal("no attempt made".into())))
    }

    /// Ends statement `txn` spanning shards, whose parts went to the shards at the positions in `tagged`, with
    /// `written` (the rows, or why the statement failed): records its commit, or its abort, in the metadata group,
    /// then settles each part on its shard's primary and forgets the decision. The statement is acknowledged only
    /// once its commit is recorded; a statement whose abort is recorded failed as a whole, with nothing written.
    async fn finish_transaction(
        &self,
        table: &Arc<HotTable>,
        txn: u64,
        tagged: &BTreeSet<usize>,
        written: Result<u64>,
    ) -> Result<u64> {
        let decision = self.decide(txn, written.is_ok()).await;
        let resolution = match decision {
            Ok(r) => r,
            Err(e) => {
                // Undecided: the parts' primaries decide once the hold runs out, and the first decision stands.
                return Err(Error::OutcomeUnknown {
                    shard: 0,
                    detail: format!(
                        "the statement spans shards, and its outcome could not be recorded: {}{}",
                        e.report(),
                        match &written {
                            Ok(_) => String::new(),
                            Err(failed) => format!(" (it had failed: {})", failed.report()),
                        }
                    ),
                });
            }
        };
        if resolution.commit {
            self.metrics.transactions_committed.inc();
        } else {
            self.metrics.transactions_aborted.inc();
        }
        // The outcome stands: the client need not wait for the parts to be settled.
        match self.me.get().and_then(std::sync::Weak::upgrade) {
            Some(engine) => {
                let (table, tagged) = (Arc::clone(table), tagged.clone());
                let commit = resolution.commit;
                tokio::spawn(async move { engine.settle_parts(&table, &tagged, txn, commit).await });
            }
            None => self.settle_parts(table, tagged, txn, resolution.commit).await,
        }
        match (written, resolution.commit) {
            (Ok(rows), true) => Ok(rows),
            (Ok(_), false) => Err(Error::ShardUnavailable {
                shard: 0,
                detail: "a shard's primary took the statement for abandoned and aborted it; it took no effect".into(),
            }),
            // The abort is recorded: no part is visible, or ever will be.
            (Err(Error::OutcomeUnknown { shard, detail }), false) => Err(Error::ShardUnavailable {
                shard,
                detail: format!("{detail}; the statement was rolled back and took no effect"),
            }),
            (Err(e), false) => Err(e),
            (Err(e), true) => Err(Error::Internal(format!(
                "statement {txn:x} failed ({}) and yet its commit is recorded",
                e.report()
            ))),
        }
    }

    /// Settles every part of decided statement `txn` (in the shards at the positions in `tagged` of `table`), then
    /// forgets its decision if it committed; a part left unsettled is settled later by its shard's primary. An abort
    /// is kept (until it expires, a day later): a part whose answer was lost may still land, and must find it (a
    /// manifest proposed for a statement decided is refused; one of a statement forgotten would wait for the hold).
    async fn settle_parts(&self, table: &Arc<HotTable>, tagged: &BTreeSet<usize>, txn: u64, commit: bool) {
        let settled = futures::future::join_all(tagged.iter().map(|i| self.settle_part(table, *i, txn))).await;
        let mut all = true;
        for result in settled {
            if let Err(e) = result {
                tracing::debug!(txn, error = %e.report(), "settling a part failed; its primary settles it later");
                all = false;
            }
        }
        if all && commit {
            self.forget(txn).await;
        }
    }

    /// Settles the part of statement `txn` in the shard at position `i` of `table`, on the shard's primary.
    async fn settle_part(&self, table: &Arc<HotTable>, i: usize, txn: u64) -> Result<u64> {
        self.on_primary(table, i, |record| async move {
            if record.primary == self.node_id {
                return self.resolve_part(record.table_id, record.shard_id, record.epoch, txn).await;
            }
            let request = ResolveTransactionRequest {
                table_id: record.table_id.0,
                shard_id: record.shard_id.0,
                epoch: record.epoch,
                txn,
            };
            self.call_primary(&record, |mut client| async move { client.resolve_transaction(request).await })
                .await
                .map(|r| r.chunks)
        })
        .await
    }

    /// The configuration of a shard of table `table` as this node knows it.
    pub(crate) fn shard_record_of(&self, table: TableId, shard: ShardId) -> Result<ShardRecord> {
        match self.meta.read_local(|s| s.shard(shard).cloned()) {
            Some(r) if r.table_id == table => Ok(r),
            _ => Err(Error::ShardUnavailable { shard: shard.0, detail: "its table is gone".into() }),
        }
    }

    /// Sends a shard's rows to its primary on another node (`ShardService.WriteShard`); returns the rows written.
    async fn write_remote(
        &self,
        record: &ShardRecord,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        txn: u64,
    ) -> Result<u64> {
        let arrow_ipc = crate::server::internal::encode(schema, batches)?;
        let (table_id, shard_id, epoch) = (record.table_id.0, record.shard_id.0, record.epoch);
        let request = WriteShardRequest { table_id, shard_id, epoch, arrow_ipc, txn };
        self.call_primary(record, |mut client| async move { client.write_shard(request).await }).await.map(|r| r.rows)
    }

    /// Makes one call to the primary of the shard configuration `record`, on another node. It may take up to three
    /// replication timeouts: the primary waits for its backups, and may take one out of the in-sync set.
    async fn call_primary<T, F, Fut>(&self, record: &ShardRecord, call: F) -> Result<T>
    where
        F: FnOnce(ShardServiceClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_primary_within(record, self.replication.timeout * 3, call).await
    }

    /// [`Engine::call_primary`] for a call that may take up to `deadline`. A primary that is gone or cut off fails
    /// it sooner: the connection's keepalive gives up on a peer silent for two replication timeouts.
    async fn call_primary_within<T, F, Fut>(
        &self,
        record: &ShardRecord,
        deadline: std::time::Duration,
        call: F,
    ) -> Result<T>
    where
        F: FnOnce(ShardServiceClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let shard = record.shard_id;
        let unavailable = |detail: String| Error::ShardUnavailable { shard: shard.0, detail };
        let addr = self
            .meta
            .read_local(|s| s.node(record.primary).map(|n| n.grpc_addr.clone()))
            .ok_or_else(|| unavailable(format!("its primary, node {}, is not registered", record.primary)))?;
        let timeout = self.replication.timeout;
        let client = self.peers.client(&addr, timeout).map_err(&unavailable)?;
        match tokio::time::timeout(deadline, call(client)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(error_from_status(record.primary, shard, &status)),
            Err(_) => Err(Error::OutcomeUnknown {
                shard: shard.0,
                detail: format!("its primary, node {}, did not answer within {deadline:?}", record.primary),
            }),
        }
    }

    /// Confirms, after a direct write in a cluster, that this node still led every direct shard as its only in-sync
    /// copy (a linearizable read): no backup fences a sole copy.
    async fn confirm_direct(&self, table: &HotTable, routes: &[Route]) -> Result<()> {
        if self.injected(super::InjectedBugKind::DeposedPrimaryAccepts) {
            return Ok(());
        }
        let me = self.node_id;
        // The epochs the statement was routed at: any move since (a backup admitted, a failover) is an unknown
        // outcome.
        let shards: Vec<(ShardId, u64)> = table
            .shards()
            .iter()
            .zip(routes)
            .filter_map(|(replica, route)| match route {
                Route::Direct { epoch } => Some((replica.shard_id(), *epoch)),
                Route::Primary => None,
            })
            .collect();
        let moved = self
            .meta
            .read_state(|s| {
                shards
                    .iter()
                    .find(|(id, epoch)| s.shard(*id).is_none_or(|r| r.epoch != *epoch || r.primary != me))
                    .copied()
            })
            .await;
        match moved {
            Ok(None) => Ok(()),
            Ok(Some((shard, epoch))) => Err(Error::OutcomeUnknown {
                shard: shard.0,
                detail: format!(
                    "the rows were written here as the shard's only in-sync copy at epoch {epoch}, and the shard moved \
                     on meanwhile"
                ),
            }),
            Err(e) => Err(Error::OutcomeUnknown {
                shard: shards.first().map_or(0, |(s, _)| s.0),
                detail: format!(
                    "the rows were written here, and the shard's configuration could not be confirmed: {e}"
                ),
            }),
        }
    }
}

/// A failure after part of a statement took effect: the client must look before repeating it.
fn partial(e: Error) -> Error {
    match e {
        e @ Error::OutcomeUnknown { .. } => e,
        other => Error::OutcomeUnknown {
            shard: 0,
            detail: format!("part of the statement was written before it failed: {}", other.report()),
        },
    }
}

fn part_error(e: Error, written: bool) -> Error {
    if written { partial(e) } else { e }
}

/// The error a remote node's status stands for, keeping what the client must do about it. Only a shard's refusal
/// (`x-quiver-refused`: nothing was done) becomes [`Error::ShardUnavailable`], which the router may send again; any
/// other unavailability (the connection failed, the metadata group did not answer in the middle of the request) is an
/// unknown outcome, since the request may have taken effect.
pub(crate) fn error_from_status(node: u64, shard: ShardId, status: &tonic::Status) -> Error {
    use crate::server::status::{REFUSED_KEY, SQLSTATE_KEY};
    let message = format!("node {node}: {}", status.message());
    let from_engine = status.metadata().get(SQLSTATE_KEY).is_some();
    let refused = status.metadata().get(REFUSED_KEY).is_some();
    match status.code() {
        _ if !from_engine => Error::OutcomeUnknown { shard: shard.0, detail: message },
        Code::Unavailable if !refused => Error::OutcomeUnknown { shard: shard.0, detail: message },
        Code::Unknown => Error::OutcomeUnknown { shard: shard.0, detail: message },
        Code::InvalidArgument => Error::Plan { message },
        Code::FailedPrecondition | Code::ResourceExhausted => Error::Execution { message },
        Code::Unimplemented => Error::Unsupported { what: message },
        Code::Internal | Code::DataLoss => Error::Internal(message),
        _ => Error::ShardUnavailable { shard: shard.0, detail: message },
    }
}

/// Where a scan reads one shard.
#[derive(Debug, Clone)]
pub(crate) enum ShardRead {
    /// This node's replica: this node leads the shard (or is not part of a cluster).
    Local,
    /// The primary on another node (`node`, at internal address `addr`), at the shard's epoch.
    Remote {
        epoch: u64,
        #[cfg_attr(madsim, allow(dead_code))]
        node: u64,
        addr: String,
    },
}

impl Engine {
    /// Where a scan from this node reads each shard of `table`, in the table's shard order. A shard led here has its
    /// prepared changes settled first, so that the scan sees every change this node may have acknowledged.
    ///
    /// # Errors
    ///
    /// [`Error::ShardUnavailable`] when a shard's primary is not registered, or a shard led here could not settle.
    pub(crate) async fn shard_reads(&self, table: &HotTable) -> Result<Vec<ShardRead>> {
        if !self.is_clustered() {
            return Ok(vec![ShardRead::Local; table.shards().len()]);
        }
        self.check_serving(table).await?;
        let mut reads = Vec::with_capacity(table.shards().len());
        for replica in table.shards() {
            let record = self.shard_record_of(table.def().id, replica.shard_id())?;
            if record.primary == self.node_id {
                if replica.log_end() > replica.committed_lsn() {
                    let _serialized = replica.dml_lock.lock().await;
                    self.settle(replica).await.map_err(|e| Error::ShardUnavailable {
                        shard: record.shard_id.0,
                        detail: format!("its prepared changes could not be settled: {}", e.report()),
                    })?;
                }
                reads.push(ShardRead::Local);
                continue;
            }
            let addr =
                self.meta.read_local(|s| s.node(record.primary).map(|n| n.grpc_addr.clone())).ok_or_else(|| {
                    Error::ShardUnavailable {
                        shard: record.shard_id.0,
                        detail: format!("its primary, node {}, is not registered", record.primary),
                    }
                })?;
            reads.push(ShardRead::Remote { epoch: record.epoch, node: record.primary, addr });
        }
        Ok(reads)
    }

    /// Refuses a statement on a node of a cluster that has not joined it yet, and holds the first statements after a
    /// start until its metadata replica has caught up with the group ([`Engine::confirm_meta`]): it may still replay
    /// configurations in which it led shards (a node back with an empty disk, before the cluster took it out of the
    /// in-sync sets; a node restarted after its shards failed over), and its replicas would answer for them (node
    /// seed 8041 with `--shards 2`: an empty node read its empty replica of a shard it had led).
    async fn check_serving(&self, table: &HotTable) -> Result<()> {
        if !self.shards_served.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::ShardUnavailable {
                shard: table.shards().first().map_or(0, |r| r.shard_id().0),
                detail: "this node is still joining its cluster".into(),
            });
        }
        self.confirm_meta().await
    }

    /// Numbers the next chunks of every shard of `table` above what the shard's cold tier covers
    /// (`ShardRecord::tiered_through`): a shard that lost every copy starts again empty, and a chunk numbered below
    /// a tiering mark would be taken for one already in the cold files.
    pub(super) fn raise_floors(&self, table: &HotTable) {
        self.meta.read_local(|s| {
            for replica in table.shards() {
                if let Some(record) = s.shard(replica.shard_id()) {
                    replica.raise_floor(record.tiered_through + 1);
                }
            }
        });
    }

    /// Where a scan finds a shard that moved since it was planned.
    pub(crate) fn locator(&self) -> Arc<dyn crate::query::remote::ShardLocator> {
        Arc::new(Locator(self.me.get().cloned().unwrap_or_default()))
    }

    /// How long a scan waits for a shard's primary on another node to answer.
    pub(crate) fn remote_timeout(&self) -> std::time::Duration {
        self.replication.timeout
    }
}

impl Engine {
    /// [`Engine::change_rows`](super::Engine) where some shard of `table` is replicated or led elsewhere, or the
    /// statement spans shards that may have cold files: each shard changes on its primary
    /// (`ShardService.ChangeShard` on another node), as one change of its log or, for a shard whose cold files it
    /// rewrites, as a proposed manifest; a statement over several shards is one transaction, its parts visible
    /// together once its commit is recorded, or discarded together.
    pub(super) async fn change_rows_routed(
        &self,
        state: &dyn datafusion::catalog::Session,
        table: &Arc<HotTable>,
        change: &RowChange,
    ) -> Result<u64> {
        let compiled = dml::compile(state, change)?;
        let mut statement: Option<String> = None;
        // A statement over several shards is one transaction, as an insert is (`engine::transactions`): each shard's
        // part is written tagged with its id, the rows it replaces marked, and all become visible together once the
        // metadata group records its commit.
        let txn = if table.shards().len() > 1 { Self::new_transaction_id()? } else { 0 };
        let _coordinating = (txn != 0).then(|| self.coordinate(txn));
        let mut affected = 0;
        // Positions of the shards changed as parts of `txn`.
        let mut tagged: BTreeSet<usize> = BTreeSet::new();
        let mut failed = None;
        for (i, replica) in table.shards().iter().enumerate() {
            let shard = replica.shard_id();
            let mut last = None;
            let mut result = None;
            for attempt in 0..ROUTE_ATTEMPTS {
                if attempt > 0 {
                    self.catch_up().await?;
                }
                let record = self.shard_record_of(table.def().id, shard)?;
                let outcome = if record.primary == self.node_id {
                    self.change_led_shard(state, replica, &compiled, record.epoch, txn).await
                } else {
                    let sql = match &statement {
                        Some(sql) => sql.clone(),
                        None => statement.insert(statement_sql(table.def(), change)?).clone(),
                    };
                    self.change_remote(&record, sql, txn).await
                };
                match outcome {
                    Err(e @ Error::ShardUnavailable { .. }) => last = Some(e),
                    other => {
                        result = Some(other);
                        break;
                    }
                }
            }
            match result.unwrap_or_else(|| Err(last.unwrap_or_else(|| Error::Internal("no attempt".into())))) {
                Ok((n, part)) => {
                    affected += n;
                    if part {
                        tagged.insert(i);
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let outcome = match failed {
            None => Ok(affected),
            Some(e) => Err(e),
        };
        // A failed statement spanning shards is decided aborted even when no part answered: an attempt whose answer
        // was lost may have written one, which the abort discards at once rather than after the hold.
        if txn == 0 || (tagged.is_empty() && outcome.is_ok()) {
            return outcome;
        }
        self.finish_transaction(table, txn, &tagged, outcome).await
    }

    /// Sends a DELETE or UPDATE of one shard to its primary on another node; returns the rows it affected there.
    async fn change_remote(&self, record: &ShardRecord, statement: String, txn: u64) -> Result<(u64, bool)> {
        let (table_id, shard_id, epoch) = (record.table_id.0, record.shard_id.0, record.epoch);
        let request = ChangeShardRequest { table_id, shard_id, epoch, statement, txn };
        // A shard with cold files may have them rewritten, which takes as long as they are large: up to the hold,
        // after which the part would be aborted anyway.
        let deadline = match record.manifest {
            Some(_) => self.replication.transaction_hold.max(self.replication.timeout * 3),
            None => self.replication.timeout * 3,
        };
        self.call_primary_within(record, deadline, |mut client| async move { client.change_shard(request).await })
            .await
            .map(|r| (r.rows, r.tagged))
    }

    /// Applies a DELETE or UPDATE (`statement`, SQL against the table) to one shard this node leads at `epoch`, as
    /// one change of its log, a part of statement `txn` spanning shards unless 0; returns the rows it affected and
    /// whether the change is such a part. A statement another node routed here (`ShardService.ChangeShard`).
    ///
    /// # Errors
    ///
    /// [`Error::ShardUnavailable`] when the epoch is not the shard's or this node is not its primary (nothing
    /// changed); [`Error::Plan`] for a statement that is not a DELETE or UPDATE of the shard's table; the errors of
    /// the statement.
    pub async fn change_shard(
        &self,
        table: TableId,
        shard: ShardId,
        epoch: u64,
        statement: &str,
        txn: u64,
    ) -> Result<(u64, bool)> {
        use datafusion::logical_expr::{DmlStatement, LogicalPlan, WriteOp};
        let (_, hot, replica) = self.led_shard(table, shard, epoch).await?;
        let state = self.ctx.state();
        let plan = state.create_logical_plan(statement).await?;
        let LogicalPlan::Dml(DmlStatement { table_name, op: op @ (WriteOp::Delete | WriteOp::Update), input, .. }) =
            plan
        else {
            return Err(Error::Plan { message: format!("not a DELETE or UPDATE: {statement}") });
        };
        if table_name.table() != hot.def().name {
            return Err(Error::Plan {
                message: format!("the statement changes \"{}\", not shard {shard}'s table", table_name.table()),
            });
        }
        let change = dml::analyze(&hot.def().name, &input, op == WriteOp::Update)?;
        let compiled = dml::compile(&state, &change)?;
        self.change_led_shard(&state, &replica, &compiled, epoch, txn).await
    }
}

/// A DELETE or UPDATE as SQL against its table, for the primaries of its shards on other nodes: the predicate and
/// assigned values unparsed, with column names unqualified.
fn statement_sql(def: &quiver_meta::TableDef, change: &RowChange) -> Result<String> {
    let quoted = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let sql = crate::query::remote::expr_sql;
    let mut out = match &change.assignments {
        None => format!("DELETE FROM {}", quoted(&def.name)),
        Some(values) => {
            let mut sets = Vec::new();
            for (column, value) in def.columns.iter().zip(values) {
                if let Some(value) = value {
                    sets.push(format!("{} = {}", quoted(&column.name), sql(value)?));
                }
            }
            if sets.is_empty() {
                // An UPDATE that assigns every column its own value still counts the rows it matches.
                let first = quoted(&def.columns[0].name);
                sets.push(format!("{first} = {first}"));
            }
            format!("UPDATE {} SET {}", quoted(&def.name), sets.join(", "))
        }
    };
    if let Some(predicate) = &change.predicate {
        out.push_str(" WHERE ");
        out.push_str(&sql(predicate)?);
    }
    Ok(out)
}

/// Finds a shard's current primary for a remote scan refused at an older epoch: through a linearizable read of the
/// metadata, so the answer is at least as new as the configuration that refused the scan.
#[derive(Debug)]
struct Locator(std::sync::Weak<Engine>);

#[async_trait::async_trait]
impl crate::query::remote::ShardLocator for Locator {
    async fn locate(&self, table: TableId, shard: ShardId) -> std::result::Result<(u64, String), String> {
        let engine = self.0.upgrade().ok_or_else(|| "the node is shutting down".to_string())?;
        engine.meta.read_state(|_| ()).await.map_err(|e| e.to_string())?;
        let record = engine.shard_record_of(table, shard).map_err(|e| e.to_string())?;
        let addr = engine
            .meta
            .read_local(|s| s.node(record.primary).map(|n| n.grpc_addr.clone()))
            .ok_or_else(|| format!("its primary, node {}, is not registered", record.primary))?;
        Ok((record.epoch, addr))
    }

    fn peer_tls(&self) -> quiver_meta::transport::PeerTls {
        self.0.upgrade().map(|engine| engine.meta.config().peer_tls.clone()).unwrap_or_default()
    }
}
