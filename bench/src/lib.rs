//! `quiver-bench`: benchmarks that drive a real Quiver server and report throughput and latency.
//!
//! - `ingest`: bulk load of TPC-H `lineitem` over Flight SQL DoPut and over PostgreSQL `COPY FROM STDIN`, durable,
//!   beside the same COPY into PostgreSQL (started by the bench, [`postgres`]) and DuckDB's load of the same rows
//!   from Parquet ([`duckdb`]);
//! - `tpch`: the 22 TPC-H queries over Flight SQL against the hot store, each beside the same query in DuckDB (its
//!   own tables, and the Parquet files) and in DataFusion in-process on Parquet files of the same data, with the
//!   answers compared; medians of the runs;
//! - `latency`: `SELECT 1`, a point lookup and a durable single-row INSERT (p50/p99) over the PostgreSQL protocol
//!   and Flight SQL, 64 concurrent writers, and `SELECT 1` while a Q1 loop and a bulk ingest run, against
//!   PostgreSQL;
//! - `tier`: the TPC-H queries with every table tiered to the cold tier (a local directory, then a loopback S3
//!   server), after a restart (cold caches) and again (warm), beside the same queries on the hot store, with the
//!   object-store GETs each query made;
//! - `meta`: metadata proposal throughput and latency (p50/p90/p99) on a loopback cluster of servers;
//! - `cluster`: bulk ingest and single-row INSERT p50/p99 through one node of a loopback cluster of three servers
//!   keeping two copies of every shard, against a single server;
//! - `cluster-tpch`: the 22 TPC-H queries through a cluster of three `quiver server` processes, tables sharded over
//!   every node, against one server process, every answer compared;
//! - `quiver-chaos` (its own program, [`chaos`]): a cluster on test hosts (network namespaces) under kill -9,
//!   freeze, partition, one-way cut, disk-full and restart faults, with a checker of what the clients saw.

pub mod chaos;
pub mod cluster;
pub mod cluster_tpch;
pub mod data;
pub mod duckdb;
pub mod harness;
pub mod ingest;
pub mod latency;
pub mod meta;
pub mod postgres;
pub mod processes;
pub mod queries;
pub mod s3;
pub mod tier;
pub mod tpch;
