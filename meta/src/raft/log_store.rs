//! The Raft log and vote of a metadata replica, stored in its [`MetaStore`]: [`LogStore`] implements openraft's
//! [`RaftLogStorage`], [`LogReader`] its [`RaftLogReader`].
//!
//! Durability: entries and the vote are written with `sync = true`, and the append callback is invoked only after
//! that write has returned, so openraft never counts an entry towards a commit quorum before it is on disk. The
//! committed log id is written unsynced: it is only a hint that lets a restarted replica re-apply its committed
//! entries before hearing from the leader. A purge writes the new last-purged id and deletes the entries in one
//! atomic batch, so the store never has a gap between the purged id and the first remaining entry.
//!
//! [`LogStore`] caches the last log id and last purged id, computed when it opens; every change goes through it, so
//! the cache cannot drift from the store.

// openraft's storage and network traits return its `StorageError` and `RPCError` by value, and these helpers feed
// those signatures directly; boxing them here would only add a conversion at every call.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::raft::election::LastLogId;
use crate::raft::keys;
use crate::raft::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::store::{MetaStore, ScanOrder, WriteBatch};

/// Reads log entries; handed to openraft's replication tasks, which read concurrently with appends.
#[derive(Debug, Clone)]
pub struct LogReader {
    store: Arc<dyn MetaStore>,
}

/// The Raft log and vote of one replica.
#[derive(Debug, Clone)]
pub struct LogStore {
    reader: LogReader,
    last_log_id: Option<LogId>,
    last_purged_log_id: Option<LogId>,
    /// `last_log_id`, shared with the replica's pre-vote.
    shared_last_log_id: LastLogId,
}

impl LogStore {
    /// Opens the log kept in `store`, empty or written by an earlier [`LogStore`].
    ///
    /// # Errors
    ///
    /// Returns a [`StorageError`] when the store fails or holds undecodable log state.
    pub fn open(store: Arc<dyn MetaStore>) -> Result<Self, StorageError> {
        let reader = LogReader { store };
        let last_purged_log_id: Option<LogId> = reader.read_json(keys::LAST_PURGED, ErrorSubject::Logs)?;
        let mut log = Self { reader, last_log_id: None, last_purged_log_id, shared_last_log_id: LastLogId::default() };
        log.set_last_log_id(log.read_last_log_id()?);
        Ok(log)
    }

    /// Returns the id of the last entry, kept up to date as the log changes, for the pre-vote.
    pub(crate) fn last_log_id_cell(&self) -> LastLogId {
        self.shared_last_log_id.clone()
    }

    fn set_last_log_id(&mut self, id: Option<LogId>) {
        self.last_log_id = id;
        self.shared_last_log_id.set(id);
    }

    fn store(&self) -> &dyn MetaStore {
        self.reader.store.as_ref()
    }

    /// Returns the id of the last entry in the store, or the last purged id when every entry was purged.
    fn read_last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let last = self
            .store()
            .scan(&keys::log(0), &keys::log_end(), ScanOrder::Descending, 1)
            .map_err(|e| StorageError::from_io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        match last.into_iter().next() {
            Some((_, value)) => Ok(Some(decode::<Entry>(&value, ErrorSubject::Logs, ErrorVerb::Read)?.log_id)),
            None => Ok(self.last_purged_log_id),
        }
    }

    fn write(&self, batch: WriteBatch, sync: bool, subject: ErrorSubject<u64>) -> Result<(), StorageError> {
        self.store().write(batch, sync).map_err(|e| StorageError::from_io_error(subject, ErrorVerb::Write, e))
    }
}

impl LogReader {
    fn read_json<T: DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<u64>,
    ) -> Result<Option<T>, StorageError> {
        match self.store.get(key) {
            Ok(Some(bytes)) => Ok(Some(decode(&bytes, subject, ErrorVerb::Read)?)),
            Ok(None) => Ok(None),
            Err(e) => Err(StorageError::from_io_error(subject, ErrorVerb::Read, e)),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => Some(*i),
            Bound::Excluded(i) => i.checked_add(1),
            Bound::Unbounded => Some(0),
        };
        let Some(start) = start else { return Ok(Vec::new()) };
        let end_key: Vec<u8> = match range.end_bound() {
            Bound::Included(i) => match i.checked_add(1) {
                Some(end) => keys::log(end).to_vec(),
                None => keys::log_end().to_vec(),
            },
            Bound::Excluded(i) => keys::log(*i).to_vec(),
            Bound::Unbounded => keys::log_end().to_vec(),
        };
        let rows = self
            .store
            .scan(&keys::log(start), &end_key, ScanOrder::Ascending, usize::MAX)
            .map_err(|e| StorageError::from_io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        rows.iter().map(|(_, value)| decode(value, ErrorSubject::Logs, ErrorVerb::Read)).collect()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.reader.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(LogState { last_purged_log_id: self.last_purged_log_id, last_log_id: self.last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        batch.put(keys::VOTE, encode(vote, ErrorSubject::Vote)?);
        // A vote must survive a crash: forgetting it would let this replica vote twice in one term.
        self.write(batch, true, ErrorSubject::Vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.reader.read_json(keys::VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        match committed {
            Some(log_id) => batch.put(keys::COMMITTED, encode(&log_id, ErrorSubject::Store)?),
            None => batch.delete(keys::COMMITTED),
        };
        self.write(batch, false, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.reader.read_json(keys::COMMITTED, ErrorSubject::Store)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Simulation: a slow fsync, so appends, heartbeats and elections overlap.
        buggify_delay!(0.02, 300);
        let mut batch = WriteBatch::new();
        let mut last = None;
        for entry in entries {
            batch.put(keys::log(entry.log_id.index), encode(&entry, ErrorSubject::Log(entry.log_id))?);
            last = Some(entry.log_id);
        }
        match self.store().write(batch, true) {
            Ok(()) => {
                if last.is_some() {
                    self.set_last_log_id(last);
                }
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(StorageError::from_io_error(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        batch.delete_range(keys::log(log_id.index), keys::log_end());
        // Synced so that a crash cannot resurrect conflicting entries that a later, synced append has replaced.
        self.write(batch, true, ErrorSubject::Logs)?;
        let last = self.read_last_log_id()?;
        self.set_last_log_id(last);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        batch.put(keys::LAST_PURGED, encode(&log_id, ErrorSubject::Logs)?);
        match log_id.index.checked_add(1) {
            Some(end) => batch.delete_range(keys::log(0), keys::log(end)),
            None => batch.delete_range(keys::log(0), keys::log_end()),
        };
        // Unsynced: the entries are in the snapshot, which is durable, so losing the purge only keeps them longer.
        self.write(batch, false, ErrorSubject::Logs)?;
        self.last_purged_log_id = Some(log_id);
        if self.last_log_id < Some(log_id) {
            self.set_last_log_id(Some(log_id));
        }
        Ok(())
    }
}

/// Encodes a value for the store.
pub(crate) fn encode<T: Serialize>(value: &T, subject: ErrorSubject<u64>) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(value).map_err(|e| StorageIOError::new(subject, ErrorVerb::Write, AnyError::new(&e)).into())
}

/// Decodes a value read from the store; a corrupt value is a storage error, never a panic.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageIOError::new(subject, verb, AnyError::new(&e)).into())
}
