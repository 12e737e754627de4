//! Connection startup: protocol negotiation, authentication, server parameters and the cancel key.
//!
//! [`Startup`] runs the startup phase of every connection. Authentication is chosen by [`AuthMethod`]: `Trust` accepts
//! every connection as the user it names, with every privilege (a server without authentication, as PostgreSQL's
//! `trust`); `Scram` runs SCRAM-SHA-256 against the verifiers in the metadata (RFC 5802: the password never crosses
//! the wire, and the server keeps no password) and the connection then runs as that user. An unknown user gets the
//! same exchange as a known one with a made-up verifier, so the answer never tells which of user or password was
//! wrong. Everything after authentication — server parameters, the cancel key registration, `ReadyForQuery` — is
//! shared by both methods. The connection's [`Caller`] is kept in its session extensions for the query handlers.

use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::{ClientInfo, PgWireConnectionState, PidSecretKeyGenerator, RandomPidSecretKeyGenerator};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use super::cancel::{Cancel, CancelRegistry, Registration};
use super::error::protocol_error;
use super::local::SERVER_VERSION;
use crate::audit::{AuditEntry, AuditEvent, Outcome};
use crate::auth::Caller;
use crate::auth::scram::{self, ServerFirst};
use crate::auth::sessions::Sessions;
use crate::engine::Engine;

/// The SASL mechanism offered.
const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// How connections authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AuthMethod {
    /// Every connection is accepted as the user it names, with every privilege (PostgreSQL's `trust`).
    Trust,
    /// SCRAM-SHA-256 against the users in the metadata.
    Scram,
}

/// A connection's SCRAM exchange between the server's first message and the client's final one.
struct Exchange {
    user: String,
    /// Whether the user exists and may log in (otherwise the exchange runs on a made-up verifier and fails).
    known: bool,
    first: ServerFirst,
}

/// Returns the connection's caller, set when it authenticated; a connection without one has no privilege at all.
pub(super) fn caller_of<C: ClientInfo>(client: &C) -> Caller {
    client.session_extensions().get::<Caller>().map_or_else(|| Caller::User(String::new()), |c| (*c).clone())
}

fn auth_failed(user: &str) -> PgWireError {
    refused_login("28P01", format!("password authentication failed for user \"{user}\""))
}

/// A login refused: FATAL, as PostgreSQL ends the connection with it.
fn refused_login(sqlstate: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".to_owned(), sqlstate.to_owned(), message)))
}

/// The startup handler shared by all connections of a server.
pub(super) struct Startup {
    method: AuthMethod,
    require_tls: bool,
    /// Keys the made-up salts of unknown users.
    mock_key: Vec<u8>,
    engine: Arc<Engine>,
    cancels: Arc<CancelRegistry>,
    /// The open connections of each user.
    sessions: Arc<Sessions>,
    keys: RandomPidSecretKeyGenerator,
    parameters: DefaultServerParameterProvider,
}

impl Debug for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Startup").field("method", &self.method).finish()
    }
}

impl Startup {
    /// Builds the handler; users are looked up in `engine`'s metadata, connections register their cancel keys in
    /// `cancels`.
    pub(super) fn new(
        method: AuthMethod,
        require_tls: bool,
        engine: Arc<Engine>,
        cancels: Arc<CancelRegistry>,
        per_user: usize,
    ) -> Self {
        let mut parameters = DefaultServerParameterProvider::default();
        // libpq, JDBC and psycopg read the leading "major.minor"; the rest names the server, as distributions do.
        parameters.server_version = format!("{SERVER_VERSION} (Quiver {})", env!("CARGO_PKG_VERSION"));
        let mock_key = (0..4).flat_map(|_| crate::random_u64().unwrap_or_default().to_be_bytes()).collect();
        Self {
            method,
            require_tls,
            mock_key,
            engine,
            cancels,
            sessions: Sessions::new(per_user),
            keys: RandomPidSecretKeyGenerator::default(),
            parameters,
        }
    }

