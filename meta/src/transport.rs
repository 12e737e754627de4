//! How a node reaches the internal endpoints of its peers: plaintext, or mutual TLS under the cluster's CA.
//!
//! Every client of another node's internal endpoint makes its channels through a [`PeerTransport`]: the Raft network,
//! the metadata and cluster clients here, and the node's shard, data and worker clients. One setting ([`PeerTls`])
//! decides for all of them. With it set, each connection runs a TLS handshake that checks the peer's certificate
//! against the cluster CA (and its name against the host dialled) and presents this node's certificate, which the peer
//! checks in turn against the same CA: a process without a certificate the cluster CA signed can neither join, vote,
//! append Raft entries nor send or fetch shard data, and cannot pose as a node to one.
//!
//! The simulation has no TLS (madsim's network carries messages, not bytes): there the transport is plaintext.

use std::fmt;
#[cfg(not(madsim))]
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// The TLS a node speaks to its peers: none, or mutual TLS with a client configuration that trusts the cluster CA
/// and presents the node's certificate.
#[derive(Clone, Default)]
pub struct PeerTls {
    #[cfg(not(madsim))]
    config: Option<Arc<rustls::ClientConfig>>,
}

impl PeerTls {
    /// Plaintext connections (a cluster on a trusted network, tests, the simulation).
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// Mutual TLS with `config`: its root store holds the cluster CA, its client certificate resolver the node's
    /// certificate.
    #[cfg(not(madsim))]
    pub fn mutual(config: Arc<rustls::ClientConfig>) -> Self {
        Self { config: Some(config) }
    }

    /// Whether connections use TLS.
    pub fn enabled(&self) -> bool {
        #[cfg(not(madsim))]
        return self.config.is_some();
        #[cfg(madsim)]
        return false;
    }
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.enabled() { "PeerTls(mutual)" } else { "PeerTls(plaintext)" })
    }
}

impl PartialEq for PeerTls {
    fn eq(&self, other: &Self) -> bool {
        #[cfg(not(madsim))]
        return match (&self.config, &other.config) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        #[cfg(madsim)]
        return other.enabled() == self.enabled();
    }
}

impl Eq for PeerTls {}

/// The secret a node presents to join a cluster (ClickHouse's inter-server secret, CockroachDB's join token): a node
/// that does not know it is refused before anything changes. Compared in constant time; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinSecret(String);

impl JoinSecret {
    /// Wraps `secret`.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret, to send in a join request.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this secret, taking the same time wherever the two first differ.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        // Every byte of the longer is looked at, so the time tells neither where they differ nor the length.
        let mut differ = a.len() ^ b.len();
        for i in 0..a.len().max(b.len()) {
            differ |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
        }
        differ == 0
    }
}

impl fmt::Debug for JoinSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinSecret(..)")
    }
}

/// Makes channels to peers' internal endpoints: the connect timeout and the TLS of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTransport {
    connect_timeout: Duration,
    tls: PeerTls,
}

impl PeerTransport {
    /// Returns a transport whose connection attempts give up after `connect_timeout`.
    pub fn new(connect_timeout: Duration, tls: PeerTls) -> Self {
        Self { connect_timeout, tls }
    }

    /// Plaintext connections giving up after `connect_timeout`.
    pub fn plaintext(connect_timeout: Duration) -> Self {
        Self::new(connect_timeout, PeerTls::plaintext())
    }

    /// How long a connection attempt may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The cluster's TLS.
    pub fn tls(&self) -> &PeerTls {
        &self.tls
    }

