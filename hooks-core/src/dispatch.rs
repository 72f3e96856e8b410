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
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde::Serialize;
use thread_local::ThreadLocal;

use crate::context::{HookContext, HookError, State};
use crate::event::{AnyEvent, Command, CommandDecision};
use crate::registry::{EVENT_NAMES, Event, Handler, Hook, HookMeta, Registry};

/// The clock that times plain `fn` handlers with isolation: `quanta`'s, read raw (the CPU's time
/// stamp counter) instead of `std`'s `clock_gettime`. Every isolated handler call takes one reading,
/// and on the 2-core VM of docs/benchmarks.md a `std::time::Instant::now()` cost 39-56 ns against
/// ~19 ns for the bare counter. Making the first dispatcher in a process calibrates the counter
/// against the OS clock (~0.6 ms, once, whatever the isolation); where the counter is not usable (not
/// invariant, as in some VMs), quanta falls back to the OS clock, whose ticks are nanoseconds.
///
/// A call's time stays in ticks: it is added to the handler's sum of ticks and compared with the
/// handler's timeout converted to ticks once, when the dispatcher is made. Only a sum that is read
/// ([`Dispatcher::stats`]) or a timeout that is reported is scaled to nanoseconds. (Scaling every
/// call's difference, a 128-bit multiply and shift, and comparing it as a `Duration` cost ~29
/// instructions per handler call: isolated sync N = 10 / 100, 1,182 / 10,992 → 893 / 8,093
/// instructions per event.)
///
/// Async handlers are timed on tokio's clock instead, so that their timeouts follow paused time in
/// tests like every tokio timer.
#[derive(Clone, Debug)]
struct Stopwatch {
    clock: quanta::Clock,
    /// Nanoseconds in 2^32 ticks, for converting the other way ([`ticks_in`](Self::ticks_in)).
    nanos_per_2_32_ticks: u64,
}

impl Stopwatch {
    fn new() -> Self {
        let clock = quanta::Clock::new();
        let nanos_per_2_32_ticks = clock.delta_as_nanos(0, 1 << 32).max(1);
        Self { clock, nanos_per_2_32_ticks }
    }

    /// A reading, in the clock's own ticks.
    #[inline]
    fn now(&self) -> u64 {
        self.clock.raw()
    }

    /// The ticks from reading `start` to reading `end` (0 if `end` is not later, as quanta's own
    /// differences: counters of different cores may disagree slightly).
    #[inline]
    fn ticks(start: u64, end: u64) -> u64 {
        end.saturating_sub(start)
    }

    /// `ticks` in nanoseconds.
    fn nanos_in(&self, ticks: u64) -> u64 {
        self.clock.delta_as_nanos(0, ticks)
    }

    /// The most ticks a call may take without overrunning `limit`: a call of more ticks is one whose
    /// time in whole nanoseconds ([`nanos_in`](Self::nanos_in)) is above `limit`, exactly as when
    /// each call's time was scaled and compared. (quanta scales by `ticks * F >> S` with `S` at most
    /// 32, so `N`, the nanoseconds in 2^32 ticks, is exact, and a time is above `limit` (`T` ns)
    /// when `ticks * N >= (T + 1) * 2^32`.) Saturating: no call overruns `Duration::MAX`.
    fn ticks_in(&self, limit: Duration) -> u64 {
        let ticks = (((limit.as_nanos() + 1) << 32) - 1) / u128::from(self.nanos_per_2_32_ticks);
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }
}

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

/// One handler's counts of the rare things, shared by all threads (a locked add each).
#[derive(Debug, Default)]
struct Counters {
    /// Deliveries of the handler's event in which it was not called (a command denied before its
    /// turn, a re-delivery that skipped it): calls = the event's deliveries minus these. Counting
    /// deliveries once per event instead of calls once per handler saves an add per call.
    not_called: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
    timeouts: AtomicU64,
}

/// The counts that every delivery writes, one set per thread that delivers: each thread writes only
/// its own, so counting is a plain load and store where a shared counter needs a locked add (~15 ns
/// on the VM of docs/benchmarks.md, more than a no-op handler's whole call). [`Dispatcher::stats`]
/// sums the sets. The first thread to deliver keeps its set in the dispatcher itself; the others get
/// theirs from `thread_local::ThreadLocal`, which hands the set of a thread that exited to a new
/// thread only after the first is gone, so no set ever has two writers.
#[derive(Debug)]
struct Tally {
    /// Deliveries per event (`Event::INDEX`).
    deliveries: [AtomicU64; EVENT_NAMES.len()],
    /// Per event and handler: its time, and its timeout (as its context shows it, and in ticks).
    handlers: Box<[Box<[HandlerTally]>]>,
}

/// One handler's time in one thread's [`Tally`] (with [`Isolation::Contained`]), and its timeout,
/// kept next to it so that one lookup finds both.
#[derive(Debug)]
struct HandlerTally {
    /// Ticks of the [`Stopwatch`] spent in calls of a plain `fn` handler.
    ticks: AtomicU64,
    /// Nanoseconds spent in calls of an async handler (tokio's clock).
    nanos: AtomicU64,
    limit: Limit,
}

/// A handler's timeout, as its context shows it and in the stopwatch's ticks.
#[derive(Clone, Copy, Debug)]
struct Limit {
    /// The hook's own timeout, else the dispatcher's default; `None` without isolation.
    timeout: Option<Duration>,
    /// A plain `fn` call that took more ticks than this overran `timeout` (`u64::MAX`: no timeout).
    ticks: u64,
}

