//! Integration tests of the metadata Raft group: real replicas in one process, talking over gRPC on loopback
//! (`grpc`) or through the in-process router with fault injection (`partition`).
//!
//! One test binary, so the crate links once. Shared helpers are in `cluster`.

mod cluster;
mod disk_failure;
mod grpc;
mod liveness;
mod membership;
mod partition;
