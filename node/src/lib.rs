//! Quiver's node: the hot store, the query engine, the network servers, the embedded API and the `quiver` binary.
//!
//! Architecture, bottom up:
//!
//! - [`storage`]: the [`storage::HotStore`] seam (RocksDB in production, memory for in-memory databases and
//!   simulation).
//! - [`table`]: native tables as immutable, compressed Arrow IPC chunks with per-chunk statistics.
//! - [`cold`]: the cold tier: hot chunks tiered to Parquet files in an object store, listed in Raft-pointed manifests.
//! - [`shard`]: the cluster data path on a node: which shard a row belongs to (docs/rfcs/0001-cluster-data-path.md).
//! - `query`: DataFusion integration (table provider, pruned parallel scans, inserts, DELETE/UPDATE).
//! - [`audit`]: the audit log (logins, DDL, DCL, refusals): the node's log, `system.audit`, a rotated file.
//! - [`auth`]: who runs a statement and whether they may (users, roles and privileges, passwords, tokens).
//! - [`engine`]: one database: catalog, tables, SQL execution. Every frontend goes through [`engine::Engine`].
//! - [`embedded`]: [`Quiver`], the in-process API.
//! - [`server`]: Arrow Flight SQL, the PostgreSQL wire gateway and HTTP (health, metrics), started by [`server::Server`].
//! - [`cluster`]: the node's replica of the metadata Raft group (the catalog's home), bootstrap and join.
//! - [`config`]: the server's layered configuration.
//! - [`fixture`]: what the upgrade fixture holds (a data directory a release leaves for the next to open).
//!
//! tokio and tonic are used through madsim's facades: in an ordinary build they are tokio and tonic themselves; a
//! build with `--cfg madsim` (the simulation, see docs/simulation.md) gets madsim's simulated time, tasks and network,
//! and leaves out RocksDB, the client frontends and the CLI, which cannot run inside the simulation.

// The facades under their usual names, so the code reads as ordinary tokio and tonic code.
extern crate madsim_tokio as tokio;
extern crate madsim_tonic as tonic;

pub mod audit;
pub mod auth;
mod blocking;
#[cfg(not(madsim))]
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod cold;
pub mod config;
mod cpu;
pub mod embedded;
pub mod engine;
pub mod error;
pub mod fixture;
pub mod metrics;
mod query;
mod random;
pub mod server;
pub mod shard;
pub mod storage;
pub mod table;

pub use embedded::Quiver;
pub use engine::{Engine, EngineOptions, QueryOutput, StorageLocation};
pub use error::{Error, ErrorKind, Result};
pub use query::remote::{RemoteShardScanExec, ShardLocator};
pub(crate) use random::random_u64;
