//! From query text to what runs it: splitting a simple query into statements, classifying each, and the prepared
//! statements of the extended protocol.
//!
//! [`split_statements`] cuts at top-level semicolons with sqlparser's tokenizer (so semicolons in strings, quoted
//! identifiers, dollar quotes and comments do not count) and returns the statements' own text. [`Classifier`] sorts
//! one statement into a [`Classified`]:
//!
//! - `SET`, `SHOW`, `RESET`, `DISCARD`, `DEALLOCATE` → [`Local`], answered by the gateway;
//! - `COPY t FROM STDIN` → a COPY-in; `COPY` of files stays with the engine;
//! - `BEGIN`, `END`, `ABORT` → respelled `START TRANSACTION`, `COMMIT`, `ROLLBACK`, the forms DataFusion's planner
//!   accepts, for the engine;
//! - a statement naming PostgreSQL catalog objects (`pg_catalog`, `pg_class`, `::regclass`, `current_user`, …),
//!   which is what clients' introspection queries do → rewritten by datafusion-pg-catalog's
//!   [`PostgresCompatibilityParser`] (psql's `OPERATOR(pg_catalog.~)`, `COLLATE`, oid casts, known-unplannable
//!   queries) and sent to the engine in that form;
//! - anything else → sent to the engine exactly as written. The rewrite rules are made for catalog queries, and some
//!   of them change results (a projected subquery they cannot plan becomes NULL), so user queries never see them.
//!
//! [`StatementParser`] is the extended protocol's `QueryParser`: it prepares engine statements once at `Parse` and
//! describes their parameters and columns.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::sql::sqlparser::ast::{BeginTransactionKind, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};
use datafusion_pg_catalog::pg_catalog::PG_CATALOG_TABLES;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use pgwire::api::portal::Format;
use pgwire::api::results::FieldInfo;
use pgwire::api::stmt::QueryParser;
use pgwire::api::{ClientInfo, Type};
use pgwire::error::PgWireResult;

use super::local::Local;
use super::request::Request;
use super::{params, results};
use crate::auth::Caller;
use crate::engine::copy::{CopyFrom, parse_copy_from};
use crate::engine::{Engine, PreparedStatement};
use crate::error::Error;

/// What one statement is, for the gateway.
#[derive(Debug, Clone)]
pub(super) enum Classified {
    /// Only whitespace and comments.
    Empty,
    /// Answered by the gateway.
    Local(Local),
    /// `COPY … FROM STDIN`.
    CopyIn(CopyFrom),
    /// SQL for the engine.
    Sql(String),
    /// The primary-key listing of JDBC's `DatabaseMetaData.getPrimaryKeys` (it expands `pg_index.indkey` with a
    /// set-returning function the engine does not have); answered from the engine's catalog.
    PrimaryKeys {
        /// The `n.nspname = '…'` filter, if any.
        schema: Option<String>,
        /// The `ct.relname = '…'` filter, if any.
        table: Option<String>,
    },
}

/// Words that mark a statement as a client's catalog query (see the module docs).
const CATALOG_WORDS: &[&str] = &[
    "pg_catalog",
    "information_schema",
    "regclass",
    "regtype",
    "regproc",
    "regprocedure",
    "regnamespace",
    "regoper",
    "regoperator",
    "regrole",
    "regconfig",
    "current_user",
    "session_user",
    "version",
];

/// Sorts statements into [`Classified`]; one per server, shared by its connections.
#[derive(Debug)]
pub(super) struct Classifier {
    compat: PostgresCompatibilityParser,
}

impl Classifier {
    /// Builds the classifier (this tokenizes the compatibility parser's fixed queries once).
    pub(super) fn new() -> Self {
        Self { compat: PostgresCompatibilityParser::new() }
    }

