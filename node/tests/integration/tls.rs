//! TLS on every client endpoint, with authentication on: psql with `sslmode=verify-full`, arrow-flight's Flight SQL
//! client over a TLS channel, an HTTPS client; a renewed certificate is served without a restart. The certificates
//! are test fixtures (tests/fixtures/tls, signed by a test CA).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::AsArray;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use quiver_node::config::{Config, Overrides};
use quiver_node::server::Server;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const PASSWORD: &str = "tls test password";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR")))
}

fn der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).expect("certificate").as_ref().to_vec()
}

struct Tls {
    flight: std::net::SocketAddr,
    pg: std::net::SocketAddr,
    http: std::net::SocketAddr,
    dir: tempfile::TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
    running: tokio::task::JoinHandle<quiver_node::Result<()>>,
}

impl Tls {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(fixture("server.pem"), dir.path().join("cert.pem")).expect("copy");
        std::fs::copy(fixture("server.key"), dir.path().join("key.pem")).expect("copy");
        let overrides = Overrides { init_admin: Some("admin".into()), ..Overrides::loopback(dir.path().join("data")) };
        let env = vec![
            ("QUIVER_AUTH__ADMIN_PASSWORD".to_string(), PASSWORD.to_string()),
            ("QUIVER_TLS__CERT_FILE".to_string(), dir.path().join("cert.pem").display().to_string()),
            ("QUIVER_TLS__KEY_FILE".to_string(), dir.path().join("key.pem").display().to_string()),
            ("QUIVER_TLS__RELOAD_INTERVAL".to_string(), "200ms".to_string()),
        ];
        let server = Server::bind(Config::load(None, env, &overrides).expect("config")).await.expect("bind");
        let (flight, pg, http) = (server.flight_addr(), server.pg_addr(), server.http_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Self { flight, pg, http, dir, stop, running }
    }

    /// Runs psql with `sslmode`; `None` when psql is not installed.
    async fn psql(&self, sslmode: &str, command: &str) -> Option<std::process::Output> {
        let conninfo = format!(
            "host=localhost hostaddr=127.0.0.1 port={} user=admin dbname=quiver sslmode={sslmode} sslrootcert={}",
            self.pg.port(),
            fixture("ca.pem").display()
        );
        let output = tokio::process::Command::new("psql")
            .args(["-X", "-w", "-A", "-t", "-v", "ON_ERROR_STOP=1", &conninfo, "-c", command])
            .env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(60), output).await.expect("psql finishes") {
            Ok(output) => Some(output),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("running psql: {e}"),
        }
    }

    /// The certificate the HTTP endpoint presents to a new connection, and its answer to `GET path`.
    async fn https(&self, path: &str) -> (Vec<u8>, String) {
        self.https_with(path, "").await
    }

    /// [`Self::https`] with `headers` (each line ending in CRLF) added to the request.
    async fn https_with(&self, path: &str, headers: &str) -> (Vec<u8>, String) {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(fixture("ca.pem")).expect("ca")).expect("root");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(self.http).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let mut stream = connector.connect(name, tcp).await.expect("TLS handshake with the HTTP endpoint");
        let presented = stream.get_ref().1.peer_certificates().expect("certificates")[0].as_ref().to_vec();
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response).await;
        (presented, response)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.running.await.expect("join").expect("clean shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_speaks_tls_and_a_renewed_certificate_is_served_without_a_restart() {
    let server = Tls::start().await;

    // HTTP: the fixture certificate; /health open, /metrics behind credentials.
    let (presented, health) = server.https("/health").await;
    assert_eq!(presented, der(&fixture("server.pem")));
    assert!(health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"), "{health}");
    let (_, metrics) = server.https("/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 401"), "{metrics}");
    let basic = |password: &str| {
        use base64::Engine as _;
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("admin:{password}"));
        format!("Authorization: Basic {credentials}\r\n")
    };
    let (_, wrong) = server.https_with("/metrics", &basic("not the password")).await;
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let (_, metrics) = server.https_with("/metrics", &basic(PASSWORD)).await;
    assert!(metrics.starts_with("HTTP/1.1 200") && metrics.contains("quiver_"), "{metrics}");

    // Flight SQL over TLS, verified against the test CA.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(fixture("ca.pem")).expect("ca")))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", server.flight))
        .expect("uri")
        .tls_config(tls)
        .expect("tls config")
        .connect()
        .await
        .expect("TLS connect");
    let mut client = FlightSqlServiceClient::new(channel);
    client.handshake("admin", PASSWORD).await.expect("handshake over TLS");
    let info = client.execute("SELECT 41 + 1 AS answer".into(), None).await.expect("query");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let batches: Vec<_> = client.do_get(ticket).await.expect("do_get").try_collect().await.expect("rows");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    // The HTTP logins above are in the audit log, with the client's address.
    let info = client
        .execute(
            "SELECT outcome, peer FROM system.audit WHERE event = 'login' AND protocol = 'http' ORDER BY id".into(),
            None,
        )
        .await
        .expect("audit query");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let audit: Vec<_> = client.do_get(ticket).await.expect("do_get").try_collect().await.expect("rows");
    let audit = arrow::compute::concat_batches(&audit[0].schema(), &audit).expect("concat");
    let outcomes = arrow::compute::cast(audit.column(0), &arrow::datatypes::DataType::Utf8).expect("cast");
    let outcomes: Vec<_> = outcomes.as_string::<i32>().iter().map(|o| o.unwrap_or_default().to_string()).collect();
    assert_eq!(outcomes, ["failed", "ok"], "{audit:?}");
    let peers = arrow::compute::cast(audit.column(1), &arrow::datatypes::DataType::Utf8).expect("cast");
    assert!(peers.as_string::<i32>().iter().all(|p| p.is_some_and(|p| p.starts_with("127.0.0.1:"))), "{audit:?}");
    // A client that does not speak TLS gets nowhere.
    let plain = Channel::from_shared(format!("http://{}", server.flight)).expect("uri").connect().await;
    if let Ok(plain) = plain {
        let e = FlightSqlServiceClient::new(plain).handshake("admin", PASSWORD).await;
        assert!(e.is_err(), "a plaintext handshake must fail");
    }

    // PostgreSQL: verify-full checks the chain and the name; a connection without TLS is refused.
    if let Some(out) = server.psql("verify-full", "SELECT 6 * 7").await {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "psql verify-full failed: {stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
        let out = server.psql("disable", "SELECT 1").await.expect("psql");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("TLS connections only"), "{stderr}");
    } else {
        println!("SKIPPED: psql is not installed; the PostgreSQL part of this test did not run");
    }

    // Renew: new files in place; new connections get the new certificate, with no restart.
    std::fs::copy(fixture("server2.pem"), server.dir.path().join("cert.pem")).expect("copy");
    std::fs::copy(fixture("server2.key"), server.dir.path().join("key.pem")).expect("copy");
    let renewed = der(&fixture("server2.pem"));
    let mut presented = Vec::new();
    for _ in 0..50 {
        presented = server.https("/health").await.0;
        if presented == renewed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(presented, renewed, "the renewed certificate is served");
    server.stop().await;
}
