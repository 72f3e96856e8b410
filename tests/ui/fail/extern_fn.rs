use hooks_core::prelude::*;

#[hook(session_end)]
extern "C" fn remember(_ev: &SessionEnd) {}

fn main() {}
