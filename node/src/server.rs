//! Network servers of a node, and [`Server`], which binds and runs them until shutdown.
//!
//! Startup order ([`Server::bind`]): load and validate the configuration (by the caller), open the hot store, bind
//! the internal gRPC endpoint and start the metadata replica on it, open the engine (recovery runs here), bind every
//! client listener (a port in use fails startup with the address named), serve the internal endpoint (Raft,
//! metadata, cluster services), then bootstrap a new cluster or join an existing one (`cluster.join`). Only then do
//! the client frontends serve ([`Server::run`]). On shutdown every server stops accepting and finishes its in-flight
//! requests, then the metadata replica stops; the engine's committed state is already durable.
//!
//! All servers run on the process's Tokio runtime; DataFusion executes queries on the same runtime. A dedicated
//! runtime for query execution is future work (see docs/architecture.md).

pub mod http;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::cluster::{self, ClusterOptions};
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
    internal: Option<Internal>,
}

/// The internal gRPC endpoint of a clustered server, already serving.
#[derive(Debug)]
struct Internal {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>,
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
        let location = StorageLocation::Path(config.storage.data_dir.clone());
        let options = config.engine_options();
        let store = Engine::open_store(&location, &options).await?;
        let grpc = bind("internal gRPC", &config.cluster.grpc_addr).await?;
        let grpc_addr = grpc.local_addr().map_err(|e| Error::io("read the internal gRPC address", e))?;
        let flight = bind("Flight SQL", &config.server.flight_addr).await?;
        let pg = bind("PostgreSQL", &config.server.pg_addr).await?;
        let http = bind("HTTP", &config.server.http_addr).await?;
        let advertise = |configured: &str, bound: SocketAddr| {
            // A wildcard bind is reachable at the configured host only when it names one; else at the bound address.
            if bound.ip().is_unspecified() { configured.to_string() } else { bound.to_string() }
        };
        let options = ClusterOptions {
            node_id: config.cluster.node_id,
            grpc_addr: config.cluster.advertise_addr.clone().unwrap_or_else(|| grpc_addr.to_string()),
            join: config.cluster.join.clone(),
            cluster_id: config.cluster.cluster_id.clone(),
            flight_addr: advertise(
                &config.server.flight_addr,
                flight.local_addr().map_err(|e| Error::io("address", e))?,
            ),
            pg_addr: advertise(&config.server.pg_addr, pg.local_addr().map_err(|e| Error::io("address", e))?),
            meta: config.cluster.meta_config(),
            join_timeout: config.cluster.join_timeout.duration(),
        };
        let meta = cluster::start_replica(Arc::clone(&store), &options).await?;
        let engine = Engine::open_with_meta(location, store, config.engine_options(), meta.clone()).await?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(serve_internal(meta.clone(), grpc, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        let internal = Internal { addr: grpc_addr, stop, task };
        if let Err(e) = cluster::bootstrap_or_join(&meta, &options).await {
            let _ = internal.stop.send(true);
            let _ = engine.shutdown().await;
            return Err(e);
        }
        Ok(Self { engine, config, flight, pg, http, internal: Some(internal) })
    }

    /// Returns the bound internal gRPC address of a clustered server.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.internal.as_ref().map(|i| i.addr)
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
        Ok(Self { engine, config, flight, pg, http, internal: None })
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
            grpc = ?self.grpc_addr(), node_id = self.engine.node_id(),
            "quiver is serving"
        );
        let keeper = self.internal.as_ref().map(|_| {
            let interval = self.config.cluster.heartbeat_interval.duration() * 10;
            tokio::spawn(cluster::keep_voters(self.engine.meta().clone(), interval, signal(rx.clone())))
        });
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
        if let Some(keeper) = keeper {
            let _ = keeper.await;
        }
        let stopped = async {
            joined("HTTP")(http.await.map(as_string))?;
            joined("PostgreSQL")(pg.await.map(as_string))?;
            joined("Flight SQL")(flight.await.map(|r| r.map_err(|e| e.to_string())))
        };
        let result = match early {
            Some(result) => result.and(Err(Error::Internal("a server stopped on its own".into()))),
            None => stopped.await,
        };
        // The metadata replica stops after the frontends (a DDL in flight finishes first), then its endpoint.
        if let Some(internal) = self.internal {
            if let Err(e) = self.engine.shutdown().await {
                tracing::warn!(error = %e.report(), "metadata replica shutdown");
            }
            let _ = internal.stop.send(true);
            match internal.task.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "internal gRPC endpoint stopped with an error"),
                Err(e) => tracing::warn!(error = %e, "internal gRPC task"),
                Ok(Ok(())) => {}
            }
        }
        result
    }
}
/// Serves the internal gRPC endpoint: the Raft transport, the metadata service and the cluster service.
async fn serve_internal(
    meta: quiver_meta::MetaNode,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::result::Result<(), tonic::transport::Error> {
    quiver_meta::service::serve(&meta, listener, shutdown).await
}

pub mod flight_sql;
pub mod pg;
