//! Quiver's metadata: the catalog of tables and the commands that change it.
//!
//! Metadata changes are expressed as [`CatalogCommand`]s applied to a [`Catalog`] state machine. Applying is
//! deterministic and does no I/O, so the same commands give the same catalog on every node: in a cluster the commands
//! travel through the Raft log, in a single node or an embedded database they are applied in-process and the node
//! persists the resulting catalog next to its data. Every successful change bumps the catalog's version.
//!
//! This crate depends on `arrow-schema` only (not on RocksDB, tonic or DataFusion), so that it can be compiled into
//! every deployment mode.

mod catalog;
mod error;

pub use catalog::{Catalog, CatalogCommand, CatalogOutcome, ColumnDef, TableDef, TableId, TableKind};
pub use error::{Error, ErrorKind, Result};
