use hooks_core::prelude::*;

#[hook(session_end)]
const fn remember(_ev: &SessionEnd) {}

fn main() {}
