use hooks_core::prelude::*;

#[hook(session_end)]
fn remember(_ev: &impl std::fmt::Debug) {}

fn main() {}
