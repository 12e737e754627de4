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
    /// Bytes written to the hot store (keys and values).
    pub hot_bytes_written: Counter,
    /// Bytes of chunk data read from the hot store.
    pub hot_bytes_read: Counter,
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
}

impl Metrics {
    /// Returns the counters of one frontend.
    pub fn frontend(&self, f: Frontend) -> &FrontendMetrics {
        &self.frontends[f.index()]
    }

    /// Renders every metric in the Prometheus text format; `hot_store_bytes` is the store's current size.
    pub fn render(&self, hot_store_bytes: u64, tables: usize) -> String {
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
        counter(&mut out, "quiver_statements_total", "SQL statements executed.", self.statements.get());
        counter(
            &mut out,
            "quiver_hot_store_written_bytes_total",
            "Bytes written to the hot store.",
            self.hot_bytes_written.get(),
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
        let text = m.render(1000, 2);
        assert!(text.contains("quiver_rows_ingested_total 42"), "{text}");
        assert!(text.contains("quiver_requests_total{frontend=\"postgres\"} 1"), "{text}");
        assert!(text.contains("quiver_request_duration_seconds_bucket{frontend=\"postgres\",le=\"0.0005\"} 1"));
        assert!(text.contains("quiver_request_duration_seconds_bucket{frontend=\"postgres\",le=\"0.00025\"} 0"));
        assert!(text.contains("quiver_hot_store_bytes 1000"));
    }
}