impl Tally {
    /// A tally of zeros, for handlers with these limits (per event, per handler).
    fn new(limits: &[Box<[Limit]>]) -> Self {
        let zeros = |limits: &[Limit]| {
            limits
                .iter()
                .map(|&limit| HandlerTally { ticks: AtomicU64::new(0), nanos: AtomicU64::new(0), limit })
                .collect()
        };
        Self {
            deliveries: std::array::from_fn(|_| AtomicU64::new(0)),
            handlers: limits.iter().map(|l| zeros(l)).collect(),
        }
    }

    /// Adds `n` to one of this thread's counters. Not a read-modify-write: sound only because the
    /// calling thread is the counter's one writer (readers may see the old or the new value).
    #[inline]
    fn add(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// The handlers of `E`, in call order.
    #[inline]
    fn handlers<E: Event>(&self) -> &[HandlerTally] {
        &self.handlers[E::INDEX]
    }

    /// Counts `nanos` against handler `index` of `E`; this must be the calling thread's tally.
    #[inline]
    fn add_nanos<E: Event>(&self, index: usize, nanos: u64) {
        Self::add(&self.handlers::<E>()[index].nanos, nanos);
    }
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
    counters: Vec<Box<[Counters]>>,
    /// Per event (`Event::INDEX`) and handler, its timeout: the shape and the limits of each thread's
    /// [`Tally`].
    limits: Box<[Box<[Limit]>]>,
    /// The counts of the first thread that delivered (its [`thread_key`], 0 before), kept inline: a
    /// gateway usually delivers from one thread, and comparing a key is cheaper than the general
    /// per-thread lookup.
    owner: AtomicU64,
    owner_tally: Tally,
    /// Every other thread's counts.
    tallies: ThreadLocal<Tally>,
    stopwatch: Stopwatch,
}

/// A key for the calling thread, never 0 and never reused (unlike `thread_local`'s ids, which a new
/// thread inherits from one that exited): the thread that owns [`Dispatcher::owner_tally`] is the
/// only one that will ever have its key.
#[inline]
fn thread_key() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static KEY: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
    KEY.with(|key| match key.get() {
        0 => {
            let fresh = NEXT.fetch_add(1, Ordering::Relaxed);
            key.set(fresh);
            fresh
        }
        known => known,
    })
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
        let stopwatch = Stopwatch::new();
        // Shaped like the hook lists themselves, so that the delivery loops can walk a list and its
        // tallies together.
        let limit = |meta: &&HookMeta| {
            let timeout = match config.isolation {
                Isolation::Contained => meta.timeout().or(config.default_timeout),
                Isolation::Off => None,
            };
            Limit { timeout, ticks: timeout.map_or(u64::MAX, |t| stopwatch.ticks_in(t)) }
        };
        let limits: Box<[Box<[Limit]>]> =
            registry.metas_per_event().iter().map(|metas| metas.iter().map(limit).collect()).collect();
        let counters = limits.iter().map(|l| l.iter().map(|_| Counters::default()).collect()).collect();
        let owner_tally = Tally::new(&limits);
        Self {
            registry,
            state: Arc::new(state),
            config,
            counters,
            limits,
            owner: AtomicU64::new(0),
            owner_tally,
            tallies: ThreadLocal::new(),
            stopwatch,
        }
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
    pub fn deliver<'a, E: Event<Output = ()>>(&'a self, event: &'a E) -> Deliver<'a, E> {
        self.deliver_attempt(event, 1)
    }

    /// Delivers `event` as delivery attempt `attempt` (2 or more when an outbox re-delivers it).
    ///
    /// Nothing happens until the returned future is first polled.
    pub fn deliver_attempt<'a, E: Event<Output = ()>>(&'a self, event: &'a E, attempt: u32) -> Deliver<'a, E> {
        Deliver(Delivering::new(self, event, attempt, Failures(0)))
    }

