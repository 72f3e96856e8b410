use hooks_core::prelude::*;

#[hook(session_end)]
fn veto(_ev: &SessionEnd) -> CommandDecision {
    CommandDecision::Allow
}

fn main() {}
