use hooks_core::prelude::*;

#[hook(session_end)]
async fn remember(ev: &SessionStart) {
    let _ = ev;
}

fn main() {}
