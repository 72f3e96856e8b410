use hooks_core::prelude::*;

#[hook(session_end)]
fn remember(_ev: &SessionEnd, _: ...) {}

fn main() {}
