//! Principals: the roles (users are roles that may log in) and the privileges granted to them, replicated with the
//! rest of the metadata.
//!
//! As in PostgreSQL, a user is a role with `login` and a password, and a role may be a member of other roles, whose
//! privileges it inherits. A superuser holds every privilege and may change principals and the catalog. Privileges
//! are granted on one table, by name, or on all tables (present and future). Dropping a table drops the grants on it;
//! dropping a role drops its grants and memberships.
//!
//! Passwords never reach the metadata: the proposer sends a [`ScramVerifier`] (RFC 5802's salted, iterated keys),
//! from which the password cannot be recovered, and which checks a SCRAM-SHA-256 exchange or a password without
//! storing it. Nor does this module compute one: it holds no cryptography, so that the state machine stays
//! deterministic and cheap.
//!
//! [`Principals::apply`] validates a [`PrincipalCommand`] in full before it changes anything, like the catalog.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::Rejection;

/// The longest role name, in bytes (PostgreSQL's identifier limit).
pub const ROLE_NAME_MAX: usize = 63;

/// A SCRAM-SHA-256 verifier of a password (RFC 5802, RFC 7677): what the server keeps instead of the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramVerifier {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// The random salt.
    pub salt: Vec<u8>,
    /// H(HMAC(SaltedPassword, "Client Key")).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramVerifier").field("iterations", &self.iterations).finish_non_exhaustive()
    }
}

/// The key that signs the cluster's bearer tokens: one per cluster, chosen at random by the first node that needs it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenKey(pub Vec<u8>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

/// A role, or a user (a role that may log in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRecord {
    /// Unique for the life of the cluster, never reused: a token issued to a dropped user does not pass for a later
    /// user of the same name.
    pub id: u64,
    /// The role's name.
    pub name: String,
    /// Whether the role may log in (a user).
    pub login: bool,
    /// Whether the role holds every privilege and may change principals and the catalog.
    pub superuser: bool,
    /// The password's verifier; a role without one cannot log in with a password.
    pub verifier: Option<ScramVerifier>,
    /// The roles this one is a member of (and inherits the privileges of).
    pub member_of: BTreeSet<String>,
    /// Raised whenever the password or the role's attributes change: tokens issued before then are no longer valid.
    pub generation: u64,
}

/// A privilege on a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Privilege {
    /// Read rows (SELECT, COPY TO, scans).
    Select,
    /// Add rows (INSERT, COPY FROM, bulk ingest).
    Insert,
    /// Change rows.
    Update,
    /// Remove rows.
    Delete,
}

impl Privilege {
    /// Every privilege, as `ALL` grants them.
    pub const ALL: [Privilege; 4] = [Privilege::Select, Privilege::Insert, Privilege::Update, Privilege::Delete];

    /// The SQL keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
        }
    }
}

impl std::fmt::Display for Privilege {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.keyword())
    }
}

/// What a privilege is granted on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GrantObject {
    /// Every table, those created later included.
    AllTables,
    /// The table of this name.
    Table(String),
}

impl std::fmt::Display for GrantObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrantObject::AllTables => f.write_str("ALL TABLES"),
            GrantObject::Table(t) => write!(f, "TABLE {t}"),
        }
    }
}

