//! A replica whose store stops taking writes (a full or failing disk) stops its Raft for good and says so through
//! `MetaNode::stopped_by_fault`, which a server waits on to stop itself rather than serve errors for ever.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use quiver_meta::raft::{NodeAddr, Router};
use quiver_meta::store::{ScanOrder, WriteBatch};
use quiver_meta::{MemMetaStore, MetaNode, MetaStore};

use crate::cluster::{init_tracing, register, test_config, wait_leader};

/// A store in memory whose writes fail with "no space left on device" once `full` is set.
#[derive(Debug, Clone, Default)]
struct FillableStore {
    inner: MemMetaStore,
    full: Arc<AtomicBool>,
}

impl MetaStore for FillableStore {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }

    fn scan(&self, start: &[u8], end: &[u8], order: ScanOrder, limit: usize) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan(start, end, order, limit)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.inner.write(batch, sync)
    }
}

#[tokio::test]
async fn a_replica_whose_disk_fills_stops_and_says_why() -> Result<()> {
    init_tracing();
    let router = Router::new();
    let store = FillableStore::default();
    let node =
        MetaNode::start(1, NodeAddr::new("127.0.0.1:7001"), Arc::new(store.clone()), test_config(), router.network(1))
            .await?;
    router.register(&node);
    node.bootstrap("disk").await?;
    wait_leader(&[&node], Duration::from_secs(5)).await?;
    node.propose(register(1, "127.0.0.1:7001")).await?;
    ensure!(node.read_state(|s| s.node(1).is_some()).await?, "the node's record is there");

    // Running: nothing to say.
    let quiet = tokio::time::timeout(Duration::from_millis(300), node.stopped_by_fault()).await;
    ensure!(quiet.is_err(), "a healthy replica reported it had stopped: {quiet:?}");

    store.full.store(true, Ordering::SeqCst);
    let refused = tokio::time::timeout(Duration::from_secs(5), node.propose(register(2, "127.0.0.1:7002"))).await;
    ensure!(!matches!(refused, Ok(Ok(_))), "a proposal was acknowledged with its log unwritable: {refused:?}");
    let why = tokio::time::timeout(Duration::from_secs(5), node.stopped_by_fault()).await?;
    ensure!(why.to_lowercase().contains("space"), "the reason names the store's error: {why}");

    // A new incarnation on the same store, with space again, has what was acknowledged.
    drop(node);
    store.full.store(false, Ordering::SeqCst);
    let again =
        MetaNode::start(1, NodeAddr::new("127.0.0.1:7001"), Arc::new(store), test_config(), router.network(1)).await?;
    router.register(&again);
    wait_leader(&[&again], Duration::from_secs(5)).await?;
    let (before, after) = again.read_state(|s| (s.node(1).is_some(), s.node(2).is_some())).await?;
    ensure!(before, "the acknowledged record survives");
    ensure!(!after, "the refused proposal left nothing");
    again.shutdown().await?;
    Ok(())
}
