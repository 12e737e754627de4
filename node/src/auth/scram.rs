//! SCRAM-SHA-256 (RFC 5802, RFC 7677): the verifier kept for a password, the check of a password against it, and
//! the server side of the exchange PostgreSQL clients run.
//!
//! The server keeps `StoredKey = H(ClientKey)` and `ServerKey`, where `ClientKey = HMAC(SaltedPassword, "Client
//! Key")` and `SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, iterations)`. A client proves it knows the
//! password without sending it: `ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage)`, from which the server
//! recovers `ClientKey` and compares its hash with `StoredKey`. Neither key lets anyone log in elsewhere.
//!
//! Deriving a verifier or checking a password runs PBKDF2 (thousands of HMACs): callers run it off the async
//! workers (on the blocking pool).

use std::num::NonZeroU32;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use quiver_meta::ScramVerifier;
use ring::{digest, hmac, pbkdf2};

/// PBKDF2 iterations of new verifiers (PostgreSQL's default).
pub const ITERATIONS: u32 = 4096;

/// The most iterations a verifier may ask for (a bound on the work of one login).
const ITERATIONS_MAX: u32 = 1 << 20;

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data).as_ref().to_vec()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

/// Compares in time that depends only on the lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    let iterations = NonZeroU32::new(iterations.clamp(1, ITERATIONS_MAX)).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, password.as_bytes(), &mut out);
    out
}

/// Derives the verifier of `password` with `salt` (16 random bytes for a new one).
pub fn verifier(password: &str, salt: Vec<u8>, iterations: u32) -> ScramVerifier {
    let salted = salted_password(password, &salt, iterations);
    let client_key = hmac_sha256(&salted, b"Client Key");
    ScramVerifier { iterations, stored_key: sha256(&client_key), server_key: hmac_sha256(&salted, b"Server Key"), salt }
}

/// Returns whether `password` is the one `verifier` was derived from.
pub fn check_password(verifier: &ScramVerifier, password: &str) -> bool {
    let salted = salted_password(password, &verifier.salt, verifier.iterations);
    let client_key = hmac_sha256(&salted, b"Client Key");
    constant_time_eq(&sha256(&client_key), &verifier.stored_key)
}

/// Why an exchange failed. The client is told only that authentication failed; the reason goes to the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramError {
    /// A message did not follow RFC 5802.
    Malformed(String),
    /// The proof did not match: a wrong password, or no such user.
    WrongProof,
}

impl std::fmt::Display for ScramError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScramError::Malformed(what) => write!(f, "malformed SCRAM message: {what}"),
            ScramError::WrongProof => f.write_str("wrong password"),
        }
    }
}

/// The server's state after its first message, waiting for the client's final one.
#[derive(Debug)]
pub struct ServerFirst {
    client_first_bare: String,
    server_first: String,
    nonce: String,
    gs2_header: String,
    verifier: ScramVerifier,
}

impl ServerFirst {
    /// Answers the client's first message (`n,,n=…,r=…`) for a user whose verifier is `verifier` (for an unknown
    /// user, a made-up one: the exchange then fails at the proof, as for a wrong password, without saying which);
    /// `server_nonce` is fresh randomness. Returns the state and the server's first message.
    ///
    /// # Errors
    ///
    /// [`ScramError::Malformed`] when the message is not a client-first message, or asks for channel binding.
    pub fn start(
        client_first: &[u8],
        verifier: ScramVerifier,
        server_nonce: &str,
    ) -> Result<(Self, String), ScramError> {
        let text = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8".into()))?;
        let (gs2_header, bare) = split_gs2(text)?;
        let client_nonce = attribute(bare, 'r').ok_or_else(|| ScramError::Malformed("no client nonce".into()))?;
        if client_nonce.is_empty() || client_nonce.contains(',') {
            return Err(ScramError::Malformed("bad client nonce".into()));
        }
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!("r={nonce},s={},i={}", STANDARD.encode(&verifier.salt), verifier.iterations);
        let state = ServerFirst {
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
            gs2_header: gs2_header.to_string(),
            verifier,
        };
        Ok((state, server_first))
    }

