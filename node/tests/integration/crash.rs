//! Crash safety of the real binary: ingest in a loop, `kill -9` the server, restart it, and check that every
//! acknowledged row is there exactly once and that an insert in flight at the kill is all-or-nothing.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// A `quiver server` child process and its Flight SQL address.
struct Node {
    child: Child,
    flight: String,
}

async fn start(data_dir: &std::path::Path) -> Node {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["server", "--data-dir"])
        .arg(data_dir)
        .args(["--flight-addr", "127.0.0.1:0", "--pg-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--grpc-addr", "127.0.0.1:0"])
        .env("QUIVER_LOG__FILTER", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn quiver server");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let flight = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read server log") {
            if let Some(rest) = line.split("flight=").nth(1) {
                return rest.split_whitespace().next().expect("address").to_string();
            }
        }
        panic!("the server exited before serving");
    })
    .await
    .expect("the server starts within a minute");
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Node { child, flight }
}

async fn client(addr: &str) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
    FlightSqlServiceClient::new(channel)
}

async fn query_ids(client: &mut FlightSqlServiceClient<Channel>) -> Vec<i64> {
    let info = client.execute("SELECT id FROM acked ORDER BY id".to_string(), None).await.expect("query");
    let mut ids = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("ticket");
        let batches: Vec<_> = client.do_get(ticket).await.expect("do_get").try_collect().await.expect("rows");
        for b in batches {
            ids.extend(b.column(0).as_primitive::<Int64Type>().values().iter().copied());
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_row_and_duplicates_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acked: BTreeSet<i64> = BTreeSet::new();
    let mut next_id = 0i64;
    let batch = 50i64;
    let mut node = start(dir.path()).await;
    let mut c = client(&node.flight).await;
    c.execute_update("CREATE TABLE acked (id BIGINT NOT NULL, payload TEXT)".to_string(), None).await.expect("create");
    for round in 0..3u64 {
        tracing::info!(round, "phase: insert concurrently, then kill -9 while inserts are in flight");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(i64, i64, bool)>();
        let mut writers = Vec::new();
        for w in 0..2i64 {
            let mut c = client(&node.flight).await;
            let tx = tx.clone();
            let start_id = next_id + w * 1_000_000;
            writers.push(tokio::spawn(async move {
                let mut id = start_id;
                loop {
                    let sql = format!(
                        "INSERT INTO acked SELECT value, 'row ' || CAST(value AS TEXT) FROM generate_series({id}, {})",
                        id + batch - 1
                    );
                    let ok = c.execute_update(sql, None).await.is_ok();
                    if tx.send((id, id + batch - 1, ok)).is_err() || !ok {
                        return;
                    }
                    id += batch;
                }
            }));
        }
        drop(tx);
        // Let the writers get a few hundred inserts acknowledged, then kill without warning.
        tokio::time::sleep(Duration::from_millis(1500 + 500 * round)).await;
        node.child.start_kill().expect("kill -9");
        node.child.wait().await.expect("reap");
        let mut in_flight = Vec::new();
        while let Some((lo, hi, ok)) = rx.recv().await {
            if ok {
                acked.extend(lo..=hi);
            } else {
                in_flight.push((lo, hi));
            }
        }
        for w in writers {
            let _ = w.await;
        }
        assert!(acked.len() > 100, "round {round}: the writers got inserts acknowledged before the kill");
        next_id += 10_000_000;

        tracing::info!(round, "phase: restart and check every acknowledged row, each once");
        node = start(dir.path()).await;
        c = client(&node.flight).await;
        let ids = query_ids(&mut c).await;
        let unique: BTreeSet<i64> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "round {round}: no row is duplicated");
        let missing: Vec<&i64> = acked.difference(&unique).take(5).collect();
        assert!(missing.is_empty(), "round {round}: acknowledged rows are missing, e.g. {missing:?}");
        for (lo, hi) in in_flight {
            let present = (lo..=hi).filter(|i| unique.contains(i)).count() as i64;
            assert!(present == 0 || present == hi - lo + 1, "round {round}: insert {lo}..={hi} is partly present");
            if present > 0 {
                acked.extend(lo..=hi);
            }
        }
        let unexplained: Vec<&i64> = unique.difference(&acked).take(5).collect();
        assert!(unexplained.is_empty(), "round {round}: rows nobody inserted: {unexplained:?}");
    }
    node.child.start_kill().expect("stop");
    let _ = node.child.wait().await;
}
