//! Lifecycle engine costs: bytes per open session, and the cost of one message and one expiry at
//! 10^4, 10^5 and 10^6 open sessions (the goal is flat).
//!
//! `cargo bench -p hooks-core --bench lifecycle`. The memory figures are printed before the timings;
//! they come from a counting global allocator, so they include every heap byte the engine holds
//! (slab, hash table, timer heap, free list; transcripts are off, keys are short enough to be inline).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hooks_core::event::{AnyEvent, SessionKey};
use hooks_core::lifecycle::{Engine, Policy, SessionIds};
use jiff::SignedDuration;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[path = "support/lifecycle_setup.rs"]
mod setup;

use setup::{IDLE, keys, populated, t0};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];
fn memory_report() {
    for &n in &SIZES {
        let keys = keys(n);
        let region = Region::new(GLOBAL);
        let (engine, _, _) = populated(&keys, true);
        let change = region.change();
        // The counting allocator adds a reallocation's growth to `bytes_allocated` already.
        let live = change.bytes_allocated as isize - change.bytes_deallocated as isize;
        println!(
            "memory: {n:>9} open sessions: {:>6.1} B/session counted by the allocator ({:.1} B/session by Engine::allocated_bytes)",
            live as f64 / n as f64,
            engine.allocated_bytes() as f64 / n as f64,
        );
        drop(engine);
    }
}

/// Engine-only throughput on a replay-like stream (10^4 keys, 1 in 50 texts a command, 1 s apart on
/// average per key so some sessions expire), printed for the record.
fn throughput_report() {
    let keys = keys(10_000);
    let mut engine =
        Engine::new(Policy { idle_timeout: Duration::from_secs(600), ..Policy::default() }, SessionIds::Sequential);
    let mut out = Vec::with_capacity(16);
    let total = 3_000_000usize;
    let mut t = t0();
    let started = Instant::now();
    let mut events = 0usize;
    for i in 0..total {
        let k = &keys[(i * 7919) % keys.len()];
        let text = if i % 50 == 0 { "/new" } else { "hello there" };
        t += SignedDuration::from_micros(700);
        engine.message(k, "42", text, t, &mut out);
        events += out.len();
        out.clear();
    }
    let el = started.elapsed();
    println!(
        "throughput: {total} messages over 10^4 keys with transcripts on: {:.2} M messages/s ({events} session events)",
        total as f64 / el.as_secs_f64() / 1e6
    );
}

fn bench_message(c: &mut Criterion) {
    memory_report();
    throughput_report();
    let mut group = c.benchmark_group("message_to_open_session");
    group.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for &n in &SIZES {
        let keys = keys(n);
        let (mut engine, mut t, _) = populated(&keys, false);
        let mut out = Vec::new();
        let mut i = 0usize;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                // A large prime stride visits keys in a cache-unfriendly order, like real traffic.
                i = (i + 104_729) % n;
                t += SignedDuration::from_nanos(1);
                let r = engine.message(&keys[i], "42", "hello", t, &mut out);
                out.clear();
                black_box(r)
            })
        });
    }
    group.finish();
}

/// The same message, but to a working set of 1,000 active keys while `n` sessions are open: real
/// traffic has such locality, and holding the working set fixed separates what the number of open
/// sessions costs the engine from what a cache-cold random key costs the memory system.
fn bench_message_hot(c: &mut Criterion) {
    let mut group = c.benchmark_group("message_to_open_session_hot_1000");
    group.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for &n in &SIZES {
        let keys = keys(n);
        let (mut engine, mut t, _) = populated(&keys, false);
        // Every (n / 1000)-th key: the active sessions are spread over the whole table and slab.
        let hot: Vec<SessionKey> = keys.iter().step_by(n / 1000).take(1000).cloned().collect();
        drop(keys);
        let mut out = Vec::new();
        let mut i = 0usize;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                i = (i + 7) % hot.len();
                t += SignedDuration::from_nanos(1);
                let r = engine.message(&hot[i], "42", "hello", t, &mut out);
                out.clear();
                black_box(r)
            })
        });
    }
    group.finish();
}

fn bench_expiry(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_idle_expiry");
    group.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for &n in &SIZES {
        let keys = keys(n);
        let (mut engine, last, step) = populated(&keys, true);
        let mut out = Vec::new();
        // The first deadline is one idle timeout after the first message.
        let mut now = t0() + SignedDuration::try_from(IDLE).unwrap();
        assert!(now > last);
        let mut k = 0usize;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    engine.advance(now, &mut out);
                    spent += started.elapsed();
                    debug_assert!(matches!(out.as_slice(), [AnyEvent::SessionEnd(_)]));
                    out.clear();
                    // Reopen the expired key (untimed) so the number of open sessions stays `n`; its new
                    // deadline falls after every other one, keeping exactly one expiry per step.
                    engine.message(&keys[k], "42", "hello", now, &mut out);
                    out.clear();
                    k = (k + 1) % n;
                    now += step;
                }
                spent
            })
        });
        assert_eq!(engine.open_sessions(), n);
    }
    group.finish();
}

criterion_group!(benches, bench_message, bench_message_hot, bench_expiry);
criterion_main!(benches);
