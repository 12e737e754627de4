//! Statements the gateway answers itself: session parameters (`SET`, `RESET`, `SHOW`) and the session-management
//! statements drivers and poolers send (`DISCARD`, `DEALLOCATE`, `SET TRANSACTION …`).
//!
//! PostgreSQL clients set and read session parameters on connect (`SET extra_float_digits = 3`,
//! `SHOW transaction_isolation`, `SET DateStyle = ISO`); the engine has no such settings, so their values live in the
//! connection's metadata (lower-case names, as pgwire's [`FormatOptions`] reads them: `datestyle`,
//! `extra_float_digits`, … change how results are formatted as text). [`SETTINGS`] lists the parameters with server
//! defaults; a `SET` of an unknown name is accepted and remembered, as PostgreSQL accepts custom parameters. Changes
//! of the parameters clients track (`DateStyle`, `TimeZone`, …) are reported with `ParameterStatus`, as PostgreSQL
//! does. `SET datafusion.…`, `SHOW ALL` and `SHOW datafusion.…` are left to the engine.
//!
//! [`FormatOptions`]: pgwire::types::format::FormatOptions

use std::fmt::Debug;
use std::sync::Arc;

use datafusion::sql::sqlparser::ast::{Expr, ObjectName, Reset, ResetStatement, Set, Statement, UnaryOperator, Value};
use futures::{Sink, SinkExt, stream};
use pgwire::api::ClientInfo;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldInfo, QueryResponse, Response, Tag};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::startup::ParameterStatus;

use super::error::protocol_error;

/// The PostgreSQL version the gateway reports; clients pick their SQL dialect by it.
pub(super) const SERVER_VERSION: &str = "16.6";
/// [`SERVER_VERSION`] as `server_version_num`.
pub(super) const SERVER_VERSION_NUM: &str = "160006";

/// A session parameter the gateway knows.
#[derive(Debug)]
pub(super) struct Setting {
    /// Lower-case name.
    pub(super) name: &'static str,
    /// Value until the session sets another.
    pub(super) default: &'static str,
    /// The name a `ParameterStatus` reports it under, for parameters clients track.
    pub(super) reported_as: Option<&'static str>,
    /// Whether `SET` may change it.
    pub(super) settable: bool,
}

const fn setting(name: &'static str, default: &'static str) -> Setting {
    Setting { name, default, reported_as: None, settable: true }
}

const fn reported(name: &'static str, default: &'static str, reported_as: &'static str) -> Setting {
    Setting { name, default, reported_as: Some(reported_as), settable: true }
}

const fn fixed(name: &'static str, default: &'static str) -> Setting {
    Setting { name, default, reported_as: None, settable: false }
}

/// Session parameters with their defaults, by name.
pub(super) const SETTINGS: &[Setting] = &[
    reported("application_name", "", "application_name"),
    setting("bytea_output", "hex"),
    reported("client_encoding", "UTF8", "client_encoding"),
    setting("client_min_messages", "notice"),
    reported("datestyle", "ISO, YMD", "DateStyle"),
    // Statements see every commit that finished before they started, and autocommit.
    setting("default_transaction_isolation", "read committed"),
    setting("default_transaction_read_only", "off"),
    setting("extra_float_digits", "1"),
    fixed("integer_datetimes", "on"),
    reported("intervalstyle", "postgres", "IntervalStyle"),
    fixed("is_superuser", "on"),
    fixed("lc_collate", "C"),
    fixed("lc_ctype", "C"),
    setting("lc_messages", "C"),
    setting("lc_monetary", "C"),
    setting("lc_numeric", "C"),
    setting("lc_time", "C"),
    setting("lock_timeout", "0"),
    fixed("max_identifier_length", "63"),
    setting("search_path", "public"),
    fixed("server_encoding", "UTF8"),
    fixed("server_version", SERVER_VERSION),
    fixed("server_version_num", SERVER_VERSION_NUM),
    reported("standard_conforming_strings", "on", "standard_conforming_strings"),
    setting("statement_timeout", "0"),
    reported("timezone", "Etc/UTC", "TimeZone"),
    setting("transaction_isolation", "read committed"),
    setting("transaction_read_only", "off"),
];

