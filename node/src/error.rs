//! Errors of the node crate.
//!
//! [`Error`] is the rich enum that says what happened, naming the objects involved. [`ErrorKind`] is the small public
//! classification that tells a caller what to do about it: fix the request, retry, or give up. Each frontend (Flight
//! SQL, the PostgreSQL wire, the embedded API) maps errors in exactly one function, matching every variant, so that a
//! new variant forces a decision about its status code.

use std::io;

/// The result type of the node crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a caller should do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong (bad SQL, unknown table, type mismatch): fix it; retrying changes nothing.
    InvalidRequest,
    /// The named object does not exist.
    NotFound,
    /// The named object already exists.
    AlreadyExists,
    /// A constraint of the table was violated (for example a NULL in a NOT NULL column).
    ConstraintViolation,
    /// The request was larger than a configured limit.
    ResourceExhausted,
    /// The feature is not supported (yet).
    Unsupported,
    /// The caller is not who it claims, or did not say: authenticate (again).
    Unauthenticated,
    /// The caller lacks a privilege the request needs: have it granted.
    PermissionDenied,
    /// A transient condition: retrying later may succeed.
    Unavailable,
    /// The request may or may not have taken effect (a write reached some copies of its data before a failure):
    /// look before repeating it.
    OutcomeUnknown,
    /// Our own fault or a storage failure: the request did not take effect, and the operator should look at the logs.
    Internal,
}

