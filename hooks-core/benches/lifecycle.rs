//! Lifecycle engine costs: bytes per open session, and the cost of one message and one expiry at
//! 10^4, 10^5 and 10^6 open sessions (the goal is flat), beside their limits (`limit_*`): the same
//! memory accesses with none of the engine's work, a plain hash map and an array of 128-byte records,
//! which show how much of the growth from 10^4 to 10^6 the memory system charges any data structure.
//!
//! `cargo bench -p hooks-core --bench lifecycle`. The memory figures are printed before the timings;
//! they come from a counting global allocator, so they include every heap byte the engine holds
//! (the session table, the boxed sessions, the deadline map; transcripts are off, keys are short enough
//! to be inline).

use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
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
        println!("memory: {n:>9} open sessions: {:>6.1} B/session counted by the allocator", live as f64 / n as f64,);
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

// The limits: what the memory system charges any data structure for the same access pattern, with
// none of the engine's work. Each op of the groups below touches what a message or an expiry must
// touch at the least (a random key's entry and a 128-byte value; a record in deadline order), at the
// same sizes; what their time gains from 10^4 to 10^6 is the floor under the engine's growth.

/// A hasher for keys that are already hashes (the precomputed `u64` of each key).
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }
}

type Prehashed = BuildHasherDefault<IdentityHasher>;

/// A 128-byte value filling two adjacent cache lines: a small session record.
#[derive(Clone, Copy, Default)]
#[repr(align(128))]
struct Record([u64; 16]);

/// A key of the limit: its precomputed 64-bit hash, padded to the size of a `SessionKey`, so that the
/// limit's array of keys spans as many cache lines and pages as the engine benchmark's (at 10^6 keys
/// that read is a cache miss of its own, in both).
#[derive(Clone, Copy)]
struct KeyHash {
    hash: u64,
    _as_large_as_a_session_key: [u8; std::mem::size_of::<SessionKey>() - 8],
}

/// One hash per key (the engine's hasher, over the whole key): the limit's keys.
fn key_hashes(keys: &[SessionKey]) -> Vec<KeyHash> {
    let build = hashbrown::DefaultHashBuilder::default();
    keys.iter()
        .map(|k| KeyHash {
            hash: build.hash_one(k),
            _as_large_as_a_session_key: [0; std::mem::size_of::<SessionKey>() - 8],
        })
        .collect()
}

/// A deterministic random permutation of `0..n` (Fisher-Yates over a xorshift generator).
fn permutation(n: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

/// The limit of `message_to_open_session`: one lookup of a random key in a plain hash map holding a
/// 128-byte value per key, and one write to that value, in the same key order (the same prime
/// stride). `chained` makes each lookup's key depend on the value the previous one read (through a
/// zero the compiler cannot see), so lookups cannot overlap: the latency of one cold lookup, which is
/// what the engine pays between two messages of ~700 instructions each.
fn bench_limit_hashmap(c: &mut Criterion) {
    for (name, chained) in [("limit_hashmap_random_key", false), ("limit_hashmap_random_key_chained", true)] {
        let mut group = c.benchmark_group(name);
        group.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
        for &n in &SIZES {
            let hashes = key_hashes(&keys(n));
            let mut map: hashbrown::HashMap<u64, [u64; 16], Prehashed> =
                hashbrown::HashMap::with_capacity_and_hasher(n, Prehashed::default());
            for h in &hashes {
                map.insert(h.hash, [h.hash; 16]);
            }
            let zero = black_box(0u64);
            let mut i = 0usize;
            let mut read = 0u64;
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| {
                    let dependency = if chained { (read & zero) as usize } else { 0 };
                    i = (i + 104_729 + dependency) % n;
                    let value = map.get_mut(&hashes[i].hash).expect("every key is in the map");
                    value[0] = value[0].wrapping_add(1);
                    read = value[0];
                    read
                })
            });
        }
        group.finish();
    }
}

/// The limits of `one_idle_expiry`, timed one op at a time like it.
///
/// `limit_record_in_deadline_order`: touch (read and write) the next 128-byte record in deadline
/// order. `slot_order` walks the records in address order (sessions allocated in the order they fall
/// due); `random` is a random permutation of the positions, as records freed and reused by real
/// traffic would give.
///
/// `limit_expiry_with_index_remove`: what an expiry in this bench must do at the least: the record in
/// slot order plus removing its key from a hash index (a plain map from the key's hash to its slot;
/// the key goes back in untimed, like the bench's reopening message).
fn bench_limit_expiry(c: &mut Criterion) {
    let mut group = c.benchmark_group("limit_record_in_deadline_order");
    group.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for &n in &SIZES {
        for (layout, order) in [("slot_order", (0..n as u32).collect()), ("random", permutation(n))] {
            let mut records = vec![Record::default(); n];
            let mut j = 0usize;
            group.bench_function(BenchmarkId::new(layout, n), |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        let started = Instant::now();
                        let record = &mut records[order[j] as usize];
                        record.0[0] = record.0[0].wrapping_add(1);
                        black_box(record.0[0]);
                        spent += started.elapsed();
                        j = (j + 1) % n;
                    }
                    spent
                })
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("limit_expiry_with_index_remove");
    group.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for &n in &SIZES {
        let hashes = key_hashes(&keys(n));
        let mut index: hashbrown::HashMap<u64, u32, Prehashed> =
            hashbrown::HashMap::with_capacity_and_hasher(n, Prehashed::default());
        for (slot, h) in hashes.iter().enumerate() {
            index.insert(h.hash, slot as u32);
        }
        let mut records = vec![Record::default(); n];
        let mut j = 0usize;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let record = &mut records[j];
                    record.0[0] = record.0[0].wrapping_add(1);
                    let slot = index.remove(&hashes[j].hash);
                    black_box((record.0[0], slot));
                    spent += started.elapsed();
                    index.insert(hashes[j].hash, j as u32);
                    j = (j + 1) % n;
                }
                spent
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_message, bench_message_hot, bench_expiry, bench_limit_hashmap, bench_limit_expiry);
criterion_main!(benches);
