use hooks_core::prelude::*;

#[hook(session_end)]
unsafe fn remember(_ev: &SessionEnd) {}

fn main() {}
