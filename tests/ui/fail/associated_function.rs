use hooks_core::prelude::*;

struct Memory;

impl Memory {
    #[hook(session_end)]
    fn remember(_ev: &SessionEnd) {}
}

fn main() {}
