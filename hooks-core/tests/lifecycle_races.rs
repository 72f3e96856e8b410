//! Close paths racing for one session, on a multi-thread runtime with real threads.
//!
//! Store level: for every pair of close paths (command, idle expiry, auto-reset, daily reset, shutdown;
//! a path racing itself included), 10,000 randomized interleavings of the two atomic steps on a fresh
//! [`MemoryStore`]: exactly one wins, the loser is told it lost and to which reason, the outbox holds
//! exactly one `SessionEnd`, and the history passes the invariant checker.
//!
//! Runtime level: the same races through the whole driver (a message, the clock reaching a deadline,
//! shutdown, all from different threads), fewer iterations since each starts a runtime.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{CheckOpts, RoutedMsg, check_history, ends, ts};
use hooks_core::dispatch::Dispatcher;
use hooks_core::event::{AnyEvent, CloseReason, SessionEnd, SessionKey, SessionStart};
use hooks_core::lifecycle::{DailyReset, Engine, Policy, SessionIds};
use hooks_core::registry::{Hook, Registry};
use hooks_core::runtime::{ManualClock, Runtime};
use hooks_core::store::{CloseOutcome, MemoryStore, OpenOutcome, RotateOutcome, Store};
use hooks_core::{HookContext, HookError, State};
use jiff::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Command,
    Idle,
    AutoReset,
    Daily,
    Shutdown,
}

/// What one close path asks the store to do for session 1, made by a real engine (only the lifecycle
/// constructs session events).
struct Step {
    end: SessionEnd,
    successor: Option<(SessionStart, Timestamp)>,
}

struct Templates {
    start: SessionStart,
    first_msg_at: Timestamp,
    steps: Vec<(Path, Step)>,
}

fn key() -> SessionKey {
    SessionKey::chat("race", "k")
}

fn split(out: Vec<AnyEvent>) -> (Vec<SessionStart>, Vec<SessionEnd>) {
    let mut s = Vec::new();
    let mut e = Vec::new();
    for ev in out {
        match ev {
            AnyEvent::SessionStart(x) => s.push(x),
            AnyEvent::SessionEnd(x) => e.push(x),
            _ => {}
        }
    }
    (s, e)
}

fn templates() -> Templates {
    let t0 = ts("2024-01-01T10:00:00Z");
    let k = key();
    let engine = |policy: Policy| {
        let mut e = Engine::new(policy, SessionIds::Sequential);
        let mut out = Vec::new();
        e.message(&k, "u", "hi", t0, &mut out);
        (e, split(out).0.remove(0))
    };
    let mut steps = Vec::new();

    let (mut e, start) = engine(Policy::default());
    let mut out = Vec::new();
    let at = ts("2024-01-01T10:05:00Z");
    e.message(&k, "u", "/new", at, &mut out);
    let (mut s, mut en) = split(out);
    steps.push((Path::Command, Step { end: en.remove(0), successor: Some((s.remove(0), at)) }));

    let (mut e, _) = engine(Policy::default());
    let mut out = Vec::new();
    e.advance(ts("2024-01-01T10:31:00Z"), &mut out);
    steps.push((Path::Idle, Step { end: split(out).1.remove(0), successor: None }));

    let (mut e, _) = engine(Policy { sweep_interval: Some(Duration::from_secs(3600)), ..Policy::default() });
    let mut out = Vec::new();
    let at = ts("2024-01-01T10:40:00Z");
    e.message(&k, "u", "back", at, &mut out);
    let (mut s, mut en) = split(out);
    steps.push((Path::AutoReset, Step { end: en.remove(0), successor: Some((s.remove(0), at)) }));

    let (mut e, _) = engine(Policy { daily_reset: Some(DailyReset::utc(10, 10).unwrap()), ..Policy::default() });
    let mut out = Vec::new();
    e.advance(ts("2024-01-01T10:10:00Z"), &mut out);
    steps.push((Path::Daily, Step { end: split(out).1.remove(0), successor: None }));

    let (mut e, _) = engine(Policy::default());
    let mut out = Vec::new();
    e.shutdown(ts("2024-01-01T10:05:00Z"), &mut out);
    steps.push((Path::Shutdown, Step { end: split(out).1.remove(0), successor: None }));

    Templates { start, first_msg_at: t0, steps }
}

/// The outcome of one racer: `Ok(reason)` if it won, `Err(winner's reason)` if it lost.
async fn run_step(store: &MemoryStore, step: &Step) -> Result<CloseReason, CloseReason> {
    match &step.successor {
        Some((start, _)) => match store.rotate(&step.end, start).await.expect("rotate") {
            RotateOutcome::Rotated { .. } => Ok(step.end.reason),
            RotateOutcome::Lost(lost) => Err(lost.reason),
        },
        None => match store.close_if_open(&step.end).await.expect("close") {
            CloseOutcome::Closed { .. } => Ok(step.end.reason),
            CloseOutcome::Lost(lost) => Err(lost.reason),
        },
    }
}

