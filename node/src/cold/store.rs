//! Opening the cold tier's object store from its URL: `file:///path` (a local directory, the default), `s3://`
//! (AWS S3 and S3-compatible servers), `gs://` (Google Cloud Storage), `az://` (Azure Blob Storage). The client is
//! built without I/O, so a node starts even when the store is unreachable; the first request says what is wrong.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;

use serde::{Deserialize, Serialize};

use super::cache::CacheSettings;
use crate::config::{ByteSize, Millis, Secret};
use crate::error::Error;

/// `[cold]`: the cold tier's object store. Credentials and endpoints not given here come from the standard environment
/// variables of each store (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`,
/// `AWS_ALLOW_HTTP`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColdConfig {
    /// Where cold data lives: `file:///path`, `s3://bucket/prefix`, `gs://bucket/prefix` or `az://container/prefix`.
    /// Empty: the directory `cold` inside the data directory.
    pub store: String,
    /// The directory `store` names (`file:///path`) is mounted by every node of the cluster at that path (a network
    /// file system). Every node reads the files any node tiered, so a cluster of several nodes refuses a cold store
    /// that is a directory unless it is declared shared here (the default, `cold` in the data directory, never is).
    pub shared_dir: bool,
    /// An S3-compatible endpoint, e.g. `http://127.0.0.1:9000` (path-style requests are used with it).
    pub endpoint: Option<String>,
    /// The S3 region.
    pub region: Option<String>,
    /// Allow a plain-HTTP endpoint.
    pub allow_http: bool,
    /// S3 access key id (prefer the environment or an instance role).
    pub access_key_id: Option<String>,
    /// S3 secret access key (never shown by `Debug`).
    pub secret_access_key: Option<Secret>,
    /// Rows per Parquet row group in tiered files.
    pub row_group_rows: usize,
    /// The size cold files aim for. Tiering starts a new file once its chunks' hot size passes this; compaction
    /// merges this node's files of a table that are smaller than half of this into files of up to this size (the
    /// background tierer does so once a table has `compact_min_files` such files). `0`: one file per tiering, and no
    /// compaction.
    pub target_file_bytes: ByteSize,
    /// The small files a table must have on a node before the background tierer compacts them (at least 2): merging
    /// a few each round would rewrite the same rows again and again.
    pub compact_min_files: usize,
    /// Memory for sorting the rows of files being written (tiering, compaction, DELETE/UPDATE of tiered rows), shared
    /// by the writes in progress; past it, sorts spill to `spill/` in the data directory (at least 32 MiB).
    pub sort_memory: ByteSize,
    /// The background tierer moves a table's hot rows on this node to the cold tier once they take more than this
    /// (encoded, compressed) size. `0`, the default, leaves tiering to `quiver admin tier` and to tables' own
    /// policies.
    pub hot_bytes_max: ByteSize,
    /// How often the background tierer looks at the tables.
    pub tier_check_interval: Millis,
    /// While the background tierer cannot reach the store, inserts into a table are refused ("cold tier
    /// unavailable") once its hot rows on this node waiting to be tiered take more than this, so that an outage of
    /// the store does not fill the disk. `0`, the default, means four times the table's `hot_bytes_max` (its own, or
    /// this section's). No limit applies to a table the background tierer does not tier.
    pub write_limit: ByteSize,
    /// Objects of the cold tier that no manifest reaches (uploads of failed tierings, replaced manifests, dropped
    /// tables) are deleted once they are older than this; a tiering that takes more than half of it gives up
    /// before its commit, so nothing in flight is collected.
    pub gc_grace: Millis,
    /// How often the metadata leader collects the cold tier's garbage (`0`: never).
    pub gc_interval: Millis,
    /// The read cache's memory tier: bytes of cold-file blocks kept in memory (`0`: none).
    pub cache_memory: ByteSize,
    /// The read cache's disk tier: bytes of cold-file blocks kept on local disk, across restarts (`0`: none). Unset:
    /// 4 GiB for a bucket (`s3://`, `gs://`, `az://`), none for a local directory or memory, which are read directly.
    pub cache_disk: Option<ByteSize>,
    /// The directory of the disk tier. Empty: `cold-cache` in the data directory.
    pub cache_dir: String,
}

impl Default for ColdConfig {
    fn default() -> Self {
        Self {
            store: String::new(),
            shared_dir: false,
            endpoint: None,
            region: None,
            allow_http: false,
            access_key_id: None,
            secret_access_key: None,
            row_group_rows: 128 * 1024,
            target_file_bytes: ByteSize(128 << 20),
            compact_min_files: 8,
            sort_memory: ByteSize(256 << 20),
            hot_bytes_max: ByteSize(0),
            tier_check_interval: Millis(30_000),
            write_limit: ByteSize(0),
            gc_grace: Millis(6 * 3_600_000),
            gc_interval: Millis(3_600_000),
            cache_memory: ByteSize(256 << 20),
            cache_disk: None,
            cache_dir: String::new(),
        }
    }
}

