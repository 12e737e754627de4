//! TLS for the client endpoints (Flight SQL, PostgreSQL wire, HTTP), and mutual TLS between nodes
//! ([`ClusterTls`]), with rustls.
//!
//! [`Certificates`] holds the node's certificate chain and key, read from the files the configuration names, and
//! hands them to every new handshake (it is the rustls certificate resolver of all three endpoints). It is read
//! again when the files change (checked every [`TlsOptions::reload_interval`]) and on `SIGHUP`, so a renewed
//! certificate is served without a restart; connections already open keep the one they started with. A reload that
//! fails (a half-written file, a key that does not match) keeps the current certificate and says why in the log.
//!
//! Handshakes run on their own tasks, bounded by [`HANDSHAKE_TIMEOUT`], so a client that connects and stalls delays
//! nobody else; an accepted connection reaches its server only once its handshake completed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::audit::{AuditEntry, AuditEvent, Outcome};
use crate::error::{Error, Result};

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections whose handshake completed, waiting for their server to take them.
const ACCEPTED_QUEUE: usize = 128;

/// Where the node's certificate lives, and how often to look for a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// The settings' section, to name in errors (`tls`, `cluster.tls`).
    pub setting: &'static str,
    /// The certificate chain (PEM), the node's own certificate first.
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// How often the files are checked for a change.
    pub reload_interval: Duration,
}

/// The node's certificate and key, reloaded when their files change.
#[derive(Debug)]
pub struct Certificates {
    options: TlsOptions,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times when last read.
    read_at: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads a certificate chain and key and checks that they belong together.
fn read_pair(setting: &str, cert_file: &Path, key_file: &Path) -> Result<CertifiedKey> {
    let bad = |what: &str, path: &Path, why: String| Error::Config {
        detail: format!("{setting}.{what}: {}: {why}", path.display()),
    };
    let cert_pem = std::fs::read(cert_file).map_err(|e| bad("cert_file", cert_file, e.to_string()))?;
    let key_pem = std::fs::read(key_file).map_err(|e| bad("key_file", key_file, e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad("cert_file", cert_file, format!("not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(bad("cert_file", cert_file, "holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| bad("key_file", key_file, format!("not a PEM private key: {e}")))?;
    let signer = provider::sign::any_supported_type(&key)
        .map_err(|e| bad("key_file", key_file, format!("unsupported key: {e}")))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| bad("key_file", key_file, format!("does not match the certificate: {e}")))?;
    Ok(certified)
}

impl Certificates {
    /// Reads the certificate and key `options` name.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the file when one cannot be read or parsed, or the key does not match.
    pub fn load(options: TlsOptions) -> Result<Arc<Self>> {
        let stamps = (modified(&options.cert_file), modified(&options.key_file));
        let pair = read_pair(options.setting, &options.cert_file, &options.key_file)?;
        Ok(Arc::new(Self { options, current: RwLock::new(Arc::new(pair)), read_at: Mutex::new(stamps) }))
    }

    /// Reads the files again when they changed since last read (or always, with `force`); returns whether a new
    /// certificate is served. A pair that does not load leaves the current one in place.
    ///
    /// # Errors
    ///
    /// As [`Certificates::load`]; the current certificate stays.
    pub fn reload(&self, force: bool) -> Result<bool> {
        let stamps = (modified(&self.options.cert_file), modified(&self.options.key_file));
        let mut read_at = self.read_at.lock().unwrap_or_else(PoisonError::into_inner);
        if !force && *read_at == stamps {
            return Ok(false);
        }
        let pair = read_pair(self.options.setting, &self.options.cert_file, &self.options.key_file)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pair);
        *read_at = stamps;
        Ok(true)
    }

    /// A rustls server configuration serving these certificates, offering `alpn` protocols.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Internal(format!("TLS protocol versions: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// Keeps the certificate current until `shutdown` completes: checks the files every reload interval, and reads
    /// them on `SIGHUP`.
    pub async fn watch(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(self.options.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let force = tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            let certs = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || certs.reload(force)).await {
                Ok(Ok(true)) => tracing::info!(cert = %self.options.cert_file.display(), "TLS certificate reloaded"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e.report(), "TLS certificate not reloaded; serving the previous one")
                }
                Err(e) => tracing::warn!(error = %e, "TLS certificate reload task failed"),
            }
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner)))
    }
}

/// A node presents the same certificate when it dials a peer as when a peer dials it.
impl ResolvesClientCert for Certificates {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner)))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Mutual TLS between nodes: the node's certificate (reloaded as the client endpoints' is) and the cluster CA that
/// every peer's certificate must chain to, as a server configuration for the internal endpoint and a client
/// configuration for the connections to peers.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    /// The node's certificate; keep it current with [`Certificates::watch`].
    pub certificates: Arc<Certificates>,
    /// The internal endpoint's: asks every peer for a certificate and refuses the connection without a valid one.
    pub server: Arc<rustls::ServerConfig>,
    /// The peers' clients': trusts only the cluster CA and presents the node's certificate.
    pub client: Arc<rustls::ClientConfig>,
}

