//! The dispatcher: delivers one event to every handler subscribed to it, each one isolated.
//!
//! # Isolation
//!
//! With [`Isolation::Contained`] (the default) a handler that returns `Err`, panics, or runs past its
//! timeout is logged (with the hook's name, the event and the session), counted in its
//! [`HandlerStats`], and the other handlers run as if nothing happened. Async handlers are cancelled
//! (dropped) at their timeout: the per-hook `timeout = "5s"` if the hook set one, else
//! [`DispatchConfig::default_timeout`].
//!
//! A **plain `fn` handler cannot be interrupted**: it runs on the dispatching task until it returns.
//! The dispatcher still measures it and reports an overrun as a timeout, but it cannot stop it. A hook
//! that does blocking work (file or database I/O, CPU-heavy summaries) should be an `async fn` that
//! moves that work to tokio's blocking pool, so the timeout can abandon it:
//!
//! ```
//! use hooks_core::prelude::*;
//!
//! #[hook(session_end, timeout = "2s")]
//! async fn archive(ev: &SessionEnd) -> Result<(), HookError> {
//!     let lines: Vec<String> = ev.transcript.entries().iter().map(|m| m.text.clone()).collect();
//!     // The blocking write runs on the blocking pool; if it takes longer than 2 s the dispatcher
//!     // stops waiting for it and reports a timeout, and the gateway goes on.
//!     tokio::task::spawn_blocking(move || std::fs::write(std::env::temp_dir().join("last.txt"), lines.join("\n")))
//!         .await
//!         .map_err(HookError::msg)??;
//!     Ok(())
//! }
//! # fn main() {}
//! ```
//!
//! # Order
//!
//! Handlers of one event are started in registry order (ascending priority, then module path, then
//! name). Plain `fn` handlers run to completion when their turn comes; async handlers run
//! concurrently once started, so one slow async handler delays the event's completion (up to its
//! timeout) but not the start of the others. [`Dispatcher::deliver`] returns when every handler is done
//! or cancelled; callers deliver the events of one session key one after another, which is what keeps
//! per-key order. Decision events ([`Command`]) are the exception: their handlers run strictly one
//! after another, because each sees the command as rewritten by the ones before.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Serialize;
use tokio::time::Instant;

use crate::context::{HookContext, HookError, State};
use crate::event::{AnyEvent, Command, CommandDecision};
use crate::registry::{Event, Handler, Hook, Registry};

/// Whether handler failures are contained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Isolation {
    /// Panics are caught, async handlers are cancelled at their timeout, durations are measured.
    #[default]
    Contained,
    /// Handlers are called directly: a panic propagates to the caller and there are no timeouts.
    /// Errors are still counted and logged. For trusted handlers on the hottest paths and for
    /// measuring the cost of isolation.
    Off,
}

/// The dispatcher's settings.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    /// The timeout of a hook that did not set its own; `None` for no limit. Default: 10 seconds, long
    /// enough for a hook that calls a remote service, short enough that a hung one is noticed.
    pub default_timeout: Option<Duration>,
    /// Whether failures are contained. Default: [`Isolation::Contained`].
    pub isolation: Isolation,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self { default_timeout: Some(Duration::from_secs(10)), isolation: Isolation::Contained }
    }
}

/// One hook's timeout and counters, shared by every thread that delivers.
#[derive(Debug, Default)]
struct Slot {
    /// The hook's own timeout, else the dispatcher's default; `None` without isolation.
    timeout: Option<Duration>,
    /// Deliveries of its event that did not call it (a handler skipped by a re-delivery, or behind a
    /// denying command handler): its calls are its event's deliveries minus these, which costs one
    /// locked add per delivery instead of one per call.
    skipped: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
    timeouts: AtomicU64,
    nanos: AtomicU64,
}

/// What happened to one handler call that did not succeed.
#[derive(Debug)]
enum Failure {
    Error(HookError),
    Panic(String),
    Timeout(Duration),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Error(e) => write!(f, "error: {e}"),
            Failure::Panic(m) => write!(f, "panicked: {m}"),
            Failure::Timeout(d) => write!(f, "timed out after {d:?}"),
        }
    }
}

