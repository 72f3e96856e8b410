use hooks_core::prelude::*;

#[hook(session_end, timeout = "5 parsecs")]
async fn remember(_ev: &SessionEnd) {}

fn main() {}
