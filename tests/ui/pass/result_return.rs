//! `Result<(), E>` returns, with any `E: Into<HookError>`; lifetimes and type aliases in the signature.
use hooks_core::prelude::*;
use hooks_core::registry::Registry;

#[derive(Debug)]
struct StoreError;

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("store unavailable")
    }
}

impl std::error::Error for StoreError {}

type Ev = SessionEnd;

#[hook(session_end)]
fn with_hook_error(_ev: &SessionEnd) -> Result<(), HookError> {
    Ok(())
}

#[hook(session_end)]
async fn with_own_error(_ev: &Ev) -> Result<(), StoreError> {
    Err(StoreError)
}

#[hook(session_end)]
async fn with_str_error<'a>(_ev: &'a SessionEnd, _ctx: &'a HookContext) -> Result<(), &'static str> {
    Ok(())
}

#[hook(session_end)]
fn with_anyhow(_ev: &hooks_core::event::SessionEnd) -> anyhow::Result<()> {
    Ok(())
}

fn main() {
    assert_eq!(Registry::global().hooks::<SessionEnd>().len(), 4);
}
