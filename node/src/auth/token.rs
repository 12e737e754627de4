//! Bearer tokens: what a Flight SQL client gets for its credentials at the handshake and sends with every call.
//!
//! A token is `v1.<role id>.<generation>.<expiry ms>.<name>` in URL-safe base64, a dot, and the HMAC-SHA-256 of that
//! text under the cluster's token key (kept in the metadata, the same on every node, so any node accepts a token
//! another issued). It is valid until its expiry while the role of that id still exists at that generation: dropping
//! the user, changing its password or its attributes revokes every token issued to it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use quiver_meta::{Principals, TokenKey};
use ring::hmac;

/// The claims a token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The role's id.
    pub role_id: u64,
    /// The role's generation when the token was issued.
    pub generation: u64,
    /// When the token expires (unix ms).
    pub expires_ms: u64,
    /// The role's name.
    pub name: String,
}

/// Signs `claims` with `key`.
pub fn issue(key: &TokenKey, claims: &Claims) -> String {
    let text = format!("v1.{}.{}.{}.{}", claims.role_id, claims.generation, claims.expires_ms, claims.name);
    let payload = URL_SAFE_NO_PAD.encode(text.as_bytes());
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key.0), payload.as_bytes());
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// Why a token was refused (the client is told; nothing here is secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of this cluster, or altered.
    #[error("the bearer token is not valid")]
    Invalid,
    /// Past its expiry.
    #[error("the bearer token expired; authenticate again")]
    Expired,
    /// The user was dropped, or its password or attributes changed since.
    #[error("the bearer token was revoked; authenticate again")]
    Revoked,
}

/// Checks `token` against the principals at `now_ms`; returns the role's name.
///
/// # Errors
///
/// A [`TokenError`] saying why the token is refused.
pub fn check(principals: &Principals, token: &str, now_ms: u64) -> Result<String, TokenError> {
    let key = principals.token_key().ok_or(TokenError::Invalid)?;
    let (payload, tag) = token.rsplit_once('.').ok_or(TokenError::Invalid)?;
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| TokenError::Invalid)?;
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, &key.0), payload.as_bytes(), &tag)
        .map_err(|_| TokenError::Invalid)?;
    let text = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Invalid)?;
    let text = String::from_utf8(text).map_err(|_| TokenError::Invalid)?;
    let mut parts = text.splitn(5, '.');
    let (Some("v1"), Some(id), Some(generation), Some(expires), Some(name)) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Invalid);
    };
    let number = |s: &str| s.parse::<u64>().map_err(|_| TokenError::Invalid);
    let claims = Claims {
        role_id: number(id)?,
        generation: number(generation)?,
        expires_ms: number(expires)?,
        name: name.into(),
    };
    if now_ms >= claims.expires_ms {
        return Err(TokenError::Expired);
    }
    match principals.role(&claims.name) {
        Some(role) if role.id == claims.role_id && role.generation == claims.generation && role.login => {
            Ok(claims.name)
        }
        _ => Err(TokenError::Revoked),
    }
}

#[cfg(test)]
mod tests {
    use quiver_meta::PrincipalCommand;

    use super::*;

    fn principals() -> Principals {
        let mut p = Principals::default();
        p.apply(PrincipalCommand::SetTokenKey { key: TokenKey(vec![9; 32]) }).expect("key");
        let create = PrincipalCommand::CreateRole {
            name: "alice".into(),
            login: true,
            superuser: false,
            verifier: None,
            if_not_exists: false,
        };
        p.apply(create).expect("alice");
        p
    }

    fn token_for(p: &Principals, expires_ms: u64) -> String {
        let role = p.role("alice").expect("alice");
        let claims = Claims { role_id: role.id, generation: role.generation, expires_ms, name: "alice".into() };
        issue(p.token_key().expect("key"), &claims)
    }

    #[test]
    fn a_token_holds_until_it_expires_or_its_user_changes() {
        let mut p = principals();
        let token = token_for(&p, 1_000);
        assert_eq!(check(&p, &token, 999), Ok("alice".into()));
        assert_eq!(check(&p, &token, 1_000), Err(TokenError::Expired));
        let mut altered = token.clone().into_bytes();
        altered[3] ^= 1;
        assert_eq!(check(&p, &String::from_utf8_lossy(&altered), 0), Err(TokenError::Invalid));
        assert_eq!(check(&p, "not a token", 0), Err(TokenError::Invalid));
        let change =
            PrincipalCommand::AlterRole { name: "alice".into(), verifier: Some(None), superuser: None, login: None };
        p.apply(change).expect("alter");
        assert_eq!(check(&p, &token, 0), Err(TokenError::Revoked), "a password change revokes");
        let token = token_for(&p, 1_000);
        p.apply(PrincipalCommand::DropRole { name: "alice".into(), if_exists: false }).expect("drop");
        assert_eq!(check(&p, &token, 0), Err(TokenError::Revoked), "dropping the user revokes");
        let mut other = principals();
        other.apply(PrincipalCommand::DropRole { name: "alice".into(), if_exists: false }).expect("drop");
        let create = PrincipalCommand::CreateRole {
            name: "alice".into(),
            login: true,
            superuser: false,
            verifier: None,
            if_not_exists: false,
        };
        other.apply(create).expect("again");
        let old = token_for(&principals(), 1_000);
        assert_eq!(check(&other, &old, 0), Err(TokenError::Revoked), "a new user of the same name is another user");
    }
}
