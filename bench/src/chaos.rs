//! Chaos on test hosts: a cluster of `quiver server` processes on separate network namespaces (`deploy/testbed`),
//! clients writing and reading through every host, and a nemesis killing, freezing, isolating and cutting hosts and
//! filling their disks on a seeded schedule; afterwards a checker reads the healed cluster and judges the history.
//!
//! - [`testbed`]: the hosts, through the script;
//! - [`workload`]: the clients (PostgreSQL INSERT and COPY, Flight SQL DoPut, counts, CREATE TABLE);
//! - [`nemesis`]: the fault schedule, and the time to serve again after each fault;
//! - [`history`]: what the clients did and saw;
//! - [`checker`]: the checks over that history and the healed cluster's rows.
//!
//! The runner starts outside the hosts, brings them up, runs itself again in the client namespace (which reaches
//! every host) for the workload and the checks, and takes the hosts down whatever happened.

pub mod checker;
pub mod history;
pub mod nemesis;
pub mod testbed;
pub mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use self::history::{History, Outcome, Via};
use self::nemesis::{Applied, FaultKind};
use self::testbed::Testbed;

/// What a run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Hosts in the testbed.
    pub hosts: usize,
    /// Faults applied, one after another.
    pub faults: usize,
    /// The kinds of fault drawn from.
    pub kinds: Vec<FaultKind>,
    /// How long each fault is held, in milliseconds (low, high).
    pub hold_ms: (u64, u64),
    /// The seed of the schedule and of the clients' choices.
    pub seed: u64,
    /// Concurrent writers.
    pub writers: u64,
    /// Concurrent readers.
    pub readers: u64,
    /// The most rows a write sends.
    pub max_rows: u64,
    /// Where the run leaves its history, the shard map's timeline, the report and the hosts' logs.
    pub out: std::path::PathBuf,
    /// The binary the `upgrade` fault installs on every host (the next release).
    pub upgrade_to: Option<std::path::PathBuf>,
}

impl Options {
    /// The short profile: three hosts, each kind of fault once.
    pub fn short(seed: u64) -> Self {
        Self {
            hosts: 3,
            faults: FaultKind::ALL.len(),
            kinds: FaultKind::ALL.to_vec(),
            hold_ms: (5_000, 10_000),
            seed,
            writers: 3,
            readers: 2,
            max_rows: 50,
            out: std::env::temp_dir().join(format!("quiver-chaos-{seed}")),
            upgrade_to: None,
        }
    }

    /// The long profile: five hosts, forty faults.
    pub fn long(seed: u64) -> Self {
        Self { hosts: 5, faults: 40, hold_ms: (5_000, 20_000), writers: 5, readers: 3, ..Self::short(seed) }
    }
}

