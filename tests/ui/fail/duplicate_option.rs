use hooks_core::prelude::*;

#[hook(session_end, priority = 1, priority = 2)]
async fn remember(_ev: &SessionEnd) {}

fn main() {}
