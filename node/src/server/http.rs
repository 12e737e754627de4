//! The HTTP endpoint: `/health` (the process is up), `/ready` (the engine is open and serving) and `/metrics`
//! (Prometheus text format).
//!
//! With authentication on, `/metrics` needs a superuser's `authorization` header: `Basic` credentials (what
//! Prometheus' `basic_auth` sends) or a `Bearer` token from a Flight SQL handshake; `/health` and `/ready` stay open
//! for probes. Without, every route is open.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::IncomingStream;

use crate::engine::Engine;

/// Serves the HTTP endpoint on `listener` until `shutdown` completes.
///
/// # Errors
///
/// Fails when accepting connections fails.
pub async fn serve(
    engine: Arc<Engine>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(engine, HttpOptions::default(), listener, shutdown).await
}

/// Serves the HTTP endpoint as [`serve`] does, as `options` say: `/metrics` behind a superuser's credentials, TLS,
/// and `/health` telling that the node serves insecure.
///
/// # Errors
///
/// Fails when accepting connections fails.
pub async fn serve_with(
    engine: Arc<Engine>,
    options: HttpOptions,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let HttpOptions { authenticate, tls, insecure } = options;
    // `ok` first, always: probes look for it. An insecure node says so on the next lines.
    let health: Arc<str> = match insecure {
        Some(exposed) => format!("ok\ninsecure: {}\n", exposed.join("; ")).into(),
        None => "ok\n".into(),
    };
    let app = Router::new()
        .route("/health", get(move || std::future::ready(health.to_string())))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(Shared { engine, authenticate })
        .into_make_service_with_connect_info::<Peer>();
    match tls {
        Some(tls) => {
            let listener = crate::server::tls::TlsListener::new(listener, tls)?;
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        }
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
    }
}

/// The client's address, for the audit log.
#[derive(Debug, Clone, Copy)]
struct Peer(std::net::SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, crate::server::tls::TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, crate::server::tls::TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// How the HTTP endpoint serves.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// `/metrics` needs a superuser's credentials.
    pub authenticate: bool,
    /// Serve over TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The node serves insecure (`--insecure`) and leaves these open: `/health` says so.
    pub insecure: Option<Vec<String>>,
}

/// What the routes share.
#[derive(Clone)]
struct Shared {
    engine: Arc<Engine>,
    authenticate: bool,
}

/// Refuses a request without a superuser's credentials when authentication is on.
async fn authorized(
    shared: &Shared,
    peer: Peer,
    headers: &HeaderMap,
) -> Result<(), (StatusCode, [(header::HeaderName, &'static str); 1], String)> {
    if !shared.authenticate {
        return Ok(());
    }
    let challenge = [(header::WWW_AUTHENTICATE, "Basic realm=\"quiver\"")];
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Err((StatusCode::UNAUTHORIZED, challenge, "authentication required\n".into()));
    };
    let caller = match crate::auth::check_header(&shared.engine, value, &peer.0.to_string()).await {
        Ok(caller) => caller,
        Err(e) => return Err((StatusCode::UNAUTHORIZED, challenge, format!("{e}\n"))),
    };
    match shared.engine.authorize_superuser(&caller, "read the metrics").await {
        Ok(()) => Ok(()),
        Err(e) => Err((StatusCode::FORBIDDEN, challenge, format!("{e}\n"))),
    }
}

async fn ready(State(_shared): State<Shared>) -> impl IntoResponse {
    // The engine is open once this server runs: recovery happens before any endpoint binds.
    (StatusCode::OK, "ready\n")
}

async fn metrics(
    State(shared): State<Shared>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> axum::response::Response {
    if let Err(refusal) = authorized(&shared, peer, &headers).await {
        return refusal.into_response();
    }
    let engine = shared.engine;
    let tables = engine.tables().await.len();
    let bytes = {
        let engine = Arc::clone(&engine);
        tokio::task::spawn_blocking(move || engine.hot_store_bytes()).await.unwrap_or(0)
    };
    let body = engine.metrics().render(bytes, tables, &engine.raft_gauges());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