/// An error of the node crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SQL text could not be parsed.
    #[error("syntax error: {message}")]
    SqlSyntax {
        /// What the parser said.
        message: String,
    },
    /// The statement parsed but could not be planned (unknown column, type mismatch, …).
    #[error("{message}")]
    Plan {
        /// What the planner said.
        message: String,
    },
    /// The statement failed while it ran (cast failure, division by zero, …).
    #[error("{message}")]
    Execution {
        /// What failed.
        message: String,
    },
    /// No table of this name exists.
    #[error("table \"{table}\" does not exist")]
    TableNotFound {
        /// The table's name.
        table: String,
    },
    /// A table of this name exists already.
    #[error("table \"{table}\" already exists")]
    TableAlreadyExists {
        /// The table's name.
        table: String,
    },
    /// The table is an external (read-only) table.
    #[error("table \"{table}\" is external and read-only")]
    TableReadOnly {
        /// The table's name.
        table: String,
    },
    /// Rows do not match the table's schema.
    #[error("schema mismatch for table \"{table}\": {detail}")]
    SchemaMismatch {
        /// The table's name.
        table: String,
        /// What differs.
        detail: String,
    },
    /// A NULL was written to a NOT NULL column.
    #[error("null value in column \"{column}\" of table \"{table}\" violates not-null constraint")]
    NotNullViolation {
        /// The table's name.
        table: String,
        /// The column's name.
        column: String,
    },
    /// The request is larger than a configured limit.
    #[error("{what} of {actual} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        actual: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A user holds as many connections or calls on this node as `limits.connections_per_user` allows.
    #[error("{detail}")]
    TooManyForUser {
        /// Which user, and the limit.
        detail: String,
    },
    /// The statement needed more memory or spill space than the engine may give it.
    #[error("resources exhausted: {message}")]
    ResourcesExhausted {
        /// What ran out, as the engine said.
        message: String,
    },
    /// A parameter of a prepared statement is missing or has the wrong type.
    #[error("parameter error: {detail}")]
    Parameter {
        /// What is wrong.
        detail: String,
    },
    /// The statement is valid SQL that Quiver does not support (yet).
    #[error("not supported: {what}")]
    Unsupported {
        /// What is unsupported.
        what: String,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {detail}")]
    Config {
        /// What is wrong.
        detail: String,
    },
    /// The hot store failed.
    #[error("hot store failure during {operation}")]
    Storage {
        /// What the store was doing.
        operation: &'static str,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Bytes read from the hot store could not be decoded: the store is corrupt or from another version.
    #[error("corrupt data in the hot store at {location}: {detail}")]
    Corrupt {
        /// Where the bad bytes were.
        location: String,
        /// What was wrong with them.
        detail: String,
    },
    /// Arrow failed (encoding, decoding, computing).
    #[error("arrow error")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The metadata layer refused a change.
    #[error("metadata error")]
    Meta(#[from] quiver_meta::Error),
    /// The metadata cluster could not serve the request (no leader, no quorum, a refused join, …).
    #[error("metadata cluster: {0}")]
    Cluster(#[from] quiver_meta::ClusterError),
    /// File or network I/O failed.
    #[error("i/o error during {operation}")]
    Io {
        /// What was being done.
        operation: String,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The cold tier's object store could not be reached or refused a request; hot data is unaffected.
    #[error("cold tier unavailable: {detail}")]
    ColdUnavailable {
        /// Which request failed, where, and why.
        detail: String,
    },
    /// A shard cannot serve a request now: the request does not match the shard's configuration as this node knows
    /// it (an older or newer epoch, a sender that is not the primary, no replica here), or no replica could be
    /// reached. The sender refreshes its view of the shard and retries.
    #[error("shard {shard} unavailable: {detail}")]
    ShardUnavailable {
        /// The shard.
        shard: u64,
        /// What went wrong.
        detail: String,
    },
    /// Another node a statement needed (to run a part of its plan) stopped answering before the statement sent any
    /// result; the statement took no effect and may be sent again.
    #[error("node unavailable: {detail}")]
    NodeUnavailable {
        /// Which node, and what failed.
        detail: String,
    },
    /// A write reached some copies of a shard before a failure, so whether it takes effect depends on which copy leads
    /// the shard next (or it took effect on fewer copies than required). The client must look before repeating it.
    #[error("shard {shard}: the write's outcome is unknown: {detail}")]
    OutcomeUnknown {
        /// The shard.
        shard: u64,
        /// What happened.
        detail: String,
    },
    /// Authentication failed or is missing.
    #[error("{detail}")]
    Unauthenticated {
        /// What failed (never which of user or password was wrong).
        detail: String,
    },
    /// The caller lacks a privilege.
    #[error("permission denied: {detail}")]
    PermissionDenied {
        /// Which privilege on what, or what only a superuser may do.
        detail: String,
    },
    /// An invariant of ours broke.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Returns what a caller should do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::SqlSyntax { .. }
            | Error::Plan { .. }
            | Error::Execution { .. }
            | Error::SchemaMismatch { .. }
            | Error::Parameter { .. }
            | Error::Config { .. }
            | Error::TableReadOnly { .. } => ErrorKind::InvalidRequest,
            Error::TableNotFound { .. } => ErrorKind::NotFound,
            Error::TableAlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::NotNullViolation { .. } => ErrorKind::ConstraintViolation,
            Error::TooLarge { .. } | Error::TooManyForUser { .. } | Error::ResourcesExhausted { .. } => {
                ErrorKind::ResourceExhausted
            }
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Unauthenticated { .. } => ErrorKind::Unauthenticated,
            Error::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            Error::ShuttingDown
            | Error::ColdUnavailable { .. }
            | Error::ShardUnavailable { .. }
            | Error::NodeUnavailable { .. } => ErrorKind::Unavailable,
            Error::OutcomeUnknown { .. } => ErrorKind::OutcomeUnknown,
            Error::Cluster(e) => match e.kind() {
                quiver_meta::ClusterErrorKind::Unavailable => ErrorKind::Unavailable,
                quiver_meta::ClusterErrorKind::InvalidRequest => ErrorKind::InvalidRequest,
                quiver_meta::ClusterErrorKind::Internal => ErrorKind::Internal,
            },
            Error::Meta(e) => match e.kind() {
                quiver_meta::ErrorKind::NotFound => ErrorKind::NotFound,
                quiver_meta::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
                quiver_meta::ErrorKind::InvalidRequest => ErrorKind::InvalidRequest,
                quiver_meta::ErrorKind::Internal => ErrorKind::Internal,
            },
            Error::Arrow(e) => match e {
                arrow::error::ArrowError::CastError(_)
                | arrow::error::ArrowError::ParseError(_)
                | arrow::error::ArrowError::DivideByZero
                | arrow::error::ArrowError::ArithmeticOverflow(_)
                | arrow::error::ArrowError::InvalidArgumentError(_)
                | arrow::error::ArrowError::SchemaError(_) => ErrorKind::InvalidRequest,
                _ => ErrorKind::Internal,
            },
            Error::Storage { .. } | Error::Corrupt { .. } | Error::Io { .. } | Error::Internal(_) => {
                ErrorKind::Internal
            }
        }
    }

    /// Returns the PostgreSQL SQLSTATE code that describes this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Error::SqlSyntax { .. } => "42601",
            Error::Plan { message } => plan_sqlstate(message),
            Error::Execution { message } => execution_sqlstate(message),
            Error::TableNotFound { .. } => "42P01",
            Error::TableAlreadyExists { .. } => "42P07",
            Error::TableReadOnly { .. } => "42809",
            Error::SchemaMismatch { .. } => "42804",
            Error::NotNullViolation { .. } => "23502",
            Error::TooLarge { .. } => "54000",
            // too_many_connections.
            Error::TooManyForUser { .. } => "53300",
            // out_of_memory: DataFusion's memory pool (or its spill space) refused the statement.
            Error::ResourcesExhausted { .. } => "53200",
            Error::Parameter { .. } => "08P01",
            Error::Unsupported { .. } => "0A000",
            Error::Config { .. } => "F0000",
            // invalid_password (SCRAM and tokens: PostgreSQL says 28P01 for both a wrong password and no user).
            Error::Unauthenticated { .. } => "28P01",
            // insufficient_privilege.
            Error::PermissionDenied { .. } => "42501",
            Error::ShuttingDown => "57P01",
            // io_error: an external storage failure.
            Error::ColdUnavailable { .. } => "58030",
            // cannot_connect_now: the shard's configuration is changing; retry once it has settled.
            Error::ShardUnavailable { .. } => "57P03",
            // cannot_connect_now: a node the statement needed is down or cut off; retry once the cluster noticed.
            Error::NodeUnavailable { .. } => "57P03",
            // statement_completion_unknown.
            Error::OutcomeUnknown { .. } => "40003",
            // 57P03 cannot_connect_now: the metadata cluster has no leader or quorum right now; retry later.
            Error::Cluster(e) => match e.kind() {
                quiver_meta::ClusterErrorKind::Unavailable => "57P03",
                quiver_meta::ClusterErrorKind::InvalidRequest => "55000",
                quiver_meta::ClusterErrorKind::Internal => "XX000",
            },
            // undefined_object and duplicate_object: roles are not tables.
            Error::Meta(quiver_meta::Error::RoleNotFound { .. }) => "42704",
            Error::Meta(quiver_meta::Error::RoleAlreadyExists { .. }) => "42710",
            Error::Meta(e) => match e.kind() {
                quiver_meta::ErrorKind::NotFound => "42P01",
                quiver_meta::ErrorKind::AlreadyExists => "42P07",
                quiver_meta::ErrorKind::InvalidRequest => "42000",
                quiver_meta::ErrorKind::Internal => "XX000",
            },
            Error::Arrow(e) => match e {
                arrow::error::ArrowError::CastError(_) | arrow::error::ArrowError::ParseError(_) => "22P02",
                arrow::error::ArrowError::DivideByZero => "22012",
                arrow::error::ArrowError::ArithmeticOverflow(_) => "22003",
                _ => "XX000",
            },
            Error::Storage { .. } | Error::Io { .. } => "58030",
            Error::Corrupt { .. } => "XX001",
            Error::Internal(_) => "XX000",
        }
    }

    /// Builds a storage error from any source.
    pub(crate) fn storage(
        operation: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Storage { operation, source: source.into() }
    }

    /// Builds an I/O error.
    pub(crate) fn io(operation: impl Into<String>, source: io::Error) -> Self {
        Error::Io { operation: operation.into(), source }
    }

    /// Returns the message with every source in the chain, for logs and for clients that show one line.
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            out.push_str(": ");
            out.push_str(&s.to_string());
            source = s.source();
        }
        out
    }
}

