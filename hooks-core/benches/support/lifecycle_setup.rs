//! The engine set-up shared by `benches/lifecycle.rs` and `examples/lifecycle_ops.rs`, so that the
//! callgrind counts of the example measure exactly what the criterion benchmark times.

use std::time::Duration;

use hooks_core::event::SessionKey;
use hooks_core::lifecycle::{Engine, Policy, SessionIds};
use jiff::{SignedDuration, Timestamp};

/// The idle timeout of every benchmarked engine.
pub(crate) const IDLE: Duration = Duration::from_secs(30 * 60);

/// Where the benchmarks' clock starts (UTC).
pub(crate) fn t0() -> Timestamp {
    "2024-01-01T00:00:00Z".parse().expect("a valid timestamp")
}

/// `n` distinct Telegram chat keys.
pub(crate) fn keys(n: usize) -> Vec<SessionKey> {
    (0..n).map(|i| SessionKey::chat("telegram", format!("{}", 1_000_000_000 + i))).collect()
}

/// The benchmarked policy. Transcripts are measured separately (they are the messages themselves);
/// the engine's own cost is what these benchmarks track.
pub(crate) fn policy() -> Policy {
    Policy { idle_timeout: IDLE, transcript_limit: 0, ..Policy::default() }
}

/// An engine with `keys.len()` open sessions. With `spread`, their idle deadlines are spread evenly
/// over one idle timeout, so that advancing the clock by `IDLE / n` expires exactly one session;
/// without, they all open within a microsecond and nothing expires for half an hour. Returns the
/// engine, the time of the last opening and the step between openings.
pub(crate) fn populated(keys: &[SessionKey], spread: bool) -> (Engine, Timestamp, SignedDuration) {
    let n = keys.len() as i64;
    let step = SignedDuration::from_nanos(if spread { (IDLE.as_nanos() as i64) / n } else { 1 });
    let mut engine = Engine::new(policy(), SessionIds::Sequential);
    let mut out = Vec::new();
    let mut t = t0();
    for k in keys {
        engine.message(k, "42", "hello", t, &mut out);
        out.clear();
        t += step;
    }
    (engine, t - step, step)
}
