use hooks_core::prelude::*;

/// A gateway trying to end a session with another reason than the real one.
fn fake(real: &SessionEnd) -> SessionEnd {
    SessionEnd { reason: CloseReason::Shutdown, ..real.clone() }
}

fn main() {
    let _ = fake;
}