    /// Every handler is a plain `fn`: one context for all of them, and one clock read per handler
    /// (each handler's end is the next one's start). Only handlers that `outcomes` calls are called
    /// (the others are counted as not called); `outcomes` hears each one's result, in order (a failure
    /// already logged and counted). `tally` is this thread's (there is no await on this path, so the
    /// thread cannot change).
    #[inline]
    fn deliver_sync<E: Event>(
        &self,
        tally: &Tally,
        hooks: &[Hook<E>],
        event: &E,
        attempt: u32,
        outcomes: &mut impl Outcomes<E::Output>,
    ) {
        let mut ctx = self.context(event, attempt);
        if self.config.isolation == Isolation::Off {
            // Nothing to measure or catch: call each handler and look closer only at an error.
            for (i, hook) in hooks.iter().enumerate() {
                if !outcomes.called(i) {
                    self.counters::<E>(i).not_called.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Handler::Sync(f) = hook.handler() else { unreachable!("deliver_sync with an async hook") };
                ctx.hook = hook.meta().name();
                match f(event, &ctx) {
                    Ok(out) => outcomes.report(i, Ok(out)),
                    Err(error) => outcomes.report(i, self.settle(i, hook, event, Err(Failure::Error(error)))),
                }
            }
            return;
        }
        let mut clock = Some(self.stopwatch.now());
        // The handlers' tallies are looked up once per delivery. (`Tally` holds atomics, so the
        // compiler must assume that a handler call may write through `&Tally`, and cannot hoist the
        // lookup out of the loop itself.) The two lists have one shape by construction.
        let tallies = tally.handlers::<E>();
        debug_assert_eq!(tallies.len(), hooks.len());
        for ((i, hook), mine) in hooks.iter().enumerate().zip(tallies) {
            if !outcomes.called(i) {
                self.counters::<E>(i).not_called.fetch_add(1, Ordering::Relaxed);
                // The next handler's time starts at its own call, not at the last one's end.
                clock = None;
                continue;
            }
            Self::prepare(&mut ctx, hook, mine);
            outcomes.report(i, self.call_sync(mine, i, hook, event, &ctx, Isolation::Contained, &mut clock));
        }
    }

    /// At least one handler is async: the first poll of a [`Delivering`]. Handlers start in registry
    /// order: a plain `fn` runs when its turn comes; an async one is polled once right away with `cx`,
    /// and only if it is still pending does it get a timeout and wait, concurrently with the others,
    /// until every handler is done. Most handlers finish on their first poll, so the common case
    /// allocates nothing beyond each handler's own future (which holds a copy of the context if the
    /// handler takes one). A pending one costs two allocations more (its [`PendingCall`], and the
    /// join of them all, made once per delivery). Only handlers that `outcomes` calls are called (the
    /// others are counted as not called); `outcomes` hears the result of each one that finished
    /// (already logged and counted). Returns the ones still pending, each waiting for its end, or
    /// `None` if none is. `tally` is this thread's (this runs within one poll).
    ///
    /// `ISOLATED` is whether the dispatcher's isolation is [`Isolation::Contained`]: the loop is
    /// compiled once for each setting, so that the one without isolation carries none of the clock
    /// and panic-catching branches.
    #[inline]
    fn start_all<'a, E: Event, const ISOLATED: bool>(
        &'a self,
        cx: &mut Context<'_>,
        tally: &Tally,
        hooks: &'a [Hook<E>],
        event: &'a E,
        attempt: u32,
        outcomes: &mut impl Outcomes<E::Output>,
    ) -> Option<Vec<PendingCall<'a, E>>> {
        // One context for all the handlers, as in `deliver_sync`: an async handler is lent it for the
        // call only, and copies it into its future if it needs it there.
        let mut ctx = self.context(event, attempt);
        let mut waiting = None;
        // With isolation, the reading at which the previous handler ended, which is when the next one
        // starts: one clock read per handler instead of two, as in `deliver_sync`. Plain `fn` handlers
        // chain stopwatch readings; async ones chain readings of tokio's clock, so that their timeouts
        // follow paused time in tests like every tokio timer.
        let (mut clock, mut async_clock) = (None, None);
        let isolation = if ISOLATED { Isolation::Contained } else { Isolation::Off };
        let tallies = tally.handlers::<E>();
        debug_assert_eq!(tallies.len(), hooks.len());
        for ((i, hook), mine) in hooks.iter().enumerate().zip(tallies) {
            if !outcomes.called(i) {
                self.counters::<E>(i).not_called.fetch_add(1, Ordering::Relaxed);
                (clock, async_clock) = (None, None);
                continue;
            }
            Self::prepare(&mut ctx, hook, mine);
            let f = match hook.handler() {
                Handler::Sync(_) => {
                    async_clock = None;
                    outcomes.report(i, self.call_sync(mine, i, hook, event, &ctx, isolation, &mut clock));
                    continue;
                }
                Handler::Async(f) => f,
            };
            clock = None;
            let started = (isolation == Isolation::Contained)
                .then(|| async_clock.take().unwrap_or_else(tokio::time::Instant::now));
            let mut future = f(event, &ctx);
            let first = match isolation {
                Isolation::Off => Ok(future.as_mut().poll(cx)),
                Isolation::Contained => catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))),
            };
            let result = match first {
                Ok(Poll::Pending) => {
                    let finish = self.finish_async(i, hook, event, future, started, ctx.timeout);
                    let call = Box::pin(async move { (i, finish.await) }) as PendingCall<'a, E>;
                    waiting.get_or_insert_with(Vec::new).push(call);
                    continue;
                }
                Ok(Poll::Ready(result)) => result.map_err(Failure::Error),
                Err(payload) => Err(Failure::Panic(panic_message(payload.as_ref()))),
            };
            if let Some(started) = started {
                let ended = tokio::time::Instant::now();
                Tally::add(&mine.nanos, nanos(ended - started));
                async_clock = Some(ended);
            }
            if result.is_err() {
                // A failure is logged before the next handler starts: that is not the next one's time.
                async_clock = None;
            }
            outcomes.report(i, self.settle(i, hook, event, result));
        }
        waiting
    }

    /// Waits for an async handler that was pending on its first poll, until its timeout counted from
    /// `started`.
    async fn finish_async<'a, E: Event>(
        &self,
        index: usize,
        hook: &Hook<E>,
        event: &E,
        future: futures::future::BoxFuture<'a, Result<E::Output, HookError>>,
        started: Option<tokio::time::Instant>,
        timeout: Option<Duration>,
    ) -> Result<E::Output, Failure> {
        let result = match (self.config.isolation, started) {
            (Isolation::Contained, Some(started)) => {
                let future = AssertUnwindSafe(future).catch_unwind();
                let result = match timeout {
                    Some(limit) => tokio::time::timeout_at(started + limit, future).await.map_err(|_| limit),
                    None => Ok(future.await),
                };
                self.tally().add_nanos::<E>(index, nanos(started.elapsed()));
                match result {
                    Err(limit) => Err(Failure::Timeout(limit)),
                    Ok(Err(payload)) => Err(Failure::Panic(panic_message(payload.as_ref()))),
                    Ok(Ok(result)) => result.map_err(Failure::Error),
                }
            }
            _ => future.await.map_err(Failure::Error),
        };
        self.settle(index, hook, event, result)
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
        // The same paths as `deliver`, told which handlers to skip and collecting each one's outcome.
        let names = self.registry.hook_list::<E>().qualified_names();
        let outcomes = Detailed { skip, names, out: names.iter().map(|_| None).collect() };
        let detailed = Delivering::new(self, event, attempt, outcomes).await;
        detailed.out.into_iter().flatten().collect()
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
    pub async fn decide(&self, mut command: Command) -> Verdict {
        let hooks = self.registry.hooks::<Command>();
        let mut ctx = self.context(&command, 1);
        self.delivered::<Command>();
        let mut failed = 0;
        for (i, hook) in hooks.iter().enumerate() {
            match self.call(i, hook, &command, &mut ctx).await {
                Err(_) => failed += 1,
                Ok(CommandDecision::Allow) => {}
                Ok(CommandDecision::Rewrite { text }) => command.text = text,
                Ok(CommandDecision::Deny { message }) => {
                    for later in i + 1..hooks.len() {
                        self.counters::<Command>(later).not_called.fetch_add(1, Ordering::Relaxed);
                    }
                    return Verdict::Denied { command, hook: hook.meta().name(), message };
                }
            }
        }
        Verdict::Allowed { command, failed }
    }

    /// Every handler's counters, events in catalogue order, handlers in call order.
    pub fn stats(&self) -> Vec<HandlerStats> {
        // Every thread's counts, summed.
        let mut deliveries = vec![0u64; self.limits.len()];
        // Per handler: nanoseconds (async calls) and ticks (plain `fn` calls), scaled once, below.
        let mut times: Vec<Vec<(u64, u64)>> = self.limits.iter().map(|l| vec![(0, 0); l.len()]).collect();
        for tally in std::iter::once(&self.owner_tally).chain(&self.tallies) {
            for (sum, part) in deliveries.iter_mut().zip(&tally.deliveries) {
                *sum += part.load(Ordering::Relaxed);
            }
            for (sum, part) in times.iter_mut().flatten().zip(tally.handlers.iter().flatten()) {
                sum.0 = sum.0.saturating_add(part.nanos.load(Ordering::Relaxed));
                sum.1 = sum.1.saturating_add(part.ticks.load(Ordering::Relaxed));
            }
        }
        let nanos: Vec<Vec<u64>> = times
            .into_iter()
            .map(|event| event.into_iter().map(|(n, t)| n.saturating_add(self.stopwatch.nanos_in(t))).collect())
            .collect();
        let metas = self.registry.metas();
        let counters = self
            .counters
            .iter()
            .enumerate()
            .flat_map(|(event, c)| c.iter().enumerate().map(move |(i, c)| (event, i, c)));
        metas
            .into_iter()
            .zip(counters)
            .map(|(m, (event, i, c))| HandlerStats {
                event: m.event(),
                name: m.name(),
                module_path: m.module_path(),
                calls: deliveries[event] - c.not_called.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
                panics: c.panics.load(Ordering::Relaxed),
                timeouts: c.timeouts.load(Ordering::Relaxed),
                total_nanos: nanos[event][i],
            })
            .collect()
    }

    fn context<E: Event>(&self, event: &E, attempt: u32) -> HookContext<'_> {
        HookContext {
            hook: "",
            event_id: event.event_id(),
            session_id: event.session_id(),
            attempt,
            timeout: None,
            state: &self.state,
        }
    }

    fn counters<E: Event>(&self, index: usize) -> &Counters {
        &self.counters[E::INDEX][index]
    }

    /// This thread's counts.
    #[inline]
    fn tally(&self) -> &Tally {
        let me = thread_key();
        let owner = self.owner.load(Ordering::Relaxed);
        if owner == me
            || (owner == 0 && self.owner.compare_exchange(0, me, Ordering::Relaxed, Ordering::Relaxed).is_ok())
        {
            return &self.owner_tally;
        }
        self.tallies.get_or(|| Tally::new(&self.limits))
    }

    /// Counts a delivery of `E`; returns this thread's counts, good until the next await that can
    /// suspend (a task may move to another thread there; a [`Delivering`]'s first poll cannot suspend).
    #[inline]
    fn delivered<E: Event>(&self) -> &Tally {
        let tally = self.tally();
        Tally::add(&tally.deliveries[E::INDEX], 1);
        tally
    }

    /// Fills in the per-handler part of a context.
    #[inline]
    fn prepare<E: Event>(ctx: &mut HookContext<'_>, hook: &Hook<E>, mine: &HandlerTally) {
        ctx.hook = hook.meta().name();
        ctx.timeout = mine.limit.timeout;
    }

    /// Calls a plain `fn` handler with a [prepared](Self::prepare) context; `Err` if it failed (already
    /// reported). `isolation` is the dispatcher's, read by the caller once per delivery (`self` holds
    /// atomics, so the compiler would read it again after every handler call). With isolation, `clock`
    /// may hold the reading at which the call starts (taken by the caller) and is left at the reading
    /// at which it ended, or emptied if it failed (logging the failure is not the next handler's
    /// time); the time is counted in `mine`, the handler's tally of this thread.
    // Inlined into the delivery loops: the context and the clock reading then stay in registers, and
    // an isolated plain `fn` handler cost ~50 instructions less (session 8: sync isolated, N = 100,
    // 16,091 → 10,992 instructions per event; a replay, ~3 handler calls a record: −156 per record).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn call_sync<E: Event>(
        &self,
        mine: &HandlerTally,
        index: usize,
        hook: &Hook<E>,
        event: &E,
        ctx: &HookContext<'_>,
        isolation: Isolation,
        clock: &mut Option<u64>,
    ) -> Result<E::Output, Failure> {
        let Handler::Sync(f) = hook.handler() else { unreachable!("call_sync on an async hook") };
        let result = match isolation {
            Isolation::Off => f(event, ctx).map_err(Failure::Error),
            Isolation::Contained => {
                let started = clock.unwrap_or_else(|| self.stopwatch.now());
                let result = catch_unwind(AssertUnwindSafe(|| f(event, ctx)));
                let ended = self.stopwatch.now();
                let ticks = Stopwatch::ticks(started, ended);
                Tally::add(&mine.ticks, ticks);
                let outcome = match result {
                    Err(payload) => Err(Failure::Panic(panic_message(payload.as_ref()))),
                    Ok(Err(e)) => Err(Failure::Error(e)),
                    Ok(Ok(_)) if ticks > mine.limit.ticks => {
                        Err(Failure::Timeout(Duration::from_nanos(self.stopwatch.nanos_in(ticks))))
                    }
                    Ok(Ok(out)) => Ok(out),
                };
                // A failure is logged before the next handler starts, which is not that one's time.
                *clock = outcome.is_ok().then_some(ended);
                outcome
            }
        };
        self.settle(index, hook, event, result)
    }

    /// Calls any handler; `Err` if it failed (already reported).
    async fn call<E: Event>(
        &self,
        index: usize,
        hook: &Hook<E>,
        event: &E,
        ctx: &mut HookContext<'_>,
    ) -> Result<E::Output, Failure> {
        let mine = &self.tally().handlers::<E>()[index];
        Self::prepare(ctx, hook, mine);
        let f = match hook.handler() {
            Handler::Sync(_) => return self.call_sync(mine, index, hook, event, ctx, self.config.isolation, &mut None),
            Handler::Async(f) => f,
        };
        let result = match self.config.isolation {
            Isolation::Off => f(event, ctx).await.map_err(Failure::Error),
            Isolation::Contained => {
                let started = Instant::now();
                let fut = AssertUnwindSafe(f(event, ctx)).catch_unwind();
                let result = match ctx.timeout {
                    Some(limit) => tokio::time::timeout(limit, fut).await.map_err(|_| limit),
                    None => Ok(fut.await),
                };
                self.tally().add_nanos::<E>(index, nanos(started.elapsed()));
                match result {
                    Err(limit) => Err(Failure::Timeout(limit)),
                    Ok(Err(payload)) => Err(Failure::Panic(panic_message(payload.as_ref()))),
                    Ok(Ok(Err(e))) => Err(Failure::Error(e)),
                    Ok(Ok(Ok(out))) => Ok(out),
                }
            }
        };
        self.settle(index, hook, event, result)
    }

    /// Passes a success through; counts and logs a failure ([`failed`](Self::failed)).
    #[inline]
    fn settle<E: Event>(
        &self,
        index: usize,
        hook: &Hook<E>,
        event: &E,
        result: Result<E::Output, Failure>,
    ) -> Result<E::Output, Failure> {
        match result {
            Ok(out) => Ok(out),
            Err(failure) => Err(self.failed(index, hook, event, failure)),
        }
    }

    /// Counts and logs a handler's failure (out of line: the call path is for successes).
    #[cold]
    #[inline(never)]
    fn failed<E: Event>(&self, index: usize, hook: &Hook<E>, event: &E, failure: Failure) -> Failure {
        let counters = self.counters::<E>(index);
        let meta = hook.meta();
        let session_id = event.session_id().map(tracing::field::display);
        let event_id = tracing::field::display(event.event_id());
        match &failure {
            Failure::Error(error) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(hook = meta.name(), module = meta.module_path(), event = E::NAME, session_id, %event_id, %error, "hook returned an error");
            }
            Failure::Panic(message) => {
                counters.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(hook = meta.name(), module = meta.module_path(), event = E::NAME, session_id, %event_id, panic = %message, "hook panicked");
            }
            Failure::Timeout(after) => {
                counters.timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(hook = meta.name(), module = meta.module_path(), event = E::NAME, session_id, %event_id, timeout = ?after, "hook timed out");
            }
        }
        failure
    }
}

