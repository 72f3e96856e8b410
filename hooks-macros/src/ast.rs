//! The typed model of a valid hook: what `valid` hands to `expand`.

use proc_macro2::Span;
use syn::{ItemFn, Path, Type};

use crate::events::EventInfo;

/// A function that passed every check of `valid`.
pub(crate) struct Hook<'a> {
    /// The user's function, emitted unchanged.
    pub(crate) func: &'a ItemFn,
    /// The event it subscribes to.
    pub(crate) event: &'static EventInfo,
    /// Where the event is named in the attribute.
    pub(crate) event_span: Span,
    /// The attribute's options, with their defaults filled in.
    pub(crate) options: Options,
    /// The parts of the signature the shim needs.
    pub(crate) sig: HookSig,
}

/// `priority`, `timeout`, `name`, `crate`.
pub(crate) struct Options {
    /// Hooks of one event run in ascending priority. Default 0.
    pub(crate) priority: i32,
    /// The hook's own timeout, if it set one.
    pub(crate) timeout: Option<Timeout>,
    /// The hook's name: `name = "…"` or the function's name.
    pub(crate) name: String,
    /// The path to hooks-core (`crate = path`), for renamed dependencies.
    pub(crate) krate: Option<Path>,
}

/// A timeout, parsed at compile time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timeout {
    /// Whole seconds.
    pub(crate) secs: u64,
    /// The rest, in nanoseconds (below 1e9).
    pub(crate) nanos: u32,
}

/// A valid hook signature: `[async] fn name(ev: &Event[, ctx: &HookContext]) [-> Output]`.
pub(crate) struct HookSig {
    /// Whether it is an `async fn`.
    pub(crate) is_async: bool,
    /// The function's name: where a non-`Send` future is reported.
    pub(crate) name_span: Span,
    /// The type behind the first argument's `&`, as the user wrote it.
    pub(crate) event_ty: Type,
    /// The type behind the second argument's `&`, if there is a second argument.
    pub(crate) ctx_ty: Option<Type>,
    /// The declared return type (`None` for `()`), as the user wrote it.
    pub(crate) output: Option<Type>,
}