/// Returns the known session parameter `name` (lower case).
pub(super) fn setting_named(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// A statement the gateway answers without the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Local {
    /// `SET name = value` (also `SET TIME ZONE`, `SET NAMES`).
    Set {
        /// Lower-case parameter name.
        name: String,
        /// The value as written, quotes removed.
        value: String,
    },
    /// `SET name TO DEFAULT` (also `SET TIME ZONE LOCAL`).
    SetDefault {
        /// Lower-case parameter name.
        name: String,
    },
    /// `RESET name`, or `RESET ALL` when `name` is `None`.
    Reset {
        /// Lower-case parameter name.
        name: Option<String>,
    },
    /// `SHOW name`.
    Show {
        /// Lower-case parameter name.
        name: String,
    },
    /// A statement accepted with no effect, answered with `tag`.
    Accept {
        /// The command tag.
        tag: String,
    },
}

impl Local {
    /// Recognizes `statement` as one the gateway answers; `None` leaves it to the engine.
    pub(super) fn from_statement(statement: &Statement) -> Option<Local> {
        match statement {
            Statement::Set(set) => Self::from_set(set),
            Statement::Reset(ResetStatement { reset }) => Some(Local::Reset {
                name: match reset {
                    Reset::ALL => None,
                    Reset::ConfigurationParameter(name) => Some(parameter_name(name)),
                },
            }),
            Statement::ShowVariable { variable } => {
                // The parser gives `SHOW TIME ZONE` and `SHOW a.b` alike as a list of identifiers.
                let words: Vec<String> = variable.iter().map(|i| i.value.to_lowercase()).collect();
                let name = match words.join(" ").as_str() {
                    "time zone" => "timezone".to_string(),
                    "transaction isolation level" => "transaction_isolation".to_string(),
                    "session authorization" => "session_authorization".to_string(),
                    _ => words.join("."),
                };
                (name != "all" && !is_engine_setting(&name)).then_some(Local::Show { name })
            }
            Statement::Discard { object_type } => Some(Local::Accept { tag: format!("DISCARD {object_type}") }),
            // Protocol-level prepared statements are closed with the Close message; SQL-level PREPARE is not
            // supported, so there is nothing to deallocate.
            Statement::Deallocate { .. } => Some(Local::Accept { tag: "DEALLOCATE".to_string() }),
            _ => None,
        }
    }

    fn from_set(set: &Set) -> Option<Local> {
        match set {
            Set::SingleAssignment { variable, values, .. } => {
                let name = parameter_name(variable);
                if is_engine_setting(&name) {
                    return None;
                }
                let value = values.iter().map(expr_text).collect::<Vec<_>>().join(", ");
                Some(if value.eq_ignore_ascii_case("default") {
                    Local::SetDefault { name }
                } else {
                    Local::Set { name, value }
                })
            }
            Set::SetTimeZone { value, .. } => {
                let value = expr_text(value);
                let name = "timezone".to_string();
                Some(if value.eq_ignore_ascii_case("default") || value.eq_ignore_ascii_case("local") {
                    Local::SetDefault { name }
                } else {
                    Local::Set { name, value }
                })
            }
            Set::SetNames { charset_name, .. } => {
                Some(Local::Set { name: "client_encoding".to_string(), value: charset_name.value.clone() })
            }
            Set::SetNamesDefault {} => Some(Local::SetDefault { name: "client_encoding".to_string() }),
            // SET TRANSACTION …, SET SESSION CHARACTERISTICS …, SET ROLE …, SET SESSION AUTHORIZATION …: every
            // statement autocommits and there are no roles yet, so these change nothing.
            _ => Some(Local::Accept { tag: "SET".to_string() }),
        }
    }

