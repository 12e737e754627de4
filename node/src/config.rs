//! Configuration of `quiver server`: one serde tree, layered and validated.
//!
//! Precedence, lowest to highest: the defaults in this file, the TOML file (`--config`), environment variables
//! (`QUIVER_` prefix, `__` between levels: `QUIVER_SERVER__PG_ADDR=127.0.0.1:5433`), then command-line flags. After
//! merging, [`Config::validate`] runs once and startup fails fast on the first problem. Unknown keys in the file or
//! the environment are errors, so a typo never silently falls back to a default.
//!
//! Config is data: loading a file is the caller's I/O; nothing here reads global state except [`Config::load`],
//! which is given the environment explicitly.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::cold::ColdConfig;
use crate::engine::EngineOptions;
use crate::error::{Error, Result};
use crate::storage::{Durability, RocksStoreOptions};

/// The prefix of environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "QUIVER_";

/// The whole configuration of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the node keeps its data.
    pub storage: StorageConfig,
    /// Network endpoints.
    pub server: ServerConfig,
    /// The node's place in a cluster (its id, internal endpoint, how it joins).
    pub cluster: ClusterConfig,
    /// The cold tier: where tiered data lives and how it is written.
    pub cold: ColdConfig,
    /// Limits that protect the node from oversized requests.
    pub limits: LimitsConfig,
    /// Query execution.
    pub query: QueryConfig,
    /// Who may connect: users, passwords, tokens.
    pub auth: AuthConfig,
    /// TLS on the client endpoints.
    pub tls: TlsConfig,
    /// Logging.
    pub log: LogConfig,
    /// The audit log's file.
    pub audit: AuditConfig,
}

/// Storage settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// The data directory (created if missing).
    pub data_dir: PathBuf,
    /// `fsync`: a write is acknowledged once the write-ahead log is fsync'd (concurrent writes share one fsync).
    /// `none`: acknowledged once written to the operating system; survives a process crash, not a power loss.
    pub sync: SyncPolicy,
    /// Rows per stored chunk that inserts aim for.
    pub chunk_rows: usize,
    /// Size of the hot store's block cache.
    pub block_cache: ByteSize,
    /// Memory for decoded chunk columns that scans reuse ("0B" turns it off).
    pub column_cache: ByteSize,
    /// Size of one hot-store memtable.
    pub write_buffer: ByteSize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./quiver-data"),
            sync: SyncPolicy::Fsync,
            chunk_rows: 128 * 1024,
            block_cache: ByteSize(256 << 20),
            column_cache: ByteSize(1 << 30),
            write_buffer: ByteSize(64 << 20),
        }
    }
}

/// When writes are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// After the write-ahead log is fsync'd.
    Fsync,
    /// After the write reached the operating system.
    None,
}

/// Network endpoints; each is `host:port`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Arrow Flight SQL.
    pub flight_addr: String,
    /// PostgreSQL wire protocol.
    pub pg_addr: String,
    /// HTTP: `/health`, `/ready`, `/metrics`.
    pub http_addr: String,
    /// How long a clean stop (SIGTERM) waits for statements and peers' streams in flight to finish before it closes
    /// what is left (everything acknowledged is durable already); keep it below the supervisor's stop timeout.
    pub shutdown_timeout: Millis,
    /// Serve on addresses other than loopback without authentication and TLS (`quiver server --insecure`): only
    /// on a network where everyone who can reach the node may read, change and drop everything. Without it, such a
    /// node refuses to start; with it, the log and `/health` say the node is insecure.
    pub insecure: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            flight_addr: "127.0.0.1:50051".into(),
            pg_addr: "127.0.0.1:5433".into(),
            http_addr: "127.0.0.1:9464".into(),
            shutdown_timeout: Millis(20_000),
            insecure: false,
        }
    }
}

