use hooks_core::prelude::*;

#[hook(session_end, priority = 3000000000)]
async fn remember(_ev: &SessionEnd) {}

fn main() {}