/// The future of [`Dispatcher::deliver`] and [`Dispatcher::deliver_attempt`]: delivers the event to
/// every handler of its type and resolves to the [`Delivery`] once each one is done or cancelled.
///
/// Nothing happens until it is first polled. Its first poll counts the delivery, runs every plain `fn`
/// handler and polls every async one once, in registry order; a delivery whose handlers all finish
/// there (the common case) is complete after that one poll. Async handlers still pending then run
/// concurrently, each until its end or its timeout, and the future resolves after the last. (Each
/// pending handler is polled once more within that first poll: that poll starts its timeout.)
///
/// Dropping it before it resolves cancels the handlers still pending: their futures are dropped, as
/// at a timeout, but [`Dispatcher::stats`] counts them only as calls (not as timeouts, and without
/// their time).
///
/// It is `Send`, so a task that awaits it can run on any runtime worker. Polling it after it resolved,
/// or after a poll that panicked (a handler's panic without isolation), panics: the event is never
/// delivered twice by one `Deliver`.
#[must_use = "a delivery does nothing until it is awaited"]
pub struct Deliver<'a, E: Event>(Delivering<'a, E, Failures>);

impl<E: Event> Future for Deliver<'_, E> {
    type Output = Delivery;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Delivery> {
        let delivering = &mut self.get_mut().0;
        let registry = &delivering.dispatcher.registry;
        Pin::new(delivering).poll(cx).map(|Failures(failed)| Delivery { handlers: registry.hooks::<E>().len(), failed })
    }
}