/// Picks the SQLSTATE of a planning error from DataFusion's message, which is the only place the detail lives.
fn plan_sqlstate(message: &str) -> &'static str {
    if message.contains("not found") && message.contains("table") {
        "42P01"
    } else if message.contains("No field named") || message.contains("column") && message.contains("not found") {
        "42703"
    } else if message.contains("function") && (message.contains("not found") || message.contains("Invalid function")) {
        "42883"
    } else if message.contains("Cannot cast") || message.contains("type") {
        "42804"
    } else {
        "42000"
    }
}

/// Picks the SQLSTATE of an execution error from its message.
fn execution_sqlstate(message: &str) -> &'static str {
    if message.contains("Divide by zero") {
        "22012"
    } else if message.contains("Cast error")
        || message.contains("Cannot cast")
        || message.to_lowercase().contains("pars")
    {
        "22P02"
    } else if message.contains("Overflow") || message.contains("overflow") {
        "22003"
    } else {
        "XX000"
    }
}

/// Whether a message of the distributed execution library says a worker could not be reached or never got its task.
pub(crate) fn lost_worker_message(message: &str) -> bool {
    message.contains("connecting to Distributed DataFusion worker")
        || message.contains("waiting for the plan to be set by the coordinator")
}

/// Whether an error's text says a peer node, or the connection to it, failed: the library's own messages, and a
/// transport failure as tonic words it, however deeply the library wrapped it (a Flight error, an Arrow error).
pub(crate) fn lost_peer_text(message: &str) -> bool {
    lost_worker_message(message)
        || message.contains("The service is currently unavailable")
        || message.contains("tcp connect error")
        || message.contains("connection reset")
        || message.contains("broken pipe")
        || message.contains("Connection refused")
        // tonic's words for a connection that failed under a request, and the I/O kinds hyper reports inside them.
        || message.contains("transport error")
        || message.contains("ConnectionReset")
        || message.contains("ConnectionAborted")
        || message.contains("BrokenPipe")
        || message.contains("h2 protocol error")
        || message.contains("error reading a body from connection")
}

