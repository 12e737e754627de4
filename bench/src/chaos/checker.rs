//! The checks run over a history once the cluster has healed: what was acknowledged is there exactly once, what was
//! not is all there or not at all, reads never went backwards nor missed an acknowledged row, and a table an
//! acknowledged CREATE made is seen through every host.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::history::{Ops, Outcome};

/// One check's verdict.
#[derive(Debug, Clone)]
pub struct Check {
    /// What it checks.
    pub name: &'static str,
    /// Whether it held.
    pub passed: bool,
    /// Counts, and the first violations when it failed.
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:4}  {}: {}", if self.passed { "ok" } else { "FAIL" }, self.name, self.detail)
    }
}

/// Examples of violations kept in a check's detail.
const EXAMPLES: usize = 5;

/// What the healed cluster holds, read at the end of a run.
#[derive(Debug, Clone, Default)]
pub struct Final {
    /// Every `(writer, seq)` row of the written table, read through one host.
    pub rows: Vec<(u64, u64)>,
    /// `count(*)` of the written table through each host.
    pub counts: Vec<Result<u64, String>>,
    /// For each host, the tables it lists.
    pub tables: Vec<Result<Vec<String>, String>>,
}

/// Runs every check.
pub fn check(ops: &Ops, end: &Final) -> Vec<Check> {
    vec![
        writes_exactly_once(ops, end),
        reads_within_bounds(ops),
        reads_monotonic(ops),
        hosts_agree(end),
        ddl_visible(ops, end),
    ]
}

/// The write a row belongs to: writer and sequence number index a write's range.
fn owners(ops: &Ops) -> HashMap<u64, BTreeMap<u64, usize>> {
    let mut by_writer: HashMap<u64, BTreeMap<u64, usize>> = HashMap::new();
    for (i, w) in ops.writes.iter().enumerate() {
        by_writer.entry(w.writer).or_default().insert(w.first_seq, i);
    }
    by_writer
}

/// Every acknowledged row present exactly once; the rows of a statement that failed or got no answer all present
/// (exactly once) or all absent; no row that no statement wrote.
fn writes_exactly_once(ops: &Ops, end: &Final) -> Check {
    let by_writer = owners(ops);
    let mut seen: HashMap<(u64, u64), u32> = HashMap::with_capacity(end.rows.len());
    for &row in &end.rows {
        *seen.entry(row).or_default() += 1;
    }
    let mut problems = Vec::new();
    let mut phantoms = 0usize;
    for &(writer, seq) in seen.keys() {
        let owner = by_writer.get(&writer).and_then(|m| m.range(..=seq).next_back()).map(|(_, &i)| &ops.writes[i]);
        if owner.is_none_or(|w| seq >= w.first_seq + w.rows) {
            phantoms += 1;
            if problems.len() < EXAMPLES {
                problems.push(format!("row ({writer}, {seq}) was written by no statement"));
            }
        }
    }
    let (mut acked, mut lost, mut duplicated, mut partial, mut applied_unacked, mut failed_but_applied) =
        (0u64, 0u64, 0u64, 0usize, 0usize, 0usize);
    for w in &ops.writes {
        let counts: Vec<u32> =
            (w.first_seq..w.first_seq + w.rows).map(|s| seen.get(&(w.writer, s)).copied().unwrap_or(0)).collect();
        let present = counts.iter().filter(|&&c| c > 0).count() as u64;
        let dups: u64 = counts.iter().map(|&c| u64::from(c.saturating_sub(1))).sum();
        duplicated += dups;
        if dups > 0 && problems.len() < EXAMPLES {
            problems
                .push(format!("{dups} rows of writer {} from seq {} are there more than once", w.writer, w.first_seq));
        }
        if w.outcome.is_ok() {
            acked += w.rows;
            lost += w.rows - present;
            if present < w.rows && problems.len() < EXAMPLES {
                problems.push(format!(
                    "acknowledged {:?} of {} rows (writer {}, seq {}, host {}, at {:.1} s): {} missing",
                    w.via,
                    w.rows,
                    w.writer,
                    w.first_seq,
                    w.host,
                    w.completed.as_secs_f64(),
                    w.rows - present
                ));
            }
        } else if present > 0 && present < w.rows {
            partial += 1;
            if problems.len() < EXAMPLES {
                problems.push(format!(
                    "{:?} of {} rows (writer {}, seq {}) that got {:?} is half there: {present} rows",
                    w.via, w.rows, w.writer, w.first_seq, w.outcome
                ));
            }
        } else if present == w.rows {
            applied_unacked += 1;
            failed_but_applied += usize::from(matches!(w.outcome, Outcome::Failed(_)));
        }
    }
    let passed = lost == 0 && duplicated == 0 && partial == 0 && phantoms == 0;
    let mut detail = format!(
        "{} statements, {acked} rows acknowledged, {lost} lost, {duplicated} duplicated, {partial} unacknowledged \
         statements half there, {phantoms} rows of no statement; {applied_unacked} unacknowledged statements applied \
         whole ({failed_but_applied} of them answered with an error)",
        ops.writes.len()
    );
    if !problems.is_empty() {
        detail.push_str(&format!("; {}", problems.join("; ")));
    }
    Check { name: "acknowledged rows exactly once, the rest all or nothing", passed, detail }
}

