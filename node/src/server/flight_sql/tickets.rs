//! [`PlannedTickets`]: the plans GetFlightInfo made, kept for the DoGet of their ticket so that a query is parsed and
//! planned once, not once per call.
//!
//! A statement ticket carries a handle to its plan here and, after it, the statement's SQL text:
//! `\0plan:<handle, 8 bytes big-endian><SQL>`. DoGet takes the plan by its handle when this node still holds it for
//! the same user; otherwise (another node of the cluster, a plan evicted or expired, a ticket of an older server: the
//! SQL text alone) it plans the text again, with the caller's privileges checked either way. A plan is taken once: a
//! client that fetches a ticket twice gets the second answer from the text.
//!
//! The store is bounded in entries and in age, so clients that never fetch their tickets cannot grow it: the oldest
//! plan goes first. Time comes from Tokio's clock (driven by the simulation where it runs).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::Instant;

use crate::engine::PreparedStatement;

/// What starts a ticket that carries a plan's handle. SQL text never starts with a NUL byte.
const PREFIX: &[u8] = b"\0plan:";

/// How many plans wait for their DoGet at most.
const CAPACITY: usize = 1024;

/// The longest SQL text whose plan is kept: a longer statement's ticket holds its text alone and DoGet plans it again,
/// so the plans waiting hold at most about `CAPACITY` times this much text (a statement may be up to
/// `limits.sql_text_max`).
const SQL_KEPT_MAX: usize = 16 << 10;

/// How long a plan waits for its DoGet.
const KEEP: Duration = Duration::from_secs(60);

/// A plan waiting for the DoGet of its ticket.
#[derive(Debug)]
struct Waiting {
    user: Option<String>,
    statement: Arc<PreparedStatement>,
    made: Instant,
}

/// The plans of the tickets GetFlightInfo issued, by handle.
#[derive(Debug, Default)]
pub(super) struct PlannedTickets {
    waiting: Mutex<Plans>,
    next: AtomicU64,
}

#[derive(Debug, Default)]
struct Plans {
    by_handle: BTreeMap<u64, Waiting>,
    /// Handles in the order they were issued (some may be taken already).
    order: VecDeque<u64>,
}

/// What a statement ticket holds.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Ticket<'a> {
    /// The handle of its plan on the node that issued it, if it carries one.
    pub(super) handle: Option<u64>,
    /// The statement's SQL text.
    pub(super) sql: &'a [u8],
}

impl PlannedTickets {
    /// Keeps `statement`, planned for `user` (`None`: a trusted caller), and returns the ticket to fetch it by.
    pub(super) fn issue(&self, user: Option<&str>, statement: PreparedStatement) -> Bytes {
        self.issue_at(Instant::now(), user, statement)
    }

    fn issue_at(&self, now: Instant, user: Option<&str>, statement: PreparedStatement) -> Bytes {
        let sql = statement.sql().as_bytes();
        if sql.len() > SQL_KEPT_MAX {
            return Bytes::copy_from_slice(sql);
        }
        let handle = self.next.fetch_add(1, Ordering::Relaxed);
        let mut ticket = BytesMut::with_capacity(PREFIX.len() + 8 + sql.len());
        ticket.put_slice(PREFIX);
        ticket.put_u64(handle);
        ticket.put_slice(sql);
        let mut plans = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        // Drop what waited too long, and the oldest past the capacity.
        while let Some(&oldest) = plans.order.front() {
            let expired = plans.by_handle.get(&oldest).is_none_or(|w| now.duration_since(w.made) >= KEEP);
            if !expired && plans.by_handle.len() < CAPACITY {
                break;
            }
            plans.order.pop_front();
            plans.by_handle.remove(&oldest);
        }
        let waiting = Waiting { user: user.map(str::to_string), statement: Arc::new(statement), made: now };
        plans.by_handle.insert(handle, waiting);
        plans.order.push_back(handle);
        ticket.freeze()
    }

    /// Takes the plan of `handle` if it is still here, was made for `user` and has not waited too long.
    pub(super) fn take(&self, handle: u64, user: Option<&str>) -> Option<Arc<PreparedStatement>> {
        self.take_at(Instant::now(), handle, user)
    }

    fn take_at(&self, now: Instant, handle: u64, user: Option<&str>) -> Option<Arc<PreparedStatement>> {
        let mut plans = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let waiting = plans.by_handle.remove(&handle)?;
        // The handle stays in `order` until it reaches the front; `issue` skips it then.
        (waiting.user.as_deref() == user && now.duration_since(waiting.made) < KEEP).then_some(waiting.statement)
    }

    /// How many plans wait.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).by_handle.len()
    }
}

/// Reads a statement ticket: a handle and SQL text, or SQL text alone.
pub(super) fn parse(ticket: &[u8]) -> Ticket<'_> {
    match ticket.strip_prefix(PREFIX) {
        Some(rest) if rest.len() >= 8 => {
            let (handle, sql) = rest.split_at(8);
            let handle = u64::from_be_bytes(handle.try_into().unwrap_or([0; 8]));
            Ticket { handle: Some(handle), sql }
        }
        _ => Ticket { handle: None, sql: ticket },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineOptions, StorageLocation};

    async fn statement(engine: &Engine, sql: &str) -> PreparedStatement {
        engine.prepare(sql).await.expect("prepare")
    }

    #[tokio::test]
    async fn a_plan_is_taken_once_by_its_user_within_its_time() {
        let engine = Engine::open(StorageLocation::Memory, EngineOptions::default()).await.expect("engine");
        let tickets = PlannedTickets::default();
        let ticket = tickets.issue(Some("alice"), statement(&engine, "SELECT 1").await);
        let parsed = parse(&ticket);
        assert_eq!(parsed.sql, b"SELECT 1");
        let handle = parsed.handle.expect("a handle");
        assert!(tickets.take(handle, Some("bob")).is_none(), "another user's plan");
        let ticket = tickets.issue(Some("alice"), statement(&engine, "SELECT 2").await);
        let handle = parse(&ticket).handle.expect("a handle");
        assert_eq!(tickets.take(handle, Some("alice")).expect("taken").sql(), "SELECT 2");
        assert!(tickets.take(handle, Some("alice")).is_none(), "taken once");

        let now = Instant::now();
        let ticket = tickets.issue_at(now, None, statement(&engine, "SELECT 3").await);
        assert!(tickets.take_at(now + KEEP, parse(&ticket).handle.expect("handle"), None).is_none(), "expired");

        // Plain SQL text (a ticket of an older server) has no handle.
        assert_eq!(parse(b"SELECT 4"), Ticket { handle: None, sql: b"SELECT 4" });
    }

    #[tokio::test]
    async fn the_store_is_bounded() {
        let engine = Engine::open(StorageLocation::Memory, EngineOptions::default()).await.expect("engine");
        let tickets = PlannedTickets::default();
        let prepared = statement(&engine, "SELECT 1").await;
        let first = tickets.issue(None, prepared.clone());
        for _ in 0..CAPACITY + 10 {
            tickets.issue(None, prepared.clone());
        }
        assert_eq!(tickets.len(), CAPACITY);
        assert!(tickets.take(parse(&first).handle.expect("handle"), None).is_none(), "the oldest went first");
        // A long statement's ticket is its text alone.
        let long = format!("SELECT 1 AS \"{}\"", "x".repeat(SQL_KEPT_MAX));
        let ticket = tickets.issue(None, statement(&engine, &long).await);
        assert_eq!(parse(&ticket), Ticket { handle: None, sql: long.as_bytes() });
        assert_eq!(tickets.len(), CAPACITY);
    }
}
