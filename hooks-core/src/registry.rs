//! The typed registry: for each event type, the hooks subscribed to it, collected at link time through
//! [`inventory`] and sorted once.
//!
//! `#[hook(session_end)]` puts a [`Hook<SessionEnd>`] into the binary's inventory. [`Registry::global`]
//! gathers every event's hooks the first time it is called and sorts them by
//! (priority ascending, module path, name), so the order is the same on every run and machine.
//!
//! ```standalone_crate
//! use hooks_core::prelude::*;
//! use hooks_core::registry::Registry;
//!
//! #[hook(session_end, priority = -5)]
//! fn first(_ev: &SessionEnd) {}
//!
//! #[hook(session_end)]
//! async fn second(_ev: &SessionEnd) {}
//!
//! let names: Vec<_> = Registry::global().hooks::<SessionEnd>().iter().map(|h| h.meta().name()).collect();
//! assert_eq!(names, ["first", "second"]);
//! ```

use std::fmt;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;

use crate::context::{HookContext, HookError};
use crate::event::{
    AgentTurnEnd, AgentTurnStart, Command, CommandDecision, EventId, GatewayShutdown, GatewayStartup, MessageReceived,
    SessionEnd, SessionId, SessionStart,
};

mod sealed {
    pub trait Sealed {}
}

/// A type that hooks can subscribe to: one of the event structs of [`crate::event`].
///
/// Sealed: the catalogue is fixed by this crate, so that `#[hook(...)]` can check every event name and
/// signature at compile time.
pub trait Event: sealed::Sealed + Sized + fmt::Debug + Serialize + Send + Sync + 'static {
    /// The event's name in `#[hook(...)]`, on the wire and in logs, e.g. `"session_end"`.
    const NAME: &'static str;

    /// What one handler answers: `()` for observer events, [`CommandDecision`] for [`Command`].
    type Output: Default + Send + 'static;

    /// This event's id.
    fn event_id(&self) -> EventId;

    /// The session the event belongs to, if any (for logs and [`HookContext::session_id`]).
    fn session_id(&self) -> Option<SessionId>;

    #[doc(hidden)]
    /// Not public API: the position of this event in [`EVENT_NAMES`].
    const INDEX: usize;

    #[doc(hidden)]
    /// Not public API: this event's hook list in `registry`.
    fn __hooks(registry: &Registry) -> &HookList<Self>;

    #[doc(hidden)]
    /// Not public API.
    fn __hooks_mut(registry: &mut Registry) -> &mut HookList<Self>;
}

/// A synchronous handler as stored in the registry (the `#[hook]` macro writes the shim).
pub type SyncHandler<E> = fn(&E, &HookContext<'_>) -> Result<<E as Event>::Output, HookError>;

/// An asynchronous handler as stored in the registry (the `#[hook]` macro writes the shim). Its future
/// may borrow the event (`'a`) but not the context, which is lent only for the call (`'b`): a handler
/// that needs the context in its future copies it in (`HookContext` is `Copy`, ~80 bytes), and the
/// macro's shim does so only for a function that takes it. The dispatcher thus keeps no contexts for
/// pending futures to borrow, and copies none for handlers that do not use theirs.
///
/// Written by hand (tests, tools), a handler that uses its context after an `.await` copies it first:
///
/// ```
/// use futures::future::BoxFuture;
/// use hooks_core::event::SessionEnd;
/// use hooks_core::registry::{Hook, Registry};
/// use hooks_core::{HookContext, HookError};
///
/// fn archive<'a>(ev: &'a SessionEnd, ctx: &HookContext<'a>) -> BoxFuture<'a, Result<(), HookError>> {
///     let ctx = *ctx; // lent for this call only: the future keeps a copy
///     Box::pin(async move {
///         tokio::task::yield_now().await;
///         assert_eq!(ctx.session_id(), Some(ev.session_id));
///         Ok(())
///     })
/// }
///
/// let registry = Registry::empty().with(Hook::<SessionEnd>::from_async("archive", archive));
/// assert_eq!(registry.hooks::<SessionEnd>().len(), 1);
/// ```
pub type AsyncHandler<E> =
    for<'a, 'b> fn(&'a E, &'b HookContext<'a>) -> BoxFuture<'a, Result<<E as Event>::Output, HookError>>;

/// A handler function: called inline (sync) or awaited (async).
pub enum Handler<E: Event> {
    /// A plain `fn`: runs on the dispatching task, to completion (it cannot be cancelled).
    Sync(SyncHandler<E>),
    /// An `async fn`: awaited, and dropped if it runs past its timeout.
    Async(AsyncHandler<E>),
}

impl<E: Event> Clone for Handler<E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E: Event> Copy for Handler<E> {}

impl<E: Event> fmt::Debug for Handler<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Handler::Sync(_) => "Handler::Sync",
            Handler::Async(_) => "Handler::Async",
        })
    }
}