/// Request limits.
/// `[cluster]`: this node's identity in the metadata Raft group and how it finds the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id, unique in the cluster (1 or more).
    pub node_id: u64,
    /// The internal gRPC endpoint (Raft, metadata and node-to-node traffic), host:port.
    pub grpc_addr: String,
    /// The address other nodes reach the internal endpoint at, when it differs from `grpc_addr` (a wildcard bind,
    /// NAT); by default the bound `grpc_addr`.
    pub advertise_addr: Option<String>,
    /// Internal addresses of existing nodes to join through; empty to bootstrap a new cluster on first start.
    pub join: Vec<String>,
    /// The cluster id given at bootstrap, or required of the cluster joined; generated when absent.
    pub cluster_id: Option<String>,
    /// A secret every node of the cluster is given alike: a node joining must present it, else it is refused
    /// before anything changes (unset: not checked). Set it from the environment (`QUIVER_CLUSTER__JOIN_SECRET`).
    /// Without `[cluster.tls]` it travels in the clear: it then keeps out nodes of other clusters, not eavesdroppers.
    pub join_secret: Option<Secret>,
    /// Mutual TLS on the internal endpoint.
    pub tls: ClusterTlsConfig,
    /// How many voters the cluster aims for (odd).
    pub voters: usize,
    /// Raft timing.
    pub heartbeat_interval: Millis,
    pub election_timeout_min: Millis,
    pub election_timeout_max: Millis,
    /// The time allowed for a metadata proposal or linearizable read.
    pub request_timeout: Millis,
    /// How long a fresh node keeps trying to join before startup fails.
    pub join_timeout: Millis,
    /// Metadata log entries applied between snapshots.
    pub snapshot_every: u64,
    /// How often this node tells the metadata leader it is alive.
    pub node_heartbeat_interval: Millis,
    /// How long a node may stay silent before the metadata leader marks it down (at least three heartbeat
    /// intervals).
    pub node_down_after: Millis,
    /// The most this node's wall clock may differ from the metadata leader's (measured by heartbeats; the leader's
    /// from most members'): a node beyond it refuses to start, and logs an error while it runs beyond it; a candidate
    /// beyond it from a voter's clock is refused that voter's pre-vote (0: not checked).
    pub max_clock_skew: Millis,
    /// How long a node may stay down before each of its replicas is made again on another node (0: at once).
    pub replica_down_timeout: Millis,
    /// Shards of a new table whose CREATE TABLE does not say (`WITH (shards = N)`); 0: two per serving node at
    /// creation.
    pub shards_per_table: u32,
    /// Copies kept of each shard of a new table whose CREATE TABLE does not say (`WITH (replicas = R)`); 0: 2 once
    /// the cluster has two serving nodes, else 1.
    pub replication_factor: u32,
    /// The fewest in-sync copies (the primary's included) a shard takes writes with, capped at its table's copies:
    /// below it, writes are refused with a retryable error.
    pub min_in_sync: u32,
    /// The longest a backup may take to make a change durable before the primary takes it out of the in-sync set.
    pub replication_timeout: Millis,
    /// Bytes a second a primary sends at most to catch a replica up (0: no limit).
    pub catch_up_rate: ByteSize,
    /// How long a part of a statement spanning shards may wait for its statement's decision before the shard's
    /// primary decides it aborted (its coordinator is taken for lost).
    pub transaction_hold: Millis,
    /// Whether statements run as multi-stage plans whose parts reading shards run on the nodes leading them (filters,
    /// projections and partial aggregates there); false: every row a statement reads comes to the node it was sent
    /// to. A node with no peers plans the same either way.
    pub distributed_execution: bool,
    /// How rows shipped between the stages of a multi-stage plan are compressed: `none` (the default), `lz4` or
    /// `zstd`.
    pub shuffle_compression: crate::engine::ShuffleCompression,
    /// Whether the metadata leader moves shard copies on its own so that every node holds about as much hot data
    /// (when a node joins, say); moves under way finish either way, and `quiver admin rebalance` starts moves when
    /// this is off. Read on the metadata leader: set it alike on every node.
    pub rebalance: bool,
    /// How far from the mean, in percent of it, a node's hot data may be before copies move.
    pub rebalance_tolerance_pct: u32,
    /// The most shard copies moving for balance at once, cluster-wide.
    pub rebalance_moves_max: usize,
    /// How often this node reports the hot data of the shards it leads to the metadata group (when it changed by a
    /// twentieth or more), for rebalancing and `system.shards`.
    pub load_report_interval: Millis,
    /// A bug the simulation injects on purpose (simulation builds only; never read from a file).
    #[cfg(madsim)]
    #[serde(skip)]
    pub injected_bug: Option<crate::engine::InjectedBug>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        let meta = quiver_meta::MetaConfig::default();
        Self {
            node_id: 1,
            grpc_addr: "127.0.0.1:50052".into(),
            advertise_addr: None,
            join: Vec::new(),
            cluster_id: None,
            join_secret: None,
            tls: ClusterTlsConfig::default(),
            voters: meta.voters,
            heartbeat_interval: Millis(meta.heartbeat_interval_ms),
            election_timeout_min: Millis(meta.election_timeout_min_ms),
            election_timeout_max: Millis(meta.election_timeout_max_ms),
            request_timeout: Millis(meta.request_timeout_ms),
            join_timeout: Millis(60_000),
            snapshot_every: meta.snapshot_logs_since_last,
            node_heartbeat_interval: Millis(meta.node_heartbeat_interval_ms),
            node_down_after: Millis(meta.node_down_after_ms),
            max_clock_skew: Millis(500),
            replica_down_timeout: Millis(meta.replica_down_timeout_ms),
            shards_per_table: 0,
            replication_factor: 0,
            min_in_sync: crate::engine::ReplicationOptions::default().min_in_sync,
            replication_timeout: Millis(crate::engine::ReplicationOptions::default().timeout.as_millis() as u64),
            transaction_hold: Millis(crate::engine::ReplicationOptions::default().transaction_hold.as_millis() as u64),
            catch_up_rate: ByteSize(crate::engine::ReplicationOptions::default().catch_up_rate),
            distributed_execution: true,
            shuffle_compression: crate::engine::ShuffleCompression::default(),
            rebalance: meta.rebalance,
            rebalance_tolerance_pct: meta.rebalance_tolerance_pct,
            rebalance_moves_max: meta.rebalance_moves_max,
            load_report_interval: Millis(10_000),
            #[cfg(madsim)]
            injected_bug: None,
        }
    }
}

impl ClusterConfig {
    /// Returns the metadata replica's settings.
    pub fn meta_config(&self) -> quiver_meta::MetaConfig {
        quiver_meta::MetaConfig {
            heartbeat_interval_ms: self.heartbeat_interval.0,
            election_timeout_min_ms: self.election_timeout_min.0,
            election_timeout_max_ms: self.election_timeout_max.0,
            request_timeout_ms: self.request_timeout.0,
            snapshot_logs_since_last: self.snapshot_every,
            voters: self.voters,
            node_heartbeat_interval_ms: self.node_heartbeat_interval.0,
            node_down_after_ms: self.node_down_after.0,
            replica_down_timeout_ms: self.replica_down_timeout.0,
            rebalance: self.rebalance,
            rebalance_tolerance_pct: self.rebalance_tolerance_pct,
            rebalance_moves_max: self.rebalance_moves_max,
            max_clock_skew_ms: self.max_clock_skew.0,
            join_secret: self.join_secret.as_ref().map(|s| quiver_meta::transport::JoinSecret::new(s.expose())),
            ..quiver_meta::MetaConfig::default()
        }
    }
}

/// `[cluster.tls]`: mutual TLS on the internal endpoint (Raft, metadata, shard data, query stages), on when all three
/// files are given. Every node holds a certificate signed by the cluster CA, naming the host its peers dial (the
/// address it advertises) and good for both server and client authentication; a peer without one cannot connect.
/// The certificate is reloaded as the client endpoints' is (`tls.reload_interval`, SIGHUP); the CA is read at start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterTlsConfig {
    /// The cluster CA's certificate (PEM): peers' certificates must chain to it.
    pub ca_file: Option<PathBuf>,
    /// This node's certificate chain (PEM), signed by the cluster CA.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
}

impl ClusterTlsConfig {
    /// Whether the internal endpoint speaks mutual TLS.
    pub fn enabled(&self) -> bool {
        self.ca_file.is_some()
    }
}

