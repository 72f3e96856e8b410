//! A hook may be declared inside a function body; it is still registered at link time.
use hooks_core::prelude::*;
use hooks_core::registry::Registry;

fn main() {
    #[hook(agent_turn_end, priority = 3)]
    fn inner(_ev: &AgentTurnEnd) {}

    assert_eq!(Registry::global().hooks::<AgentTurnEnd>()[0].meta().name(), "inner");
}
