//! Third-party clients against a real server: the ADBC Flight SQL driver and pyarrow.flight, psycopg 3 and the
//! PostgreSQL JDBC driver (the scripts under `tests/clients/` assert the answers). The README's test command installs
//! these packages.

use quiver_node::config::{Config, Overrides};
use quiver_node::server::Server;

async fn with_server(
    run: impl FnOnce(std::net::SocketAddr, std::net::SocketAddr) -> std::process::Output + Send + 'static,
) {
    with_server_configured(Vec::new(), run).await;
}

/// As [`with_server`], with settings from the environment (`QUIVER_…` variables).
async fn with_server_configured(
    env: Vec<(String, String)>,
    run: impl FnOnce(std::net::SocketAddr, std::net::SocketAddr) -> std::process::Output + Send + 'static,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let overrides = Overrides::loopback(dir.path().to_path_buf());
    let server = Server::bind(Config::load(None, env, &overrides).expect("config")).await.expect("bind");
    let (flight, pg) = (server.flight_addr(), server.pg_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    let out = tokio::task::spawn_blocking(move || run(flight, pg)).await.expect("join");
    let _ = stop_tx.send(());
    running.await.expect("join").expect("clean shutdown");
    assert!(
        out.status.success(),
        "client script failed (install the clients with: pip install pyarrow adbc-driver-flightsql 'psycopg[binary]'; apt-get install default-jdk-headless libpostgresql-jdbc-java)\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn python(script: &str, args: &[String]) -> std::process::Output {
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    std::process::Command::new("python3").arg(path).args(args).output().expect("run python3")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_driver_and_pyarrow_flight_work() {
    with_server(|flight, _| python("flight_clients.py", &[flight.to_string()])).await;
}

/// Authentication and TLS on every client endpoint: psycopg (verify-full), ADBC and pyarrow (grpc+tls) log in
/// unmodified, and wrong passwords, missing tokens and plaintext are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_adbc_and_pyarrow_log_in_over_tls() {
    let fixture = |name: &str| format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"));
    const PASSWORD: &str = "secured clients password";
    let env = [
        ("QUIVER_AUTH__ENABLED", "true"),
        ("QUIVER_AUTH__ADMIN_USER", "admin"),
        ("QUIVER_AUTH__ADMIN_PASSWORD", PASSWORD),
        ("QUIVER_TLS__CERT_FILE", &fixture("server.pem")),
        ("QUIVER_TLS__KEY_FILE", &fixture("server.key")),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let ca = fixture("ca.pem");
    with_server_configured(env, move |flight, pg| {
        let args = [flight.port().to_string(), pg.port().to_string(), ca, "admin".into(), PASSWORD.into()];
        python("secured_clients.py", &args)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_3_works() {
    with_server(|_, pg| python("pg_clients.py", &[pg.ip().to_string(), pg.port().to_string()])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_jdbc_driver_works_and_browses_the_catalog() {
    with_server(|_, pg| {
        let program = format!("{}/tests/clients/PgJdbc.java", env!("CARGO_MANIFEST_DIR"));
        std::process::Command::new("java")
            .args(["-cp", "/usr/share/java/postgresql.jar", &program, &pg.ip().to_string(), &pg.port().to_string()])
            .output()
            .expect("run java")
    })
    .await;
}
