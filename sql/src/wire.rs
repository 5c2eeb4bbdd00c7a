//! `tandem sql serve`: the analyst catalog over the Postgres wire protocol, so that `psql`,
//! DBeaver, Metabase, Superset and Grafana connect as to a Postgres server.
//!
//! The protocol, the `pg_catalog` tables BI tools list with and the Arrow-to-Postgres encoding
//! are `datafusion-postgres`'s (on `pgwire`); this module adds what a shared server needs:
//! - **users** are the API keys with the `sql` scope — user name the key's name, password the
//!   key — checked by SCRAM-SHA-256, so the key never crosses the wire; an unknown user fails
//!   exactly as a wrong password does;
//! - **TLS** from configuration; when set, a plain connection is refused;
//! - **one session per connection**: its own DataFusion context over the shared catalog, with
//!   its own memory pool (`sql.memory_limit_mib`), so one analyst's query spills or fails, not
//!   the server;
//! - **a statement timeout** no client can lift: each query message gets `sql.statement_timeout`
//!   from its start to its last row sent; a session's `SET statement_timeout` can only shorten
//!   it;
//! - **read-only**: every statement passes [`crate::guard`] first;
//! - **at most `sql.max_connections`** connections; more are refused with SQLSTATE 53300;
//! - **metrics**: `tandem_sql_connections_total{outcome}` (accepted, refused),
//!   `tandem_sql_sessions` (open now), `tandem_sql_queries_total{outcome}` (ok, error,
//!   timeout) and `tandem_sql_query_seconds` (to the first row).

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::{HookClient, QueryHook};
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, Parser};
use futures::{Sink, SinkExt, Stream};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::Portal;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{QueryResponse, Response};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, ConnectionManager, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::catalog::Catalog;
use crate::{Error, Result};

/// SCRAM's iteration count: PostgreSQL's default.
const SCRAM_ITERATIONS: usize = 4096;

/// What the server is started with (`[sql]` of the configuration and the keys).
#[derive(Clone)]
pub struct WireOptions {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Connections open at once.
    pub max_connections: usize,
    /// The longest a query message may run, rows sent included.
    pub statement_timeout: Duration,
    /// Bytes one session's queries may hold.
    pub memory_limit: usize,
    /// How often the catalog looks for a newer snapshot and new event files.
    pub refresh: Duration,
    /// PEM certificate chain and PKCS#8 key, for TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// (user, password): the API keys with the `sql` scope.
    pub users: Vec<(String, String)>,
}

impl Debug for WireOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireOptions")
            .field("listen", &self.listen)
            .field("max_connections", &self.max_connections)
            .field("statement_timeout", &self.statement_timeout)
            .field("memory_limit", &self.memory_limit)
            .field("tls", &self.tls)
            .field(
                "users",
                &self.users.iter().map(|(u, _)| u).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A bound server; [`Server::run`] serves until the future is dropped.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    catalog: Arc<tokio::sync::Mutex<Catalog>>,
    refresh: Duration,
}

/// What every connection shares.
struct Shared {
    /// The catalog's session: its tables (shared by reference) are every session's.
    base: SessionContext,
    users: Arc<Users>,
    connections: Arc<ConnectionManager>,
    limit: Arc<Semaphore>,
    timeout: Duration,
    memory_limit: usize,
    tls_required: bool,
}

impl Server {
    /// Binds `opts.listen` over `catalog`, with the `pg_catalog` schema added to it.
    pub async fn bind(catalog: Catalog, opts: &WireOptions) -> Result<Server> {
        if opts.users.is_empty() {
            return Err(Error::User(
                "no API key has the `sql` scope: add one to server.api_keys (scopes = [\"sql\"]) \
                 to connect with"
                    .into(),
            ));
        }
        datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog(
            &catalog.ctx,
            "datafusion",
            datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider,
        )
        .map_err(|e| Error::Internal(format!("setting up pg_catalog: {e}")))?;
        let tls = match &opts.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(|e| Error::User(format!("sql.listen {}: {e}", opts.listen)))?;
        let shared = Arc::new(Shared {
            base: catalog.ctx.clone(),
            users: Arc::new(Users::new(&opts.users)),
            connections: Arc::new(ConnectionManager::new()),
            limit: Arc::new(Semaphore::new(opts.max_connections)),
            timeout: opts.statement_timeout,
            memory_limit: opts.memory_limit,
            tls_required: tls.is_some(),
        });
        Ok(Server {
            listener,
            shared,
            tls,
            catalog: Arc::new(tokio::sync::Mutex::new(catalog)),
            refresh: opts.refresh,
        })
    }