/// Whether a hook is a plain `fn` or an `async fn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HandlerKind {
    /// A plain `fn`.
    Sync,
    /// An `async fn`.
    Async,
}

/// What is known about a hook without calling it: for the `hooks` listing, logs and the link check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HookMeta {
    event: &'static str,
    name: &'static str,
    module_path: &'static str,
    file: &'static str,
    line: u32,
    priority: i32,
    timeout: Option<Duration>,
    kind: HandlerKind,
}

impl HookMeta {
    /// Describes a hook. `timeout` of `None` means the dispatcher's default applies.
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        event: &'static str,
        name: &'static str,
        module_path: &'static str,
        file: &'static str,
        line: u32,
        priority: i32,
        timeout: Option<Duration>,
        kind: HandlerKind,
    ) -> Self {
        Self { event, name, module_path, file, line, priority, timeout, kind }
    }

    /// The event's name, e.g. `"session_end"`.
    pub const fn event(&self) -> &'static str {
        self.event
    }

    /// The hook's name: the function's name unless `name = "…"` was given.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The module that defines it, e.g. `"memory_plugin::hooks"`.
    pub const fn module_path(&self) -> &'static str {
        self.module_path
    }

    /// The crate that defines it: the first segment of [`module_path`](Self::module_path).
    pub fn crate_name(&self) -> &'static str {
        self.module_path.split("::").next().unwrap_or(self.module_path)
    }

    /// `module_path::name`, the name the link check matches.
    pub fn qualified_name(&self) -> String {
        format!("{}::{}", self.module_path, self.name)
    }

    /// The source file of the function, as `file!()` gives it.
    pub const fn file(&self) -> &'static str {
        self.file
    }

    /// The line of the `#[hook]` attribute.
    pub const fn line(&self) -> u32 {
        self.line
    }

    /// The priority: hooks of one event run in ascending priority (default 0; `-10` runs before `0`).
    pub const fn priority(&self) -> i32 {
        self.priority
    }

    /// The hook's own timeout (`timeout = "5s"`), if it set one.
    pub const fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Whether it is a plain or an async function.
    pub const fn kind(&self) -> HandlerKind {
        self.kind
    }
}

/// One subscription: a handler for events of type `E`, with its [`HookMeta`].
pub struct Hook<E: Event> {
    meta: HookMeta,
    handler: Handler<E>,
}

impl<E: Event> Hook<E> {
    /// A hook from its parts. `#[hook]` calls this; build hooks by hand only for tests and benchmarks.
    pub const fn new(meta: HookMeta, handler: Handler<E>) -> Self {
        Self { meta, handler }
    }

    /// A hook named `name` for a plain function, priority 0, default timeout.
    pub const fn from_sync(name: &'static str, f: SyncHandler<E>) -> Self {
        Self::new(HookMeta::new(E::NAME, name, "", "", 0, 0, None, HandlerKind::Sync), Handler::Sync(f))
    }

    /// A hook named `name` for an async shim, priority 0, default timeout.
    pub const fn from_async(name: &'static str, f: AsyncHandler<E>) -> Self {
        Self::new(HookMeta::new(E::NAME, name, "", "", 0, 0, None, HandlerKind::Async), Handler::Async(f))
    }

    /// This hook with priority `priority`.
    #[must_use]
    pub const fn with_priority(mut self, priority: i32) -> Self {
        self.meta.priority = priority;
        self
    }

    /// This hook with its own timeout.
    #[must_use]
    pub const fn with_timeout(mut self, timeout: Duration) -> Self {
        self.meta.timeout = Some(timeout);
        self
    }

    /// What is known about the hook.
    pub const fn meta(&self) -> &HookMeta {
        &self.meta
    }

    /// The handler.
    pub const fn handler(&self) -> Handler<E> {
        self.handler
    }
}

impl<E: Event> Clone for Hook<E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E: Event> Copy for Hook<E> {}

impl<E: Event> fmt::Debug for Hook<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hook").field("meta", &self.meta).field("handler", &self.handler).finish()
    }
}

/// The sorted hooks of one event type.
pub struct HookList<E: Event> {
    hooks: Vec<Hook<E>>,
    all_sync: bool,
    /// Each hook's [`qualified_name`](HookMeta::qualified_name), made on first use (per-handler
    /// delivery reports name every handler; formatting the name per event cost more than the call).
    names: OnceLock<Box<[Arc<str>]>>,
}

