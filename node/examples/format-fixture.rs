//! Writes a data directory in this release's on-disk format, for the next release's upgrade test to open
//! (`node/tests/integration/upgrade.rs`; docs/operations.md, "Upgrade").
//!
//! Run with `cargo run -p quiver-node --example format-fixture -- DIR`; DIR must not exist. The contents follow
//! [`quiver_node::fixture`]: a table whose rows are half in the cold tier (Parquet files in the directory's own
//! object store) and half hot, with a primary key, text, doubles and nulls, and a second table updated and deleted
//! from, so that the directory holds each kind of record the format has.

use quiver_node::Quiver;
use quiver_node::fixture::{ROWS, STATEMENTS};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os().nth(1).ok_or("usage: format-fixture DIR")?;
    let dir = std::path::PathBuf::from(dir);
    if dir.exists() {
        return Err(format!("{} exists; give a new directory", dir.display()).into());
    }
    let db = Quiver::open(&dir).await?;
    let (first, second) = STATEMENTS.split_at(2);
    for sql in first {
        db.query(sql).await?;
    }
    // The first half of the rows moves to the cold tier; the rest stays hot.
    let report = db.tier("fixture_rows").await?;
    println!("tiered: {report:?}");
    for sql in second {
        db.query(sql).await?;
    }
    db.close().await?;
    println!("wrote {} rows in this release's format to {}", ROWS, dir.display());
    Ok(())
}