impl<E: Event> std::fmt::Debug for Deliver<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.0;
        let state = match (&d.outcomes, &d.waiting) {
            (Some(_), None) => "not started",
            (Some(_), Some(_)) => "waiting for async handlers",
            (None, _) => "resolved (or a poll panicked)",
        };
        f.debug_struct("Deliver")
            .field("event", &E::NAME)
            .field("event_id", &d.event.event_id())
            .field("attempt", &d.attempt)
            .field("state", &state)
            .finish()
    }
}

/// An async handler that was still pending after its first poll, waiting for its end or its timeout;
/// resolves to its index in the hook list and its result (a failure already logged and counted).
type PendingCall<'a, E> = Pin<Box<dyn Future<Output = (usize, Result<<E as Event>::Output, Failure>)> + Send + 'a>>;

/// Which handlers a delivery calls, and what it does with each one's result.
trait Outcomes<T> {
    /// Whether handler `index` (in call order) is called: all are, unless a re-delivery skips some.
    #[inline]
    fn called(&self, index: usize) -> bool {
        let _ = index;
        true
    }

    /// Hears handler `index`'s result, a failure already logged and counted.
    fn report(&mut self, index: usize, result: Result<T, Failure>);
}

/// Counts the handlers that failed ([`Dispatcher::deliver_attempt`]).
#[derive(Debug)]
struct Failures(usize);

