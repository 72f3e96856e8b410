use hooks_core::prelude::*;

#[hook(session_end)]
async fn remember<E: std::fmt::Debug>(_ev: &E) {}

fn main() {}
