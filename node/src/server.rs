//! Network servers of a node, and [`Server`], which binds and runs them until shutdown.
//!
//! Startup order ([`Server::bind`], then [`Server::bind_on_stores`]): load and validate the configuration (by the
//! caller), open the hot store, bind the internal gRPC endpoint and start the metadata replica on it, open the engine
//! (recovery runs here), bind every client listener (a port in use fails startup with the address named), serve the
//! internal endpoint (Raft, metadata, cluster and data services, see [`internal`]), then bootstrap a new cluster or
//! join an existing one (`cluster.join`). Only then do the client frontends serve ([`Server::run`]). On shutdown
//! every server stops accepting and finishes its in-flight requests, then the metadata replica stops; the engine's
//! committed state is already durable.
//!
//! The simulation build (`--cfg madsim`) has no client frontends and no RocksDB: a simulated node is booted by the
//! same [`Server::bind_on_stores`] and [`Server::run`], on a hot store the simulation provides, with the internal
//! endpoint on madsim's network.
//!
//! All servers run on the process's Tokio runtime; DataFusion executes queries on the same runtime. A dedicated
//! runtime for query execution is future work (see docs/architecture.md).

#[cfg(not(madsim))]
pub mod http;
pub mod internal;
pub(crate) mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

#[cfg(not(madsim))]
use tokio::net::TcpListener;

#[cfg(not(madsim))]
use crate::audit::{AuditEntry, AuditEvent, Outcome};
use crate::cluster::{self, ClusterOptions};
use crate::config::{Config, resolve_addr};
use crate::engine::{Engine, StorageLocation};
use crate::error::{Error, Result};
use crate::storage::HotStore;

/// A node with its engine open and its listeners bound, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    engine: Arc<Engine>,
    config: Config,
    #[cfg(not(madsim))]
    frontends: Frontends,
    internal: Option<Internal>,
}

/// The bound listeners of the client frontends.
#[cfg(not(madsim))]
#[derive(Debug)]
struct Frontends {
    flight: TcpListener,
    pg: TcpListener,
    http: TcpListener,
}

#[cfg(not(madsim))]
impl Frontends {
    async fn bind(config: &Config) -> Result<Self> {
        Ok(Self {
            flight: bind("Flight SQL", &config.server.flight_addr).await?,
            pg: bind("PostgreSQL", &config.server.pg_addr).await?,
            http: bind("HTTP", &config.server.http_addr).await?,
        })
    }
}

/// The internal gRPC endpoint of a clustered server, already serving.
#[derive(Debug)]
struct Internal {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>,
}

#[cfg(not(madsim))]
async fn bind(what: &str, addr: &str) -> Result<TcpListener> {
    let resolved = resolve_addr(addr).map_err(|detail| Error::Config { detail: format!("{what}: {detail}") })?;
    TcpListener::bind(resolved).await.map_err(|e| Error::io(format!("bind the {what} endpoint to {addr}"), e))
}

impl Server {
    /// Opens the hot store in the configured data directory, then starts the node on it ([`Server::bind_on_stores`]).
    ///
    /// # Errors
    ///
    /// Fails when the data directory cannot be opened or a listener cannot be bound.
    pub async fn bind(config: Config) -> Result<Self> {
        // Before the data directory is touched.
        #[cfg(not(madsim))]
        refuse_exposed(&config)?;
        let location = StorageLocation::Path(config.storage.data_dir.clone());
        let store = Engine::open_store(&location, &config.engine_options()).await?;
        // Boxed: starting a node is a deep future; the caller's task keeps a pointer to it.
        Box::pin(Self::bind_on_stores(config, store, None)).await
    }

