use hooks_core::prelude::*;

// Independent mistakes are all reported at once, each under its own token.
#[hook(session_end, prio = 1, timeout = "soon")]
async fn remember(_ev: SessionEnd) {}

fn main() {}
