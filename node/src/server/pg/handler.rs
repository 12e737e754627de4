//! The per-connection handlers pgwire calls: simple queries, the extended protocol, COPY, errors.
//!
//! [`Shared`] is built once per server (engine, classifier, startup and cancel handling); [`ConnectionHandlers`]
//! is built per connection and hands pgwire one [`Session`], which holds the connection's own state: the COPY in
//! progress, if any. Session parameters live in pgwire's per-connection metadata, prepared statements and portals in
//! its per-connection store.
//!
//! The simple-query path is implemented here rather than by pgwire's default (which computes every statement's
//! response before sending the first): statements run one at a time, each one's response — rows included — is sent
//! before the next starts, and the first error ends the query, as in PostgreSQL.

use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use futures::future::Either;
use futures::{Sink, SinkExt};
use pgwire::api::auth::StartupHandler;
use pgwire::api::cancel::CancelHandler;
use pgwire::api::copy::{CopyHandler, send_copy_in_response};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{
    ExtendedQueryHandler, SimpleQueryHandler, send_execution_response, send_query_response, send_ready_for_query,
};
use pgwire::api::results::{CopyResponse, QueryResponse, Response, Tag};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, ErrorHandler, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::response::{EmptyQueryResponse, TransactionStatus};
use pgwire::messages::simplequery::Query;
use pgwire::types::format::FormatOptions;

use super::cancel::{Cancel, CancelRegistry, CancelWatch, until_cancelled};
use super::catalog;
use super::copy::CopyIn;
use super::error::protocol_error;
use super::request::Request;
use super::startup::{AuthMethod, Startup, caller_of};
use super::statement::{Classified, Classifier, PgStatement, StatementParser, split_statements};
use super::{params, results};
use crate::auth::Caller;
use crate::engine::copy::CopyFrom;
use crate::engine::{Command, Engine, QueryOutput};

/// What every connection of a server shares.
#[derive(Debug)]
pub(super) struct Shared {
    engine: Arc<Engine>,
    classifier: Arc<Classifier>,
    startup: Arc<Startup>,
    cancels: Arc<CancelRegistry>,
}

impl Shared {
    /// Builds the shared state of a server for `engine`, whose connections authenticate by `method` (over TLS only,
    /// with `require_tls`).
    pub(super) fn new(engine: Arc<Engine>, method: AuthMethod, require_tls: bool, per_user: usize) -> Self {
        let cancels = Arc::new(CancelRegistry::default());
        let startup = Startup::new(method, require_tls, Arc::clone(&engine), Arc::clone(&cancels), per_user);
        Self { startup: Arc::new(startup), engine, classifier: Arc::new(Classifier::new()), cancels }
    }
}

/// The handlers of one connection.
#[derive(Debug)]
pub(super) struct ConnectionHandlers {
    shared: Arc<Shared>,
    session: Arc<Session>,
}

impl ConnectionHandlers {
    /// Builds the handlers for a new connection.
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        let parser = Arc::new(StatementParser::new(Arc::clone(&shared.engine), Arc::clone(&shared.classifier)));
        let session = Arc::new(Session { shared: Arc::clone(&shared), parser, copy: Mutex::new(None) });
        Self { shared, session }
    }
}

impl PgWireServerHandlers for ConnectionHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.session)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.session)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.shared.startup)
    }

    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        Arc::clone(&self.session)
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::clone(&self.session)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::clone(&self.shared.cancels)
    }
}

/// One connection's query handling.
#[derive(Debug)]
pub(super) struct Session {
    shared: Arc<Shared>,
    parser: Arc<StatementParser>,
    /// The `COPY … FROM STDIN` in progress. Replacing or dropping it aborts it.
    copy: Mutex<Option<CopyIn>>,
}

/// How a simple query ended.
enum SimpleQueryEnd {
    /// Every statement ran, or one failed: send `ReadyForQuery` with this status.
    Ready(TransactionStatus),
    /// The last statement started a COPY: `ReadyForQuery` follows `CopyDone` or `CopyFail`.
    CopyIn,
}

impl Session {
    fn engine(&self) -> &Arc<Engine> {
        &self.shared.engine
    }