    /// Starts a node on an open hot store: binds the listeners, starts the metadata replica, opens the engine (its
    /// recovery), serves the internal endpoint, and bootstraps or joins the cluster. The store is the data directory's
    /// ([`Server::bind`]) or, in the simulation, a simulated disk; the cold store is the configured one (`None`) or
    /// one the caller built (the simulation's faulty in-memory bucket).
    ///
    /// # Errors
    ///
    /// Fails when a listener cannot be bound, the store holds data this build cannot read, or the cluster refuses
    /// the node or cannot be reached within the join timeout.
    pub async fn bind_on_stores(
        config: Config,
        store: Arc<dyn HotStore>,
        cold: Option<crate::cold::ColdStore>,
    ) -> Result<Self> {
        let location = StorageLocation::Path(config.storage.data_dir.clone());
        let grpc_addr = resolve_addr(&config.cluster.grpc_addr)
            .map_err(|detail| Error::Config { detail: format!("internal gRPC: {detail}") })?;
        #[cfg(not(madsim))]
        let (grpc, grpc_addr) = {
            let grpc = TcpListener::bind(grpc_addr).await.map_err(|e| {
                Error::io(format!("bind the internal gRPC endpoint to {}", config.cluster.grpc_addr), e)
            })?;
            let bound = grpc.local_addr().map_err(|e| Error::io("read the internal gRPC address", e))?;
            (grpc, bound)
        };
        #[cfg(not(madsim))]
        let frontends = Frontends::bind(&config).await?;
        #[cfg(not(madsim))]
        let (flight_addr, pg_addr) = {
            let advertise = |configured: &str, listener: &TcpListener| -> Result<String> {
                let bound = listener.local_addr().map_err(|e| Error::io("read a bound address", e))?;
                // A wildcard bind is reachable at the configured host only when it names one; else at the bound
                // address.
                Ok(if bound.ip().is_unspecified() { configured.to_string() } else { bound.to_string() })
            };
            (
                advertise(&config.server.flight_addr, &frontends.flight)?,
                advertise(&config.server.pg_addr, &frontends.pg)?,
            )
        };
        #[cfg(madsim)]
        let (flight_addr, pg_addr) = (String::new(), String::new());
        #[cfg_attr(madsim, allow(unused_mut))]
        let mut meta_config = config.cluster.meta_config();
        // Mutual TLS between nodes (the simulation's network has none).
        #[cfg(not(madsim))]
        let cluster_tls = tls::ClusterTls::from_config(&config)?;
        #[cfg(not(madsim))]
        if let Some(cluster_tls) = &cluster_tls {
            meta_config.peer_tls = quiver_meta::transport::PeerTls::mutual(Arc::clone(&cluster_tls.client));
        }
        let options = ClusterOptions {
            node_id: config.cluster.node_id,
            grpc_addr: config.cluster.advertise_addr.clone().unwrap_or_else(|| grpc_addr.to_string()),
            join: config.cluster.join.clone(),
            cluster_id: config.cluster.cluster_id.clone(),
            flight_addr,
            pg_addr,
            meta: meta_config,
            join_timeout: config.cluster.join_timeout.duration(),
        };
        let meta = cluster::start_replica(Arc::clone(&store), &options).await?;
        // A member of a cluster of several nodes (restarting: joiners are checked with the configuration) must tier
        // to a store every node reads. A cold store the caller built (the simulation's bucket) is shared.
        if cold.is_none()
            && let Some(what) = config.cold.node_local()
            && meta.read_local(|s| s.nodes().count()) > 1
        {
            let _ = meta.shutdown().await;
            return Err(crate::config::cold_store_not_shared(&what));
        }
        let mut engine_options = config.engine_options();
        engine_options.cold_store = cold;
        let engine = Engine::open_with_meta(location, Arc::clone(&store), engine_options, meta.clone()).await?;
        #[cfg(not(madsim))]
        if config.server.insecure && !config.exposed().is_empty() {
            let detail = format!("serving insecure (--insecure): {}", config.exposed().join("; "));
            engine.audit().record(AuditEntry::new(AuditEvent::Insecure, Outcome::Ok, detail));
        }
        // Before the internal endpoint answers the metadata leader, which would fill an empty replica at once.
        let read_late = engine.injected(crate::engine::InjectedBugKind::StartReadLate);
        let start = if read_late {
            None
        } else {
            match cluster::read_start(&meta, &options, &store).await {
                Ok(start) => Some(start),
                Err(e) => {
                    let _ = engine.shutdown().await;
                    return Err(e);
                }
            }
        };
        #[cfg(not(madsim))]
        if let Err(e) = engine.run_local_tasks_at(&options.grpc_addr) {
            tracing::warn!(error = %e.report(), "tasks routed to this node go through its internal endpoint");
        }
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let stopped = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let max_message = usize::try_from(config.limits.flight_message_max.0).unwrap_or(usize::MAX);
        #[cfg(not(madsim))]
        let task = {
            let tls = cluster_tls.map(|cluster_tls| {
                let mut stopped = stop.subscribe();
                let stopped = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                drop(tokio::spawn(Arc::clone(&cluster_tls.certificates).watch(stopped)));
                cluster_tls.server
            });
            tokio::spawn(internal::serve(meta.clone(), Arc::clone(&engine), max_message, grpc, tls, stopped))
        };
        #[cfg(madsim)]
        let task = tokio::spawn(internal::serve(meta.clone(), Arc::clone(&engine), max_message, grpc_addr, stopped));
        let internal = Internal { addr: grpc_addr, stop, task };
        // A slow start: the endpoint answers the metadata leader, which replicates to a member at once, a while
        // before the node joins or resumes (on real hosts, tens of milliseconds; chaos seed 203).
        quiver_meta::buggify_delay!(0.5, 500);
        let start = match start {
            Some(start) => Ok(start),
            None => cluster::read_start(&meta, &options, &store).await,
        };
        if let Err(e) = async { cluster::bootstrap_or_join(&meta, &options, &store, start?).await }.await {
            let _ = internal.stop.send(true);
            let _ = engine.shutdown().await;
            return Err(e);
        }
        engine.serve_shards();
        Ok(Self {
            engine,
            config,
            #[cfg(not(madsim))]
            frontends,
            internal: Some(internal),
        })
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
    #[cfg(not(madsim))]
    pub async fn bind_with_engine(config: Config, engine: Arc<Engine>) -> Result<Self> {
        refuse_exposed(&config)?;
        let frontends = Frontends::bind(&config).await?;
        Ok(Self { engine, config, frontends, internal: None })
    }

    /// Returns the engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Returns the bound Flight SQL address (useful when the configured port was 0).
    #[cfg(not(madsim))]
    pub fn flight_addr(&self) -> SocketAddr {
        self.frontends.flight.local_addr().expect("a bound listener has an address")
    }

    /// Returns the bound PostgreSQL address.
    #[cfg(not(madsim))]
    pub fn pg_addr(&self) -> SocketAddr {
        self.frontends.pg.local_addr().expect("a bound listener has an address")
    }

    /// Returns the bound HTTP address.
    #[cfg(not(madsim))]
    pub fn http_addr(&self) -> SocketAddr {
        self.frontends.http.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then stops every server gracefully.
    ///
    /// # Errors
    ///
    /// Fails when a server stops with an error; the others are shut down then.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let grpc_addr = self.grpc_addr();
        #[cfg(not(madsim))]
        let Server { engine, config, frontends, internal } = self;
        #[cfg(madsim)]
        let Server { engine, config, internal } = self;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let keeper = internal.as_ref().map(|_| {
            let interval = config.cluster.heartbeat_interval.duration() * 10;
            tokio::spawn(cluster::keep_voters(engine.meta().clone(), interval, signal(rx.clone())))
        });
        // Always: a table's own hot_bytes_max option can ask for tiering when the node-wide limit is off.
        let tierer = (config.cold.tier_check_interval.0 > 0).then(|| {
            let engine = Arc::clone(&engine);
            tokio::spawn(every(config.cold.tier_check_interval.duration(), rx.clone(), move || {
                tier_round(Arc::clone(&engine))
            }))
        });
        let collector = (config.cold.gc_interval.0 > 0).then(|| {
            let (interval, grace) = (config.cold.gc_interval.duration(), config.cold.gc_grace.duration());
            let engine = Arc::clone(&engine);
            tokio::spawn(every(interval, rx.clone(), move || gc_round(Arc::clone(&engine), grace)))
        });
        // Backups learn a commit point no later change carried to them; a new primary settles what it holds prepared.
        let committer = internal.as_ref().map(|_| {
            let engine = Arc::clone(&engine);
            tokio::spawn(every(crate::engine::COMMIT_PUSH_INTERVAL, rx.clone(), move || {
                let engine = Arc::clone(&engine);
                async move { engine.tend_shards().await }
            }))
        });
        // The primaries' loads, for rebalancing.
        let reporter = internal.as_ref().map(|_| {
            let engine = Arc::clone(&engine);
            tokio::spawn(every(config.cluster.load_report_interval.duration(), rx.clone(), move || {
                let engine = Arc::clone(&engine);
                async move {
                    if let Err(e) = engine.report_shard_loads().await {
                        tracing::debug!(error = %e.report(), "reporting shard loads failed");
                    }
                }
            }))
        });
        #[cfg(not(madsim))]
        let result = run_frontends(&engine, &config, frontends, grpc_addr, shutdown, &tx).await;
        #[cfg(madsim)]
        let result = {
            tracing::info!(grpc = ?grpc_addr, node_id = engine.node_id(), "quiver is serving");
            // As `run_frontends`: a metadata replica stopped by a fault (its log unwritable) stops the node.
            tokio::select! {
                () = shutdown => Ok(()),
                why = engine.meta().stopped_by_fault() => Err(Error::Internal(format!(
                    "the metadata replica stopped ({why}); the node stops so that it can start again on its durable \
                     state"
                ))),
            }
        };
        tracing::info!("shutting down");
        let _ = tx.send(true);
        // Past the deadline, what has not stopped is closed: everything acknowledged is durable already, and a peer's
        // stream that never ends (or a round stuck on a frozen peer) must not keep the node from stopping.
        let deadline = tokio::time::Instant::now() + config.server.shutdown_timeout.duration();
        for (what, task) in [
            ("the voter keeper", keeper),
            ("the tierer", tierer),
            ("the cold garbage collector", collector),
            ("the commit pusher", committer),
            ("the load reporter", reporter),
        ] {
            if let Some(task) = task {
                let _ = stop_by(deadline, what, task).await;
            }
        }
        // The metadata replica stops after the frontends (a DDL in flight finishes first), then its endpoint.
        if let Some(internal) = internal {
            match tokio::time::timeout(until(deadline), engine.shutdown()).await {
                Ok(Err(e)) => tracing::warn!(error = %e.report(), "metadata replica shutdown"),
                Err(_) => tracing::warn!("the metadata replica did not stop by the shutdown deadline; stopping anyway"),
                Ok(Ok(())) => {}
            }
            let _ = internal.stop.send(true);
            match stop_by(deadline, "the internal gRPC endpoint", internal.task).await {
                Some(Ok(Err(e))) => tracing::warn!(error = %e, "internal gRPC endpoint stopped with an error"),
                Some(Err(e)) => tracing::warn!(error = %e, "internal gRPC task"),
                Some(Ok(Ok(()))) | None => {}
            }
        }
        result
    }
}

/// The time left until `deadline` (the simulation's runtime has no `timeout_at`).
fn until(deadline: tokio::time::Instant) -> std::time::Duration {
    deadline.saturating_duration_since(tokio::time::Instant::now())
}

/// Waits for `task` until `deadline`; past it, aborts the task, says so, and returns `None`.
async fn stop_by<T>(
    deadline: tokio::time::Instant,
    what: &str,
    mut task: tokio::task::JoinHandle<T>,
) -> Option<std::result::Result<T, tokio::task::JoinError>> {
    match tokio::time::timeout(until(deadline), &mut task).await {
        Ok(joined) => Some(joined),
        Err(_) => {
            tracing::warn!(what, "did not stop by the shutdown deadline (server.shutdown_timeout); closed");
            task.abort();
            None
        }
    }
}

/// Runs `round` every `interval` until `stop` says stop (a round in progress finishes first).
async fn every<F, Fut>(interval: std::time::Duration, mut stop: tokio::sync::watch::Receiver<bool>, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        round().await;
    }
}

