//! Connection startup: protocol negotiation, authentication, server parameters and the cancel key.
//!
//! [`Startup`] runs the startup phase of every connection. Authentication is chosen by [`AuthMethod`]; today the
//! only method is `Trust` (every connection is accepted as the user it names, as PostgreSQL's `trust`). A password
//! method adds a variant: its arm of [`Startup::on_startup`] sends the authentication request after the startup
//! message, checks the client's answer (pgwire's `api::auth::sasl` implements SCRAM-SHA-256 over an `AuthSource`),
//! and then calls [`Startup::accept`] like `Trust` does. Everything after authentication — server parameters, the
//! cancel key registration, `ReadyForQuery` — is shared by all methods.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::{ClientInfo, PidSecretKeyGenerator, RandomPidSecretKeyGenerator};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use super::cancel::{Cancel, CancelRegistry, Registration};
use super::error::protocol_error;
use super::local::SERVER_VERSION;

/// How connections authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AuthMethod {
    /// Every connection is accepted as the user it names (PostgreSQL's `trust`).
    Trust,
}

/// The startup handler shared by all connections of a server.
pub(super) struct Startup {
    method: AuthMethod,
    cancels: Arc<CancelRegistry>,
    keys: RandomPidSecretKeyGenerator,
    parameters: DefaultServerParameterProvider,
}

impl Debug for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Startup").field("method", &self.method).finish()
    }
}

impl Startup {
    /// Builds the handler; connections register their cancel keys in `cancels`.
    pub(super) fn new(method: AuthMethod, cancels: Arc<CancelRegistry>) -> Self {
        let mut parameters = DefaultServerParameterProvider::default();
        // libpq, JDBC and psycopg read the leading "major.minor"; the rest names the server, as distributions do.
        parameters.server_version = format!("{SERVER_VERSION} (Quiver {})", env!("CARGO_PKG_VERSION"));
        Self { method, cancels, keys: RandomPidSecretKeyGenerator::default(), parameters }
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
        match (self.method, message) {
            (AuthMethod::Trust, PgWireFrontendMessage::Startup(startup)) => {
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
                self.accept(client).await
            }
            // Password and SASL messages answer an authentication request, which trust never sends.
            (AuthMethod::Trust, other) => {
                Err(protocol_error("08P01", format!("unexpected {} message during startup", message_name(&other))))
            }
        }
    }
}

fn message_name(message: &PgWireFrontendMessage) -> &'static str {
    match message {
        PgWireFrontendMessage::Startup(_) => "startup",
        PgWireFrontendMessage::PasswordMessageFamily(_) => "password",
        _ => "non-startup",
    }
}
