//! The Arrow Flight SQL server of a node: [`QuiverFlightSqlService`], built by [`flight_service`] and run by
//! [`serve`].
//!
//! The service translates Flight SQL messages to [`Engine`] calls and engine results back to Arrow Flight data. It
//! owns no data: every statement runs through the engine, as the other frontends' do.
//!
//! ```text
//!  query:     GetFlightInfo(CommandStatementQuery)  ─▶ plan (checks the SQL, gives the schema) ─▶ ticket = SQL text
//!             DoGet(TicketStatementQuery)           ─▶ execute ─▶ batches streamed as they are computed
//!  update:    DoPut(CommandStatementUpdate)         ─▶ execute ─▶ affected row count
//!  prepared:  DoAction(CreatePreparedStatement)     ─▶ plan, store under a handle ─▶ result and parameter schemas
//!             DoPut(CommandPreparedStatementQuery)  ─▶ bind parameter rows to the handle
//!             GetFlightInfo / DoGet(…Query)         ─▶ execute with the last bound row, stream
//!             DoPut(CommandPreparedStatementUpdate) ─▶ execute once per parameter row, sum the counts
//!             DoAction(ClosePreparedStatement)      ─▶ forget the handle
//!  ingest:    DoPut(CommandStatementIngest)         ─▶ decode the client's batches ─▶ engine ingest, one atomic commit
//!  catalog:   GetCatalogs, GetDbSchemas, GetTables, GetTableTypes, GetPrimaryKeys, GetExportedKeys,
//!             GetImportedKeys, GetCrossReference, GetSqlInfo, GetXdbcTypeInfo ─▶ one record batch each
//! ```
//!
//! Invariants:
//!
//! - Results stream: a DoGet encodes the engine's batches one at a time and never collects a whole result.
//! - Statement tickets carry the SQL text itself, so they hold no server state and stay valid on any node serving
//!   the same database. The SQL is planned twice (for the schema, then to run); planning is cheap next to running.
//! - Prepared statements are the only state between requests; they are bounded in number
//!   ([`FlightSqlLimits::max_prepared_statements`]) and their bound parameters in size
//!   ([`FlightSqlLimits::max_message_bytes`]).
//! - Every failure leaves through the one mapping in `status` (engine errors) or as a malformed-request status
//!   (`invalid_argument`, SQLSTATE 08P01) naming what was wrong. Bytes from the network never cause a panic.
//! - Each RPC counts once on the Flight SQL frontend's metrics (requests, errors, latency to the end of the
//!   response). Requests that arrow-flight's dispatcher rejects before calling this service (an undecodable
//!   descriptor or action body) are neither counted nor mapped here.
//!
//! Statements autocommit: transactions, savepoints, query cancellation and Substrait plans are answered as
//! unsupported.
//!
//! Authentication ([`FlightAuth`]): without it every call runs with every privilege and the handshake accepts
//! everyone. With it, the Handshake takes basic credentials (the `authorization: Basic …` header that pyarrow, ADBC
//! and JDBC send, or a `BasicAuth` payload), checks the password against the user's verifier in the metadata, and
//! answers with a bearer token (in the `authorization` response header and as the payload); every other call must
//! carry `authorization: Bearer <token>`, is refused `UNAUTHENTICATED` without a valid one, and runs as that user,
//! whose privileges each statement needs. Listings (GetTables, GetPrimaryKeys) show only the tables the user holds a
//! privilege on.
//!
//! Queries run on the Tokio runtime that runs the server: [`serve`] runs on its caller's runtime, and DataFusion
//! spawns a query's partitions there too.

// Every handler of the Flight SQL trait returns `Result<_, tonic::Status>`, and the helpers here build those results;
// boxing the status in the helpers only to unbox it at the trait boundary would buy nothing.
#![allow(clippy::result_large_err)]

mod catalog;
mod prepared;
mod request;
mod tickets;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{GetCatalogsBuilder, GetDbSchemasBuilder, SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::server::{DoPutError, FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionBeginSavepointRequest, ActionBeginSavepointResult, ActionBeginTransactionRequest,
    ActionBeginTransactionResult, ActionCancelQueryRequest, ActionCancelQueryResult,
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    ActionCreatePreparedSubstraitPlanRequest, ActionEndSavepointRequest, ActionEndTransactionRequest, Any, Command,
    CommandGetCatalogs, CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementSubstraitPlan, CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TableDefinitionOptions, TableExistsOption, TableNotExistOption, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc,
    Ticket,
};
use bytes::Bytes;
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

use self::prepared::PreparedStatements;
use self::request::{DoGetStream, RequestTimer, decode_batches, encode_batches, engine_batches, read_parameter_rows};
use self::tickets::PlannedTickets;
use crate::audit::{AuditEntry, AuditEvent, Outcome};
use crate::auth::sessions::{SessionSlot, Sessions};
use crate::auth::{Caller, token};
use crate::engine::{CATALOG_NAME, Engine, IngestMode, PreparedStatement, QueryOutput, SCHEMA_NAME};
use crate::error::Error;
use crate::server::status::{decode_failure, encode_failure, malformed, status_from};

/// The response stream of a handshake, as the Flight SQL trait names it.
type HandshakeStream = Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>;

/// The size Flight data messages of a response aim for. Well under the default message limit, so that a message
/// that overshoots (one large row cannot be split) still fits.
const FLIGHT_DATA_BYTES_TARGET: usize = 2 * 1024 * 1024;

/// Size and count limits of the Flight SQL service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlightSqlLimits {
    /// The largest gRPC message the service decodes or encodes, in bytes. It also bounds the memory the parameters
    /// bound to one prepared statement may take.
    pub max_message_bytes: usize,
    /// The most prepared statements open at once, over all clients.
    pub max_prepared_statements: usize,
}

