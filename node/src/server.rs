//! Network servers of a node, and [`Server`], which binds and runs them until shutdown.
//!
//! Startup order: load and validate the configuration (by the caller), open the engine (recovery runs here), bind
//! every listener (a port in use fails startup with the address named), then serve. On shutdown every server stops
//! accepting and finishes its in-flight requests; the engine's committed state is already durable.
//!
//! All servers run on the process's Tokio runtime; DataFusion executes queries on the same runtime. A dedicated
//! runtime for query execution is future work (see docs/architecture.md).

pub mod http;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::{Config, resolve_addr};
use crate::engine::{Engine, StorageLocation};
use crate::error::{Error, Result};

/// A node with its engine open and its listeners bound, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    engine: Arc<Engine>,
    config: Config,
    flight: TcpListener,
    pg: TcpListener,
    http: TcpListener,
}

async fn bind(what: &str, addr: &str) -> Result<TcpListener> {
    let resolved = resolve_addr(addr).map_err(|detail| Error::Config { detail: format!("{what}: {detail}") })?;
    TcpListener::bind(resolved).await.map_err(|e| Error::io(format!("bind the {what} endpoint to {addr}"), e))
}

impl Server {
    /// Opens the engine in the configured data directory and binds the listeners.
    ///
    /// # Errors
    ///
    /// Fails when the data directory cannot be opened or a listener cannot be bound.
    pub async fn bind(config: Config) -> Result<Self> {
        let engine =
            Engine::open(StorageLocation::Path(config.storage.data_dir.clone()), config.engine_options()).await?;
        Self::bind_with_engine(config, engine).await
    }

    /// Binds the listeners for an engine that is already open (an embedded database served in-process).
    ///
    /// # Errors
    ///
    /// Fails when a listener cannot be bound.
    pub async fn bind_with_engine(config: Config, engine: Arc<Engine>) -> Result<Self> {
        let flight = bind("Flight SQL", &config.server.flight_addr).await?;
        let pg = bind("PostgreSQL", &config.server.pg_addr).await?;
        let http = bind("HTTP", &config.server.http_addr).await?;
        Ok(Self { engine, config, flight, pg, http })
    }

    /// Returns the engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Returns the bound Flight SQL address (useful when the configured port was 0).
    pub fn flight_addr(&self) -> SocketAddr {
        self.flight.local_addr().expect("a bound listener has an address")
    }

    /// Returns the bound PostgreSQL address.
    pub fn pg_addr(&self) -> SocketAddr {
        self.pg.local_addr().expect("a bound listener has an address")
    }

    /// Returns the bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then stops every server gracefully.
    ///
    /// # Errors
    ///
    /// Fails when a server stops with an error; the others are shut down then.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let signal = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        tracing::info!(
            flight = %self.flight_addr(), pg = %self.pg_addr(), http = %self.http_addr(),
            "quiver is serving"
        );
        let limits = flight_sql::FlightSqlLimits {
            max_message_bytes: self.config.limits.flight_message_max.0 as usize,
            ..flight_sql::FlightSqlLimits::default()
        };
        let mut http = tokio::spawn(http::serve(Arc::clone(&self.engine), self.http, signal(rx.clone())));
        let mut pg = tokio::spawn(pg::serve(Arc::clone(&self.engine), self.pg, signal(rx.clone())));
        let mut flight =
            tokio::spawn(flight_sql::serve(Arc::clone(&self.engine), limits, self.flight, signal(rx.clone())));
        let joined = |what: &'static str| {
            move |r: std::result::Result<std::result::Result<(), String>, tokio::task::JoinError>| match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Error::Io { operation: format!("serve {what}"), source: std::io::Error::other(e) }),
                Err(e) => Err(Error::Internal(format!("{what} server task: {e}"))),
            }
        };
        let as_string = |r: std::result::Result<(), std::io::Error>| r.map_err(|e| e.to_string());
        // Serve until shutdown is asked for or a server fails; then stop all of them.
        let early = tokio::select! {
            _ = shutdown => None,
            r = &mut http => Some(joined("HTTP")(r.map(as_string))),
            r = &mut pg => Some(joined("PostgreSQL")(r.map(as_string))),
            r = &mut flight => Some(joined("Flight SQL")(r.map(|r| r.map_err(|e| e.to_string())))),
        };
        tracing::info!("shutting down");
        let _ = tx.send(true);
        if let Some(result) = early {
            result?;
            return Err(Error::Internal("a server stopped on its own".into()));
        }
        joined("HTTP")(http.await.map(as_string))?;
        joined("PostgreSQL")(pg.await.map(as_string))?;
        joined("Flight SQL")(flight.await.map(|r| r.map_err(|e| e.to_string())))?;
        Ok(())
    }
}
pub mod flight_sql;
pub mod pg;
