//! Hooks of another crate are linked by naming that crate: `use plugin as _;`.
use hooks_core::prelude::*;
use hooks_core::registry::Registry;
use hooks_test_plugin as _;

#[hook(session_end)]
async fn local(_ev: &SessionEnd) {}

fn main() {
    let registry = Registry::global();
    registry.require(&["hooks_test_plugin::plugin_memory_flush", "hooks_test_plugin::plugin_first"]).unwrap();
    let crates: Vec<_> = registry.hooks::<SessionEnd>().iter().map(|h| h.meta().crate_name()).collect();
    assert_eq!(crates.len(), 2);
    assert!(crates.contains(&"hooks_test_plugin"), "{crates:?}");
}
