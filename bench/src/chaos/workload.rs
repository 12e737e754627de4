//! The clients: writers sending numbered rows through PostgreSQL INSERT and COPY and Flight SQL DoPut, readers
//! counting them, and a client creating tables; each against a host picked at random for every operation, each
//! operation recorded in the [`History`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::sql::{CommandStatementIngest, TableDefinitionOptions, TableExistsOption, TableNotExistOption};
use bytes::Bytes;
use futures::SinkExt;

use super::history::{Ddl, History, Outcome, Read, Via, Write};
use super::testbed::Testbed;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The table the writers fill.
pub const TABLE: &str = "chaos_rows";
/// The prefix of the tables the DDL client creates.
pub const DDL_PREFIX: &str = "chaos_ddl_";

/// How long a client waits for an answer before it counts the operation as unknown.
pub const OP_TIMEOUT: Duration = Duration::from_secs(20);

/// Connects to a host's PostgreSQL gateway.
pub async fn pg(addr: SocketAddr) -> Result<tokio_postgres::Client, String> {
    let conn = format!("host={} port={} user=quiver connect_timeout=5", addr.ip(), addr.port());
    let (client, connection) =
        tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.map_err(|e| format!("connect: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A PostgreSQL error's words, its SQLSTATE first when the server sent one.
fn pg_error(e: &tokio_postgres::Error) -> Outcome {
    match e.as_db_error() {
        // statement_completion_unknown: the server could not learn whether the statement took effect.
        Some(db) if db.code() == &tokio_postgres::error::SqlState::T_R_STATEMENT_COMPLETION_UNKNOWN => {
            Outcome::Unknown(format!("{}: {}", db.code().code(), db.message()))
        }
        Some(db) => Outcome::Failed(format!("{}: {}", db.code().code(), db.message())),
        None => Outcome::Unknown(e.to_string()),
    }
}

/// Runs `op` with the operation timeout; a timeout is an unknown outcome.
async fn timed<T>(op: impl Future<Output = Result<T, Outcome>>) -> Result<T, Outcome> {
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(r) => r,
        Err(_) => Err(Outcome::Unknown(format!("no answer within {} s", OP_TIMEOUT.as_secs()))),
    }
}

/// Creates the written table through host 1.
pub async fn create_table(bed: &Testbed) -> anyhow::Result<()> {
    let client = pg(bed.pg(1)).await.map_err(anyhow::Error::msg)?;
    client.batch_execute(&format!("CREATE TABLE {TABLE} (writer BIGINT NOT NULL, seq BIGINT NOT NULL)")).await?;
    client.batch_execute("CREATE TABLE chaos_probe (host BIGINT NOT NULL, at BIGINT NOT NULL)").await?;
    Ok(())
}

/// One writer: statements of 1 to `max_rows` rows, each through a random host and a random way in, until `stop`.
pub async fn writer(
    bed: Testbed,
    history: History,
    id: u64,
    seed: u64,
    max_rows: u64,
    pause: Duration,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next_seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let host = 1 + rng.gen_range(0..bed.hosts());
        let rows = 1 + rng.gen_range(0..max_rows);
        let via = match rng.gen_range(0..3) {
            0 => Via::PgInsert,
            1 => Via::PgCopy,
            _ => Via::FlightPut,
        };
        let first_seq = next_seq;
        next_seq += rows;
        let invoked = history.now();
        let result = timed(async {
            match via {
                Via::PgInsert => insert(bed.pg(host), id, first_seq, rows).await,
                Via::PgCopy => copy(bed.pg(host), id, first_seq, rows).await,
                Via::FlightPut => put(bed.flight(host), id, first_seq, rows).await,
            }
        })
        .await;
        let outcome = match result {
            Ok(n) if n == rows => Outcome::Ok,
            Ok(n) => Outcome::Failed(format!("acknowledged {n} rows of {rows}")),
            Err(o) => o,
        };
        history.write(Write { writer: id, first_seq, rows, via, host, invoked, completed: history.now(), outcome });
        tokio::time::sleep(pause).await;
    }
}

async fn insert(addr: SocketAddr, writer: u64, first: u64, rows: u64) -> Result<u64, Outcome> {
    let client = pg(addr).await.map_err(Outcome::Unknown)?;
    let values: Vec<String> = (first..first + rows).map(|s| format!("({writer}, {s})")).collect();
    client.execute(&format!("INSERT INTO {TABLE} VALUES {}", values.join(", ")), &[]).await.map_err(|e| pg_error(&e))
}

async fn copy(addr: SocketAddr, writer: u64, first: u64, rows: u64) -> Result<u64, Outcome> {
    let client = pg(addr).await.map_err(Outcome::Unknown)?;
    let sink = client
        .copy_in::<_, Bytes>(&format!("COPY {TABLE} FROM STDIN WITH (FORMAT csv)"))
        .await
        .map_err(|e| pg_error(&e))?;
    futures::pin_mut!(sink);
    let text: String = (first..first + rows).map(|s| format!("{writer},{s}\n")).collect();
    sink.send(Bytes::from(text)).await.map_err(|e| pg_error(&e))?;
    sink.finish().await.map_err(|e| pg_error(&e))
}

async fn put(addr: SocketAddr, writer: u64, first: u64, rows: u64) -> Result<u64, Outcome> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| Outcome::Unknown(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| Outcome::Unknown(format!("connect: {e}")))?;
    let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
    let schema = Arc::new(Schema::new(vec![
        Field::new("writer", DataType::Int64, false),
        Field::new("seq", DataType::Int64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![writer as i64; rows as usize])),
        Arc::new(Int64Array::from_iter_values((first..first + rows).map(|s| s as i64))),
    ];
    let batch = RecordBatch::try_new(schema, columns).map_err(|e| Outcome::Failed(e.to_string()))?;
    let command = CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: TableNotExistOption::Fail.into(),
            if_exists: TableExistsOption::Append.into(),
        }),
        table: TABLE.to_string(),
        schema: None,
        catalog: None,
        temporary: false,
        transaction_id: None,
        options: Default::default(),
    };
    let n = client.execute_ingest(command, futures::stream::iter([Ok(batch)])).await.map_err(|e| match e {
        // No answer, or a connection lost on the way: it may or may not have been applied.
        arrow_flight::error::FlightError::Tonic(status)
            if matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            ) =>
        {
            Outcome::Unknown(status.to_string())
        }
        e => Outcome::Failed(e.to_string()),
    })?;
    Ok(n as u64)
}

