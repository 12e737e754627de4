//! The HTTP endpoint: `/health` (the process is up), `/ready` (the engine is open and serving) and `/metrics`
//! (Prometheus text format).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

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
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(engine);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn ready(State(_engine): State<Arc<Engine>>) -> impl IntoResponse {
    // The engine is open once this server runs: recovery happens before any endpoint binds.
    (StatusCode::OK, "ready\n")
}

async fn metrics(State(engine): State<Arc<Engine>>) -> impl IntoResponse {
    let tables = engine.tables().await.len();
    let bytes = {
        let engine = Arc::clone(&engine);
        tokio::task::spawn_blocking(move || engine.hot_store_bytes()).await.unwrap_or(0)
    };
    let body = engine.metrics().render(bytes, tables, &engine.raft_gauges());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