/// One handler's result in [`Dispatcher::deliver_any_detailed`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HandlerOutcome {
    /// The hook's qualified name (`module::path::name`), stable across builds of the same code.
    pub hook: Arc<str>,
    /// `None` if it succeeded, else what went wrong (`error: …`, `panicked: …`, `timed out after …`).
    pub error: Option<String>,
}

/// The result of delivering one observer event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// How many handlers were called.
    pub handlers: usize,
    /// How many of them failed (error, panic or timeout); each was logged and counted.
    pub failed: usize,
}

/// The outcome of a [`Command`] after its decision handlers ran.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// Run the command: `command.text` is the text after every rewrite.
    Allowed {
        /// The command as it should run.
        command: Command,
        /// How many handlers failed (counted as allowing).
        failed: usize,
    },
    /// Do not run it; tell the user `message`.
    Denied {
        /// The command as it stood when it was denied.
        command: Command,
        /// The hook that denied it.
        hook: &'static str,
        /// What to tell the user.
        message: String,
    },
}

/// One handler's counters since the dispatcher was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HandlerStats {
    /// The event, e.g. `"session_end"`.
    pub event: &'static str,
    /// The hook's name.
    pub name: &'static str,
    /// The module that defines it.
    pub module_path: &'static str,
    /// Calls started.
    pub calls: u64,
    /// Calls that returned `Err`.
    pub errors: u64,
    /// Calls that panicked.
    pub panics: u64,
    /// Calls cancelled at (async) or overrunning (sync) their timeout.
    pub timeouts: u64,
    /// Time spent in the handler over all calls, in nanoseconds (measured only with
    /// [`Isolation::Contained`]).
    pub total_nanos: u64,
}

/// Delivers events to the handlers of a [`Registry`]. Cheap to share: wrap it in an `Arc`.
///
/// ```
/// use hooks_core::prelude::*;
/// use hooks_core::dispatch::Dispatcher;
///
/// static SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
///
/// #[hook(gateway_startup)]
/// fn count(_ev: &GatewayStartup) {
///     SEEN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let dispatcher = Dispatcher::from_inventory();
/// let report = dispatcher.deliver(&GatewayStartup::new(jiff::Timestamp::now(), 1)).await;
/// assert_eq!((report.handlers, report.failed), (1, 0));
/// assert_eq!(SEEN.load(std::sync::atomic::Ordering::SeqCst), 1);
/// # }
/// ```
#[derive(Debug)]
pub struct Dispatcher {
    registry: Arc<Registry>,
    state: Arc<State>,
    config: DispatchConfig,
    /// Per event (`Event::INDEX`), one slot per hook in the registry's order.
    slots: Box<[Box<[Slot]>]>,
    /// Per event, how many deliveries (and decisions) began.
    deliveries: Box<[AtomicU64]>,
}

/// How a handler call stands after [`Dispatcher::start`]: finished, or waiting (an async handler still
/// pending after its first poll), as a future that finishes it.
enum Started<'a, T> {
    Done(Result<T, Failure>),
    Waiting(Pin<Box<dyn Future<Output = Result<T, Failure>> + Send + 'a>>),
}

impl Dispatcher {
    /// A dispatcher over `registry` with default settings and empty state.
    pub fn new(registry: impl Into<Arc<Registry>>) -> Self {
        Self::with_config(registry, State::new(), DispatchConfig::default())
    }

    /// A dispatcher over every hook linked into the binary ([`Registry::from_inventory`]).
    pub fn from_inventory() -> Self {
        Self::new(Registry::from_inventory())
    }

    /// A dispatcher over `registry`, handing `state` to hooks, with `config`.
    pub fn with_config(registry: impl Into<Arc<Registry>>, state: State, config: DispatchConfig) -> Self {
        let registry = registry.into();
        let slot = |meta: &&crate::registry::HookMeta| Slot {
            timeout: match config.isolation {
                Isolation::Contained => meta.timeout().or(config.default_timeout),
                Isolation::Off => None,
            },
            ..Slot::default()
        };
        let slots: Box<[Box<[Slot]>]> =
            registry.metas_per_event().iter().map(|metas| metas.iter().map(slot).collect()).collect();
        let deliveries = slots.iter().map(|_| AtomicU64::new(0)).collect();
        Self { registry, state: Arc::new(state), config, slots, deliveries }
    }

