//! [`Request`]: counts one PostgreSQL request in the engine's metrics.
//!
//! A request is one statement: a statement of a simple query, an `Execute` of the extended protocol, or a whole
//! `COPY … FROM STDIN` up to its `CopyDone`. A statement that fails to parse counts as a failed request. The guard
//! travels with the response (inside the row stream, inside the COPY state), so the latency it records when dropped
//! spans the whole response, not just planning.

use std::sync::Arc;
use std::time::Instant;

use pgwire::error::PgWireError;

use super::error::to_pg_error;
use crate::error::Error;
use crate::metrics::{Frontend, Metrics};

/// One request in flight; records its latency, and whether it failed, when dropped.
#[derive(Debug)]
pub(super) struct Request {
    metrics: Arc<Metrics>,
    started: Instant,
    failed: bool,
}

impl Request {
    /// Counts a new request.
    pub(super) fn start(metrics: &Arc<Metrics>) -> Self {
        metrics.frontend(Frontend::Postgres).requests.inc();
        Self { metrics: Arc::clone(metrics), started: Instant::now(), failed: false }
    }

    /// Marks the request failed and maps `e` for the client (see [`to_pg_error`]).
    pub(super) fn fail(&mut self, e: &Error) -> PgWireError {
        self.failed = true;
        to_pg_error(e)
    }

    /// Marks the request failed for an error that did not come from the engine.
    pub(super) fn fail_with(&mut self, e: PgWireError) -> PgWireError {
        self.failed = true;
        e
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        let frontend = self.metrics.frontend(Frontend::Postgres);
        if self.failed {
            frontend.errors.inc();
        }
        frontend.latency.observe(self.started.elapsed());
    }
}