/// A count read never misses a row acknowledged before the read was sent, nor counts more rows than the statements
/// sent before its answer came.
fn reads_within_bounds(ops: &Ops) -> Check {
    let mut acked: Vec<(std::time::Duration, u64)> =
        ops.writes.iter().filter(|w| w.outcome.is_ok()).map(|w| (w.completed, w.rows)).collect();
    acked.sort_unstable();
    let mut sent: Vec<(std::time::Duration, u64)> = ops.writes.iter().map(|w| (w.invoked, w.rows)).collect();
    sent.sort_unstable();
    let sum_before =
        |v: &[(std::time::Duration, u64)], t| v.iter().take_while(|(at, _)| *at < t).map(|(_, n)| n).sum::<u64>();
    let mut problems = Vec::new();
    let mut answered = 0usize;
    for r in &ops.reads {
        let Ok(count) = r.result else { continue };
        answered += 1;
        let low = sum_before(&acked, r.invoked);
        let high = sum_before(&sent, r.completed);
        if (count < low || count > high) && problems.len() < EXAMPLES {
            problems.push(format!(
                "reader {} through host {} at {:.2}–{:.2} s counted {count}, outside [{low}, {high}]",
                r.reader,
                r.host,
                r.invoked.as_secs_f64(),
                r.completed.as_secs_f64()
            ));
        }
    }
    let passed = problems.is_empty();
    let mut detail = format!("{answered} counts answered of {}", ops.reads.len());
    if !passed {
        detail.push_str(&format!("; {}", problems.join("; ")));
    }
    Check { name: "counts include every row acknowledged before them", passed, detail }
}

/// A reader's later counts are never smaller than its earlier ones (no write is seen and then unseen).
fn reads_monotonic(ops: &Ops) -> Check {
    let mut last: HashMap<u64, (u64, usize, f64)> = HashMap::new();
    let mut reads: Vec<_> = ops.reads.iter().filter(|r| r.result.is_ok()).collect();
    reads.sort_by_key(|r| (r.reader, r.invoked));
    let mut problems = Vec::new();
    for r in reads {
        let Ok(count) = r.result else { continue };
        if let Some(&(before, host, at)) = last.get(&r.reader)
            && count < before
            && problems.len() < EXAMPLES
        {
            problems.push(format!(
                "reader {} counted {before} through host {host} at {at:.2} s, then {count} through host {} at {:.2} s",
                r.reader,
                r.host,
                r.invoked.as_secs_f64()
            ));
        }
        last.insert(r.reader, (count, r.host, r.invoked.as_secs_f64()));
    }
    let passed = problems.is_empty();
    let detail = if passed { format!("{} readers", last.len()) } else { problems.join("; ") };
    Check { name: "each reader's counts never go back", passed, detail }
}

/// After healing, every host answers, with the same count, the count of the rows read.
fn hosts_agree(end: &Final) -> Check {
    let rows = end.rows.len() as u64;
    let bad: Vec<String> = end
        .counts
        .iter()
        .enumerate()
        .filter(|(_, c)| c.as_ref().ok() != Some(&rows))
        .map(|(i, c)| format!("host {}: {c:?}", i + 1))
        .collect();
    let passed = bad.is_empty() && !end.counts.is_empty();
    let detail = if passed {
        format!("{} hosts count {rows} rows", end.counts.len())
    } else {
        format!("{rows} rows read; {}", bad.join(", "))
    };
    Check { name: "every host answers the same after healing", passed, detail }
}