impl Default for FlightSqlLimits {
    fn default() -> Self {
        Self { max_message_bytes: 64 * 1024 * 1024, max_prepared_statements: 10_000 }
    }
}

/// How Flight SQL clients authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlightAuth {
    /// How long a bearer token issued at the handshake is valid.
    pub token_ttl: std::time::Duration,
    /// The most calls that run statements (GetFlightInfo, DoGet to the end of its stream, DoPut) one user may have
    /// in flight on this node at once (0: no limit); `limits.connections_per_user`, since Flight SQL's HTTP/2
    /// connections belong to no user.
    pub calls_per_user: usize,
}

impl Default for FlightAuth {
    fn default() -> Self {
        Self { token_ttl: std::time::Duration::from_secs(12 * 3600), calls_per_user: 100 }
    }
}

/// The Flight SQL service of one [`Engine`].
pub struct QuiverFlightSqlService {
    engine: Arc<Engine>,
    limits: FlightSqlLimits,
    auth: Option<FlightAuth>,
    /// The statement-running calls in flight per user.
    calls: Arc<Sessions>,
    prepared: PreparedStatements,
    /// The plans of the statement tickets issued, waiting for their DoGet.
    tickets: PlannedTickets,
    sql_info: SqlInfoData,
    xdbc_types: XdbcTypeInfoData,
}

impl fmt::Debug for QuiverFlightSqlService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuiverFlightSqlService")
            .field("engine", &self.engine)
            .field("limits", &self.limits)
            .field("prepared", &self.prepared)
            .finish_non_exhaustive()
    }
}

/// Builds the gRPC service that answers Flight SQL for `engine`, with `limits` applied to message sizes.
pub fn flight_service(engine: Arc<Engine>, limits: FlightSqlLimits) -> FlightServiceServer<QuiverFlightSqlService> {
    flight_service_with(engine, limits, None)
}

/// Builds the gRPC service as [`flight_service`] does, with clients authenticated when `auth` is given.
pub fn flight_service_with(
    engine: Arc<Engine>,
    limits: FlightSqlLimits,
    auth: Option<FlightAuth>,
) -> FlightServiceServer<QuiverFlightSqlService> {
    FlightServiceServer::new(QuiverFlightSqlService::new(engine, limits).with_auth(auth))
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes)
}

/// Serves Flight SQL for `engine` on `listener` until `shutdown` completes, then stops accepting connections and
/// waits for the requests in flight.
///
/// # Errors
///
/// Fails when the gRPC server fails (for example when accepting connections fails).
///
/// # Cancel safety
///
/// Dropping the future closes the listener and aborts the requests in flight; prefer completing `shutdown`.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use quiver_node::engine::{Engine, EngineOptions, StorageLocation};
/// use quiver_node::server::flight_sql::{self, FlightSqlLimits};
///
/// let engine = Engine::open(StorageLocation::Memory, EngineOptions::default()).await?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
/// flight_sql::serve(engine, FlightSqlLimits::default(), listener, std::future::pending()).await?;
/// # Ok(())
/// # }
/// ```
pub async fn serve(
    engine: Arc<Engine>,
    limits: FlightSqlLimits,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_with(engine, limits, None, listener, shutdown).await
}

/// Serves Flight SQL as [`serve`] does, with clients authenticated when `auth` is given.
///
/// # Errors
///
/// As [`serve`].
pub async fn serve_with(
    engine: Arc<Engine>,
    limits: FlightSqlLimits,
    auth: Option<FlightAuth>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_secured(engine, limits, auth, None, listener, shutdown).await
}

/// Serves Flight SQL as [`serve_with`] does, over TLS when `tls` is given (its configuration must offer ALPN `h2`).
///
/// # Errors
///
/// As [`serve`].
pub async fn serve_secured(
    engine: Arc<Engine>,
    limits: FlightSqlLimits,
    auth: Option<FlightAuth>,
    tls: Option<Arc<rustls::ServerConfig>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, tls = tls.is_some(), "flight sql server listening");
    }
    if let Some(tls) = tls {
        let accepted = tokio_stream::wrappers::ReceiverStream::new(crate::server::tls::accept(listener, tls));
        let incoming = accepted.map(|(stream, _)| Ok::<_, std::io::Error>(stream));
        return Server::builder()
            .add_service(flight_service_with(engine, limits, auth))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
    }
    let incoming = TcpListenerStream::new(listener).inspect_ok(|stream| {
        // Responses end in small messages; Nagle's algorithm would hold them back waiting for an acknowledgement.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not disable Nagle's algorithm on a flight sql connection");
        }
    });
    Server::builder()
        .add_service(flight_service_with(engine, limits, auth))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

impl QuiverFlightSqlService {
    /// Returns a service for `engine`; [`flight_service`] wraps it in a gRPC server with the limits applied.
    pub fn new(engine: Arc<Engine>, limits: FlightSqlLimits) -> Self {
        Self {
            engine,
            limits,
            auth: None,
            calls: Sessions::new(0),
            prepared: PreparedStatements::new(limits.max_prepared_statements),
            tickets: PlannedTickets::default(),
            sql_info: catalog::sql_info(),
            xdbc_types: catalog::xdbc_type_info(),
        }
    }

    /// Authenticates clients as `auth` says (`None`: every call has every privilege).
    pub fn with_auth(mut self, auth: Option<FlightAuth>) -> Self {
        self.calls = Sessions::new(auth.map_or(0, |a| a.calls_per_user));
        self.auth = auth;
        self
    }

