//! Who runs a statement, and whether they may.
//!
//! Every statement runs for a [`Caller`]: [`Caller::Trusted`] in an embedded database and in a server without
//! authentication (every privilege, as before users existed), or [`Caller::User`], a role that logged in. The
//! roles, their passwords' verifiers and their privileges live in the metadata ([`quiver_meta::Principals`]), so
//! every node of a cluster checks the same grants, and a change takes effect on the next statement anywhere.
//!
//! - `dcl`: CREATE/ALTER/DROP USER and ROLE, GRANT and REVOKE, parsed here (DataFusion does not);
//! - `privileges`: which privileges a planned statement needs, checked against the caller's grants;
//! - `scram`: password verifiers and the SCRAM-SHA-256 exchange of the PostgreSQL wire;
//! - `token`: the bearer tokens Flight SQL clients get at the handshake.
//!
//! Only a superuser changes principals, the catalog (CREATE, ALTER, DROP), or reads and writes files on the server
//! (COPY to or from a file, external tables).

pub(crate) mod dcl;
pub(crate) mod privileges;
pub mod scram;
pub mod sessions;
pub mod throttle;
pub mod token;

use quiver_meta::{PrincipalCommand, Principals, ScramVerifier};

use crate::audit::{AuditEntry, AuditEvent, Outcome};
use crate::error::{Error, Result};

/// For whom a statement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Every privilege: an embedded database, or a server without authentication.
    Trusted,
    /// The role of this name, which logged in; its privileges are looked up for every statement.
    User(String),
}

impl Caller {
    /// The name the audit log and `current_user` show.
    pub fn name(&self) -> &str {
        match self {
            Caller::Trusted => "quiver",
            Caller::User(name) => name,
        }
    }

    /// Whether the caller holds every privilege.
    pub(crate) fn is_superuser(&self, principals: &Principals) -> bool {
        match self {
            Caller::Trusted => true,
            Caller::User(name) => principals.is_superuser(name),
        }
    }

    /// Refuses a caller that is not a superuser; `what` says what it tried ("create a table").
    ///
    /// # Errors
    ///
    /// [`Error::PermissionDenied`].
    pub(crate) fn require_superuser(&self, principals: &Principals, what: &str) -> Result<()> {
        if self.is_superuser(principals) {
            return Ok(());
        }
        Err(Error::PermissionDenied { detail: format!("only a superuser may {what}") })
    }
}

/// Checks `password` for `user` against the verifier in the metadata (PBKDF2: off the async workers); returns the
/// role's id and generation, for a token.
///
/// # Errors
///
/// [`Error::Unauthenticated`] for a wrong password, an unknown user, or one that may not log in (the message does
/// not say which).
pub async fn check_login(
    engine: &crate::Engine,
    user: &str,
    password: String,
    peer: &str,
    protocol: &'static str,
) -> Result<(u64, u64)> {
    let audit = |outcome, detail: &str| {
        engine
            .audit()
            .record(AuditEntry::new(AuditEvent::Login, outcome, detail).user(user).peer(peer).protocol(protocol))
    };
    if let Some(wait) = engine.logins().locked(user) {
        audit(Outcome::Refused, "locked after repeated failed logins");
        return Err(too_many_failures(user, wait));
    }
    engine.see_acknowledged_principals().await?;
    let found = engine.with_principals(|p| {
        p.role(user).filter(|r| r.login).and_then(|r| r.verifier.clone().map(|v| (v, r.id, r.generation)))
    });
    let failed = || Error::Unauthenticated { detail: format!("password authentication failed for user \"{user}\"") };
    // An unknown user costs the same derivation as a known one, so the time taken does not tell them apart.
    let known = found.is_some();
    let (verifier, id, generation) = found.unwrap_or_else(|| {
        let dummy = ScramVerifier {
            iterations: scram::ITERATIONS,
            salt: vec![0; 16],
            stored_key: Vec::new(),
            server_key: Vec::new(),
        };
        (dummy, 0, 0)
    });
    let ok = crate::blocking::run("checking a password", move || scram::check_password(&verifier, &password)).await?;
    if ok && known {
        engine.logins().succeeded(user);
        audit(Outcome::Ok, "password");
        Ok((id, generation))
    } else {
        engine.logins().failed(user);
        audit(Outcome::Failed, if known { "wrong password" } else { "no such user, or one that may not log in" });
        Err(failed())
    }
}

/// The refusal of a login attempt while its user name is locked after repeated failures.
pub fn too_many_failures(user: &str, wait: std::time::Duration) -> Error {
    Error::Unauthenticated {
        detail: format!(
            "too many failed logins for user \"{user}\"; try again in {} s",
            wait.as_secs_f64().ceil().max(1.0) as u64
        ),
    }
}

/// Authenticates an HTTP-style `authorization` header: `Basic` credentials or a `Bearer` token.
///
/// # Errors
///
/// [`Error::Unauthenticated`] when the header is malformed, the credentials are wrong or the token is not valid.
pub async fn check_header(engine: &crate::Engine, header: &str, peer: &str) -> Result<Caller> {
    let unauthenticated = |detail: &str| Error::Unauthenticated { detail: detail.to_string() };
    let (scheme, credentials) = header.split_once(' ').ok_or_else(|| unauthenticated("malformed authorization"))?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return check_token(engine, credentials.trim(), peer, "http").map(Caller::User);
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(unauthenticated("the authorization header takes Basic credentials or a Bearer token"));
    }
    let (user, password) = basic_credentials(credentials)?;
    check_login(engine, &user, password, peer, "http").await?;
    Ok(Caller::User(user))
}