    /// Returns the columns the statement answers with (empty for all but `SHOW`).
    pub(super) fn fields(&self, format: &Format) -> Vec<FieldInfo> {
        match self {
            Local::Show { name } => {
                vec![FieldInfo::new(show_column(name).to_string(), None, None, Type::TEXT, format.format_for(0))]
            }
            Local::Set { .. } | Local::SetDefault { .. } | Local::Reset { .. } | Local::Accept { .. } => Vec::new(),
        }
    }

    /// Runs the statement against the connection's session parameters.
    ///
    /// # Errors
    ///
    /// `SET` of a fixed parameter (`server_version`, …) or of an invalid value, `SHOW` of an unknown parameter, and
    /// failures to write to the client.
    pub(super) async fn run<C>(&self, client: &mut C, format: &Format) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            Local::Set { name, value } => {
                let value = checked_value(name, value)?;
                client.metadata_mut().insert(name.clone(), value.clone());
                report(client, name, value).await?;
                Ok(Response::Execution(Tag::new("SET")))
            }
            Local::SetDefault { name } => {
                reset(client, name).await?;
                Ok(Response::Execution(Tag::new("SET")))
            }
            Local::Reset { name: Some(name) } => {
                reset(client, name).await?;
                Ok(Response::Execution(Tag::new("RESET")))
            }
            Local::Reset { name: None } => {
                for s in SETTINGS.iter().filter(|s| s.settable) {
                    if client.metadata_mut().remove(s.name).is_some() {
                        report(client, s.name, s.default.to_string()).await?;
                    }
                }
                Ok(Response::Execution(Tag::new("RESET")))
            }
            Local::Show { name } => {
                let value = match client.metadata().get(name) {
                    Some(v) => v.clone(),
                    None => match setting_named(name) {
                        Some(s) => s.default.to_string(),
                        None => {
                            return Err(protocol_error(
                                "42704",
                                format!("unrecognized configuration parameter \"{name}\""),
                            ));
                        }
                    },
                };
                let fields = Arc::new(self.fields(format));
                let mut encoder = DataRowEncoder::new(Arc::clone(&fields));
                encoder.encode_field(&Some(value.as_str()))?;
                let row = encoder.take_row();
                Ok(Response::Query(QueryResponse::new(fields, stream::iter([Ok(row)]))))
            }
            Local::Accept { tag } => Ok(Response::Execution(Tag::new(tag))),
        }
    }
}

/// Returns a session parameter to its default.
async fn reset<C>(client: &mut C, name: &str) -> PgWireResult<()>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let known = setting_named(name);
    if known.is_some_and(|s| !s.settable) {
        return Err(cannot_change(name));
    }
    client.metadata_mut().remove(name);
    if let Some(s) = known {
        report(client, name, s.default.to_string()).await?;
    }
    Ok(())
}

/// The column name `SHOW` answers with: the name PostgreSQL reports the parameter under, if any.
fn show_column(name: &str) -> &str {
    setting_named(name).and_then(|s| s.reported_as).unwrap_or(name)
}

/// Whether `name` is one of DataFusion's settings, which only the engine may answer (and refuses to change).
fn is_engine_setting(name: &str) -> bool {
    name.starts_with("datafusion.")
}

fn cannot_change(name: &str) -> PgWireError {
    protocol_error("55P02", format!("parameter \"{name}\" cannot be changed"))
}

/// Validates a `SET` value; returns it as it is stored.
fn checked_value(name: &str, value: &str) -> PgWireResult<String> {
    if let Some(s) = setting_named(name)
        && !s.settable
    {
        return Err(cannot_change(name));
    }
    match name {
        "client_encoding" => {
            let normalized = value.to_ascii_uppercase().replace(['-', '_'], "");
            if normalized == "UTF8" || normalized == "UNICODE" {
                Ok("UTF8".to_string())
            } else {
                // Results are always UTF-8; transcoding them is not implemented.
                Err(protocol_error("0A000", format!("client encoding \"{value}\" is not supported; use UTF8")))
            }
        }
        "extra_float_digits" => match value.trim().parse::<i8>() {
            Ok(v) if (-15..=3).contains(&v) => Ok(v.to_string()),
            _ => Err(protocol_error(
                "22023",
                format!("invalid value for parameter \"extra_float_digits\": \"{value}\" (allowed: -15 to 3)"),
            )),
        },
        _ => Ok(value.to_string()),
    }
}

