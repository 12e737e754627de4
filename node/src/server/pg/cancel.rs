//! Query cancellation: a `CancelRequest`, sent on a separate connection with the process id and secret key the
//! server gave out at startup, interrupts whatever the connection it names is running.
//!
//! [`CancelRegistry`] maps each live connection's key to its [`Cancel`] signal. A cancel request bumps the signal's
//! count; a running query holds a [`CancelWatch`] taken when it started and stops when the count moves past it. A
//! request that arrives while nothing runs therefore cancels nothing, as in PostgreSQL.
//!
//! pgwire's own cancel support only covers the planning half of an extended-protocol `Execute` (rows are pulled
//! after its check has ended), so the gateway keeps its own: the whole simple query, the planning of an `Execute`
//! and every row it streams are watched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use pgwire::api::cancel::CancelHandler;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::SecretKey;
use tokio::sync::Notify;

type ConnectionKey = (i32, Bytes);

/// The cancel signals of a server's live connections, by process id and secret key.
#[derive(Debug, Default)]
pub(super) struct CancelRegistry {
    connections: Mutex<HashMap<ConnectionKey, Arc<Cancel>>>,
}

impl CancelRegistry {
    /// Registers a connection; it stays registered until the returned [`Registration`] is dropped.
    pub(super) fn register(self: &Arc<Self>, pid: i32, key: &SecretKey) -> (Arc<Cancel>, Registration) {
        let cancel = Arc::new(Cancel::default());
        let key = (pid, key.to_bytes());
        self.connections.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone(), Arc::clone(&cancel));
        (cancel, Registration { registry: Arc::clone(self), key })
    }
}

#[async_trait]
impl CancelHandler for CancelRegistry {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let key = (request.pid, request.secret_key.to_bytes());
        let cancel = self.connections.lock().unwrap_or_else(PoisonError::into_inner).get(&key).cloned();
        match cancel {
            Some(cancel) => {
                tracing::debug!(pid = request.pid, "postgres query cancel requested");
                cancel.cancel();
            }
            // A wrong key, or a connection that has ended: PostgreSQL ignores these silently too.
            None => tracing::debug!(pid = request.pid, "postgres cancel request for no live connection"),
        }
    }
}

/// Keeps a connection registered for cancel requests; unregisters it when dropped.
#[derive(Debug)]
pub(super) struct Registration {
    registry: Arc<CancelRegistry>,
    key: ConnectionKey,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.connections.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
    }
}

/// The cancel signal of one connection.
#[derive(Debug, Default)]
pub(super) struct Cancel {
    requests: AtomicU64,
    notify: Notify,
}

impl Cancel {
    /// Starts watching for cancel requests that arrive from now on.
    pub(super) fn watch(self: &Arc<Self>) -> CancelWatch {
        CancelWatch { cancel: Arc::clone(self), since: self.requests.load(Ordering::SeqCst) }
    }

    fn cancel(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

/// Watches one query for cancel requests.
#[derive(Debug, Clone)]
pub(super) struct CancelWatch {
    cancel: Arc<Cancel>,
    since: u64,
}

impl CancelWatch {
    fn is_cancelled(&self) -> bool {
        self.cancel.requests.load(Ordering::SeqCst) != self.since
    }

    /// Completes once the query is cancelled.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits.
    pub(super) async fn cancelled(&self) {
        loop {
            let notified = self.cancel.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a request between the check and the wait is not missed.
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// Ends `rows` with a query-canceled error once `watch` fires.
pub(super) fn until_cancelled<S, T>(rows: S, watch: CancelWatch) -> impl Stream<Item = PgWireResult<T>> + Send
where
    S: Stream<Item = PgWireResult<T>> + Send + 'static,
    T: Send + 'static,
{
    futures::stream::unfold(Some((Box::pin(rows), watch)), |state| async move {
        let (mut rows, watch) = state?;
        tokio::select! {
            biased;
            () = watch.cancelled() => Some((Err(PgWireError::QueryCanceled), None)),
            row = rows.next() => row.map(|row| (row, Some((rows, watch)))),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_request_cancels_the_running_query_only() {
        let registry = Arc::new(CancelRegistry::default());
        let key = SecretKey::I32(7);
        let (cancel, registration) = registry.register(42, &key);

        // A request while nothing runs cancels nothing later.
        registry.on_cancel_request(CancelRequest::new(42, key.clone())).await;
        let watch = cancel.watch();
        assert!(!watch.is_cancelled());

        // A wrong key does not cancel.
        registry.on_cancel_request(CancelRequest::new(42, SecretKey::I32(8))).await;
        assert!(!watch.is_cancelled());

        let rows = until_cancelled(futures::stream::pending::<PgWireResult<u8>>(), watch.clone());
        futures::pin_mut!(rows);
        let waiter = tokio::spawn(async move { watch.cancelled().await });
        registry.on_cancel_request(CancelRequest::new(42, key.clone())).await;
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("cancelled in time").expect("task");
        assert!(matches!(rows.next().await, Some(Err(PgWireError::QueryCanceled))));
        assert!(rows.next().await.is_none());

        drop(registration);
        assert!(registry.connections.lock().expect("lock").is_empty());
    }
}