/// A change to the principals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PrincipalCommand {
    /// Creates a role (a user when `login`).
    CreateRole {
        /// The new role's name.
        name: String,
        /// Whether it may log in.
        login: bool,
        /// Whether it is a superuser.
        superuser: bool,
        /// Its password's verifier.
        verifier: Option<ScramVerifier>,
        /// `IF NOT EXISTS`: an existing role of this name is left as it is.
        if_not_exists: bool,
    },
    /// Changes a role's password or attributes; `None` leaves one as it is.
    AlterRole {
        /// The role's name.
        name: String,
        /// The new password's verifier (`Some(None)`: no password any more).
        verifier: Option<Option<ScramVerifier>>,
        /// The new superuser attribute.
        superuser: Option<bool>,
        /// The new login attribute.
        login: Option<bool>,
    },
    /// Drops a role with its grants and memberships.
    DropRole {
        /// The role's name.
        name: String,
        /// `IF EXISTS`: a missing role is no error.
        if_exists: bool,
    },
    /// Makes `member` a member of `role`.
    GrantRole {
        /// The role granted.
        role: String,
        /// The role (or user) that receives it.
        member: String,
    },
    /// Ends `member`'s membership of `role`.
    RevokeRole {
        /// The role revoked.
        role: String,
        /// The role (or user) that loses it.
        member: String,
    },
    /// Grants privileges on an object to a role.
    Grant {
        /// The privileges.
        privileges: BTreeSet<Privilege>,
        /// What on.
        object: GrantObject,
        /// To whom.
        grantee: String,
    },
    /// Revokes privileges granted on an object to a role (those not granted are ignored).
    Revoke {
        /// The privileges.
        privileges: BTreeSet<Privilege>,
        /// What on.
        object: GrantObject,
        /// From whom.
        grantee: String,
    },
    /// Applies every command in order, or, when one is refused, none.
    All(Vec<PrincipalCommand>),
    /// Sets the key that signs bearer tokens, unless one is set.
    SetTokenKey {
        /// The key.
        key: TokenKey,
    },
}

impl PrincipalCommand {
    /// The tables the command grants privileges on (each must exist).
    pub fn granted_tables(&self) -> Vec<&str> {
        match self {
            PrincipalCommand::Grant { object: GrantObject::Table(t), .. } => vec![t.as_str()],
            PrincipalCommand::All(commands) => commands.iter().flat_map(PrincipalCommand::granted_tables).collect(),
            _ => Vec::new(),
        }
    }
}

/// One grant, as `system.grants` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow<'a> {
    /// Who holds it.
    pub grantee: &'a str,
    /// What on.
    pub object: &'a GrantObject,
    /// Which privilege.
    pub privilege: Privilege,
}

/// The roles of a cluster and the privileges granted to them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Principals {
    roles: BTreeMap<String, RoleRecord>,
    /// Privileges by grantee, then object.
    grants: BTreeMap<String, BTreeMap<GrantObject, BTreeSet<Privilege>>>,
    next_role_id: u64,
    token_key: Option<TokenKey>,
}

impl Principals {
    /// Returns the role of this name.
    pub fn role(&self, name: &str) -> Option<&RoleRecord> {
        self.roles.get(name)
    }

    /// Returns every role, ordered by name.
    pub fn roles(&self) -> impl Iterator<Item = &RoleRecord> {
        self.roles.values()
    }

    /// Returns whether any role may log in (with auth on, a cluster without one lets nobody in).
    pub fn has_login(&self) -> bool {
        self.roles.values().any(|r| r.login && r.verifier.is_some())
    }

    /// Returns the key signing bearer tokens, once set.
    pub fn token_key(&self) -> Option<&TokenKey> {
        self.token_key.as_ref()
    }