    /// Counts a statement-running call of `caller` until the slot returned is dropped.
    ///
    /// # Errors
    ///
    /// `RESOURCE_EXHAUSTED` (SQLSTATE 53300) when the user has `calls_per_user` such calls in flight; it is audited.
    fn call_slot<T>(&self, caller: &Caller, request: &Request<T>) -> Result<Option<SessionSlot>, Status> {
        let Caller::User(user) = caller else { return Ok(None) };
        if let Some(slot) = self.calls.open(user) {
            return Ok(Some(slot));
        }
        let detail = format!(
            "too many Flight SQL calls in flight for user \"{user}\" (limits.connections_per_user = {})",
            self.calls.limit()
        );
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        self.engine.audit().record(
            AuditEntry::new(AuditEvent::Login, Outcome::Refused, detail.clone())
                .user(user.as_str())
                .peer(peer)
                .protocol("flight"),
        );
        Err(status_from(&Error::TooManyForUser { detail }))
    }

    /// Returns for whom a call runs: anyone with every privilege without authentication, else the user its bearer
    /// token names.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        if self.auth.is_none() {
            return Ok(Caller::Trusted);
        }
        let unauthenticated = |detail: String| status_from(&Error::Unauthenticated { detail });
        let Some(header) = request.metadata().get("authorization") else {
            return Err(unauthenticated(
                "authentication required: Handshake with basic credentials, then send the bearer token".into(),
            ));
        };
        let header = header.to_str().map_err(|_| unauthenticated("the authorization header is not text".into()))?;
        let Some(token) = strip_scheme(header, "bearer") else {
            return Err(unauthenticated("the authorization header carries no bearer token; Handshake first".into()));
        };
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        crate::auth::check_token(&self.engine, token, &peer, "flight").map(Caller::User).map_err(|e| status_from(&e))
    }

    /// Answers a handshake: checks basic credentials and issues a bearer token.
    async fn authenticate(
        &self,
        request: &Request<Streaming<HandshakeRequest>>,
        payload: Option<Bytes>,
    ) -> Result<HandshakeResponse, Status> {
        let Some(auth) = self.auth else {
            return Ok(HandshakeResponse { protocol_version: 0, payload: Bytes::new() });
        };
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let unauthenticated = |detail: String| status_from(&Error::Unauthenticated { detail });
        let (user, password) = match request.metadata().get("authorization").map(|h| h.to_str()) {
            Some(Ok(header)) => {
                let encoded = strip_scheme(header, "basic")
                    .ok_or_else(|| unauthenticated("the handshake takes basic credentials".into()))?;
                crate::auth::basic_credentials(encoded).map_err(|e| status_from(&e))?
            }
            Some(Err(_)) => return Err(unauthenticated("the authorization header is not text".into())),
            None => {
                let basic = payload
                    .and_then(|p| arrow_flight::BasicAuth::decode(p).ok())
                    .ok_or_else(|| unauthenticated("the handshake carries no credentials".into()))?;
                (basic.username, basic.password)
            }
        };
        let (role_id, generation) = crate::auth::check_login(&self.engine, &user, password, &peer, "flight")
            .await
            .map_err(|e| status_from(&e))?;
        let key = match self.engine.with_principals(|p| p.token_key().cloned()) {
            Some(key) => key,
            None => {
                return Err(status_from(&Error::ShardUnavailable {
                    shard: 0,
                    detail: "the cluster's token key is not set yet; retry shortly".into(),
                }));
            }
        };
        let expires_ms = crate::clock::unix_ms().saturating_add(auth.token_ttl.as_millis() as u64);
        let bearer = token::issue(&key, &token::Claims { role_id, generation, expires_ms, name: user.clone() });
        Ok(HandshakeResponse { protocol_version: 0, payload: Bytes::from(bearer) })
    }

    /// The tables `caller` may see: those it holds a privilege on.
    async fn visible_tables(&self, caller: &Caller) -> Vec<crate::engine::TableInfo> {
        let tables = self.engine.tables().await;
        match caller {
            Caller::Trusted => tables,
            Caller::User(user) => self.engine.with_principals(|p| {
                tables.into_iter().filter(|t| p.is_superuser(user) || p.sees(user, &t.name)).collect()
            }),
        }
    }

    fn timer(&self) -> RequestTimer {
        RequestTimer::start(self.engine.metrics())
    }

    fn flight_data_bytes(&self) -> usize {
        FLIGHT_DATA_BYTES_TARGET.min(self.limits.max_message_bytes / 2).max(1)
    }

    /// Streams `batches` as the response of a DoGet.
    fn respond_rows(
        &self,
        timer: RequestTimer,
        schema: SchemaRef,
        batches: BoxStream<'static, Result<RecordBatch, Status>>,
    ) -> Response<DoGetStream> {
        Response::new(timer.stream(encode_batches(schema, batches, self.flight_data_bytes())))
    }

    /// Streams the result of a statement as the response of a DoGet.
    fn respond_output(&self, timer: RequestTimer, output: QueryOutput) -> Response<DoGetStream> {
        match output {
            QueryOutput::Rows { schema, stream } => self.respond_rows(timer, schema, engine_batches(stream)),
            // A statement that returns no rows answers with an empty result, as its planned schema (no columns) said.
            QueryOutput::Affected { .. } | QueryOutput::Done { .. } => {
                self.respond_rows(timer, Arc::new(Schema::empty()), futures::stream::empty().boxed())
            }
        }
    }

    /// Answers a DoGet with one batch (catalog commands).
    fn respond_batch(
        &self,
        timer: RequestTimer,
        batch: Result<RecordBatch, Status>,
    ) -> Result<Response<DoGetStream>, Status> {
        match batch {
            Ok(batch) => Ok(self.respond_rows(timer, batch.schema(), futures::stream::iter([Ok(batch)]).boxed())),
            Err(status) => timer.finish(Err(status)),
        }
    }

    /// Answers a DoGet whose result is a statement's output.
    fn respond_statement(
        &self,
        timer: RequestTimer,
        output: Result<QueryOutput, Status>,
    ) -> Result<Response<DoGetStream>, Status> {
        match output {
            Ok(output) => Ok(self.respond_output(timer, output)),
            Err(status) => timer.finish(Err(status)),
        }
    }

    async fn statement_info(
        &self,
        caller: &Caller,
        query: CommandStatementQuery,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        no_transaction(query.transaction_id.as_ref())?;
        // Users, roles and grants are not planned: they run now, as other statements that change something do.
        if crate::auth::dcl::parse(&query.query).is_ok_and(|d| d.is_some()) {
            self.engine.execute_one_as(caller, &query.query).await.map_err(|e| status_from(&e))?;
            return executed_info(descriptor);
        }
        // Planning checks the statement now, so syntax errors and unknown tables fail here rather than at DoGet.
        let statement = self.engine.prepare_as(caller, &query.query).await.map_err(|e| status_from(&e))?;
        if !statement.returns_rows() {
            // A statement that changes something runs now: clients (ADBC among them) send DDL and DML as queries
            // and may never fetch the empty result.
            self.engine.execute_prepared_as(caller, &statement, Vec::new()).await.map_err(|e| status_from(&e))?;
            return executed_info(descriptor);
        }
        let schema = statement.result_schema();
        let ticket = TicketStatementQuery { statement_handle: self.tickets.issue(user_of(caller), statement) };
        flight_info(&schema, ticket.as_any().encode_to_vec(), descriptor)
    }

    async fn run_statement_ticket(
        &self,
        caller: &Caller,
        ticket: &TicketStatementQuery,
    ) -> Result<QueryOutput, Status> {
        if ticket.statement_handle.as_ref() == EXECUTED_TICKET {
            return Ok(QueryOutput::Done { command: crate::engine::Command::Other });
        }
        let parsed = tickets::parse(&ticket.statement_handle);
        // The plan GetFlightInfo made, when this node holds it for this caller (its privileges are checked again).
        if let Some(statement) = parsed.handle.and_then(|handle| self.tickets.take(handle, user_of(caller))) {
            return self.engine.execute_prepared_as(caller, &statement, Vec::new()).await.map_err(|e| status_from(&e));
        }
        let sql = std::str::from_utf8(parsed.sql)
            .map_err(|_| malformed("the statement ticket is not UTF-8 SQL text; tickets come from GetFlightInfo"))?;
        self.engine.execute_one_as(caller, sql).await.map_err(|e| status_from(&e))
    }

    async fn run_update(&self, caller: &Caller, command: CommandStatementUpdate) -> Result<i64, Status> {
        no_transaction(command.transaction_id.as_ref())?;
        let outputs = self.engine.execute_as(caller, &command.query).await.map_err(|e| status_from(&e))?;
        Ok(record_count(outputs.into_iter().map(affected_rows).fold(0, u64::saturating_add)))
    }

    async fn create_prepared(
        &self,
        caller: &Caller,
        query: ActionCreatePreparedStatementRequest,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        no_transaction(query.transaction_id.as_ref())?;
        let statement = self.engine.prepare_as(caller, &query.query).await.map_err(|e| status_from(&e))?;
        let dataset_schema = ipc_schema(&request::wire_schema(&statement.result_schema()))?;
        let parameter_schema = ipc_schema(&parameter_schema(statement.parameter_types()))?;
        let prepared_statement_handle = self.prepared.open(statement)?;
        Ok(ActionCreatePreparedStatementResult { prepared_statement_handle, dataset_schema, parameter_schema })
    }

    async fn bind_parameters(
        &self,
        command: CommandPreparedStatementQuery,
        input: PeekableFlightDataStream,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let handle = command.prepared_statement_handle;
        let open = self.prepared.get(&handle)?;
        let rows = read_parameter_rows(input, self.limits.max_message_bytes).await?;
        check_parameter_rows(&open.statement, &rows)?;
        self.prepared.bind(&handle, rows)?;
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(handle) })
    }

    async fn prepared_info(
        &self,
        caller: &Caller,
        command: CommandPreparedStatementQuery,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let open = self.prepared.get(&command.prepared_statement_handle)?;
        if !open.statement.returns_rows() {
            // As for plain statements: run it now, with the last bound parameter row.
            let params = open.bound.last().cloned().unwrap_or_default();
            self.engine.execute_prepared_as(caller, &open.statement, params).await.map_err(|e| status_from(&e))?;
            return executed_info(descriptor);
        }
        flight_info(&open.statement.result_schema(), command.as_any().encode_to_vec(), descriptor)
    }

    /// Runs a prepared query with the last parameter row bound to it (a query returns one result, so one row of
    /// parameters is used; none when the statement has no parameters).
    async fn run_prepared_query(
        &self,
        caller: &Caller,
        command: &CommandPreparedStatementQuery,
    ) -> Result<QueryOutput, Status> {
        let open = self.prepared.get(&command.prepared_statement_handle)?;
        let params = open.bound.last().cloned().unwrap_or_default();
        self.engine.execute_prepared_as(caller, &open.statement, params).await.map_err(|e| status_from(&e))
    }

    /// Runs a prepared update once per parameter row: the rows sent with this DoPut, or else the rows bound before
    /// (the Rust and Java clients bind with a separate DoPut). Each execution commits on its own, so when one fails
    /// the executions before it stay applied.
    async fn run_prepared_update(
        &self,
        caller: &Caller,
        command: CommandPreparedStatementUpdate,
        input: PeekableFlightDataStream,
    ) -> Result<i64, Status> {
        let open = self.prepared.get(&command.prepared_statement_handle)?;
        let sent = read_parameter_rows(input, self.limits.max_message_bytes).await?;
        check_parameter_rows(&open.statement, &sent)?;
        let rows = if !sent.is_empty() {
            sent
        } else if !open.bound.is_empty() {
            open.bound.as_ref().clone()
        } else {
            vec![Vec::new()]
        };
        let mut total = 0u64;
        for params in rows {
            let output =
                self.engine.execute_prepared_as(caller, &open.statement, params).await.map_err(|e| status_from(&e))?;
            total = total.saturating_add(affected_rows(output));
        }
        Ok(record_count(total))
    }

    async fn ingest(
        &self,
        caller: &Caller,
        command: CommandStatementIngest,
        input: PeekableFlightDataStream,
    ) -> Result<i64, Status> {
        check_ingest_target(&command)?;
        let table = command.table;
        // Appending needs INSERT; a mode that may create or replace the table needs a superuser.
        let authorized = match command.table_definition_options.as_ref().map(|o| o.if_not_exist) {
            Some(n) if n == TableNotExistOption::Fail as i32 => self.engine.authorize_insert(caller, &table).await,
            _ => self.engine.authorize_superuser(caller, "create or replace a table by bulk ingest").await,
        };
        authorized.map_err(|e| status_from(&e))?;
        let mode = match ingest_plan(command.table_definition_options)? {
            IngestPlan::Run(mode) => mode,
            plan @ (IngestPlan::ReplaceExisting | IngestPlan::Refuse) => {
                // The engine's modes cannot say "replace, but only an existing table" or "never"; decide here. A
                // concurrent DROP between this check and the ingest makes the replace create the table instead.
                let exists = self.engine.tables().await.iter().any(|t| t.name == table);
                match (plan, exists) {
                    (_, false) => return Err(status_from(&Error::TableNotFound { table })),
                    (IngestPlan::ReplaceExisting, true) => IngestMode::Replace,
                    (_, true) => return Err(status_from(&Error::TableAlreadyExists { table })),
                }
            }
        };

        let mut batches = decode_batches(input);
        let first = batches.next().await.transpose().map_err(decode_failure)?;
        let schema = match (batches.schema(), &first) {
            (Some(schema), _) => Arc::clone(schema),
            (None, Some(batch)) => batch.schema(),
            (None, None) => return Err(malformed("the ingest stream carries no Arrow schema")),
        };
        // A decoding failure mid-stream reaches the engine as an error that aborts the ingest; the status kept here
        // then tells the client what was wrong with its data, rather than the engine's view of it.
        let decode_error: Arc<Mutex<Option<Status>>> = Arc::default();
        let slot = Arc::clone(&decode_error);
        let rest = batches.map_err(move |e| {
            let status = decode_failure(e);
            let message = status.message().to_string();
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(status);
            DataFusionError::from(Error::Execution { message })
        });
        let stream = futures::stream::iter(first.map(Ok)).chain(rest);
        let stream: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&schema), stream));
        match self.engine.ingest(&table, mode, schema, stream).await {
            Ok(rows) => Ok(record_count(rows)),
            Err(e) => {
                let decode_error = decode_error.lock().unwrap_or_else(PoisonError::into_inner).take();
                Err(decode_error.unwrap_or_else(|| status_from(&e)))
            }
        }
    }
}

