use hooks_core::prelude::*;

#[hook(sesion_end)]
async fn remember(ev: &SessionEnd) {
    let _ = ev;
}

fn main() {}
