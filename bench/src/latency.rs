//! Small-statement latency: `SELECT 1`, a primary-key point lookup and a durable single-row `INSERT`, each timed one
//! statement at a time (p50/p99), then 64 concurrent single-row writers (rows/s), over the PostgreSQL protocol
//! (extended protocol: each statement prepared once, then bound and executed) and over Flight SQL (GetFlightInfo +
//! DoGet, or a DoPut update). The same statements run against a PostgreSQL server in the same run, the reference.
//!
//! Quiver runs as a `quiver server` process (not in the bench's process), so the clients' work and the server's
//! never share a runtime. A last phase measures `SELECT 1` while a TPC-H Q1 loop and a bulk ingest run on the same
//! server: the network threads must keep answering while the engine's CPU work runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use bytes::Bytes;
use futures::TryStreamExt;
use rand::Rng;
use tonic::transport::Channel;

/// What to measure, and how much.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Timed statements per single-client measurement (after as many untimed ones, up to 200).
    pub statements: usize,
    /// Rows in the lookup table.
    pub lookup_rows: usize,
    /// Concurrent writers.
    pub writers: usize,
    /// INSERTs per writer.
    pub per_writer: usize,
}

/// One measurement: a statement's latencies over one protocol on one system.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// The system and protocol ("Quiver pg", "Quiver Flight SQL", "PostgreSQL").
    pub system: String,
    /// What was measured.
    pub what: String,
    /// Latencies, sorted ascending.
    pub latencies: Vec<Duration>,
    /// Rows per second over the whole measurement, for the concurrent writers.
    pub rows_per_s: Option<f64>,
}

impl Measurement {
    fn new(system: &str, what: &str, mut latencies: Vec<Duration>, rows_per_s: Option<f64>) -> Self {
        latencies.sort();
        Measurement { system: system.into(), what: what.into(), latencies, rows_per_s }
    }

    /// The latency at quantile `q` (0..=1), nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        quantile(&self.latencies, q)
    }
}

