//! The integration tests of the node crate, one binary so that it links once.

mod auth;
mod clients;
mod cluster;
mod cluster_tls;
mod cold_s3;
mod crash;
mod data_service;
mod flight_sql;
mod isolation;
mod pg;
mod replication;
mod server;
mod sql;
mod tls;
mod upgrade;