    /// Checks the client's final message (`c=…,r=…,p=…`); returns the server's final message (`v=…`) when the proof
    /// holds.
    ///
    /// # Errors
    ///
    /// [`ScramError::Malformed`] for a message that does not follow the exchange, [`ScramError::WrongProof`] when
    /// the proof does not match.
    pub fn finish(&self, client_final: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8".into()))?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or_else(|| ScramError::Malformed("no proof".into()))?;
        let binding =
            attribute(without_proof, 'c').ok_or_else(|| ScramError::Malformed("no channel binding".into()))?;
        if STANDARD.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Malformed("channel binding does not match the first message".into()));
        }
        if attribute(without_proof, 'r') != Some(self.nonce.as_str()) {
            return Err(ScramError::Malformed("nonce does not match".into()));
        }
        let proof = STANDARD.decode(proof).map_err(|_| ScramError::Malformed("proof is not base64".into()))?;
        let auth_message = format!("{},{},{without_proof}", self.client_first_bare, self.server_first);
        let signature = hmac_sha256(&self.verifier.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(ScramError::WrongProof);
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        if !constant_time_eq(&sha256(&client_key), &self.verifier.stored_key) {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", STANDARD.encode(server_signature)))
    }
}

/// Splits `n,,n=user,r=nonce` into the GS2 header (`n,,`) and the bare message.
fn split_gs2(text: &str) -> Result<(&str, &str), ScramError> {
    let flag_end = text.find(',').ok_or_else(|| ScramError::Malformed("no GS2 header".into()))?;
    match &text[..flag_end] {
        "n" | "y" => {}
        flag if flag.starts_with("p=") => {
            return Err(ScramError::Malformed("channel binding (SCRAM-SHA-256-PLUS) is not offered".into()));
        }
        _ => return Err(ScramError::Malformed("bad GS2 flag".into())),
    }
    let authzid_end = text[flag_end + 1..]
        .find(',')
        .map(|i| flag_end + 1 + i)
        .ok_or_else(|| ScramError::Malformed("no GS2 header".into()))?;
    Ok((&text[..=authzid_end], &text[authzid_end + 1..]))
}

fn attribute(message: &str, name: char) -> Option<&str> {
    message.split(',').find_map(|part| {
        let mut chars = part.chars();
        (chars.next() == Some(name) && chars.next() == Some('=')).then(|| &part[2..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example: user "user", password "pencil".
    #[test]
    fn the_exchange_of_rfc_7677_checks_out() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let v = verifier("pencil", salt, 4096);
        let client_first = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
        let (state, server_first) =
            ServerFirst::start(client_first, v.clone(), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0").expect("first");
        assert_eq!(
            server_first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let client_final = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
            p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(state.finish(client_final), Ok("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".into()));
        let tampered = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
            p=eHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(state.finish(tampered), Err(ScramError::WrongProof));
        assert!(check_password(&v, "pencil"));
        assert!(!check_password(&v, "pencil "));
    }

    #[test]
    fn malformed_messages_are_refused() {
        let v = verifier("x", vec![0; 16], 16);
        for bad in [&b"garbage"[..], b"p=tls-server-end-point,,n=u,r=abc", b"n,,n=u", b"\xff\xfe"] {
            assert!(matches!(ServerFirst::start(bad, v.clone(), "s"), Err(ScramError::Malformed(_))), "{bad:?}");
        }
        let (state, _) = ServerFirst::start(b"n,,n=u,r=abc", v, "def").expect("first");
        assert!(matches!(state.finish(b"c=biws,r=other,p=AAAA"), Err(ScramError::Malformed(_))));
        assert!(matches!(state.finish(b"c=eSws,r=abcdef,p=AAAA"), Err(ScramError::Malformed(_))));
        assert_eq!(state.finish(b"c=biws,r=abcdef,p=AAAA"), Err(ScramError::WrongProof));
    }
}