/// Runs the workload and the nemesis against a testbed that is up (this process must be in its client namespace),
/// then heals, reads the cluster and checks; returns the report and whether every check held.
pub async fn run_inside(bed: &Testbed, options: &Options) -> anyhow::Result<(String, bool)> {
    workload::create_table(bed).await?;
    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for w in 0..options.writers {
        let seed = options.seed.wrapping_mul(1_000).wrapping_add(w);
        clients.spawn(workload::writer(
            bed.clone(),
            history.clone(),
            w,
            seed,
            options.max_rows,
            Duration::from_millis(50),
            stop.clone(),
        ));
    }
    for r in 0..options.readers {
        let seed = options.seed.wrapping_mul(1_000).wrapping_add(100 + r);
        clients.spawn(workload::reader(
            bed.clone(),
            history.clone(),
            r,
            seed,
            Duration::from_millis(200),
            stop.clone(),
        ));
    }
    clients.spawn(workload::ddl(
        bed.clone(),
        history.clone(),
        options.seed.wrapping_mul(1_000).wrapping_add(999),
        Duration::from_millis(1_000),
        stop.clone(),
    ));

    let timeline =
        tokio::spawn(workload::shard_timeline(bed.clone(), history.clone(), Duration::from_millis(500), stop.clone()));

    let plan = nemesis::schedule(options.seed, &options.kinds, options.faults, bed.hosts(), options.hold_ms);
    let applied = nemesis::run(bed, &history, plan, options.upgrade_to.as_deref()).await;
    // A last quiet stretch with every host healed, then the clients stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}
    let timeline = timeline.await.unwrap_or_default();

    // Heal everything (the nemesis healed each fault; this is for a heal that failed), then wait for every host to
    // answer the same count.
    let _ = bed.run(&["heal"]).await;
    let converge_started = tokio::time::Instant::now();
    let mut end = checker::Final::default();
    let mut converged = None;
    while converge_started.elapsed() < nemesis::RECOVERY_BOUND {
        let counts: Vec<Result<u64, String>> =
            futures::future::join_all((1..=bed.hosts()).map(|i| workload::count(bed.pg(i)))).await;
        let agreed = counts.iter().all(|c| c.is_ok()) && counts.windows(2).all(|w| w[0] == w[1]);
        end.counts = counts;
        if agreed {
            converged = Some(converge_started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    end.rows = workload::all_rows(bed.pg(1)).await.map_err(anyhow::Error::msg)?;
    end.counts = futures::future::join_all((1..=bed.hosts()).map(|i| workload::count(bed.pg(i)))).await;
    end.tables = futures::future::join_all((1..=bed.hosts()).map(|i| workload::ddl_tables(bed.pg(i)))).await;

    let ops = history.ops();
    let checks = checker::check(&ops, &end);
    // A fault that could not be applied or healed tested nothing: the run fails, naming it in the report.
    let applied_cleanly = applied.iter().all(|a| a.error.is_none());
    let recovered = applied.iter().all(|a| a.recovery.is_some() || a.skipped.is_some()) && converged.is_some();
    let passed = checks.iter().all(|c| c.passed) && recovered && applied_cleanly;
    let report = report(bed, options, &applied, &ops, &checks, converged);
    let final_map = workload::shard_map(bed.pg(1)).await.unwrap_or_else(|e| format!("  (not read: {e})\n"));
    let files = [
        ("history", ops.lines()),
        ("shards", format!("{timeline}after healing, host 1:\n{final_map}")),
        ("report", report.clone()),
    ];
    std::fs::create_dir_all(&options.out)?;
    for (name, text) in files {
        std::fs::write(options.out.join(name), text)?;
    }
    Ok((report, passed))
}

/// The report of a run: the faults and recovery times, the operations by outcome, the checks.
fn report(
    bed: &Testbed,
    options: &Options,
    applied: &[Applied],
    ops: &history::Ops,
    checks: &[checker::Check],
    converged: Option<Duration>,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "\n== chaos report: {} hosts, seed {}, {} faults", bed.hosts(), options.seed, applied.len());
    let _ = writeln!(out, "faults (at: kind on host; seconds to serve again after healing):");
    for a in applied {
        let target = nemesis::target(&a.plan);
        let recovery = match (&a.skipped, a.recovery) {
            (Some(why), _) => format!("skipped ({why})"),
            (None, Some(r)) => format!("{:.1} s", r.as_secs_f64()),
            (None, None) => "NOT within the bound".to_string(),
        };
        let _ = writeln!(
            out,
            "  {:7.1} s  {:15} {target}, held {:.1} s; serving again after {recovery}{}{}",
            a.at.as_secs_f64(),
            a.plan.kind.name(),
            a.plan.hold.as_secs_f64(),
            if a.restarted { " (the node had stopped itself and was started again)" } else { "" },
            a.error.as_ref().map(|e| format!(" (FAILED, so the run fails: {e})")).unwrap_or_default()
        );
    }
    let mut by_kind: BTreeMap<FaultKind, Vec<f64>> = BTreeMap::new();
    for a in applied {
        if let Some(r) = a.recovery {
            by_kind.entry(a.plan.kind).or_default().push(r.as_secs_f64());
        }
    }
    let _ = writeln!(out, "recovery by kind (p50 / max seconds):");
    for (kind, mut times) in by_kind {
        times.sort_by(f64::total_cmp);
        let _ = writeln!(
            out,
            "  {:15} {:5.1} / {:5.1}  ({} faults)",
            kind.name(),
            times[times.len() / 2],
            times[times.len() - 1],
            times.len()
        );
    }
    let _ = writeln!(
        out,
        "converged after healing: {}",
        converged.map_or("NOT within the bound".into(), |c| format!("{:.1} s", c.as_secs_f64()))
    );
    let _ = writeln!(out, "operations:");
    for via in [Via::PgInsert, Via::PgCopy, Via::FlightPut] {
        let of: Vec<_> = ops.writes.iter().filter(|w| w.via == via).collect();
        let ok = of.iter().filter(|w| w.outcome.is_ok()).count();
        let failed = of.iter().filter(|w| matches!(w.outcome, Outcome::Failed(_))).count();
        let rows: u64 = of.iter().filter(|w| w.outcome.is_ok()).map(|w| w.rows).sum();
        let _ = writeln!(
            out,
            "  {via:?}: {} statements, {ok} acknowledged ({rows} rows), {failed} refused, {} without an answer",
            of.len(),
            of.len() - ok - failed
        );
    }
    let reads_ok = ops.reads.iter().filter(|r| r.result.is_ok()).count();
    let _ = writeln!(out, "  counts: {} sent, {reads_ok} answered", ops.reads.len());
    let ddl_ok = ops.ddl.iter().filter(|d| d.outcome.is_ok()).count();
    let _ = writeln!(out, "  CREATE TABLE: {} sent, {ddl_ok} acknowledged", ops.ddl.len());
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for w in &ops.writes {
        if let Outcome::Failed(e) | Outcome::Unknown(e) = &w.outcome {
            *errors.entry(e.chars().take(120).collect()).or_default() += 1;
        }
    }
    let mut errors: Vec<_> = errors.into_iter().collect();
    errors.sort_by_key(|e| std::cmp::Reverse(e.1));
    let _ = writeln!(out, "most frequent write errors:");
    for (e, n) in errors.iter().take(6) {
        let _ = writeln!(out, "  {n:5} x {e}");
    }
    let _ = writeln!(out, "checks:");
    for c in checks {
        let _ = writeln!(out, "  {c}");
    }
    out
}