    /// Returns every grant, ordered by grantee, object and privilege.
    pub fn grants(&self) -> impl Iterator<Item = GrantRow<'_>> {
        self.grants.iter().flat_map(|(grantee, objects)| {
            objects.iter().flat_map(move |(object, privileges)| {
                privileges.iter().map(move |&privilege| GrantRow { grantee, object, privilege })
            })
        })
    }

    /// Returns the roles `name` holds the privileges of: itself and every role it is a member of, directly or not.
    pub fn closure(&self, name: &str) -> BTreeSet<&str> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![name];
        while let Some(next) = todo.pop() {
            let Some(role) = self.roles.get(next) else { continue };
            if seen.insert(role.name.as_str()) {
                todo.extend(role.member_of.iter().map(String::as_str));
            }
        }
        seen
    }

    /// Returns whether role `name` is a superuser, or a member of one.
    pub fn is_superuser(&self, name: &str) -> bool {
        self.closure(name).into_iter().any(|r| self.roles.get(r).is_some_and(|r| r.superuser))
    }

    /// Returns whether role `name` holds `privilege` on `table`: granted to it or to a role it is a member of, on the
    /// table or on all tables, or as a superuser.
    pub fn allows(&self, name: &str, table: &str, privilege: Privilege) -> bool {
        let object = GrantObject::Table(table.to_string());
        self.closure(name).into_iter().any(|role| {
            self.roles.get(role).is_some_and(|r| r.superuser)
                || self.grants.get(role).is_some_and(|objects| {
                    [&GrantObject::AllTables, &object]
                        .into_iter()
                        .any(|o| objects.get(o).is_some_and(|p| p.contains(&privilege)))
                })
        })
    }

    /// Returns whether role `name` holds any privilege on `table` (whether it may see the table in listings).
    pub fn sees(&self, name: &str, table: &str) -> bool {
        Privilege::ALL.into_iter().any(|p| self.allows(name, table, p))
    }

    /// Drops the grants on table `name` (the table was dropped).
    pub(crate) fn table_dropped(&mut self, name: &str) {
        let object = GrantObject::Table(name.to_string());
        for objects in self.grants.values_mut() {
            objects.remove(&object);
        }
        self.grants.retain(|_, objects| !objects.is_empty());
    }

    /// Applies `command`; returns whether anything changed.
    ///
    /// # Errors
    ///
    /// A [`Rejection`] when the command does not fit the current principals; nothing changed then.
    pub fn apply(&mut self, command: PrincipalCommand) -> Result<bool, Rejection> {
        match command {
            PrincipalCommand::All(commands) => {
                let mut after = self.clone();
                let mut changed = false;
                for command in commands {
                    changed |= after.apply(command)?;
                }
                *self = after;
                Ok(changed)
            }
            PrincipalCommand::CreateRole { name, login, superuser, verifier, if_not_exists } => {
                check_name(&name)?;
                if self.roles.contains_key(&name) {
                    return if if_not_exists { Ok(false) } else { Err(Rejection::RoleAlreadyExists { role: name }) };
                }
                self.next_role_id += 1;
                let record = RoleRecord {
                    id: self.next_role_id,
                    name: name.clone(),
                    login,
                    superuser,
                    verifier,
                    member_of: BTreeSet::new(),
                    generation: 1,
                };
                self.roles.insert(name, record);
                Ok(true)
            }
            PrincipalCommand::AlterRole { name, verifier, superuser, login } => {
                let role = self.roles.get_mut(&name).ok_or(Rejection::RoleNotFound { role: name })?;
                if let Some(verifier) = verifier {
                    role.verifier = verifier;
                }
                if let Some(superuser) = superuser {
                    role.superuser = superuser;
                }
                if let Some(login) = login {
                    role.login = login;
                }
                role.generation += 1;
                Ok(true)
            }
            PrincipalCommand::DropRole { name, if_exists } => {
                if self.roles.remove(&name).is_none() {
                    return if if_exists { Ok(false) } else { Err(Rejection::RoleNotFound { role: name }) };
                }
                self.grants.remove(&name);
                for role in self.roles.values_mut() {
                    role.member_of.remove(&name);
                }
                Ok(true)
            }
            PrincipalCommand::GrantRole { role, member } => {
                self.existing(&role)?;
                self.existing(&member)?;
                if self.closure(&role).contains(member.as_str()) {
                    return Err(Rejection::InvalidPrincipal {
                        detail: format!("role \"{member}\" is a member of role \"{role}\" already, or is that role"),
                    });
                }
                let record = self.roles.get_mut(&member).ok_or(Rejection::RoleNotFound { role: member.clone() })?;
                Ok(record.member_of.insert(role))
            }
            PrincipalCommand::RevokeRole { role, member } => {
                self.existing(&role)?;
                let record = self.roles.get_mut(&member).ok_or(Rejection::RoleNotFound { role: member.clone() })?;
                Ok(record.member_of.remove(&role))
            }
            PrincipalCommand::Grant { privileges, object, grantee } => {
                self.existing(&grantee)?;
                let held = self.grants.entry(grantee).or_default().entry(object).or_default();
                let before = held.len();
                held.extend(privileges);
                Ok(held.len() != before)
            }
            PrincipalCommand::Revoke { privileges, object, grantee } => {
                self.existing(&grantee)?;
                let Some(objects) = self.grants.get_mut(&grantee) else { return Ok(false) };
                let Some(held) = objects.get_mut(&object) else { return Ok(false) };
                let before = held.len();
                held.retain(|p| !privileges.contains(p));
                let changed = held.len() != before;
                if held.is_empty() {
                    objects.remove(&object);
                }
                if objects.is_empty() {
                    self.grants.remove(&grantee);
                }
                Ok(changed)
            }
            PrincipalCommand::SetTokenKey { key } => {
                if self.token_key.is_some() {
                    return Ok(false);
                }
                if key.0.len() < 32 {
                    return Err(Rejection::InvalidPrincipal { detail: "a token key has at least 32 bytes".into() });
                }
                self.token_key = Some(key);
                Ok(true)
            }
        }
    }

    fn existing(&self, name: &str) -> Result<&RoleRecord, Rejection> {
        self.roles.get(name).ok_or_else(|| Rejection::RoleNotFound { role: name.to_string() })
    }
}