impl<E: Event> HookList<E> {
    fn new(mut hooks: Vec<Hook<E>>) -> Self {
        hooks.sort_by(|a, b| {
            let (a, b) = (&a.meta, &b.meta);
            (a.priority, a.module_path, a.name, a.file, a.line).cmp(&(
                b.priority,
                b.module_path,
                b.name,
                b.file,
                b.line,
            ))
        });
        let all_sync = hooks.iter().all(|h| matches!(h.handler, Handler::Sync(_)));
        Self { hooks, all_sync, names: OnceLock::new() }
    }

    /// Each hook's qualified name (`module::path::name`), in call order.
    pub fn qualified_names(&self) -> &[Arc<str>] {
        self.names.get_or_init(|| self.hooks.iter().map(|h| Arc::from(h.meta.qualified_name())).collect())
    }

    /// The hooks in the order the dispatcher calls them.
    pub fn as_slice(&self) -> &[Hook<E>] {
        &self.hooks
    }

    /// Whether every hook is a plain `fn` (the dispatcher then needs no allocation per event).
    pub fn all_sync(&self) -> bool {
        self.all_sync
    }
}

impl<E: Event> fmt::Debug for HookList<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.hooks.iter().map(|h| h.meta.name)).finish()
    }
}

/// Declares the catalogue once: the `Event` impls, the registry's fields and the inventory collections.
macro_rules! catalogue {
    ($( $index:literal $field:ident : $ty:ty => $name:literal, output $out:ty, session $sid:expr; )*) => {
        /// Every event's name, in catalogue order (what `#[hook(...)]` accepts).
        pub const EVENT_NAMES: &[&str] = &[$($name),*];

        $(
            impl sealed::Sealed for $ty {}

            impl Event for $ty {
                const NAME: &'static str = $name;
                type Output = $out;
                const INDEX: usize = $index;

                #[inline]
                fn event_id(&self) -> EventId {
                    self.event_id
                }

                #[inline]
                fn session_id(&self) -> Option<SessionId> {
                    let f: fn(&$ty) -> Option<SessionId> = $sid;
                    f(self)
                }

                fn __hooks(registry: &Registry) -> &HookList<Self> {
                    &registry.$field
                }

                fn __hooks_mut(registry: &mut Registry) -> &mut HookList<Self> {
                    &mut registry.$field
                }
            }

            inventory::collect!(Hook<$ty>);
        )*

        /// Every hook of every event, sorted per event. See the [module docs](self).
        pub struct Registry {
            $( $field: HookList<$ty>, )*
        }

        impl Registry {
            /// A registry with no hooks (add some with [`with`](Self::with)).
            pub fn empty() -> Self {
                Self { $( $field: HookList::new(Vec::new()), )* }
            }

            /// A registry of every hook linked into this binary through `#[hook]`.
            pub fn from_inventory() -> Self {
                Self {
                    $( $field: HookList::new(inventory::iter::<Hook<$ty>>.into_iter().copied().collect()), )*
                }
            }

            /// Every hook's description: events in catalogue order, hooks in call order.
            pub fn metas(&self) -> Vec<&HookMeta> {
                self.metas_per_event().into_iter().flatten().collect()
            }

            /// Every hook's description, one list per event (indexed by `Event::INDEX`), hooks in
            /// call order: the shape of the event's hook list, whatever each meta's `event()` says.
            pub(crate) fn metas_per_event(&self) -> [Vec<&HookMeta>; EVENT_NAMES.len()] {
                [ $( self.$field.hooks.iter().map(|h| &h.meta).collect() ),* ]
            }
        }
    };
}

catalogue! {
    0 gateway_startup: GatewayStartup => "gateway_startup", output (), session |_| None;
    1 gateway_shutdown: GatewayShutdown => "gateway_shutdown", output (), session |_| None;
    2 session_start: SessionStart => "session_start", output (), session |e| Some(e.session_id);
    3 session_end: SessionEnd => "session_end", output (), session |e| Some(e.session_id);
    4 message_received: MessageReceived => "message_received", output (), session |e| Some(e.session_id);
    5 command: Command => "command", output CommandDecision, session |e| e.session_id;
    6 agent_turn_start: AgentTurnStart => "agent_turn_start", output (), session |e| Some(e.session_id);
    7 agent_turn_end: AgentTurnEnd => "agent_turn_end", output (), session |e| Some(e.session_id);
}

static GLOBAL: LazyLock<Registry> = LazyLock::new(Registry::from_inventory);