/// Checks a bearer token; returns the name of the user it was issued to. A refused token goes to the audit log.
///
/// # Errors
///
/// [`Error::Unauthenticated`] for a forged, expired or revoked token.
pub fn check_token(engine: &crate::Engine, bearer: &str, peer: &str, protocol: &'static str) -> Result<String> {
    let now = crate::clock::unix_ms();
    engine.with_principals(|p| token::check(p, bearer, now)).map_err(|e| {
        let detail = e.to_string();
        engine
            .audit()
            .record(AuditEntry::new(AuditEvent::Token, Outcome::Refused, &detail).peer(peer).protocol(protocol));
        Error::Unauthenticated { detail }
    })
}

/// Decodes the credentials of an `authorization: Basic …` header (base64 of `user:password`).
///
/// # Errors
///
/// [`Error::Unauthenticated`] when they are not.
pub fn basic_credentials(encoded: &str) -> Result<(String, String)> {
    use base64::Engine as _;
    let unauthenticated = |detail: &str| Error::Unauthenticated { detail: detail.to_string() };
    // Padded or not: arrow-go's Flight client (under ADBC's Flight SQL driver) leaves the padding out.
    const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let decoded = LENIENT
        .decode(encoded.trim())
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
        .ok_or_else(|| unauthenticated("the basic credentials are not base64 of user:password"))?;
    let (user, password) =
        decoded.split_once(':').ok_or_else(|| unauthenticated("the basic credentials are not user:password"))?;
    Ok((user.to_string(), password.to_string()))
}

/// A fresh salt for a new verifier.
///
/// # Errors
///
/// When the random source fails.
fn salt() -> Result<Vec<u8>> {
    let mut salt = Vec::with_capacity(16);
    salt.extend_from_slice(&crate::random_u64()?.to_be_bytes());
    salt.extend_from_slice(&crate::random_u64()?.to_be_bytes());
    Ok(salt)
}

/// Derives a new verifier of `password` (PBKDF2: off the async workers).
///
/// # Errors
///
/// When the random source fails or the blocking pool is gone.
pub(crate) async fn new_verifier(password: String) -> Result<ScramVerifier> {
    let salt = salt()?;
    crate::blocking::run("deriving a password verifier", move || scram::verifier(&password, salt, scram::ITERATIONS))
        .await
}

#[cfg_attr(madsim, allow(dead_code))]
/// A fresh token key: 32 random bytes.
///
/// # Errors
///
/// When the random source fails.
pub(crate) fn new_token_key() -> Result<quiver_meta::TokenKey> {
    let mut key = Vec::with_capacity(32);
    for _ in 0..4 {
        key.extend_from_slice(&crate::random_u64()?.to_be_bytes());
    }
    Ok(quiver_meta::TokenKey(key))
}

/// Turns a parsed DCL statement into the metadata command that applies it (whole, or not at all).
///
/// # Errors
///
/// When a verifier cannot be derived.
pub(crate) async fn command_of(statement: dcl::Dcl) -> Result<PrincipalCommand> {
    use dcl::Dcl;
    Ok(match statement {
        Dcl::CreateRole { name, login, superuser, password, if_not_exists } => {
            let verifier = match password {
                Some(p) => Some(new_verifier(p).await?),
                None => None,
            };
            PrincipalCommand::CreateRole { name, login, superuser, verifier, if_not_exists }
        }
        Dcl::AlterRole { name, password, superuser, login } => {
            let verifier = match password {
                Some(Some(p)) => Some(Some(new_verifier(p).await?)),
                Some(None) => Some(None),
                None => None,
            };
            PrincipalCommand::AlterRole { name, verifier, superuser, login }
        }
        Dcl::DropRoles { names, if_exists } => PrincipalCommand::All(
            names.into_iter().map(|name| PrincipalCommand::DropRole { name, if_exists }).collect(),
        ),
        Dcl::GrantRoles { roles, members, grant } => {
            let mut all = Vec::new();
            for role in &roles {
                for member in &members {
                    let (role, member) = (role.clone(), member.clone());
                    all.push(if grant {
                        PrincipalCommand::GrantRole { role, member }
                    } else {
                        PrincipalCommand::RevokeRole { role, member }
                    });
                }
            }
            PrincipalCommand::All(all)
        }
        Dcl::Privileges { privileges, objects, grantees, grant } => {
            let privileges: std::collections::BTreeSet<_> = privileges.into_iter().collect();
            let mut all = Vec::new();
            for object in &objects {
                for grantee in &grantees {
                    let (privileges, object, grantee) = (privileges.clone(), object.clone(), grantee.clone());
                    all.push(if grant {
                        PrincipalCommand::Grant { privileges, object, grantee }
                    } else {
                        PrincipalCommand::Revoke { privileges, object, grantee }
                    });
                }
            }
            PrincipalCommand::All(all)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_decode_with_or_without_padding() {
        let pair = |user: &str, password: &str| Some((user.to_string(), password.to_string()));
        // "admin:wrong", padded (curl, Prometheus, pyarrow) and unpadded (arrow-go, under ADBC).
        assert_eq!(basic_credentials("YWRtaW46d3Jvbmc=").ok(), pair("admin", "wrong"));
        assert_eq!(basic_credentials("YWRtaW46d3Jvbmc").ok(), pair("admin", "wrong"));
        assert_eq!(basic_credentials(" YWxpY2U6YTpi ").ok(), pair("alice", "a:b"), "the password may hold a colon");
        for bad in ["not base64!", "bm9jb2xvbg==", "//79"] {
            let Err(e) = basic_credentials(bad) else { panic!("{bad} accepted") };
            assert!(matches!(e, Error::Unauthenticated { .. }), "{e}");
        }
    }
}
