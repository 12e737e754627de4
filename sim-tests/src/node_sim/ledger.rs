//! The ledger of the node workload: UPDATEs spanning shards, checked for atomicity under the workload's faults.
//!
//! A table of [`ACCOUNTS`] accounts over four shards, two copies each, every account starting with [`OPENING`].
//! A client moves amounts between two random accounts through a random node, each transfer one UPDATE of both rows
//! (`balance` down on one, up on the other, `moves` up by one on both): when the two accounts lie in two shards, a
//! statement spanning shards, all or nothing (`engine::transactions`). An auditor sums the table through a random
//! node every few tens of milliseconds.
//!
//! Checks: every answer of the auditor, and the final state on every node, holds every account once, the opening
//! total (a statement seen in part, or applied in part, moves it), and a count of moves that accounts for every
//! transfer acknowledged before the query was sent and for no more transfers than were tried and not refused.
//!
//! The table's rows stay hot (`hot_bytes_max = '0'`): a statement that rewrites a shard's cold files commits it on its
//! own, outside the statement's transaction.

use std::time::Duration;

use madsim::rand::{Rng, thread_rng};
use madsim::time::{Instant, sleep};

use super::{Fate, execute, fate_of, int64s};

/// The table's name (the catalog check knows it).
pub(super) const TABLE: &str = "ledger";
/// Accounts in the ledger.
const ACCOUNTS: i64 = 16;
/// Each account's balance before the first transfer.
const OPENING: i64 = 1_000;

/// Its CREATE TABLE.
pub(super) fn create_sql() -> String {
    format!(
        "CREATE TABLE {TABLE} (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL, moves BIGINT NOT NULL) WITH (shards = \
         4, replicas = 2, hot_bytes_max = '0')"
    )
}

/// Opens every account, before the faults: one INSERT spanning shards, all or nothing, tried again until the
/// accounts are there (a table just created may have a copy not in sync yet, which refuses writes).
pub(super) async fn open() -> Result<(), String> {
    let insert = format!("INSERT INTO {TABLE} SELECT value, {OPENING}, 0 FROM generate_series(1, {ACCOUNTS})");
    let mut last = None;
    for _ in 0..40 {
        match sums(1).await {
            Ok(sums) if sums == (ACCOUNTS, ACCOUNTS * OPENING, 0) => return Ok(()),
            Ok((0, ..)) => last = execute(1, insert.clone()).await.err(),
            Ok(other) => return Err(format!("ledger: the opening left {other:?} (count, total, moves)")),
            Err(code) => last = Some(code),
        }
        sleep(Duration::from_millis(250)).await;
    }
    Err(format!("ledger: the accounts could not be opened: {last:?}"))
}

/// One transfer as the client saw it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Transfer {
    fate: Fate,
    /// When it was answered (since the run began).
    answered: Duration,
}

/// One answer of the auditor: what node `node` summed for a query sent at `invoked` (since the run began).
#[derive(Debug, Clone, Copy)]
pub(super) struct Audit {
    node: u64,
    invoked: Duration,
    /// `count(*)`, `sum(balance)`, `sum(moves)`.
    sums: (i64, i64, i64),
}

/// Sums the ledger through `node`.
async fn sums(node: u64) -> Result<(i64, i64, i64), madsim_tonic::Code> {
    let batches = execute(node, format!("SELECT count(*), sum(balance), sum(moves) FROM {TABLE}")).await?;
    let at = |i: usize| int64s(&batches, i).first().copied().flatten().unwrap_or(-1);
    Ok((at(0), at(1), at(2)))
}

