//! Metrics of a node, rendered in the Prometheus text format at `/metrics`.
//!
//! [`Metrics`] is one struct of plain atomic counters and histograms, owned by the engine and passed to whoever
//! updates it (no global registry, so two engines in one process, as in tests, never share counts). Names follow
//! Prometheus conventions: `quiver_` prefix, base units (seconds, bytes), `_total` for counters.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Returns the count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Returns the value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the latency histogram buckets.
const LATENCY_BUCKETS_S: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS_S.iter().enumerate() {
            if s <= *bound {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Returns the number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in LATENCY_BUCKETS_S.iter().enumerate() {
            let n = self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// The frontends that count requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frontend {
    /// Arrow Flight SQL.
    FlightSql,
    /// The PostgreSQL wire protocol.
    Postgres,
    /// The embedded API and the CLI.
    Embedded,
}

impl Frontend {
    const ALL: [Frontend; 3] = [Frontend::FlightSql, Frontend::Postgres, Frontend::Embedded];

    fn label(self) -> &'static str {
        match self {
            Frontend::FlightSql => "flight_sql",
            Frontend::Postgres => "postgres",
            Frontend::Embedded => "embedded",
        }
    }

    fn index(self) -> usize {
        match self {
            Frontend::FlightSql => 0,
            Frontend::Postgres => 1,
            Frontend::Embedded => 2,
        }
    }
}

/// Request counters of one frontend.
#[derive(Debug, Default)]
pub struct FrontendMetrics {
    /// Requests received.
    pub requests: Counter,
    /// Requests that ended in an error.
    pub errors: Counter,
    /// Time from request to the end of its response.
    pub latency: Histogram,
}

/// Every metric of a node.
#[derive(Debug, Default)]
pub struct Metrics {
    frontends: [FrontendMetrics; 3],
    /// Rows committed to native tables.
    pub rows_ingested: Counter,
    /// Rows moved from the hot store to the cold tier.
    pub rows_tiered: Counter,
    /// Cold files merged into larger ones by compaction.
    pub cold_files_compacted: Counter,
    /// Requests to the cold tier's object store and their bytes.
    pub cold_io: std::sync::Arc<crate::cold::metered::IoCounters>,
    /// The cold tier's read cache.
    pub cold_cache: std::sync::Arc<crate::cold::cache::CacheCounters>,
    /// Bytes written to the hot store (keys and values).
    pub hot_bytes_written: Counter,
    /// Bytes of chunk data read from the hot store.
    pub hot_bytes_read: Counter,
    /// Synced writes of the group committer, each acknowledging every statement of its group.
    pub commit_groups: Counter,
    /// Statements acknowledged through the group committer.
    pub commit_group_statements: Counter,
    /// SQL statements executed.
    pub statements: Counter,
    /// Chunk columns a scan found decoded in the column cache.
    pub column_cache_hits: Counter,
    /// Chunk columns a scan had to read and decode.
    pub column_cache_misses: Counter,
    /// Columns evicted from the column cache to make room.
    pub column_cache_evictions: Counter,
    /// Bytes of decoded columns held by the column cache.
    pub column_cache_bytes: Gauge,
    /// Time to replicate and apply a metadata proposal (DDL) through Raft.
    pub meta_proposal_latency: Histogram,
    /// Metadata proposals that failed (no leader, timeout).
    pub meta_proposal_errors: Counter,
    /// Times this node saw the metadata leader change.
    pub meta_leader_changes: Counter,
    /// Changes of shards this node leads, made durable on every in-sync copy and committed.
    pub shard_changes_replicated: Counter,
    /// Time for a shard's change to be durable on every in-sync backup.
    pub shard_replication_latency: Histogram,
    /// Backups this node took out of a shard's in-sync set because a change did not reach them.
    pub shard_in_sync_removals: Counter,
    /// Shard writes whose outcome a failure left unknown.
    pub shard_outcome_unknown: Counter,
    /// Metadata changes of a shard (a copy's admission, a cold-file commit) proposed again because the outcome of the
    /// proposal before was unknown; the shard's lock is held until one is answered.
    pub shard_settle_retries: Counter,
    /// Statements spanning shards this node coordinated, by outcome.
    pub transactions_committed: Counter,
    pub transactions_aborted: Counter,
    /// Parts of statements spanning shards this node settled in the shards it leads.
    pub transaction_parts_settled: Counter,
    /// Replicas this node caught up and admitted to a shard's in-sync set (new copies, and copies back from a failure).
    pub shard_catch_ups: Counter,
    /// Bytes of chunk data this node sent to catch replicas up.
    pub shard_catch_up_bytes: Counter,
    /// Catch-ups running from this node.
    pub shard_catch_ups_running: Gauge,
    /// Bytes of chunk data the catch-ups running from this node have still to send.
    pub shard_catch_up_bytes_left: Gauge,
    /// Shards whose rows this node deleted because they left it (drained, or made again elsewhere).
    pub shard_copies_deleted: Counter,
}

/// The metadata replica's state at render time, read from Raft's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftGauges {
    /// The current term.
    pub term: u64,
    /// The leader's id (0: none known).
    pub leader: u64,
    /// Whether this node leads.
    pub is_leader: bool,
    /// The last log index.
    pub last_log_index: u64,
    /// The last applied (committed and applied) index.
    pub applied_index: u64,
    /// The last index in the snapshot.
    pub snapshot_index: u64,
    /// Voters and learners of the metadata group.
    pub voters: u64,
    /// Learners of the metadata group.
    pub learners: u64,
    /// The metadata version.
    pub metadata_version: u64,
    /// Snapshots built and installed, the last one's bytes and build time.
    pub snapshot: quiver_meta::raft::SnapshotStats,
    /// Shards whose primary the metadata group replaced because its node went down or was lost, cluster-wide.
    pub shard_failovers: u64,
    /// How far the metadata leader's wall clock is ahead of this node's, in milliseconds (`None`: not measured yet).
    pub clock_skew_ms: Option<i64>,
}

