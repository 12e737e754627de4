//! What the clients did: every operation's invocation, completion and result, as the checker reads them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server acknowledged it.
    Ok,
    /// The server answered with an error.
    Failed(String),
    /// No answer: a timeout or a lost connection. It may or may not have taken effect.
    Unknown(String),
}

impl Outcome {
    /// Whether the server acknowledged it.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// How a write reached the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A multi-row PostgreSQL INSERT.
    PgInsert,
    /// PostgreSQL COPY FROM STDIN.
    PgCopy,
    /// Flight SQL bulk ingest (DoPut).
    FlightPut,
}

/// One statement writing rows `(writer, first_seq .. first_seq + rows)`; sequence numbers are never used twice.
#[derive(Debug, Clone)]
pub struct Write {
    /// The client process that wrote.
    pub writer: u64,
    /// Its first sequence number.
    pub first_seq: u64,
    /// How many rows (consecutive sequence numbers).
    pub rows: u64,
    /// How it was sent.
    pub via: Via,
    /// The host it was sent to.
    pub host: usize,
    /// When it was sent and when its answer came (or the client gave up), since the run began.
    pub invoked: Duration,
    /// See `invoked`.
    pub completed: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

/// One `SELECT count(*)` of the written table.
#[derive(Debug, Clone)]
pub struct Read {
    /// The client process that read.
    pub reader: u64,
    /// The host it was sent to.
    pub host: usize,
    /// When it was sent and answered, since the run began.
    pub invoked: Duration,
    /// See `invoked`.
    pub completed: Duration,
    /// The count, or why there is none.
    pub result: Result<u64, String>,
}

/// One CREATE TABLE, and a read of that table through another host right after it was acknowledged.
#[derive(Debug, Clone)]
pub struct Ddl {
    /// The table created.
    pub table: String,
    /// The host the CREATE was sent to.
    pub host: usize,
    /// When it was sent and answered, since the run began.
    pub invoked: Duration,
    /// See `invoked`.
    pub completed: Duration,
    /// How the CREATE ended.
    pub outcome: Outcome,
    /// After an acknowledged CREATE: the host read through, and whether the table was there (`None`: the read
    /// failed for another reason, which proves nothing).
    pub read_after: Option<(usize, Option<bool>)>,
}

/// Every operation of a run, appended by the clients as they complete.
#[derive(Debug, Clone)]
pub struct History {
    started: Instant,
    inner: Arc<Mutex<Ops>>,
}

/// The operations recorded, by kind.
#[derive(Debug, Default, Clone)]
pub struct Ops {
    /// Writes, in completion order.
    pub writes: Vec<Write>,
    /// Reads, in completion order.
    pub reads: Vec<Read>,
    /// CREATE TABLEs, in completion order.
    pub ddl: Vec<Ddl>,
}

impl History {
    /// A history whose times count from now.
    pub fn new() -> Self {
        Self { started: Instant::now(), inner: Arc::default() }
    }

    /// The time since the run began.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records a write.
    pub fn write(&self, w: Write) {
        self.inner.lock().expect("history lock").writes.push(w);
    }

    /// Records a read.
    pub fn read(&self, r: Read) {
        self.inner.lock().expect("history lock").reads.push(r);
    }

    /// Records a CREATE TABLE.
    pub fn ddl(&self, d: Ddl) {
        self.inner.lock().expect("history lock").ddl.push(d);
    }

    /// A copy of what was recorded so far.
    pub fn ops(&self) -> Ops {
        self.inner.lock().expect("history lock").clone()
    }
}

impl Ops {
    /// The history as text, one operation a line in invocation order: `invoked completed kind client host what
    /// outcome` (seconds since the run began), for studying a run that failed.
    pub fn lines(&self) -> String {
        use std::fmt::Write as _;
        let outcome = |o: &Outcome| match o {
            Outcome::Ok => "ok".to_string(),
            Outcome::Failed(e) => format!("refused {e}"),
            Outcome::Unknown(e) => format!("unknown {e}"),
        };
        let mut lines: Vec<(Duration, String)> = Vec::new();
        for w in &self.writes {
            let last = w.first_seq + w.rows.saturating_sub(1);
            let what = format!("{:?} seq {}..={last} ({} rows)", w.via, w.first_seq, w.rows);
            let line = format!("writer {} host {} {what} {}", w.writer, w.host, outcome(&w.outcome));
            lines.push((w.invoked, format!("{:.3} {:.3} {line}", w.invoked.as_secs_f64(), w.completed.as_secs_f64())));
        }
        for r in &self.reads {
            let result = match &r.result {
                Ok(n) => format!("count {n}"),
                Err(e) => format!("failed {e}"),
            };
            let line = format!("reader {} host {} {result}", r.reader, r.host);
            lines.push((r.invoked, format!("{:.3} {:.3} {line}", r.invoked.as_secs_f64(), r.completed.as_secs_f64())));
        }
        for d in &self.ddl {
            let read = match d.read_after {
                Some((host, Some(found))) => {
                    format!("; read through host {host}: {}", if found { "found" } else { "NOT found" })
                }
                Some((host, None)) => format!("; read through host {host} failed"),
                None => String::new(),
            };
            let line = format!("ddl host {} CREATE {} {}{read}", d.host, d.table, outcome(&d.outcome));
            lines.push((d.invoked, format!("{:.3} {:.3} {line}", d.invoked.as_secs_f64(), d.completed.as_secs_f64())));
        }
        lines.sort_by_key(|l| l.0);
        let mut out = String::new();
        for (_, l) in lines {
            let _ = writeln!(out, "{l}");
        }
        out
    }
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}
