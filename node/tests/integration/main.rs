//! The integration tests of the node crate, one binary so that it links once.

mod flight_sql;
mod pg;
mod sql;
mod crash;
