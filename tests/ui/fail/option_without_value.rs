use hooks_core::prelude::*;

#[hook(session_end, priority)]
async fn remember(_ev: &SessionEnd) {}

fn main() {}