/// The user a call runs as; `None` for a trusted caller.
fn user_of(caller: &Caller) -> Option<&str> {
    match caller {
        Caller::User(user) => Some(user),
        Caller::Trusted => None,
    }
}

/// Keeps `slot` (a user's call in flight) until the response's stream ends or the client drops it.
fn holding(response: Response<DoGetStream>, slot: Option<SessionSlot>) -> Response<DoGetStream> {
    let Some(slot) = slot else { return response };
    response.map(|stream| -> DoGetStream {
        Box::pin(stream.map(move |item| {
            let _held = &slot;
            item
        }))
    })
}

/// Builds the FlightInfo of a result with `schema`, fetched with one DoGet of `ticket`.
/// The statement handle of a ticket whose statement already ran at GetFlightInfo; its DoGet returns no rows. SQL text
/// never starts with a NUL byte, so it cannot collide with a real statement.
const EXECUTED_TICKET: &[u8] = b"\0executed";

/// Describes the empty result of a statement that ran at GetFlightInfo.
fn executed_info(descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
    let ticket = TicketStatementQuery { statement_handle: Bytes::from_static(EXECUTED_TICKET) };
    flight_info(&Schema::empty(), ticket.as_any().encode_to_vec(), descriptor)
}

fn flight_info(schema: &Schema, ticket: Vec<u8>, descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
    // Announce the schema the rows will have on the wire (view types as classic types).
    let schema = request::wire_schema(&Arc::new(schema.clone()));
    Ok(FlightInfo::new()
        .try_with_schema(&schema)
        .map_err(|e| status_from(&Error::Arrow(e)))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor))
}

