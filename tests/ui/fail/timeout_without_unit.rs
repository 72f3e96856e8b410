use hooks_core::prelude::*;

#[hook(session_end, timeout = "30")]
async fn remember(_ev: &SessionEnd) {}

fn main() {}