    fn take_copy(&self) -> Option<CopyIn> {
        // The state is only swapped under the lock, never left half-written, so a poisoned lock is still sound.
        self.copy.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn put_copy(&self, copy: CopyIn) {
        *self.copy.lock().unwrap_or_else(PoisonError::into_inner) = Some(copy);
    }

    /// Starts a COPY-in; the response makes pgwire send `CopyInResponse` and route `CopyData` to this session.
    async fn start_copy(&self, caller: &Caller, copy: CopyFrom, mut request: Request) -> PgWireResult<Response> {
        if let Err(e) = self.engine().authorize_insert(caller, &copy.table).await {
            return Err(request.fail(&e));
        }
        let copy = CopyIn::start(self.engine(), copy, request).await?;
        let columns = copy.columns();
        // A COPY left behind (its client vanished mid-way) is dropped here, which aborts it.
        self.put_copy(copy);
        Ok(Response::CopyIn(CopyResponse::new(0, columns, futures::stream::empty())))
    }

    /// Runs one statement of a simple query; `last` says whether statements follow it.
    async fn run_simple_statement<C>(&self, client: &mut C, sql: &str, last: bool) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut request = Request::start(self.engine().metrics());
        let sql = match self.shared.classifier.classify(sql) {
            Classified::PrimaryKeys { schema, table } => {
                Classified::Sql(catalog::primary_keys_sql(self.engine(), schema.as_deref(), table.as_deref()).await)
            }
            other => other,
        };
        match sql {
            Classified::Empty => Ok(Response::EmptyQuery),
            Classified::Local(local) => local.run(client, &Format::UnifiedText).await.map_err(|e| request.fail_with(e)),
            Classified::CopyIn(_) if !last => Err(request
                .fail_with(protocol_error("0A000", "COPY FROM STDIN must be the last statement of a query string"))),
            Classified::CopyIn(copy) => self.start_copy(&caller_of(client), copy, request).await,
            Classified::PrimaryKeys { .. } => {
                Err(request.fail(&crate::error::Error::Internal("primary-key listing left unresolved".into())))
            }
            Classified::Sql(sql) => {
                let output =
                    self.engine().execute_one_as(&caller_of(client), &sql).await.map_err(|e| request.fail(&e))?;
                warn_if_rollback(client, is_rollback(&output)).await?;
                results::into_response(output, &Format::UnifiedText, format_options(client), request)
            }
        }
    }

    /// Runs the statements of a simple query in order, sending each one's response before the next starts.
    async fn run_simple_query<C>(&self, client: &mut C, sql: &str) -> PgWireResult<SimpleQueryEnd>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut status = client.transaction_status();
        let statements = split_statements(sql);
        if statements.is_empty() {
            client.feed(PgWireBackendMessage::EmptyQueryResponse(EmptyQueryResponse::new())).await?;
        }
        let count = statements.len();
        for (i, statement) in statements.into_iter().enumerate() {
            let sent = match self.run_simple_statement(client, statement, i + 1 == count).await {
                Ok(response) => send_simple_response(client, response, &mut status).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(false) => client.set_transaction_status(status),
                Ok(true) => {
                    client.set_state(PgWireConnectionState::CopyInProgress(false));
                    client.set_transaction_status(status);
                    return Ok(SimpleQueryEnd::CopyIn);
                }
                Err(e) if results::is_statement_error(&e) => {
                    // The statement failed (possibly mid-rows): report it, skip the rest of the query.
                    client.feed(PgWireBackendMessage::ErrorResponse(ErrorInfo::from(e).into())).await?;
                    return Ok(SimpleQueryEnd::Ready(status.to_error_state()));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(SimpleQueryEnd::Ready(status))
    }
}

/// Sends one statement's response in a simple query; returns whether it started a COPY-in.
async fn send_simple_response<C>(
    client: &mut C,
    response: Response,
    status: &mut TransactionStatus,
) -> PgWireResult<bool>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    match response {
        Response::EmptyQuery => {
            client.feed(PgWireBackendMessage::EmptyQueryResponse(EmptyQueryResponse::new())).await?
        }
        Response::Query(rows) => send_query_response(client, rows, true).await?,
        Response::Execution(tag) => send_execution_response(client, tag).await?,
        Response::TransactionStart(tag) => {
            send_execution_response(client, tag).await?;
            *status = status.to_in_transaction_state();
        }
        Response::TransactionEnd(tag) => {
            send_execution_response(client, tag).await?;
            *status = status.to_idle_state();
        }
        Response::Error(info) => return Err(PgWireError::UserError(info)),
        Response::CopyIn(copy) => {
            send_copy_in_response(client, copy).await?;
            return Ok(true);
        }
        Response::CopyOut(_) | Response::CopyBoth(_) => {
            return Err(protocol_error("XX000", "the gateway produced a COPY TO response it does not support"));
        }
    }
    Ok(false)
}

fn is_rollback(output: &QueryOutput) -> bool {
    matches!(output, QueryOutput::Done { command: Command::Rollback })
}

/// Starts watching the connection for cancel requests (see [`super::cancel`]).
fn cancel_watch<C: ClientInfo>(client: &C) -> Option<CancelWatch> {
    client.session_extensions().get::<Arc<Cancel>>().map(|cancel| cancel.watch())
}

/// Runs `work` unless a cancel request arrives first.
async fn cancellable<T>(work: impl Future<Output = PgWireResult<T>>, watch: &CancelWatch) -> PgWireResult<T> {
    let work = std::pin::pin!(work);
    let cancelled = std::pin::pin!(watch.cancelled());
    match futures::future::select(work, cancelled).await {
        Either::Left((outcome, _)) => outcome,
        Either::Right(((), _)) => Err(PgWireError::QueryCanceled),
    }
}

/// The client's result formatting settings (`DateStyle`, `extra_float_digits`, `bytea_output`, …).
fn format_options<C: ClientInfo>(client: &C) -> Arc<FormatOptions> {
    Arc::new(FormatOptions::from_client_metadata(client.metadata()))
}

/// Warns a client that ends a transaction with ROLLBACK that nothing was undone: statements autocommit.
async fn warn_if_rollback<C>(client: &mut C, rollback: bool) -> PgWireResult<()>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    if rollback && client.transaction_status() != TransactionStatus::Idle {
        let warning = ErrorInfo::new(
            "WARNING".to_owned(),
            "01000".to_owned(),
            "ROLLBACK undid nothing: every statement was committed when it completed".to_owned(),
        );
        client.feed(PgWireBackendMessage::NoticeResponse(warning.into())).await?;
    }
    Ok(())
}

