use hooks_core::prelude::*;

/// An alias that hides which event it is.
type Ev = SessionStart;

#[hook(session_end)]
fn remember(_ev: &Ev) {}

fn main() {}
