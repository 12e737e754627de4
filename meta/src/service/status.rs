//! The gRPC boundary's error mapping: [`status_from_error`] turns a [`ClusterError`] into a [`tonic::Status`], and
//! [`error_from_status`] reads such a status back on the calling side.
//!
//! Every status we produce carries a stable numeric code (`quiver-error-code`) and a retry hint
//! (`quiver-retryable`). A not-leader status also carries the leader's id and address (`quiver-leader-id`,
//! `quiver-leader-addr`), and every status the replying node's id (`quiver-node-id`) where the error names it.
//! Numeric codes are part of the wire contract: never renumber, only add.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::error::ClusterError;

/// The metadata key of the stable numeric error code.
pub(crate) const ERROR_CODE: &str = "quiver-error-code";
/// The metadata key of the retry hint.
pub(crate) const RETRYABLE: &str = "quiver-retryable";
/// The metadata key of the leader's id.
pub(crate) const LEADER_ID: &str = "quiver-leader-id";
/// The metadata key of the leader's address.
pub(crate) const LEADER_ADDR: &str = "quiver-leader-addr";
/// The metadata key of the replying node's id.
pub(crate) const NODE_ID: &str = "quiver-node-id";

/// The numeric code of [`ClusterError::NotLeader`].
pub(crate) const CODE_NOT_LEADER: u32 = 1001;
/// The numeric code of [`ClusterError::LeaderUnknown`].
pub(crate) const CODE_LEADER_UNKNOWN: u32 = 1002;

/// The numeric code of [`ClusterError::InvalidMembershipChange`].
pub(crate) const CODE_INVALID_MEMBERSHIP_CHANGE: u32 = 1006;
/// The numeric code of [`ClusterError::JoinRefused`].
pub(crate) const CODE_JOIN_REFUSED: u32 = 1013;

/// How loudly an error is logged where it is turned into a status: by whose fault it is.
enum Level {
    /// Expected in normal operation (leader changes) or the caller's mistake.
    Debug,
    /// Worth noticing: the cluster is degraded.
    Warn,
    /// Our own fault.
    Error,
}

/// Maps an error of this node to the status returned to a gRPC caller, logging it at a level chosen by whose fault
/// it is. This is the only place where that mapping happens.
pub(crate) fn status_from_error(error: &ClusterError) -> Status {
    // (gRPC code, stable numeric code, retryable, log level)
    let (code, numeric, retryable, level) = match error {
        ClusterError::NotLeader { .. } => (Code::Unavailable, CODE_NOT_LEADER, true, Level::Debug),
        ClusterError::LeaderUnknown { .. } => (Code::Unavailable, CODE_LEADER_UNKNOWN, true, Level::Debug),
        ClusterError::NoQuorum { .. } => (Code::Unavailable, 1003, true, Level::Warn),
        ClusterError::Timeout { .. } => (Code::DeadlineExceeded, 1004, true, Level::Warn),
        ClusterError::MembershipChangeInProgress { .. } => (Code::Unavailable, 1005, true, Level::Debug),
        ClusterError::InvalidMembershipChange { .. } => {
            (Code::FailedPrecondition, CODE_INVALID_MEMBERSHIP_CHANGE, false, Level::Debug)
        }
        ClusterError::AlreadyBootstrapped { .. } => (Code::AlreadyExists, 1007, false, Level::Debug),
        ClusterError::Unreachable { .. } => (Code::Unavailable, 1008, true, Level::Warn),
        ClusterError::Remote { retryable, .. } => {
            let code = if *retryable { Code::Unavailable } else { Code::Internal };
            (code, 1009, *retryable, Level::Warn)
        }
        // This node stopped; another replica may serve the call.
        ClusterError::Stopped { .. } => (Code::Unavailable, 1010, true, Level::Error),
        // The caller sent bytes we cannot decode: its mistake (or a version skew).
        ClusterError::Decode { .. } => (Code::InvalidArgument, 1011, false, Level::Debug),
        ClusterError::InvalidConfig { .. } => (Code::Internal, 1012, false, Level::Error),
        ClusterError::JoinRefused { .. } => (Code::FailedPrecondition, CODE_JOIN_REFUSED, false, Level::Warn),
    };
    let chain = error_chain(error);
    match level {
        Level::Debug => tracing::debug!(code = numeric, error = %chain, "metadata call failed"),
        Level::Warn => tracing::warn!(code = numeric, error = %chain, "metadata call failed"),
        Level::Error => tracing::error!(code = numeric, error = %chain, "metadata call failed"),
    }
    let mut status = Status::new(code, error.to_string());
    let metadata = status.metadata_mut();
    metadata.insert(ERROR_CODE, MetadataValue::from(numeric));
    metadata.insert(RETRYABLE, MetadataValue::from_static(if retryable { "true" } else { "false" }));
    match error {
        ClusterError::NotLeader { node_id, leader_id, leader_addr } => {
            metadata.insert(NODE_ID, MetadataValue::from(*node_id));
            metadata.insert(LEADER_ID, MetadataValue::from(*leader_id));
            // An address that is not a valid header value is left out; the caller then treats the leader as unknown.
            if let Ok(addr) = leader_addr.parse() {
                metadata.insert(LEADER_ADDR, addr);
            }
        }
        ClusterError::LeaderUnknown { node_id } => {
            metadata.insert(NODE_ID, MetadataValue::from(*node_id));
        }
        _ => {}
    }
    status
}