    /// Classifies one statement's text.
    pub(super) fn classify(&self, sql: &str) -> Classified {
        let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
            // Let the engine's parser report what is wrong.
            return Classified::Sql(sql.to_string());
        };
        let Some(first) = tokens.iter().find(|t| !matches!(t, Token::Whitespace(_))) else {
            return Classified::Empty;
        };
        let first = match first {
            Token::Word(w) => w.value.to_ascii_lowercase(),
            _ => String::new(),
        };
        match first.as_str() {
            "copy" => match parse_copy_from(sql) {
                Ok(Some(copy)) if copy.path.is_none() => Classified::CopyIn(copy),
                // COPY of files, COPY TO, and COPY the sqlparser grammar rejects: the engine runs or reports them.
                _ => Classified::Sql(sql.to_string()),
            },
            "set" | "show" | "reset" | "discard" | "deallocate" => {
                match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
                    Ok(statements) if statements.len() == 1 => match Local::from_statement(&statements[0]) {
                        Some(local) => Classified::Local(local),
                        None => Classified::Sql(sql.to_string()),
                    },
                    _ => Classified::Sql(sql.to_string()),
                }
            }
            // PostgreSQL's ABORT is ROLLBACK.
            "abort" => Classified::Sql("ROLLBACK".to_string()),
            "begin" | "commit" | "end" => match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
                Ok(statements) if statements.len() == 1 => {
                    Classified::Sql(transaction_sql(&statements[0]).unwrap_or_else(|| sql.to_string()))
                }
                _ => Classified::Sql(sql.to_string()),
            },
            _ if is_jdbc_primary_keys(sql) => Classified::PrimaryKeys {
                schema: quoted_filter(sql, "n.nspname"),
                table: quoted_filter(sql, "ct.relname"),
            },
            _ if touches_catalog(&tokens) => match self.compat.parse(sql) {
                Ok(mut statements) if statements.len() == 1 => Classified::Sql(statements.remove(0).to_string()),
                _ => Classified::Sql(sql.to_string()),
            },
            _ => Classified::Sql(sql.to_string()),
        }
    }
}

/// Spells PostgreSQL's transaction statements the way DataFusion's planner accepts them: `BEGIN [WORK |
/// TRANSACTION] [modes]` as `START TRANSACTION [modes]`, and `END` / `COMMIT AND CHAIN` as `COMMIT` (statements
/// autocommit, so there is no transaction to chain).
fn transaction_sql(statement: &Statement) -> Option<String> {
    match statement {
        Statement::StartTransaction {
            modes,
            begin: true,
            modifier: None,
            statements,
            has_end_keyword: false,
            exception: None,
            ..
        } if statements.is_empty() => Some(
            Statement::StartTransaction {
                modes: modes.clone(),
                begin: false,
                transaction: Some(BeginTransactionKind::Transaction),
                modifier: None,
                statements: Vec::new(),
                has_end_keyword: false,
                exception: None,
            }
            .to_string(),
        ),
        Statement::Commit { modifier: None, .. } => Some("COMMIT".to_string()),
        _ => None,
    }
}

/// Whether a statement is pgjdbc's primary-key query (`DatabaseMetaData.getPrimaryKeys`).
fn is_jdbc_primary_keys(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    lower.contains("_pg_expandarray(i.indkey)") && lower.contains("i.indisprimary")
}

