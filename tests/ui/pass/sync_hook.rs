//! A plain `fn` hook: registered as a sync handler with its defaults.
use hooks_core::prelude::*;
use hooks_core::registry::{HandlerKind, Registry};

#[hook(session_start)]
fn greet(ev: &SessionStart) {
    let _ = ev.session_id;
}

fn main() {
    let hooks = Registry::global().hooks::<SessionStart>();
    assert_eq!(hooks.len(), 1);
    let meta = hooks[0].meta();
    assert_eq!((meta.event(), meta.name(), meta.priority(), meta.timeout()), ("session_start", "greet", 0, None));
    assert_eq!(meta.kind(), HandlerKind::Sync);
    assert_eq!(meta.module_path(), module_path!());
}

/// A hook compiled out by `cfg` is not registered either (`main` checks there is exactly one hook).
#[hook(session_start)]
#[cfg(any())]
fn never_compiled(_ev: &SessionStart) {}
