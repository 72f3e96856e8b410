use hooks_core::prelude::*;

#[hook(session_end)]
fn remember<const N: usize>(_ev: &SessionEnd) {}

fn main() {}