/// Returns the string literal that `column = '…'` (or `E'…'`) compares to in `sql`, unescaped.
fn quoted_filter(sql: &str, column: &str) -> Option<String> {
    let pattern = format!(r"(?i){}\s*=\s*E?'((?:[^'\\]|''|\\.)*)'", regex::escape(column));
    let re = regex::Regex::new(&pattern).ok()?;
    let raw = re.captures(sql)?.get(1)?.as_str();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '\'' => {
                out.push('\'');
                chars.next_if_eq(&'\'');
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// Whether a statement names PostgreSQL catalog objects (see the module docs).
fn touches_catalog(tokens: &[Token]) -> bool {
    tokens.iter().any(|t| match t {
        Token::Word(w) => {
            let word = w.value.to_ascii_lowercase();
            CATALOG_WORDS.contains(&word.as_str()) || PG_CATALOG_TABLES.contains(&word.as_str())
        }
        _ => false,
    })
}

/// Splits query text into its statements' texts, without the separating semicolons; statements of only whitespace
/// and comments are dropped.
pub(super) fn split_statements(sql: &str) -> Vec<&str> {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location() else {
        // Unterminated string or comment: one statement, whose error the engine reports.
        return if sql.trim().is_empty() { Vec::new() } else { vec![sql] };
    };
    let lines = LineStarts::new(sql);
    let mut out = Vec::new();
    let mut start = 0;
    let mut has_content = false;
    for TokenWithSpan { token, span } in &tokens {
        match token {
            Token::SemiColon => {
                let end = lines.offset(sql, span.start);
                if has_content {
                    out.push(&sql[start..end]);
                }
                start = end + 1;
                has_content = false;
            }
            Token::Whitespace(_) => {}
            _ => has_content = true,
        }
    }
    if has_content {
        out.push(&sql[start..]);
    }
    out
}

/// Byte offsets of line starts, to turn the tokenizer's (line, column) locations into byte offsets.
struct LineStarts(Vec<usize>);

impl LineStarts {
    fn new(sql: &str) -> Self {
        Self(std::iter::once(0).chain(sql.match_indices('\n').map(|(i, _)| i + 1)).collect())
    }

    /// Returns the byte offset of `location` (1-based line; 1-based column counted in characters).
    fn offset(&self, sql: &str, location: Location) -> usize {
        let line = usize::try_from(location.line).unwrap_or(usize::MAX).saturating_sub(1);
        let line_start = self.0.get(line).copied().unwrap_or(sql.len());
        let column = usize::try_from(location.column).unwrap_or(usize::MAX).saturating_sub(1);
        sql[line_start..].char_indices().nth(column).map_or(sql.len(), |(i, _)| line_start + i)
    }
}

/// An engine statement prepared for the extended protocol.
#[derive(Debug)]
pub(super) struct Prepared {
    /// The engine's plan.
    pub(super) statement: PreparedStatement,
    /// The type announced for each parameter (see [`params::announced_types`]).
    pub(super) parameter_types: Vec<Type>,
}

/// A statement of the extended protocol, parsed once at `Parse`.
#[derive(Debug, Clone)]
pub(super) enum PgStatement {
    /// Planned by the engine.
    Prepared(Arc<Prepared>),
    /// Answered by the gateway.
    Local(Arc<Local>),
    /// `COPY … FROM STDIN`.
    CopyIn(Arc<CopyFrom>),
}

/// The extended protocol's parser: classifies and prepares statements.
#[derive(Debug)]
pub(super) struct StatementParser {
    engine: Arc<Engine>,
    classifier: Arc<Classifier>,
}

impl StatementParser {
    /// Builds a parser preparing statements on `engine`.
    pub(super) fn new(engine: Arc<Engine>, classifier: Arc<Classifier>) -> Self {
        Self { engine, classifier }
    }
}

impl StatementParser {
    /// Prepares SQL for the engine.
    async fn prepare(&self, caller: &Caller, sql: &str) -> PgWireResult<PgStatement> {
        match self.engine.prepare_as(caller, sql).await {
            Ok(statement) => {
                let parameter_types = params::announced_types(sql, statement.parameter_types());
                Ok(PgStatement::Prepared(Arc::new(Prepared { statement, parameter_types })))
            }
            Err(e) => Err(Request::start(self.engine.metrics()).fail(&e)),
        }
    }
}

#[async_trait]
impl QueryParser for StatementParser {
    type Statement = PgStatement;

    async fn parse_sql<C>(&self, client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<PgStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let caller = super::startup::caller_of(client);
        let statements = split_statements(sql);
        let statement = match statements.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            _ => {
                let e =
                    Error::SqlSyntax { message: "cannot insert multiple commands into a prepared statement".into() };
                return Err(Request::start(self.engine.metrics()).fail(&e));
            }
        };
        Ok(Some(match self.classifier.classify(statement) {
            Classified::Empty => return Ok(None),
            Classified::Local(local) => PgStatement::Local(Arc::new(local)),
            Classified::CopyIn(copy) => {
                // Checked here too (not only at Execute), so that a driver learns of a missing table from `Parse`
                // and never enters the COPY sub-protocol for it.
                if let Err(e) = super::copy::target_schema(&self.engine, &copy.table).await {
                    return Err(Request::start(self.engine.metrics()).fail(&e));
                }
                PgStatement::CopyIn(Arc::new(copy))
            }
            Classified::Sql(sql) => self.prepare(&caller, &sql).await?,
            Classified::PrimaryKeys { schema, table } => {
                let sql = super::catalog::primary_keys_sql(&self.engine, schema.as_deref(), table.as_deref()).await;
                self.prepare(&caller, &sql).await?
            }
        }))
    }

    fn get_parameter_types(&self, statement: &PgStatement) -> PgWireResult<Vec<Type>> {
        Ok(match statement {
            PgStatement::Prepared(p) => p.parameter_types.clone(),
            PgStatement::Local(_) | PgStatement::CopyIn(_) => Vec::new(),
        })
    }

    fn get_result_schema(&self, statement: &PgStatement, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        let format = format.unwrap_or(&Format::UnifiedText);
        match statement {
            PgStatement::Prepared(p) => results::fields(&p.statement.result_schema(), format),
            PgStatement::Local(local) => Ok(local.fields(format)),
            PgStatement::CopyIn(_) => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_top_level_semicolons_only() {
        let sql = "SELECT 'a;b'; SELECT \"x;\" FROM t -- c;\n; /* ; */ SELECT $$;$$;;  ";
        assert_eq!(
            split_statements(sql),
            vec!["SELECT 'a;b'", " SELECT \"x;\" FROM t -- c;\n", " /* ; */ SELECT $$;$$"]
        );
        assert_eq!(split_statements("SELECT 'é';SELECT 2"), vec!["SELECT 'é'", "SELECT 2"]);
        assert_eq!(split_statements("  ;; -- only a comment"), Vec::<&str>::new());
        assert_eq!(split_statements("SELECT 1"), vec!["SELECT 1"]);
        assert_eq!(split_statements("SELECT 'open"), vec!["SELECT 'open"]);
        assert_eq!(
            split_statements("SELECT 1;\nSELECT 'ü';\n  SELECT 3"),
            vec!["SELECT 1", "\nSELECT 'ü'", "\n  SELECT 3"]
        );
    }

    fn sql(classified: Classified) -> String {
        match classified {
            Classified::Sql(sql) => sql,
            Classified::PrimaryKeys { schema, table } => format!("keys of {schema:?}.{table:?}"),
            other => panic!("expected SQL for the engine, got {other:?}"),
        }
    }

    #[test]
    fn recognizes_jdbc_primary_key_query_and_its_filters() {
        let c = Classifier::new();
        let sql = "SELECT result.TABLE_CAT, result.TABLE_SCHEM FROM (SELECT NULL AS TABLE_CAT, n.nspname AS \
                   TABLE_SCHEM, (information_schema._pg_expandarray(i.indkey)).n AS KEY_SEQ FROM pg_catalog.pg_class \
                   ct JOIN pg_catalog.pg_index i ON (a.attrelid = i.indrelid) WHERE true AND n.nspname = E'public' \
                   AND ct.relname = E'it''s\\\\x' AND i.indisprimary ) result";
        match c.classify(sql) {
            Classified::PrimaryKeys { schema, table } => {
                assert_eq!(schema.as_deref(), Some("public"));
                assert_eq!(table.as_deref(), Some("it's\\x"));
            }
            other => panic!("not the primary-key query: {other:?}"),
        }
        assert_eq!(quoted_filter("where ct.relname = 'a'", "n.nspname"), None);
    }

    #[test]
    fn classifies_statements() {
        let c = Classifier::new();
        assert!(matches!(c.classify("  -- nothing"), Classified::Empty));
        assert_eq!(sql(c.classify("SELECT * FROM trades")), "SELECT * FROM trades");
        assert!(matches!(c.classify("SET extra_float_digits = 3"), Classified::Local(Local::Set { .. })));
        assert!(matches!(c.classify("SHOW transaction_isolation"), Classified::Local(Local::Show { .. })));
        assert!(matches!(c.classify("COPY t FROM STDIN WITH (FORMAT csv)"), Classified::CopyIn(_)));
        assert_eq!(sql(c.classify("COPY t FROM '/tmp/x.csv'")), "COPY t FROM '/tmp/x.csv'");
        assert_eq!(sql(c.classify("abort")), "ROLLBACK");
        assert_eq!(sql(c.classify("BEGIN")), "START TRANSACTION");
        assert_eq!(sql(c.classify("begin work")), "START TRANSACTION");
        assert_eq!(
            sql(c.classify("BEGIN ISOLATION LEVEL READ COMMITTED")),
            "START TRANSACTION ISOLATION LEVEL READ COMMITTED"
        );
        assert_eq!(sql(c.classify("END")), "COMMIT");
        // A user query is never rewritten, even where a compatibility rule would apply.
        let user = "SELECT a, (SELECT max(b) FROM u WHERE u.a = t.a) FROM t";
        assert_eq!(sql(c.classify(user)), user);
        // psql's \d pattern lookup: the operator and collation are rewritten away.
        let psql = "SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relname OPERATOR(pg_catalog.~) '^(t)$' \
                    COLLATE pg_catalog.default";
        let rewritten = sql(c.classify(psql));
        assert!(!rewritten.contains("OPERATOR"), "{rewritten}");
        assert!(!rewritten.contains("COLLATE"), "{rewritten}");
    }
}
