//! [`PreparedStatements`]: the prepared statements Flight SQL clients hold open, by handle.
//!
//! A client creates a statement (CreatePreparedStatement), may bind parameters with DoPut, executes it any number of
//! times, and closes it. Between those calls the statement lives here as an [`OpenStatement`]: the engine's
//! [`PreparedStatement`] and the parameter rows bound last.
//!
//! Handles are `<sequence>-<hash of the SQL text>`. The sequence makes them unique within the process; the hash makes
//! a handle a client kept across a server restart fail as unknown instead of naming whichever new statement happened
//! to get the same sequence number. Handles are not secrets: the service does not authenticate clients.
//!
//! The number of open statements is bounded, so a client that never closes its statements cannot grow the map
//! without limit.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use datafusion::common::ScalarValue;
use tonic::{Code, Status};

use crate::engine::PreparedStatement;
use crate::server::status::{malformed, rejected};

/// SQLSTATE `insufficient_resources`.
const INSUFFICIENT_RESOURCES: &str = "53000";

/// A prepared statement a client holds open.
#[derive(Debug, Clone)]
pub(super) struct OpenStatement {
    /// The planned statement.
    pub(super) statement: Arc<PreparedStatement>,
    /// The parameter rows bound by the client's last DoPut; empty until the client binds.
    pub(super) bound: Arc<Vec<Vec<ScalarValue>>>,
}

/// The open prepared statements of one Flight SQL service.
#[derive(Debug)]
pub(super) struct PreparedStatements {
    open: Mutex<HashMap<Bytes, OpenStatement>>,
    next_sequence: AtomicU64,
    max_open: usize,
}

impl PreparedStatements {
    /// Returns an empty registry that holds at most `max_open` statements.
    pub(super) fn new(max_open: usize) -> Self {
        Self { open: Mutex::new(HashMap::new()), next_sequence: AtomicU64::new(1), max_open }
    }

    /// Locks the map. A panic while the lock was held cannot leave the map half-changed (every change is one insert
    /// or remove), so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, HashMap<Bytes, OpenStatement>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `statement` and returns its new handle.
    ///
    /// # Errors
    ///
    /// `resource_exhausted` when the limit of open statements is reached.
    pub(super) fn open(&self, statement: PreparedStatement) -> Result<Bytes, Status> {
        let mut hasher = DefaultHasher::new();
        statement.sql().hash(&mut hasher);
        let sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed);
        let handle = Bytes::from(format!("{sequence}-{:016x}", hasher.finish()));
        let mut open = self.lock();
        if open.len() >= self.max_open {
            return Err(rejected(
                Code::ResourceExhausted,
                INSUFFICIENT_RESOURCES,
                format!("{} prepared statements are open, the limit; close unused ones", open.len()),
            ));
        }
        open.insert(handle.clone(), OpenStatement { statement: Arc::new(statement), bound: Arc::new(Vec::new()) });
        Ok(handle)
    }

    /// Returns the statement of `handle`.
    ///
    /// # Errors
    ///
    /// `invalid_argument` when no open statement has this handle.
    pub(super) fn get(&self, handle: &[u8]) -> Result<OpenStatement, Status> {
        self.lock().get(handle).cloned().ok_or_else(|| unknown(handle))
    }

    /// Replaces the parameter rows bound to `handle`.
    ///
    /// # Errors
    ///
    /// `invalid_argument` when no open statement has this handle.
    pub(super) fn bind(&self, handle: &[u8], rows: Vec<Vec<ScalarValue>>) -> Result<(), Status> {
        match self.lock().get_mut(handle) {
            Some(open) => {
                open.bound = Arc::new(rows);
                Ok(())
            }
            None => Err(unknown(handle)),
        }
    }

    /// Forgets the statement of `handle`.
    ///
    /// # Errors
    ///
    /// `invalid_argument` when no open statement has this handle (as PostgreSQL's DEALLOCATE of an unknown name).
    pub(super) fn close(&self, handle: &[u8]) -> Result<(), Status> {
        self.lock().remove(handle).map(|_| ()).ok_or_else(|| unknown(handle))
    }

    /// Returns how many statements are open.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The status for a handle that names no open statement. The handle came from the network, so it is shown escaped
/// and shortened.
fn unknown(handle: &[u8]) -> Status {
    let shown: String = String::from_utf8_lossy(handle).chars().take(64).collect();
    malformed(format!("unknown prepared statement handle \"{}\"; it was closed or never created", shown.escape_debug()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineOptions, StorageLocation};

    async fn statement(sql: &str) -> PreparedStatement {
        let engine = Engine::open(StorageLocation::Memory, EngineOptions::default()).await.expect("open engine");
        engine.prepare(sql).await.expect("prepare")
    }

    #[tokio::test]
    async fn open_get_bind_close_round_trip() {
        let registry = PreparedStatements::new(10);
        let handle = registry.open(statement("SELECT $1::BIGINT").await).expect("open");
        assert!(registry.get(&handle).expect("get").bound.is_empty());
        registry.bind(&handle, vec![vec![ScalarValue::Int64(Some(7))]]).expect("bind");
        assert_eq!(*registry.get(&handle).expect("get").bound, vec![vec![ScalarValue::Int64(Some(7))]]);
        registry.close(&handle).expect("close");
        assert_eq!(registry.get(&handle).expect_err("closed").code(), Code::InvalidArgument);
        assert_eq!(registry.close(&handle).expect_err("closed twice").code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn open_refuses_beyond_the_limit() {
        let registry = PreparedStatements::new(1);
        let s = statement("SELECT 1").await;
        let first = registry.open(s.clone()).expect("first");
        assert_eq!(registry.open(s.clone()).expect_err("second").code(), Code::ResourceExhausted);
        registry.close(&first).expect("close");
        registry.open(s).expect("after close");
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn unknown_handle_message_is_escaped_and_short() {
        let status = unknown(&[b'a'; 1000]);
        assert!(status.message().len() < 200, "{}", status.message());
        let status = unknown(b"\n\x00");
        assert!(status.message().contains("\\n"), "{}", status.message());
    }
}
