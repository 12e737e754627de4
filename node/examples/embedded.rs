//! Embedded Quiver: open a database in a directory, write with SQL and with Arrow batches, query, reopen.
//!
//! Run with `cargo run -p quiver-node --example embedded`.

use std::sync::Arc;

use arrow::array::{Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use quiver_node::Quiver;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("quiver-example-{}", std::process::id()));
    {
        let db = Quiver::open(&dir).await?;
        db.sql("CREATE TABLE readings (sensor TEXT NOT NULL, celsius DOUBLE)").await?;
        db.sql("INSERT INTO readings VALUES ('attic', 31.5), ('cellar', 11.0)").await?;

        // Bulk data arrives as Arrow record batches.
        let schema = Arc::new(Schema::new(vec![
            Field::new("sensor", DataType::Utf8, false),
            Field::new("celsius", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["attic", "attic", "cellar"])),
                Arc::new(Float64Array::from(vec![Some(33.0), None, Some(10.5)])),
            ],
        )?;
        let rows = db.ingest("readings", vec![batch]).await?;
        println!("ingested {rows} rows");
    }
    // Everything acknowledged is on disk: reopen and query.
    let db = Quiver::open(&dir).await?;
    let batches = db
        .query("SELECT sensor, count(celsius) AS readings, max(celsius) AS hottest FROM readings GROUP BY sensor ORDER BY sensor")
        .await?;
    println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
    drop(db);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
