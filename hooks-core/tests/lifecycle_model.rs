//! A proptest state machine: random messages, commands, time jumps (backwards too), day boundaries
//! (including DST days in IANA zones) and shutdowns, fed both to the engine and to a small reference
//! model written here from the replay contract, independently of the engine's data structures (plain
//! vectors and linear scans, no heap, no hash table). Their histories must be identical, and each
//! passes the shared invariant checker.

mod common;

use std::time::Duration;

use common::{CheckOpts, RoutedMsg, check_history};
use hooks_core::event::{AnyEvent, SessionKey};
use hooks_core::lifecycle::{DailyReset, Engine, Policy, SessionIds};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

const NS: i128 = 1_000_000_000;

#[derive(Clone, Debug)]
enum Op {
    /// A message for key `key` from user `user`; time moves by `dt_ms` first (may be negative).
    Msg { key: usize, user: usize, text: usize, dt_ms: i64 },
    /// Time passes with no input.
    Tick { dt_ms: i64 },
    /// Shutdown (the engine stays usable afterwards).
    Shutdown { dt_ms: i64 },
}

const TEXTS: &[&str] =
    &["hi", "/new", "/reset", " /new@Bot hey", "/newest", "/New", "\u{3000}/reset", "x /new", "/reset\tnow"];
const KEYS: &[&str] = &["a", "b", "c"];

#[derive(Clone, Debug)]
struct Scenario {
    start: &'static str,
    idle_s: u64,
    sweep_s: Option<u64>,
    daily: Option<(u8, u8, &'static str)>,
    ops: Vec<Op>,
}

fn dt() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 0i64..120_000,                    // seconds apart
        3 => 0i64..2_400_000,                  // up to 40 minutes
        1 => 0i64..(36 * 3_600_000),           // up to a day and a half
        1 => -600_000i64..0,                   // a record older than the clock
        1 => Just(0i64),                       // the same instant
        // Exactly an idle timeout or a sweep interval: lands on deadlines and sweep instants.
        2 => prop::sample::select(vec![90_000i64, 300_000, 420_000, 600_000, 1_800_000, 3_600_000]),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..KEYS.len(), 0..2usize, 0..TEXTS.len(), dt()).prop_map(|(key, user, text, dt_ms)| Op::Msg { key, user, text, dt_ms }),
        2 => dt().prop_map(|dt_ms| Op::Tick { dt_ms }),
        1 => dt().prop_map(|dt_ms| Op::Shutdown { dt_ms }),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop_oneof![Just("2024-11-02T20:00:00Z"), Just("2024-03-30T20:00:00Z"), Just("2024-06-01T23:00:00.250Z")],
        prop_oneof![Just(600u64), Just(1800), Just(90)],
        prop_oneof![Just(None), Just(Some(300u64)), Just(Some(420)), Just(Some(3600))],
        prop_oneof![
            Just(None),
            Just(Some((4u8, 0u8, "UTC"))),
            Just(Some((1, 30, "America/New_York"))),
            Just(Some((2, 30, "Europe/Berlin"))),
            Just(Some((0, 0, "UTC"))),
        ],
        prop::collection::vec(op(), 1..60),
    )
        .prop_map(|(start, idle_s, sweep_s, daily, ops)| Scenario { start, idle_s, sweep_s, daily, ops })
}

/// One event of a history, compared field by field.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Start { id: u128, key: String, user: String, at: i128, cause: &'static str, prev: Option<u128> },
    End { id: u128, key: String, user: String, at: i128, reason: &'static str, count: u64, started: i128 },
}

