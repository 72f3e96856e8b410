use hooks_core::prelude::*;

#[hook("session_end")]
async fn remember(_ev: &SessionEnd) {}

fn main() {}
