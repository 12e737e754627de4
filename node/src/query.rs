//! Query execution on DataFusion: the table provider of hot tables, its scan, the scan of a shard on another node,
//! and DELETE/UPDATE.

pub(crate) mod cold;
pub(crate) mod concat;
pub(crate) mod dml;
pub(crate) mod provider;
pub(crate) mod remote;
pub(crate) mod scan;