/// TLS on the client endpoints (Flight SQL, PostgreSQL wire, HTTP): on when both files are given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The node's certificate chain (PEM), its own certificate first.
    pub cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// How often the files are checked for a renewed certificate (also reloaded on SIGHUP).
    pub reload_interval: Millis,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self { cert_file: None, key_file: None, reload_interval: Millis(10_000) }
    }
}

impl TlsConfig {
    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

/// Authentication of clients (Flight SQL, PostgreSQL wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether clients authenticate as users of the metadata and need privileges for what they do. Off: every
    /// client has every privilege (only sensible on loopback or a trusted network).
    pub enabled: bool,
    /// How long a Flight SQL bearer token is valid.
    pub token_ttl: Millis,
    /// The initial administrator: a superuser created with `admin_password` when auth is on and no user of this
    /// name exists (empty: none). Set by `quiver server --init-admin NAME`.
    pub admin_user: String,
    /// The initial administrator's password; set it from the environment (`QUIVER_AUTH__ADMIN_PASSWORD`) or use
    /// `admin_password_file`, never a command line.
    pub admin_password: Option<Secret>,
    /// A file holding the initial administrator's password (its first line).
    pub admin_password_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            token_ttl: Millis(12 * 3_600_000),
            admin_user: String::new(),
            admin_password: None,
            admin_password_file: None,
        }
    }
}

impl AuthConfig {
    /// The initial administrator's name and password, when one is configured.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a name is given without a password, both sources are given, or the file cannot be
    /// read or is empty.
    pub fn admin(&self) -> Result<Option<(String, Secret)>> {
        if self.admin_user.is_empty() {
            return Ok(None);
        }
        let bad = |why: String| Err(Error::Config { detail: format!("auth.admin_password: {why}") });
        let password = match (&self.admin_password, &self.admin_password_file) {
            (Some(p), None) => p.clone(),
            (None, Some(path)) => {
                let text = match std::fs::read_to_string(path) {
                    Ok(text) => text,
                    Err(e) => return bad(format!("cannot read {}: {e}", path.display())),
                };
                Secret::from(text.lines().next().unwrap_or_default().to_string())
            }
            (Some(_), Some(_)) => return bad("give admin_password or admin_password_file, not both".into()),
            (None, None) => {
                return bad(format!(
                    "the initial administrator \"{}\" needs a password: set QUIVER_AUTH__ADMIN_PASSWORD or \
                     auth.admin_password_file",
                    self.admin_user
                ));
            }
        };
        if password.expose().is_empty() {
            return bad("the initial administrator's password is empty".into());
        }
        Ok(Some((self.admin_user.clone(), password)))
    }
}

/// A secret from the configuration (a key, a password): read and written as the plain string, but never shown by
/// `Debug`, so that no log line or error message that prints a configuration prints the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Returns the secret itself, for the one place that hands it on.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_string())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A duration in whole milliseconds, written "250ms", "2s", "1m" (or a bare number of milliseconds).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub u64);

impl Millis {
    /// Returns the duration.
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
}

impl fmt::Debug for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms >= 60_000 && ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms >= 1000 && ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl std::str::FromStr for Millis {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("\"{s}\" is not a duration such as \"250ms\" or \"2s\""))?;
        let mult: u64 = match unit.trim() {
            "" | "ms" => 1,
            "s" => 1000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => return Err(format!("unknown duration unit \"{other}\" in \"{s}\" (use ms, s, m, h, d)")),
        };
        n.checked_mul(mult).map(Millis).ok_or_else(|| format!("duration \"{s}\" is too long"))
    }
}

impl Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Millis(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Query execution.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Threads of the runtime that queries run on (planning, scans, decoding, DataFusion's operators), apart from
    /// the runtime answering the network, whose threads stay free for connections, heartbeats and Raft (0: one per
    /// core).
    pub threads: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// The largest gRPC message the Flight SQL server accepts or sends.
    pub flight_message_max: ByteSize,
    /// The largest SQL text accepted.
    pub sql_text_max: ByteSize,
    /// PostgreSQL-wire connections one user may have open on a node at once, with authentication on (0: no limit);
    /// also the Flight SQL calls running statements one user may have in flight on a node at once.
    pub connections_per_user: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { flight_message_max: ByteSize(64 << 20), sql_text_max: ByteSize(1 << 20), connections_per_user: 100 }
    }
}

/// The audit log's file: logins, DDL, DCL and refusals as JSON lines (docs/security.md). Every entry also goes to
/// the node's log (target `quiver::audit`) and `system.audit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Whether the file is written.
    pub enabled: bool,
    /// The file; a relative path is under `storage.data_dir`.
    pub file: PathBuf,
    /// The size at which the file is rotated to `<file>.1`.
    pub max_file_size: ByteSize,
    /// Rotated files kept (`<file>.1` … `<file>.<keep_files>`).
    pub keep_files: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { enabled: true, file: PathBuf::from("audit.log"), max_file_size: ByteSize(64 << 20), keep_files: 5 }
    }
}

impl AuditConfig {
    /// Where the file is and when it rotates, for a node whose data is in `data_dir`; `None` when it is off.
    pub fn file_options(&self, data_dir: &Path) -> Option<crate::audit::AuditFileOptions> {
        self.enabled.then(|| crate::audit::AuditFileOptions {
            path: data_dir.join(&self.file),
            max_size: self.max_file_size.0,
            keep: self.keep_files,
        })
    }
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `quiver_node=debug,info`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { filter: "info".into() }
    }
}

/// The smallest disk tier of the cold read cache: it is written and evicted in blocks of a few MiB.
const MIN_CACHE_DISK: u64 = 64 << 20;

/// The least memory a sort of a file's rows may have: DataFusion reserves some for merging its spilled runs.
const MIN_SORT_MEMORY: u64 = 32 << 20;

