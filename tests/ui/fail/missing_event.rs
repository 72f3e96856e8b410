use hooks_core::prelude::*;

#[hook]
async fn remember(_ev: &SessionEnd) {}

fn main() {}
