//! The statements that change users, roles and privileges, in PostgreSQL's spelling:
//!
//! ```sql
//! CREATE USER name [WITH] [PASSWORD 'secret'] [SUPERUSER | NOSUPERUSER]
//! CREATE ROLE [IF NOT EXISTS] name [WITH] [LOGIN | NOLOGIN] [PASSWORD 'secret'] [SUPERUSER | NOSUPERUSER]
//! ALTER USER | ROLE name [WITH] [PASSWORD 'secret' | PASSWORD NULL] [LOGIN | NOLOGIN] [SUPERUSER | NOSUPERUSER]
//! DROP USER | ROLE [IF EXISTS] name [, …]
//! GRANT { ALL [PRIVILEGES] | SELECT | INSERT | UPDATE | DELETE [, …] }
//!     ON { [TABLE] table [, …] | ALL TABLES [IN SCHEMA public] } TO role [, …]
//! REVOKE … ON … FROM role [, …]
//! GRANT role [, …] TO role [, …]
//! REVOKE role [, …] FROM role [, …]
//! ```
//!
//! DataFusion's parser knows none of these in this form, so they are recognised by their first words and parsed here
//! from sqlparser's tokens (quoted identifiers keep their case, others are folded to lower case, as in PostgreSQL).
//! `GRANT … ON ALL TABLES` covers tables created later too (PostgreSQL's covers those that exist).

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use quiver_meta::{GrantObject, Privilege};

use crate::error::{Error, Result};

/// A parsed statement; passwords are still in the clear here, and become verifiers before they leave the node.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Dcl {
    CreateRole { name: String, login: bool, superuser: bool, password: Option<String>, if_not_exists: bool },
    AlterRole { name: String, password: Option<Option<String>>, superuser: Option<bool>, login: Option<bool> },
    DropRoles { names: Vec<String>, if_exists: bool },
    GrantRoles { roles: Vec<String>, members: Vec<String>, grant: bool },
    Privileges { privileges: Vec<Privilege>, objects: Vec<GrantObject>, grantees: Vec<String>, grant: bool },
}

impl std::fmt::Debug for Dcl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The statement's password must not reach a log.
        f.write_str(self.tag())
    }
}

impl Dcl {
    /// The PostgreSQL command tag.
    pub(crate) fn tag(&self) -> &'static str {
        match self {
            Dcl::CreateRole { login: true, .. } => "CREATE USER",
            Dcl::CreateRole { .. } => "CREATE ROLE",
            Dcl::AlterRole { .. } => "ALTER ROLE",
            Dcl::DropRoles { .. } => "DROP ROLE",
            Dcl::GrantRoles { grant: true, .. } | Dcl::Privileges { grant: true, .. } => "GRANT",
            Dcl::GrantRoles { .. } | Dcl::Privileges { .. } => "REVOKE",
        }
    }

    /// What the statement does, for the audit log: its tag and the names it touches, never a password.
    pub(crate) fn describe(&self) -> String {
        let (to, list) = (if self.tag() == "GRANT" { "TO" } else { "FROM" }, |names: &[String]| names.join(", "));
        match self {
            Dcl::CreateRole { name, superuser, .. } => {
                format!("{} {name}{}", self.tag(), if *superuser { " SUPERUSER" } else { "" })
            }
            Dcl::AlterRole { name, password, superuser, login } => {
                let mut changes = Vec::new();
                if password.is_some() {
                    changes.push("PASSWORD");
                }
                match superuser {
                    Some(true) => changes.push("SUPERUSER"),
                    Some(false) => changes.push("NOSUPERUSER"),
                    None => {}
                }
                match login {
                    Some(true) => changes.push("LOGIN"),
                    Some(false) => changes.push("NOLOGIN"),
                    None => {}
                }
                format!("ALTER ROLE {name} {}", changes.join(" ")).trim_end().to_string()
            }
            Dcl::DropRoles { names, .. } => format!("DROP ROLE {}", list(names)),
            Dcl::GrantRoles { roles, members, .. } => format!("{} {} {to} {}", self.tag(), list(roles), list(members)),
            Dcl::Privileges { privileges, objects, grantees, .. } => format!(
                "{} {} ON {} {to} {}",
                self.tag(),
                privileges.iter().map(|p| p.keyword()).collect::<Vec<_>>().join(", "),
                objects.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                list(grantees)
            ),
        }
    }
}

