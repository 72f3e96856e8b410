//! `serve`: the gateway on live HTTP traffic, with the same session semantics as `replay` on the wall
//! clock (a message's time is its arrival time).
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /v1/messages` | `{"chat_id", "user_id", "text", "platform"?}` | `200 {"session_id", "reply", "welcome"?}` or `{"session_id", "denied": true, "reply"}` |
//! | `POST /telegram/webhook` | a Bot API `Update` | `200` with a `sendMessage` call for the chat (Telegram runs it), or `{}` for an Update without a message |
//! | `GET /healthz` | | `200 {"status": "ok", "open_sessions": N}` |
//! | `GET /metrics` | | Prometheus text: sessions, closes by reason, events, handler failures |
//!
//! Errors are JSON: `{"error": "…"}` with 400 (bad JSON, missing field), 401 (wrong Telegram secret),
//! 413 (body over the limit), 503 (shutting down, or the session store failed).
//!
//! Sessions live in a SQLite database in the data directory by default (`--store`): a `200` answer
//! means the message is committed there. On start the gateway resumes from it: undelivered events are
//! delivered again, sessions that fell due while it was down close (detected late). If the store
//! fails (a full disk), the gateway answers `503`, stops, and exits with the store's error.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hooks_core::dispatch::{Dispatcher, Verdict};
use hooks_core::event::{
    AgentTurnEnd, AgentTurnStart, Command, EventId, GatewayShutdown, GatewayStartup, MessageReceived, TurnOutcome,
};
use hooks_core::lifecycle::{Policy, Routed, SessionIds};
use hooks_core::runtime::{Runtime, RuntimeConfig, RuntimeError, RuntimeHandle, ShutdownReport, TokioClock};
use hooks_core::store::{MemoryStore, SqliteOptions, Store, Synchronous};
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::agent::{Agent, EchoAgent, Turn};
use crate::config::SessionScope;
use crate::durable::{StoreSpec, open_sqlite};
use crate::hooks::metrics::Metrics;
use crate::input::{LineError, Record, is_command, parse_message_body, parse_telegram_update};

/// The header Telegram sends with the webhook's secret token.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// What `serve` needs besides the hooks.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The session policy.
    pub policy: Policy,
    /// The session scope.
    pub scope: SessionScope,
    /// The Telegram webhook secret; `None` accepts any webhook call.
    pub telegram_secret: Option<String>,
    /// The largest accepted request body, in bytes.
    pub body_limit: usize,
    /// How long shutdown waits for hooks to finish delivering.
    pub drain_timeout: Duration,
    /// The data directory (the session database and the events file default to files in it).
    pub data_dir: PathBuf,
    /// Where sessions live.
    pub store: StoreSpec,
    /// The SQLite store's durability setting.
    pub synchronous: Synchronous,
    /// Delivery attempts per event before it becomes a dead letter.
    pub max_attempts: u32,
    /// A cap on the SQLite database's size, in pages of 4 KiB (`None`: no cap).
    pub max_pages: Option<u64>,
}

struct App<A> {
    runtime: RuntimeHandle,
    dispatcher: Arc<Dispatcher>,
    scope: SessionScope,
    secret: Option<String>,
    agent: A,
}

/// Starts the gateway on `listener` and runs it until `shutdown` completes (SIGINT/SIGTERM in the
/// binary), then shuts down gracefully: every open session ends with `shutdown` and its `SessionEnd`
/// is delivered before this returns (within the drain timeout).
///
/// # Errors
///
/// The session store cannot be opened (corrupt, newer schema, read-only), fails while serving, or the
/// server fails.
pub async fn run(
    listener: tokio::net::TcpListener,
    options: ServeOptions,
    dispatcher: Arc<Dispatcher>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<ShutdownReport> {
    match options.store.clone() {
        StoreSpec::Memory => serve_on(listener, options, dispatcher, shutdown, MemoryStore::new()).await,
        StoreSpec::Sqlite(path) => {
            let mut sqlite = SqliteOptions::default().with_synchronous(options.synchronous);
            if let Some(pages) = options.max_pages {
                sqlite = sqlite.with_max_pages(pages);
            }
            let store = open_sqlite(&path, sqlite).await?;
            tracing::info!(path = %path.display(), "session store opened");
            serve_on(listener, options, dispatcher, shutdown, store).await
        }
    }
}

async fn serve_on(
    listener: tokio::net::TcpListener,
    options: ServeOptions,
    dispatcher: Arc<Dispatcher>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    store: impl Store,
) -> Result<ShutdownReport> {
    let startup = GatewayStartup::new(Timestamp::now(), dispatcher.registry().len());
    dispatcher.deliver(&startup).await;
    let config = RuntimeConfig::default().with_max_attempts(options.max_attempts);
    let runtime = Runtime::start_with_config(
        options.policy.clone(),
        SessionIds::Random,
        store,
        Arc::clone(&dispatcher),
        TokioClock::system(),
        config,
    );
    let app = Arc::new(App {
        runtime: runtime.handle().clone(),
        dispatcher: Arc::clone(&dispatcher),
        scope: options.scope,
        secret: options.telegram_secret.clone(),
        agent: EchoAgent,
    });
    let router = router(app, options.body_limit);
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %options.data_dir.display(), "gateway listening");
    let handle = runtime.handle().clone();
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            failure = handle.failed() => tracing::error!(%failure, "the session store failed; stopping"),
        }
    };
    axum::serve(listener, router).with_graceful_shutdown(stop).await.context("HTTP server failed")?;

    tracing::info!("shutting down: closing open sessions");
    let failure = runtime.handle().failure();
    let report = runtime.shutdown(options.drain_timeout).await;
    if let Some(failure) = failure {
        anyhow::bail!(
            "the session store failed: {failure}; nothing after the last commit was recorded, committed data is \
             intact; fix the store and start again"
        );
    }
    let ev = GatewayShutdown::new(Timestamp::now(), report.sessions_closed);
    dispatcher.deliver(&ev).await;
    if report.drained {
        tracing::info!(sessions_closed = report.sessions_closed, "shutdown complete");
    } else {
        tracing::error!(undelivered = report.undelivered.len(), "shutdown drain time ran out; events left undelivered");
    }
    Ok(report)
}

fn router<A: Agent>(app: Arc<App<A>>, body_limit: usize) -> Router {
    Router::new()
        .route("/v1/messages", post(post_message::<A>))
        .route("/telegram/webhook", post(telegram_webhook::<A>))
        .route("/healthz", get(healthz::<A>))
        .route("/metrics", get(metrics::<A>))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

/// An error answer: `{"error": message}` with a status.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request body too large".to_owned()
        } else {
            rejection.body_text()
        };
        ApiError(status, message)
    }
}

impl From<LineError> for ApiError {
    fn from(e: LineError) -> Self {
        ApiError(StatusCode::BAD_REQUEST, e.to_string())
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

/// What handling one message produced.
struct Handled {
    session_id: Option<hooks_core::event::SessionId>,
    reply: String,
    denied: bool,
    /// The message opened its session (a welcome is on its way).
    opened: bool,
}

impl<A: Agent> App<A> {
    /// Routes one incoming message: command hooks, the lifecycle, `MessageReceived`, the agent turn.
    async fn handle(&self, rec: Record<'_>) -> Result<Handled, ApiError> {
        let key = self.scope.key(&rec.platform, &rec.chat_id, &rec.user_id);
        let mut text = rec.text.into_owned();
        if is_command(&text) {
            let open = self.runtime.open_session(key.clone()).await?;
            let command = Command::new(EventId::new_random(), open, key.clone(), &*rec.user_id, Timestamp::now(), text);
            match self.dispatcher.decide(command).await {
                Verdict::Allowed { command, .. } => text = command.text,
                Verdict::Denied { message, hook, .. } => {
                    tracing::info!(%key, hook, "command denied");
                    return Ok(Handled { session_id: open, reply: message, denied: true, opened: false });
                }
            }
        }
        let routed: Routed = self.runtime.message(key.clone(), &*rec.user_id, text.clone()).await?;
        let sid = routed.session_id;
        let received =
            MessageReceived::new(EventId::new_random(), sid, key.clone(), &*rec.user_id, routed.at, text.clone());
        self.runtime.emit(key.clone(), received)?;

        let started = Timestamp::now();
        self.runtime
            .emit(key.clone(), AgentTurnStart::new(EventId::new_random(), sid, key.clone(), started, text.clone()))?;
        let turn = Turn { session_id: sid, key: &key, text: &text, reset: routed.command.is_some() };
        let outcome = match self.agent.reply(turn).await {
            Ok(reply) => TurnOutcome::Reply { text: reply },
            Err(error) => TurnOutcome::Error { error },
        };
        let reply = match &outcome {
            TurnOutcome::Reply { text } => text.clone(),
            TurnOutcome::Error { .. } => "Sorry, the agent failed to answer. Please try again.".to_owned(),
        };
        let end = AgentTurnEnd::new(EventId::new_random(), sid, key.clone(), started, Timestamp::now(), outcome);
        // Answer only once the message's events are committed: an answered message is never missing
        // its `message_received` or agent turn after a crash.
        self.runtime.emit_committed(key, end).await?;
        Ok(Handled { session_id: Some(sid), reply, denied: false, opened: routed.opened })
    }

    /// The welcome queued for the handled message's session. The `SessionStart` that queues it is
    /// delivered by another task after the commit, so for a session this message opened, wait a moment
    /// for it (a slow hook makes the welcome come with the next reply instead).
    async fn welcome(&self, handled: &Handled) -> Option<String> {
        let greeter = self.dispatcher.state().get::<gateway_plugin_memory::Greeter>()?;
        let session = handled.session_id?;
        let mut waits = if handled.opened { 100 } else { 0 };
        loop {
            if let Some(text) = greeter.take(session) {
                return Some(text);
            }
            if waits == 0 {
                return None;
            }
            waits -= 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

async fn post_message<A: Agent>(
    State(app): State<Arc<App<A>>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let body = body?;
    let rec = parse_message_body(&body, Timestamp::now())?;
    let handled = app.handle(rec).await?;
    let mut answer = json!({ "session_id": handled.session_id.map(|s| s.to_string()), "reply": handled.reply });
    if handled.denied {
        answer["denied"] = Value::Bool(true);
    }
    if let Some(welcome) = app.welcome(&handled).await {
        answer["welcome"] = Value::String(welcome);
    }
    Ok(axum::Json(answer))
}

async fn telegram_webhook<A: Agent>(
    State(app): State<Arc<App<A>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if let Some(secret) = &app.secret {
        let given = headers.get(SECRET_HEADER).map(|v| v.as_bytes());
        if given != Some(secret.as_bytes()) {
            return Err(ApiError(StatusCode::UNAUTHORIZED, format!("missing or wrong {SECRET_HEADER} header")));
        }
    }
    let body = body?;
    let Some(rec) = parse_telegram_update(&body, Timestamp::now())? else {
        return Ok(axum::Json(json!({})).into_response());
    };
    let chat_id: Value =
        rec.chat_id.parse::<i64>().map_or_else(|_| Value::String(rec.chat_id.to_string()), Value::from);
    let handled = app.handle(rec).await?;
    let mut text = handled.reply.clone();
    if let Some(welcome) = app.welcome(&handled).await {
        text = format!("{welcome}\n\n{text}");
    }
    // Telegram runs a Bot API method given in the webhook's answer: the reply needs no second request.
    let mut response = axum::Json(json!({ "method": "sendMessage", "chat_id": chat_id, "text": text })).into_response();
    if let Some(sid) = handled.session_id.and_then(|s| s.to_string().parse().ok()) {
        response.headers_mut().insert("x-session-id", sid);
    }
    Ok(response)
}

async fn healthz<A: Agent>(State(app): State<Arc<App<A>>>) -> axum::Json<Value> {
    axum::Json(json!({ "status": "ok", "open_sessions": app.runtime.metrics().open_sessions }))
}

async fn metrics<A: Agent>(State(app): State<Arc<App<A>>>) -> Response {
    let m = app.runtime.metrics();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let plain = |v: u64| vec![(String::new(), v)];
    metric("gateway_open_sessions", "gauge", "Sessions open now.", &plain(m.open_sessions));
    metric("gateway_sessions_opened_total", "counter", "Sessions opened.", &plain(m.sessions_opened));
    let closes: Vec<(String, u64)> =
        hooks_core::event::CloseReason::ALL.iter().map(|r| (format!("{{reason=\"{r}\"}}"), m.closed(*r))).collect();
    metric("gateway_sessions_closed_total", "counter", "Sessions closed, by close reason.", &closes);
    metric("gateway_messages_total", "counter", "Messages routed to sessions.", &plain(m.messages));
    metric(
        "gateway_events_delivered_total",
        "counter",
        "Events delivered to every handler.",
        &plain(m.events_delivered),
    );
    metric("gateway_events_pending", "gauge", "Events recorded and not yet delivered.", &plain(m.deliveries_pending));
    metric(
        "gateway_dead_letters",
        "gauge",
        "Events whose handlers kept failing, kept in the store's dead-letter state (see `dead-letters list`).",
        &plain(m.dead_letters),
    );
    metric(
        "gateway_events_redelivered_total",
        "counter",
        "Events delivered again at start because the previous process stopped before delivering them.",
        &plain(m.redelivered),
    );
    metric(
        "gateway_sessions_restored",
        "gauge",
        "Sessions found open in the store at start and resumed.",
        &plain(m.sessions_restored),
    );
    metric("gateway_store_errors_total", "counter", "Session store operations that failed.", &plain(m.store_errors));
    let stats = app.dispatcher.stats();
    let per_hook = |f: fn(&hooks_core::dispatch::HandlerStats) -> u64| -> Vec<(String, u64)> {
        stats
            .iter()
            .map(|s| (format!("{{event=\"{}\",hook=\"{}::{}\"}}", s.event, s.module_path, s.name), f(s)))
            .collect()
    };
    metric("gateway_handler_calls_total", "counter", "Handler calls, per hook.", &per_hook(|s| s.calls));
    metric("gateway_handler_errors_total", "counter", "Handler calls that returned an error.", &per_hook(|s| s.errors));
    metric("gateway_handler_panics_total", "counter", "Handler calls that panicked.", &per_hook(|s| s.panics));
    metric("gateway_handler_timeouts_total", "counter", "Handler calls past their timeout.", &per_hook(|s| s.timeouts));
    if let Some(hook_metrics) = app.dispatcher.state().get::<Metrics>() {
        let snap = hook_metrics.snapshot();
        metric("gateway_commands_total", "counter", "Commands seen by the command hooks.", &plain(snap.commands));
        metric("gateway_agent_turns_total", "counter", "Agent turns finished.", &plain(snap.agent_turns));
        metric("gateway_agent_errors_total", "counter", "Agent turns that failed.", &plain(snap.agent_errors));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response()
}

/// Resolves when the process receives SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when
/// this is called, not when it is first awaited: a signal that arrives right after start-up (a
/// supervisor stopping a gateway it just started) already means a graceful shutdown. Call it inside a
/// Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        let (interrupt, terminate) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()));
        async fn received(name: &str, signal: std::io::Result<Signal>) {
            match signal {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(%e, "cannot listen for {name}");
                    std::future::pending::<()>().await;
                }
            }
        }
        async move {
            tokio::select! {
                () = received("SIGINT", interrupt) => tracing::info!("SIGINT received"),
                () = received("SIGTERM", terminate) => tracing::info!("SIGTERM received"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C received");
    }
}