/// The client: until `deadline`, transfers between two random accounts through a random one of `nodes` nodes.
pub(super) async fn transfers(nodes: u64, started: Instant, deadline: Instant) -> Vec<Transfer> {
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let from = thread_rng().gen_range(1..=ACCOUNTS);
        let to = (from + thread_rng().gen_range(1..ACCOUNTS) - 1) % ACCOUNTS + 1;
        let amount = thread_rng().gen_range(1..100);
        let sql = format!(
            "UPDATE {TABLE} SET balance = balance + CASE WHEN id = {from} THEN -{amount} ELSE {amount} END, moves = \
             moves + 1 WHERE id IN ({from}, {to})"
        );
        let node = thread_rng().gen_range(1..=nodes);
        let fate = match execute(node, sql).await {
            Ok(_) => Fate::Acknowledged,
            Err(code) => fate_of(code),
        };
        out.push(Transfer { fate, answered: started.elapsed() });
        sleep(Duration::from_millis(thread_rng().gen_range(20..200))).await;
    }
    out
}

/// The auditor: until `deadline`, sums of the ledger through a random one of `nodes` nodes.
pub(super) async fn auditor(nodes: u64, started: Instant, deadline: Instant) -> Vec<Audit> {
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let node = thread_rng().gen_range(1..=nodes);
        let invoked = started.elapsed();
        if let Ok(sums) = sums(node).await {
            out.push(Audit { node, invoked, sums });
        }
        sleep(Duration::from_millis(thread_rng().gen_range(10..60))).await;
    }
    out
}

/// Checks one answer: every account once, the opening total, and between the transfers acknowledged before
/// `invoked` and those not refused.
fn check_audit(transfers: &[Transfer], audit: &Audit) -> Result<(), String> {
    let Audit { node, invoked, sums: (count, total, moves) } = *audit;
    if count != ACCOUNTS || total != ACCOUNTS * OPENING {
        return Err(format!(
            "ledger: a query on node {node} at {invoked:?} counted {count} accounts holding {total} (expected \
             {ACCOUNTS} holding {}): a transfer seen or applied in part",
            ACCOUNTS * OPENING
        ));
    }
    let before = transfers.iter().filter(|t| t.fate == Fate::Acknowledged && t.answered < invoked).count() as i64;
    let possible = transfers.iter().filter(|t| t.fate != Fate::Failed).count() as i64;
    if moves % 2 != 0 || moves / 2 < before || moves / 2 > possible {
        return Err(format!(
            "ledger: a query on node {node} at {invoked:?} counted {moves} moves, {before} transfers acknowledged \
             before it and {possible} not refused (each transfer moves two accounts)"
        ));
    }
    Ok(())
}

/// Checks the auditor's answers during the faults, then the ledger on every node once they are over (each asked
/// again for up to `bound` while it refuses). Returns a summary.
///
/// Two copies survive the loss of one: from the second disk lost in the run on (`second_loss`, since the run began),
/// both copies of a shard may be gone, and the ledger is no longer held to its totals.
pub(super) async fn check(
    client: &madsim::runtime::NodeHandle,
    nodes: u64,
    transfers: &[Transfer],
    audits: &[Audit],
    second_loss: Option<Duration>,
    bound: Duration,
) -> Result<String, String> {
    for audit in audits.iter().filter(|a| second_loss.is_none_or(|lost| a.invoked < lost)) {
        check_audit(transfers, audit)?;
    }
    if second_loss.is_some() {
        return Ok(format!(
            "ledger: {} transfers, {} audits, checked up to the second disk lost",
            transfers.len(),
            audits.len()
        ));
    }
    let started = Instant::now();
    for node in 1..=nodes {
        let sums = loop {
            match client.spawn(sums(node)).await.map_err(|e| format!("the ledger's final query: {e}"))? {
                Ok(sums) => break sums,
                Err(code) if started.elapsed() > bound => {
                    return Err(format!("ledger: node {node} did not answer within {bound:?}: {code:?}"));
                }
                Err(_) => sleep(Duration::from_millis(200)).await,
            }
        };
        // Every transfer was answered before the final queries.
        check_audit(transfers, &Audit { node, invoked: Duration::MAX, sums })?;
    }
    let acknowledged = transfers.iter().filter(|t| t.fate == Fate::Acknowledged).count();
    Ok(format!("ledger: {} transfers ({acknowledged} acknowledged), {} audits", transfers.len(), audits.len()))
}
