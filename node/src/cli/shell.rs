//! `quiver sql`: run SQL against an embedded database or a remote server, one-shot (`-c`) or interactively.
//!
//! Statements end with `;` in the interactive shell; a line may hold several. Remote mode speaks Arrow Flight SQL:
//! each statement is sent as a query and its result stream printed as it arrives.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tonic::transport::Channel;

use super::{render_batches, render_output};
use crate::engine::Engine;
use crate::error::{Error, Result};

/// Where the shell sends SQL.
pub enum Target {
    /// An engine in this process.
    Embedded(Arc<Engine>),
    /// A server, over Flight SQL.
    Remote(Box<FlightSqlServiceClient<Channel>>),
}

impl Target {
    /// Connects to a Flight SQL endpoint such as `http://127.0.0.1:50051` (a bare `host:port` means `http://`).
    ///
    /// # Errors
    ///
    /// Fails when the address is malformed or nothing answers there.
    pub async fn connect(url: &str) -> Result<Self> {
        let url = if url.contains("://") { url.to_string() } else { format!("http://{url}") };
        let endpoint =
            Channel::from_shared(url.clone()).map_err(|e| Error::Config { detail: format!("--connect {url}: {e}") })?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Error::Io { operation: format!("connect to {url}"), source: std::io::Error::other(e) })?;
        Ok(Target::Remote(Box::new(FlightSqlServiceClient::new(channel))))
    }

    /// Runs `sql` (one or more statements) and returns what the shell prints.
    ///
    /// # Errors
    ///
    /// The first failing statement's error.
    pub async fn run(&mut self, sql: &str) -> Result<String> {
        match self {
            Target::Embedded(engine) => {
                let mut out = Vec::new();
                for o in engine.execute(sql).await? {
                    out.push(render_output(o).await?);
                }
                Ok(out.join("\n"))
            }
            Target::Remote(client) => {
                let remote = |e: arrow_flight::error::FlightError| Error::Execution { message: format!("server: {e}") };
                let info = client.execute(sql.to_string(), None).await.map_err(remote)?;
                let mut batches: Vec<RecordBatch> = Vec::new();
                for endpoint in info.endpoint {
                    let Some(ticket) = endpoint.ticket else { continue };
                    let stream = client.do_get(ticket).await.map_err(remote)?;
                    let mut got: Vec<RecordBatch> =
                        stream.try_collect().await.map_err(|e| Error::Execution { message: format!("server: {e}") })?;
                    batches.append(&mut got);
                }
                render_batches(&batches)
            }
        }
    }
}

/// Runs the interactive shell until end of input or `\q`.
///
/// # Errors
///
/// Fails only when the terminal fails; statement errors are printed and the shell goes on.
pub async fn interactive(mut target: Target) -> Result<()> {
    let mut editor =
        rustyline::DefaultEditor::new().map_err(|e| Error::io("start the line editor", std::io::Error::other(e)))?;
    println!("quiver {} — end statements with ';', \\q to quit", env!("CARGO_PKG_VERSION"));
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() { "quiver> " } else { "   ...> " };
        let line = match editor.readline(prompt) {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(Error::io("read a line", std::io::Error::other(e))),
        };
        let trimmed = line.trim();
        if buffer.is_empty() && (trimmed == "\\q" || trimmed == "quit" || trimmed == "exit") {
            break;
        }
        if trimmed.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(trimmed);
        buffer.push_str(&line);
        buffer.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let sql = std::mem::take(&mut buffer);
        let started = std::time::Instant::now();
        match target.run(&sql).await {
            Ok(text) => println!("{text}\nTime: {:.3} ms", started.elapsed().as_secs_f64() * 1e3),
            Err(e) => eprintln!("ERROR: {}", e.report()),
        }
    }
    Ok(())
}