/// Reads a status returned by the metadata service at `addr` back into a [`ClusterError`].
///
/// A not-leader or leader-unknown status becomes that variant again, so the caller can retry on the leader; every
/// other status, including transport failures that carry no code, becomes [`ClusterError::Remote`].
pub(crate) fn error_from_status(addr: &str, status: &Status) -> ClusterError {
    let metadata = status.metadata();
    let number = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let code = number(ERROR_CODE).and_then(|c| u32::try_from(c).ok()).unwrap_or(0);
    let node_id = number(NODE_ID).unwrap_or(0);
    let leader_addr = metadata.get(LEADER_ADDR).and_then(|v| v.to_str().ok()).map(str::to_string);
    match (code, number(LEADER_ID), leader_addr) {
        (CODE_NOT_LEADER, Some(leader_id), Some(leader_addr)) => {
            ClusterError::NotLeader { node_id, leader_id, leader_addr }
        }
        (CODE_NOT_LEADER | CODE_LEADER_UNKNOWN, _, _) => ClusterError::LeaderUnknown { node_id },
        // Refusals a caller acts on (a CLI prints them as they are) keep their variant.
        (CODE_INVALID_MEMBERSHIP_CHANGE, _, _) => {
            ClusterError::InvalidMembershipChange { detail: strip(status.message(), "invalid membership change: ") }
        }
        (CODE_JOIN_REFUSED, _, _) => ClusterError::JoinRefused { detail: strip(status.message(), "join refused: ") },
        _ => {
            let retryable = match metadata.get(RETRYABLE).and_then(|v| v.to_str().ok()) {
                Some(hint) => hint == "true",
                // No hint: the status came from the transport, not from our service.
                None => status.code() == Code::Unavailable,
            };
            ClusterError::Remote { addr: addr.to_string(), code, retryable, message: status.message().to_string() }
        }
    }
}

fn strip(message: &str, prefix: &str) -> String {
    message.strip_prefix(prefix).unwrap_or(message).to_string()
}

/// Formats an error with its whole source chain on one line (a transport error says what failed only in its
/// sources), for logs and messages.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_round_trips_through_a_status() {
        let error = ClusterError::NotLeader { node_id: 2, leader_id: 1, leader_addr: "127.0.0.1:7001".into() };
        let status = status_from_error(&error);
        assert_eq!(status.code(), Code::Unavailable);
        let back = error_from_status("127.0.0.1:7002", &status);
        assert!(
            matches!(back, ClusterError::NotLeader { node_id: 2, leader_id: 1, ref leader_addr } if leader_addr == "127.0.0.1:7001"),
            "{back:?}"
        );
    }

    #[test]
    fn other_errors_keep_code_and_retry_hint() {
        let error = ClusterError::Timeout { operation: "propose", node_id: 1, timeout_ms: 5 };
        let status = status_from_error(&error);
        assert_eq!(status.code(), Code::DeadlineExceeded);
        match error_from_status("a:1", &status) {
            ClusterError::Remote { code, retryable, message, .. } => {
                assert_eq!((code, retryable), (1004, true));
                assert!(message.contains("propose"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let transport = error_from_status("a:1", &Status::unavailable("connection reset"));
        assert!(matches!(transport, ClusterError::Remote { code: 0, retryable: true, .. }), "{transport:?}");
    }
}
