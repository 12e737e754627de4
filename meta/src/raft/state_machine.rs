//! The Raft state machine of a metadata replica: [`StateMachineStore`] applies committed entries to the
//! [`MetaState`], builds and installs snapshots; [`SnapshotBuilder`] serializes the state.
//!
//! Durability: the state machine's durable form is its latest snapshot (metadata and data, written synced in one
//! batch to the [`MetaStore`]). Applying an entry writes nothing. After a restart the state is the snapshot's, and
//! openraft re-applies the committed entries after it from the log. This is sound because applying is deterministic
//! and openraft never purges an entry that the latest snapshot does not include. The alternative, persisting the
//! whole state on every apply, would write the full catalog for each DDL for no gain at metadata's size.
//!
//! The applied state is shared with [`MetaNode`](crate::MetaNode) through [`SharedState`]: readers take a read lock
//! for the duration of a closure and never across an `.await`. Each apply batch publishes the metadata version on a
//! watch channel.

// openraft's storage and network traits return its `StorageError` and `RPCError` by value, and these helpers feed
// those signatures directly; boxing them here would only add a conversion at every call.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use tokio::sync::watch;

use crate::raft::keys;
use crate::raft::log_store::{decode, encode};
use crate::raft::types::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::state::{MetaCommand, MetaOutcome, MetaResponse, MetaState};
use crate::store::{MetaStore, WriteBatch};

/// The state machine's data: the metadata and the position in the log it reflects.
#[derive(Debug, Clone, Default)]
pub(crate) struct Applied {
    /// The last log entry applied.
    pub(crate) last_applied: Option<LogId>,
    /// The last membership applied.
    pub(crate) membership: StoredMembership,
    /// The metadata.
    pub(crate) state: MetaState,
}

/// The applied state, shared between the state machine (which writes it) and its readers.
#[derive(Debug)]
pub(crate) struct SharedState {
    applied: RwLock<Applied>,
    version: watch::Sender<u64>,
    stats: SnapshotCounters,
}

/// Snapshot activity of a replica, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Snapshots built by this replica since it started.
    pub built: u64,
    /// Snapshots received from a leader and installed since it started.
    pub installed: u64,
    /// Bytes of the last snapshot built or installed.
    pub last_bytes: u64,
    /// Microseconds the last snapshot build took (encoding and the synced write).
    pub last_build_micros: u64,
}

#[derive(Debug, Default)]
struct SnapshotCounters {
    built: AtomicU64,
    installed: AtomicU64,
    last_bytes: AtomicU64,
    last_build_micros: AtomicU64,
}

impl SharedState {
    fn new(applied: Applied) -> Self {
        let (version, _) = watch::channel(applied.state.version());
        Self { applied: RwLock::new(applied), version, stats: SnapshotCounters::default() }
    }

    /// Returns the snapshot activity so far.
    pub(crate) fn snapshot_stats(&self) -> SnapshotStats {
        SnapshotStats {
            built: self.stats.built.load(Ordering::Relaxed),
            installed: self.stats.installed.load(Ordering::Relaxed),
            last_bytes: self.stats.last_bytes.load(Ordering::Relaxed),
            last_build_micros: self.stats.last_build_micros.load(Ordering::Relaxed),
        }
    }

    /// Locks the applied state for reading.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Applied> {
        // Writers replace fields only after all fallible work is done, so a panic cannot leave a half-applied state
        // behind a poisoned lock.
        self.applied.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns a receiver of the applied metadata version.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn publish(&self, version: u64) {
        self.version.send_if_modified(|current| {
            let changed = *current != version;
            *current = version;
            changed
        });
    }
}

/// The Raft state machine of one replica.
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    store: Arc<dyn MetaStore>,
    shared: Arc<SharedState>,
    snapshots_built: Arc<AtomicU64>,
}

impl StateMachineStore {
    /// Opens the state machine kept in `store`: the latest snapshot, or the empty state.
    ///
    /// # Errors
    ///
    /// Returns a [`StorageError`] when the store fails or holds an undecodable snapshot.
    pub fn open(store: Arc<dyn MetaStore>) -> Result<Self, StorageError> {
        let applied = match read_snapshot(store.as_ref())? {
            Some((meta, data)) => Applied {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
                state: decode_state(&data, &meta)?,
            },
            None => Applied::default(),
        };
        Ok(Self { store, shared: Arc::new(SharedState::new(applied)), snapshots_built: Arc::new(AtomicU64::new(0)) })
    }

