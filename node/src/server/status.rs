//! How failures become gRPC statuses, in every gRPC service of a node (Flight SQL and the internal data service).
//!
//! Two kinds of failure leave a service:
//!
//! - engine errors ([`Error`]), mapped by [`status_from`], the one function that decides a status code for each
//!   [`ErrorKind`];
//! - requests that break the protocol before they reach the engine (an undecodable ticket or Arrow IPC payload, an
//!   unknown command or prepared-statement handle), built by [`malformed`] and [`rejected`].
//!
//! Every status carries two metadata entries so that clients can act without parsing messages: `x-quiver-sqlstate`
//! (the PostgreSQL SQLSTATE, the same code the PostgreSQL gateway sends) and `x-quiver-retryable` (`true` when the
//! same request may succeed later). Each failure is logged here, where it is handled: client mistakes at `debug`, our
//! own faults at `warn`, always with the whole source chain.

#[cfg(not(madsim))]
use arrow_flight::error::FlightError;
use tonic::metadata::AsciiMetadataValue;
use tonic::{Code, Status};

use crate::error::{Error, ErrorKind};

/// Metadata key of the PostgreSQL SQLSTATE that describes a failure.
pub(crate) const SQLSTATE_KEY: &str = "x-quiver-sqlstate";
/// Metadata key of the retry hint: `true` when the same request may succeed later.
pub(crate) const RETRYABLE_KEY: &str = "x-quiver-retryable";
/// Metadata key present (`true`) when a shard refused the request before it had any effect
/// ([`Error::ShardUnavailable`]): a node that routed it may send it again once it has the shard's new configuration.
pub(crate) const REFUSED_KEY: &str = "x-quiver-refused";
/// SQLSTATE `protocol_violation`, for requests that break the protocol.
const PROTOCOL_VIOLATION: &str = "08P01";

/// Whose fault a failure is, which decides its log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blame {
    /// The request was wrong; the client must change it.
    Client,
    /// A transient condition (the engine is shutting down); nobody has to act.
    Transient,
    /// Our own fault or the storage's; the operator should look.
    Server,
}

/// Maps an engine error to the status sent to the client, and logs it.
///
/// The match names every [`ErrorKind`] so that a new kind cannot compile until someone decides its code, retry hint
/// and log level.
pub(crate) fn status_from(e: &Error) -> Status {
    let (code, retryable, blame) = match e.kind() {
        ErrorKind::InvalidRequest => (Code::InvalidArgument, false, Blame::Client),
        ErrorKind::NotFound => (Code::NotFound, false, Blame::Client),
        ErrorKind::AlreadyExists => (Code::AlreadyExists, false, Blame::Client),
        ErrorKind::ConstraintViolation => (Code::FailedPrecondition, false, Blame::Client),
        // The limits are configured sizes: the same request exceeds them again.
        ErrorKind::ResourceExhausted => (Code::ResourceExhausted, false, Blame::Client),
        ErrorKind::Unsupported => (Code::Unimplemented, false, Blame::Client),
        ErrorKind::Unauthenticated => (Code::Unauthenticated, false, Blame::Client),
        ErrorKind::PermissionDenied => (Code::PermissionDenied, false, Blame::Client),
        ErrorKind::Unavailable => (Code::Unavailable, true, Blame::Transient),
        // Repeating the request may apply it twice.
        ErrorKind::OutcomeUnknown => (Code::Unknown, false, Blame::Transient),
        // The request did not take effect, but repeating it blindly against a failing store helps nobody.
        ErrorKind::Internal => (Code::Internal, false, Blame::Server),
    };
    if matches!(e.kind(), ErrorKind::Unauthenticated | ErrorKind::PermissionDenied) {
        tracing::debug!(error = %e.report(), "request denied");
    }
    let mut status = build(code, e.report(), e.sqlstate(), retryable, blame);
    if matches!(e, Error::ShardUnavailable { .. }) {
        status.metadata_mut().insert(REFUSED_KEY, AsciiMetadataValue::from_static("true"));
    }
    status
}

/// Returns the status for a request that breaks the protocol; `what` says what was wrong with it.
pub(crate) fn malformed(what: impl Into<String>) -> Status {
    build(Code::InvalidArgument, what.into(), PROTOCOL_VIOLATION, false, Blame::Client)
}

/// Returns a status for a well-formed request the service refuses before it reaches the engine (for example because a
/// limit of the service was reached).
#[cfg_attr(madsim, allow(dead_code))]
pub(crate) fn rejected(code: Code, sqlstate: &'static str, message: String) -> Status {
    build(code, message, sqlstate, false, Blame::Client)
}

/// Maps a failure to encode a response (the engine's errors arrive already mapped, inside [`FlightError::Tonic`]).
#[cfg(not(madsim))]
pub(crate) fn encode_failure(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(status) => *status,
        FlightError::Arrow(e) => status_from(&Error::Arrow(e)),
        other => status_from(&Error::Internal(format!("encoding the response failed: {other}"))),
    }
}

