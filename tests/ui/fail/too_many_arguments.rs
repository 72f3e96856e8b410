use hooks_core::prelude::*;

#[hook(session_end)]
async fn remember(_ev: &SessionEnd, _ctx: &HookContext, _extra: u32) {}

fn main() {}