/// A size in bytes, written `"64MiB"`, `"512KiB"`, `"1GiB"`, `"100B"` or as a plain integer of bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if b >= 1 << shift && b.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", b >> shift);
            }
        }
        write!(f, "{b}B")
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("\"{s}\" is not a size such as \"64MiB\""))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "KB" | "K" => 1 << 10,
            "MiB" | "MB" | "M" => 1 << 20,
            "GiB" | "GB" | "G" => 1 << 30,
            "TiB" | "TB" | "T" => 1 << 40,
            other => return Err(format!("unknown size unit \"{other}\" in \"{s}\" (use B, KiB, MiB, GiB, TiB)")),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(|| format!("size \"{s}\" is too large"))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Whether `addr` (host:port) can only be reached from this host: a loopback address or `localhost`.
fn is_loopback(addr: &str) -> bool {
    if let Ok(socket) = addr.parse::<SocketAddr>() {
        return socket.ip().is_loopback();
    }
    addr.rsplit_once(':').is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}

/// Command-line values that override the configuration (highest precedence).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--flight-addr`.
    pub flight_addr: Option<String>,
    /// `--pg-addr`.
    pub pg_addr: Option<String>,
    /// `--http-addr`.
    pub http_addr: Option<String>,
    /// `--node-id`.
    pub node_id: Option<u64>,
    /// `--grpc-addr`.
    pub grpc_addr: Option<String>,
    /// `--join` (repeatable); replaces the configured list when given.
    pub join: Vec<String>,
    /// `--cold-store`.
    pub cold_store: Option<String>,
    /// `--cold-shared-dir`: sets `cold.shared_dir` when given.
    pub cold_shared_dir: bool,
    /// `--init-admin NAME`: sets `auth.admin_user` and turns auth on.
    pub init_admin: Option<String>,
    /// `--insecure`: sets `server.insecure` when given.
    pub insecure: bool,
}

impl Overrides {
    /// A node keeping its data in `data_dir` with every endpoint on an ephemeral loopback port (tests, benches, a
    /// throwaway local node).
    pub fn loopback(data_dir: impl Into<PathBuf>) -> Self {
        let any_port = || Some("127.0.0.1:0".to_string());
        Overrides {
            data_dir: Some(data_dir.into()),
            flight_addr: any_port(),
            pg_addr: any_port(),
            http_addr: any_port(),
            grpc_addr: any_port(),
            ..Overrides::default()
        }
    }
}

/// The error of a node of a cluster whose cold store only it can read.
pub(crate) fn cold_store_not_shared(what: &str) -> Error {
    Error::Config {
        detail: format!(
            "cold.store: this node is part of a cluster of several nodes, and its cold store is {what}: the other \
             nodes could not read the files it tiers. Set cold.store to a bucket every node reaches (s3://, gs://, \
             az://), or to a directory every node mounts at the same path, with cold.shared_dir = true"
        ),
    }
}

