//! Where the tasks of a distributed plan run: the handlers the distributed planner asks, on the planning node.
//!
//! - How many tasks a leaf wants: a [`ShardsScanExec`] one per node leading its shards; any other leaf (a scan of
//!   this node's own data: an external table's files, a system table) stays in one task, on this node.
//! - How a leaf is split into that many tasks ([`ShardsScanExec::split`]).
//! - Which node runs each task: a stage's shard scan tasks on the nodes leading their shards, a stage holding a leaf
//!   that reads this node's own data here (such leaves are never sent to other nodes).

use datafusion::common::Result as DfResult;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion_distributed::{
    DesiredTaskCountEvent, DesiredTaskCountEventResponse, NetworkBoundaryExt, RouteTasksEvent, RouteTasksEventResponse,
    ScaleUpLeafNodeEvent, ScaleUpLeafNodeEventResponse, Stage,
};
use std::sync::Arc;
use url::Url;

use super::leaf::ShardsScanExec;

/// The tasks a plan node wants (leaves only; the planner derives the rest).
pub(crate) fn desired_tasks(event: DesiredTaskCountEvent<'_>) -> Option<DfResult<DesiredTaskCountEventResponse>> {
    if let Some(scan) = event.plan.downcast_ref::<ShardsScanExec>() {
        let mut nodes: Vec<u64> = scan.spec().tasks.iter().flat_map(|t| t.parts.iter().map(|p| p.node)).collect();
        nodes.sort_unstable();
        nodes.dedup();
        return Some(Ok(DesiredTaskCountEventResponse::desired(nodes.len().max(1))));
    }
    // A leaf that reads this node's own data (or nothing) cannot run elsewhere.
    event.plan.children().is_empty().then(|| Ok(DesiredTaskCountEventResponse::maximum(1)))
}

/// Splits a shard scan into the stage's tasks; every other leaf stays as it is (its stage has one task, and the
/// library's own splitting of file scans would bypass DataFusion's checks of which files may be read in ranges).
pub(crate) fn scale_up(event: ScaleUpLeafNodeEvent<'_>) -> Option<DfResult<ScaleUpLeafNodeEventResponse>> {
    let plan = match event.plan.downcast_ref::<ShardsScanExec>() {
        Some(scan) => Arc::new(scan.split(event.task_count)),
        None => Arc::clone(event.plan),
    };
    Some(Ok(ScaleUpLeafNodeEventResponse::new(plan)))
}

/// Runs each task of a stage scanning shards on the node leading them, a stage holding a leaf that reads this node's
/// own data (a hot or cold scan of a table not read through shards, a system table) on this node, and the tasks of a
/// stage fed by other stages over the nodes running those; a single task above other stages is left to the planner's
/// own routing (this node, or the one node its input runs on).
pub(crate) fn route(event: RouteTasksEvent<'_>) -> Option<DfResult<RouteTasksEventResponse>> {
    let mut shards = None;
    let mut local = false;
    let mut below: Vec<Url> = Vec::new();
    let walked = event.plan.apply(|plan| {
        if let Some(boundary) = plan.as_network_boundary() {
            if let Stage::Remote(stage) = boundary.input_stage() {
                below.extend(stage.workers.iter().cloned());
            }
            return Ok(TreeNodeRecursion::Jump);
        }
        if let Some(scan) = plan.downcast_ref::<ShardsScanExec>() {
            shards.get_or_insert_with(|| scan.task_nodes());
        } else if plan.children().is_empty() {
            local = true;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if let Err(e) = walked {
        return Some(Err(e));
    }
    if local {
        let Some(here) = event.task_ctx.session_config().get_extension::<super::LocalUrl>() else {
            return Some(Err(datafusion::common::DataFusionError::Internal(
                "a stage reading this node's own data, and this node's worker address is not known".into(),
            )));
        };
        return Some(Ok(RouteTasksEventResponse::new(vec![here.0.clone(); event.task_count])));
    }
    if let Some(nodes) = shards.filter(|n| n.len() == event.task_count) {
        let urls: DfResult<Vec<Url>> = nodes.iter().map(|(_, addr)| super::url_of(addr)).collect();
        return Some(urls.map(RouteTasksEventResponse::new));
    }
    // A stage fed by other stages runs on the nodes that run those (they were serving when the statement was
    // planned), not on any node of the registry: a node down but not yet marked down is not picked for it.
    below.sort();
    below.dedup();
    if below.is_empty() || event.task_count <= 1 {
        return None;
    }
    Some(Ok(RouteTasksEventResponse::new((0..event.task_count).map(|i| below[i % below.len()].clone()).collect())))
}