#[async_trait]
impl SimpleQueryHandler for Session {
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        let watch = cancel_watch(client);
        let outcome = {
            let run = self.run_simple_query(client, &query.query);
            match watch {
                // On a cancel request the query's future is dropped, which stops its execution (and aborts a COPY
                // it was starting).
                Some(watch) => cancellable(run, &watch).await,
                None => run.await,
            }
        };
        match outcome {
            Ok(SimpleQueryEnd::CopyIn) => Ok(()),
            Ok(SimpleQueryEnd::Ready(status)) => {
                client.set_state(PgWireConnectionState::ReadyForQuery);
                client.set_transaction_status(status);
                send_ready_for_query(client, status).await
            }
            // pgwire reports the error, sends ReadyForQuery and resets the state.
            Err(e) => Err(e),
        }
    }

    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Only reached when a caller bypasses `on_query`: answer with every response at once, stopping at the
        // first error, as pgwire's default simple-query flow expects.
        let statements = split_statements(query);
        let count = statements.len();
        let mut responses = Vec::with_capacity(count);
        for (i, statement) in statements.into_iter().enumerate() {
            match self.run_simple_statement(client, statement, i + 1 == count).await {
                Ok(response) => responses.push(response),
                Err(e) => {
                    responses.push(Response::Error(Box::new(ErrorInfo::from(e))));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Session {
    type Statement = PgStatement;
    type QueryParser = StatementParser;

    fn query_parser(&self) -> Arc<StatementParser> {
        Arc::clone(&self.parser)
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PgStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut request = Request::start(self.engine().metrics());
        match &portal.statement.statement {
            PgStatement::Prepared(prepared) => {
                let values = params::decode(portal, &prepared.parameter_types).map_err(|e| request.fail(&e))?;
                let watch = cancel_watch(client);
                let caller = caller_of(client);
                let execute = async {
                    self.engine()
                        .execute_prepared_as(&caller, &prepared.statement, values)
                        .await
                        .map_err(|e| request.fail(&e))
                };
                let output = match &watch {
                    Some(watch) => cancellable(execute, watch).await,
                    None => execute.await,
                };
                let output = match output {
                    Ok(output) => output,
                    Err(e @ PgWireError::QueryCanceled) => return Err(request.fail_with(e)),
                    Err(e) => return Err(e),
                };
                warn_if_rollback(client, is_rollback(&output)).await?;
                let response =
                    results::into_response(output, &portal.result_column_format, format_options(client), request)?;
                // Rows are pulled after this returns; they stay cancellable.
                Ok(match (response, watch) {
                    (Response::Query(rows), Some(watch)) => {
                        let QueryResponse { command_tag, row_schema, data_rows, .. } = rows;
                        let mut rows = QueryResponse::new(row_schema, until_cancelled(data_rows, watch));
                        rows.set_command_tag(&command_tag);
                        Response::Query(rows)
                    }
                    (response, _) => response,
                })
            }
            PgStatement::Local(local) => {
                local.run(client, &portal.result_column_format).await.map_err(|e| request.fail_with(e))
            }
            PgStatement::CopyIn(copy) => self.start_copy(&caller_of(client), copy.as_ref().clone(), request).await,
        }
    }
}

#[async_trait]
impl CopyHandler for Session {
    async fn on_copy_data<C>(&self, _client: &mut C, data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(mut copy) = self.take_copy() else {
            return Err(protocol_error("08P01", "CopyData received outside a COPY"));
        };
        match copy.push(&data.data).await {
            Ok(()) => {
                self.put_copy(copy);
                Ok(())
            }
            // pgwire reports the error and ignores the rest of the COPY's messages.
            Err(e) => Err(copy.abort(&e).await),
        }
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(copy) = self.take_copy() else {
            return Err(protocol_error("08P01", "CopyDone received outside a COPY"));
        };
        let rows = copy.finish().await?;
        let tag = Tag::new(Command::Copy.tag()).with_rows(usize::try_from(rows).unwrap_or(usize::MAX));
        client.send(PgWireBackendMessage::CommandComplete(tag.into())).await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, _client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self.take_copy() {
            Some(copy) => copy.fail_by_client(&fail.message).await,
            None => protocol_error("08P01", "CopyFail received outside a COPY"),
        }
    }
}

impl ErrorHandler for Session {
    fn on_error<C>(&self, _client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        // Engine errors were logged where they were mapped; these are the protocol's own (a malformed message, a
        // statement name that does not exist, a closed socket): the client's doing.
        if !matches!(error, PgWireError::UserError(_)) {
            tracing::debug!(error = %error, "postgres protocol error");
        }
    }
}
