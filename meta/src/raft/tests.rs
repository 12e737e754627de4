//! Unit tests of the Raft storage: openraft's own storage conformance suite, and durability across a reopen.

use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{Entry, EntryPayload, RaftLogReader, RaftSnapshotBuilder};

use super::*;
use crate::raft::types::{LogId, StorageError, Vote};
use crate::state::MetaCommand;
use crate::store::MemMetaStore;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore> for Builder {
    async fn build(&self) -> Result<((), LogStore, StateMachineStore), StorageError> {
        let store: Arc<dyn crate::MetaStore> = Arc::new(MemMetaStore::new());
        Ok(((), LogStore::open(Arc::clone(&store))?, StateMachineStore::open(store)?))
    }
}

#[test]
fn storage_passes_openraft_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id(term, 1, index)
}

fn normal(term: u64, index: u64, cluster_id: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(MetaCommand::Bootstrap { cluster_id: cluster_id.into() }),
    }
}

#[tokio::test]
async fn log_vote_and_snapshot_survive_reopen() {
    let mem = MemMetaStore::new();
    let store: Arc<dyn crate::MetaStore> = Arc::new(mem.clone());
    let mut log = LogStore::open(Arc::clone(&store)).expect("open log");
    let mut sm = StateMachineStore::open(Arc::clone(&store)).expect("open sm");
    log.save_vote(&Vote::new(3, 1)).await.expect("vote");
    log.blocking_append((1..=5).map(|i| normal(3, i, "c"))).await.expect("append");
    log.truncate(log_id(3, 5)).await.expect("truncate");
    sm.apply([normal(3, 1, "c")]).await.expect("apply");
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    log.purge(log_id(3, 2)).await.expect("purge");
    drop((log, sm));

    let store: Arc<dyn crate::MetaStore> = Arc::new(mem);
    let mut log = LogStore::open(Arc::clone(&store)).expect("reopen log");
    let mut sm = StateMachineStore::open(store).expect("reopen sm");
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(3, 1)));
    let state = log.get_log_state().await.expect("state");
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(3, 2)), Some(log_id(3, 4))));
    let entries = log.try_get_log_entries(0..10).await.expect("read");
    assert_eq!(entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![3, 4]);
    let (applied, _) = sm.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(3, 1)));
    let current = sm.get_current_snapshot().await.expect("snapshot").expect("persisted");
    assert_eq!(current.meta, snapshot.meta);
    let shared = sm.shared();
    assert_eq!(shared.read().state.cluster_id(), Some("c"));
}

#[tokio::test]
async fn corrupt_snapshot_is_a_storage_error_not_a_panic() {
    let mem = MemMetaStore::new();
    let mut batch = crate::WriteBatch::new();
    batch.put(keys::SNAPSHOT_META, b"{".to_vec()).put(keys::SNAPSHOT_DATA, b"x".to_vec());
    crate::MetaStore::write(&mem, batch, true).expect("write");
    assert!(StateMachineStore::open(Arc::new(mem)).is_err());
}