/// Counts the written table's rows through `addr`.
pub async fn count(addr: SocketAddr) -> Result<u64, String> {
    let client = pg(addr).await?;
    let row = client.query_one(&format!("SELECT count(*) FROM {TABLE}"), &[]).await.map_err(|e| e.to_string())?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// One reader: counts through random hosts until `stop`.
pub async fn reader(bed: Testbed, history: History, id: u64, seed: u64, pause: Duration, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let host = 1 + rng.gen_range(0..bed.hosts());
        let invoked = history.now();
        let result = match tokio::time::timeout(OP_TIMEOUT, count(bed.pg(host))).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} s", OP_TIMEOUT.as_secs())),
        };
        history.read(Read { reader: id, host, invoked, completed: history.now(), result });
        tokio::time::sleep(pause).await;
    }
}

/// The DDL client: creates tables through random hosts; after each acknowledged CREATE, reads the table through
/// another host.
pub async fn ddl(bed: Testbed, history: History, seed: u64, pause: Duration, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let host = 1 + rng.gen_range(0..bed.hosts());
        let table = format!("{DDL_PREFIX}{n}");
        n += 1;
        let invoked = history.now();
        let outcome = match timed(async {
            let client = pg(bed.pg(host)).await.map_err(Outcome::Unknown)?;
            client
                .batch_execute(&format!("CREATE TABLE {table} (x BIGINT) WITH (shards = 1)"))
                .await
                .map_err(|e| pg_error(&e))
        })
        .await
        {
            Ok(()) => Outcome::Ok,
            Err(o) => o,
        };
        let completed = history.now();
        let read_after = if outcome.is_ok() && bed.hosts() > 1 {
            let other = 1 + (host + rng.gen_range(0..bed.hosts() - 1)) % bed.hosts();
            let seen = tokio::time::timeout(OP_TIMEOUT, async {
                let client = pg(bed.pg(other)).await.ok()?;
                match client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await {
                    Ok(_) => Some(true),
                    Err(e) if is_unknown_table(&e) => Some(false),
                    Err(_) => None,
                }
            })
            .await
            .ok()
            .flatten();
            Some((other, seen))
        } else {
            None
        };
        history.ddl(Ddl { table, host, invoked, completed, outcome, read_after });
        tokio::time::sleep(pause).await;
    }
}