/// Returns the statement when `sql` is one of the forms above; `None` when it is not DCL.
///
/// # Errors
///
/// [`Error::SqlSyntax`] when it starts like one but does not follow its grammar.
pub(crate) fn parse(sql: &str) -> Result<Option<Dcl>> {
    // Every statement passes here: look at the first word before tokenizing the whole text.
    let first = after_comments(sql).split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or_default();
    if !["create", "alter", "drop", "grant", "revoke"].iter().any(|w| first.eq_ignore_ascii_case(w)) {
        return Ok(None);
    }
    let Some(mut p) = Parser::new(sql) else { return Ok(None) };
    let statement = match (p.word_at(0).as_deref(), p.word_at(1).as_deref()) {
        (Some("create"), Some("user" | "role")) => {
            let user = p.word_at(1).as_deref() == Some("user");
            p.skip(2);
            let if_not_exists = p.keywords(&["if", "not", "exists"]);
            let name = p.identifier("a role name")?;
            let mut login = user;
            let mut superuser = false;
            let mut password = None;
            p.keyword("with");
            while let Some(option) = p.option()? {
                match option {
                    RoleOption::Login(l) => login = l,
                    RoleOption::Superuser(s) => superuser = s,
                    RoleOption::Password(Some(pw)) => password = Some(pw),
                    RoleOption::Password(None) => password = None,
                }
            }
            Dcl::CreateRole { name, login, superuser, password, if_not_exists }
        }
        (Some("alter"), Some("user" | "role")) => {
            p.skip(2);
            let name = p.identifier("a role name")?;
            p.keyword("with");
            let (mut password, mut superuser, mut login) = (None, None, None);
            while let Some(option) = p.option()? {
                match option {
                    RoleOption::Login(l) => login = Some(l),
                    RoleOption::Superuser(s) => superuser = Some(s),
                    RoleOption::Password(pw) => password = Some(pw),
                }
            }
            if password.is_none() && superuser.is_none() && login.is_none() {
                return Err(p.error("PASSWORD, LOGIN, NOLOGIN, SUPERUSER or NOSUPERUSER"));
            }
            Dcl::AlterRole { name, password, superuser, login }
        }
        (Some("drop"), Some("user" | "role")) => {
            p.skip(2);
            let if_exists = p.keywords(&["if", "exists"]);
            Dcl::DropRoles { names: p.identifiers("a role name")?, if_exists }
        }
        (Some(verb @ ("grant" | "revoke")), _) => {
            let grant = verb == "grant";
            p.skip(1);
            let to = if grant { "to" } else { "from" };
            match p.privileges() {
                Some(privileges) => {
                    if !p.keyword("on") {
                        return Err(p.error("ON"));
                    }
                    let objects = if p.keywords(&["all", "tables"]) {
                        if p.keywords(&["in", "schema"]) {
                            let schema = p.identifier("a schema name")?;
                            if schema != crate::engine::SCHEMA_NAME {
                                return Err(Error::Plan {
                                    message: format!("schema \"{schema}\" does not exist; tables live in \"public\""),
                                });
                            }
                        }
                        vec![GrantObject::AllTables]
                    } else {
                        p.keyword("table");
                        p.identifiers("a table name")?.into_iter().map(GrantObject::Table).collect()
                    };
                    if !p.keyword(to) {
                        return Err(p.error(&to.to_uppercase()));
                    }
                    Dcl::Privileges { privileges, objects, grantees: p.identifiers("a role name")?, grant }
                }
                None => {
                    let roles = p.identifiers("a privilege or a role name")?;
                    if !p.keyword(to) {
                        return Err(p.error(&to.to_uppercase()));
                    }
                    Dcl::GrantRoles { roles, members: p.identifiers("a role name")?, grant }
                }
            }
        }
        _ => return Ok(None),
    };
    p.end()?;
    Ok(Some(statement))
}

enum RoleOption {
    Login(bool),
    Superuser(bool),
    Password(Option<String>),
}