/// The background tierer's round: applies each table's tiering and retention policy on this node.
async fn tier_round(engine: Arc<Engine>) {
    for (table, report) in engine.apply_tier_policies(None).await {
        tracing::debug!(table, rows = report.rows, bytes = report.bytes, "background tiering");
    }
}

/// The garbage collector's round: collects the cold tier's garbage while this node leads the metadata group (one
/// node lists the bucket).
async fn gc_round(engine: Arc<Engine>, grace: std::time::Duration) {
    if engine.meta().status().leader_id != Some(engine.node_id()) {
        return;
    }
    if let Err(e) = engine.collect_cold_garbage(grace).await {
        tracing::warn!(error = %e.report(), "collecting the cold tier's garbage failed; it is retried later");
    }
}

/// Completes once `rx` says stop.
async fn signal(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Compares this node's wall clock with the metadata leader's, as heartbeats measure it: completes with an error if the
/// first measurement is beyond `[cluster] max_clock_skew`; afterwards only logs an error each time the skew goes
/// beyond it (`quiver_clock_skew_seconds` shows it). Never completes when the check is off.
#[cfg(not(madsim))]
async fn clock_check(engine: &Arc<Engine>, config: &Config) -> Error {
    let bound = config.cluster.max_clock_skew.0;
    let interval = config.cluster.node_heartbeat_interval.duration();
    if bound == 0 {
        return std::future::pending().await;
    }
    let beyond = |skew: i64| skew.unsigned_abs() > bound;
    let first = loop {
        tokio::time::sleep(interval).await;
        if let Some(skew) = engine.meta().clock_skew() {
            break skew;
        }
    };
    if beyond(first) {
        let meta = engine.meta();
        let leads = meta.leader().is_some_and(|(id, _)| id == meta.node_id());
        return Error::Config { detail: skew_refusal(first, bound, leads) };
    }
    let mut was_beyond = false;
    loop {
        tokio::time::sleep(interval).await;
        let Some(skew) = engine.meta().clock_skew() else { continue };
        if beyond(skew) && !was_beyond {
            tracing::error!(
                skew_ms = skew,
                bound_ms = bound,
                "this node's clock is too far from the metadata leader's"
            );
        }
        was_beyond = beyond(skew);
    }
}

/// Why a node whose clock is `skew_ms` behind the metadata leader's (negative: ahead) does not start; for the leader
/// itself (`leads`), behind most of the other members'.
#[cfg(not(madsim))]
fn skew_refusal(skew_ms: i64, bound_ms: u64, leads: bool) -> String {
    let side = if skew_ms < 0 { "ahead of" } else { "behind" };
    let whose = if leads { "most other members' (this node led the metadata group)" } else { "the metadata leader's" };
    format!(
        "this node's clock is {} ms {side} {whose}, more than cluster.max_clock_skew ({bound_ms} ms): \
         synchronize the clocks (NTP, chrony) and start again",
        skew_ms.unsigned_abs()
    )
}

/// Readies the principals for authenticated clients: the cluster's token key (chosen by the first node that needs
/// it) and the initial administrator, when configured and not there yet.
///
/// # Errors
///
/// When the metadata group cannot take the change, or the configured administrator's password cannot be read.
#[cfg(not(madsim))]
async fn prepare_auth(engine: &Arc<Engine>, auth: &crate::config::AuthConfig) -> Result<()> {
    use quiver_meta::PrincipalCommand;
    if engine.with_principals(|p| p.token_key().is_none()) {
        engine.change_principals(PrincipalCommand::SetTokenKey { key: crate::auth::new_token_key()? }).await?;
    }
    if let Some((name, password)) = auth.admin()? {
        if engine.with_principals(|p| p.role(&name).is_none()) {
            let verifier = crate::auth::new_verifier(password.expose().to_string()).await?;
            let command = PrincipalCommand::CreateRole {
                name: name.clone(),
                login: true,
                superuser: true,
                verifier: Some(verifier),
                if_not_exists: true,
            };
            engine.change_principals(command).await?;
            let detail = format!("CREATE USER {name} SUPERUSER (the initial administrator, from the configuration)");
            engine.audit().record(AuditEntry::new(AuditEvent::Dcl, Outcome::Ok, detail).user("quiver"));
        }
    } else if !engine.with_principals(|p| p.has_login()) {
        tracing::warn!(
            "auth is on and no user can log in yet: start a node with --init-admin NAME (password from \
             QUIVER_AUTH__ADMIN_PASSWORD or auth.admin_password_file)"
        );
    }
    Ok(())
}

/// Answers SIGHUP (which would otherwise end the process) with a log line, until `shutdown` completes.
#[cfg(not(madsim))]
async fn ignore_hangups(shutdown: impl Future<Output = ()>) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            Some(()) = hangup.recv() => tracing::info!("SIGHUP: nothing to reload (no TLS certificate configured)"),
        }
    }
}