    /// Returns the applied state shared with readers.
    pub(crate) fn shared(&self) -> Arc<SharedState> {
        Arc::clone(&self.shared)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.shared.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<MetaResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Simulation: a slow apply, so reads wait on the applied index and proposals on their responses.
        buggify_delay!(0.02, 200);
        let mut applied = self.shared.write();
        let mut responses = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                // A removed node that is a member again (it rejoined after its removal) stays as its join left it.
                EntryPayload::Normal(MetaCommand::MarkRemoved { node_id })
                    if applied.membership.membership().nodes().any(|(id, _)| *id == node_id) =>
                {
                    unchanged(&applied.state)
                }
                EntryPayload::Normal(command) => applied.state.apply(command),
                EntryPayload::Blank => unchanged(&applied.state),
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    unchanged(&applied.state)
                }
            };
            responses.push(response);
        }
        let version = applied.state.version();
        drop(applied);
        self.shared.publish(version);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: Arc::clone(&self.store),
            shared: Arc::clone(&self.shared),
            snapshots_built: Arc::clone(&self.snapshots_built),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        self.shared.stats.installed.fetch_add(1, Ordering::Relaxed);
        self.shared.stats.last_bytes.store(data.len() as u64, Ordering::Relaxed);
        // Decode before persisting or touching the live state: a snapshot that does not decode changes nothing.
        let state = decode_state(&data, meta)?;
        write_snapshot(self.store.as_ref(), meta, data)?;
        let version = state.version();
        {
            let mut applied = self.shared.write();
            *applied = Applied { last_applied: meta.last_log_id, membership: meta.last_membership.clone(), state };
        }
        self.shared.publish(version);
        tracing::info!(snapshot = %meta, version, "installed metadata snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(read_snapshot(self.store.as_ref())?
            .map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// Builds a snapshot of the applied state and makes it the replica's durable snapshot.
#[derive(Debug)]
pub struct SnapshotBuilder {
    store: Arc<dyn MetaStore>,
    shared: Arc<SharedState>,
    snapshots_built: Arc<AtomicU64>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let started = tokio::time::Instant::now();
        let (meta, data) = {
            let applied = self.shared.read();
            let built = self.snapshots_built.fetch_add(1, Ordering::Relaxed) + 1;
            let snapshot_id = match applied.last_applied {
                Some(log_id) => format!("{}-{}-{built}", log_id.leader_id.term, log_id.index),
                None => format!("0-0-{built}"),
            };
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
                snapshot_id,
            };
            (meta, applied.state.encode())
        };
        // Persisted before returning: openraft purges the log up to this snapshot once it has it.
        write_snapshot(self.store.as_ref(), &meta, data.clone())?;
        let stats = &self.shared.stats;
        stats.built.fetch_add(1, Ordering::Relaxed);
        stats.last_bytes.store(data.len() as u64, Ordering::Relaxed);
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        stats.last_build_micros.store(micros, Ordering::Relaxed);
        tracing::debug!(snapshot = %meta, bytes = data.len(), "built metadata snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

fn unchanged(state: &MetaState) -> MetaResponse {
    MetaResponse { version: state.version(), outcome: Ok(MetaOutcome::Unchanged) }
}

fn decode_state(data: &[u8], meta: &SnapshotMeta) -> Result<MetaState, StorageError> {
    MetaState::decode(data).map_err(|e| {
        openraft::StorageIOError::new(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Read,
            openraft::AnyError::new(&e),
        )
        .into()
    })
}

fn read_snapshot(store: &dyn MetaStore) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
    let read = |key: &[u8]| {
        store.get(key).map_err(|e| StorageError::from_io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))
    };
    let (Some(meta), Some(data)) = (read(keys::SNAPSHOT_META)?, read(keys::SNAPSHOT_DATA)?) else {
        return Ok(None);
    };
    let meta: SnapshotMeta = decode(&meta, ErrorSubject::Snapshot(None), ErrorVerb::Read)?;
    Ok(Some((meta, data)))
}

fn write_snapshot(store: &dyn MetaStore, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), StorageError> {
    let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
    let mut batch = WriteBatch::new();
    batch.put(keys::SNAPSHOT_META, encode(meta, subject())?).put(keys::SNAPSHOT_DATA, data);
    store.write(batch, true).map_err(|e| StorageError::from_io_error(subject(), ErrorVerb::Write, e))
}