/// Encodes a schema as the IPC message prepared-statement results carry.
fn ipc_schema(schema: &Schema) -> Result<Bytes, Status> {
    IpcMessage::try_from(SchemaAsIpc::new(schema, &IpcWriteOptions::default()))
        .map(|message| message.0)
        .map_err(|e| status_from(&Error::Arrow(e)))
}

/// Describes the parameters `$1`, `$2`, … of a prepared statement. A parameter whose type the planner could not
/// infer (as in `SELECT $1`) is declared `Null`, "unknown", rather than guessed: the engine takes such a parameter as
/// whatever type the client binds.
fn parameter_schema(types: &[Option<DataType>]) -> Schema {
    Schema::new(
        types
            .iter()
            .enumerate()
            .map(|(i, ty)| Field::new(format!("${}", i + 1), ty.clone().unwrap_or(DataType::Null), true))
            .collect::<Vec<_>>(),
    )
}

/// Checks that every parameter row has one value per parameter of `statement`.
fn check_parameter_rows(statement: &PreparedStatement, rows: &[Vec<ScalarValue>]) -> Result<(), Status> {
    let expected = statement.parameter_types().len();
    match rows.iter().position(|row| row.len() != expected) {
        None => Ok(()),
        Some(i) => Err(status_from(&Error::Parameter {
            detail: format!("the statement has {expected} parameters; parameter row {i} has {} values", rows[i].len()),
        })),
    }
}

