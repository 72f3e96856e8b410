//! What a handler gets besides its event ([`HookContext`]), and how it reports failure ([`HookError`]).

use std::any::{Any, TypeId, type_name};
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::event::{EventId, SessionId};

/// The second, optional argument of a hook: which hook is running, for which event, until when, and the
/// application state the gateway registered with its dispatcher.
///
/// It borrows the dispatcher's [`State`] for the length of the call (`'a`), so making one costs no
/// reference count: a hook writes `ctx: &HookContext` (or `&HookContext<'_>` where the
/// `elided_lifetimes_in_paths` lint is on).
///
/// ```
/// use hooks_core::prelude::*;
///
/// /// Where the memory hook writes; the gateway puts one in the dispatcher's state.
/// #[derive(Debug)]
/// struct MemoryDir(std::path::PathBuf);
///
/// #[hook(session_end)]
/// async fn remember(ev: &SessionEnd, ctx: &HookContext) -> Result<(), HookError> {
///     let Some(dir) = ctx.state::<MemoryDir>() else {
///         return Err(HookError::msg("no MemoryDir in the dispatcher state"));
///     };
///     let _path = dir.0.join(format!("{}.txt", ev.session_id));
///     Ok(())
/// }
/// # fn main() {}
/// ```
#[derive(Debug, Clone, Copy)]
pub struct HookContext<'a> {
    pub(crate) hook: &'static str,
    pub(crate) event_id: EventId,
    pub(crate) session_id: Option<SessionId>,
    pub(crate) attempt: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) state: &'a State,
}

impl<'a> HookContext<'a> {
    /// A context for calling a handler by hand (tests, tools); the dispatcher makes its own.
    pub fn new(hook: &'static str, event_id: EventId, session_id: Option<SessionId>, state: &'a State) -> Self {
        Self { hook, event_id, session_id, attempt: 1, timeout: None, state }
    }

    /// The running hook's name.
    pub fn hook_name(&self) -> &'static str {
        self.hook
    }

    /// The id of the event being delivered; the same on every delivery attempt of that event.
    pub fn event_id(&self) -> EventId {
        self.event_id
    }

    /// The session the event belongs to, if it belongs to one.
    pub fn session_id(&self) -> Option<SessionId> {
        self.session_id
    }

    /// Which delivery attempt this is: 1 the first time; more after a crash or a retry re-delivers the
    /// event (same [`event_id`](Self::event_id)).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How long this handler may run before the dispatcher cancels it (`None`: no limit).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The value of type `T` the gateway put in the dispatcher's [`State`], if any. It lives as long as
    /// the state, not just this borrow of the context.
    pub fn state<T: Any + Send + Sync>(&self) -> Option<&'a T> {
        self.state.get::<T>()
    }
}

/// Application values handed to every hook through [`HookContext::state`], one per type.
///
/// Hooks are free functions registered at link time, so this is how they reach the gateway's
/// configuration, connections or output files.
///
/// A handful of values is typical, so they live in a small vector searched by `TypeId`: cheaper per
/// hook call than hashing.
#[derive(Default)]
pub struct State {
    values: Vec<(TypeId, Box<dyn Any + Send + Sync>, &'static str)>,
}

impl State {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `value` in, replacing any earlier value of the same type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) -> &mut Self {
        let id = TypeId::of::<T>();
        self.values.retain(|(t, _, _)| *t != id);
        self.values.push((id, Box::new(value), type_name::<T>()));
        self
    }

    /// `self` with `value` put in (builder form of [`insert`](Self::insert)).
    #[must_use]
    pub fn with<T: Any + Send + Sync>(mut self, value: T) -> Self {
        self.insert(value);
        self
    }

    /// The value of type `T`, if one was put in.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        let id = TypeId::of::<T>();
        self.values.iter().find(|(t, _, _)| *t == id).and_then(|(_, v, _)| v.downcast_ref::<T>())
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.values.iter().map(|(_, _, name)| name)).finish()
    }
}

/// A handler's failure. The dispatcher logs it with the hook's name and the event's session, counts it,
/// and goes on with the other handlers.
///
/// Anything that converts into `Box<dyn Error + Send + Sync>` converts into a `HookError` with `?`:
/// every `std::error::Error + Send + Sync` type, `anyhow::Error`, `String` and `&str`.
///
/// ```
/// use hooks_core::prelude::*;
///
/// #[hook(session_end)]
/// fn check(ev: &SessionEnd) -> Result<(), HookError> {
///     let n: u32 = "12".parse()?; // ParseIntError -> HookError
///     if ev.message_count > u64::from(n) {
///         return Err("too chatty".into());
///     }
///     Ok(())
/// }
/// # fn main() {}
/// ```
pub struct HookError {
    inner: Box<dyn StdError + Send + Sync + 'static>,
}

impl HookError {
    /// An error with `message` and no source.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self { inner: message.to_string().into() }
    }

    /// The underlying error.
    pub fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.inner
    }

    /// The underlying error, owned.
    pub fn into_inner(self) -> Box<dyn StdError + Send + Sync + 'static> {
        self.inner
    }
}

// `HookError` deliberately does not implement `std::error::Error`: that keeps this blanket impl
// coherent with `impl<T> From<T> for T` (the same trick as `anyhow::Error`).
impl<E> From<E> for HookError
where
    E: Into<Box<dyn StdError + Send + Sync + 'static>>,
{
    fn from(error: E) -> Self {
        Self { inner: error.into() }
    }
}

/// The error and its chain of sources, separated by `: `.
impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)?;
        let mut source = self.inner.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl fmt::Debug for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HookError").field(&self.inner).finish()
    }
}
