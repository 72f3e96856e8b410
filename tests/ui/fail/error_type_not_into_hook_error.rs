use hooks_core::prelude::*;

/// Not an `std::error::Error`, so it does not convert into `HookError`.
#[derive(Debug)]
struct Oops;

#[hook(session_end)]
fn remember(_ev: &SessionEnd) -> Result<(), Oops> {
    Err(Oops)
}

fn main() {}
