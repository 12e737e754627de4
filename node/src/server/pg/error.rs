//! The one place where an engine [`Error`] becomes a PostgreSQL `ErrorResponse`.
//!
//! [`to_pg_error`] sets the SQLSTATE from [`Error::sqlstate`], severity `ERROR`, the message from [`Error::report`]
//! (which names the objects involved and carries the whole source chain), and a hint saying what to do. It also logs
//! the error, because this is where the gateway handles it: client mistakes at `debug`, our own faults at `warn`.
//! It matches every [`ErrorKind`] without a catch-all arm, so a new kind forces a decision here.
//!
//! Errors that are not the engine's (a protocol violation, a `CopyFail` sent by the client) are built with
//! [`protocol_error`] and keep their own SQLSTATE.

use pgwire::error::{ErrorInfo, PgWireError};

use crate::error::{Error, ErrorKind};

/// Maps an engine error to the error pgwire sends, and logs it once.
pub(super) fn to_pg_error(e: &Error) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(e)))
}

/// Builds the `ErrorResponse` fields of an engine error and logs it by whose fault it is.
pub(super) fn error_info(e: &Error) -> ErrorInfo {
    let sqlstate = e.sqlstate();
    let kind = e.kind();
    let hint = match kind {
        ErrorKind::InvalidRequest
        | ErrorKind::NotFound
        | ErrorKind::AlreadyExists
        | ErrorKind::ConstraintViolation
        | ErrorKind::ResourceExhausted => {
            tracing::debug!(sqlstate, ?kind, error = %e.report(), "postgres request rejected");
            None
        }
        ErrorKind::Unsupported => {
            tracing::debug!(sqlstate, ?kind, error = %e.report(), "postgres request uses an unsupported feature");
            None
        }
        ErrorKind::Unauthenticated | ErrorKind::PermissionDenied => {
            tracing::debug!(sqlstate, ?kind, error = %e.report(), "postgres request denied");
            None
        }
        ErrorKind::Unavailable => {
            tracing::info!(sqlstate, ?kind, error = %e.report(), "postgres request refused while unavailable");
            Some("the condition is transient; retry the statement later")
        }
        ErrorKind::OutcomeUnknown => {
            tracing::info!(sqlstate, ?kind, error = %e.report(), "postgres write with an unknown outcome");
            Some("the statement may or may not have taken effect; look before repeating it")
        }
        ErrorKind::Internal => {
            tracing::warn!(sqlstate, ?kind, error = %e.report(), "postgres request failed");
            Some("this is a server-side failure; the server log has the details")
        }
    };
    let mut info = ErrorInfo::new("ERROR".to_owned(), sqlstate.to_owned(), e.report());
    info.hint = hint.map(str::to_owned);
    info
}

/// Builds an error that the wire protocol itself raises (not the engine), with its own SQLSTATE.
pub(super) fn protocol_error(sqlstate: &str, message: impl Into<String>) -> PgWireError {
    let message = message.into();
    tracing::debug!(sqlstate, error = %message, "postgres protocol request rejected");
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".to_owned(), sqlstate.to_owned(), message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_keep_their_sqlstate_and_name_the_object() {
        let info = error_info(&Error::TableNotFound { table: "trades".into() });
        assert_eq!(info.severity, "ERROR");
        assert_eq!(info.code, "42P01");
        assert!(info.message.contains("\"trades\""), "{}", info.message);
        assert_eq!(info.hint, None);

        let info = error_info(&Error::SqlSyntax { message: "Expected: an expression".into() });
        assert_eq!(info.code, "42601");
    }

    #[test]
    fn internal_errors_carry_a_hint_and_the_source_chain() {
        let e = Error::Io { operation: "read chunk".into(), source: std::io::Error::other("disk on fire") };
        let info = error_info(&e);
        assert_eq!(info.code, "58030");
        assert!(info.message.contains("disk on fire"), "{}", info.message);
        assert!(info.hint.is_some());
    }
}