    /// The address bound.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::Internal(format!("the listener's address: {e}")))
    }

    /// Accepts connections (and refreshes the catalog) until dropped.
    pub async fn run(self) -> Result<()> {
        let catalog = self.catalog.clone();
        let every = self.refresh;
        let refresher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = catalog.lock().await.refresh().await {
                    tracing::warn!(error = %e, "refreshing the SQL catalog failed; serving the previous one");
                }
            }
        });
        let _stop_refresher = AbortOnDrop(refresher);
        loop {
            let (socket, addr) = match self.listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a SQL connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let shared = self.shared.clone();
            let tls = self.tls.clone();
            tokio::spawn(async move {
                let Ok(permit) = shared.limit.clone().try_acquire_owned() else {
                    metrics::counter!("tandem_sql_connections_total", "outcome" => "refused")
                        .increment(1);
                    tracing::warn!(%addr, "SQL connection refused: sql.max_connections reached");
                    refuse(
                        socket,
                        "53300",
                        "too many connections (sql.max_connections)",
                    )
                    .await;
                    return;
                };
                let handlers = match Connection::new(&shared) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::error!(error = %e, "opening a SQL session failed");
                        return;
                    }
                };
                metrics::counter!("tandem_sql_connections_total", "outcome" => "accepted")
                    .increment(1);
                let sessions = metrics::gauge!("tandem_sql_sessions");
                sessions.increment(1.0);
                if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                    tracing::debug!(%addr, error = %e, "SQL connection ended with an error");
                }
                sessions.decrement(1.0);
                drop(permit);
            });
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Answers a connection over the limit with an error before its startup, as PostgreSQL does.
async fn refuse(socket: tokio::net::TcpStream, code: &str, message: &str) {
    use tokio::io::AsyncWriteExt;
    let mut socket = socket;
    // An ErrorResponse: 'E', length, then S, V, C, M fields, each NUL-ended, and a final NUL.
    let mut body = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(tag);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = vec![b'E'];
    msg.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    msg.extend_from_slice(&body);
    let _ = socket.write_all(&msg).await;
    let _ = socket.shutdown().await;
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<pgwire::tokio::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    // The process's one TLS provider (aws-lc-rs), as every other TLS connection of Tandem.
    tandem_common::tls::init();
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::User(format!("sql.tls_cert {}: {e}", cert.display())))?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::User(format!("sql.tls_key {}: {e}", key.display())))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| Error::User(format!("sql.tls_cert and sql.tls_key: {e}")))?;
    Ok(pgwire::tokio::TlsAcceptor::from(Arc::new(config)))
}

/// The users: each key's SCRAM salted password, computed once at start.
#[derive(Debug)]
struct Users {
    by_name: HashMap<String, (Vec<u8>, Vec<u8>)>,
    /// What an unknown user is checked against, so that it fails as a wrong password does.
    decoy: (Vec<u8>, Vec<u8>),
}

impl Users {
    fn new(users: &[(String, String)]) -> Users {
        let salted = |password: &str| {
            let salt = rand::random::<[u8; 16]>().to_vec();
            let p = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
            (salt, p)
        };
        Users {
            by_name: users.iter().map(|(u, p)| (u.clone(), salted(p))).collect(),
            decoy: salted(&format!("{:x}", rand::random::<u128>())),
        }
    }
}

#[async_trait]
impl AuthSource for Users {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let (salt, password) = login
            .user()
            .and_then(|u| self.by_name.get(u))
            .unwrap_or(&self.decoy);
        Ok(Password::new(Some(salt.clone()), password.clone()))
    }
}

/// One connection's handlers: its startup (authentication) state and its session.
struct Connection {
    startup: Arc<Startup>,
    session: Arc<Session>,
    cancel: Arc<DefaultCancelHandler>,
}

impl Connection {
    fn new(shared: &Shared) -> Result<Connection> {
        let mut params = DefaultServerParameterProvider::default();
        params.is_superuser = false;
        params.default_transaction_read_only = true;
        let mut scram = ScramAuth::new(shared.users.clone());
        scram.set_iterations(SCRAM_ITERATIONS);
        let sasl = SASLAuthStartupHandler::new(Arc::new(params))
            .with_scram(scram)
            .with_connection_manager(shared.connections.clone());
        // The session's own memory pool; the object stores (the lake) and the catalog are the
        // base session's.
        let base = shared.base.state();
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(shared.memory_limit)))
            .with_object_store_registry(base.runtime_env().object_store_registry.clone())
            .build_arc()?;
        let state = SessionStateBuilder::new_from_existing(base)
            .with_runtime_env(runtime)
            .build();
        let ctx = Arc::new(SessionContext::new_with_state(state));
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(ReadOnly),
            Arc::new(CursorStatementHook),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
        ];
        Ok(Connection {
            startup: Arc::new(Startup {
                inner: sasl,
                tls_required: shared.tls_required,
            }),
            session: Arc::new(Session {
                inner: DfSessionService::new_with_hooks(ctx, hooks),
                timeout: shared.timeout,
            }),
            cancel: Arc::new(DefaultCancelHandler::new(shared.connections.clone())),
        })
    }
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