    /// The registry it delivers from.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The state handed to hooks.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Its settings.
    pub fn config(&self) -> &DispatchConfig {
        &self.config
    }

    /// Delivers `event` to every handler of its type (first delivery attempt).
    ///
    /// Nothing happens until the returned future is first polled.
    pub async fn deliver<E: Event<Output = ()>>(&self, event: &E) -> Delivery {
        self.deliver_attempt(event, 1).await
    }

    /// Delivers `event` as delivery attempt `attempt` (2 or more when an outbox re-delivers it).
    ///
    /// Nothing happens until the returned future is first polled.
    pub async fn deliver_attempt<E: Event<Output = ()>>(&self, event: &E, attempt: u32) -> Delivery {
        let mut delivery = Delivery::default();
        let report = |_, result: Result<(), Failure>| {
            delivery.handlers += 1;
            delivery.failed += usize::from(result.is_err());
        };
        self.run(event, attempt, |_| true, report).await;
        delivery
    }

    /// Delivers `event` as attempt `attempt` to every handler of its type except those named in `skip`
    /// (qualified names: handlers that already handled it in an earlier attempt), and says how each
    /// one did. An outbox uses this to record delivery per handler and to retry only the failures.
    ///
    /// A [`Command`] is delivered for observation, as in [`deliver_any`](Self::deliver_any), and
    /// reported as one outcome for all its handlers (`skip` does not apply: decisions chain).
    pub async fn deliver_any_detailed(&self, event: &AnyEvent, attempt: u32, skip: &[String]) -> Vec<HandlerOutcome> {
        match event {
            AnyEvent::GatewayStartup(e) => self.deliver_detailed(e, attempt, skip).await,
            AnyEvent::GatewayShutdown(e) => self.deliver_detailed(e, attempt, skip).await,
            AnyEvent::SessionStart(e) => self.deliver_detailed(e, attempt, skip).await,
            AnyEvent::SessionEnd(e) => self.deliver_detailed(e, attempt, skip).await,
            AnyEvent::MessageReceived(e) => self.deliver_detailed(e, attempt, skip).await,
            AnyEvent::AgentTurnStart(e) => self.deliver_detailed(e, attempt, skip).await,
            AnyEvent::AgentTurnEnd(e) => self.deliver_detailed(e, attempt, skip).await,
            AnyEvent::Command(_) => {
                let d = self.deliver_any(event).await;
                let error = (d.failed > 0).then(|| format!("{} of {} command handlers failed", d.failed, d.handlers));
                vec![HandlerOutcome { hook: Arc::from("command"), error }]
            }
        }
    }

    async fn deliver_detailed<E: Event<Output = ()>>(
        &self,
        event: &E,
        attempt: u32,
        skip: &[String],
    ) -> Vec<HandlerOutcome> {
        let names = self.registry.hook_list::<E>().qualified_names();
        let mut outcomes: Vec<Option<HandlerOutcome>> = vec![None; names.len()];
        let called = |i: usize| !skip.iter().any(|s| **s == *names[i]);
        let report = |i: usize, result: Result<(), Failure>| {
            outcomes[i] =
                Some(HandlerOutcome { hook: Arc::clone(&names[i]), error: result.err().map(|f| f.to_string()) });
        };
        self.run(event, attempt, called, report).await;
        outcomes.into_iter().flatten().collect()
    }

    /// Delivers an event of any kind. A [`Command`] is delivered for observation only: its handlers'
    /// decisions are computed, logged at debug level and dropped (use [`decide`](Self::decide) to act
    /// on them).
    pub async fn deliver_any(&self, event: &AnyEvent) -> Delivery {
        match event {
            AnyEvent::GatewayStartup(e) => self.deliver(e).await,
            AnyEvent::GatewayShutdown(e) => self.deliver(e).await,
            AnyEvent::SessionStart(e) => self.deliver(e).await,
            AnyEvent::SessionEnd(e) => self.deliver(e).await,
            AnyEvent::MessageReceived(e) => self.deliver(e).await,
            AnyEvent::AgentTurnStart(e) => self.deliver(e).await,
            AnyEvent::AgentTurnEnd(e) => self.deliver(e).await,
            AnyEvent::Command(e) => {
                let handlers = self.registry.hooks::<Command>().len();
                let verdict = self.decide(e.clone()).await;
                tracing::debug!(?verdict, "command delivered for observation");
                let failed = match verdict {
                    Verdict::Allowed { failed, .. } => failed,
                    Verdict::Denied { .. } => 0,
                };
                Delivery { handlers, failed }
            }
        }
    }

