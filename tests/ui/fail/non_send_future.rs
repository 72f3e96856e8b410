use std::rc::Rc;

use hooks_core::prelude::*;

async fn flush() {}

#[hook(session_end)]
async fn remember(ev: &SessionEnd) {
    let count = Rc::new(ev.message_count);
    flush().await;
    let _ = count;
}

fn main() {}
