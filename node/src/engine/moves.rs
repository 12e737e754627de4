//! The shard moves this node runs, with their progress (`system.shard_moves`): each catch-up of a replica of a shard
//! this node leads (a copy back after a failure, a new copy for re-replication, the new copy of a drain), from its
//! first attempt until it is in sync, and kept for a while after.
//!
//! A move is known by its shard and target node. Its attempts (a failed catch-up starts again a later round, resuming
//! where it stopped) update one record: what the current attempt still has to send, what every attempt sent, the
//! last error.

use std::collections::VecDeque;
use std::sync::Mutex;

use quiver_meta::{ShardId, TableId};

/// A move: its shard and the node receiving the copy.
pub(crate) type MoveKey = (ShardId, u64);

/// Finished moves kept (the running ones are always kept).
const FINISHED_KEPT: usize = 256;

/// Where a move stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MovePhase {
    /// Sending the shard's committed chunks while writes go on.
    Copying,
    /// Sending what was committed meanwhile, with the shard's writes held, then admitting the copy.
    Finishing,
    /// The last attempt failed; the next round starts another.
    Waiting,
    /// The copy is in sync.
    InSync,
}

impl MovePhase {
    pub(crate) fn name(self) -> &'static str {
        match self {
            MovePhase::Copying => "copying",
            MovePhase::Finishing => "finishing",
            MovePhase::Waiting => "waiting",
            MovePhase::InSync => "in-sync",
        }
    }
}

/// One move, as `system.shard_moves` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MoveRecord {
    pub(crate) table: TableId,
    pub(crate) table_name: String,
    pub(crate) shard: ShardId,
    /// The node receiving the copy.
    pub(crate) target: u64,
    pub(crate) phase: MovePhase,
    /// Attempts so far.
    pub(crate) attempts: u64,
    /// When the first attempt started and when the record last changed, in milliseconds since the Unix epoch.
    pub(crate) started_ms: u64,
    pub(crate) updated_ms: u64,
    /// Chunks and bytes of chunk data every attempt sent.
    pub(crate) chunks_sent: u64,
    pub(crate) bytes_sent: u64,
    /// Chunks and bytes the current attempt has still to send (what the target lacked when it started, less what
    /// it sent since).
    pub(crate) chunks_left: u64,
    pub(crate) bytes_left: u64,
    /// Rows of the chunks every attempt sent, and of those the current attempt has still to send.
    pub(crate) rows_sent: u64,
    pub(crate) rows_left: u64,
    /// The shard's configuration epoch the attempt runs at (once in sync: the epoch that admitted the copy).
    pub(crate) epoch: u64,
    /// Why the last attempt failed.
    pub(crate) error: Option<String>,
}

/// The moves of this node, oldest first.
#[derive(Debug, Default)]
pub(crate) struct MoveLog {
    moves: Mutex<VecDeque<MoveRecord>>,
}

impl MoveLog {
    /// The moves kept, oldest first.
    pub(crate) fn records(&self) -> Vec<MoveRecord> {
        self.lock().iter().cloned().collect()
    }

    /// An attempt of the move of `shard` to `target` starts at `epoch`: a new move unless one is under way.
    pub(crate) fn attempt(&self, table: TableId, table_name: &str, shard: ShardId, target: u64, epoch: u64) {
        let now = crate::clock::unix_ms();
        let mut moves = self.lock();
        match moves.iter_mut().find(|m| m.shard == shard && m.target == target && m.phase != MovePhase::InSync) {
            Some(m) => {
                m.attempts += 1;
                m.phase = MovePhase::Copying;
                m.epoch = epoch;
                m.updated_ms = now;
                (m.chunks_left, m.bytes_left, m.rows_left) = (0, 0, 0);
            }
            None => {
                moves.retain(|m| !(m.shard == shard && m.target == target));
                moves.push_back(MoveRecord {
                    table,
                    table_name: table_name.to_string(),
                    shard,
                    target,
                    phase: MovePhase::Copying,
                    attempts: 1,
                    started_ms: now,
                    updated_ms: now,
                    chunks_sent: 0,
                    bytes_sent: 0,
                    chunks_left: 0,
                    bytes_left: 0,
                    rows_sent: 0,
                    rows_left: 0,
                    epoch,
                    error: None,
                });
            }
        }
    }