/// `sql` after its leading white space and comments (`-- …` to the end of a line, `/* … */`, which nest in
/// PostgreSQL); an unclosed comment leaves nothing.
fn after_comments(sql: &str) -> &str {
    let mut rest = sql.trim_start();
    loop {
        if let Some(line) = rest.strip_prefix("--") {
            rest = line.find('\n').map_or("", |end| &line[end + 1..]).trim_start();
        } else if rest.starts_with("/*") {
            let mut depth = 0usize;
            let mut end = None;
            let bytes = rest.as_bytes();
            let mut i = 0;
            while i + 1 < bytes.len() {
                match (bytes[i], bytes[i + 1]) {
                    (b'/', b'*') => {
                        depth += 1;
                        i += 2;
                    }
                    (b'*', b'/') => {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            end = Some(i);
                            break;
                        }
                    }
                    _ => i += 1,
                }
            }
            rest = end.map_or("", |end| &rest[end..]).trim_start();
        } else {
            return rest;
        }
    }
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    /// Tokenizes `sql`; `None` when it does not tokenize (then it is not DCL, and the SQL parser reports the error).
    fn new(sql: &str) -> Option<Self> {
        let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
        let tokens = tokens.into_iter().filter(|t| !matches!(t, Token::Whitespace(_))).collect();
        Some(Self { tokens, at: 0 })
    }

    /// The unquoted word at `offset` from here, lower-cased.
    fn word_at(&self, offset: usize) -> Option<String> {
        match self.tokens.get(self.at + offset) {
            Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_lowercase()),
            _ => None,
        }
    }

    fn skip(&mut self, n: usize) {
        self.at += n;
    }

    fn keyword(&mut self, word: &str) -> bool {
        let found = self.word_at(0).as_deref() == Some(word);
        if found {
            self.at += 1;
        }
        found
    }

    fn keywords(&mut self, words: &[&str]) -> bool {
        let found = words.iter().enumerate().all(|(i, w)| self.word_at(i).as_deref() == Some(*w));
        if found {
            self.at += words.len();
        }
        found
    }

    fn identifier(&mut self, what: &str) -> Result<String> {
        match self.tokens.get(self.at) {
            Some(Token::Word(w)) => {
                self.at += 1;
                Ok(if w.quote_style.is_some() { w.value.clone() } else { w.value.to_lowercase() })
            }
            _ => Err(self.error(what)),
        }
    }

    fn identifiers(&mut self, what: &str) -> Result<Vec<String>> {
        let mut out = vec![self.identifier(what)?];
        while self.tokens.get(self.at) == Some(&Token::Comma) {
            self.at += 1;
            out.push(self.identifier(what)?);
        }
        Ok(out)
    }

    /// A privilege list, when one starts here.
    fn privileges(&mut self) -> Option<Vec<Privilege>> {
        if self.keyword("all") {
            self.keyword("privileges");
            return Some(Privilege::ALL.to_vec());
        }
        let privilege = |word: Option<String>| match word.as_deref() {
            Some("select") => Some(Privilege::Select),
            Some("insert") => Some(Privilege::Insert),
            Some("update") => Some(Privilege::Update),
            Some("delete") => Some(Privilege::Delete),
            _ => None,
        };
        let mut out = vec![privilege(self.word_at(0))?];
        self.at += 1;
        while self.tokens.get(self.at) == Some(&Token::Comma)
            && let Some(next) = privilege(self.word_at(1))
        {
            out.push(next);
            self.at += 2;
        }
        Some(out)
    }

    fn option(&mut self) -> Result<Option<RoleOption>> {
        let option = match self.word_at(0).as_deref() {
            Some("login") => RoleOption::Login(true),
            Some("nologin") => RoleOption::Login(false),
            Some("superuser") => RoleOption::Superuser(true),
            Some("nosuperuser") => RoleOption::Superuser(false),
            Some("password") => {
                self.at += 1;
                return match self.tokens.get(self.at) {
                    Some(Token::SingleQuotedString(pw)) => {
                        let pw = pw.clone();
                        self.at += 1;
                        if pw.is_empty() {
                            return Err(Error::Plan { message: "a password cannot be empty".into() });
                        }
                        Ok(Some(RoleOption::Password(Some(pw))))
                    }
                    Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("null") => {
                        self.at += 1;
                        Ok(Some(RoleOption::Password(None)))
                    }
                    _ => Err(self.error("a password in single quotes, or NULL")),
                };
            }
            _ => return Ok(None),
        };
        self.at += 1;
        Ok(Some(option))
    }

    fn end(&mut self) -> Result<()> {
        while self.tokens.get(self.at) == Some(&Token::SemiColon) {
            self.at += 1;
        }
        match self.tokens.get(self.at) {
            None | Some(Token::EOF) => Ok(()),
            Some(_) => Err(self.error("the end of the statement (one such statement per request)")),
        }
    }

    fn error(&self, expected: &str) -> Error {
        let found = match self.tokens.get(self.at) {
            None | Some(Token::EOF) => "the end of the statement".to_string(),
            // A password is never echoed back.
            Some(Token::SingleQuotedString(_)) => "a string".to_string(),
            Some(t) => format!("\"{t}\""),
        };
        Error::SqlSyntax { message: format!("expected {expected}, found {found}") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dcl(sql: &str) -> Dcl {
        parse(sql).expect("parses").expect("is DCL")
    }

    #[test]
    fn the_audit_description_names_what_changes_but_never_a_password() {
        for (sql, described) in [
            ("CREATE USER alice WITH PASSWORD 'pw-one'", "CREATE USER alice"),
            ("CREATE ROLE admins SUPERUSER", "CREATE ROLE admins SUPERUSER"),
            ("ALTER USER bob WITH PASSWORD 'pw-two' NOLOGIN", "ALTER ROLE bob PASSWORD NOLOGIN"),
            ("DROP USER IF EXISTS a, b", "DROP ROLE a, b"),
            ("GRANT SELECT, INSERT ON TABLE t, u TO readers", "GRANT SELECT, INSERT ON TABLE t, TABLE u TO readers"),
            ("REVOKE ALL ON ALL TABLES FROM bob", "REVOKE SELECT, INSERT, UPDATE, DELETE ON ALL TABLES FROM bob"),
            ("GRANT readers TO alice, bob", "GRANT readers TO alice, bob"),
            ("REVOKE readers FROM bob", "REVOKE readers FROM bob"),
        ] {
            let text = dcl(sql).describe();
            assert_eq!(text, described, "{sql}");
            assert!(!text.contains("pw-"), "{text}");
        }
    }

    #[test]
    fn parses_postgresql_spellings() {
        assert_eq!(
            dcl("CREATE USER Alice WITH PASSWORD 'it''s secret'"),
            Dcl::CreateRole {
                name: "alice".into(),
                login: true,
                superuser: false,
                password: Some("it's secret".into()),
                if_not_exists: false
            }
        );
        assert_eq!(
            dcl("create role if not exists \"Readers\""),
            Dcl::CreateRole {
                name: "Readers".into(),
                login: false,
                superuser: false,
                password: None,
                if_not_exists: true
            }
        );
        assert_eq!(
            dcl("ALTER USER bob WITH PASSWORD NULL SUPERUSER;"),
            Dcl::AlterRole { name: "bob".into(), password: Some(None), superuser: Some(true), login: None }
        );
        assert_eq!(
            dcl("DROP USER IF EXISTS a, b"),
            Dcl::DropRoles { names: vec!["a".into(), "b".into()], if_exists: true }
        );
        assert_eq!(
            dcl("GRANT SELECT, INSERT ON TABLE t, u TO readers, bob"),
            Dcl::Privileges {
                privileges: vec![Privilege::Select, Privilege::Insert],
                objects: vec![GrantObject::Table("t".into()), GrantObject::Table("u".into())],
                grantees: vec!["readers".into(), "bob".into()],
                grant: true
            }
        );
        assert_eq!(
            dcl("revoke all privileges on all tables in schema public from bob"),
            Dcl::Privileges {
                privileges: Privilege::ALL.to_vec(),
                objects: vec![GrantObject::AllTables],
                grantees: vec!["bob".into()],
                grant: false
            }
        );
        assert_eq!(
            dcl("GRANT readers TO bob"),
            Dcl::GrantRoles { roles: vec!["readers".into()], members: vec!["bob".into()], grant: true }
        );
        // Leading comments, as scripts and tools write them, do not hide a statement's kind.
        assert_eq!(
            dcl("-- give bob the readers\n  /* nested /* comment */ here */ GRANT readers TO bob"),
            Dcl::GrantRoles { roles: vec!["readers".into()], members: vec!["bob".into()], grant: true }
        );
        assert_eq!(parse("/* unclosed GRANT readers TO bob").expect("ok"), None);
        assert_eq!(parse("-- GRANT readers TO bob").expect("ok"), None);
        assert_eq!(parse("SELECT 1").expect("ok"), None);
        assert_eq!(parse("CREATE TABLE users (id INT)").expect("ok"), None);
    }

    #[test]
    fn bad_statements_are_refused_without_echoing_a_password() {
        for (sql, expected) in [
            ("CREATE USER", "expected a role name"),
            ("GRANT SELECT TO bob", "expected ON"),
            ("GRANT SELECT ON t bob", "expected TO"),
            ("ALTER USER bob", "expected PASSWORD"),
            ("CREATE USER bob PASSWORD 'x' extra", "expected the end of the statement"),
            ("CREATE USER bob PASSWORD 5", "expected a password in single quotes"),
            ("CREATE USER a; CREATE USER b", "one such statement per request"),
            ("GRANT SELECT ON ALL TABLES IN SCHEMA other TO bob", "schema \"other\" does not exist"),
        ] {
            let message = parse(sql).expect_err(sql).to_string();
            assert!(message.contains(expected), "{sql}: {message}");
        }
        let message = parse("CREATE USER bob PASSWORD 'x' 'hunter2'").expect_err("two").to_string();
        assert!(!message.contains("hunter2"), "{message}");
        assert_eq!(format!("{:?}", dcl("CREATE USER bob PASSWORD 'hunter2'")), "CREATE USER");
    }
}