impl Metrics {
    /// Returns the counters of one frontend.
    pub fn frontend(&self, f: Frontend) -> &FrontendMetrics {
        &self.frontends[f.index()]
    }

    /// Records one metadata proposal.
    pub fn observe_meta_proposal(&self, took: Duration, ok: bool) {
        self.meta_proposal_latency.observe(took);
        if !ok {
            self.meta_proposal_errors.inc();
        }
    }

    /// Renders every metric in the Prometheus text format; `hot_store_bytes` is the store's current size.
    pub fn render(&self, hot_store_bytes: u64, tables: usize, raft: &RaftGauges) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let _ = writeln!(out, "# HELP quiver_requests_total Requests received, by frontend.");
        let _ = writeln!(out, "# TYPE quiver_requests_total counter");
        for f in Frontend::ALL {
            let _ = writeln!(
                out,
                "quiver_requests_total{{frontend=\"{}\"}} {}",
                f.label(),
                self.frontend(f).requests.get()
            );
        }
        let _ = writeln!(out, "# HELP quiver_request_errors_total Requests that ended in an error, by frontend.");
        let _ = writeln!(out, "# TYPE quiver_request_errors_total counter");
        for f in Frontend::ALL {
            let _ = writeln!(
                out,
                "quiver_request_errors_total{{frontend=\"{}\"}} {}",
                f.label(),
                self.frontend(f).errors.get()
            );
        }
        let _ = writeln!(out, "# HELP quiver_request_duration_seconds Request latency, by frontend.");
        let _ = writeln!(out, "# TYPE quiver_request_duration_seconds histogram");
        for f in Frontend::ALL {
            self.frontend(f).latency.render(
                &mut out,
                "quiver_request_duration_seconds",
                &format!("frontend=\"{}\"", f.label()),
            );
        }
        counter(&mut out, "quiver_rows_ingested_total", "Rows committed to native tables.", self.rows_ingested.get());
        counter(&mut out, "quiver_rows_tiered_total", "Rows moved to the cold tier.", self.rows_tiered.get());
        counter(
            &mut out,
            "quiver_cold_files_compacted_total",
            "Cold files merged into larger ones by compaction.",
            self.cold_files_compacted.get(),
        );
        let io = self.cold_io.totals();
        let _ = writeln!(out, "# HELP quiver_cold_requests_total Requests to the cold tier's object store, by kind.");
        let _ = writeln!(out, "# TYPE quiver_cold_requests_total counter");
        for (kind, n) in [
            ("get", io.gets),
            ("head", io.heads),
            ("put", io.puts),
            ("delete", io.deletes),
            ("list", io.lists),
            ("abort", io.aborts),
        ] {
            let _ = writeln!(out, "quiver_cold_requests_total{{kind=\"{kind}\"}} {n}");
        }
        counter(
            &mut out,
            "quiver_cold_read_bytes_total",
            "Bytes read from the cold tier's object store.",
            io.get_bytes,
        );
        counter(
            &mut out,
            "quiver_cold_written_bytes_total",
            "Bytes written to the cold tier's object store.",
            io.put_bytes,
        );
        let cache = &self.cold_cache;
        for (name, help, value) in [
            ("quiver_cold_cache_hits_total", "Cold-file blocks scans found in the read cache.", &cache.hits),
            ("quiver_cold_cache_misses_total", "Cold-file blocks scans fetched from the store.", &cache.misses),
            (
                "quiver_cold_cache_evictions_total",
                "Blocks evicted from the read cache's memory tier.",
                &cache.evictions,
            ),
            ("quiver_cold_cache_filled_bytes_total", "Bytes reads put into the read cache.", &cache.filled_bytes),
            (
                "quiver_cold_cache_written_bytes_total",
                "Bytes of uploads written through to the read cache.",
                &cache.written_bytes,
            ),
        ] {
            counter(&mut out, name, help, value.get());
        }
        counter(&mut out, "quiver_statements_total", "SQL statements executed.", self.statements.get());
        counter(
            &mut out,
            "quiver_hot_store_written_bytes_total",
            "Bytes written to the hot store.",
            self.hot_bytes_written.get(),
        );
        counter(
            &mut out,
            "quiver_commit_groups_total",
            "Writes of the group committer (each one synced write for every statement of its group).",
            self.commit_groups.get(),
        );
        counter(
            &mut out,
            "quiver_commit_group_statements_total",
            "Statements acknowledged through the group committer.",
            self.commit_group_statements.get(),
        );
        counter(
            &mut out,
            "quiver_hot_store_read_bytes_total",
            "Bytes of chunk data read from the hot store.",
            self.hot_bytes_read.get(),
        );
        counter(
            &mut out,
            "quiver_column_cache_hits_total",
            "Chunk columns scans found decoded in the column cache.",
            self.column_cache_hits.get(),
        );
        counter(
            &mut out,
            "quiver_column_cache_misses_total",
            "Chunk columns scans read from the hot store and decoded.",
            self.column_cache_misses.get(),
        );
        counter(
            &mut out,
            "quiver_column_cache_evictions_total",
            "Columns evicted from the column cache.",
            self.column_cache_evictions.get(),
        );
        gauge(
            &mut out,
            "quiver_column_cache_bytes",
            "Bytes of decoded columns in the column cache.",
            self.column_cache_bytes.get(),
        );
        gauge(&mut out, "quiver_hot_store_bytes", "Bytes the hot store occupies.", hot_store_bytes);
        gauge(&mut out, "quiver_tables", "Tables in the catalog.", tables as u64);
        let _ =
            writeln!(out, "# HELP quiver_meta_proposal_duration_seconds Metadata proposals, replicated and applied.");
        let _ = writeln!(out, "# TYPE quiver_meta_proposal_duration_seconds histogram");
        self.meta_proposal_latency.render(&mut out, "quiver_meta_proposal_duration_seconds", "");
        counter(
            &mut out,
            "quiver_meta_proposal_errors_total",
            "Metadata proposals that failed.",
            self.meta_proposal_errors.get(),
        );
        counter(
            &mut out,
            "quiver_shard_changes_replicated_total",
            "Changes of shards this node leads, durable on every in-sync copy and committed.",
            self.shard_changes_replicated.get(),
        );
        let _ = writeln!(
            out,
            "# HELP quiver_shard_replication_duration_seconds Time for a change to be durable on every in-sync backup."
        );
        let _ = writeln!(out, "# TYPE quiver_shard_replication_duration_seconds histogram");
        self.shard_replication_latency.render(&mut out, "quiver_shard_replication_duration_seconds", "");
        counter(
            &mut out,
            "quiver_shard_in_sync_removals_total",
            "Backups taken out of a shard's in-sync set because a change did not reach them.",
            self.shard_in_sync_removals.get(),
        );
        counter(
            &mut out,
            "quiver_shard_outcome_unknown_total",
            "Shard writes whose outcome a failure left unknown.",
            self.shard_outcome_unknown.get(),
        );
        counter(
            &mut out,
            "quiver_shard_settle_retries_total",
            "Metadata changes of a shard proposed again because the outcome of the proposal before was unknown.",
            self.shard_settle_retries.get(),
        );
        counter(
            &mut out,
            "quiver_transactions_committed_total",
            "Statements spanning shards this node coordinated whose commit the metadata group recorded.",
            self.transactions_committed.get(),
        );
        counter(
            &mut out,
            "quiver_transactions_aborted_total",
            "Statements spanning shards this node coordinated whose abort the metadata group recorded.",
            self.transactions_aborted.get(),
        );
        counter(
            &mut out,
            "quiver_transaction_parts_settled_total",
            "Parts of statements spanning shards settled in the shards this node leads.",
            self.transaction_parts_settled.get(),
        );
        counter(
            &mut out,
            "quiver_shard_catch_ups_total",
            "Replicas caught up by this node and admitted to a shard's in-sync set.",
            self.shard_catch_ups.get(),
        );
        counter(
            &mut out,
            "quiver_shard_catch_up_bytes_total",
            "Bytes of chunk data this node sent to catch replicas up.",
            self.shard_catch_up_bytes.get(),
        );
        gauge(
            &mut out,
            "quiver_shard_catch_ups_running",
            "Catch-ups running from this node.",
            self.shard_catch_ups_running.get(),
        );
        gauge(
            &mut out,
            "quiver_shard_catch_up_bytes_left",
            "Bytes of chunk data the catch-ups running from this node have still to send.",
            self.shard_catch_up_bytes_left.get(),
        );
        counter(
            &mut out,
            "quiver_shard_failovers_total",
            "Shards whose primary was replaced because its node went down or was lost (cluster-wide, as applied here).",
            raft.shard_failovers,
        );
        counter(
            &mut out,
            "quiver_shard_copies_deleted_total",
            "Shards whose rows this node deleted because they left it.",
            self.shard_copies_deleted.get(),
        );
        counter(
            &mut out,
            "quiver_raft_leader_changes_total",
            "Metadata leader changes seen.",
            self.meta_leader_changes.get(),
        );
        gauge(&mut out, "quiver_raft_term", "Current Raft term of the metadata group.", raft.term);
        gauge(&mut out, "quiver_raft_leader_id", "Metadata leader's node id (0: none known).", raft.leader);
        gauge(
            &mut out,
            "quiver_raft_is_leader",
            "1 when this node leads the metadata group.",
            u64::from(raft.is_leader),
        );
        gauge(&mut out, "quiver_raft_last_log_index", "Last index of the metadata log.", raft.last_log_index);
        gauge(&mut out, "quiver_raft_applied_index", "Last applied index of the metadata log.", raft.applied_index);
        gauge(&mut out, "quiver_raft_snapshot_index", "Last index in the metadata snapshot.", raft.snapshot_index);
        gauge(&mut out, "quiver_raft_voters", "Voters of the metadata group.", raft.voters);
        gauge(&mut out, "quiver_raft_learners", "Learners of the metadata group.", raft.learners);
        gauge(&mut out, "quiver_meta_version", "Applied metadata version.", raft.metadata_version);
        if let Some(ms) = raft.clock_skew_ms {
            let _ = writeln!(
                out,
                "# HELP quiver_clock_skew_seconds How far the metadata leader's wall clock is ahead of this node's \
                 (negative: behind), from the last heartbeat.\n# TYPE quiver_clock_skew_seconds gauge\n\
                 quiver_clock_skew_seconds {}",
                ms as f64 / 1000.0
            );
        }
        counter(&mut out, "quiver_raft_snapshots_built_total", "Metadata snapshots built.", raft.snapshot.built);
        counter(
            &mut out,
            "quiver_raft_snapshots_installed_total",
            "Metadata snapshots installed.",
            raft.snapshot.installed,
        );
        gauge(&mut out, "quiver_raft_snapshot_bytes", "Bytes of the last metadata snapshot.", raft.snapshot.last_bytes);
        let _ = writeln!(
            out,
            "# HELP quiver_raft_snapshot_build_seconds Time the last metadata snapshot took to build.\n# TYPE quiver_raft_snapshot_build_seconds gauge\nquiver_raft_snapshot_build_seconds {}",
            raft.snapshot.last_build_micros as f64 / 1e6
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_counts_and_histogram_buckets() {
        let m = Metrics::default();
        m.rows_ingested.add(42);
        let f = m.frontend(Frontend::Postgres);
        f.requests.inc();
        f.latency.observe(Duration::from_micros(300));
        m.shard_catch_up_bytes_left.set(512);
        let text = m.render(1000, 2, &RaftGauges { shard_failovers: 3, ..RaftGauges::default() });
        assert!(text.contains("quiver_rows_ingested_total 42"), "{text}");
        assert!(text.contains("quiver_shard_failovers_total 3"), "{text}");
        assert!(text.contains("quiver_shard_catch_up_bytes_left 512"), "{text}");
        assert!(text.contains("quiver_requests_total{frontend=\"postgres\"} 1"), "{text}");
        assert!(text.contains("quiver_request_duration_seconds_bucket{frontend=\"postgres\",le=\"0.0005\"} 1"));
        assert!(text.contains("quiver_request_duration_seconds_bucket{frontend=\"postgres\",le=\"0.00025\"} 0"));
        assert!(text.contains("quiver_hot_store_bytes 1000"));
    }
}
