//! [`ConcatExec`]: the partitions of several inputs, one after the other, as one partition.
//!
//! A table with cold files scans its hot chunks and its Parquet files as two inputs. DataFusion's `UnionExec` keeps
//! their partitions apart, and the plan then merges them by spawning a task per partition; when the session asks for
//! one partition (`target_partitions = 1`, as the simulation does: its runtime cannot host tokio tasks), the scan
//! reads its inputs in turn instead, within the task that polls it.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, ReplaceChildrenOptions};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

/// Every partition of every input, in order, as a single partition.
#[derive(Debug)]
pub(crate) struct ConcatExec {
    inputs: Vec<Arc<dyn ExecutionPlan>>,
    properties: Arc<PlanProperties>,
}

impl ConcatExec {
    /// Concatenates `inputs`, which must share one schema.
    ///
    /// # Errors
    ///
    /// When there is no input or the inputs' schemas differ.
    pub(crate) fn try_new(inputs: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Self> {
        let schema: SchemaRef = inputs
            .first()
            .map(|i| i.schema())
            .ok_or_else(|| DataFusionError::Internal("ConcatExec needs an input".into()))?;
        if let Some(other) = inputs.iter().find(|i| i.schema().fields() != schema.fields()) {
            return Err(DataFusionError::Internal(format!(
                "ConcatExec inputs differ: {:?} and {:?}",
                schema.fields(),
                other.schema().fields()
            )));
        }
        let bounded = inputs.iter().all(|i| matches!(i.properties().boundedness, Boundedness::Bounded));
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            if bounded { Boundedness::Bounded } else { Boundedness::Unbounded { requires_infinite_memory: false } },
        ));
        Ok(Self { inputs, properties })
    }
}

impl DisplayAs for ConcatExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConcatExec: inputs={}", self.inputs.len())
    }
}

impl ExecutionPlan for ConcatExec {
    fn name(&self) -> &'static str {
        "ConcatExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.inputs.iter().collect()
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false; self.inputs.len()]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(ConcatExec::try_new(children)?))
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(ConcatExec::try_new(children)?))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!("ConcatExec has one partition, asked for {partition}")));
        }
        // Each input partition starts when the one before it is done.
        let parts: Vec<(Arc<dyn ExecutionPlan>, usize)> = self
            .inputs
            .iter()
            .flat_map(|input| {
                let n = input.properties().partitioning.partition_count();
                (0..n).map(move |p| (Arc::clone(input), p))
            })
            .collect();
        let stream =
            futures::stream::iter(parts).map(move |(input, p)| input.execute(p, Arc::clone(&context))).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), stream)))
    }
}