/// Sends a `ParameterStatus` when `name` is a parameter clients track.
async fn report<C>(client: &mut C, name: &str, value: String) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    if let Some(reported_as) = setting_named(name).and_then(|s| s.reported_as) {
        client
            .feed(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(reported_as.to_string(), value)))
            .await?;
    }
    Ok(())
}

/// Returns a parameter's name: its parts joined with `.`, quotes removed, lower case.
fn parameter_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| part.as_ident().map(|i| i.value.clone()).unwrap_or_else(|| part.to_string()))
        .collect::<Vec<_>>()
        .join(".")
        .to_lowercase()
}

/// Returns the text of a `SET` value: string literals without quotes, identifiers and numbers as written.
fn expr_text(expr: &Expr) -> String {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s)
            | Value::DoubleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::NationalStringLiteral(s) => s.clone(),
            Value::Number(n, _) => n.to_string(),
            Value::Boolean(b) => if *b { "on" } else { "off" }.to_string(),
            other => other.to_string(),
        },
        Expr::Identifier(ident) => ident.value.clone(),
        Expr::UnaryOp { op: UnaryOperator::Minus, expr } => format!("-{}", expr_text(expr)),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    fn local(sql: &str) -> Option<Local> {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("parses");
        Local::from_statement(&statements[0])
    }

    fn set(name: &str, value: &str) -> Option<Local> {
        Some(Local::Set { name: name.into(), value: value.into() })
    }

    #[test]
    fn recognizes_the_set_forms_clients_send() {
        assert_eq!(local("SET extra_float_digits = 3"), set("extra_float_digits", "3"));
        assert_eq!(local("SET DateStyle = ISO"), set("datestyle", "ISO"));
        assert_eq!(local("set datestyle to 'ISO, MDY'"), set("datestyle", "ISO, MDY"));
        assert_eq!(local("SET application_name = 'psql'"), set("application_name", "psql"));
        assert_eq!(local("SET TIME ZONE 'UTC'"), set("timezone", "UTC"));
        assert_eq!(local("SET SESSION statement_timeout = 0"), set("statement_timeout", "0"));
        assert_eq!(local("SET extra_float_digits = -2"), set("extra_float_digits", "-2"));
        assert_eq!(local("SET search_path TO DEFAULT"), Some(Local::SetDefault { name: "search_path".into() }));
        assert_eq!(local("RESET ALL"), Some(Local::Reset { name: None }));
        assert_eq!(
            local("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED"),
            Some(Local::Accept { tag: "SET".into() })
        );
        assert_eq!(local("SET datafusion.execution.batch_size = 10"), None);
    }

    #[test]
    fn recognizes_show_but_leaves_engine_settings_to_the_engine() {
        assert_eq!(local("SHOW transaction_isolation"), Some(Local::Show { name: "transaction_isolation".into() }));
        assert_eq!(local("SHOW TIME ZONE"), Some(Local::Show { name: "timezone".into() }));
        assert_eq!(local("SHOW ALL"), None);
        assert_eq!(local("SHOW datafusion.execution.batch_size"), None);
        assert_eq!(local("SELECT 1"), None);
    }

    #[test]
    fn validates_values_clients_depend_on() {
        assert_eq!(checked_value("client_encoding", "utf-8").expect("utf8"), "UTF8");
        assert!(checked_value("client_encoding", "LATIN1").is_err());
        assert!(checked_value("extra_float_digits", "9").is_err());
        assert!(checked_value("server_version", "9.6").is_err());
        assert_eq!(checked_value("my.custom", "x").expect("custom"), "x");
        assert_eq!(show_column("timezone"), "TimeZone");
        assert_eq!(show_column("transaction_isolation"), "transaction_isolation");
    }
}