/// A small deterministic generator for the interleaving jitter.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn jitter(n: u64) {
    match n % 4 {
        0 => {}
        1 => tokio::task::yield_now().await,
        _ => {
            for _ in 0..(n >> 2) % 200 {
                std::hint::spin_loop();
            }
        }
    }
}

const STORE_ITERATIONS: usize = 10_000;

async fn store_race(a: Path, b: Path) {
    let t = Arc::new(templates());
    let idx = |p: Path| t.steps.iter().position(|(q, _)| *q == p).unwrap();
    let (ia, ib) = (idx(a), idx(b));
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ ((ia as u64) << 8 | ib as u64);
    let mut wins = [0usize; 2];
    for _ in 0..STORE_ITERATIONS {
        let store = Arc::new(MemoryStore::new());
        assert!(matches!(store.open(&t.start).await.unwrap(), OpenOutcome::Opened { .. }));
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let racers: Vec<_> = [ia, ib]
            .into_iter()
            .map(|i| {
                let (t, store, barrier) = (Arc::clone(&t), Arc::clone(&store), Arc::clone(&barrier));
                let delay = xorshift(&mut rng);
                tokio::spawn(async move {
                    barrier.wait().await;
                    jitter(delay).await;
                    run_step(&store, &t.steps[i].1).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for r in racers {
            results.push(r.await.unwrap());
        }
        let winners: Vec<_> = results.iter().enumerate().filter(|(_, r)| r.is_ok()).map(|(i, _)| i).collect();
        assert_eq!(winners.len(), 1, "{a:?} vs {b:?}: exactly one close wins, got {results:?}");
        let w = winners[0];
        wins[w] += 1;
        let winner_reason = results[w].unwrap();
        assert_eq!(results[1 - w], Err(winner_reason), "{a:?} vs {b:?}: the loser learns the winner's reason");
        assert_eq!(store.closed_reason(t.start.session_id), Some(winner_reason));

        let history: Vec<AnyEvent> = store.undelivered().into_iter().map(|e| e.event).collect();
        assert_eq!(ends(&history).len(), 1, "{a:?} vs {b:?}: exactly one SessionEnd");
        let mut msgs = vec![RoutedMsg { key: key(), at: t.first_msg_at, session_id: t.start.session_id }];
        let step = &t.steps[[ia, ib][w]].1;
        if let Some((start, at)) = &step.successor {
            msgs.push(RoutedMsg { key: key(), at: *at, session_id: start.session_id });
        }
        check_history(&history, &msgs, &CheckOpts { idle_timeout: Duration::from_secs(30 * 60), shut_down: false });
    }
    if a != b {
        // Not an assertion on scheduling, just a sign the jitter interleaves: report who won how often.
        eprintln!("{a:?} vs {b:?}: wins {wins:?}");
    }
}

macro_rules! store_races {
    ($($name:ident: $a:ident vs $b:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            store_race(Path::$a, Path::$b).await;
        }
    )*};
}

store_races! {
    store_command_vs_command: Command vs Command;
    store_command_vs_idle_expiry: Command vs Idle;
    store_command_vs_auto_reset: Command vs AutoReset;
    store_command_vs_daily_reset: Command vs Daily;
    store_command_vs_shutdown: Command vs Shutdown;
    store_idle_expiry_vs_idle_expiry: Idle vs Idle;
    store_idle_expiry_vs_auto_reset: Idle vs AutoReset;
    store_idle_expiry_vs_daily_reset: Idle vs Daily;
    store_idle_expiry_vs_shutdown: Idle vs Shutdown;
    store_auto_reset_vs_auto_reset: AutoReset vs AutoReset;
    store_auto_reset_vs_daily_reset: AutoReset vs Daily;
    store_auto_reset_vs_shutdown: AutoReset vs Shutdown;
    store_daily_reset_vs_daily_reset: Daily vs Daily;
    store_daily_reset_vs_shutdown: Daily vs Shutdown;
    store_shutdown_vs_shutdown: Shutdown vs Shutdown;
}

// ---- runtime level ----

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<AnyEvent>>);

fn rec_start(ev: &SessionStart, ctx: &HookContext<'_>) -> Result<(), HookError> {
    ctx.state::<Recorder>().unwrap().0.lock().unwrap().push(AnyEvent::SessionStart(ev.clone()));
    Ok(())
}

fn rec_end(ev: &SessionEnd, ctx: &HookContext<'_>) -> Result<(), HookError> {
    ctx.state::<Recorder>().unwrap().0.lock().unwrap().push(AnyEvent::SessionEnd(ev.clone()));
    Ok(())
}

/// One racer through the runtime.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// `/new` for the key at the clock's time.
    Command,
    /// The clock reaches the idle deadline (or, with sweeps, the sweep instant).
    ClockToDeadline,
    /// A message after the idle deadline and before the sweep instant (sweep policy).
    LateMessage,
    /// The clock reaches the daily reset.
    ClockToReset,
    /// Graceful shutdown.
    Shutdown,
}

const RUNTIME_ITERATIONS: usize = 250;

async fn runtime_race(a: Act, b: Act) {
    let t0 = ts("2024-01-01T10:00:00Z");
    // Idle deadline 10:30; sweeps every hour (11:00); daily reset at 10:45.
    let policy = Policy {
        sweep_interval: Some(Duration::from_secs(3600)),
        daily_reset: Some(DailyReset::utc(10, 45).unwrap()),
        ..Policy::default()
    };
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..RUNTIME_ITERATIONS {
        let dispatcher = Arc::new(Dispatcher::with_config(
            Registry::empty()
                .with(Hook::<SessionStart>::from_sync("rec_start", rec_start))
                .with(Hook::<SessionEnd>::from_sync("rec_end", rec_end)),
            State::new().with(Recorder::default()),
            Default::default(),
        ));
        let clock = Arc::new(ManualClock::new(t0));
        let rt = Runtime::start_with_ids(
            policy.clone(),
            SessionIds::Sequential,
            MemoryStore::new(),
            Arc::clone(&dispatcher),
            Arc::clone(&clock),
        );
        let first = rt.handle().message(key(), "u", "hi").await.unwrap();
        let msgs = Arc::new(Mutex::new(vec![RoutedMsg { key: key(), at: first.at, session_id: first.session_id }]));
        if matches!(a, Act::LateMessage) || matches!(b, Act::LateMessage) {
            // Past the idle deadline, before the sweep and the daily reset.
            clock.set(ts("2024-01-01T10:35:00Z"));
        }
        let rt = Arc::new(tokio::sync::Mutex::new(Some(rt)));
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let mut tasks = Vec::new();
        for act in [a, b] {
            let (rt, clock, msgs, barrier) =
                (Arc::clone(&rt), Arc::clone(&clock), Arc::clone(&msgs), Arc::clone(&barrier));
            let handle = rt.lock().await.as_ref().unwrap().handle().clone();
            let delay = xorshift(&mut rng);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                jitter(delay).await;
                match act {
                    Act::Command | Act::LateMessage => {
                        let text = if matches!(act, Act::Command) { "/new" } else { "back" };
                        if let Ok(r) = handle.message(key(), "u", text).await {
                            msgs.lock().unwrap().push(RoutedMsg { key: key(), at: r.at, session_id: r.session_id });
                        }
                    }
                    Act::ClockToDeadline => clock.set(ts("2024-01-01T11:00:00Z")),
                    Act::ClockToReset => clock.set(ts("2024-01-01T10:45:00Z")),
                    Act::Shutdown => {
                        if let Some(rt) = rt.lock().await.take() {
                            rt.shutdown(Duration::from_secs(5)).await;
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        if let Some(rt) = rt.lock().await.take() {
            let report = rt.shutdown(Duration::from_secs(5)).await;
            assert!(report.drained);
        }
        let history = dispatcher.state().get::<Recorder>().unwrap().0.lock().unwrap().clone();
        check_history(
            &history,
            &msgs.lock().unwrap(),
            &CheckOpts { idle_timeout: policy.idle_timeout, shut_down: true },
        );
        let first_ends: Vec<_> = ends(&history).into_iter().filter(|e| e.session_id == first.session_id).collect();
        assert_eq!(first_ends.len(), 1, "{a:?} vs {b:?}");
    }
}

macro_rules! runtime_races {
    ($($name:ident: $a:ident vs $b:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            runtime_race(Act::$a, Act::$b).await;
        }
    )*};
}

runtime_races! {
    runtime_command_vs_idle_expiry: Command vs ClockToDeadline;
    runtime_command_vs_daily_reset: Command vs ClockToReset;
    runtime_command_vs_shutdown: Command vs Shutdown;
    runtime_command_vs_auto_reset: Command vs LateMessage;
    runtime_idle_expiry_vs_auto_reset: ClockToDeadline vs LateMessage;
    runtime_idle_expiry_vs_daily_reset: ClockToDeadline vs ClockToReset;
    runtime_idle_expiry_vs_shutdown: ClockToDeadline vs Shutdown;
    runtime_auto_reset_vs_daily_reset: LateMessage vs ClockToReset;
    runtime_auto_reset_vs_shutdown: LateMessage vs Shutdown;
    runtime_daily_reset_vs_shutdown: ClockToReset vs Shutdown;
}
