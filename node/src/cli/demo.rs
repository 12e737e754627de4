//! `quiver demo`: creates a small shop database (customers and orders), then runs a few analytical queries and prints
//! what they return. The data is generated from a fixed seed, so every run prints the same answers.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use crate::embedded::Quiver;
use crate::error::Result;

/// Customers in the demo.
pub const CUSTOMERS: i64 = 1_000;
/// Orders in the demo.
pub const ORDERS: i64 = 200_000;

const COUNTRIES: [&str; 8] = ["DE", "FR", "US", "JP", "BR", "IN", "NG", "CA"];
const STATUSES: [&str; 4] = ["placed", "shipped", "delivered", "cancelled"];

/// A tiny deterministic generator (SplitMix64): the demo must not depend on ambient randomness.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The demo's steps: a title and the SQL it runs.
pub const QUERIES: [(&str, &str); 6] = [
    (
        "Revenue by country (join + aggregate)",
        "SELECT c.country, count(*) AS orders, sum(o.amount) AS revenue
         FROM orders o JOIN customers c ON o.customer_id = c.id
         WHERE o.status <> 'cancelled'
         GROUP BY c.country ORDER BY revenue DESC",
    ),
    (
        "Top 5 customers by spend, with their rank (window function)",
        "SELECT name, country, spend, rank() OVER (ORDER BY spend DESC) AS rank
         FROM (SELECT c.name, c.country, sum(o.amount) AS spend
               FROM orders o JOIN customers c ON o.customer_id = c.id GROUP BY c.name, c.country)
         ORDER BY spend DESC LIMIT 5",
    ),
    (
        "Orders per month in 2025 (CTE + date functions)",
        "WITH monthly AS (
           SELECT date_trunc('month', ordered_at) AS month, count(*) AS orders, avg(amount) AS avg_amount
           FROM orders WHERE ordered_at >= TIMESTAMP '2025-01-01' AND ordered_at < TIMESTAMP '2026-01-01'
           GROUP BY 1)
         SELECT CAST(month AS DATE) AS month, orders, round(CAST(avg_amount AS DOUBLE), 2) AS avg_amount
         FROM monthly ORDER BY month LIMIT 6",
    ),
    (
        "Cancel every order over 990.00 placed in January 2024 (UPDATE)",
        "UPDATE orders SET status = 'cancelled' WHERE amount > 990 AND ordered_at < TIMESTAMP '2024-02-01'",
    ),
    (
        "Delete cancelled orders from 2024 (DELETE)",
        "DELETE FROM orders WHERE status = 'cancelled' AND ordered_at < TIMESTAMP '2025-01-01'",
    ),
    ("Orders by status now", "SELECT status, count(*) AS orders FROM orders GROUP BY status ORDER BY status"),
];

/// Creates the demo tables in `db` and fills them.
///
/// # Errors
///
/// Fails when the database fails.
pub async fn load(db: &Quiver) -> Result<()> {
    db.sql("CREATE TABLE customers (id BIGINT NOT NULL PRIMARY KEY, name TEXT NOT NULL, country TEXT, signup DATE)")
        .await?;
    db.sql(
        "CREATE TABLE orders (id BIGINT NOT NULL PRIMARY KEY, customer_id BIGINT NOT NULL, amount DECIMAL(10, 2) \
         NOT NULL, status TEXT NOT NULL, ordered_at TIMESTAMP(3) NOT NULL)",
    )
    .await?;
    let mut rng = SplitMix(42);
    let customers = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("country", DataType::Utf8, true),
            Field::new("signup", DataType::Date32, true),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(1..=CUSTOMERS)),
            Arc::new(StringArray::from_iter_values((1..=CUSTOMERS).map(|i| format!("customer-{i:04}")))),
            Arc::new(StringArray::from_iter_values(
                (0..CUSTOMERS).map(|_| COUNTRIES[rng.below(COUNTRIES.len() as u64) as usize]),
            )),
            // Sign-ups during 2023 (days since the epoch).
            Arc::new(Date32Array::from_iter_values((0..CUSTOMERS).map(|_| 19_358 + rng.below(365) as i32))),
        ],
    )?;
    db.ingest("customers", vec![customers]).await?;

    let orders_schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, false),
        Field::new("amount", DataType::Decimal128(10, 2), false),
        Field::new("status", DataType::Utf8, false),
        Field::new("ordered_at", DataType::Timestamp(TimeUnit::Millisecond, None), false),
    ]));
    // Two years of orders starting 2024-01-01, in time order like a real feed.
    let start_ms: i64 = 1_704_067_200_000;
    let span_ms: i64 = 2 * 365 * 24 * 3600 * 1000;
    let mut batches = Vec::new();
    let per_batch = 50_000;
    let mut id = 0;
    while id < ORDERS {
        let n = per_batch.min(ORDERS - id);
        let ids: Vec<i64> = (id + 1..=id + n).collect();
        let customer: Vec<i64> = (0..n).map(|_| 1 + rng.below(CUSTOMERS as u64) as i64).collect();
        let amount: Vec<i128> = (0..n).map(|_| 100 + rng.below(99_900) as i128).collect();
        let status: Vec<&str> = (0..n).map(|_| STATUSES[rng.below(STATUSES.len() as u64) as usize]).collect();
        let at: Vec<i64> = ids.iter().map(|i| start_ms + (i - 1) * (span_ms / ORDERS)).collect();
        batches.push(RecordBatch::try_new(
            Arc::clone(&orders_schema),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(Int64Array::from(customer)),
                Arc::new(Decimal128Array::from(amount).with_precision_and_scale(10, 2)?),
                Arc::new(StringArray::from(status)),
                Arc::new(TimestampMillisecondArray::from(at)),
            ],
        )?);
        id += n;
    }
    db.ingest("orders", batches).await?;
    Ok(())
}

/// Runs the demo on `db` and returns the text it prints.
///
/// # Errors
///
/// Fails when a step fails.
pub async fn run(db: &Quiver) -> Result<String> {
    let mut out = String::new();
    let started = std::time::Instant::now();
    load(db).await?;
    let _ = writeln!(
        out,
        "Loaded {CUSTOMERS} customers and {ORDERS} orders in {:.0} ms.\n",
        started.elapsed().as_secs_f64() * 1e3
    );
    for (title, sql) in QUERIES {
        let started = std::time::Instant::now();
        let text = super::render_output(db.engine().execute_one(sql).await?).await?;
        let _ =
            writeln!(out, "-- {title}\n{}\n{text}\n({:.1} ms)\n", squeeze(sql), started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// Collapses a statement's whitespace for printing.
fn squeeze(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}