/// Refuses requests that name a transaction: statements autocommit, and no transaction was ever handed out.
fn no_transaction(transaction_id: Option<&Bytes>) -> Result<(), Status> {
    match transaction_id {
        Some(id) if !id.is_empty() => {
            Err(status_from(&Error::Unsupported { what: "Flight SQL transactions (statements autocommit)".into() }))
        }
        _ => Ok(()),
    }
}

/// Returns the rows a statement changed; statements returning rows count none (their rows are not read).
fn affected_rows(output: QueryOutput) -> u64 {
    match output {
        QueryOutput::Affected { rows, .. } => rows,
        QueryOutput::Rows { .. } | QueryOutput::Done { .. } => 0,
    }
}

/// Converts a row count to the protocol's `int64`.
fn record_count(rows: u64) -> i64 {
    i64::try_from(rows).unwrap_or(i64::MAX)
}

/// What an ingest does with its target table, from the client's table definition options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IngestPlan {
    /// Run the ingest in this engine mode.
    Run(IngestMode),
    /// Replace the table, which must exist.
    ReplaceExisting,
    /// Fail whether the table exists or not (the options forbid both creating and touching it).
    Refuse,
}

fn ingest_plan(options: Option<TableDefinitionOptions>) -> Result<IngestPlan, Status> {
    let options = options.ok_or_else(|| malformed("the ingest command has no table_definition_options"))?;
    let if_not_exist = TableNotExistOption::try_from(options.if_not_exist)
        .map_err(|_| malformed(format!("unknown ingest option if_not_exist = {}", options.if_not_exist)))?;
    let if_exists = TableExistsOption::try_from(options.if_exists)
        .map_err(|_| malformed(format!("unknown ingest option if_exists = {}", options.if_exists)))?;
    Ok(match (if_not_exist, if_exists) {
        (TableNotExistOption::Unspecified, _) | (_, TableExistsOption::Unspecified) => {
            return Err(malformed("the ingest options if_not_exist and if_exists must both be specified"));
        }
        (TableNotExistOption::Create, TableExistsOption::Fail) => IngestPlan::Run(IngestMode::Create),
        (TableNotExistOption::Create, TableExistsOption::Append) => IngestPlan::Run(IngestMode::CreateOrAppend),
        (TableNotExistOption::Create, TableExistsOption::Replace) => IngestPlan::Run(IngestMode::Replace),
        (TableNotExistOption::Fail, TableExistsOption::Append) => IngestPlan::Run(IngestMode::Append),
        (TableNotExistOption::Fail, TableExistsOption::Replace) => IngestPlan::ReplaceExisting,
        (TableNotExistOption::Fail, TableExistsOption::Fail) => IngestPlan::Refuse,
    })
}

/// Checks where an ingest writes: a named table of Quiver's one catalog and schema, outside any transaction.
fn check_ingest_target(command: &CommandStatementIngest) -> Result<(), Status> {
    if command.table.is_empty() {
        return Err(malformed("the ingest command names no table"));
    }
    if command.table.chars().any(char::is_control) {
        return Err(malformed(format!(
            "the ingest table name \"{}\" contains control characters",
            command.table.escape_debug()
        )));
    }
    if let Some(catalog) = command.catalog.as_deref()
        && catalog != CATALOG_NAME
    {
        return Err(status_from(&Error::Plan { message: format!("catalog \"{catalog}\" does not exist") }));
    }
    if let Some(schema) = command.schema.as_deref()
        && schema != SCHEMA_NAME
    {
        return Err(status_from(&Error::Plan {
            message: format!("schema \"{schema}\" does not exist; tables live in \"{SCHEMA_NAME}\""),
        }));
    }
    if command.temporary {
        return Err(status_from(&Error::Unsupported { what: "temporary tables".into() }));
    }
    no_transaction(command.transaction_id.as_ref())?;
    // Unknown options are refused rather than ignored, so that a client never believes an option took effect.
    if let Some(option) = command.options.keys().next() {
        return Err(status_from(&Error::Unsupported { what: format!("ingest option \"{}\"", option.escape_debug()) }));
    }
    Ok(())
}

/// The status for the Flight SQL features Quiver does not offer.
fn unsupported(what: &str) -> Status {
    status_from(&Error::Unsupported { what: what.to_string() })
}

/// The credentials of an `authorization` header of `scheme` (matched without regard to case).
fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (found, rest) = header.split_once(' ')?;
    found.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// Shortens and escapes a name that came from the network, for an error message.
fn shown(name: &str) -> String {
    name.chars().take(100).collect::<String>().escape_debug().to_string()
}

#[tonic::async_trait]
impl FlightSqlService for QuiverFlightSqlService {
    type FlightService = QuiverFlightSqlService;

