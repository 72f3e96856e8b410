use hooks_core::prelude::*;

#[hook(on_everything)]
fn log(_ev: &SessionEnd) {}

fn main() {}
