//! The audit log's file: one JSON object per line, appended by a thread of its own and rotated by size.
//!
//! Requests hand their entries over a bounded queue and never wait for the disk. The writer appends what is queued,
//! then flushes and syncs the file before it waits again, so an entry reaches the disk within one write and sync of
//! being recorded. When the file passes `max_size` it is renamed `<file>.1` (older ones move up to `<file>.<keep>`;
//! the oldest is removed) and a new file is started.
//!
//! If the queue is full (the disk stalls) or a write fails (the disk is full), the entry is counted as lost
//! ([`AuditFile::lost`], the `quiver_audit_entries_lost_total` metric) and logged; it is still in the node's log
//! and `system.audit`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::AuditEntry;
use crate::error::{Error, Result};

/// Entries waiting for the writer at most.
const QUEUE: usize = 16_384;

/// Where the audit file is and when it rotates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFileOptions {
    /// The file appended to.
    pub path: PathBuf,
    /// Its size at which it is rotated.
    pub max_size: u64,
    /// Rotated files kept (`<file>.1` … `<file>.<keep>`), at least 1.
    pub keep: u32,
}

/// Counters the writer and the recorders share.
#[derive(Debug, Default)]
struct Progress {
    /// Entries handed to the queue.
    queued: AtomicU64,
    /// Entries written and synced, or lost.
    done: AtomicU64,
    /// Entries lost.
    lost: AtomicU64,
}

/// The writer of an audit file.
#[derive(Debug)]
pub(super) struct AuditFile {
    path: PathBuf,
    queue: Option<SyncSender<String>>,
    progress: Arc<Progress>,
    writer: Option<JoinHandle<()>>,
}

