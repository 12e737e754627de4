//! Query execution on DataFusion: the table provider of hot tables, its scan, the scan of a shard on another node,
//! multi-stage plans over a cluster's nodes, and DELETE/UPDATE.

pub(crate) mod cold;
pub(crate) mod concat;
#[cfg(not(madsim))]
pub(crate) mod distributed;
pub(crate) mod dml;
pub(crate) mod provider;
pub(crate) mod remote;
pub(crate) mod scan;
