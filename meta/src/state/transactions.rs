//! The decisions of statements that span shards: a coordinator prepares each shard's part, then records the
//! statement's outcome here, in the metadata group, before it tells any shard; a shard holding a part whose
//! coordinator vanished asks here. The first decision recorded for a transaction stands: a coordinator that decides
//! to commit and a shard's primary that gives up waiting and decides to abort race through the Raft log, and both
//! then act on the one that landed first.
//!
//! A decision is kept until every part is resolved (`MetaCommand::ForgetTransaction`), or for
//! [`DECISION_KEPT_MS`] after it was made, measured by the clocks of later deciders (the state machine has no clock
//! of its own), so a coordinator lost for good leaves no record forever.

use serde::{Deserialize, Serialize};

/// How long a decision nobody forgot is kept after it was made: a day.
pub const DECISION_KEPT_MS: u64 = 24 * 60 * 60 * 1000;

/// The recorded outcome of one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Commit (every part becomes visible) or abort (every part is discarded).
    pub commit: bool,
    /// When it was decided, by the decider's clock (unix ms).
    pub at_ms: u64,
    /// The metadata version that recorded it.
    pub version: u64,
}