impl ClusterTls {
    /// The mutual TLS `config`'s `[cluster.tls]` asks for, or `None` when it is off.
    ///
    /// # Errors
    ///
    /// As [`ClusterTls::load`].
    pub fn from_config(config: &crate::config::Config) -> Result<Option<Self>> {
        let internal = &config.cluster.tls;
        let (Some(ca_file), Some(cert_file), Some(key_file)) =
            (&internal.ca_file, &internal.cert_file, &internal.key_file)
        else {
            return Ok(None);
        };
        let options = TlsOptions {
            setting: "cluster.tls",
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            reload_interval: config.tls.reload_interval.duration(),
        };
        Self::load(ca_file, options).map(Some)
    }

    /// Reads the cluster CA from `ca_file` and the node's certificate as `options` say.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the file when one cannot be read or parsed.
    pub fn load(ca_file: &Path, options: TlsOptions) -> Result<Self> {
        let setting = options.setting;
        let bad = |why: String| Error::Config { detail: format!("{setting}.ca_file: {}: {why}", ca_file.display()) };
        let pem = std::fs::read(ca_file).map_err(|e| bad(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.map_err(|e| bad(format!("not PEM certificates: {e}")))?).map_err(|e| bad(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("holds no certificate".into()));
        }
        let roots = Arc::new(roots);
        let certificates = Certificates::load(options)?;
        let provider = Arc::new(provider::default_provider());
        let versions = |e: rustls::Error| Error::Internal(format!("TLS protocol versions: {e}"));
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(versions)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::clone(&certificates) as Arc<dyn ResolvesServerCert>);
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(versions)?
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::clone(&certificates) as Arc<dyn ResolvesClientCert>);
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self { certificates, server: Arc::new(server), client: Arc::new(client) })
    }
}

/// Accepts connections on `listener` and runs their TLS handshakes, each on its own task; yields those that
/// completed, with the peer's address. Ends when the receiver is dropped.
pub fn accept(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    accept_with(listener, config, None)
}

/// As [`accept`], for the internal endpoint: a handshake refused (no certificate of the cluster CA) goes to the
/// `engine`'s audit log, since only nodes of the cluster should be dialling it.
pub fn accept_peers(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    engine: Arc<crate::Engine>,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    accept_with(listener, config, Some(engine))
}

fn accept_with(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    peers: Option<Arc<crate::Engine>>,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (socket, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a TLS connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if let Err(e) = socket.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "could not disable Nagle's algorithm");
            }
            let (acceptor, tx, peers) = (acceptor.clone(), tx.clone(), peers.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send((stream, peer)).await;
                    }
                    Ok(Err(e)) => match peers {
                        Some(engine) => engine.audit().record(
                            AuditEntry::new(
                                AuditEvent::PeerRefused,
                                Outcome::Refused,
                                format!("no valid certificate of the cluster CA: {e}"),
                            )
                            .peer(peer)
                            .protocol("internal"),
                        ),
                        None => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    },
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// The connections [`accept`] yields, as an axum listener (for the HTTP endpoint).
pub(crate) struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub(crate) fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(Self { accepted: accept(listener, config), local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept task ends only when this receiver is dropped: never while it is being polled.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR")))
    }

    fn fingerprint(certs: &Certificates) -> Vec<u8> {
        certs.current.read().expect("lock").cert[0].as_ref().to_vec()
    }

    #[test]
    fn loads_a_pair_reloads_on_change_and_keeps_the_old_one_when_the_new_is_bad() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::copy(fixture("server.pem"), &cert).expect("copy");
        std::fs::copy(fixture("server.key"), &key).expect("copy");
        let options = TlsOptions {
            setting: "tls",
            cert_file: cert.clone(),
            key_file: key.clone(),
            reload_interval: Duration::from_secs(1),
        };
        let certs = Certificates::load(options).expect("load");
        let first = fingerprint(&certs);
        assert!(!certs.reload(false).expect("unchanged"));

        std::fs::copy(fixture("server2.pem"), &cert).expect("copy");
        std::fs::copy(fixture("server2.key"), &key).expect("copy");
        assert!(certs.reload(true).expect("reload"));
        let second = fingerprint(&certs);
        assert_ne!(first, second);

        // A key that does not match the certificate (mid-rotation) leaves the served pair alone.
        std::fs::copy(fixture("server.key"), &key).expect("copy");
        let e = certs.reload(true).expect_err("mismatch");
        assert!(e.to_string().contains("does not match"), "{e}");
        assert_eq!(fingerprint(&certs), second);
        std::fs::write(&cert, "not a certificate").expect("write");
        assert!(certs.reload(true).is_err());
        assert_eq!(fingerprint(&certs), second);
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let options = TlsOptions {
            setting: "tls",
            cert_file: fixture("missing.pem"),
            key_file: fixture("server.key"),
            reload_interval: Duration::from_secs(1),
        };
        let e = Certificates::load(options).expect_err("missing");
        assert!(e.to_string().contains("tls.cert_file") && e.to_string().contains("missing.pem"), "{e}");
    }
}