impl Registry {
    /// The registry of every hook linked into this binary, collected and sorted on first use.
    pub fn global() -> &'static Registry {
        &GLOBAL
    }

    /// `self` with `hook` added, re-sorted.
    #[must_use]
    pub fn with<E: Event>(mut self, hook: Hook<E>) -> Self {
        let list = E::__hooks_mut(&mut self);
        let mut hooks = std::mem::take(&mut list.hooks);
        hooks.push(hook);
        *list = HookList::new(hooks);
        self
    }

    /// The hooks of event `E`, in call order.
    pub fn hooks<E: Event>(&self) -> &[Hook<E>] {
        &E::__hooks(self).hooks
    }

    /// The hook list of event `E`.
    pub fn hook_list<E: Event>(&self) -> &HookList<E> {
        E::__hooks(self)
    }

    /// Every hook on one line, for a start-up log:
    /// `event: module::name (priority P[, timeout T]) at file:line`, separated by `; `, events in
    /// catalogue order, hooks in call order.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .metas()
            .into_iter()
            .map(|m| {
                let timeout = m.timeout().map(|t| format!(", timeout {t:?}")).unwrap_or_default();
                format!(
                    "{}: {} (priority {}{timeout}) at {}:{}",
                    m.event(),
                    m.qualified_name(),
                    m.priority(),
                    m.file(),
                    m.line()
                )
            })
            .collect();
        parts.join("; ")
    }

    /// The number of hooks over all events.
    pub fn len(&self) -> usize {
        self.metas().len()
    }

    /// Whether no hook is registered at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that every hook in `expected` is linked into this binary.
    ///
    /// An expected hook is written `crate_name::…::hook_name` (the hook's
    /// [`qualified_name`](HookMeta::qualified_name)) or `crate_name::hook_name` (any module of that
    /// crate). Call it at startup with the plugins the gateway is built to have.
    ///
    /// # Errors
    ///
    /// [`LinkError`] naming every expected hook that is missing, and the fix: rustc links a crate only
    /// if the binary names it, so a plugin crate that is a dependency but never mentioned in the code
    /// contributes no hooks. Add `use plugin_crate as _;` to the binary.
    pub fn require(&self, expected: &[&str]) -> Result<(), LinkError> {
        let metas = self.metas();
        let missing: Vec<String> = expected
            .iter()
            .filter(|want| {
                !metas.iter().any(|m| {
                    let qualified = m.qualified_name();
                    qualified == **want || format!("{}::{}", m.crate_name(), m.name) == **want
                })
            })
            .map(|s| (*s).to_owned())
            .collect();
        if missing.is_empty() { Ok(()) } else { Err(LinkError { missing }) }
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.metas().into_iter().map(|m| format!("{}:{}", m.event, m.qualified_name()))).finish()
    }
}

/// Hooks a binary expected were not linked into it. See [`Registry::require`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe_missing(.missing))]
pub struct LinkError {
    /// The expected hooks that are missing, as they were written.
    pub missing: Vec<String>,
}

fn describe_missing(missing: &[String]) -> String {
    let mut crates: Vec<&str> = missing.iter().map(|m| m.split("::").next().unwrap_or(m)).collect();
    crates.dedup();
    let uses: Vec<String> = crates.iter().map(|c| format!("`use {c} as _;`")).collect();
    format!(
        "expected hook{} not linked into this binary: {}; rustc links a crate only if the binary names it: \
         add {} to the binary's main.rs (and the crate to its [dependencies])",
        if missing.len() == 1 { "" } else { "s" },
        missing.join(", "),
        uses.join(" and "),
    )
}

/// How a hook function's return value becomes the handler's result: implemented for `()` and
/// `Result<(), E>` on every event, and for the decision type (bare or in a `Result`) on decision events.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid return type for a `{E}` hook",
    label = "a hook for this event must return `()` or `Result<(), E>` (with `E: Into<HookError>`)",
    note = "observer events (every event but `command`) return `()` or `Result<(), HookError>`; \
            only `#[hook(command)]` may return `CommandDecision` or `Result<CommandDecision, HookError>`"
)]
pub trait HookOutput<E: Event> {
    /// The handler's result.
    fn into_output(self) -> Result<E::Output, HookError>;
}

impl<E: Event> HookOutput<E> for () {
    fn into_output(self) -> Result<E::Output, HookError> {
        Ok(E::Output::default())
    }
}

impl<E: Event, Er: Into<HookError>> HookOutput<E> for Result<(), Er> {
    fn into_output(self) -> Result<E::Output, HookError> {
        self.map(|()| E::Output::default()).map_err(Into::into)
    }
}

impl HookOutput<Command> for CommandDecision {
    fn into_output(self) -> Result<CommandDecision, HookError> {
        Ok(self)
    }
}

impl<Er: Into<HookError>> HookOutput<Command> for Result<CommandDecision, Er> {
    fn into_output(self) -> Result<CommandDecision, HookError> {
        self.map_err(Into::into)
    }
}
