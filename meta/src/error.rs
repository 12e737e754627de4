//! Errors of the metadata layer.

/// The result type of the meta crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a caller should do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The named object does not exist.
    NotFound,
    /// The named object exists already.
    AlreadyExists,
    /// The request is malformed: fix it.
    InvalidRequest,
    /// Stored metadata is unreadable, or an invariant broke.
    Internal,
}

/// An error of the metadata layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// The table definition is invalid.
    #[error("invalid definition of table \"{table}\": {detail}")]
    InvalidTableDefinition {
        /// The table's name.
        table: String,
        /// What is wrong.
        detail: String,
    },
    /// Stored metadata could not be decoded.
    #[error("metadata could not be decoded")]
    Decode(#[source] serde_json::Error),
}

impl Error {
    /// Returns what a caller should do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::TableNotFound { .. } => ErrorKind::NotFound,
            Error::TableAlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::InvalidTableDefinition { .. } => ErrorKind::InvalidRequest,
            Error::Decode(_) => ErrorKind::Internal,
        }
    }
}
