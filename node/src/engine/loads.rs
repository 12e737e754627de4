//! The hot data of the shards this node leads, reported to the metadata group
//! ([`MetaCommand::ReportShardLoads`]): what rebalancing weighs, and what `system.shards` shows for shards led
//! elsewhere.
//!
//! A shard's hot data is its chunks above its cold mark (those below are in cold files already). A report goes out
//! every `[cluster] load_report_interval` with the shards whose load moved by a twentieth or more since the one the
//! metadata holds, so a steady cluster proposes nothing.

use quiver_meta::{MetaCommand, ShardId, ShardLoad};

use super::Engine;
use crate::cold::ColdState;
use crate::table::ShardReplica;

/// The hot rows and bytes of a replica: its chunks above its cold mark.
pub(crate) fn hot_load(replica: &ShardReplica) -> ShardLoad {
    let through = match replica.cold() {
        ColdState::Ready(view) => view.hot_through,
        ColdState::Unavailable(_) => 0,
    };
    let chunks = replica.version();
    let hot = chunks.iter().filter(|c| c.seq > through);
    ShardLoad { hot_rows: hot.clone().map(|c| c.meta.rows).sum(), hot_bytes: hot.map(|c| c.meta.data_bytes).sum() }
}

/// Whether `now` differs from `reported` enough to report: by a twentieth of the larger, or from nothing.
fn moved(reported: ShardLoad, now: ShardLoad) -> bool {
    let far = |a: u64, b: u64| a.abs_diff(b) > a.max(b) / 20;
    far(reported.hot_bytes, now.hot_bytes) || far(reported.hot_rows, now.hot_rows)
}

impl Engine {
    /// Reports the loads of the shards this node leads that moved since their last report; returns how many.
    pub async fn report_shard_loads(&self) -> crate::error::Result<usize> {
        let me = self.node_id;
        let mut loads: Vec<(ShardId, ShardLoad)> = Vec::new();
        for replica in self.replicas() {
            let shard = replica.shard_id();
            let Some(reported) = self.meta.read_local(|s| s.shard(shard).filter(|r| r.primary == me).map(|r| r.load))
            else {
                continue;
            };
            let now = hot_load(&replica);
            if moved(reported, now) {
                loads.push((shard, now));
            }
        }
        if loads.is_empty() {
            return Ok(0);
        }
        let count = loads.len();
        self.meta.propose(MetaCommand::ReportShardLoads { node_id: me, loads }).await?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_is_reported_when_it_moved_by_a_twentieth_or_from_nothing() {
        let load = |hot_bytes, hot_rows| ShardLoad { hot_bytes, hot_rows };
        assert!(!moved(load(0, 0), load(0, 0)));
        assert!(moved(load(0, 0), load(10, 1)));
        assert!(!moved(load(1000, 100), load(1040, 101)));
        assert!(moved(load(1000, 100), load(1100, 110)));
        assert!(moved(load(1000, 100), load(0, 0)), "a shard emptied");
    }
}