/// The value at quantile `q` (0..=1) of ascending `sorted`, nearest rank; zero when empty.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Connects a PostgreSQL client with `conninfo`.
pub async fn pg_connect(conninfo: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Times `statements` runs of `run` after up to 200 untimed ones; each run gets its own index.
async fn timed<F, Fut>(statements: usize, mut run: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let warm = statements.min(200);
    for i in 0..warm {
        run(i).await?;
    }
    let mut out = Vec::with_capacity(statements);
    for i in warm..warm + statements {
        let at = Instant::now();
        run(i).await?;
        out.push(at.elapsed());
    }
    Ok(out)
}

/// Creates the lookup and insert tables and fills the lookup table with COPY.
async fn setup(client: &tokio_postgres::Client, plan: &Plan) -> anyhow::Result<()> {
    client.batch_execute("CREATE TABLE bench_lookup (id BIGINT PRIMARY KEY, v TEXT NOT NULL)").await?;
    client.batch_execute("CREATE TABLE bench_insert (id BIGINT PRIMARY KEY, v TEXT NOT NULL)").await?;
    let mut csv = String::with_capacity(plan.lookup_rows * 24);
    for id in 0..plan.lookup_rows {
        csv.push_str(&format!("{id},value {id}\n"));
    }
    let rows = crate::ingest::via_copy(client, &[Bytes::from(csv)], "bench_lookup", "lookup rows").await?.rows;
    anyhow::ensure!(rows as usize == plan.lookup_rows, "the lookup table took {rows} of {} rows", plan.lookup_rows);
    Ok(())
}

/// Measures the PostgreSQL-protocol statements of `plan` against the server at `conninfo`; `system` labels them.
pub async fn over_pg(system: &str, conninfo: &str, plan: &Plan) -> anyhow::Result<Vec<Measurement>> {
    let client = pg_connect(conninfo).await?;
    setup(&client, plan).await?;
    let mut out = Vec::new();

    let select_one = client.prepare("SELECT 1").await?;
    let lat = timed(plan.statements, |_| async {
        let row = client.query_one(&select_one, &[]).await?;
        // PostgreSQL types the literal int4; Quiver (DataFusion) int8.
        let one = row.try_get::<_, i32>(0).map(i64::from).or_else(|_| row.try_get::<_, i64>(0))?;
        anyhow::ensure!(one == 1, "SELECT 1 answered {one}");
        Ok(())
    })
    .await?;
    out.push(Measurement::new(system, "SELECT 1", lat, None));

    let lookup = client.prepare("SELECT id, v FROM bench_lookup WHERE id = $1").await?;
    let ids: Vec<i64> = {
        let mut rng = rand::thread_rng();
        (0..plan.statements + 200).map(|_| rng.gen_range(0..plan.lookup_rows as i64)).collect()
    };
    let lat = timed(plan.statements, |i| {
        let (client, lookup, id) = (&client, &lookup, ids[i % ids.len()]);
        async move {
            let row = client.query_one(lookup, &[&id]).await?;
            anyhow::ensure!(row.get::<_, String>(1) == format!("value {id}"), "lookup of {id} answered otherwise");
            Ok(())
        }
    })
    .await?;
    out.push(Measurement::new(system, "point lookup (primary key)", lat, None));

    let insert = client.prepare("INSERT INTO bench_insert (id, v) VALUES ($1, $2)").await?;
    let lat = timed(plan.statements, |i| {
        let (client, insert) = (&client, &insert);
        async move {
            let id = i as i64;
            let n = client.execute(insert, &[&id, &format!("row {id}")]).await?;
            anyhow::ensure!(n == 1, "INSERT reported {n} rows");
            Ok(())
        }
    })
    .await?;
    out.push(Measurement::new(system, "single-row INSERT", lat, None));

    out.push(concurrent_writers(system, conninfo, plan).await?);
    let expected = (plan.statements + plan.statements.min(200) + plan.writers * plan.per_writer) as i64;
    let counted: i64 = client.query_one("SELECT count(*) FROM bench_insert", &[]).await?.get(0);
    anyhow::ensure!(counted == expected, "{system}: bench_insert holds {counted} rows, {expected} were inserted");
    client.batch_execute("DROP TABLE bench_lookup; DROP TABLE bench_insert").await?;
    Ok(out)
}

/// `plan.writers` connections each make `plan.per_writer` single-row INSERTs at once.
async fn concurrent_writers(system: &str, conninfo: &str, plan: &Plan) -> anyhow::Result<Measurement> {
    let mut clients = Vec::new();
    for _ in 0..plan.writers {
        let client = pg_connect(conninfo).await?;
        let insert = client.prepare("INSERT INTO bench_insert (id, v) VALUES ($1, $2)").await?;
        clients.push((client, insert));
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (w, (client, insert)) in clients.into_iter().enumerate() {
        let per_writer = plan.per_writer;
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(per_writer);
            for i in 0..per_writer {
                let id = (2 << 40) + (w * per_writer + i) as i64;
                let at = Instant::now();
                client.execute(&insert, &[&id, &format!("row {id}")]).await?;
                lat.push(at.elapsed());
            }
            anyhow::Ok(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    let rows_per_s = all.len() as f64 / started.elapsed().as_secs_f64();
    let what = format!("{} writers, single-row INSERTs", plan.writers);
    Ok(Measurement::new(system, &what, all, Some(rows_per_s)))
}

/// Runs `sql` over Flight SQL (GetFlightInfo, then DoGet of each endpoint) and returns its batches.
pub async fn flight_query(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
    let info = client.execute(sql.to_string(), None).await?;
    let mut out = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.ok_or_else(|| anyhow::anyhow!("endpoint without ticket"))?;
        let mut got: Vec<RecordBatch> = client.do_get(ticket).await?.try_collect().await?;
        out.append(&mut got);
    }
    Ok(out)
}

/// Measures the Flight SQL statements against Quiver at `flight`, on tables made (and dropped at the end) through
/// its PostgreSQL gateway at `pg_conninfo`.
pub async fn over_flight(flight: SocketAddr, pg_conninfo: &str, plan: &Plan) -> anyhow::Result<Vec<Measurement>> {
    let system = "Quiver Flight SQL";
    let pg = pg_connect(pg_conninfo).await?;
    setup(&pg, plan).await?;
    let mut client = crate::harness::flight_client_at(flight).await?;
    let mut out = Vec::new();
    let rows = |batches: &[RecordBatch]| batches.iter().map(RecordBatch::num_rows).sum::<usize>();

    let mut lat = Vec::new();
    for i in 0..plan.statements + plan.statements.min(200) {
        let at = Instant::now();
        let got = flight_query(&mut client, "SELECT 1").await?;
        anyhow::ensure!(rows(&got) == 1, "SELECT 1 answered {} rows", rows(&got));
        if i >= plan.statements.min(200) {
            lat.push(at.elapsed());
        }
    }
    out.push(Measurement::new(system, "SELECT 1", lat, None));

    let mut lat = Vec::new();
    for i in 0..plan.statements + plan.statements.min(200) {
        let id = rand::thread_rng().gen_range(0..plan.lookup_rows as i64);
        let at = Instant::now();
        let got = flight_query(&mut client, &format!("SELECT id, v FROM bench_lookup WHERE id = {id}")).await?;
        anyhow::ensure!(rows(&got) == 1, "lookup of {id} answered {} rows", rows(&got));
        if i >= plan.statements.min(200) {
            lat.push(at.elapsed());
        }
    }
    out.push(Measurement::new(system, "point lookup (primary key)", lat, None));

    let mut lat = Vec::new();
    for i in 0..plan.statements + plan.statements.min(200) {
        let at = Instant::now();
        let n =
            client.execute_update(format!("INSERT INTO bench_insert (id, v) VALUES ({i}, 'row {i}')"), None).await?;
        anyhow::ensure!(n == 1, "INSERT reported {n} rows");
        if i >= plan.statements.min(200) {
            lat.push(at.elapsed());
        }
    }
    out.push(Measurement::new(system, "single-row INSERT", lat, None));
    pg.batch_execute("DROP TABLE bench_lookup; DROP TABLE bench_insert").await?;
    Ok(out)
}

/// Measures `SELECT 1` over the PostgreSQL protocol at `pg` while a TPC-H Q1 loop over Flight SQL and bulk ingests
/// of `lineitem` run against the same server, which has `lineitem` loaded already.
pub async fn under_load(
    flight: SocketAddr,
    pg_conninfo: &str,
    lineitem: &crate::data::Table,
    statements: usize,
) -> anyhow::Result<(Measurement, usize, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let q1 = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut client = crate::harness::flight_client_at(flight).await?;
            let mut loops = 0;
            while !stop.load(Ordering::Relaxed) {
                flight_query(&mut client, crate::queries::query(1)).await?;
                loops += 1;
            }
            anyhow::Ok(loops)
        })
    };
    let ingest = {
        let stop = Arc::clone(&stop);
        let table = crate::data::Table { name: "lineitem", batches: lineitem.batches.clone() };
        tokio::spawn(async move {
            let mut rows = 0;
            while !stop.load(Ordering::Relaxed) {
                rows += crate::ingest::via_flight_at(flight, &table, "lineitem_load", "load").await?.rows;
            }
            anyhow::Ok(rows)
        })
    };
    // Let both get going before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = pg_connect(pg_conninfo).await?;
    let select_one = client.prepare("SELECT 1").await?;
    let mut lat = Vec::with_capacity(statements);
    for _ in 0..statements {
        let at = Instant::now();
        client.query_one(&select_one, &[]).await?;
        lat.push(at.elapsed());
        // A client that asks now and then, not one that saturates a connection.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let loops = q1.await??;
    let rows = ingest.await??;
    let m = Measurement::new("Quiver pg", "SELECT 1 under Q1 loop + bulk ingest", lat, None);
    Ok((m, loops, rows))
}

/// Formats measurements as a table, each with its ratios against the reference system's same measurement.
pub fn render(results: &[Measurement], reference: &str) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut out = format!(
        "{:<20} {:<40} {:>7} {:>9} {:>8} {:>9} {:>8} {:>10} {:>8}\n",
        "system", "measure", "count", "p50 ms", "vs ref", "p99 ms", "vs ref", "rows/s", "vs ref"
    );
    for m in results {
        let r = results.iter().find(|r| r.system == reference && r.what == m.what);
        let ratio = |a: f64, b: Option<f64>| b.map(|b| format!("{:.2}x", a / b)).unwrap_or_else(|| "-".into());
        let rate = m.rows_per_s.map(|r| format!("{r:.0}")).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<20} {:<40} {:>7} {:>9.3} {:>8} {:>9.3} {:>8} {:>10} {:>8}\n",
            m.system,
            m.what,
            m.latencies.len(),
            ms(m.quantile(0.5)),
            ratio(ms(m.quantile(0.5)), r.map(|r| ms(r.quantile(0.5)))),
            ms(m.quantile(0.99)),
            ratio(ms(m.quantile(0.99)), r.map(|r| ms(r.quantile(0.99)))),
            rate,
            m.rows_per_s.map(|q| ratio(q, r.and_then(|r| r.rows_per_s))).unwrap_or_else(|| "-".into()),
        ));
    }
    out
}
