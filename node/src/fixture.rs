//! The upgrade fixture's contents: the statements that write it (`examples/format-fixture.rs`, run by a release to
//! leave a data directory in its format) and what the next release must read back from that directory
//! (`tests/integration/upgrade.rs`).
//!
//! The generator runs the first two statements, moves `fixture_rows`' hot rows to the cold tier, then runs the
//! rest: half of `fixture_rows` is in Parquet files, half in the hot store.

/// Rows of `fixture_rows`: ids 1 to `ROWS`, the first half tiered.
pub const ROWS: i64 = 2000;

/// The statements, in order.
pub const STATEMENTS: &[&str] = &[
    "CREATE TABLE fixture_rows (id BIGINT PRIMARY KEY, name TEXT, v DOUBLE)",
    "INSERT INTO fixture_rows SELECT value, 'name-' || CAST(value % 97 AS TEXT), \
     CASE WHEN value % 10 = 0 THEN NULL ELSE CAST(value AS DOUBLE) / 2 END FROM generate_series(1, 1000)",
    "INSERT INTO fixture_rows SELECT value, 'name-' || CAST(value % 97 AS TEXT), \
     CASE WHEN value % 10 = 0 THEN NULL ELSE CAST(value AS DOUBLE) / 2 END FROM generate_series(1001, 2000)",
    "CREATE TABLE fixture_accounts (id BIGINT PRIMARY KEY, balance BIGINT)",
    "INSERT INTO fixture_accounts VALUES (1, 100), (2, 200), (3, 300)",
    "UPDATE fixture_accounts SET balance = balance + 5 WHERE id = 2",
    "DELETE FROM fixture_accounts WHERE id = 3",
];

/// Row `id` of `fixture_rows` as the statements write it: its name and its value (`None`: NULL).
pub fn row(id: i64) -> (String, Option<f64>) {
    (format!("name-{}", id % 97), (id % 10 != 0).then(|| id as f64 / 2.0))
}

/// `fixture_accounts` as the statements leave it: (id, balance), by id.
pub const ACCOUNTS: &[(i64, i64)] = &[(1, 100), (2, 205)];