    /// Bytes the running moves have still to send.
    pub(crate) fn bytes_left(&self) -> u64 {
        self.lock().iter().filter(|m| m.phase != MovePhase::InSync).map(|m| m.bytes_left).sum()
    }

    /// The current attempt has `chunks` of `bytes` and `rows` left to send (what the target lacks now: counted
    /// again when it enters [`MovePhase::Finishing`]).
    pub(crate) fn to_send(&self, shard: ShardId, target: u64, (chunks, bytes, rows): (u64, u64, u64)) {
        self.update(shard, target, |m| (m.chunks_left, m.bytes_left, m.rows_left) = (chunks, bytes, rows));
    }

    /// Closes the moves not running now (`running`, by shard and target) that are no longer wanted: in sync
    /// (`in_sync` says at which epoch), or not this node's to make any more (it no longer leads the shard, the copy
    /// was dropped, the table is gone), which leave the log.
    pub(crate) fn reconcile(
        &self,
        running: &std::collections::HashSet<MoveKey>,
        in_sync: impl Fn(ShardId, u64) -> Option<u64>,
        wanted: &std::collections::HashSet<MoveKey>,
    ) {
        let now = crate::clock::unix_ms();
        let mut moves = self.lock();
        moves.retain_mut(|m| {
            let key = (m.shard, m.target);
            if m.phase == MovePhase::InSync || running.contains(&key) || wanted.contains(&key) {
                return true;
            }
            let Some(epoch) = in_sync(m.shard, m.target) else { return false };
            (m.phase, m.epoch, m.error, m.updated_ms) = (MovePhase::InSync, epoch, None, now);
            (m.chunks_left, m.bytes_left, m.rows_left) = (0, 0, 0);
            true
        });
    }

    /// The current attempt sent `chunks` of `bytes` and `rows`.
    pub(crate) fn sent(&self, shard: ShardId, target: u64, (chunks, bytes, rows): (u64, u64, u64)) {
        self.update(shard, target, |m| {
            m.chunks_sent += chunks;
            m.bytes_sent += bytes;
            m.rows_sent += rows;
            m.chunks_left = m.chunks_left.saturating_sub(chunks);
            m.bytes_left = m.bytes_left.saturating_sub(bytes);
            m.rows_left = m.rows_left.saturating_sub(rows);
        });
    }

    /// Seconds the running move has still to take at the rate it sent so far; `None` when nothing is sent yet.
    pub(crate) fn eta_seconds(m: &MoveRecord) -> Option<u64> {
        let elapsed_ms = m.updated_ms.saturating_sub(m.started_ms);
        if m.phase == MovePhase::InSync || m.bytes_sent == 0 || elapsed_ms == 0 {
            return (m.phase == MovePhase::InSync).then_some(0);
        }
        Some((m.bytes_left as f64 * elapsed_ms as f64 / m.bytes_sent as f64 / 1000.0).ceil() as u64)
    }

    /// The current attempt holds the shard's writes to send the rest and admit the copy.
    pub(crate) fn finishing(&self, shard: ShardId, target: u64) {
        self.update(shard, target, |m| m.phase = MovePhase::Finishing);
    }

    /// The current attempt ended: the copy is in sync at `epoch` (`Ok`), or the attempt failed.
    pub(crate) fn ended(&self, shard: ShardId, target: u64, outcome: Result<u64, String>) {
        let finished = outcome.is_ok();
        self.update(shard, target, |m| {
            (m.chunks_left, m.bytes_left, m.rows_left) = (0, 0, 0);
            match outcome {
                Ok(epoch) => {
                    m.phase = MovePhase::InSync;
                    m.epoch = epoch;
                    m.error = None;
                }
                Err(why) => {
                    m.phase = MovePhase::Waiting;
                    m.error = Some(why);
                }
            }
        });
        if finished {
            let mut moves = self.lock();
            while moves.iter().filter(|m| m.phase == MovePhase::InSync).count() > FINISHED_KEPT {
                let Some(oldest) = moves.iter().position(|m| m.phase == MovePhase::InSync) else { break };
                moves.remove(oldest);
            }
        }
    }

