//! `crate = path` names hooks-core when it is not reachable as `::hooks_core`.
mod reexport {
    pub use hooks_core as framework;
}

/// What hooks-core has at its root, so that `crate = crate` works here as it does inside hooks-core.
mod __private {
    pub use hooks_core::__private::*;
}

use hooks_core::event::{GatewayShutdown, GatewayStartup};
use hooks_core::hook;

#[hook(gateway_startup, crate = crate::reexport::framework)]
fn started(_ev: &GatewayStartup) {}

#[hook(gateway_shutdown, crate = crate)]
fn stopped(_ev: &GatewayShutdown) {}

fn main() {
    let registry = hooks_core::registry::Registry::global();
    assert_eq!(registry.hooks::<GatewayStartup>().len(), 1);
    assert_eq!(registry.hooks::<GatewayShutdown>()[0].meta().name(), "stopped");
}
