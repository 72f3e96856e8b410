use hooks_core::prelude::*;

#[hook(session_start, session_end)]
async fn both(_ev: &SessionEnd) {}

fn main() {}
