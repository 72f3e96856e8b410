//! The loops of `benches/lifecycle.rs`, one at a time, for counting instructions per operation under
//! callgrind (criterion's harness is awkward there): a flat count across sizes shows the engine's work
//! per operation does not grow with the number of open sessions, whatever the wall clock says.
//!
//! ```sh
//! cargo build --release -p hooks-core --example lifecycle_ops
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*lifecycle_ops::measured*' \
//!     target/release/examples/lifecycle_ops message 1000000 100000
//! ```
//!
//! Arguments: `message` (random keys), `hot` (1,000 keys spread over the table) or `expiry`; the number
//! of open sessions; the number of measured operations. Divide the callgrind total (`Ir`) by the last.
//! Without valgrind it prints the wall-clock time per operation (one run, for a quick look).

#[path = "../benches/support/lifecycle_setup.rs"]
mod setup;

use std::hint::black_box;
use std::time::{Duration, Instant};

use hooks_core::event::{AnyEvent, SessionKey};
use hooks_core::lifecycle::{Engine, Policy, SessionIds};
use jiff::{SignedDuration, Timestamp};
use setup::{IDLE, keys, populated, t0};

/// `ops` messages to `keys` with `stride`, the clock moving 1 ns each.
#[inline(never)]
fn measured_messages(engine: &mut Engine, keys: &[SessionKey], stride: usize, t: &mut Timestamp, ops: usize) {
    let mut out = Vec::new();
    let mut i = 0usize;
    for _ in 0..ops {
        i = (i + stride) % keys.len();
        *t += SignedDuration::from_nanos(1);
        black_box(engine.message(&keys[i], "42", "hello", *t, &mut out));
        out.clear();
    }
}

/// One expiry per step; the reopening message is counted separately (`measured_reopen`).
#[inline(never)]
fn measured_expiry(engine: &mut Engine, now: Timestamp, out: &mut Vec<AnyEvent>) {
    engine.advance(now, out);
}

#[inline(never)]
fn measured_reopen(engine: &mut Engine, key: &SessionKey, text: &str, now: Timestamp, out: &mut Vec<AnyEvent>) {
    engine.message(key, "42", text, now, out);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: lifecycle_ops message|hot|expiry|stream <open sessions> <operations>";
    let (Some(kind), Some(n), Some(ops)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let (n, ops): (usize, usize) = (n.parse().expect(usage), ops.parse().expect(usage));
    let keys = keys(n);
    let started;
    match kind.as_str() {
        "message" => {
            let (mut engine, mut t, _) = populated(&keys, false);
            measured_messages(&mut engine, &keys, 104_729, &mut t, ops / 10);
            started = Instant::now();
            measured_messages(&mut engine, &keys, 104_729, &mut t, ops);
        }
        "hot" => {
            let (mut engine, mut t, _) = populated(&keys, false);
            let hot: Vec<SessionKey> = keys.iter().step_by(n / 1000).take(1000).cloned().collect();
            measured_messages(&mut engine, &hot, 7, &mut t, ops / 10);
            started = Instant::now();
            measured_messages(&mut engine, &hot, 7, &mut t, ops);
        }
        "stream" => {
            // The benchmark's throughput stream: `n` keys, one text in 50 a `/new`, transcripts on.
            let policy = Policy { idle_timeout: Duration::from_secs(600), ..Policy::default() };
            let mut engine = Engine::new(policy, SessionIds::Sequential);
            let mut out = Vec::with_capacity(16);
            let mut t = t0();
            started = Instant::now();
            for i in 0..ops {
                let text = if i % 50 == 0 { "/new" } else { "hello there" };
                t += SignedDuration::from_micros(700);
                measured_reopen(&mut engine, &keys[(i * 7919) % n], text, t, &mut out);
                out.clear();
            }
        }
        "expiry" => {
            let (mut engine, _, step) = populated(&keys, true);
            let mut out = Vec::new();
            let mut now = t0() + SignedDuration::try_from(IDLE).expect("a short idle timeout");
            let mut spent = Duration::ZERO;
            for k in 0..ops {
                let at = Instant::now();
                measured_expiry(&mut engine, now, &mut out);
                spent += at.elapsed();
                assert!(matches!(out.as_slice(), [AnyEvent::SessionEnd(_)]));
                out.clear();
                measured_reopen(&mut engine, &keys[k % n], "hello", now, &mut out);
                out.clear();
                now += step;
            }
            assert_eq!(engine.open_sessions(), n);
            println!(
                "{kind} n={n}: {:.1} ns per expiry (wall clock, clock reads included)",
                spent.as_nanos() as f64 / ops as f64
            );
            return;
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
    let el = started.elapsed();
    println!("{kind} n={n}: {:.1} ns per operation (wall clock)", el.as_nanos() as f64 / ops as f64);
}
