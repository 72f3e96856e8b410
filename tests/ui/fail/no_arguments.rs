use hooks_core::prelude::*;

#[hook(session_end)]
async fn remember() {}

fn main() {}
