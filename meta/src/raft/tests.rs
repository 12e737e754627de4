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

#[tokio::test]
async fn a_removal_marks_down_only_a_node_that_is_not_a_member_again() {
    use std::collections::{BTreeMap, BTreeSet};

    use crate::raft::types::NodeAddr;
    use crate::state::{NodeRole, NodeState};

    let store: Arc<dyn crate::MetaStore> = Arc::new(MemMetaStore::new());
    let mut sm = StateMachineStore::open(store).expect("open sm");
    let entry = |index: u64, payload| Entry { log_id: log_id(1, index), payload };
    let register = |node_id: u64| MetaCommand::RegisterNode {
        node_id,
        grpc_addr: format!("10.0.0.{node_id}:7000"),
        flight_addr: String::new(),
        pg_addr: String::new(),
        role: NodeRole::Voter,
    };
    let membership = |ids: &[u64]| {
        let nodes: BTreeMap<u64, NodeAddr> =
            ids.iter().map(|id| (*id, NodeAddr::new(format!("10.0.0.{id}:7000")))).collect();
        openraft::Membership::new(vec![ids.iter().copied().collect::<BTreeSet<u64>>()], nodes)
    };
    let serving = |node_id| MetaCommand::UpdateNodeState { node_id, state: NodeState::Serving };
    sm.apply([
        entry(1, EntryPayload::Normal(register(1))),
        entry(2, EntryPayload::Normal(register(2))),
        entry(3, EntryPayload::Normal(serving(1))),
        entry(4, EntryPayload::Normal(serving(2))),
        // Node 2 is removed, and rejoins before the removal's mark lands: it stays serving.
        entry(5, EntryPayload::Membership(membership(&[1]))),
        entry(6, EntryPayload::Membership(membership(&[1, 2]))),
        entry(7, EntryPayload::Normal(MetaCommand::MarkRemoved { node_id: 2 })),
    ])
    .await
    .expect("apply");
    let state_of = |sm: &StateMachineStore, id| sm.shared().read().state.node(id).map(|n| n.state);
    assert_eq!(state_of(&sm, 2), Some(NodeState::Serving));
    // Removed and not back: the mark applies.
    sm.apply([
        entry(8, EntryPayload::Membership(membership(&[1]))),
        entry(9, EntryPayload::Normal(MetaCommand::MarkRemoved { node_id: 2 })),
    ])
    .await
    .expect("apply");
    assert_eq!(state_of(&sm, 2), Some(NodeState::Down));
    assert_eq!(state_of(&sm, 1), Some(NodeState::Serving));
}