impl Config {
    /// Builds the configuration from an optional TOML text, environment variables and overrides, then validates it.
    ///
    /// `env` is the process environment (or a test's); only variables starting with [`ENV_PREFIX`] are read.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the key for a syntax error, an unknown key, a value of the wrong type, or a value
    /// that fails validation.
    pub fn load(
        file_text: Option<(&str, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self> {
        let mut tree = toml::Table::new();
        if let Some((origin, text)) = file_text {
            tree = text.parse::<toml::Table>().map_err(|e| Error::Config { detail: format!("{origin}: {e}") })?;
            // Deserialize once on its own so an unknown key is reported against the file.
            Config::deserialize(toml::Value::Table(tree.clone()))
                .map_err(|e| Error::Config { detail: format!("{origin}: {e}") })?;
        }
        for (key, value) in env {
            let Some(path) = key.strip_prefix(ENV_PREFIX) else { continue };
            let parts: Vec<String> = path.split("__").map(|p| p.to_lowercase()).collect();
            if parts.iter().any(String::is_empty) {
                return Err(Error::Config { detail: format!("environment variable {key} has an empty key part") });
            }
            set_path(&mut tree, &parts, parse_env_value(&value), &key)?;
        }
        let mut config = Config::deserialize(toml::Value::Table(tree))
            .map_err(|e| Error::Config { detail: format!("environment: {e}") })?;
        if let Some(d) = &overrides.data_dir {
            config.storage.data_dir = d.clone();
        }
        if let Some(a) = &overrides.flight_addr {
            config.server.flight_addr = a.clone();
        }
        if let Some(a) = &overrides.pg_addr {
            config.server.pg_addr = a.clone();
        }
        if let Some(a) = &overrides.http_addr {
            config.server.http_addr = a.clone();
        }
        if let Some(id) = overrides.node_id {
            config.cluster.node_id = id;
        }
        if let Some(a) = &overrides.grpc_addr {
            config.cluster.grpc_addr = a.clone();
        }
        if !overrides.join.is_empty() {
            config.cluster.join = overrides.join.clone();
        }
        if let Some(store) = &overrides.cold_store {
            config.cold.store = store.clone();
        }
        if overrides.cold_shared_dir {
            config.cold.shared_dir = true;
        }
        if let Some(admin) = &overrides.init_admin {
            config.auth.admin_user = admin.clone();
            config.auth.enabled = true;
        }
        if overrides.insecure {
            config.server.insecure = true;
        }
        config.validate()?;
        Ok(config)
    }

    /// What a server with these settings would leave open on addresses other than loopback: an endpoint reachable
    /// from other hosts without authentication, without TLS, or an internal endpoint without mutual TLS. Empty when
    /// every endpoint listens on loopback or is secured.
    pub fn exposed(&self) -> Vec<String> {
        let mut out = Vec::new();
        let clients = [
            ("server.flight_addr", &self.server.flight_addr),
            ("server.pg_addr", &self.server.pg_addr),
            ("server.http_addr", &self.server.http_addr),
        ];
        let open: Vec<String> = clients
            .iter()
            .filter(|(_, addr)| !is_loopback(addr))
            .map(|(key, addr)| format!("{key} = {addr}"))
            .collect();
        if !open.is_empty() {
            if !self.auth.enabled {
                out.push(format!("{} without authentication ([auth] enabled)", open.join(", ")));
            }
            if !self.tls.enabled() {
                out.push(format!("{} without TLS ([tls] cert_file, key_file)", open.join(", ")));
            }
        }
        let internal = self.cluster.advertise_addr.as_ref().unwrap_or(&self.cluster.grpc_addr);
        if (!is_loopback(&self.cluster.grpc_addr) || !is_loopback(internal)) && !self.cluster.tls.enabled() {
            out.push(format!(
                "cluster.grpc_addr = {} without mutual TLS between nodes ([cluster.tls])",
                self.cluster.grpc_addr
            ));
        }
        out
    }

    /// Checks values that types alone cannot.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for the first invalid value, naming its key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: String| Err(Error::Config { detail: format!("{key}: {why}") });
        if !self.cold.store.is_empty()
            && let Err(why) = crate::cold::check_url(&self.cold.store)
        {
            return bad("cold.store", why);
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return bad("tls", "cert_file and key_file are given together, or neither".into());
        }
        let internal = &self.cluster.tls;
        if [&internal.ca_file, &internal.cert_file, &internal.key_file]
            .iter()
            .any(|f| f.is_some() != internal.enabled())
        {
            return bad("cluster.tls", "ca_file, cert_file and key_file are given together, or none".into());
        }
        if self.cluster.join_secret.as_ref().is_some_and(|s| s.expose().len() < 16) {
            return bad("cluster.join_secret", "must be at least 16 characters".into());
        }
        if self.audit.enabled && self.audit.file.as_os_str().is_empty() {
            return bad("audit.file", "must name a file (or set audit.enabled = false)".into());
        }
        if self.audit.enabled && self.audit.max_file_size.0 < 4096 {
            return bad("audit.max_file_size", "must be at least 4KiB".into());
        }
        if self.audit.enabled && !(1..=1000).contains(&self.audit.keep_files) {
            return bad("audit.keep_files", "must be between 1 and 1000".into());
        }
        if self.tls.enabled() && self.tls.reload_interval.0 < 100 {
            return bad("tls.reload_interval", "must be at least 100ms".into());
        }
        if self.auth.enabled {
            self.auth.admin()?;
            if self.auth.token_ttl.0 < 1000 {
                return bad("auth.token_ttl", "must be at least 1s".into());
            }
        }
        if self.cold.compact_min_files < 2 {
            return bad("cold.compact_min_files", "must be 2 or more".into());
        }
        if self.cold.sort_memory.0 < MIN_SORT_MEMORY {
            return bad("cold.sort_memory", format!("must be at least {}", ByteSize(MIN_SORT_MEMORY)));
        }
        if self.cold.row_group_rows == 0 {
            return bad("cold.row_group_rows", "must be 1 or more".into());
        }
        if let Some(disk) = self.cold.cache_disk
            && disk.0 != 0
            && disk.0 < MIN_CACHE_DISK
        {
            return bad("cold.cache_disk", format!("must be 0 (none) or at least {}", ByteSize(MIN_CACHE_DISK)));
        }
        for (key, addr) in [
            ("server.flight_addr", &self.server.flight_addr),
            ("server.pg_addr", &self.server.pg_addr),
            ("server.http_addr", &self.server.http_addr),
            ("cluster.grpc_addr", &self.cluster.grpc_addr),
        ] {
            resolve_addr(addr).map_err(|why| Error::Config { detail: format!("{key}: {why}") })?;
        }
        let mut joins = Vec::with_capacity(self.cluster.join.len());
        for (i, addr) in self.cluster.join.iter().enumerate() {
            joins
                .push(resolve_addr(addr).map_err(|why| Error::Config { detail: format!("cluster.join[{i}]: {why}") })?);
        }
        // The address the other nodes are told to reach this one at must be one they can reach.
        let (key, advertised) = match &self.cluster.advertise_addr {
            Some(a) => ("cluster.advertise_addr", a),
            None => ("cluster.grpc_addr", &self.cluster.grpc_addr),
        };
        let reached_at = resolve_addr(advertised).map_err(|why| Error::Config { detail: format!("{key}: {why}") })?;
        if reached_at.ip().is_unspecified() {
            return bad(
                key,
                format!(
                    "{advertised} binds every interface, and other nodes cannot reach a node at it: set \
                     cluster.advertise_addr to the address they reach this one at"
                ),
            );
        }
        if reached_at.ip().is_loopback()
            && let Some(peer) = joins.iter().find(|j| !j.ip().is_loopback())
        {
            return bad(
                key,
                format!(
                    "{advertised} is a loopback address, which the node joined through ({peer}) cannot reach: bind \
                     (or advertise, cluster.advertise_addr) an address on the network the nodes share"
                ),
            );
        }
        if !self.cluster.join.is_empty()
            && let Some(what) = self.cold.node_local()
        {
            return Err(cold_store_not_shared(&what));
        }
        if self.cluster.node_id == 0 {
            return bad("cluster.node_id", "must be 1 or more".into());
        }
        if self.cluster.cluster_id.as_deref().is_some_and(|id| id.trim().is_empty()) {
            return bad("cluster.cluster_id", "must not be empty when set".into());
        }
        self.cluster.meta_config().validate().map_err(|e| Error::Config { detail: format!("cluster: {e}") })?;
        if self.storage.data_dir.as_os_str().is_empty() {
            return bad("storage.data_dir", "must not be empty".into());
        }
        if self.storage.chunk_rows == 0 || self.storage.chunk_rows > 16 << 20 {
            return bad("storage.chunk_rows", format!("{} is outside 1..=16777216", self.storage.chunk_rows));
        }
        if self.limits.flight_message_max.0 < 1 << 20 || self.limits.flight_message_max.0 > 2 << 30 {
            return bad(
                "limits.flight_message_max",
                format!("{} is outside 1MiB..=2GiB", self.limits.flight_message_max),
            );
        }
        if self.limits.sql_text_max.0 < 1 << 10 {
            return bad("limits.sql_text_max", format!("{} is below 1KiB", self.limits.sql_text_max));
        }
        if self.storage.block_cache.0 < 1 << 20 {
            return bad("storage.block_cache", format!("{} is below 1MiB", self.storage.block_cache));
        }
        if self.cluster.shards_per_table > quiver_meta::SLOT_COUNT {
            let n = self.cluster.shards_per_table;
            return bad("cluster.shards_per_table", format!("{n} is more than {}", quiver_meta::SLOT_COUNT));
        }
        if self.cluster.replication_factor > quiver_meta::REPLICAS_MAX {
            let n = self.cluster.replication_factor;
            return bad("cluster.replication_factor", format!("{n} is more than {}", quiver_meta::REPLICAS_MAX));
        }
        if self.cluster.min_in_sync == 0 {
            return bad("cluster.min_in_sync", "0 is below 1 (the primary's own copy)".to_string());
        }
        if self.cluster.transaction_hold.0 == 0 {
            return bad("cluster.transaction_hold", "must be above 0".to_string());
        }
        if self.cluster.replication_timeout.0 == 0 {
            return bad("cluster.replication_timeout", "must be above 0".to_string());
        }
        Ok(())
    }

    /// Returns the engine options this configuration implies.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            chunk_rows_target: self.storage.chunk_rows,
            durability: match self.storage.sync {
                SyncPolicy::Fsync => Durability::Sync,
                SyncPolicy::None => Durability::Buffered,
            },
            column_cache_bytes: self.storage.column_cache.0 as usize,
            cold: self.cold.clone(),
            cold_store: None,
            sharding: crate::engine::ShardingDefaults {
                shards_per_table: self.cluster.shards_per_table,
                replication_factor: self.cluster.replication_factor,
            },
            replication: crate::engine::ReplicationOptions {
                min_in_sync: self.cluster.min_in_sync,
                timeout: self.cluster.replication_timeout.duration(),
                catch_up_rate: self.cluster.catch_up_rate.0,
                transaction_hold: self.cluster.transaction_hold.duration(),
                #[cfg(madsim)]
                injected_bug: self.cluster.injected_bug,
            },
            distributed_execution: self.cluster.distributed_execution,
            shuffle_compression: self.cluster.shuffle_compression,
            query_threads: self.query.threads,
            // The simulation's nodes have no disk of their own for it.
            #[cfg(not(madsim))]
            audit_file: self.audit.file_options(&self.storage.data_dir),
            rocks: RocksStoreOptions {
                block_cache_bytes: self.storage.block_cache.0 as usize,
                write_buffer_bytes: self.storage.write_buffer.0 as usize,
                ..RocksStoreOptions::default()
            },
            ..EngineOptions::default()
        }
    }
}