    /// Asks the [`Command`] handlers whether `command` may run; see [`CommandDecision`] for the rule.
    /// They run one after another, each seeing the command as the ones before rewrote it.
    pub async fn decide(&self, mut command: Command) -> Verdict {
        let mut failed = 0;
        self.deliveries[Command::INDEX].fetch_add(1, Ordering::Relaxed);
        let hooks = self.registry.hooks::<Command>();
        for (i, hook) in hooks.iter().enumerate() {
            let result = match self.start(i, hook, &command, 1).await {
                Started::Done(result) => result,
                Started::Waiting(call) => call.await,
            };
            match result {
                Err(_) => failed += 1,
                Ok(CommandDecision::Allow) => {}
                Ok(CommandDecision::Rewrite { text }) => command.text = text,
                Ok(CommandDecision::Deny { message }) => {
                    for later in &self.slots[Command::INDEX][i + 1..] {
                        later.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    return Verdict::Denied { command, hook: hook.meta().name(), message };
                }
            }
        }
        Verdict::Allowed { command, failed }
    }

    /// Every handler's counters, events in catalogue order, handlers in call order.
    pub fn stats(&self) -> Vec<HandlerStats> {
        let metas = self.registry.metas_per_event();
        let per_event = self.slots.iter().zip(&self.deliveries).zip(&metas);
        let slots = per_event.flat_map(|((slots, delivered), metas)| {
            let delivered = delivered.load(Ordering::Relaxed);
            slots.iter().zip(metas).map(move |(slot, meta)| (delivered, slot, meta))
        });
        slots
            .map(|(delivered, slot, meta)| HandlerStats {
                event: meta.event(),
                name: meta.name(),
                module_path: meta.module_path(),
                calls: delivered.saturating_sub(slot.skipped.load(Ordering::Relaxed)),
                errors: slot.errors.load(Ordering::Relaxed),
                panics: slot.panics.load(Ordering::Relaxed),
                timeouts: slot.timeouts.load(Ordering::Relaxed),
                total_nanos: slot.nanos.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The one delivery path: every handler of `event` that `called` selects (by index) is started in
    /// registry order, a plain `fn` run to completion in its turn and an async one polled once; those
    /// still pending then run concurrently until each finishes or times out. `report` hears each
    /// call's index and result (a failure already logged and counted).
    async fn run<E: Event>(
        &self,
        event: &E,
        attempt: u32,
        called: impl Fn(usize) -> bool,
        mut report: impl FnMut(usize, Result<E::Output, Failure>),
    ) {
        self.deliveries[E::INDEX].fetch_add(1, Ordering::Relaxed);
        let mut waiting = Vec::new();
        for (i, hook) in self.registry.hooks::<E>().iter().enumerate() {
            if !called(i) {
                self.slots[E::INDEX][i].skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match self.start(i, hook, event, attempt).await {
                Started::Done(result) => report(i, result),
                Started::Waiting(call) => waiting.push(async move { (i, call.await) }),
            }
        }
        // Most handlers finish on their first poll; joining nothing is not free.
        if waiting.is_empty() {
            return;
        }
        for (i, result) in futures::future::join_all(waiting).await {
            report(i, result);
        }
    }

    /// Calls one handler until it finishes or first waits: a plain `fn` to completion, an async one
    /// for its first poll. With isolation its panic is caught and its time measured, and an async one
    /// still pending is cancelled at its timeout (counted from its start).
    async fn start<'a, E: Event>(
        &'a self,
        index: usize,
        hook: &'a Hook<E>,
        event: &'a E,
        attempt: u32,
    ) -> Started<'a, E::Output> {
        let slot = &self.slots[E::INDEX][index];
        let ctx = self.context(hook, slot, event, attempt);
        let isolated = self.config.isolation == Isolation::Contained;
        // tokio's clock, so that timeouts and times follow paused time in tests.
        let started = isolated.then(Instant::now);
        let f = match hook.handler() {
            Handler::Sync(f) => {
                let result = if isolated {
                    contained(catch_unwind(AssertUnwindSafe(|| f(event, &ctx))))
                } else {
                    f(event, &ctx).map_err(Failure::Error)
                };
                return Started::Done(self.settle(slot, hook, event, started, result));
            }
            Handler::Async(f) => f,
        };
        let mut future = f(event, &ctx);
        let first = if isolated {
            futures::poll!(AssertUnwindSafe(future.as_mut()).catch_unwind())
        } else {
            futures::poll!(future.as_mut()).map(Ok)
        };
        match first {
            Poll::Ready(caught) => Started::Done(self.settle(slot, hook, event, started, contained(caught))),
            Poll::Pending => Started::Waiting(Box::pin(self.finish(slot, hook, event, future, started))),
        }
    }

    fn context<'a, E: Event>(&'a self, hook: &Hook<E>, slot: &Slot, event: &E, attempt: u32) -> HookContext<'a> {
        HookContext {
            hook: hook.meta().name(),
            event_id: event.event_id(),
            session_id: event.session_id(),
            attempt,
            timeout: slot.timeout,
            state: &self.state,
        }
    }

    /// Waits for an async handler that was pending on its first poll.
    async fn finish<'a, E: Event>(
        &'a self,
        slot: &'a Slot,
        hook: &'a Hook<E>,
        event: &'a E,
        future: BoxFuture<'a, Result<E::Output, HookError>>,
        started: Option<Instant>,
    ) -> Result<E::Output, Failure> {
        let result = match (started, slot.timeout) {
            (Some(started), Some(limit)) => {
                match tokio::time::timeout_at(started + limit, AssertUnwindSafe(future).catch_unwind()).await {
                    Ok(caught) => contained(caught),
                    Err(_) => Err(Failure::Timeout(limit)),
                }
            }
            (Some(_), None) => contained(AssertUnwindSafe(future).catch_unwind().await),
            (None, _) => future.await.map_err(Failure::Error),
        };
        self.settle(slot, hook, event, started, result)
    }

