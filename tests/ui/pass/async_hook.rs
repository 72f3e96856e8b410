//! An `async fn` hook, with every option.
use std::time::Duration;

use hooks_core::prelude::*;
use hooks_core::registry::{HandlerKind, Registry};

#[hook(session_end, priority = -5, timeout = "1m30s", name = "memory_flush")]
async fn remember(ev: &SessionEnd) {
    tokio::task::yield_now().await;
    let _ = ev.reason;
}

fn main() {
    let hooks = Registry::global().hooks::<SessionEnd>();
    assert_eq!(hooks.len(), 1);
    let meta = hooks[0].meta();
    assert_eq!((meta.name(), meta.priority()), ("memory_flush", -5));
    assert_eq!(meta.timeout(), Some(Duration::from_secs(90)));
    assert_eq!(meta.kind(), HandlerKind::Async);
}
