use hooks_core::prelude::*;

#[hook(session_end)]
struct Remember;

fn main() {}
