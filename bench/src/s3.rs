//! A real S3-compatible server for benchmarks and tests: moto's server (from PyPI, `pip install "moto[server]"`)
//! started on a loopback port and stopped when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quiver_node::cold::ColdConfig;

/// A moto S3 server on a loopback port, stopped when dropped.
pub struct S3Server {
    child: Child,
    /// Its URL, `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl S3Server {
    /// Starts the server and waits until it listens.
    ///
    /// # Panics
    ///
    /// When python3 or moto is missing, or the server does not listen within a minute.
    pub fn start() -> S3Server {
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m moto.server (pip install \"moto[server]\")");
        let mut server = S3Server { child, endpoint: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("moto's S3 server exited ({status}); is it installed? pip install \"moto[server]\"");
            }
            assert!(Instant::now() < deadline, "moto's S3 server did not listen within a minute");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// Creates a bucket (moto accepts unsigned requests).
    ///
    /// # Panics
    ///
    /// When the server refuses.
    pub fn create_bucket(&self, bucket: &str) {
        let port = self.endpoint.rsplit(':').next().expect("port");
        let mut stream = TcpStream::connect(format!("127.0.0.1:{port}")).expect("connect");
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("reply");
        assert!(reply.starts_with("HTTP/1.1 200"), "creating bucket {bucket}: {reply}");
    }

    /// The `[cold]` settings of a store at `url` (`s3://bucket/prefix`) on this server.
    pub fn cold_config(&self, url: &str) -> ColdConfig {
        ColdConfig {
            store: url.to_string(),
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            allow_http: true,
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
            ..ColdConfig::default()
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