    /// The verifier to run the exchange for `user` on: theirs, or a made-up one (stable per user name, so a
    /// repeated attempt does not reveal that the user does not exist by a changing salt, and unpredictable).
    fn verifier_for(&self, user: &str) -> (bool, quiver_meta::ScramVerifier) {
        let found = self.engine.with_principals(|p| p.role(user).filter(|r| r.login).and_then(|r| r.verifier.clone()));
        match found {
            Some(v) => (true, v),
            None => {
                // Keyed by a secret of this process: a salt anyone could compute from the name would tell.
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.mock_key);
                let mut salt = ring::hmac::sign(&key, user.as_bytes()).as_ref().to_vec();
                salt.truncate(16);
                let made_up = quiver_meta::ScramVerifier {
                    iterations: scram::ITERATIONS,
                    salt,
                    stored_key: vec![0; 32],
                    server_key: vec![0; 32],
                };
                (false, made_up)
            }
        }
    }

    /// Runs one step of the SCRAM exchange for a password-family message.
    async fn scram_step<C>(
        &self,
        client: &mut C,
        message: pgwire::messages::startup::PasswordMessageFamily,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let slot = client.session_extensions().get_or_insert_with(|| Mutex::new(None::<Exchange>));
        let pending = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        let peer = client.socket_addr();
        match pending {
            None => {
                let initial = message.into_sasl_initial_response()?;
                if initial.auth_method != SCRAM_SHA_256 {
                    return Err(protocol_error(
                        "28000",
                        format!("SASL mechanism {} is not offered (only {SCRAM_SHA_256})", initial.auth_method),
                    ));
                }
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                if let Some(wait) = self.engine.logins().locked(&user) {
                    self.audit_login(&user, peer, Outcome::Refused, "locked after repeated failed logins".into());
                    return Err(refused_login("28P01", crate::auth::too_many_failures(&user, wait).to_string()));
                }
                if let Err(e) = self.engine.see_acknowledged_principals().await {
                    return Err(protocol_error(e.sqlstate(), e.report()));
                }
                let (known, verifier) = self.verifier_for(&user);
                let nonce = server_nonce().map_err(|e| protocol_error("XX000", e.report()))?;
                let data = initial.data.unwrap_or_default();
                let (first, server_first) = ServerFirst::start(&data, verifier, &nonce).map_err(|e| {
                    self.audit_login(&user, peer, Outcome::Failed, e.to_string());
                    protocol_error("08P01", e.to_string())
                })?;
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Exchange { user, known, first });
                client
                    .send(PgWireBackendMessage::Authentication(Authentication::SASLContinue(Bytes::from(server_first))))
                    .await?;
                Ok(())
            }
            Some(exchange) => {
                let response = message.into_sasl_response()?;
                match exchange.first.finish(&response.data) {
                    Ok(server_final) if exchange.known => {
                        self.engine.logins().succeeded(&exchange.user);
                        let Some(slot) = self.sessions.open(&exchange.user) else {
                            let detail = format!(
                                "too many connections for user \"{}\" (limits.connections_per_user = {})",
                                exchange.user,
                                self.sessions.limit()
                            );
                            self.audit_login(&exchange.user, peer, Outcome::Refused, detail.clone());
                            return Err(refused_login("53300", detail));
                        };
                        // Held until the connection closes (pgwire drops its extensions then).
                        client.session_extensions().insert(slot);
                        self.audit_login(&exchange.user, peer, Outcome::Ok, "SCRAM-SHA-256".into());
                        client
                            .send(PgWireBackendMessage::Authentication(Authentication::SASLFinal(Bytes::from(
                                server_final,
                            ))))
                            .await?;
                        client.session_extensions().insert(Caller::User(exchange.user));
                        self.accept(client).await
                    }
                    outcome => {
                        let reason = match outcome {
                            Err(e) => e.to_string(),
                            Ok(_) => "no such user, or one that may not log in".to_string(),
                        };
                        self.audit_login(&exchange.user, peer, Outcome::Failed, reason);
                        self.engine.logins().failed(&exchange.user);
                        Err(auth_failed(&exchange.user))
                    }
                }
            }
        }
    }

    /// Records a login attempt of `user` from `peer` in the audit log.
    fn audit_login(&self, user: &str, peer: std::net::SocketAddr, outcome: Outcome, detail: String) {
        let entry = AuditEntry::new(AuditEvent::Login, outcome, detail).user(user).peer(peer).protocol("postgres");
        self.engine.audit().record(entry);
    }

    /// Completes the startup of an authenticated connection: cancel key, server parameters, `ReadyForQuery`.
    async fn accept<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, key) = self.keys.generate(&*client);
        client.set_pid_and_secret_key(pid, key.clone());
        // The signal lets a CancelRequest (sent on another connection) interrupt this connection's query; the
        // registration ends with the connection's session, where it is kept.
        let (cancel, registration) = self.cancels.register(pid, &key);
        client.session_extensions().insert::<Arc<Cancel>>(cancel);
        client.session_extensions().insert::<Registration>(registration);
        finish_authentication(client, &self.parameters).await
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match (&self.method, message) {
            (method, PgWireFrontendMessage::Startup(startup)) => {
                if self.require_tls && !client.is_secure() {
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".to_owned(),
                        "28000".to_owned(),
                        "this server takes TLS connections only (sslmode=require or stricter)".to_owned(),
                    ))));
                }
                protocol_negotiation(client, &startup).await?;
                save_startup_parameters_to_metadata(client, &startup);
                // Session parameters are looked up by lower-case name; clients send some mixed-case at startup
                // (`DateStyle`, `TimeZone`).
                let lowered: Vec<(String, String)> = startup
                    .parameters
                    .iter()
                    .filter(|(k, _)| k.chars().any(|c| c.is_ascii_uppercase()))
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect();
                client.metadata_mut().extend(lowered);
                match method {
                    AuthMethod::Trust => {
                        client.session_extensions().insert(Caller::Trusted);
                        self.accept(client).await
                    }
                    AuthMethod::Scram => {
                        client.set_state(PgWireConnectionState::AuthenticationInProgress);
                        let offered = vec![SCRAM_SHA_256.to_string()];
                        client.send(PgWireBackendMessage::Authentication(Authentication::SASL(offered))).await?;
                        Ok(())
                    }
                }
            }
            (AuthMethod::Scram, PgWireFrontendMessage::PasswordMessageFamily(message)) => {
                self.scram_step(client, message).await
            }
            // Password and SASL messages answer an authentication request, which trust never sends.
            (_, other) => {
                Err(protocol_error("08P01", format!("unexpected {} message during startup", message_name(&other))))
            }
        }
    }
}

/// A fresh server nonce: 24 random bytes in base64.
fn server_nonce() -> crate::Result<String> {
    use base64::Engine as _;
    let mut bytes = Vec::with_capacity(24);
    for _ in 0..3 {
        bytes.extend_from_slice(&crate::random_u64()?.to_be_bytes());
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn message_name(message: &PgWireFrontendMessage) -> &'static str {
    match message {
        PgWireFrontendMessage::Startup(_) => "startup",
        PgWireFrontendMessage::PasswordMessageFamily(_) => "password",
        _ => "non-startup",
    }
}