    /// Ends a call: adds its time (with isolation), reports a call that returned after its timeout as
    /// timed out (a plain `fn`, or an async one that blocked in a poll: neither can be interrupted),
    /// and logs and counts a failure.
    #[inline]
    fn settle<E: Event>(
        &self,
        slot: &Slot,
        hook: &Hook<E>,
        event: &E,
        started: Option<Instant>,
        mut result: Result<E::Output, Failure>,
    ) -> Result<E::Output, Failure> {
        if let Some(started) = started {
            let elapsed = started.elapsed();
            slot.nanos.fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
            if result.is_ok() && slot.timeout.is_some_and(|limit| elapsed > limit) {
                result = Err(Failure::Timeout(elapsed));
            }
        }
        result.map_err(|failure| self.failed(slot, hook, event, failure))
    }

    #[cold]
    fn failed<E: Event>(&self, slot: &Slot, hook: &Hook<E>, event: &E, failure: Failure) -> Failure {
        let meta = hook.meta();
        let session_id = event.session_id().map(tracing::field::display);
        let event_id = tracing::field::display(event.event_id());
        match &failure {
            Failure::Error(error) => {
                slot.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(hook = meta.name(), module = meta.module_path(), event = E::NAME, session_id, %event_id, %error, "hook returned an error");
            }
            Failure::Panic(message) => {
                slot.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(hook = meta.name(), module = meta.module_path(), event = E::NAME, session_id, %event_id, panic = %message, "hook panicked");
            }
            Failure::Timeout(after) => {
                slot.timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(hook = meta.name(), module = meta.module_path(), event = E::NAME, session_id, %event_id, timeout = ?after, "hook timed out");
            }
        }
        failure
    }
}

/// A handler's result after `catch_unwind`.
fn contained<T>(caught: std::thread::Result<Result<T, HookError>>) -> Result<T, Failure> {
    match caught {
        Ok(result) => result.map_err(Failure::Error),
        Err(payload) => Err(Failure::Panic(panic_message(payload.as_ref()))),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
