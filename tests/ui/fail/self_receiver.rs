use hooks_core::prelude::*;

struct Memory;

impl Memory {
    #[hook(session_end)]
    async fn remember(&self, _ev: &SessionEnd) {}
}

fn main() {}