/// The retryable error of ours that a message carries, when one crossed a boundary that kept only its text: a task of
/// a multi-stage plan failing on another node reaches the planning node as words, not as an [`Error`].
pub(crate) fn retryable_in_text(message: &str) -> Option<Error> {
    const SHARD: &str = "shard ";
    const SHARD_TAIL: &str = " unavailable: ";
    const NODE: &str = "node unavailable: ";
    let mut from = 0;
    while let Some(at) = message[from..].find(SHARD).map(|i| from + i) {
        let digits = &message[at + SHARD.len()..];
        let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
        if end > 0
            && let Some(detail) = digits[end..].strip_prefix(SHARD_TAIL)
            && let Ok(shard) = digits[..end].parse()
        {
            return Some(Error::ShardUnavailable { shard, detail: first_line(detail) });
        }
        from = at + SHARD.len();
    }
    let at = message.find(NODE)?;
    Some(Error::NodeUnavailable { detail: first_line(&message[at + NODE.len()..]) })
}

/// The first line of `text`: what a wrapper appended on lines of its own (DataFusion's plea to report an internal
/// error as its bug) is not the detail.
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

/// Whether a status from another node's worker says the node or the connection to it failed (not the statement).
pub(crate) fn peer_failed(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable | Code::Cancelled | Code::Unknown | Code::DeadlineExceeded | Code::Aborted
    )
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        // A lost peer is retryable however the error reached us.
        match from_datafusion(e) {
            Error::Execution { message: detail } | Error::Internal(detail) if lost_peer_text(&detail) => {
                Error::NodeUnavailable { detail }
            }
            Error::Arrow(e) if lost_peer_text(&e.to_string()) => Error::NodeUnavailable { detail: e.to_string() },
            // A shard that moved, or a node lost, under a task on another node: retryable as it was there.
            Error::Execution { message } => retryable_in_text(&message).unwrap_or(Error::Execution { message }),
            Error::Internal(text) => retryable_in_text(&text).unwrap_or(Error::Internal(text)),
            other => other,
        }
    }
}

