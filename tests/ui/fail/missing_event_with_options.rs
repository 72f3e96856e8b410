use hooks_core::prelude::*;

#[hook(priority = 5)]
async fn remember(_ev: &SessionEnd) {}

fn main() {}