fn check_name(name: &str) -> Result<(), Rejection> {
    if name.is_empty() || name.len() > ROLE_NAME_MAX || name.chars().any(char::is_control) {
        return Err(Rejection::InvalidPrincipal {
            detail: format!("a role name has 1 to {ROLE_NAME_MAX} bytes and no control characters"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> ScramVerifier {
        ScramVerifier { iterations: 4096, salt: vec![1; 16], stored_key: vec![2; 32], server_key: vec![3; 32] }
    }

    fn create(p: &mut Principals, name: &str, login: bool) {
        let command = PrincipalCommand::CreateRole {
            name: name.into(),
            login,
            superuser: false,
            verifier: login.then(verifier),
            if_not_exists: false,
        };
        assert_eq!(p.apply(command), Ok(true));
    }

    fn grant(p: &mut Principals, privileges: &[Privilege], object: GrantObject, grantee: &str) -> bool {
        let privileges = privileges.iter().copied().collect();
        p.apply(PrincipalCommand::Grant { privileges, object, grantee: grantee.into() }).expect("grant")
    }

    #[test]
    fn privileges_come_from_grants_to_the_user_and_its_roles_on_the_table_or_all_tables() {
        let mut p = Principals::default();
        create(&mut p, "alice", true);
        create(&mut p, "readers", false);
        assert!(!p.allows("alice", "t", Privilege::Select));
        grant(&mut p, &[Privilege::Select], GrantObject::AllTables, "readers");
        assert!(!p.allows("alice", "t", Privilege::Select), "not a member yet");
        p.apply(PrincipalCommand::GrantRole { role: "readers".into(), member: "alice".into() }).expect("member");
        assert!(p.allows("alice", "t", Privilege::Select));
        assert!(p.allows("alice", "u", Privilege::Select), "all tables");
        assert!(!p.allows("alice", "t", Privilege::Insert));
        grant(&mut p, &[Privilege::Insert], GrantObject::Table("t".into()), "alice");
        assert!(p.allows("alice", "t", Privilege::Insert));
        assert!(!p.allows("alice", "u", Privilege::Insert));
        assert!(p.sees("alice", "u"));
        p.apply(PrincipalCommand::RevokeRole { role: "readers".into(), member: "alice".into() }).expect("revoke");
        assert!(!p.allows("alice", "u", Privilege::Select));
        assert!(!p.sees("alice", "u"));
        p.table_dropped("t");
        assert!(!p.allows("alice", "t", Privilege::Insert), "a dropped table's grants are dropped");
    }

    #[test]
    fn refusals_change_nothing() {
        let mut p = Principals::default();
        create(&mut p, "a", true);
        create(&mut p, "b", false);
        let before = p.clone();
        let again = PrincipalCommand::CreateRole {
            name: "a".into(),
            login: false,
            superuser: true,
            verifier: None,
            if_not_exists: false,
        };
        assert_eq!(p.apply(again), Err(Rejection::RoleAlreadyExists { role: "a".into() }));
        let unknown = PrincipalCommand::Grant {
            privileges: [Privilege::Select].into(),
            object: GrantObject::AllTables,
            grantee: "nobody".into(),
        };
        assert_eq!(p.apply(unknown), Err(Rejection::RoleNotFound { role: "nobody".into() }));
        p.apply(PrincipalCommand::GrantRole { role: "b".into(), member: "a".into() }).expect("a in b");
        let snapshot = p.clone();
        let cycle = p.apply(PrincipalCommand::GrantRole { role: "a".into(), member: "b".into() });
        assert!(matches!(cycle, Err(Rejection::InvalidPrincipal { .. })), "{cycle:?}");
        assert_eq!(p, snapshot);
        assert_ne!(p, before);
        let long = "x".repeat(ROLE_NAME_MAX + 1);
        let bad = PrincipalCommand::CreateRole {
            name: long,
            login: false,
            superuser: false,
            verifier: None,
            if_not_exists: false,
        };
        assert!(matches!(p.apply(bad), Err(Rejection::InvalidPrincipal { .. })));
    }

    #[test]
    fn a_dropped_role_takes_its_grants_and_memberships_and_its_id_is_not_reused() {
        let mut p = Principals::default();
        create(&mut p, "alice", true);
        create(&mut p, "writers", false);
        grant(&mut p, &Privilege::ALL, GrantObject::AllTables, "writers");
        p.apply(PrincipalCommand::GrantRole { role: "writers".into(), member: "alice".into() }).expect("member");
        let first = p.role("alice").map(|r| r.id);
        p.apply(PrincipalCommand::DropRole { name: "writers".into(), if_exists: false }).expect("drop");
        assert!(p.role("alice").is_some_and(|r| r.member_of.is_empty()));
        assert_eq!(p.grants().count(), 0);
        p.apply(PrincipalCommand::DropRole { name: "alice".into(), if_exists: false }).expect("drop");
        assert_eq!(p.apply(PrincipalCommand::DropRole { name: "alice".into(), if_exists: true }), Ok(false));
        create(&mut p, "alice", true);
        assert_ne!(p.role("alice").map(|r| r.id), first);
    }

    #[test]
    fn superusers_hold_every_privilege_and_secrets_are_not_shown() {
        let mut p = Principals::default();
        let command = PrincipalCommand::CreateRole {
            name: "admin".into(),
            login: true,
            superuser: true,
            verifier: Some(verifier()),
            if_not_exists: false,
        };
        p.apply(command).expect("admin");
        assert!(p.is_superuser("admin"));
        assert!(p.allows("admin", "anything", Privilege::Delete));
        assert_eq!(p.apply(PrincipalCommand::SetTokenKey { key: TokenKey(vec![7; 32]) }), Ok(true));
        assert_eq!(p.apply(PrincipalCommand::SetTokenKey { key: TokenKey(vec![8; 32]) }), Ok(false), "first wins");
        let shown = format!("{p:?}");
        assert!(!shown.contains("[7, 7"), "{shown}");
        assert!(!shown.contains("stored_key"), "{shown}");
    }
}
