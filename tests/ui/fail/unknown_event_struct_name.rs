use hooks_core::prelude::*;

#[hook(SessionEnd)]
async fn remember(_ev: &SessionEnd) {}

fn main() {}