/// Maps a failure to read Arrow data a client sent in a DoPut stream.
///
/// A transport status (the client cancelled, the connection broke) passes through unchanged; anything else means the
/// client's bytes were not valid Arrow IPC, which is the client's mistake.
#[cfg(not(madsim))]
pub(crate) fn decode_failure(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(status) => *status,
        other => malformed(format!("the DoPut stream does not hold valid Arrow IPC data: {other}")),
    }
}

fn build(code: Code, message: String, sqlstate: &'static str, retryable: bool, blame: Blame) -> Status {
    match blame {
        Blame::Client => tracing::debug!(?code, sqlstate, error = %message, "gRPC request refused"),
        Blame::Transient => tracing::info!(?code, sqlstate, error = %message, "gRPC request failed"),
        Blame::Server => tracing::warn!(?code, sqlstate, error = %message, "gRPC request failed"),
    }
    let mut status = Status::new(code, message);
    let metadata = status.metadata_mut();
    // SQLSTATEs are five ASCII letters and digits, so they are always valid metadata values.
    if let Ok(value) = AsciiMetadataValue::try_from(sqlstate) {
        metadata.insert(SQLSTATE_KEY, value);
    }
    metadata.insert(RETRYABLE_KEY, AsciiMetadataValue::from_static(if retryable { "true" } else { "false" }));
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(status: &Status, key: &str) -> String {
        status.metadata().get(key).expect("metadata present").to_str().expect("ascii").to_string()
    }

    #[test]
    fn only_a_shards_refusal_is_sent_again_by_a_router() {
        use crate::engine::route::error_from_status;
        let shard = quiver_meta::ShardId(4);
        let refused = status_from(&Error::ShardUnavailable { shard: 4, detail: "at epoch 3, the shard at 4".into() });
        assert_eq!(metadata(&refused, REFUSED_KEY), "true");
        assert!(matches!(error_from_status(2, shard, &refused), Error::ShardUnavailable { shard: 4, .. }));
        // Unavailable for another reason (the cold store, the metadata group mid-request) may have taken effect.
        let cold = status_from(&Error::ColdUnavailable { detail: "the bucket does not answer".into() });
        assert_eq!(cold.code(), Code::Unavailable);
        assert!(cold.metadata().get(REFUSED_KEY).is_none());
        assert!(matches!(error_from_status(2, shard, &cold), Error::OutcomeUnknown { .. }));
        // A status no engine sent: the connection failed, maybe after the request arrived.
        let transport = Status::unavailable("connection reset");
        assert!(matches!(error_from_status(2, shard, &transport), Error::OutcomeUnknown { .. }));
        let bad = status_from(&Error::Plan { message: "no column z".into() });
        assert!(matches!(error_from_status(2, shard, &bad), Error::Plan { .. }));
    }

    #[test]
    fn status_from_maps_kinds_to_codes_with_sqlstate_and_retry_hint() {
        let cases = [
            (Error::SqlSyntax { message: "bad".into() }, Code::InvalidArgument, "42601", "false"),
            (Error::TableNotFound { table: "t".into() }, Code::NotFound, "42P01", "false"),
            (Error::TableAlreadyExists { table: "t".into() }, Code::AlreadyExists, "42P07", "false"),
            (
                Error::NotNullViolation { table: "t".into(), column: "c".into() },
                Code::FailedPrecondition,
                "23502",
                "false",
            ),
            (Error::TooLarge { what: "x", actual: 2, limit: 1 }, Code::ResourceExhausted, "54000", "false"),
            (Error::Unsupported { what: "x".into() }, Code::Unimplemented, "0A000", "false"),
            (Error::ShuttingDown, Code::Unavailable, "57P01", "true"),
            (Error::OutcomeUnknown { shard: 1, detail: "x".into() }, Code::Unknown, "40003", "false"),
            (Error::Internal("x".into()), Code::Internal, "XX000", "false"),
        ];
        for (error, code, sqlstate, retryable) in cases {
            let status = status_from(&error);
            assert_eq!(status.code(), code, "{error:?}");
            assert_eq!(metadata(&status, SQLSTATE_KEY), sqlstate, "{error:?}");
            assert_eq!(metadata(&status, RETRYABLE_KEY), retryable, "{error:?}");
        }
    }

    #[test]
    fn status_from_message_carries_the_source_chain() {
        let error = Error::Storage { operation: "commit", source: "disk on fire".into() };
        let status = status_from(&error);
        assert!(status.message().contains("commit"), "{}", status.message());
        assert!(status.message().contains("disk on fire"), "{}", status.message());
    }

    #[test]
    fn malformed_is_invalid_argument_with_protocol_violation() {
        let status = malformed("unknown ticket");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "unknown ticket");
        assert_eq!(metadata(&status, SQLSTATE_KEY), PROTOCOL_VIOLATION);
    }
}