impl<T> Outcomes<T> for Failures {
    #[inline]
    fn report(&mut self, _index: usize, result: Result<T, Failure>) {
        self.0 += usize::from(result.is_err());
    }
}

/// Skips the handlers named in `skip` and keeps each other one's outcome
/// ([`Dispatcher::deliver_any_detailed`]).
#[derive(Debug)]
struct Detailed<'a> {
    skip: &'a [String],
    /// Every handler's qualified name, in call order.
    names: &'a [Arc<str>],
    /// Per handler, its outcome; `None` for the skipped ones.
    out: Vec<Option<HandlerOutcome>>,
}

impl Outcomes<()> for Detailed<'_> {
    fn called(&self, index: usize) -> bool {
        !self.skip.iter().any(|s| **s == *self.names[index])
    }

    fn report(&mut self, index: usize, result: Result<(), Failure>) {
        let error = result.err().map(|f| f.to_string());
        self.out[index] = Some(HandlerOutcome { hook: Arc::clone(&self.names[index]), error });
    }
}

/// One delivery of an event, written out as a future instead of an `async fn`: the first poll does
/// the work in one plain loop ([`Dispatcher::deliver_sync`] or [`Dispatcher::start_all`]), with
/// nothing of it kept in the future between polls but what pending async handlers need. Resolves to
/// its [`Outcomes`]. (As an `async fn` that took the first polls in a `poll_fn`, every argument and
/// capture was stored into the future's state before the loop and read back from it: one async
/// handler that does not take its context, without isolation, cost 446 instructions per event, 363
/// with mimalloc; written out, 396 and 296 (371 and 271 with the context lent, not copied; 338 and
/// 256 since [`Dispatcher::start_all`] is compiled per isolation setting). A plain `fn` handler's
/// delivery cost ~7 more when this was written, 101 → 108 (105 now): this struct is stored whole
/// before it is polled, and its `waiting` tested when it is dropped.)
struct Delivering<'a, E: Event, O> {
    dispatcher: &'a Dispatcher,
    event: &'a E,
    attempt: u32,
    /// Until the delivery resolves, when it is handed back.
    outcomes: Option<O>,
    /// The async handlers still pending after their first poll; `None` before the first poll, and
    /// after it if none was. (Boxed: dropping a `None` is then one test, where the inline `JoinAll`'s
    /// drop glue cost ~20 instructions at the end of every delivery.)
    waiting: Option<Box<futures::future::JoinAll<PendingCall<'a, E>>>>,
}

impl<'a, E: Event, O: Outcomes<E::Output>> Delivering<'a, E, O> {
    #[inline]
    fn new(dispatcher: &'a Dispatcher, event: &'a E, attempt: u32, outcomes: O) -> Self {
        Self { dispatcher, event, attempt, outcomes: Some(outcomes), waiting: None }
    }
}