/// Resolves a `host:port` endpoint.
///
/// # Errors
///
/// A message saying why the text is not an endpoint.
pub fn resolve_addr(addr: &str) -> std::result::Result<SocketAddr, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !addr.contains(':') {
        return Err(format!("\"{addr}\" is not host:port"));
    }
    addr.to_socket_addrs()
        .map_err(|e| format!("\"{addr}\" does not resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("\"{addr}\" resolves to no address"))
}

fn parse_env_value(raw: &str) -> toml::Value {
    // Numbers and booleans keep their type; everything else is a string.
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(b) = raw.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    toml::Value::String(raw.to_string())
}

fn set_path(tree: &mut toml::Table, parts: &[String], value: toml::Value, origin: &str) -> Result<()> {
    let (last, parents) = parts.split_last().expect("split produced at least one part");
    let mut node = tree;
    for p in parents {
        let entry = node.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| Error::Config { detail: format!("{origin}: \"{p}\" is a value, not a section") })?;
    }
    node.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_valid_and_on_loopback() {
        let c = Config::load(None, env(&[]), &Overrides::default()).expect("defaults");
        assert_eq!(c, Config::default());
        assert!(resolve_addr(&c.server.pg_addr).expect("addr").ip().is_loopback());
        assert_eq!(c.storage.data_dir, PathBuf::from("./quiver-data"));
    }

    #[test]
    fn a_node_says_where_other_nodes_reach_it_or_refuses_to_start() {
        let shared = Overrides { cold_store: Some("s3://bucket/quiver".into()), ..Overrides::default() };
        let wildcard = Overrides { grpc_addr: Some("0.0.0.0:50052".into()), ..shared.clone() };
        let err = Config::load(None, env(&[]), &wildcard).expect_err("a wildcard bind, not advertised");
        assert!(err.to_string().contains("advertise_addr") && err.to_string().contains("0.0.0.0"), "{err}");
        let advertised = env(&[("QUIVER_CLUSTER__ADVERTISE_ADDR", "10.0.0.7:50052")]);
        assert!(Config::load(None, advertised, &wildcard).is_ok(), "a wildcard bind with an advertised address");

        let loopback_joining_a_network = Overrides { join: vec!["10.0.0.1:50052".into()], ..shared.clone() };
        let err = Config::load(None, env(&[]), &loopback_joining_a_network).expect_err("peers cannot reach 127.0.0.1");
        assert!(err.to_string().contains("loopback") && err.to_string().contains("10.0.0.1:50052"), "{err}");
        let on_loopback = Overrides { join: vec!["127.0.0.1:50062".into()], ..shared };
        assert!(Config::load(None, env(&[]), &on_loopback).is_ok(), "a cluster on one machine's loopback");
    }

    #[test]
    fn a_node_joining_a_cluster_needs_a_cold_store_every_node_reads() {
        let joining = Overrides { join: vec!["127.0.0.1:50052".into()], ..Overrides::default() };
        let err = Config::load(None, env(&[]), &joining).expect_err("the default, in the data directory");
        assert!(err.to_string().contains("cold.store") && err.to_string().contains("shared_dir"), "{err}");
        let dir = Overrides { cold_store: Some("file:///mnt/quiver".into()), ..joining.clone() };
        let err = Config::load(None, env(&[]), &dir).expect_err("a directory not declared shared");
        assert!(err.to_string().contains("file:///mnt/quiver"), "{err}");
        let shared = Overrides { cold_shared_dir: true, ..dir.clone() };
        assert!(Config::load(None, env(&[]), &shared).is_ok_and(|c| c.cold.shared_dir));
        assert!(Config::load(None, env(&[("QUIVER_COLD__SHARED_DIR", "true")]), &dir).is_ok());
        let bucket = Overrides { cold_store: Some("s3://bucket/quiver".into()), ..joining };
        assert!(Config::load(None, env(&[]), &bucket).is_ok(), "a bucket is shared");
        assert!(Config::load(None, env(&[]), &Overrides::default()).is_ok(), "a single node keeps its own");
    }

    #[test]
    fn file_then_env_then_flags() {
        let file = "[server]\npg_addr = \"127.0.0.1:6000\"\nflight_addr = \"127.0.0.1:6001\"\n[storage]\nblock_cache = \"1GiB\"\n";
        let c = Config::load(
            Some(("quiver.toml", file)),
            env(&[
                ("QUIVER_SERVER__PG_ADDR", "127.0.0.1:7000"),
                ("OTHER", "x"),
                ("QUIVER_STORAGE__CHUNK_ROWS", "1000"),
            ]),
            &Overrides { flight_addr: Some("127.0.0.1:8000".into()), ..Overrides::default() },
        )
        .expect("load");
        assert_eq!(c.server.pg_addr, "127.0.0.1:7000", "env beats file");
        assert_eq!(c.server.flight_addr, "127.0.0.1:8000", "flag beats file");
        assert_eq!(c.storage.block_cache, ByteSize(1 << 30));
        assert_eq!(c.storage.chunk_rows, 1000);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_key_named() {
        let err = Config::load(Some(("q.toml", "[server]\npg_adr = \"x:1\"\n")), env(&[]), &Overrides::default())
            .expect_err("typo");
        assert!(err.to_string().contains("pg_adr"), "{err}");
        let err = Config::load(None, env(&[("QUIVER_SERVER__NOPE", "1")]), &Overrides::default()).expect_err("env");
        assert!(err.to_string().contains("nope"), "{err}");
        let err = Config::load(None, env(&[]), &Overrides { pg_addr: Some("nonsense".into()), ..Overrides::default() })
            .expect_err("addr");
        assert!(err.to_string().contains("server.pg_addr"), "{err}");
        let err = Config::load(
            Some(("q.toml", "[storage]\nblock_cache = \"12 parsecs\"\n")),
            env(&[]),
            &Overrides::default(),
        )
        .expect_err("size");
        assert!(err.to_string().contains("parsecs"), "{err}");
        let overrides = Overrides { cold_store: Some("ftp://host/x".into()), ..Overrides::default() };
        let err = Config::load(None, env(&[]), &overrides).expect_err("cold store");
        assert!(err.to_string().contains("cold.store") && err.to_string().contains("ftp"), "{err}");
        let err =
            Config::load(None, env(&[("QUIVER_COLD__STORE", "s3://")]), &Overrides::default()).expect_err("bucket");
        assert!(err.to_string().contains("names no bucket"), "{err}");
        let err = Config::load(Some(("q.toml", "[cold]\ncache_disk = \"1MiB\"\n")), env(&[]), &Overrides::default())
            .expect_err("tiny cache");
        assert!(err.to_string().contains("cold.cache_disk") && err.to_string().contains("64MiB"), "{err}");
        let err = Config::load(Some(("q.toml", "[cold]\ncompact_min_files = 1\n")), env(&[]), &Overrides::default())
            .expect_err("one file is not a merge");
        assert!(err.to_string().contains("cold.compact_min_files"), "{err}");
        let err = Config::load(Some(("q.toml", "[cold]\nsort_memory = \"1MiB\"\n")), env(&[]), &Overrides::default())
            .expect_err("too little to sort in");
        assert!(err.to_string().contains("cold.sort_memory") && err.to_string().contains("32MiB"), "{err}");
        let c = Config::load(
            Some(("q.toml", "[cold]\nstore = \"s3://b/p\"\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\n")),
            env(&[]),
            &Overrides::default(),
        )
        .expect("cold");
        assert_eq!((c.cold.store.as_str(), c.cold.allow_http), ("s3://b/p", true));
    }

    #[test]
    fn shipped_example_config_loads_with_its_documented_values() {
        let text = include_str!("../../deploy/quiver.toml");
        let c = Config::load(Some(("deploy/quiver.toml", text)), env(&[]), &Overrides::default()).expect("example");
        assert_eq!(c.storage.data_dir, PathBuf::from("/var/lib/quiver"));
        assert_eq!(c.storage.sync, SyncPolicy::Fsync);
        assert_eq!(c.storage.block_cache, ByteSize(1 << 30));
        assert_eq!(c.storage.column_cache, ByteSize(4 << 30));
        assert_eq!(c.server.pg_addr, "0.0.0.0:5433");
        assert_eq!(c.server.flight_addr, "0.0.0.0:50051");
        assert_eq!(c.limits.flight_message_max, ByteSize(64 << 20));
        assert_eq!(c.cluster.grpc_addr, "10.0.0.1:50052");
        assert_eq!(c.cluster.voters, 3);
        assert_eq!(c.cluster.join_timeout, Millis(60_000));
        assert_eq!(c.cluster.election_timeout_min, Millis(1_000));
    }

    #[test]
    fn the_role_examples_load_as_their_roles() {
        let load = |name: &str, text: &str| {
            // The first administrator's password comes from the environment, as the unit's secrets file gives it.
            Config::load(
                Some((name, text)),
                env(&[("QUIVER_AUTH__ADMIN_PASSWORD", "from the environment")]),
                &Overrides::default(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let single = load("single-node.toml", include_str!("../../deploy/roles/single-node.toml"));
        assert!(single.cluster.join.is_empty());
        // Secure by default: what the roles serve to other hosts is authenticated and encrypted.
        assert_eq!(single.exposed(), Vec::<String>::new());
        let first = load("first-node.toml", include_str!("../../deploy/roles/first-node.toml"));
        assert!(first.cluster.join.is_empty() && first.cluster.node_id == 1);
        let joining = load("joining-node.toml", include_str!("../../deploy/roles/joining-node.toml"));
        assert_eq!(joining.cluster.join.len(), 2);
        assert_eq!(joining.cluster.advertise_addr.as_deref(), Some("10.0.0.2:50052"));
        assert_eq!(first.cluster.cluster_id, joining.cluster.cluster_id);
        assert_eq!(first.cold.store, joining.cold.store, "one bucket for the cluster");
        assert_eq!(first.exposed(), Vec::<String>::new());
        assert_eq!(joining.exposed(), Vec::<String>::new());
        assert!(first.auth.enabled && joining.cluster.tls.enabled());
    }

    #[test]
    fn serving_other_hosts_needs_auth_and_tls_or_insecure() {
        let none = Overrides::default();
        let loopback = Config::load(None, env(&[]), &none).expect("defaults");
        assert!(loopback.exposed().is_empty(), "the defaults listen on loopback");
        let open = Config::load(None, env(&[("QUIVER_SERVER__PG_ADDR", "0.0.0.0:5433")]), &none).expect("open");
        let exposed = open.exposed().join("; ");
        assert!(exposed.contains("server.pg_addr = 0.0.0.0:5433 without authentication"), "{exposed}");
        assert!(exposed.contains("without TLS"), "{exposed}");
        let internal = Config::load(None, env(&[("QUIVER_CLUSTER__GRPC_ADDR", "10.0.0.1:50052")]), &none).expect("ok");
        assert!(internal.exposed().join("; ").contains("without mutual TLS between nodes"));
        let advertised =
            Config::load(None, env(&[("QUIVER_CLUSTER__ADVERTISE_ADDR", "10.0.0.7:50052")]), &none).expect("ok");
        assert_eq!(advertised.exposed().len(), 1, "an advertised address other hosts dial is exposed");
        let named = Config::load(None, env(&[("QUIVER_SERVER__HTTP_ADDR", "localhost:9464")]), &none).expect("ok");
        assert!(named.exposed().is_empty(), "localhost is loopback");
        let flag = Overrides { insecure: true, ..Overrides::default() };
        assert!(Config::load(None, env(&[]), &flag).expect("insecure").server.insecure);
    }

    #[test]
    fn the_audit_file_is_in_the_data_directory_unless_moved_or_off() {
        let none = Overrides::default();
        let dir = PathBuf::from("/var/lib/quiver");
        let defaults = Config::load(None, env(&[]), &none).expect("defaults");
        let options = defaults.audit.file_options(&dir).expect("on by default");
        assert_eq!(options.path, dir.join("audit.log"));
        assert_eq!((options.max_size, options.keep), (64 << 20, 5));
        assert_eq!(defaults.limits.connections_per_user, 100);
        let moved = env(&[("QUIVER_AUDIT__FILE", "/var/log/quiver/audit.log"), ("QUIVER_AUDIT__KEEP_FILES", "9")]);
        let moved = Config::load(None, moved, &none).expect("moved").audit.file_options(&dir).expect("on");
        assert_eq!((moved.path, moved.keep), (PathBuf::from("/var/log/quiver/audit.log"), 9));
        let off = Config::load(None, env(&[("QUIVER_AUDIT__ENABLED", "false")]), &none).expect("off");
        assert_eq!(off.audit.file_options(&dir), None);
        for (key, value, says) in [
            ("QUIVER_AUDIT__FILE", "", "audit.file"),
            ("QUIVER_AUDIT__MAX_FILE_SIZE", "1KiB", "audit.max_file_size"),
            ("QUIVER_AUDIT__KEEP_FILES", "0", "audit.keep_files"),
        ] {
            let Err(e) = Config::load(None, env(&[(key, value)]), &none) else { panic!("{key} = {value:?} accepted") };
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn byte_sizes_parse_and_print() {
        assert_eq!("64MiB".parse::<ByteSize>(), Ok(ByteSize(64 << 20)));
        assert_eq!("100".parse::<ByteSize>(), Ok(ByteSize(100)));
        assert_eq!("0B".parse::<ByteSize>(), Ok(ByteSize(0)));
        assert_eq!(ByteSize(3 << 30).to_string(), "3GiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
        assert!("MiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn auth_and_tls_settings_are_checked_and_the_password_never_shown() {
        let none = Overrides::default();
        let e = Config::load(None, env(&[("QUIVER_TLS__CERT_FILE", "/x.pem")]), &none).expect_err("no key");
        assert!(e.to_string().contains("cert_file and key_file"), "{e}");
        let e = Config::load(None, env(&[("QUIVER_CLUSTER__TLS__CA_FILE", "/ca.pem")]), &none).expect_err("no cert");
        assert!(e.to_string().contains("cluster.tls: ca_file, cert_file and key_file"), "{e}");
        let e = Config::load(None, env(&[("QUIVER_CLUSTER__JOIN_SECRET", "short")]), &none).expect_err("short");
        assert!(e.to_string().contains("cluster.join_secret"), "{e}");
        let secret = "a-long-enough-join-secret";
        let c = Config::load(None, env(&[("QUIVER_CLUSTER__JOIN_SECRET", secret)]), &none).expect("secret");
        assert!(!format!("{c:?}").contains(secret), "the join secret is not shown");
        assert!(!format!("{:?}", c.cluster.meta_config()).contains(secret));
        assert!(c.cluster.meta_config().join_secret.is_some_and(|s| s.matches(secret)));
        let admin = Overrides { init_admin: Some("admin".into()), ..Overrides::default() };
        let e = Config::load(None, env(&[]), &admin).expect_err("no password");
        assert!(e.to_string().contains("QUIVER_AUTH__ADMIN_PASSWORD"), "{e}");
        let c = Config::load(None, env(&[("QUIVER_AUTH__ADMIN_PASSWORD", "hunter2")]), &admin).expect("password");
        assert!(c.auth.enabled, "--init-admin turns auth on");
        assert_eq!(
            c.auth.admin().expect("admin").map(|(n, p)| (n, p.expose().to_string())),
            Some(("admin".into(), "hunter2".into()))
        );
        assert!(!format!("{c:?}").contains("hunter2"), "the password is not in Debug output");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "from a file\nsecond line ignored\n").expect("write");
        let from_file = env(&[("QUIVER_AUTH__ADMIN_PASSWORD_FILE", file.to_str().expect("utf-8"))]);
        let c = Config::load(None, from_file, &admin).expect("file");
        assert_eq!(c.auth.admin().expect("admin").map(|(_, p)| p.expose().to_string()), Some("from a file".into()));
    }
}