/// [`Error`] for a DataFusion error, by its kind.
fn from_datafusion(e: datafusion::error::DataFusionError) -> Error {
    use datafusion::error::DataFusionError as D;
    match e {
        D::SQL(e, _) => Error::SqlSyntax { message: e.to_string() },
        D::Plan(m) => Error::Plan { message: m },
        D::SchemaError(e, _) => Error::Plan { message: e.to_string() },
        D::NotImplemented(m) => Error::Unsupported { what: m },
        D::ArrowError(e, _) => match cold_store_failure(e.as_ref()) {
            Some(cold) => cold,
            None => Error::Arrow(*e),
        },
        D::Execution(m) if lost_worker_message(&m) => Error::NodeUnavailable { detail: m },
        D::Execution(m) => Error::Execution { message: m },
        D::Diagnostic(_, inner) => Error::from(*inner),
        D::ExecutionJoin(e) => Error::Internal(format!("query task failed: {e}")),
        D::IoError(e) => Error::io("query", e),
        D::Context(ctx, inner) => {
            let inner = Error::from(*inner);
            match inner {
                Error::Plan { message } => Error::Plan { message: format!("{ctx}: {message}") },
                Error::Execution { message } => Error::Execution { message: format!("{ctx}: {message}") },
                other => other,
            }
        }
        D::External(e) => match e.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(e) => match e.downcast::<D>() {
                Ok(df) => Error::from(*df),
                Err(e) => match e.downcast::<tonic::Status>() {
                    Ok(status) if peer_failed(&status) => {
                        Error::NodeUnavailable { detail: status.message().to_string() }
                    }
                    Ok(status) => Error::Execution { message: status.message().to_string() },
                    Err(e) => cold_store_failure(e.as_ref()).unwrap_or(Error::Execution { message: e.to_string() }),
                },
            },
        },
        D::Shared(e) => match std::sync::Arc::try_unwrap(e) {
            Ok(inner) => Error::from(inner),
            Err(shared) => Error::Execution { message: shared.to_string() },
        },
        D::Collection(mut errors) => match errors.pop() {
            Some(first) => Error::from(first),
            None => Error::Internal("empty error collection".into()),
        },
        other @ (D::ParquetError(_)
        | D::ObjectStore(_)
        | D::Configuration(_)
        | D::Internal(_)
        | D::ResourcesExhausted(_)
        | D::Substrait(_)
        | D::Ffi(_)) => match other {
            D::Configuration(m) => Error::Plan { message: m },
            D::ResourcesExhausted(m) => Error::ResourcesExhausted { message: m },
            D::ParquetError(e) => {
                cold_store_failure(e.as_ref()).unwrap_or(Error::Execution { message: format!("parquet: {e}") })
            }
            D::ObjectStore(e) => {
                cold_store_failure(e.as_ref()).unwrap_or(Error::Internal(format!("object store: {e}")))
            }
            other => Error::Internal(other.to_string()),
        },
    }
}

/// The cold tier's failure an error carries, found by type along its chain of sources: a request the object store
/// failed or refused (unreachable, timed out, not found under a manifest being replaced, credentials refused) is
/// [`Error::ColdUnavailable`], retryable; a request the store cannot make at all (a path or setting it does not
/// support) is not the store's failure and is left to the caller.
fn cold_store_failure(e: &(dyn std::error::Error + 'static)) -> Option<Error> {
    use object_store::Error as S;
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(store) = e.downcast_ref::<S>() {
            return match store {
                S::NotSupported { .. }
                | S::NotImplemented { .. }
                | S::UnknownConfigurationKey { .. }
                | S::InvalidPath { .. } => None,
                other => Some(Error::ColdUnavailable { detail: other.to_string() }),
            };
        }
        next = e.source();
    }
    None
}

