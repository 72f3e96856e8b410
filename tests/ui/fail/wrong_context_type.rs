use hooks_core::prelude::*;

#[hook(session_end)]
async fn remember(_ev: &SessionEnd, _state: &hooks_core::State) {}

fn main() {}