/// A table an acknowledged CREATE made is readable through another host right away, and listed by every host at the
/// end; no table whose CREATE failed is half made (listed by some hosts and not others).
fn ddl_visible(ops: &Ops, end: &Final) -> Check {
    let mut problems = Vec::new();
    let (mut acked, mut read_after, mut stale) = (0usize, 0usize, 0usize);
    for d in &ops.ddl {
        let listed: Vec<bool> =
            end.tables.iter().map(|t| t.as_ref().is_ok_and(|names| names.contains(&d.table))).collect();
        let everywhere = !listed.is_empty() && listed.iter().all(|&l| l);
        let nowhere = listed.iter().all(|&l| !l);
        if d.outcome.is_ok() {
            acked += 1;
            if !everywhere && problems.len() < EXAMPLES {
                problems.push(format!(
                    "{} acknowledged by host {} is not listed by every host: {listed:?}",
                    d.table, d.host
                ));
            }
            if let Some((host, Some(visible))) = d.read_after {
                read_after += 1;
                if !visible {
                    stale += 1;
                    if problems.len() < EXAMPLES {
                        problems.push(format!(
                            "{} acknowledged by host {} at {:.2} s was not found through host {host} right after",
                            d.table,
                            d.host,
                            d.completed.as_secs_f64()
                        ));
                    }
                }
            }
        } else if !everywhere && !nowhere && problems.len() < EXAMPLES {
            problems.push(format!("{} ({:?}) is listed by some hosts only: {listed:?}", d.table, d.outcome));
        }
    }
    let passed = problems.is_empty() && end.tables.iter().all(Result::is_ok);
    let mut detail = format!(
        "{} CREATEs, {acked} acknowledged, {read_after} read through another host, {stale} not found",
        ops.ddl.len()
    );
    if !problems.is_empty() {
        detail.push_str(&format!("; {}", problems.join("; ")));
    }
    for (i, t) in end.tables.iter().enumerate() {
        if let Err(e) = t {
            detail.push_str(&format!("; host {} did not list its tables: {e}", i + 1));
        }
    }
    Check { name: "DDL linearizable (acknowledged tables seen through every host)", passed, detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::history::{Ddl, Read, Via, Write};
    use std::time::Duration;

    fn write(writer: u64, first_seq: u64, rows: u64, at: u64, outcome: Outcome) -> Write {
        Write {
            writer,
            first_seq,
            rows,
            via: Via::PgInsert,
            host: 1,
            invoked: Duration::from_secs(at),
            completed: Duration::from_secs(at + 1),
            outcome,
        }
    }

    fn read(reader: u64, at: u64, count: u64) -> Read {
        Read {
            reader,
            host: 1,
            invoked: Duration::from_secs(at),
            completed: Duration::from_secs(at) + Duration::from_millis(500),
            result: Ok(count),
        }
    }

    fn rows(ranges: &[(u64, std::ops::Range<u64>)]) -> Vec<(u64, u64)> {
        ranges.iter().flat_map(|(w, r)| r.clone().map(move |s| (*w, s))).collect()
    }

    fn verdict(checks: &[Check], name_part: &str) -> bool {
        checks.iter().find(|c| c.name.contains(name_part)).expect("check").passed
    }

    #[test]
    fn a_lost_acknowledged_row_a_duplicate_and_a_half_statement_fail() {
        let ops = Ops {
            writes: vec![
                write(1, 0, 3, 0, Outcome::Ok),
                write(1, 3, 3, 2, Outcome::Unknown("timeout".into())),
                write(2, 0, 2, 0, Outcome::Failed("refused".into())),
            ],
            ..Ops::default()
        };
        let whole = Final { rows: rows(&[(1, 0..6)]), counts: vec![Ok(6)], tables: vec![Ok(vec![])] };
        assert!(check(&ops, &whole).iter().all(|c| c.passed), "{:?}", check(&ops, &whole));
        let without_unknown = Final { rows: rows(&[(1, 0..3)]), counts: vec![Ok(3)], ..whole.clone() };
        assert!(verdict(&check(&ops, &without_unknown), "exactly once"));

        let lost = Final { rows: rows(&[(1, 0..2)]), counts: vec![Ok(2)], ..whole.clone() };
        let checks = check(&ops, &lost);
        assert!(!verdict(&checks, "exactly once"));
        assert!(checks[0].detail.contains("1 lost"), "{}", checks[0].detail);

        let mut duplicated = whole.clone();
        duplicated.rows.push((1, 1));
        assert!(!verdict(&check(&ops, &duplicated), "exactly once"));

        let half = Final { rows: rows(&[(1, 0..4)]), counts: vec![Ok(4)], ..whole.clone() };
        let checks = check(&ops, &half);
        assert!(!verdict(&checks, "exactly once"));
        assert!(checks[0].detail.contains("half there"), "{}", checks[0].detail);

        let phantom = Final { rows: rows(&[(1, 0..6), (3, 0..1)]), counts: vec![Ok(7)], ..whole };
        assert!(!verdict(&check(&ops, &phantom), "exactly once"));
    }

    #[test]
    fn counts_must_cover_what_was_acknowledged_before_them_and_never_go_back() {
        let writes = vec![write(1, 0, 10, 0, Outcome::Ok), write(1, 10, 10, 5, Outcome::Ok)];
        let end = Final { rows: rows(&[(1, 0..20)]), counts: vec![Ok(20)], tables: vec![Ok(vec![])] };
        let good =
            Ops { writes: writes.clone(), reads: vec![read(1, 2, 10), read(1, 5, 10), read(1, 7, 20)], ddl: vec![] };
        assert!(check(&good, &end).iter().all(|c| c.passed));
        // Acknowledged at 1 s, counted without it at 2 s.
        let stale = Ops { writes: writes.clone(), reads: vec![read(1, 2, 9)], ddl: vec![] };
        assert!(!verdict(&check(&stale, &end), "include every row"));
        // More rows than were ever sent by then.
        let ahead = Ops { writes: writes.clone(), reads: vec![read(1, 2, 11)], ddl: vec![] };
        assert!(!verdict(&check(&ahead, &end), "include every row"));
        // The second write's rows seen (in flight at 5.5 s), then not.
        let back = Ops { writes, reads: vec![read(2, 5, 20), read(2, 5, 10)], ddl: vec![] };
        let mut back = back;
        back.reads[1].invoked = Duration::from_millis(5600);
        back.reads[1].completed = Duration::from_millis(5700);
        assert!(!verdict(&check(&back, &end), "never go back"));
    }

    #[test]
    fn hosts_must_agree_and_acknowledged_tables_be_everywhere() {
        let ddl = |table: &str, outcome: Outcome, visible: Option<bool>| Ddl {
            table: table.into(),
            host: 1,
            invoked: Duration::ZERO,
            completed: Duration::from_secs(1),
            outcome,
            read_after: visible.map(|v| (2, Some(v))),
        };
        let ops = Ops {
            ddl: vec![ddl("a", Outcome::Ok, Some(true)), ddl("b", Outcome::Unknown("timeout".into()), None)],
            ..Ops::default()
        };
        let listed = |names: &[&str]| Ok(names.iter().map(|s| s.to_string()).collect());
        let end =
            Final { rows: vec![], counts: vec![Ok(0), Ok(0)], tables: vec![listed(&["a", "b"]), listed(&["a", "b"])] };
        assert!(check(&ops, &end).iter().all(|c| c.passed));
        let split = Final { tables: vec![listed(&["a", "b"]), listed(&["a"])], ..end.clone() };
        assert!(!verdict(&check(&ops, &split), "DDL"));
        let missing = Final { tables: vec![listed(&["a"]), listed(&[])], ..end.clone() };
        assert!(!verdict(&check(&ops, &missing), "DDL"));
        let stale = Ops { ddl: vec![ddl("a", Outcome::Ok, Some(false))], ..Ops::default() };
        assert!(!verdict(&check(&stale, &end), "DDL"));
        let disagree = Final { counts: vec![Ok(0), Err("timeout".into())], ..end };
        assert!(!verdict(&check(&ops, &disagree), "every host answers"));
    }
}