fn is_unknown_table(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
        || e.as_db_error().is_some_and(|d| d.message().contains("not found") || d.message().contains("does not exist"))
}

/// Writes a probe row through `addr`: whether a write goes through.
pub async fn probe_write(addr: SocketAddr, host: usize, at: u64) -> Result<(), String> {
    let client = pg(addr).await?;
    client.execute(&format!("INSERT INTO chaos_probe VALUES ({host}, {at})"), &[]).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Every `(writer, seq)` row of the written table, through `addr`.
pub async fn all_rows(addr: SocketAddr) -> Result<Vec<(u64, u64)>, String> {
    let client = pg(addr).await?;
    let rows = client.query(&format!("SELECT writer, seq FROM {TABLE}"), &[]).await.map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64)).collect())
}

/// The tables the DDL client may have made that `addr` lists.
pub async fn ddl_tables(addr: SocketAddr) -> Result<Vec<String>, String> {
    let client = pg(addr).await?;
    let rows = client
        .query(&format!("SELECT table_name FROM information_schema.tables WHERE table_name LIKE '{DDL_PREFIX}%'"), &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// Watches the shard map of the written table through the hosts in turn until `stop`: returns a timeline with a line
/// each time what a host shows changed (each shard's primary, copies, in-sync copies, epoch and state; moves under
/// way), for studying a run that failed.
pub async fn shard_timeline(bed: Testbed, history: History, pause: Duration, stop: Arc<AtomicBool>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut last: Vec<Option<String>> = vec![None; bed.hosts() + 1];
    let mut host = 0;
    while !stop.load(Ordering::Relaxed) {
        host = host % bed.hosts() + 1;
        let at = history.now();
        if let Ok(Ok(now)) = tokio::time::timeout(OP_TIMEOUT, shard_map(bed.pg(host))).await
            && last[host].as_ref() != Some(&now)
        {
            let _ = writeln!(out, "{:.3} host {host}:\n{now}", at.as_secs_f64());
            last[host] = Some(now);
        }
        tokio::time::sleep(pause).await;
    }
    out
}

/// The written table's shards and the moves under way, as `addr` shows them, a line each.
pub async fn shard_map(addr: SocketAddr) -> Result<String, String> {
    let client = pg(addr).await?;
    let shards = client
        .query(
            &format!(
                "SELECT CAST(shard_id AS BIGINT) AS s, CAST(\"primary\" AS BIGINT) AS p, replicas, in_sync, \
                 CAST(epoch AS BIGINT) AS e, state, catching_up FROM system.shards \
                 WHERE table_name = '{TABLE}' ORDER BY s"
            ),
            &[],
        )
        .await
        .map_err(|e| e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string()))?;
    let moves = client
        .query(&format!("SELECT CAST(shard_id AS BIGINT) AS s, CAST(target AS BIGINT) AS t, phase FROM system.shard_moves WHERE table_name = '{TABLE}'"), &[])
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    for r in &shards {
        out.push_str(&format!(
            "  shard {} primary {} replicas [{}] in_sync [{}] epoch {} {} catching_up [{}]\n",
            r.get::<_, i64>(0),
            r.get::<_, i64>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(3),
            r.get::<_, i64>(4),
            r.get::<_, String>(5),
            r.get::<_, String>(6)
        ));
    }
    for r in &moves {
        out.push_str(&format!(
            "  move shard {} to node {}: {}\n",
            r.get::<_, i64>(0),
            r.get::<_, i64>(1),
            r.get::<_, String>(2)
        ));
    }
    Ok(out)
}

/// The node leading the metadata group, as `addr` sees it.
pub async fn metadata_leader(addr: SocketAddr) -> Result<Option<u64>, String> {
    let client = pg(addr).await?;
    let rows = client
        .query("SELECT CAST(node_id AS BIGINT) AS n FROM system.nodes WHERE is_leader", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.first().map(|r| r.get::<_, i64>(0) as u64))
}

/// The shard copies node `node` holds, as `addr` sees them (`system.nodes`).
pub async fn copies_on(addr: SocketAddr, node: u64) -> Result<u64, String> {
    let client = pg(addr).await?;
    let rows = client
        .query(&format!("SELECT CAST(replicas AS BIGINT) AS r FROM system.nodes WHERE node_id = {node}"), &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0) as u64))
}