impl ColdConfig {
    /// Why this cold store cannot serve a cluster of several nodes (a directory only this node reads), if it cannot.
    pub fn node_local(&self) -> Option<String> {
        if self.store.is_empty() {
            return Some("the default cold store, the directory `cold` in this node's data directory".into());
        }
        let directory = parse(&self.store).is_ok_and(|(scheme, _, _)| scheme == "file");
        (directory && !self.shared_dir).then(|| format!("\"{}\", a directory not declared shared", self.store))
    }

    /// The read cache these settings ask for, for a node whose data directory is `data_dir` (`None`: in memory,
    /// where the disk tier needs `cache_dir`).
    pub fn cache_settings(&self, data_dir: Option<&std::path::Path>) -> CacheSettings {
        let remote = parse(&self.store).is_ok_and(|(scheme, _, _)| scheme != "file");
        let dir = match (self.cache_dir.as_str(), data_dir) {
            ("", Some(data)) => Some(data.join("cold-cache")),
            ("", None) => None,
            (dir, _) => Some(PathBuf::from(dir)),
        };
        let disk = self.cache_disk.map(|b| b.0).unwrap_or(if remote { 4 << 30 } else { 0 });
        CacheSettings { memory_bytes: self.cache_memory.0, disk_bytes: if dir.is_some() { disk } else { 0 }, dir }
    }
}

/// Checks the form of a cold-store URL without building a client.
///
/// # Errors
///
/// What is wrong with it.
pub fn check_url(text: &str) -> Result<(), String> {
    parse(text).map(|_| ())
}

/// The scheme, the bucket (or container, or directory) and the key prefix of a cold-store URL.
fn parse(text: &str) -> Result<(String, String, String), String> {
    let url = url::Url::parse(text).map_err(|e| format!("\"{text}\" is not a URL ({e})"))?;
    let scheme = url.scheme().to_string();
    match scheme.as_str() {
        "file" => {
            if url.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(format!("\"{text}\": a file URL names a local path, file:///path"));
            }
            Ok((scheme, String::new(), url.path().to_string()))
        }
        "s3" | "s3a" | "gs" | "az" | "abfs" => {
            let bucket = url
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| format!("\"{text}\" names no bucket: write {scheme}://bucket/prefix"))?;
            Ok((scheme, bucket.to_string(), url.path().trim_matches('/').to_string()))
        }
        other => Err(format!("\"{text}\": unknown scheme \"{other}\" (file://, s3://, gs:// and az:// are supported)")),
    }
}

/// The cold tier's object store, with the URL's key prefix applied.
#[derive(Debug, Clone)]
pub struct ColdStore {
    store: Arc<dyn ObjectStore>,
    display: String,
    row_group_rows: usize,
    hot_bytes_max: u64,
    write_limit: u64,
    target_file_bytes: u64,
    compact_min_files: usize,
    gc_grace: std::time::Duration,
}

impl ColdStore {
    /// Builds the client for `config` (no request is made). An empty `config.store` means the directory `cold` in
    /// `data_dir`, or memory when `data_dir` is `None` (an in-memory database).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a malformed URL or store settings the client rejects, or when a local directory cannot
    /// be created.
    pub fn open(config: &ColdConfig, data_dir: Option<&std::path::Path>) -> crate::error::Result<Self> {
        let bad = |detail: String| Error::Config { detail: format!("cold.store: {detail}") };
        let text = config.store.as_str();
        let (store, display): (Arc<dyn ObjectStore>, String) = match (text, data_dir) {
            ("", None) => (Arc::new(InMemory::new()), "memory".into()),
            ("", Some(dir)) => {
                let dir = dir.join("cold");
                (local(&dir)?, format!("file://{}", dir.display()))
            }
            _ => {
                let (scheme, bucket, prefix) = parse(text).map_err(bad)?;
                let store: Arc<dyn ObjectStore> = match scheme.as_str() {
                    "file" => local(&PathBuf::from(&prefix))?,
                    "s3" | "s3a" => {
                        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
                        if let Some(endpoint) = &config.endpoint {
                            builder = builder.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
                        }
                        if let Some(region) = &config.region {
                            builder = builder.with_region(region);
                        }
                        if config.allow_http {
                            builder = builder.with_allow_http(true);
                        }
                        if let Some(key) = &config.access_key_id {
                            builder = builder.with_access_key_id(key);
                        }
                        if let Some(secret) = &config.secret_access_key {
                            builder = builder.with_secret_access_key(secret.expose());
                        }
                        prefixed(Arc::new(builder.build().map_err(|e| bad(format!("{text}: {e}")))?), &prefix)
                    }
                    "gs" => {
                        let builder = GoogleCloudStorageBuilder::from_env().with_bucket_name(&bucket);
                        prefixed(Arc::new(builder.build().map_err(|e| bad(format!("{text}: {e}")))?), &prefix)
                    }
                    _ => {
                        let builder = MicrosoftAzureBuilder::from_env().with_container_name(&bucket);
                        prefixed(Arc::new(builder.build().map_err(|e| bad(format!("{text}: {e}")))?), &prefix)
                    }
                };
                (store, text.to_string())
            }
        };
        Ok(ColdStore::new(store, &display, config.row_group_rows).with_limits(config))
    }