/// A node reachable from other hosts without authentication and TLS starts only when told to (`--insecure`), and
/// then says so in its log (and `/health`).
#[cfg(not(madsim))]
fn refuse_exposed(config: &Config) -> Result<()> {
    let exposed = config.exposed();
    if exposed.is_empty() {
        return Ok(());
    }
    if config.server.insecure {
        tracing::warn!(
            exposed = %exposed.join("; "),
            "serving insecure (--insecure): whoever reaches these endpoints may read, change and drop everything"
        );
        return Ok(());
    }
    Err(Error::Config {
        detail: format!(
            "refusing to serve other hosts without security: {}. Configure it (docs/security.md), listen on loopback, \
             or pass --insecure (server.insecure = true) to serve so on a trusted network",
            exposed.join("; ")
        ),
    })
}

/// Serves the client frontends until `shutdown` completes or one of them fails, then stops all of them.
#[cfg(not(madsim))]
async fn run_frontends(
    engine: &Arc<Engine>,
    config: &Config,
    frontends: Frontends,
    grpc_addr: Option<SocketAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stop: &tokio::sync::watch::Sender<bool>,
) -> Result<()> {
    let rx = stop.subscribe();
    let address = |l: &TcpListener| l.local_addr().map_err(|e| Error::io("read a bound address", e));
    tracing::info!(
        flight = %address(&frontends.flight)?, pg = %address(&frontends.pg)?, http = %address(&frontends.http)?,
        grpc = ?grpc_addr, node_id = engine.node_id(),
        "quiver is serving"
    );
    let limits = flight_sql::FlightSqlLimits {
        max_message_bytes: config.limits.flight_message_max.0 as usize,
        ..flight_sql::FlightSqlLimits::default()
    };
    let authenticate = config.auth.enabled;
    let certificates = match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(cert_file), Some(key_file)) => Some(tls::Certificates::load(tls::TlsOptions {
            setting: "tls",
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            reload_interval: config.tls.reload_interval.duration(),
        })?),
        _ => None,
    };
    let tls_for = |alpn: &[&[u8]]| certificates.as_ref().map(|c| c.server_config(alpn)).transpose();
    let (http_tls, pg_tls, flight_tls) = (tls_for(&[b"http/1.1"])?, tls_for(&[])?, tls_for(&[b"h2"])?);
    match &certificates {
        Some(certificates) => drop(tokio::spawn(Arc::clone(certificates).watch(signal(rx.clone())))),
        // SIGHUP (`systemctl reload`) must not stop a node that has nothing to reload.
        None => drop(tokio::spawn(ignore_hangups(signal(rx.clone())))),
    }
    let mut http = tokio::spawn(http::serve_with(
        Arc::clone(engine),
        http::HttpOptions {
            authenticate,
            tls: http_tls,
            insecure: config.server.insecure.then(|| config.exposed()).filter(|e| !e.is_empty()),
        },
        frontends.http,
        signal(rx.clone()),
    ));
    if authenticate {
        prepare_auth(engine, &config.auth).await?;
    }
    let connections_per_user = config.limits.connections_per_user as usize;
    let pg_options = pg::PgOptions { authenticate, tls: pg_tls, connections_per_user };
    let mut pg = tokio::spawn(pg::serve_with(Arc::clone(engine), frontends.pg, pg_options, signal(rx.clone())));
    let flight_auth = authenticate.then(|| flight_sql::FlightAuth {
        token_ttl: config.auth.token_ttl.duration(),
        calls_per_user: connections_per_user,
    });
    let mut flight = tokio::spawn(flight_sql::serve_secured(
        Arc::clone(engine),
        limits,
        flight_auth,
        flight_tls,
        frontends.flight,
        signal(rx.clone()),
    ));
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
        // A clock too far from the metadata leader's: refused at start (time-based retention and the ages of data
        // would disagree between nodes).
        e = clock_check(engine, config) => Some(Err(e)),
        // A metadata replica whose Raft stopped (its log could not be written: a full or failing disk) answers
        // nothing again in this process; the node stops, to be started again (systemd: Restart=on-failure) on its
        // durable state once the disk is fixed, rather than serving errors for good.
        why = engine.meta().stopped_by_fault() => {
            tracing::error!(why = %why, "the metadata replica stopped; the node stops");
            Some(Err(Error::Internal(format!(
                "the metadata replica stopped ({why}); the node stops so that it can start again on its durable state"
            ))))
        }
    };
    let _ = stop.send(true);
    if let Some(result) = early {
        // The servers that did not fail stop on the signal; a finished one's handle must not be awaited again.
        return result.and(Err(Error::Internal("a server stopped on its own".into())));
    }
    // Statements in flight get until the deadline to finish (Flight SQL's graceful stop waits for its streams).
    let deadline = tokio::time::Instant::now() + config.server.shutdown_timeout.duration();
    let http = stop_by(deadline, "the HTTP server", http).await;
    let pg = stop_by(deadline, "the PostgreSQL gateway", pg).await;
    let flight = stop_by(deadline, "the Flight SQL server", flight).await;
    http.map_or(Ok(()), |r| joined("HTTP")(r.map(as_string)))?;
    pg.map_or(Ok(()), |r| joined("PostgreSQL")(r.map(as_string)))?;
    flight.map_or(Ok(()), |r| joined("Flight SQL")(r.map(|r| r.map_err(|e| e.to_string()))))
}

#[cfg(not(madsim))]
pub mod flight_sql;
#[cfg(not(madsim))]
pub mod pg;
#[cfg(not(madsim))]
pub mod tls;
