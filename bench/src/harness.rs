//! Starts a Quiver server in this process, on loopback ports chosen by the OS, for a benchmark to drive.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use arrow_flight::sql::client::FlightSqlServiceClient;
use quiver_node::cold::ColdConfig;
use quiver_node::config::{Config, Overrides};
use quiver_node::engine::{Engine, StorageLocation};
use quiver_node::server::Server;
use tonic::transport::Channel;

/// A running in-process server.
pub struct Running {
    /// The engine it serves.
    pub engine: Arc<Engine>,
    /// Its Flight SQL address.
    pub flight: SocketAddr,
    /// Its PostgreSQL address.
    pub pg: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs `server` on a task until the returned sender fires (or is dropped); the handle ends when it has stopped.
pub fn run_in_background(server: Server) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        if let Err(e) = server
            .run(async move {
                let _ = rx.await;
            })
            .await
        {
            eprintln!("server failed: {}", e.report());
        }
    });
    (tx, task)
}

/// Returns a Flight SQL client connected to the server at `addr`.
pub async fn flight_client_at(addr: SocketAddr) -> anyhow::Result<FlightSqlServiceClient<Channel>> {
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    Ok(FlightSqlServiceClient::new(channel))
}

/// Returns a PostgreSQL client connected to the gateway at `addr`.
pub async fn pg_client_at(addr: SocketAddr) -> anyhow::Result<tokio_postgres::Client> {
    crate::latency::pg_connect(&format!("host={} port={} user=quiver", addr.ip(), addr.port())).await
}

impl Running {
    /// Starts a server whose data lives in `dir` (durable: every commit is fsync'd).
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, None).await
    }

    /// Starts a server whose data lives in `dir`, with the cold tier `cold` (default: a directory in `dir`).
    pub async fn start_with(dir: &Path, cold: Option<ColdConfig>) -> anyhow::Result<Self> {
        let overrides = Overrides::loopback(dir.to_path_buf());
        let mut config = Config::load(None, Vec::new(), &overrides)?;
        if let Some(cold) = cold {
            config.cold = cold;
        }
        let engine = Engine::open(StorageLocation::Path(dir.to_path_buf()), config.engine_options()).await?;
        let server = Server::bind_with_engine(config, Arc::clone(&engine)).await?;
        let (flight, pg) = (server.flight_addr(), server.pg_addr());
        let (tx, task) = run_in_background(server);
        Ok(Self { engine, flight, pg, stop: Some(tx), task })
    }

    /// Returns a Flight SQL client connected to the server.
    pub async fn flight_client(&self) -> anyhow::Result<FlightSqlServiceClient<Channel>> {
        flight_client_at(self.flight).await
    }

    /// Returns a PostgreSQL client connected to the server.
    pub async fn pg_client(&self) -> anyhow::Result<tokio_postgres::Client> {
        pg_client_at(self.pg).await
    }

    /// Stops the server and its metadata replica and waits for them; the data directory can be opened again once
    /// this returns.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
        if let Err(e) = self.engine.shutdown().await {
            eprintln!("stopping the metadata replica: {}", e.report());
        }
    }
}
