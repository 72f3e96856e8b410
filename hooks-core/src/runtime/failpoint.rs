//! Fail-points for crash tests: `GATEWAY_FAILPOINT=NAME:N` aborts the process the `N`th time the
//! runtime passes the point `NAME` (N defaults to 1). Unset, a fail-point costs one atomic load.
//!
//! Points: `after_commit_before_delivery` (a batch is committed, its events not yet queued for
//! delivery) and `after_delivery_before_record` (handlers ran, the delivery not yet recorded).
//! Aborting there is what a crash at the worst moment looks like: the restarted process must deliver
//! those events again, with the same ids, and emit nothing twice.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a fail-point.
pub(crate) const ENV: &str = "GATEWAY_FAILPOINT";

static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
static PASSES: AtomicU64 = AtomicU64::new(0);

fn armed() -> Option<&'static (String, u64)> {
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok()?;
            let (name, n) = match spec.split_once(':') {
                Some((name, n)) => (name.to_owned(), n.trim().parse().unwrap_or(1)),
                None => (spec.clone(), 1),
            };
            Some((name, n.max(1)))
        })
        .as_ref()
}

/// Aborts the process if `point` is armed and this is its `N`th pass.
pub(crate) fn hit(point: &str) {
    if let Some((name, n)) = armed()
        && name == point
        && PASSES.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        eprintln!("{ENV}: {point} reached (pass {n}); aborting");
        std::process::abort();
    }
}