    /// Accepts every client: the service does not authenticate yet. Answering the handshake, rather than refusing
    /// it, lets JDBC clients that always send credentials connect.
    async fn do_handshake(
        &self,
        mut request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<HandshakeStream>, Status> {
        let timer = self.timer();
        // A legacy client sends its credentials as a `BasicAuth` payload instead of a header.
        let payload = match request.metadata().get("authorization") {
            Some(_) => None,
            None => request.get_mut().message().await.ok().flatten().map(|m| m.payload),
        };
        let response = match self.authenticate(&request, payload).await {
            Ok(response) => response,
            Err(status) => return timer.finish(Err(status)),
        };
        let header = (!response.payload.is_empty())
            .then(|| std::str::from_utf8(&response.payload).ok().map(|t| format!("Bearer {t}")))
            .flatten()
            .and_then(|h| h.parse().ok());
        let stream: HandshakeStream = Box::pin(futures::stream::iter([Ok(response)]));
        let mut response = Response::new(stream);
        if let Some(header) = header {
            response.metadata_mut().insert("authorization", header);
        }
        timer.finish(Ok(response))
    }

    async fn do_get_fallback(
        &self,
        request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        self.timer().finish(Err(malformed(format!(
            "the ticket holds a {}, which is no ticket this server issues",
            shown(&message.type_url)
        ))))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        let _slot = self.call_slot(&caller, &request)?;
        let timer = self.timer();
        timer.finish(self.statement_info(&caller, query, request.into_inner()).await.map(Response::new))
    }

    async fn get_flight_info_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        self.timer().finish(Err(unsupported("Substrait plans")))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        let timer = self.timer();
        timer.finish(self.prepared_info(&caller, query, request.into_inner()).await.map(Response::new))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = GetCatalogsBuilder::new().schema();
        self.timer()
            .finish(flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner()).map(Response::new))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = GetDbSchemasBuilder::new(None::<String>, None::<String>).schema();
        self.timer()
            .finish(flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner()).map(Response::new))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = query.clone().into_builder().schema();
        self.timer()
            .finish(flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner()).map(Response::new))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = query.into_builder().schema();
        self.timer()
            .finish(flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner()).map(Response::new))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = self.sql_info.schema();
        self.timer()
            .finish(flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner()).map(Response::new))
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = catalog::primary_keys_schema();
        self.timer()
            .finish(flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner()).map(Response::new))
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = catalog::foreign_keys_schema();
        self.timer()
            .finish(flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner()).map(Response::new))
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = catalog::foreign_keys_schema();
        self.timer()
            .finish(flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner()).map(Response::new))
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = catalog::foreign_keys_schema();
        self.timer()
            .finish(flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner()).map(Response::new))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = self.xdbc_types.schema();
        self.timer()
            .finish(flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner()).map(Response::new))
    }

    async fn get_flight_info_fallback(
        &self,
        cmd: Command,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        self.timer().finish(Err(malformed(format!("{} is not a command GetFlightInfo accepts", shown(cmd.type_url())))))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let caller = self.caller(&request)?;
        let slot = self.call_slot(&caller, &request)?;
        let timer = self.timer();
        let output = self.run_statement_ticket(&caller, &ticket).await;
        self.respond_statement(timer, output).map(|r| holding(r, slot))
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let caller = self.caller(&request)?;
        let slot = self.call_slot(&caller, &request)?;
        let timer = self.timer();
        let output = self.run_prepared_query(&caller, &query).await;
        self.respond_statement(timer, output).map(|r| holding(r, slot))
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        let timer = self.timer();
        let mut builder = query.into_builder();
        builder.append(CATALOG_NAME);
        self.respond_batch(timer, builder.build().map_err(encode_failure))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        let timer = self.timer();
        let mut builder = query.into_builder();
        builder.append(CATALOG_NAME, SCHEMA_NAME);
        self.respond_batch(timer, builder.build().map_err(encode_failure))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let caller = self.caller(&request)?;
        let timer = self.timer();
        let tables = self.visible_tables(&caller).await;
        self.respond_batch(timer, catalog::tables_batch(query, &tables))
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        let timer = self.timer();
        let mut builder = query.into_builder();
        for table_type in catalog::TABLE_TYPES {
            builder.append(table_type);
        }
        self.respond_batch(timer, builder.build().map_err(encode_failure))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        let timer = self.timer();
        self.respond_batch(timer, query.into_builder(&self.sql_info).build().map_err(encode_failure))
    }

    async fn do_get_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let caller = self.caller(&request)?;
        let timer = self.timer();
        let tables = self.visible_tables(&caller).await;
        self.respond_batch(timer, catalog::primary_keys_batch(&query, &tables))
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        let timer = self.timer();
        self.respond_batch(timer, Ok(RecordBatch::new_empty(catalog::foreign_keys_schema())))
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        let timer = self.timer();
        self.respond_batch(timer, Ok(RecordBatch::new_empty(catalog::foreign_keys_schema())))
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        let timer = self.timer();
        self.respond_batch(timer, Ok(RecordBatch::new_empty(catalog::foreign_keys_schema())))
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        let timer = self.timer();
        self.respond_batch(timer, query.into_builder(&self.xdbc_types).build().map_err(encode_failure))
    }

    async fn do_put_fallback(
        &self,
        request: Request<PeekableFlightDataStream>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoPutStream>, Status> {
        self.caller(&request)?;
        self.timer().finish(Err(malformed(format!("{} is not a command DoPut accepts", shown(&message.type_url)))))
    }

    async fn do_put_error_callback(
        &self,
        request: Request<PeekableFlightDataStream>,
        error: DoPutError,
    ) -> Result<Response<<Self as FlightService>::DoPutStream>, Status> {
        self.caller(&request)?;
        self.timer().finish(Err(malformed(format!("malformed DoPut: {error}"))))
    }

    async fn do_put_statement_update(
        &self,
        ticket: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = self.caller(&request)?;
        let _slot = self.call_slot(&caller, &request)?;
        let timer = self.timer();
        timer.finish(self.run_update(&caller, ticket).await)
    }

    async fn do_put_statement_ingest(
        &self,
        ticket: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = self.caller(&request)?;
        let _slot = self.call_slot(&caller, &request)?;
        let timer = self.timer();
        timer.finish(self.ingest(&caller, ticket, request.into_inner()).await)
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        self.caller(&request)?;
        let timer = self.timer();
        timer.finish(self.bind_parameters(query, request.into_inner()).await)
    }

    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = self.caller(&request)?;
        let _slot = self.call_slot(&caller, &request)?;
        let timer = self.timer();
        timer.finish(self.run_prepared_update(&caller, query, request.into_inner()).await)
    }

    async fn do_put_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.caller(&request)?;
        self.timer().finish(Err(unsupported("Substrait plans")))
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        self.caller(&request)?;
        let action = shown(&request.get_ref().r#type);
        self.timer().finish(Err(malformed(format!("unknown action type \"{action}\""))))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let caller = self.caller(&request)?;
        let timer = self.timer();
        timer.finish(self.create_prepared(&caller, query).await)
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        self.caller(&request)?;
        self.timer().finish(self.prepared.close(&query.prepared_statement_handle))
    }

    async fn do_action_create_prepared_substrait_plan(
        &self,
        _query: ActionCreatePreparedSubstraitPlanRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        self.caller(&request)?;
        self.timer().finish(Err(unsupported("Substrait plans")))
    }

    async fn do_action_begin_transaction(
        &self,
        _query: ActionBeginTransactionRequest,
        request: Request<Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        self.caller(&request)?;
        self.timer().finish(Err(unsupported("Flight SQL transactions (statements autocommit)")))
    }

    async fn do_action_end_transaction(
        &self,
        _query: ActionEndTransactionRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        self.caller(&request)?;
        self.timer().finish(Err(unsupported("Flight SQL transactions (statements autocommit)")))
    }

    async fn do_action_begin_savepoint(
        &self,
        _query: ActionBeginSavepointRequest,
        request: Request<Action>,
    ) -> Result<ActionBeginSavepointResult, Status> {
        self.caller(&request)?;
        self.timer().finish(Err(unsupported("savepoints")))
    }

    async fn do_action_end_savepoint(
        &self,
        _query: ActionEndSavepointRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        self.caller(&request)?;
        self.timer().finish(Err(unsupported("savepoints")))
    }

    async fn do_action_cancel_query(
        &self,
        _query: ActionCancelQueryRequest,
        request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        self.caller(&request)?;
        // Closing the DoGet stream stops a query; there is no separate cancel.
        self.timer().finish(Err(unsupported("CancelQuery; close the result stream to stop a query")))
    }

    /// Ignores the registration: the GetSqlInfo answers are fixed when the service is built.
    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn options(if_not_exist: TableNotExistOption, if_exists: TableExistsOption) -> Option<TableDefinitionOptions> {
        Some(TableDefinitionOptions { if_not_exist: if_not_exist as i32, if_exists: if_exists as i32 })
    }

    #[test]
    fn ingest_plan_maps_every_option_pair() {
        use TableExistsOption as E;
        use TableNotExistOption as N;
        let cases = [
            (N::Create, E::Fail, IngestPlan::Run(IngestMode::Create)),
            (N::Create, E::Append, IngestPlan::Run(IngestMode::CreateOrAppend)),
            (N::Create, E::Replace, IngestPlan::Run(IngestMode::Replace)),
            (N::Fail, E::Append, IngestPlan::Run(IngestMode::Append)),
            (N::Fail, E::Replace, IngestPlan::ReplaceExisting),
            (N::Fail, E::Fail, IngestPlan::Refuse),
        ];
        for (n, e, plan) in cases {
            assert_eq!(ingest_plan(options(n, e)).expect("valid options"), plan, "{n:?} {e:?}");
        }
    }

    #[test]
    fn ingest_plan_refuses_missing_unspecified_and_unknown_options() {
        let unspecified = options(TableNotExistOption::Unspecified, TableExistsOption::Append);
        let unknown = Some(TableDefinitionOptions { if_not_exist: 77, if_exists: 1 });
        for bad in [None, unspecified, unknown] {
            assert_eq!(ingest_plan(bad).expect_err("refused").code(), Code::InvalidArgument);
        }
    }

    #[test]
    fn ingest_target_must_be_quiver_public() {
        let ok = CommandStatementIngest { table: "t".into(), ..Default::default() };
        check_ingest_target(&ok).expect("plain table");
        let qualified = CommandStatementIngest {
            catalog: Some(CATALOG_NAME.into()),
            schema: Some(SCHEMA_NAME.into()),
            ..ok.clone()
        };
        check_ingest_target(&qualified).expect("qualified table");
        let other_schema = CommandStatementIngest { schema: Some("other".into()), ..ok.clone() };
        assert_eq!(check_ingest_target(&other_schema).expect_err("schema").code(), Code::InvalidArgument);
        let temporary = CommandStatementIngest { temporary: true, ..ok.clone() };
        assert_eq!(check_ingest_target(&temporary).expect_err("temporary").code(), Code::Unimplemented);
        let unnamed = CommandStatementIngest { table: String::new(), ..ok };
        assert_eq!(check_ingest_target(&unnamed).expect_err("unnamed").code(), Code::InvalidArgument);
    }

    #[test]
    fn parameter_schema_declares_unknown_types_null() {
        let schema = parameter_schema(&[Some(DataType::Int64), None]);
        assert_eq!(schema.field(0).name(), "$1");
        assert_eq!(schema.field(0).data_type(), &DataType::Int64);
        assert_eq!(schema.field(1).data_type(), &DataType::Null);
    }
}