impl AuditFile {
    /// Opens the file for appending and starts its writer.
    pub(super) fn open(options: &AuditFileOptions) -> Result<Self> {
        let file = open_append(&options.path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let (queue, entries) = std::sync::mpsc::sync_channel(QUEUE);
        let progress = Arc::new(Progress::default());
        let writer = Writer { options: options.clone(), file: Some(BufWriter::new(file)), size };
        let shared = Arc::clone(&progress);
        let writer = std::thread::Builder::new()
            .name("quiver-audit".into())
            .spawn(move || writer.run(&entries, &shared))
            .map_err(|e| Error::Config { detail: format!("audit: cannot start the audit file's writer: {e}") })?;
        Ok(AuditFile { path: options.path.clone(), queue: Some(queue), progress, writer: Some(writer) })
    }

    pub(super) fn path(&self) -> &PathBuf {
        &self.path
    }

    /// Queues `entry` for the writer; never waits.
    pub(super) fn append(&self, entry: &AuditEntry) {
        let Some(queue) = &self.queue else { return };
        let line = match serde_json::to_string(entry) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "an audit entry could not be serialized");
                return;
            }
        };
        self.progress.queued.fetch_add(1, Ordering::SeqCst);
        match queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                tracing::error!(path = %self.path.display(), "the audit file's writer is behind; an entry was not written");
                self.progress.lost.fetch_add(1, Ordering::SeqCst);
                self.progress.done.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    pub(super) fn lost(&self) -> u64 {
        self.progress.lost.load(Ordering::SeqCst)
    }

    /// Waits until every entry queued before the call is written or counted lost.
    pub(super) async fn flushed(&self) {
        let target = self.progress.queued.load(Ordering::SeqCst);
        while self.progress.done.load(Ordering::SeqCst) < target {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for AuditFile {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has written what is queued.
        drop(self.queue.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::Config { detail: format!("audit.file: cannot open {} for appending: {e}", path.display()) })
}

/// The writer thread's state.
struct Writer {
    options: AuditFileOptions,
    /// The open file (`None` after a failed rotation, until it opens again).
    file: Option<BufWriter<File>>,
    /// Bytes in the open file.
    size: u64,
}

impl Writer {
    fn run(mut self, entries: &Receiver<String>, progress: &Progress) {
        while let Ok(first) = entries.recv() {
            let mut batch = vec![first];
            batch.extend(entries.try_iter());
            let count = batch.len() as u64;
            if let Err(e) = self.write(&batch) {
                tracing::error!(path = %self.options.path.display(), error = %e, lost = count, "writing the audit file failed");
                progress.lost.fetch_add(count, Ordering::SeqCst);
                // Start over on a fresh handle next time.
                self.file = None;
            }
            progress.done.fetch_add(count, Ordering::SeqCst);
        }
    }

    /// Appends `lines`, syncs them, and rotates the file if it has grown past its size.
    fn write(&mut self, lines: &[String]) -> std::io::Result<()> {
        if self.file.is_none() {
            let file = OpenOptions::new().create(true).append(true).open(&self.options.path)?;
            self.size = file.metadata()?.len();
            self.file = Some(BufWriter::new(file));
        }
        let file = self.file.as_mut().expect("opened above");
        for line in lines {
            file.write_all(line.as_bytes())?;
            file.write_all(b"\n")?;
            self.size += line.len() as u64 + 1;
        }
        file.flush()?;
        file.get_ref().sync_data()?;
        if self.size >= self.options.max_size {
            self.rotate()?;
        }
        Ok(())
    }

    /// Moves `<file>` to `<file>.1`, each `<file>.<n>` to `<file>.<n+1>` (dropping the one past `keep`), and starts
    /// an empty file.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let path = &self.options.path;
        let numbered = |n: u32| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let keep = self.options.keep.max(1);
        match std::fs::remove_file(numbered(keep)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for n in (1..keep).rev() {
            match std::fs::rename(numbered(n), numbered(n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(path, numbered(1))?;
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The renames are durable once the directory is synced.
            File::open(dir)?.sync_all()?;
        }
        self.size = 0;
        self.file = Some(BufWriter::new(file));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AuditEvent, AuditLog, Outcome};
    use super::*;

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    #[tokio::test]
    async fn entries_are_appended_as_json_lines_and_the_file_rotates_keeping_the_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let options = AuditFileOptions { path: path.clone(), max_size: 1_000, keep: 2 };
        let log = AuditLog::with_file(&options).expect("opens");
        for i in 0..60 {
            log.record(
                AuditEntry::new(AuditEvent::Login, Outcome::Failed, format!("attempt {i:03}"))
                    .user("mallory")
                    .peer("127.0.0.1:5555")
                    .protocol("postgres"),
            );
            // Batches of one, so each rotation happens where the size says.
            log.flushed().await;
        }
        assert_eq!(log.lost(), 0);
        let numbered = |n: u32| dir.path().join(format!("audit.log.{n}"));
        assert!(!numbered(3).exists(), "only two rotated files are kept");
        let (older, old, current) = (lines(&numbered(2)), lines(&numbered(1)), lines(&path));
        assert!(!older.is_empty() && !old.is_empty() && !current.is_empty());
        for file in [numbered(2), numbered(1)] {
            let size = std::fs::metadata(&file).expect("rotated file").len();
            assert!((1_000..1_200).contains(&size), "{} has {size} bytes", file.display());
        }
        // The files hold the newest entries, in order, without gaps.
        let ids: Vec<u64> = older.iter().chain(&old).chain(&current).map(|v| v["id"].as_u64().expect("id")).collect();
        assert_eq!(ids.last(), Some(&60));
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
        let last = current.last().expect("an entry");
        assert_eq!(last["event"], "login");
        assert_eq!(last["outcome"], "failed");
        assert_eq!(last["user"], "mallory");
        assert_eq!(last["peer"], "127.0.0.1:5555");
        assert_eq!(last["protocol"], "postgres");
        assert_eq!(last["detail"], "attempt 059");
        drop(log);
        // Reopened, the log appends to the current file.
        let log = AuditLog::with_file(&options).expect("reopens");
        log.record(AuditEntry::new(AuditEvent::Insecure, Outcome::Ok, "reopened"));
        log.flushed().await;
        assert_eq!(lines(&path).len(), current.len() + 1);
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = AuditFileOptions { path: dir.path().join("no-such-dir/audit.log"), max_size: 1 << 20, keep: 1 };
        let Err(e) = AuditLog::with_file(&options) else { panic!("opened a file in a missing directory") };
        assert!(e.to_string().contains("cannot open") && e.to_string().contains("no-such-dir"), "{e}");
    }
}