impl<'a, E: Event, O: Outcomes<E::Output> + Unpin> Future for Delivering<'a, E, O> {
    type Output = O;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<O> {
        let this = self.get_mut();
        if this.waiting.is_none() {
            // The first poll. `outcomes` leaves `self` while the handlers run, so that a poll after
            // one that panicked (a handler without isolation) panics too instead of delivering the
            // event a second time.
            let Some(mut outcomes) = this.outcomes.take() else {
                panic!("a delivery polled after it resolved or panicked")
            };
            let d = this.dispatcher;
            // Nothing here suspends, so the thread, and with it this thread's tally, stays.
            let tally = d.delivered::<E>();
            let list = d.registry.hook_list::<E>();
            if list.all_sync() {
                d.deliver_sync(tally, list.as_slice(), this.event, this.attempt, &mut outcomes);
                return Poll::Ready(outcomes);
            }
            let (hooks, event, attempt) = (list.as_slice(), this.event, this.attempt);
            let pending = match d.config.isolation {
                Isolation::Contained => d.start_all::<E, true>(cx, tally, hooks, event, attempt, &mut outcomes),
                Isolation::Off => d.start_all::<E, false>(cx, tally, hooks, event, attempt, &mut outcomes),
            };
            let Some(pending) = pending else {
                return Poll::Ready(outcomes);
            };
            this.outcomes = Some(outcomes);
            // Polled right away, below: that starts each one's timeout.
            this.waiting = Some(Box::new(futures::future::join_all(pending)));
        }
        let waiting = this.waiting.as_mut().expect("set by the first poll");
        let done = std::task::ready!(Pin::new(&mut **waiting).poll(cx));
        this.waiting = None;
        let mut outcomes = this.outcomes.take().expect("kept while handlers are pending");
        for (i, result) in done {
            outcomes.report(i, result);
        }
        Poll::Ready(outcomes)
    }
}

