//! The engine's output never depends on how its session map hashes keys.
//!
//! Regression for the replay hang of issue 21: the hand-made index that the engine used to keep looped
//! forever on a lookup of an absent key once every group of a small table had overflowed, which only
//! some per-process hash seeds produced. Here the same workloads run under many fixed seeds, under a
//! hasher that keeps only a few bits (collisions in every small table) and under one that sends every
//! key to the same bucket; each must finish and give exactly the default hasher's history.

mod common;

use std::hash::{BuildHasher, DefaultHasher, Hasher};
use std::time::Duration;

use common::{CheckOpts, RoutedMsg, check_history, describe};
use hooks_core::event::{AnyEvent, SessionKey};
use hooks_core::lifecycle::{DailyReset, Engine, Policy, SessionIds};
use jiff::{SignedDuration, Timestamp};

/// SipHash keyed by a seed: a different, fixed hash function per seed.
#[derive(Clone, Copy)]
struct Seeded(u64);

impl BuildHasher for Seeded {
    type Hasher = DefaultHasher;
    fn build_hasher(&self) -> DefaultHasher {
        let mut h = DefaultHasher::new();
        h.write_u64(self.0);
        h
    }
}

/// A seeded hash cut to its low `bits`: many keys share a hash, and a small table is full of collisions.
#[derive(Clone, Copy)]
struct FewBits {
    seed: u64,
    bits: u32,
}

struct FewBitsHasher(DefaultHasher, u64);

impl Hasher for FewBitsHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }
    fn finish(&self) -> u64 {
        self.0.finish() & self.1
    }
}

impl BuildHasher for FewBits {
    type Hasher = FewBitsHasher;
    fn build_hasher(&self) -> FewBitsHasher {
        FewBitsHasher(Seeded(self.seed).build_hasher(), (1u64 << self.bits) - 1)
    }
}

/// Every key hashes to 0.
#[derive(Clone, Copy)]
struct Constant;

struct ZeroHasher;

impl Hasher for ZeroHasher {
    fn write(&mut self, _: &[u8]) {}
    fn finish(&self) -> u64 {
        0
    }
}

impl BuildHasher for Constant {
    type Hasher = ZeroHasher;
    fn build_hasher(&self) -> ZeroHasher {
        ZeroHasher
    }
}

fn policies() -> Vec<(&'static str, Policy)> {
    let idle = Duration::from_secs(10 * 60);
    let base = Policy { idle_timeout: idle, ..Policy::default() };
    let sweep = Some(Duration::from_secs(4 * 60));
    let daily = Some(DailyReset::utc(4, 0).expect("a valid time"));
    vec![
        ("idle", base.clone()),
        ("sweep", Policy { sweep_interval: sweep, ..base.clone() }),
        ("daily", Policy { daily_reset: daily.clone(), ..base.clone() }),
        ("sweep+daily", Policy { sweep_interval: sweep, daily_reset: daily, ..base }),
    ]
}

/// A day of traffic over `keys` keys (scope `user` for odd keys, `chat` for even ones), with reset
/// commands, quiet gaps that let sessions expire, lookups of keys that were never open, and a shutdown.
/// Returns the history as lines plus every lookup's answer.
fn run<S: BuildHasher>(mut engine: Engine<S>, keys: u64, steps: u64) -> Vec<String> {
    let mut lines = Vec::new();
    let mut events = Vec::new();
    let mut routed = Vec::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut t: Timestamp = "2024-03-01T02:00:00Z".parse().expect("a valid time");
    for step in 0..steps {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        t += SignedDuration::from_millis((x % 20_000) as i64);
        if x.is_multiple_of(997) {
            // A quiet hour: everything expires.
            t += SignedDuration::from_hours(1);
        }
        let n = (x >> 8) % keys;
        let key = if n.is_multiple_of(2) {
            SessionKey::chat("replay", format!("chat-{n}"))
        } else {
            SessionKey::user("replay", format!("chat-{}", n / 7), format!("user-{n}"))
        };
        let text = match (x >> 20) % 40 {
            0 => "/new",
            1 => "/reset@bot",
            _ => "hello",
        };
        let before = events.len();
        let r = engine.message(&key, "u", text, t, &mut events);
        routed.push(RoutedMsg { key, at: r.at, session_id: r.session_id });
        lines.extend(events[before..].iter().map(describe));
        lines.push(format!("routed {} opened {}", r.session_id.as_u128(), r.opened));
        // Keys never opened: a lookup must answer `None`, not search forever.
        let absent = SessionKey::chat("absent", format!("{step}"));
        assert_eq!(engine.open_session(&absent), None);
        assert_eq!(engine.idle_deadline(&absent), None);
        if step % 500 == 0 {
            lines.push(format!("next {:?} open {}", engine.next_deadline(), engine.open_sessions()));
        }
    }
    let before = events.len();
    engine.shutdown(t + SignedDuration::from_mins(1), &mut events);
    lines.extend(events[before..].iter().map(describe));
    assert_eq!(engine.open_sessions(), 0);
    let idle = engine.policy().idle_timeout;
    check_history(&events, &routed, &CheckOpts { idle_timeout: idle, shut_down: true });
    assert!(events.iter().any(|e| matches!(e, AnyEvent::SessionEnd(_))));
    lines
}

#[test]
fn many_hash_seeds_give_the_same_history() {
    for (name, policy) in policies() {
        let want = run(Engine::new(policy.clone(), SessionIds::Sequential), 400, 3_000);
        for seed in 0..48 {
            let got = run(Engine::with_hasher(policy.clone(), SessionIds::Sequential, Seeded(seed)), 400, 3_000);
            assert!(got == want, "policy {name}, seed {seed}: the history differs from the default hasher's");
        }
    }
}

#[test]
fn colliding_hashes_neither_hang_nor_change_the_history() {
    for (name, policy) in policies() {
        let want = run(Engine::new(policy.clone(), SessionIds::Sequential), 300, 2_000);
        for bits in [1, 3, 6] {
            for seed in 0..4 {
                let engine = Engine::with_hasher(policy.clone(), SessionIds::Sequential, FewBits { seed, bits });
                assert!(run(engine, 300, 2_000) == want, "policy {name}, {bits} hash bits, seed {seed}");
            }
        }
        let engine = Engine::with_hasher(policy.clone(), SessionIds::Sequential, Constant);
        assert!(run(engine, 300, 2_000) == want, "policy {name}, every key in one bucket");
    }
}
