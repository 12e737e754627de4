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
use crate::query::bounds::ColumnBounds;
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

#[cfg_attr(madsim, allow(dead_code))]
/// About how large a shard is, for planning (join order, which side of a join to build or broadcast): rows and bytes
/// of its hot chunks (as this node's replica holds them when it holds any, else as its primary last reported them) and
/// of its cold files. `None` when nothing is known (no rows here, none reported, no files): an empty shard looks the
/// same.
pub(crate) fn shard_size(replica: &ShardReplica, reported: Option<ShardLoad>) -> Option<ShardSize> {
    let local = hot_load(replica);
    let hot = if local.hot_rows > 0 { local } else { reported.unwrap_or_default() };
    let (cold_rows, cold_bytes) = match replica.cold() {
        ColdState::Ready(view) => view.files.iter().fold((0, 0), |(r, b), f| (r + f.rows, b + f.bytes)),
        ColdState::Unavailable(_) => (0, 0),
    };
    let size = ShardSize { rows: hot.hot_rows + cold_rows, bytes: hot.hot_bytes + cold_bytes };
    (size.rows > 0).then_some(size)
}

#[cfg_attr(madsim, allow(dead_code))]
/// The bounds of `columns` in this node's copy of a shard (see [`crate::query::bounds`]): `None` when it holds no hot
/// chunks of it here, or when part of the shard is in cold files (their bounds are not kept here).
pub(crate) fn shard_bounds(replica: &ShardReplica, columns: &[usize]) -> Option<ColumnBounds> {
    let through = match replica.cold() {
        ColdState::Ready(view) if view.files.is_empty() => view.hot_through,
        _ => return None,
    };
    let chunks = replica.version();
    ColumnBounds::of_chunks(chunks.iter().filter(|c| c.seq > through).map(|c| &c.meta), columns)
}

#[cfg_attr(madsim, allow(dead_code))]
/// Rows and bytes of a shard (see [`shard_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ShardSize {
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
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