    fn update(&self, shard: ShardId, target: u64, change: impl FnOnce(&mut MoveRecord)) {
        let mut moves = self.lock();
        if let Some(m) =
            moves.iter_mut().find(|m| m.shard == shard && m.target == target && m.phase != MovePhase::InSync)
        {
            change(m);
            m.updated_ms = crate::clock::unix_ms();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<MoveRecord>> {
        self.moves.lock().expect("move log poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_of_one_move_update_one_record_and_finished_moves_are_bounded() {
        let log = MoveLog::default();
        let (table, shard) = (TableId(1), ShardId(7));
        log.attempt(table, "t", shard, 3, 4);
        log.to_send(shard, 3, (10, 1000, 100));
        log.sent(shard, 3, (4, 400, 40));
        log.ended(shard, 3, Err("node 3 did not answer".into()));
        log.attempt(table, "t", shard, 3, 5);
        log.to_send(shard, 3, (6, 600, 60));
        log.sent(shard, 3, (2, 200, 20));
        let records = log.records();
        assert_eq!(records.len(), 1, "one record per move");
        let m = &records[0];
        assert_eq!((m.phase, m.attempts, m.epoch), (MovePhase::Copying, 2, 5));
        assert_eq!((m.chunks_sent, m.bytes_sent, m.chunks_left, m.bytes_left), (6, 600, 4, 400));
        assert_eq!((m.rows_sent, m.rows_left), (60, 40));
        // What the target lacks is counted anew as the attempt finishes.
        log.to_send(shard, 3, (4, 400, 40));
        assert_eq!(log.bytes_left(), 400);
        assert_eq!(m.error.as_deref(), Some("node 3 did not answer"), "the last failure stays until it succeeds");
        log.finishing(shard, 3);
        log.sent(shard, 3, (4, 400, 40));
        log.ended(shard, 3, Ok(6));
        let m = &log.records()[0];
        assert_eq!(
            (m.phase, m.epoch, m.bytes_sent, m.bytes_left, m.error.clone()),
            (MovePhase::InSync, 6, 1000, 0, None)
        );
        // A finished move's copy falling out of sync again is a new move.
        log.attempt(table, "t", shard, 3, 7);
        let records = log.records();
        assert_eq!(records.len(), 1);
        assert_eq!((records[0].attempts, records[0].bytes_sent), (1, 0));
        // A move that failed and is no longer wanted is closed: in sync (admitted by an attempt whose answer was
        // lost), or dropped from the log.
        log.attempt(table, "t", ShardId(8), 1, 3);
        log.ended(ShardId(8), 1, Err("lost answer".into()));
        log.attempt(table, "t", ShardId(9), 1, 3);
        log.ended(ShardId(9), 1, Err("gone".into()));
        let none = std::collections::HashSet::new();
        log.reconcile(&none, |s, _| (s == ShardId(8)).then_some(4), &[(shard, 3)].into_iter().collect());
        let records = log.records();
        let eight = records.iter().find(|m| m.shard == ShardId(8)).expect("kept");
        assert_eq!((eight.phase, eight.epoch, eight.error.clone()), (MovePhase::InSync, 4, None));
        assert!(records.iter().all(|m| m.shard != ShardId(9)), "dropped");
        assert!(records.iter().any(|m| m.shard == shard && m.phase == MovePhase::Copying), "wanted: kept");
        // Finished moves are bounded; running ones are kept.
        for n in 0..(FINISHED_KEPT as u64 + 10) {
            log.attempt(table, "t", ShardId(100 + n), 2, 1);
            log.ended(ShardId(100 + n), 2, Ok(2));
        }
        let records = log.records();
        assert_eq!(records.iter().filter(|m| m.phase == MovePhase::InSync).count(), FINISHED_KEPT);
        assert!(records.iter().any(|m| m.shard == shard && m.phase == MovePhase::Copying));
    }
}
