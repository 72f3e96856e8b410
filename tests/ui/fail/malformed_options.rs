use hooks_core::prelude::*;

#[hook(session_end; priority = 1)]
async fn remember(_ev: &SessionEnd) {}

fn main() {}
