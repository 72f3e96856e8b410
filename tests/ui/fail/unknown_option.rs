use hooks_core::prelude::*;

#[hook(session_end, prio = 5)]
async fn remember(_ev: &SessionEnd) {}

fn main() {}
