//! A hook function may be named like the arguments of the shim the macro writes around it.
use hooks_core::prelude::*;
use hooks_core::registry::Registry;

#[hook(message_received)]
fn ev(message: &MessageReceived) {
    let _ = message;
}

#[hook(session_end)]
async fn ctx(_: &SessionEnd, context: &HookContext) {
    let _ = context.attempt();
}

fn main() {
    assert_eq!(Registry::global().hooks::<MessageReceived>()[0].meta().name(), "ev");
    assert_eq!(Registry::global().hooks::<SessionEnd>()[0].meta().name(), "ctx");
}