fn engine_history(events: &[AnyEvent]) -> Vec<Ev> {
    events
        .iter()
        .filter_map(|e| match e {
            AnyEvent::SessionStart(s) => Some(Ev::Start {
                id: s.session_id.as_u128(),
                key: s.key.chat_id().to_owned(),
                user: s.user_id.to_string(),
                at: s.started_at.as_nanosecond(),
                cause: s.cause.as_str(),
                prev: s.previous_session_id.map(|p| p.as_u128()),
            }),
            AnyEvent::SessionEnd(e) => Some(Ev::End {
                id: e.session_id.as_u128(),
                key: e.key.chat_id().to_owned(),
                user: e.user_id.to_string(),
                at: e.ended_at.as_nanosecond(),
                reason: e.reason.as_str(),
                count: e.message_count,
                started: e.started_at.as_nanosecond(),
            }),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------- the reference model

struct MSession {
    id: u128,
    key: String,
    user: String,
    started: i128,
    last: i128,
    count: u64,
    open: bool,
}

struct Model {
    idle: i128,
    sweep: Option<i128>,
    daily: Option<(i8, i8, TimeZone)>,
    clock: Option<i128>,
    /// Resets at or before this instant have been considered.
    resets_done_until: i128,
    sessions: Vec<MSession>,
    history: Vec<Ev>,
}

impl Model {
    fn new(s: &Scenario) -> Self {
        Self {
            idle: i128::from(s.idle_s) * NS,
            sweep: s.sweep_s.map(|x| i128::from(x) * NS),
            daily: s.daily.map(|(h, m, z)| (h as i8, m as i8, TimeZone::get(z).unwrap())),
            clock: None,
            resets_done_until: i128::MIN,
            sessions: Vec::new(),
            history: Vec::new(),
        }
    }

    /// "A message arriving at the deadline instant finds it already closed": the instant the idle timer
    /// closes a session.
    fn idle_close_time(&self, s: &MSession) -> i128 {
        let deadline = s.last + self.idle;
        match self.sweep {
            None => deadline,
            Some(sw) => {
                // First whole multiple of the sweep interval at or after the deadline.
                let mut k = deadline / sw;
                while k * sw < deadline {
                    k += 1;
                }
                while (k - 1) * sw >= deadline {
                    k -= 1;
                }
                k * sw
            }
        }
    }

    /// The first reset instant strictly after `after`, walking local calendar days.
    fn reset_after(&self, after: i128) -> Option<i128> {
        let (h, m, tz) = self.daily.as_ref()?;
        let local_day = Timestamp::from_nanosecond(after).unwrap().to_zoned(tz.clone()).date();
        (0..5).find_map(|d| {
            let day = local_day.checked_add(jiff::Span::new().days(d)).ok()?;
            let at = day.at(*h, *m, 0, 0).to_zoned(tz.clone()).ok()?.timestamp().as_nanosecond();
            (at > after).then_some(at)
        })
    }

    fn close(&mut self, i: usize, at: i128, reason: &'static str) {
        let s = &mut self.sessions[i];
        s.open = false;
        self.history.push(Ev::End {
            id: s.id,
            key: s.key.clone(),
            user: s.user.clone(),
            at,
            reason,
            count: s.count,
            started: s.started,
        });
    }

    fn open_indices(&self) -> Vec<usize> {
        // Sessions are stored in opening order, so index order is opening order.
        (0..self.sessions.len()).filter(|&i| self.sessions[i].open).collect()
    }

    fn advance(&mut self, t: i128) {
        let t = match self.clock {
            None => {
                self.resets_done_until = t;
                t
            }
            Some(c) => c.max(t),
        };
        self.clock = Some(t);
        loop {
            let idle_next = self.open_indices().into_iter().map(|i| self.idle_close_time(&self.sessions[i])).min();
            let reset_next = self.reset_after(self.resets_done_until).filter(|r| *r <= t);
            match (idle_next.filter(|x| *x <= t), reset_next) {
                (None, None) => break,
                (idle, Some(r)) if idle.is_none_or(|x| x >= r) => {
                    for i in self.open_indices() {
                        let reason =
                            if self.sessions[i].last + self.idle <= r { "idle_expiry" } else { "scheduled_reset" };
                        self.close(i, r, reason);
                    }
                    self.resets_done_until = r;
                }
                (Some(x), _) => {
                    for i in self.open_indices() {
                        if self.idle_close_time(&self.sessions[i]) == x {
                            self.close(i, x, "idle_expiry");
                        }
                    }
                }
                (None, Some(_)) => unreachable!(),
            }
        }
    }

    fn command(text: &str) -> Option<&'static str> {
        let t = text.trim_start();
        for (name, reason) in [("/new", "user_new"), ("/reset", "user_reset")] {
            if let Some(rest) = t.strip_prefix(name)
                && (rest.is_empty() || rest.starts_with('@') || rest.starts_with(char::is_whitespace))
            {
                return Some(reason);
            }
        }
        None
    }

    fn message(&mut self, key: &str, user: &str, text: &str, at: i128) -> (u128, i128) {
        self.advance(at);
        let t = self.clock.unwrap();
        let mut open = self.sessions.iter().position(|s| s.open && s.key == key);
        let mut closed = None;
        let mut cause = "message";
        if let Some(i) = open
            && t >= self.sessions[i].last + self.idle
        {
            self.close(i, t, "auto_reset");
            closed = Some(self.sessions[i].id);
            open = None;
            cause = "auto_reset";
        }
        if let (Some(reason), Some(i)) = (Self::command(text), open) {
            self.close(i, t, reason);
            closed = Some(self.sessions[i].id);
            open = None;
            cause = "command";
        }
        let i = match open {
            Some(i) => i,
            None => {
                let id = self.sessions.len() as u128 + 1;
                self.sessions.push(MSession {
                    id,
                    key: key.to_owned(),
                    user: user.to_owned(),
                    started: t,
                    last: t,
                    count: 0,
                    open: true,
                });
                self.history.push(Ev::Start {
                    id,
                    key: key.to_owned(),
                    user: user.to_owned(),
                    at: t,
                    cause,
                    prev: closed,
                });
                self.sessions.len() - 1
            }
        };
        self.sessions[i].count += 1;
        self.sessions[i].last = t;
        (self.sessions[i].id, t)
    }

    fn shutdown(&mut self, at: i128) {
        self.advance(at);
        let t = self.clock.unwrap();
        for i in self.open_indices() {
            self.close(i, t, "shutdown");
        }
    }
}

// ---------------------------------------------------------------- the property

fn run(s: &Scenario) -> Result<(), TestCaseError> {
    let policy = Policy {
        idle_timeout: Duration::from_secs(s.idle_s),
        sweep_interval: s.sweep_s.map(Duration::from_secs),
        daily_reset: s.daily.map(|(h, m, z)| {
            if z == "UTC" { DailyReset::utc(h, m).unwrap() } else { DailyReset::in_zone(h, m, z).unwrap() }
        }),
        transcript_limit: 3,
    };
    let mut engine = Engine::new(policy.clone(), SessionIds::Sequential);
    let mut model = Model::new(s);
    let mut events = Vec::new();
    let mut routed = Vec::new();
    let mut t: Timestamp = s.start.parse().unwrap();
    for op in &s.ops {
        let (Op::Msg { dt_ms, .. } | Op::Tick { dt_ms } | Op::Shutdown { dt_ms }) = op;
        t += SignedDuration::from_millis(*dt_ms);
        match op {
            Op::Msg { key, user, text, .. } => {
                let k = SessionKey::chat("replay", KEYS[*key]);
                let user = format!("u{user}");
                let r = engine.message(&k, &user, TEXTS[*text], t, &mut events);
                let (mid, mat) = model.message(KEYS[*key], &user, TEXTS[*text], t.as_nanosecond());
                prop_assert_eq!(r.session_id.as_u128(), mid);
                prop_assert_eq!(r.at.as_nanosecond(), mat);
                routed.push(RoutedMsg { key: k, at: r.at, session_id: r.session_id });
            }
            Op::Tick { .. } => {
                engine.advance(t, &mut events);
                model.advance(t.as_nanosecond());
            }
            Op::Shutdown { .. } => {
                engine.shutdown(t, &mut events);
                model.shutdown(t.as_nanosecond());
            }
        }
        prop_assert_eq!(engine.open_sessions(), model.open_indices().len());
    }
    engine.shutdown(t, &mut events);
    model.shutdown(t.as_nanosecond());
    let got = engine_history(&events);
    prop_assert_eq!(&got, &model.history);
    check_history(&events, &routed, &CheckOpts { idle_timeout: policy.idle_timeout, shut_down: true });
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_reference_model(s in scenario()) {
        run(&s)?;
    }
}

/// A DST day in a fixed scenario, so it is covered on every run regardless of the random cases.
#[test]
fn model_and_engine_agree_across_the_new_york_fall_back_day() {
    let ops = (0..40)
        .map(|i| Op::Msg { key: i % 3, user: 0, text: if i % 11 == 5 { 1 } else { 0 }, dt_ms: 47 * 60_000 })
        .collect();
    run(&Scenario {
        start: "2024-11-02T20:00:00Z",
        idle_s: 1800,
        sweep_s: Some(420),
        daily: Some((1, 30, "America/New_York")),
        ops,
    })
    .unwrap();
}
