use hooks_core::prelude::*;

#[hook(session_end, name = memory_flush)]
async fn remember(_ev: &SessionEnd) {}

fn main() {}