impl From<Error> for datafusion::error::DataFusionError {
    fn from(e: Error) -> Self {
        datafusion::error::DataFusionError::External(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::error::DataFusionError;

    #[test]
    fn a_cold_store_failure_is_retryable_by_its_type_and_exhausted_memory_is_53200() {
        let failed = || object_store::Error::Generic { store: "S3", source: "connection reset by peer".into() };
        for e in [
            DataFusionError::ObjectStore(Box::new(failed())),
            DataFusionError::ParquetError(Box::new(parquet::errors::ParquetError::External(Box::new(failed())))),
            DataFusionError::External(Box::new(failed())),
            DataFusionError::ArrowError(Box::new(arrow::error::ArrowError::ExternalError(Box::new(failed()))), None),
            DataFusionError::Context(
                "reading a cold file".into(),
                Box::new(DataFusionError::ObjectStore(Box::new(failed()))),
            ),
        ] {
            let ours = Error::from(e);
            assert!(matches!(ours, Error::ColdUnavailable { .. }), "{ours:?}");
            assert_eq!((ours.kind(), ours.sqlstate()), (ErrorKind::Unavailable, "58030"));
        }
        let unsupported = object_store::Error::NotImplemented { operation: "copy".into(), implementer: "x".into() };
        let ours = Error::from(DataFusionError::ObjectStore(Box::new(unsupported)));
        assert_eq!(ours.kind(), ErrorKind::Internal, "{ours:?}");
        // A message that merely mentions an object store is not one of its failures.
        let ours = Error::from(DataFusionError::Execution("object store path must not be empty".into()));
        assert!(matches!(ours, Error::Execution { .. }), "{ours:?}");
        let memory = Error::from(DataFusionError::ResourcesExhausted("Failed to allocate additional 1 MB".into()));
        assert_eq!((memory.kind(), memory.sqlstate()), (ErrorKind::ResourceExhausted, "53200"));
    }

    #[test]
    fn a_lost_peer_is_retryable_however_the_library_wrapped_it() {
        let refused = "code: 'The service is currently unavailable', message: \"tcp connect error\"";
        for e in [
            DataFusionError::Internal(refused.to_string()),
            DataFusionError::Execution(format!("stage 2: {refused}")),
            DataFusionError::ArrowError(Box::new(arrow::error::ArrowError::ExternalError(refused.into())), None),
            DataFusionError::External(Box::new(tonic::Status::unavailable("connection refused"))),
            // A node killed while its stream was read: the reset reaches us in the Debug words of hyper's error.
            DataFusionError::Internal(
                "code: 'Unknown error', message: \"transport error\", source: tonic::transport::Error(Transport, \
                 hyper::Error(Io, Kind(ConnectionReset)))"
                    .to_string(),
            ),
        ] {
            let ours = Error::from(e);
            assert!(matches!(ours, Error::NodeUnavailable { .. }), "{ours:?}");
            assert_eq!(ours.sqlstate(), "57P03");
        }
        // A shard that moved under a task on another node, as the library brings the task's error back: words only.
        let moved = "External error: shard 8 unavailable: the request is at epoch 2, the shard at epoch 3";
        for e in [
            DataFusionError::Execution(moved.to_string()),
            DataFusionError::Internal(format!("stage 1: {moved}")),
            DataFusionError::External(moved.into()),
        ] {
            let ours = Error::from(e);
            assert!(
                matches!(&ours, Error::ShardUnavailable { shard: 8, detail } if detail.starts_with("the request is at epoch 2, the shard at epoch 3")),
                "{ours:?}"
            );
            assert_eq!(ours.kind(), ErrorKind::Unavailable);
        }
        let lost = Error::from(DataFusionError::External("task 2: node unavailable: node 3 went away".into()));
        assert!(matches!(&lost, Error::NodeUnavailable { detail } if detail == "node 3 went away"), "{lost:?}");
        // Words that only look alike are the statement's own failure.
        for text in ["shard 8: out of range", "shard x unavailable: no", "the shard unavailable: no"] {
            let ours = Error::from(DataFusionError::Execution(text.into()));
            assert!(matches!(ours, Error::Execution { .. }), "{ours:?}");
        }
        let statement = Error::from(DataFusionError::Execution("division by zero".into()));
        assert!(matches!(statement, Error::Execution { .. }), "{statement:?}");
    }
}
