//! Mutual TLS between nodes and the join secret: two nodes with certificates of the cluster CA form a cluster and
//! replicate shard data to each other; a node with a certificate of another CA, or with the wrong join secret, cannot
//! join; a client without a certificate of the cluster CA is refused at the handshake; `quiver admin` reaches a node
//! with the operator's certificate. The certificates are test fixtures (tests/fixtures/tls).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quiver_meta::service::ClusterClient;
use quiver_meta::transport::{PeerTls, PeerTransport};
use quiver_node::Engine;
use quiver_node::config::{Config, Overrides};
use quiver_node::server::Server;
use quiver_node::server::tls::{ClusterTls, TlsOptions};

const SECRET: &str = "the join secret of the test cluster";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The settings of a node whose certificate is fixture `cert` (`server`, `server2`, `stranger`), with `secret`.
fn settings(cert: &str, secret: &str) -> Vec<(String, String)> {
    [
        ("QUIVER_CLUSTER__TLS__CA_FILE", fixture("ca.pem")),
        ("QUIVER_CLUSTER__TLS__CERT_FILE", fixture(&format!("{cert}.pem"))),
        ("QUIVER_CLUSTER__TLS__KEY_FILE", fixture(&format!("{cert}.key"))),
        ("QUIVER_CLUSTER__JOIN_SECRET", secret.to_string()),
        ("QUIVER_CLUSTER__JOIN_TIMEOUT", "3s".to_string()),
        ("QUIVER_CLUSTER__REBALANCE", "false".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

struct Node {
    engine: Arc<Engine>,
    grpc: String,
    stop: tokio::sync::oneshot::Sender<()>,
    running: tokio::task::JoinHandle<quiver_node::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start(
    node_id: u64,
    join: Vec<String>,
    cold: &std::path::Path,
    cert: &str,
    secret: &str,
) -> quiver_node::Result<Node> {
    let dir = tempfile::tempdir().expect("tempdir");
    let overrides = Overrides {
        node_id: Some(node_id),
        join,
        cold_store: Some(format!("file://{}", cold.display())),
        cold_shared_dir: true,
        // The certificates name 127.0.0.1: the address peers dial is checked against them.
        ..Overrides::loopback(dir.path().to_path_buf())
    };
    let server = Server::bind(Config::load(None, settings(cert, secret), &overrides)?).await?;
    let grpc = server.grpc_addr().expect("internal endpoint").to_string();
    let engine = Arc::clone(server.engine());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Ok(Node { engine, grpc, stop, running, _dir: dir })
}

impl Node {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.running.await.expect("join").expect("clean shutdown");
    }
}

/// A cluster client presenting fixture `cert` and trusting the test CA.
fn client_as(cert: &str) -> ClusterClient {
    let options = TlsOptions {
        setting: "cluster.tls",
        cert_file: PathBuf::from(fixture(&format!("{cert}.pem"))),
        key_file: PathBuf::from(fixture(&format!("{cert}.key"))),
        reload_interval: Duration::from_secs(10),
    };
    let tls = ClusterTls::load(&PathBuf::from(fixture("ca.pem")), options).expect("certificates");
    let transport = PeerTransport::new(Duration::from_secs(2), PeerTls::mutual(tls.client));
    ClusterClient::with_transport(transport, Duration::from_secs(3))
}

async fn number(engine: &Engine, sql: &str) -> i64 {
    let batches = engine.execute_one(sql).await.expect(sql).collect().await.expect(sql);
    let column = arrow::compute::cast(batches[0].column(0), &arrow::datatypes::DataType::Int64).expect("a number");
    column.as_any().downcast_ref::<arrow::array::Int64Array>().expect("int64").value(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_speak_mutual_tls_and_refuse_strangers_and_wrong_join_secrets() {
    let cold = tempfile::tempdir().expect("tempdir");
    let one = start(1, vec![], cold.path(), "server", SECRET).await.expect("node 1 bootstraps");
    let two = start(2, vec![one.grpc.clone()], cold.path(), "server2", SECRET).await.expect("node 2 joins");

    // Shard data goes between them: every row written through one node is durable on both copies before the
    // statement is acknowledged, and reads on the other node see it.
    one.engine
        .execute_one("CREATE TABLE t (id BIGINT PRIMARY KEY, v BIGINT) WITH (shards = 2, replicas = 2)")
        .await
        .expect("create");
    for _ in 0..100 {
        if two.engine.hot_table("t").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    two.engine.execute_one("INSERT INTO t SELECT value, value * 3 FROM generate_series(1, 200)").await.expect("insert");
    for node in [&one, &two] {
        assert_eq!(number(&node.engine, "SELECT count(*) FROM t").await, 200);
        assert_eq!(number(&node.engine, "SELECT sum(v) FROM t").await, 3 * 200 * 201 / 2);
    }
    let status = client_as("server").status(&one.grpc).await.expect("a certified client is served");
    assert_eq!(status.members.len(), 2, "{status:?}");

    // Without a certificate of the cluster CA, nothing on the internal endpoint answers: plaintext, or a certificate
    // another CA signed.
    let plaintext = ClusterClient::new(Duration::from_secs(2), Duration::from_secs(3));
    assert!(plaintext.status(&one.grpc).await.is_err(), "a plaintext client is refused");
    assert!(client_as("stranger").status(&one.grpc).await.is_err(), "a stranger's certificate is refused");

    // A node with a certificate of another CA cannot join; a node with a good certificate but the wrong join
    // secret is refused saying so. Neither changed the membership.
    let stranger = start(3, vec![one.grpc.clone()], cold.path(), "stranger", SECRET).await;
    assert!(stranger.is_err(), "a node with a stranger's certificate joined");
    let wrong = start(4, vec![one.grpc.clone()], cold.path(), "server2", "not the secret of this cluster").await;
    let Err(e) = wrong else { panic!("a node with the wrong join secret joined") };
    assert!(e.report().contains("join secret"), "{}", e.report());
    // The refusal is in the audit log of the node that refused it, with the asker's id and address.
    let refusals: Vec<_> = one
        .engine
        .audit()
        .recent()
        .into_iter()
        .filter(|entry| entry.event == quiver_node::audit::AuditEvent::JoinRefused)
        .collect();
    assert!(!refusals.is_empty(), "no join_refused entry");
    assert!(refusals.iter().all(|r| r.detail.starts_with("node 4 at ") && r.peer.is_some()), "{refusals:?}");
    let status = client_as("server").status(&one.grpc).await.expect("status");
    let mut members: Vec<u64> = status.members.iter().map(|m| m.node_id).collect();
    members.sort_unstable();
    assert_eq!(members, [1, 2], "{status:?}");

    // `quiver admin` reads the node's settings for its certificate; without them it cannot reach the node.
    let config = Config::load(None, settings("server", SECRET), &Overrides::default()).expect("config");
    let target = quiver_node::cli::admin::Target::from_config(&one.grpc, &config).expect("target");
    let text = quiver_node::cli::admin::status(target).await.expect("admin status over mutual TLS");
    assert!(text.contains(&two.grpc), "{text}");
    assert!(quiver_node::cli::admin::status(one.grpc.as_str()).await.is_err(), "plaintext admin refused");

    two.stop().await;
    one.stop().await;
}
