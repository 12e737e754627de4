//! [`LeafCodec`]: how a [`ShardsScanExec`] travels to the node a task runs on. Everything else in a task's plan is
//! DataFusion's or the distributed library's own, encoded by their codecs.

use std::sync::Arc;

use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

use super::EngineSlot;
use super::leaf::{ScanSpec, ShardsScanExec};

/// Encodes a [`ShardsScanExec`] as its [`ScanSpec`] in JSON; a decoded one runs on this node's engine.
#[derive(Debug, Clone)]
pub(crate) struct LeafCodec {
    engine: EngineSlot,
}

impl LeafCodec {
    pub(crate) fn new(engine: EngineSlot) -> Self {
        Self { engine }
    }
}

fn codec_error(what: String) -> DataFusionError {
    DataFusionError::Internal(format!("the shard scan of a distributed plan: {what}"))
}

impl PhysicalExtensionCodec for LeafCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !inputs.is_empty() {
            return Err(codec_error(format!("a leaf with {} inputs", inputs.len())));
        }
        let spec: ScanSpec = serde_json::from_slice(buf).map_err(|e| codec_error(e.to_string()))?;
        Ok(Arc::new(ShardsScanExec::new(spec, self.engine.get())))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let Some(scan) = node.downcast_ref::<ShardsScanExec>() else {
            return Err(codec_error(format!("cannot encode {}", node.name())));
        };
        serde_json::to_writer(buf, scan.spec()).map_err(|e| codec_error(e.to_string()))
    }
}
