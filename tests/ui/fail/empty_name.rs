use hooks_core::prelude::*;

#[hook(session_end, name = "")]
async fn remember(_ev: &SessionEnd) {}

fn main() {}
