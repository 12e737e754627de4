//! The PostgreSQL wire gateway: serves an [`Engine`] to PostgreSQL clients (psql, libpq, JDBC, psycopg,
//! tokio-postgres) over protocol 3.0 with [`pgwire`].
//!
//! What it owns: the accept loop ([`serve`]), one [`pgwire`] connection task per client, the translation of wire
//! messages into engine calls, and the translation of engine results and errors back into wire messages. It owns no
//! data: every statement runs through the shared [`Engine`], so what a PostgreSQL client sees is what Flight SQL and
//! the embedded API see.
//!
//! ```text
//!  client ──▶ accept ──▶ connection task (pgwire::tokio::process_socket)
//!                          │ startup: trust (no password), or SCRAM-SHA-256 against the metadata's users
//!                          ├─ Query (simple) ──▶ split at top-level `;` ──▶ per statement, in order:
//!                          │      classify ─┬─ SET / SHOW / RESET / DISCARD ─▶ answered by the gateway
//!                          │                ├─ COPY t FROM STDIN ───────────▶ CopyInResponse, then CopyData …
//!                          │                └─ anything else ───────────────▶ Engine::execute_one
//!                          │      rows are encoded batch by batch (arrow-pg) as the engine streams them
//!                          ├─ Parse/Bind/Describe/Execute (extended) ──▶ Engine::prepare / execute_prepared,
//!                          │      parameters decoded from text or binary by the declared or inferred type
//!                          └─ CopyData … CopyDone ──▶ blocks of whole lines ──▶ decode ──▶ one atomic append
//! ```
//!
//! Client introspection queries (those naming `pg_catalog` objects) are rewritten for DataFusion by
//! datafusion-pg-catalog's compatibility parser before the engine plans them; the `pg_catalog` schema and the
//! PostgreSQL functions clients call (`format_type`, `pg_get_userbyid`, `version`, …) are installed into the engine's
//! session by [`serve`]. Every other statement reaches the engine exactly as the client wrote it.
//!
//! Invariants:
//!
//! - Results are never collected: each record batch is encoded to data rows as the engine produces it.
//! - Every engine error reaches the client through one mapping (`error::to_pg_error`) that sets its SQLSTATE from
//!   [`crate::Error::sqlstate`] and logs it by whose fault it is.
//! - A `COPY … FROM STDIN` appends all of its rows in one atomic commit, or none of them (bad line, `CopyFail`, a
//!   dropped connection).
//! - Statements autocommit, as everywhere in Quiver: `BEGIN`/`COMMIT` are accepted and only drive the transaction
//!   status clients display; a `ROLLBACK` after `BEGIN` answers with a warning that nothing was undone.
//! - A `CancelRequest` interrupts the statement running on the connection it names, including while its rows are
//!   being sent.
//!
//! Runtime: the accept loop, the connection tasks and the COPY append tasks run on the Tokio runtime that calls
//! [`serve`] (the process runtime); decoding COPY blocks runs on its blocking pool.

mod cancel;
mod catalog;
mod copy;
mod error;
mod handler;
mod local;
mod params;
mod request;
mod results;
mod startup;
mod statement;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::engine::Engine;

/// How long the accept loop waits after a failed `accept` (for example when the process is out of file
/// descriptors) before it tries again, so that a persistent failure does not spin a core.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Serves the PostgreSQL wire protocol on `listener` until `shutdown` completes.
///
/// Installs the `pg_catalog` schema and the PostgreSQL compatibility functions into the engine's session first, then
/// accepts connections and serves each on its own task. When `shutdown` completes the loop stops accepting and
/// returns; connections already open are served until their clients disconnect or the runtime stops (their
/// committed work is durable, and a COPY cut short appends nothing). A failing connection ends only its own task.
///
/// # Errors
///
/// Fails when the catalog cannot be installed (the embedded catalog data does not load). Errors of single
/// connections, and of `accept`, are logged and never end the loop.
///
/// # Cancel safety
///
/// Dropping the future stops accepting, like completing `shutdown` does.
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use quiver_node::engine::{Engine, EngineOptions, StorageLocation};
///
/// let engine = Engine::open(StorageLocation::Memory, EngineOptions::default()).await?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:5432").await?;
/// quiver_node::server::pg::serve(engine, listener, async {
///     let _ = tokio::signal::ctrl_c().await;
/// })
/// .await?;
/// # Ok(())
/// # }
/// ```
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(engine, listener, PgOptions::default(), shutdown).await
}

/// How the PostgreSQL gateway serves its clients.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Whether clients authenticate (SCRAM-SHA-256 as users of the metadata, each statement checked against the
    /// user's privileges); without, every connection has every privilege.
    pub authenticate: bool,
    /// TLS (`sslmode=require` and stricter): when given, a connection that does not ask for TLS is refused.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections one user may have open at once, with authentication on (0: no limit).
    pub connections_per_user: usize,
}

/// Serves the PostgreSQL wire protocol on `listener` as [`serve`] does, with `options`.
///
/// # Errors
///
/// As [`serve`].
pub async fn serve_with(
    engine: Arc<Engine>,
    listener: TcpListener,
    options: PgOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    catalog::install(&engine).map_err(|e| io::Error::other(e.report()))?;
    let method = if options.authenticate { startup::AuthMethod::Scram } else { startup::AuthMethod::Trust };
    let tls = options.tls.map(pgwire::tokio::TlsAcceptor::from);
    let shared = Arc::new(handler::Shared::new(engine, method, tls.is_some(), options.connections_per_user));
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "postgres gateway listening");
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                // Small result messages should leave at once rather than wait for Nagle's timer.
                if let Err(e) = socket.set_nodelay(true) {
                    tracing::debug!(%peer, error = %e, "could not disable Nagle's algorithm");
                }
                let handlers = handler::ConnectionHandlers::new(Arc::clone(&shared));
                let tls = tls.clone();
                tokio::spawn(async move {
                    tracing::debug!(%peer, "postgres connection opened");
                    match pgwire::tokio::process_socket(socket, tls, handlers).await {
                        Ok(()) => tracing::debug!(%peer, "postgres connection closed"),
                        // The peer reset or timed out: its problem, not the server's.
                        Err(e) => tracing::debug!(%peer, error = %e, "postgres connection ended with an error"),
                    }
                });
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "accepting a postgres connection failed");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_RETRY_DELAY) => {}
                }
            }
        }
    }
    tracing::info!(%addr, "postgres gateway stopped accepting connections");
    Ok(())
}