/// SCRAM authentication, after refusing a plain connection when TLS is configured.
struct Startup {
    inner: SASLAuthStartupHandler<DefaultServerParameterProvider>,
    tls_required: bool,
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if self.tls_required && !client.is_secure() {
            let info = ErrorInfo::new(
                "FATAL".into(),
                "28000".into(),
                "this server takes TLS connections only (sslmode=require)".into(),
            );
            client
                .send(PgWireBackendMessage::ErrorResponse(ErrorResponse::from(
                    info,
                )))
                .await?;
            client.close().await?;
            return Ok(());
        }
        self.inner.on_startup(client, message).await
    }
}

/// The read-only check, first of the hooks: a refused statement never reaches the others.
struct ReadOnly;

fn refused(e: Error) -> PgWireError {
    // 25006: read_only_sql_transaction, what PostgreSQL answers a write on a read-only server.
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "25006".into(),
        e.to_string(),
    )))
}

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        crate::guard::check_statement(statement)
            .err()
            .map(|e| Err(refused(e)))
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        crate::guard::check_statement(statement)
            .err()
            .map(|e| Err(refused(e)))
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        // Checked when parsed.
        None
    }
}

/// One connection's session: `datafusion-postgres`'s, each query message under the deadline.
struct Session {
    inner: DfSessionService,
    timeout: Duration,
}

fn timed_out(timeout: Duration) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "57014".into(),
        format!(
            "canceling statement due to statement timeout ({}; sql.statement_timeout, or the \
             session's SET statement_timeout when shorter)",
            humantime::format_duration(timeout)
        ),
    )))
}

/// Where `datafusion-postgres` keeps a session's `SET statement_timeout`, in ms.
const CLIENT_TIMEOUT_KEY: &str = "statement_timeout_ms";

impl Session {
    /// The timeout of the next query and its deadline from now: the configured timeout, or
    /// the client's when shorter.
    fn deadline<C: ClientInfo>(&self, client: &C) -> (Duration, Instant) {
        let timeout = client
            .metadata()
            .get(CLIENT_TIMEOUT_KEY)
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map_or(self.timeout, |ms| {
                self.timeout.min(Duration::from_millis(ms))
            });
        (timeout, Instant::now() + timeout)
    }

    /// `response` with its rows cut off at `deadline` by the timeout error.
    fn bounded(&self, response: Response, deadline: Instant, timeout: Duration) -> Response {
        match response {
            Response::Query(mut q) => {
                let tag = q.command_tag().to_string();
                let rows = std::mem::replace(q.data_rows(), Box::pin(futures::stream::empty()));
                let mut bounded = QueryResponse::new(
                    q.row_schema(),
                    Deadline {
                        rows,
                        sleep: Box::pin(tokio::time::sleep_until(deadline)),
                        timeout,
                        done: false,
                    },
                );
                bounded.set_command_tag(&tag);
                Response::Query(bounded)
            }
            other => other,
        }
    }
}

/// `query` up to its first row, cut off at `deadline`; counted by outcome and timed.
async fn limited<T>(
    timeout: Duration,
    deadline: Instant,
    query: impl Future<Output = PgWireResult<T>>,
) -> PgWireResult<T> {
    let started = Instant::now();
    let r = tokio::time::timeout_at(deadline, query).await;
    let outcome = match &r {
        Ok(Ok(_)) => "ok",
        Ok(Err(_)) => "error",
        Err(_) => "timeout",
    };
    metrics::counter!("tandem_sql_queries_total", "outcome" => outcome).increment(1);
    metrics::histogram!("tandem_sql_query_seconds").record(started.elapsed().as_secs_f64());
    r.map_err(|_| timed_out(timeout))?
}

/// Rows until the deadline, then the timeout error.
struct Deadline {
    rows: pgwire::api::results::SendableRowStream,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    done: bool,
}

type Row = <pgwire::api::results::SendableRowStream as Stream>::Item;

impl Stream for Deadline {
    type Item = Row;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Row>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            metrics::counter!("tandem_sql_queries_total", "outcome" => "timeout").increment(1);
            return Poll::Ready(Some(Err(timed_out(self.timeout))));
        }
        self.rows.as_mut().poll_next(cx)
    }
}

#[async_trait]
impl SimpleQueryHandler for Session {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (timeout, deadline) = self.deadline(client);
        let responses = limited(
            timeout,
            deadline,
            SimpleQueryHandler::do_query(&self.inner, client, query),
        )
        .await?;
        Ok(responses
            .into_iter()
            .map(|r| self.bounded(r, deadline, timeout))
            .collect())
    }
}

#[async_trait]
impl ExtendedQueryHandler for Session {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.inner.query_parser()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (timeout, deadline) = self.deadline(client);
        let response = limited(
            timeout,
            deadline,
            ExtendedQueryHandler::do_query(&self.inner, client, portal, max_rows),
        )
        .await?;
        Ok(self.bounded(response, deadline, timeout))
    }
}
