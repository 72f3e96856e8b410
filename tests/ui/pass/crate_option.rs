//! `crate = path` names hooks-core when it is not reachable as `::hooks_core`.
mod reexport {
    pub use hooks_core as framework;
}

use hooks_core::event::GatewayStartup;
use hooks_core::hook;

#[hook(gateway_startup, crate = crate::reexport::framework)]
fn started(_ev: &GatewayStartup) {}

fn main() {
    assert_eq!(hooks_core::registry::Registry::global().hooks::<GatewayStartup>().len(), 1);
}