/// A duration in whole nanoseconds, saturating (at 584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain `fn` call overruns its timeout exactly when its time, scaled to whole nanoseconds as
    /// `stats` scales it, is above the timeout: the limit in ticks is the last count that is not.
    #[test]
    fn the_tick_limit_is_the_last_count_within_the_timeout() {
        let watch = Stopwatch::new();
        let limits = [0, 1, 2, 3, 999, 1_000, 5_000_000, 10_000_000_000, 86_400_000_000_000];
        for nanos in limits {
            let limit = Duration::from_nanos(nanos);
            let ticks = watch.ticks_in(limit);
            assert!(watch.nanos_in(ticks) <= nanos, "{limit:?}: {ticks} ticks are {} ns", watch.nanos_in(ticks));
            assert!(
                watch.nanos_in(ticks + 1) > nanos,
                "{limit:?}: {} ticks are {} ns",
                ticks + 1,
                watch.nanos_in(ticks + 1)
            );
        }
        assert_eq!(watch.ticks_in(Duration::MAX), u64::MAX, "no call overruns Duration::MAX");
    }

    use std::sync::atomic::AtomicUsize;

    use futures::future::BoxFuture;

    use crate::event::{EventId, MessageReceived, SessionId, SessionKey};

    fn message() -> MessageReceived {
        let key = SessionKey::chat("test", "dispatch");
        MessageReceived::new(
            EventId::from_u128(7),
            SessionId::from_u128(3),
            key,
            "user",
            jiff::Timestamp::UNIX_EPOCH,
            "hi",
        )
    }

    static CALLS: AtomicUsize = AtomicUsize::new(0);

    fn counts(_ev: &MessageReceived, _ctx: &HookContext<'_>) -> Result<(), HookError> {
        CALLS.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// An async handler whose future never completes and never arranges to be woken.
    fn never_wakes<'a>(_ev: &'a MessageReceived, _ctx: &HookContext<'a>) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(std::future::pending())
    }

    /// Plain handlers that count their calls, one per test (the tests run in parallel).
    static BEHIND_WAITER: AtomicUsize = AtomicUsize::new(0);
    static BEHIND_PANIC: AtomicUsize = AtomicUsize::new(0);

    fn behind_waiter(_ev: &MessageReceived, _ctx: &HookContext<'_>) -> Result<(), HookError> {
        BEHIND_WAITER.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn behind_panic(_ev: &MessageReceived, _ctx: &HookContext<'_>) -> Result<(), HookError> {
        BEHIND_PANIC.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn is_send<T: Send>(_: &T) {}

    /// `deliver`'s future is lazy (the doc says so), `Send`, and refuses a poll after it resolved
    /// instead of delivering the event twice.
    #[tokio::test]
    async fn a_delivery_runs_when_first_polled_and_only_once() {
        let dispatcher = Dispatcher::new(Registry::empty().with(Hook::from_sync("counts", counts)));
        let ev = message();
        let before = CALLS.load(Ordering::SeqCst);
        let delivery = dispatcher.deliver(&ev);
        is_send(&delivery);
        assert_eq!(CALLS.load(Ordering::SeqCst), before, "nothing runs before the first poll");
        let mut delivery = std::pin::pin!(delivery);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(delivery.as_mut().poll(&mut cx), Poll::Ready(Delivery { handlers: 1, failed: 0 }));
        assert_eq!(CALLS.load(Ordering::SeqCst), before + 1);
        let again = catch_unwind(AssertUnwindSafe(|| delivery.as_mut().poll(&mut cx)));
        assert!(again.is_err(), "a second poll after the delivery resolved must panic");
        assert_eq!(CALLS.load(Ordering::SeqCst), before + 1, "and must not call the handler again");
        assert_eq!(dispatcher.stats()[0].calls, 1);
    }

    static PANICS_CALLS: AtomicUsize = AtomicUsize::new(0);

    fn panics(_ev: &MessageReceived, _ctx: &HookContext<'_>) -> Result<(), HookError> {
        PANICS_CALLS.fetch_add(1, Ordering::SeqCst);
        panic!("a handler without isolation panics");
    }

    /// Without isolation a handler's panic reaches the caller through the delivery's poll; polling
    /// that delivery again panics as well, and does not deliver the event a second time.
    #[test]
    fn a_delivery_whose_poll_panicked_does_not_deliver_again() {
        let registry = Registry::empty().with(Hook::from_sync("panics", panics));
        let config = DispatchConfig { isolation: Isolation::Off, ..DispatchConfig::default() };
        let dispatcher = Dispatcher::with_config(registry, State::new(), config);
        let ev = message();
        let mut delivery = std::pin::pin!(dispatcher.deliver(&ev));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let first = catch_unwind(AssertUnwindSafe(|| delivery.as_mut().poll(&mut cx)));
        assert!(first.is_err(), "the handler's panic propagates without isolation");
        let again = catch_unwind(AssertUnwindSafe(|| delivery.as_mut().poll(&mut cx)));
        assert!(again.is_err(), "a poll after a panicked one must panic");
        assert_eq!(PANICS_CALLS.load(Ordering::SeqCst), 1, "the handler ran once");
        assert_eq!(dispatcher.stats()[0].calls, 1, "one delivery counted");
    }

    /// Sets its flag when dropped: tells whether a handler's future was dropped.
    struct DropFlag(&'static std::sync::atomic::AtomicBool);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    static WAITER_DROPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// Pending until its event's sender wakes it: here, never.
    fn waits<'a>(_ev: &'a MessageReceived, _ctx: &HookContext<'a>) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            let _flag = DropFlag(&WAITER_DROPPED);
            std::future::pending::<()>().await;
            Ok(())
        })
    }

    /// Dropping a delivery with a handler still pending drops that handler's future (it is
    /// cancelled), counts it as a call only, and leaves the dispatcher able to deliver again.
    #[tokio::test(start_paused = true)]
    async fn dropping_a_delivery_cancels_its_pending_handlers() {
        let registry = Registry::empty()
            .with(Hook::from_async("waits", waits))
            .with(Hook::from_sync("behind_waiter", behind_waiter));
        let dispatcher = Dispatcher::new(registry);
        let ev = message();
        let before = BEHIND_WAITER.load(Ordering::SeqCst);
        let cut = tokio::time::timeout(Duration::from_millis(10), dispatcher.deliver(&ev)).await;
        assert!(cut.is_err(), "the waiting handler keeps the delivery pending");
        assert!(WAITER_DROPPED.load(Ordering::SeqCst), "its future was dropped with the delivery");
        assert_eq!(BEHIND_WAITER.load(Ordering::SeqCst), before + 1, "the plain handler behind it ran");
        let waits = dispatcher.stats().into_iter().find(|s| s.name == "waits").expect("stats");
        assert_eq!((waits.calls, waits.timeouts, waits.errors), (1, 0, 0));
        // The next delivery is whole again: it too is cut, and counts a second call.
        WAITER_DROPPED.store(false, Ordering::SeqCst);
        assert!(tokio::time::timeout(Duration::from_millis(10), dispatcher.deliver(&ev)).await.is_err());
        assert!(WAITER_DROPPED.load(Ordering::SeqCst));
        assert_eq!(BEHIND_WAITER.load(Ordering::SeqCst), before + 2);
    }

    /// Panics in its first poll, before any await.
    fn panics_first<'a>(_ev: &'a MessageReceived, _ctx: &HookContext<'a>) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async move { panic!("an async handler panics on its first poll") })
    }

    /// With isolation, an async handler that panics on its first poll is one failure among the
    /// handlers; the ones after it still run.
    #[tokio::test]
    async fn an_async_handler_panicking_on_its_first_poll_is_contained() {
        let registry = Registry::empty()
            .with(Hook::from_async("panics_first", panics_first))
            .with(Hook::from_sync("behind_panic", behind_panic));
        let dispatcher = Dispatcher::new(registry);
        let before = BEHIND_PANIC.load(Ordering::SeqCst);
        let delivery = dispatcher.deliver(&message()).await;
        assert_eq!(delivery, Delivery { handlers: 2, failed: 1 });
        assert_eq!(BEHIND_PANIC.load(Ordering::SeqCst), before + 1);
        let stats = dispatcher.stats().into_iter().find(|s| s.name == "panics_first").expect("stats");
        assert_eq!((stats.calls, stats.panics), (1, 1));
    }

    /// A handler pending after its first poll gets its timeout at once, in that same poll of the
    /// delivery: one that never wakes the task is still cancelled when its timeout passes.
    #[tokio::test(start_paused = true)]
    async fn a_handler_that_never_wakes_is_cancelled_at_its_timeout() {
        let registry = Registry::empty().with(Hook::from_async("never_wakes", never_wakes));
        let config = DispatchConfig { default_timeout: Some(Duration::from_millis(50)), ..DispatchConfig::default() };
        let dispatcher = Dispatcher::with_config(registry, State::new(), config);
        let started = tokio::time::Instant::now();
        let ev = message();
        let delivery = tokio::time::timeout(Duration::from_secs(1), dispatcher.deliver(&ev))
            .await
            .expect("the delivery must end at the handler's 50 ms timeout");
        assert_eq!(delivery, Delivery { handlers: 1, failed: 1 });
        assert_eq!(started.elapsed(), Duration::from_millis(50), "cancelled at its timeout, on paused time");
        let stats = &dispatcher.stats()[0];
        assert_eq!((stats.calls, stats.timeouts), (1, 1));
    }
}
