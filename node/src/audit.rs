//! The audit log: who logged in or failed to (and from where), who changed the catalog or the principals, which
//! requests were refused for want of a privilege or a valid credential.
//!
//! Every entry goes three ways:
//! - the `quiver::audit` target of the node's log (stderr, the journal);
//! - the last [`RECENT_KEPT`] entries in memory, which `system.audit` shows;
//! - in a server, a file of JSON lines (`[audit]`; `audit.log` in the data directory by default), rotated by size and
//!   written by a thread of its own (`file`), so no request waits for the disk.
//!
//! An entry names the statement (`CREATE TABLE`, `GRANT`), never its text: the text of `CREATE USER … PASSWORD` holds
//! a password.

mod file;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

pub use file::AuditFileOptions;

use crate::error::Result;

/// Entries `system.audit` keeps, newest last.
pub const RECENT_KEPT: usize = 1_000;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    /// A login with a password (PostgreSQL wire, a Flight SQL handshake, HTTP basic credentials).
    Login,
    /// A bearer token presented to Flight SQL or HTTP.
    Token,
    /// A change to the catalog (CREATE, ALTER, DROP of tables, views, schemas).
    Ddl,
    /// A change to the principals (CREATE/ALTER/DROP USER or ROLE, GRANT, REVOKE).
    Dcl,
    /// A statement or call refused for want of a privilege.
    Denied,
    /// A connection to the internal endpoint without a certificate of the cluster CA.
    PeerRefused,
    /// A node that asked to join the cluster without its join secret.
    JoinRefused,
    /// A server started without authentication or TLS on an address other hosts reach (`--insecure`).
    Insecure,
}

impl AuditEvent {
    /// The event's name in the log, the file and `system.audit`.
    pub fn name(self) -> &'static str {
        match self {
            AuditEvent::Login => "login",
            AuditEvent::Token => "token",
            AuditEvent::Ddl => "ddl",
            AuditEvent::Dcl => "dcl",
            AuditEvent::Denied => "denied",
            AuditEvent::PeerRefused => "peer_refused",
            AuditEvent::JoinRefused => "join_refused",
            AuditEvent::Insecure => "insecure",
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It was allowed and done.
    Ok,
    /// It was tried and failed (a wrong password; a DDL statement that failed).
    Failed,
    /// It was refused before anything was tried (a missing privilege, a locked user name, a bad certificate).
    Refused,
}

impl Outcome {
    /// The outcome's name in the log, the file and `system.audit`.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
        }
    }
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Numbers the entries of this node since it started, from 1.
    pub id: u64,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// What happened.
    pub event: AuditEvent,
    /// How it ended.
    pub outcome: Outcome,
    /// The user it was for, as given (also an unknown name, for a failed login).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The client's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The endpoint: `postgres`, `flight`, `http`, `internal`, or `sql` for a statement of an embedded database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    /// The statement's name (`CREATE TABLE`), or why it was refused or failed.
    pub detail: String,
}

impl AuditEntry {
    /// An entry of `event` that ended with `outcome`; [`AuditLog::record`] numbers and dates it.
    pub fn new(event: AuditEvent, outcome: Outcome, detail: impl Into<String>) -> Self {
        AuditEntry { id: 0, time_ms: 0, event, outcome, user: None, peer: None, protocol: None, detail: detail.into() }
    }

    /// For `user`.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// From `peer` (left out when empty: a call whose address the transport did not give).
    pub fn peer(mut self, peer: impl ToString) -> Self {
        let peer = peer.to_string();
        self.peer = (!peer.is_empty()).then_some(peer);
        self
    }

    /// On `protocol`.
    pub fn protocol(mut self, protocol: &'static str) -> Self {
        self.protocol = Some(protocol);
        self
    }
}

/// The audit log of one node (see the module's documentation).
#[derive(Debug)]
pub struct AuditLog {
    recent: Mutex<(u64, VecDeque<AuditEntry>)>,
    file: Option<file::AuditFile>,
}

impl AuditLog {
    /// A log kept in memory and in the node's log only (an embedded database, the simulation).
    pub fn in_memory() -> Self {
        AuditLog { recent: Mutex::new((0, VecDeque::new())), file: None }
    }

    /// A log that also appends to the file `options` names, opening it now.
    ///
    /// # Errors
    ///
    /// [`crate::error::Error::Config`] when the file cannot be opened for appending.
    pub fn with_file(options: &AuditFileOptions) -> Result<Self> {
        Ok(AuditLog { recent: Mutex::new((0, VecDeque::new())), file: Some(file::AuditFile::open(options)?) })
    }

    /// The file the log appends to, if any.
    pub fn path(&self) -> Option<&PathBuf> {
        self.file.as_ref().map(file::AuditFile::path)
    }

    /// Records `entry`: numbers and dates it, logs it, keeps it for `system.audit`, hands it to the file's writer.
    pub fn record(&self, mut entry: AuditEntry) {
        entry.time_ms = crate::clock::unix_ms();
        {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            recent.0 += 1;
            entry.id = recent.0;
            if recent.1.len() == RECENT_KEPT {
                recent.1.pop_front();
            }
            recent.1.push_back(entry.clone());
        }
        tracing::info!(
            target: "quiver::audit",
            event = entry.event.name(),
            outcome = entry.outcome.name(),
            user = entry.user.as_deref().unwrap_or(""),
            peer = entry.peer.as_deref().unwrap_or(""),
            protocol = entry.protocol.unwrap_or(""),
            detail = %entry.detail,
            "audit"
        );
        if let Some(file) = &self.file {
            file.append(&entry);
        }
    }

    /// The entries kept in memory, oldest first.
    pub fn recent(&self) -> Vec<AuditEntry> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner).1.iter().cloned().collect()
    }

    /// Entries that could not be written to the file (its disk full or gone); they are still in the node's log.
    pub fn lost(&self) -> u64 {
        self.file.as_ref().map_or(0, file::AuditFile::lost)
    }

    /// Waits until every entry recorded so far is written to the file (a test's way to read it back).
    pub async fn flushed(&self) {
        if let Some(file) = &self.file {
            file.flushed().await;
        }
    }
}

impl Default for AuditLog {
    fn default() -> Self {
        AuditLog::in_memory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recent_entries_are_numbered_and_bounded() {
        let log = AuditLog::in_memory();
        for i in 0..RECENT_KEPT + 5 {
            log.record(AuditEntry::new(AuditEvent::Login, Outcome::Failed, format!("try {i}")).user("mallory"));
        }
        let recent = log.recent();
        assert_eq!(recent.len(), RECENT_KEPT);
        assert_eq!(recent[0].id, 6, "the oldest five went");
        assert_eq!(recent.last().map(|e| e.id), Some(RECENT_KEPT as u64 + 5));
        assert_eq!(recent.last().map(|e| e.detail.as_str()), Some(format!("try {}", RECENT_KEPT + 4).as_str()));
        assert!(recent.iter().all(|e| e.user.as_deref() == Some("mallory") && e.time_ms > 0));
    }

    #[test]
    fn an_entry_serializes_as_one_json_object_without_empty_fields() {
        let entry = AuditEntry::new(AuditEvent::PeerRefused, Outcome::Refused, "no certificate").peer("");
        let json = serde_json::to_string(&entry).expect("serializes");
        assert_eq!(
            json,
            r#"{"id":0,"time_ms":0,"event":"peer_refused","outcome":"refused","detail":"no certificate"}"#
        );
    }
}