    /// A cold store over an object store the caller built (`display` names it in messages).
    pub fn new(store: Arc<dyn ObjectStore>, display: &str, row_group_rows: usize) -> Self {
        ColdStore {
            store,
            display: display.to_string(),
            row_group_rows: row_group_rows.max(1),
            hot_bytes_max: 0,
            write_limit: 0,
            target_file_bytes: ColdConfig::default().target_file_bytes.0,
            compact_min_files: ColdConfig::default().compact_min_files,
            gc_grace: ColdConfig::default().gc_grace.duration(),
        }
    }

    /// The store under the prefix of one cluster (`quiver/<cluster id>`), so that clusters can share a bucket.
    pub fn for_cluster(&self, cluster_id: &str) -> Arc<dyn ObjectStore> {
        prefixed(Arc::clone(&self.store), &format!("quiver/{cluster_id}"))
    }

    /// The store's URL, for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// Rows per Parquet row group.
    pub fn row_group_rows(&self) -> usize {
        self.row_group_rows
    }

    /// The background tierer's limit on a table's hot bytes per node (0: off).
    pub fn hot_bytes_max(&self) -> u64 {
        self.hot_bytes_max
    }

    /// The hot bytes waiting to be tiered past which inserts are refused while the store cannot be reached (0: four
    /// times the table's limit; see [`ColdConfig::write_limit`]).
    pub fn write_limit(&self) -> u64 {
        self.write_limit
    }

    /// The size compaction merges small files up to (0: no compaction; see [`ColdConfig::target_file_bytes`]).
    pub fn target_file_bytes(&self) -> u64 {
        self.target_file_bytes
    }

    /// The small files that make the background tierer compact a table (see [`ColdConfig::compact_min_files`]).
    pub fn compact_min_files(&self) -> usize {
        self.compact_min_files
    }

    /// The garbage collector's grace period (see [`ColdConfig::gc_grace`]).
    pub fn gc_grace(&self) -> std::time::Duration {
        self.gc_grace
    }

    /// Takes the background tierer's limits, compaction's target and the garbage collector's grace period from
    /// `config`.
    pub fn with_limits(mut self, config: &ColdConfig) -> Self {
        self.gc_grace = config.gc_grace.duration();
        self.target_file_bytes = config.target_file_bytes.0;
        self.compact_min_files = config.compact_min_files.max(2);
        self.hot_bytes_max = config.hot_bytes_max.0;
        self.write_limit = config.write_limit.0;
        self
    }
}

fn local(dir: &std::path::Path) -> crate::error::Result<Arc<dyn ObjectStore>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("create the cold-tier directory {}", dir.display()), e))?;
    let store = LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| Error::Config { detail: format!("cold.store: {}: {e}", dir.display()) })?;
    Ok(Arc::new(store))
}

fn prefixed(store: Arc<dyn ObjectStore>, prefix: &str) -> Arc<dyn ObjectStore> {
    if prefix.is_empty() { store } else { Arc::new(PrefixStore::new(store, Path::from(prefix))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_with_clear_errors() {
        assert!(check_url("s3://bucket/some/prefix").is_ok());
        assert!(check_url("file:///tmp/cold").is_ok());
        assert!(check_url("gs://b").is_ok());
        let e = check_url("ftp://host/x").expect_err("scheme");
        assert!(e.contains("unknown scheme \"ftp\""), "{e}");
        let e = check_url("s3:///prefix").expect_err("bucket");
        assert!(e.contains("names no bucket"), "{e}");
        let e = check_url("not a url").expect_err("url");
        assert!(e.contains("is not a URL"), "{e}");
    }

    #[test]
    fn s3_settings_build_a_client_without_requests() {
        let config = ColdConfig {
            store: "s3://bucket/prefix".into(),
            endpoint: Some("http://127.0.0.1:1".into()),
            region: Some("us-east-1".into()),
            allow_http: true,
            access_key_id: Some("key".into()),
            secret_access_key: Some("secret".into()),
            ..ColdConfig::default()
        };
        let store = ColdStore::open(&config, None).expect("client");
        assert_eq!(store.display(), "s3://bucket/prefix");
    }

    #[test]
    fn the_secret_key_is_read_from_the_file_but_never_shown() {
        let config: ColdConfig =
            toml::from_str("store = \"s3://b/p\"\nsecret_access_key = \"hunter2-secret\"\n").expect("parses");
        assert_eq!(config.secret_access_key.as_ref().map(Secret::expose), Some("hunter2-secret"));
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("hunter2"), "the secret is shown: {shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}
