//! Retention: a table's `ttl` option drops the rows on this node written longer ago than that, hot and cold alike.
//!
//! Chunks carry the time they were written in their index entry and files the range of their rows' times in the
//! manifest, so retention reads nothing but metadata. A hot chunk goes whole once it was written before the cutoff; a
//! cold file goes whole once its newest row was, by a new manifest version without it, committed through Raft like a
//! tiering; the manifest lists it as retired, so the garbage collector deletes it only `cold.gc_grace` after that
//! (scans still reading the previous version finish first). A chunk or file whose age is unknown
//! (written before chunks carried their age) is never expired. The background tierer applies retention every
//! `cold.tier_check_interval`, so a row may be seen for up to that long after it expires.

use std::sync::Arc;

use super::Engine;
use crate::cold::{self, ColdState};
use crate::error::{Error, Result};
use crate::table::{Chunk, ShardReplica};

/// What one application of retention dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpireReport {
    /// Hot chunks dropped.
    pub chunks: usize,
    /// Their rows.
    pub hot_rows: u64,
    /// Cold files taken out of the manifest.
    pub files: usize,
    /// Their rows.
    pub cold_rows: u64,
}

/// How often retention retries its commit when another node moved the manifest pointer meanwhile.
const COMMIT_ATTEMPTS: usize = 8;

impl Engine {
    /// Drops the rows of table `name` on this node written before `cutoff` (milliseconds since the Unix epoch): hot
    /// chunks, and, of the shards this node holds alone, the cold files whose newest row is older. Serialized with
    /// tiering and DML on the table.
    ///
    /// # Errors
    ///
    /// [`Error::TableNotFound`] for an unknown table, [`Error::ColdUnavailable`] when the store fails (the hot part
    /// may be done: retention is idempotent and the next round finishes it), and the metadata group's errors.
    pub async fn expire(&self, name: &str, cutoff: u64) -> Result<ExpireReport> {
        self.see_acknowledged_ddl().await?;
        let table = self.native_table(name)?;
        let mut report = ExpireReport::default();
        for shard in table.shards() {
            let r = self.expire_shard(shard, cutoff).await?;
            report.chunks += r.chunks;
            report.hot_rows += r.hot_rows;
            report.files += r.files;
            report.cold_rows += r.cold_rows;
        }
        Ok(report)
    }

    /// Drops one shard's rows on this node written before `cutoff`.
    async fn expire_shard(&self, table: &Arc<ShardReplica>, cutoff: u64) -> Result<ExpireReport> {
        let name = table.def().name.as_str();
        let _serialized = table.dml_lock.lock().await;
        let mut report = ExpireReport::default();
        // A replicated shard's rows change only through its primary's log: the primary expires them as a change its
        // backups apply too. A shard whose manifest a statement spanning shards proposed (it may hold these hot rows
        // in a new file) waits for its decision.
        let record = self.shard_record(table)?;
        if record.pending.is_some() {
            return Ok(report);
        }
        if record.replicas.len() > 1 {
            if record.primary != self.node_id {
                return Ok(report);
            }
            let version = table.version();
            let expired: Vec<&Arc<Chunk>> = version
                .iter()
                .filter(|c| c.meta.written_ms > 0 && c.meta.written_ms < cutoff && !c.meta.unsettled())
                .collect();
            if !expired.is_empty() {
                report.chunks = expired.len();
                report.hot_rows = expired.iter().map(|c| c.meta.rows).sum();
                let removed = expired.iter().map(|c| c.seq).collect();
                self.replicate_change(table, record.epoch, Vec::new(), removed, Vec::new(), 0).await?;
            }
        } else {
            let through = match table.cold() {
                ColdState::Ready(view) => view.hot_through,
                ColdState::Unavailable(_) => 0,
            };
            let expired: Vec<Arc<Chunk>> = table
                .version()
                .iter()
                .filter(|c| {
                    c.seq > through && c.meta.written_ms > 0 && c.meta.written_ms < cutoff && !c.meta.unsettled()
                })
                .cloned()
                .collect();
            if !expired.is_empty() {
                report.chunks = expired.len();
                report.hot_rows = expired.iter().map(|c| c.meta.rows).sum();
                let t = Arc::clone(table);
                crate::blocking::run("expire hot chunks", move || t.replace(&expired, Vec::new())).await??;
            }
        }

        let shard = self.shard_record(table)?;
        // The cold files are the shard's, whoever tiered them: its primary expires them (every copy follows the
        // manifest).
        if shard.primary != self.node_id || !shard.in_sync.contains(&self.node_id) {
            return Ok(report);
        }
        let Some(pointer) = &shard.manifest else {
            return Ok(report);
        };
        if let ColdState::Ready(view) = table.cold()
            && view.version == pointer.version
            && !view.files.iter().any(|f| expires(f, cutoff))
        {
            return Ok(report);
        }
        let store = self.cold_store()?;
        for _ in 0..COMMIT_ATTEMPTS {
            let (pointer, current) = self.shard_manifest(table, &shard).await?;
            self.adopt(table, &current).await;
            let gone: Vec<&cold::ColdFile> = current.files.iter().filter(|f| expires(f, cutoff)).collect();
            if gone.is_empty() {
                return Ok(report);
            }
            let paths: Vec<String> = gone.iter().map(|f| f.path.clone()).collect();
            let rows: u64 = gone.iter().map(|f| f.rows).sum();
            let keep_ms = self.cold.gc_grace().as_millis() as u64;
            let uploading = crate::clock::unix_ms();
            let mut next = current.without_files(&paths, uploading, keep_ms);
            let location = self.store_manifest(&store, &mut next).await?;
            if self.propose_manifest(&shard, pointer.as_ref(), &next, location, uploading, 0).await? {
                self.adopt(table, &next).await;
                (report.files, report.cold_rows) = (paths.len(), rows);
                tracing::info!(table = name, files = paths.len(), rows, "expired cold files");
                return Ok(report);
            }
        }
        Err(Error::ColdUnavailable {
            detail: format!("the manifest of table \"{name}\" kept changing; retention is retried next round"),
        })
    }
}

/// Whether every row of `file` was written before `cutoff` (a file of unknown age never expires).
fn expires(file: &cold::ColdFile, cutoff: u64) -> bool {
    file.written_ms.is_some_and(|w| w.max > 0 && w.max < cutoff)
}
