//! This binary depends on the plugin crate (a dev-dependency of the test crate) but never names it, so
//! rustc does not link it: its hooks are absent, and the link check says how to fix that.

use hooks_core::registry::Registry;

#[test]
fn hooks_of_an_unnamed_crate_are_not_linked() {
    let registry = Registry::global();
    assert!(registry.metas().iter().all(|m| m.crate_name() != "hooks_test_plugin"), "{registry:?}");
}

#[test]
fn require_reports_the_unlinked_plugin_with_the_use_remedy() {
    let error = Registry::global().require(&["hooks_test_plugin::plugin_memory_flush"]).unwrap_err();
    assert_eq!(error.missing, ["hooks_test_plugin::plugin_memory_flush"]);
    let message = error.to_string();
    assert!(message.contains("not linked into this binary"), "{message}");
    assert!(message.contains("`use hooks_test_plugin as _;`"), "{message}");
}