    /// An endpoint for the internal endpoint at `addr` (host:port), with the connect timeout; callers may set more
    /// options on it before [`PeerTransport::connect`] or [`PeerTransport::connect_lazy`].
    ///
    /// # Errors
    ///
    /// Fails when `addr` is not a valid authority.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        Ok(Endpoint::from_shared(format!("http://{addr}"))?.connect_timeout(self.connect_timeout))
    }

    /// A channel to `endpoint` that connects on first use and again after failures.
    pub fn connect_lazy(&self, endpoint: &Endpoint) -> Channel {
        #[cfg(not(madsim))]
        if let Some(config) = &self.tls.config {
            return endpoint.connect_with_connector_lazy(tls::Connector::new(Arc::clone(config)));
        }
        endpoint.connect_lazy()
    }

    /// A channel to `endpoint`, connected.
    ///
    /// # Errors
    ///
    /// Fails when the peer cannot be reached in time or (with TLS) the handshake fails.
    pub async fn connect(&self, endpoint: &Endpoint) -> Result<Channel, tonic::transport::Error> {
        #[cfg(not(madsim))]
        if let Some(config) = &self.tls.config {
            return endpoint.connect_with_connector(tls::Connector::new(Arc::clone(config))).await;
        }
        endpoint.connect().await
    }

    /// A connected channel to the internal endpoint at `addr`.
    ///
    /// # Errors
    ///
    /// As [`PeerTransport::endpoint`] and [`PeerTransport::connect`].
    pub async fn open(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.connect(&self.endpoint(addr)?).await
    }

    /// A lazily connecting channel to the internal endpoint at `addr`.
    ///
    /// # Errors
    ///
    /// As [`PeerTransport::endpoint`].
    pub fn open_lazy(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        Ok(self.connect_lazy(&self.endpoint(addr)?))
    }
}

#[cfg(not(madsim))]
mod tls {
    //! The TLS connector handed to tonic: TCP, then a rustls handshake naming the host dialled.

    use std::future::Future;
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use hyper_util::rt::TokioIo;
    use rustls::pki_types::ServerName;
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;
    use tonic::codegen::Service;
    use tonic::codegen::http::Uri;

    /// Connects to the host and port of a channel's URI over TLS.
    #[derive(Clone)]
    pub(super) struct Connector {
        tls: tokio_rustls::TlsConnector,
    }

    impl Connector {
        pub(super) fn new(config: Arc<rustls::ClientConfig>) -> Self {
            Self { tls: tokio_rustls::TlsConnector::from(config) }
        }
    }

    impl Service<Uri> for Connector {
        type Response = TokioIo<TlsStream<TcpStream>>;
        type Error = io::Error;
        type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, uri: Uri) -> Self::Future {
            let tls = self.tls.clone();
            Box::pin(async move {
                let invalid = |detail: String| io::Error::new(io::ErrorKind::InvalidInput, detail);
                let host = uri.host().ok_or_else(|| invalid(format!("{uri}: no host")))?;
                // A URI brackets an IPv6 address; the socket and the certificate's name do not.
                let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
                let port = uri.port_u16().ok_or_else(|| invalid(format!("{uri}: no port")))?;
                let name = ServerName::try_from(host.clone()).map_err(|e| invalid(format!("{host}: {e}")))?;
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                // Small request/response messages: without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms.
                tcp.set_nodelay(true)?;
                Ok(TokioIo::new(tls.connect(name, tcp).await?))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_secret_matches_only_itself_and_is_not_shown() {
        let secret = JoinSecret::new("s3cret-join");
        assert!(secret.matches("s3cret-join"));
        for other in ["", "s3cret-joi", "s3cret-join!", "S3cret-join", "x"] {
            assert!(!secret.matches(other), "{other}");
        }
        assert!(!format!("{secret:?}").contains("s3cret"));
        assert!(!JoinSecret::new("").matches("a"));
    }

    #[test]
    fn a_plaintext_transport_makes_http_endpoints() {
        let transport = PeerTransport::plaintext(Duration::from_millis(250));
        assert!(!transport.tls().enabled());
        let endpoint = transport.endpoint("127.0.0.1:7000").expect("endpoint");
        assert_eq!(endpoint.uri().to_string(), "http://127.0.0.1:7000/");
        assert_eq!(endpoint.get_connect_timeout(), Some(Duration::from_millis(250)));
        assert!(transport.endpoint("not an address").is_err());
    }
}
