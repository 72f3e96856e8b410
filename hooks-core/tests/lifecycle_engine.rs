//! The sans-IO engine: each close path alone, the regressions popular gateways shipped, ordering.

mod common;

use std::time::Duration;

use common::{Harness, ends, starts, ts};
use hooks_core::event::{AnyEvent, CloseReason, SessionId, SessionKey, StartCause};
use hooks_core::lifecycle::{DailyReset, Engine, Policy, SessionIds};

fn key(chat: &str) -> SessionKey {
    SessionKey::chat("replay", chat)
}

fn policy() -> Policy {
    Policy::default()
}

fn sweep(secs: u64) -> Policy {
    Policy { sweep_interval: Some(Duration::from_secs(secs)), ..Policy::default() }
}

fn daily(h: u8, m: u8) -> Policy {
    Policy { daily_reset: Some(DailyReset::utc(h, m).unwrap()), ..Policy::default() }
}

fn id(n: u128) -> SessionId {
    SessionId::from_u128(n)
}

#[test]
fn user_new_closes_and_opens_successor_with_command_cause() {
    let mut h = Harness::new(policy());
    let k = key("a");
    h.msg(&k, "u1", "hi", ts("2024-01-01T10:00:00Z"));
    let (routed, out) = h.msg(&k, "u2", "/new", ts("2024-01-01T10:05:00Z"));
    assert_eq!(routed.command, Some(CloseReason::UserNew));
    assert!(routed.opened);
    assert_eq!(routed.closed.map(|c| (c.session_id, c.reason)), Some((id(1), CloseReason::UserNew)));
    let (e, s) = (&ends(&out)[0], &starts(&out)[0]);
    assert!(matches!(out[0], AnyEvent::SessionEnd(_)) && matches!(out[1], AnyEvent::SessionStart(_)));
    assert_eq!(
        (e.session_id, e.reason, e.message_count, e.ended_at),
        (id(1), CloseReason::UserNew, 1, ts("2024-01-01T10:05:00Z"))
    );
    assert_eq!(e.transcript.entries()[0].text, "hi");
    assert_eq!((s.session_id, s.cause, s.previous_session_id), (id(2), StartCause::Command, Some(id(1))));
    assert_eq!(s.user_id, "u2", "the sender of the opening message is the session's user");
    h.shutdown(ts("2024-01-01T10:06:00Z"));
    h.check();
    // The command itself counts toward the new session.
    assert_eq!(ends(&h.events)[1].message_count, 1);
}

#[test]
fn user_reset_closes_with_user_reset() {
    let mut h = Harness::new(policy());
    let k = key("a");
    h.msg(&k, "u", "hi", ts("2024-01-01T10:00:00Z"));
    let (_, out) = h.msg(&k, "u", "  /reset@MyBot now", ts("2024-01-01T10:01:00Z"));
    assert_eq!(ends(&out)[0].reason, CloseReason::UserReset);
    h.shutdown(ts("2024-01-01T10:02:00Z"));
    h.check();
}

#[test]
fn idle_expiry_closes_at_exactly_the_deadline() {
    let mut h = Harness::new(policy());
    let k = key("a");
    h.msg(&k, "u", "hi", ts("2024-01-01T10:00:00.250Z"));
    h.msg(&k, "u", "again", ts("2024-01-01T10:10:00.500Z"));
    assert_eq!(h.engine.next_deadline(), Some(ts("2024-01-01T10:40:00.500Z")));
    assert!(h.advance(ts("2024-01-01T10:40:00.499Z")).is_empty());
    let out = h.advance(ts("2024-01-01T10:40:00.500Z"));
    let e = ends(&out)[0];
    assert_eq!((e.reason, e.ended_at, e.message_count), (CloseReason::IdleExpiry, ts("2024-01-01T10:40:00.500Z"), 2));
    assert_eq!(h.engine.open_sessions(), 0);
    assert_eq!(h.engine.next_deadline(), None);
    h.check();
}

#[test]
fn message_at_the_deadline_instant_finds_the_session_closed() {
    let mut h = Harness::new(policy());
    let k = key("a");
    h.msg(&k, "u", "hi", ts("2024-01-01T10:00:00Z"));
    let (routed, out) = h.msg(&k, "u", "late", ts("2024-01-01T10:30:00Z"));
    assert_eq!(ends(&out)[0].reason, CloseReason::IdleExpiry);
    let s = starts(&out)[0];
    assert_eq!((s.cause, s.previous_session_id), (StartCause::Message, None));
    assert!(routed.opened && routed.closed.is_none());
    h.shutdown(ts("2024-01-01T10:31:00Z"));
    h.check();
}

#[test]
fn idle_expiry_then_new_message_gives_end_then_start() {
    let mut h = Harness::new(policy());
    let k = key("a");
    h.msg(&k, "u", "hi", ts("2024-01-01T10:00:00Z"));
    let (_, out) = h.msg(&k, "u", "back", ts("2024-01-01T12:00:00Z"));
    assert_eq!(out.len(), 2);
    let (AnyEvent::SessionEnd(e), AnyEvent::SessionStart(s)) = (&out[0], &out[1]) else { panic!("{out:?}") };
    assert_eq!((e.reason, e.ended_at), (CloseReason::IdleExpiry, ts("2024-01-01T10:30:00Z")));
    assert_eq!((s.cause, s.previous_session_id, s.started_at), (StartCause::Message, None, ts("2024-01-01T12:00:00Z")));
    h.check();
}

#[test]
fn sweep_mode_closes_at_the_first_sweep_instant_at_or_after_the_deadline() {
    let mut h = Harness::new(sweep(600));
    let (a, b) = (key("a"), key("b"));
    h.msg(&a, "u", "hi", ts("2024-01-01T10:01:00Z")); // deadline 10:31 -> sweep 10:40
    h.msg(&b, "u", "hi", ts("2024-01-01T10:10:00Z")); // deadline 10:40 -> sweep 10:40 (exact multiple)
    assert_eq!(h.engine.next_deadline(), Some(ts("2024-01-01T10:40:00Z")));
    assert!(h.advance(ts("2024-01-01T10:39:59Z")).is_empty());
    let out = h.advance(ts("2024-01-01T10:40:00Z"));
    let got: Vec<_> = ends(&out).iter().map(|e| (e.session_id, e.reason, e.ended_at)).collect();
    assert_eq!(
        got,
        [
            (id(1), CloseReason::IdleExpiry, ts("2024-01-01T10:40:00Z")),
            (id(2), CloseReason::IdleExpiry, ts("2024-01-01T10:40:00Z"))
        ]
    );
    h.check();
}

#[test]
fn auto_reset_end_precedes_its_start() {
    let mut h = Harness::new(sweep(600));
    let k = key("a");
    h.msg(&k, "u", "hi", ts("2024-01-01T10:01:00Z")); // deadline 10:31, swept at 10:40
    let (routed, out) = h.msg(&k, "u", "back", ts("2024-01-01T10:35:00Z"));
    let (AnyEvent::SessionEnd(e), AnyEvent::SessionStart(s)) = (&out[0], &out[1]) else { panic!("{out:?}") };
    assert_eq!((e.reason, e.ended_at), (CloseReason::AutoReset, ts("2024-01-01T10:35:00Z")));
    assert_eq!((s.cause, s.previous_session_id), (StartCause::AutoReset, Some(e.session_id)));
    assert_eq!(routed.closed.map(|c| c.reason), Some(CloseReason::AutoReset));
    h.shutdown(ts("2024-01-01T10:36:00Z"));
    h.check();
}

#[test]
fn auto_reset_at_exactly_the_deadline_and_command_after_auto_reset() {
    let mut h = Harness::new(sweep(600));
    let k = key("a");
    h.msg(&k, "u", "hi", ts("2024-01-01T10:01:00Z"));
    // t == deadline counts as past it (step 1); a reset command then finds no open session (step 2).
    let (routed, out) = h.msg(&k, "u", "/new", ts("2024-01-01T10:31:00Z"));
    assert_eq!(ends(&out).len(), 1);
    assert_eq!(ends(&out)[0].reason, CloseReason::AutoReset);
    assert_eq!(starts(&out)[0].cause, StartCause::AutoReset);
    assert_eq!(routed.command, Some(CloseReason::UserNew));
    // A message exactly at a sweep instant finds the session already swept (idle_expiry, not auto_reset).
    let (_, out) = h.msg(&k, "u", "x", ts("2024-01-01T11:10:00Z"));
    assert_eq!(ends(&out)[0].reason, CloseReason::IdleExpiry);
    assert_eq!(starts(&out)[0].cause, StartCause::Message);
    h.check();
}

#[test]
fn daily_reset_closes_busy_sessions_as_scheduled_and_idle_ones_as_expired() {
    let mut h = Harness::new(Policy { sweep_interval: Some(Duration::from_secs(3600)), ..daily(4, 0) });
    let (a, b) = (key("a"), key("b"));
    h.msg(&a, "u", "hi", ts("2024-01-01T03:20:00Z")); // deadline 03:50, sweep would be 04:00
    h.msg(&b, "u", "hi", ts("2024-01-01T03:45:00Z")); // deadline 04:15
    let out = h.advance(ts("2024-01-01T05:00:00Z"));
    let got: Vec<_> = ends(&out).iter().map(|e| (e.session_id, e.reason, e.ended_at)).collect();
    assert_eq!(
        got,
        [
            (id(1), CloseReason::IdleExpiry, ts("2024-01-01T04:00:00Z")),
            (id(2), CloseReason::ScheduledReset, ts("2024-01-01T04:00:00Z"))
        ]
    );
    h.check();
}

#[test]
fn daily_reset_then_message_at_the_reset_instant_opens_a_fresh_session() {
    let mut h = Harness::new(daily(0, 0));
    let k = key("a");
    h.msg(&k, "u", "hi", ts("2024-01-01T23:50:00Z"));
    assert_eq!(h.engine.next_deadline(), Some(ts("2024-01-02T00:00:00Z")));
    let (routed, out) = h.msg(&k, "u", "hello", ts("2024-01-02T00:00:00Z"));
    assert_eq!(ends(&out)[0].reason, CloseReason::ScheduledReset);
    assert!(routed.opened && routed.closed.is_none());
    // The next reset is a day later, not at the same instant again.
    assert_eq!(h.engine.next_deadline(), Some(ts("2024-01-02T00:30:00Z")));
    h.msg(&k, "u", "x", ts("2024-01-02T00:20:00Z"));
    h.msg(&k, "u", "x", ts("2024-01-02T00:40:00Z"));
    h.msg(&k, "u", "x", ts("2024-01-02T23:59:00Z"));
    let out = h.advance(ts("2024-01-05T00:00:00Z"));
    assert_eq!(ends(&out).iter().map(|e| e.reason).collect::<Vec<_>>(), [CloseReason::ScheduledReset]);
    h.check();
}

#[test]
fn daily_reset_in_a_zone_happens_once_on_a_dst_day() {
    // America/New_York falls back on 2024-11-03: 01:30 happens twice; the reset happens at the first.
    let policy = Policy {
        idle_timeout: Duration::from_secs(6 * 3600),
        daily_reset: Some(DailyReset::in_zone(1, 30, "America/New_York").unwrap()),
        ..Policy::default()
    };
    let mut h = Harness::new(policy);
    let k = key("a");
    let mut t = ts("2024-11-02T12:00:00Z");
    let mut resets = Vec::new();
    while t < ts("2024-11-05T12:00:00Z") {
        let (_, out) = h.msg(&k, "u", "tick", t);
        resets.extend(ends(&out).iter().map(|e| (e.reason, e.ended_at)));
        t += jiff::SignedDuration::from_mins(20);
    }
    assert_eq!(
        resets,
        [
            (CloseReason::ScheduledReset, ts("2024-11-03T05:30:00Z")),
            (CloseReason::ScheduledReset, ts("2024-11-04T06:30:00Z")),
            (CloseReason::ScheduledReset, ts("2024-11-05T06:30:00Z")),
        ]
    );
    h.check();
}

#[test]
fn shutdown_closes_every_session_including_idle_ones_in_opening_order() {
    let mut h = Harness::new(sweep(3600));
    let (a, b, c) = (key("a"), key("b"), key("c"));
    h.msg(&b, "u", "hi", ts("2024-01-01T10:00:00Z"));
    h.msg(&a, "u", "hi", ts("2024-01-01T10:01:00Z"));
    h.msg(&c, "u", "hi", ts("2024-01-01T10:40:00Z"));
    // b and a are past their deadlines but not yet swept (11:00): shutdown still ends them.
    let out = h.shutdown(ts("2024-01-01T10:45:00Z"));
    let got: Vec<_> = ends(&out).iter().map(|e| (e.session_id, e.reason)).collect();
    assert_eq!(got, [(id(1), CloseReason::Shutdown), (id(2), CloseReason::Shutdown), (id(3), CloseReason::Shutdown)]);
    assert_eq!(h.engine.open_sessions(), 0);
    h.check();
}

#[test]
fn shutdown_performs_due_closes_first_and_uses_the_clock_if_later() {
    let mut h = Harness::new(policy());
    let (a, b) = (key("a"), key("b"));
    h.msg(&a, "u", "hi", ts("2024-01-01T10:00:00Z"));
    h.msg(&b, "u", "hi", ts("2024-01-01T10:20:00Z"));
    let out = h.shutdown(ts("2024-01-01T10:35:00Z"));
    let got: Vec<_> = ends(&out).iter().map(|e| (e.reason, e.ended_at)).collect();
    assert_eq!(
        got,
        [(CloseReason::IdleExpiry, ts("2024-01-01T10:30:00Z")), (CloseReason::Shutdown, ts("2024-01-01T10:35:00Z"))]
    );
    h.check();

    let mut h = Harness::new(policy());
    h.msg(&a, "u", "hi", ts("2024-01-01T10:00:00Z"));
    let out = h.shutdown(ts("2024-01-01T09:00:00Z"));
    assert_eq!(ends(&out)[0].ended_at, ts("2024-01-01T10:00:00Z"));
    h.check();
}

#[test]
fn new_with_no_prior_session_emits_no_session_end() {
    let mut h = Harness::new(policy());
    let (routed, out) = h.msg(&key("a"), "u", "/new", ts("2024-01-01T10:00:00Z"));
    assert!(ends(&out).is_empty());
    let s = starts(&out)[0];
    assert_eq!((s.cause, s.previous_session_id), (StartCause::Message, None));
    assert_eq!(routed.command, Some(CloseReason::UserNew));
    assert!(routed.closed.is_none());
    h.check();
}

#[test]
fn shutdown_then_later_new_does_not_end_a_session_twice() {
    let mut h = Harness::new(policy());
    let k = key("a");
    h.msg(&k, "u", "hi", ts("2024-01-01T10:00:00Z"));
    h.shutdown(ts("2024-01-01T10:01:00Z"));
    let (routed, out) = h.msg(&k, "u", "/new", ts("2024-01-01T10:02:00Z"));
    assert!(ends(&out).is_empty(), "{out:?}");
    assert!(routed.closed.is_none());
    h.shutdown(ts("2024-01-01T10:03:00Z"));
    assert_eq!(ends(&h.events).len(), 2);
    h.check();
}

#[test]
fn the_clock_never_moves_back() {
    let mut h = Harness::new(policy());
    let k = key("a");
    h.msg(&k, "u", "hi", ts("2024-01-01T10:00:00Z"));
    let (routed, _) = h.msg(&k, "u", "old", ts("2024-01-01T09:00:00Z"));
    assert_eq!(routed.at, ts("2024-01-01T10:00:00Z"));
    assert_eq!(h.engine.now(), Some(ts("2024-01-01T10:00:00Z")));
    assert_eq!(h.engine.idle_deadline(&k), Some(ts("2024-01-01T10:30:00Z")));
    h.check();
}

#[test]
fn due_closes_happen_in_time_order_then_opening_order_across_keys() {
    let mut h = Harness::new(policy());
    let (a, b, c) = (key("a"), key("b"), key("c"));
    h.msg(&a, "u", "hi", ts("2024-01-01T10:05:00Z"));
    h.msg(&b, "u", "hi", ts("2024-01-01T10:00:00Z"));
    h.msg(&c, "u", "hi", ts("2024-01-01T10:00:00Z"));
    h.msg(&b, "u", "hi", ts("2024-01-01T10:05:00Z"));
    let (_, out) = h.msg(&key("d"), "u", "hi", ts("2024-01-02T00:00:00Z"));
    let got: Vec<_> = ends(&out).iter().map(|e| (e.key.chat_id().to_owned(), e.ended_at)).collect();
    assert_eq!(
        got,
        [
            ("a".to_owned(), ts("2024-01-01T10:35:00Z")),
            ("b".to_owned(), ts("2024-01-01T10:35:00Z")),
            ("c".to_owned(), ts("2024-01-01T10:35:00Z")),
        ]
    );
    assert!(matches!(out.last(), Some(AnyEvent::SessionStart(_))));
    h.check();
}

#[test]
fn scope_user_keys_split_a_chat() {
    let mut h = Harness::new(policy());
    let (a, b) = (SessionKey::user("replay", "c", "1"), SessionKey::user("replay", "c", "2"));
    h.msg(&a, "1", "hi", ts("2024-01-01T10:00:00Z"));
    h.msg(&b, "2", "hi", ts("2024-01-01T10:00:00Z"));
    let (_, out) = h.msg(&a, "1", "/new", ts("2024-01-01T10:01:00Z"));
    assert_eq!(ends(&out).len(), 1);
    assert_eq!(h.engine.open_sessions(), 2);
    h.shutdown(ts("2024-01-01T10:02:00Z"));
    h.check();
}

#[test]
fn transcript_keeps_the_most_recent_messages_up_to_the_limit() {
    let mut h = Harness::new(Policy { transcript_limit: 2, ..policy() });
    let k = key("a");
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        h.msg(&k, "u", text, ts("2024-01-01T10:00:00Z") + jiff::SignedDuration::from_secs(i as i64));
    }
    let out = h.shutdown(ts("2024-01-01T10:01:00Z"));
    let e = ends(&out)[0];
    let texts: Vec<_> = e.transcript.entries().iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["two", "three"]);
    assert!(e.transcript.truncated());
    assert_eq!(e.message_count, 3);

    let mut h = Harness::new(Policy { transcript_limit: 0, ..policy() });
    h.msg(&k, "u", "one", ts("2024-01-01T10:00:00Z"));
    let out = h.shutdown(ts("2024-01-01T10:01:00Z"));
    assert!(ends(&out)[0].transcript.is_empty());
    h.check();
}

#[test]
fn next_deadline_follows_moved_deadlines_and_resets() {
    let mut h = Harness::new(daily(12, 0));
    assert_eq!(h.engine.next_deadline(), None);
    let k = key("a");
    h.msg(&k, "u", "hi", ts("2024-01-01T11:00:00Z"));
    assert_eq!(h.engine.next_deadline(), Some(ts("2024-01-01T11:30:00Z")));
    h.msg(&k, "u", "hi", ts("2024-01-01T11:20:00Z"));
    assert_eq!(h.engine.next_deadline(), Some(ts("2024-01-01T11:50:00Z")));
    h.msg(&k, "u", "hi", ts("2024-01-01T11:40:00Z"));
    assert_eq!(h.engine.next_deadline(), Some(ts("2024-01-01T12:00:00Z")));
    h.advance(ts("2024-01-01T12:00:00Z"));
    assert_eq!(h.engine.next_deadline(), None);
    let stats = h.engine.stats();
    assert_eq!((stats.closed(CloseReason::ScheduledReset), stats.opened, stats.messages), (1, 1, 3));
    h.check();
}

#[test]
fn random_ids_are_distinct_and_events_carry_stable_event_ids() {
    let mut e = Engine::new(policy(), SessionIds::Random);
    let mut out = Vec::new();
    let k = key("a");
    e.message(&k, "u", "hi", ts("2024-01-01T10:00:00Z"), &mut out);
    e.message(&k, "u", "/new", ts("2024-01-01T10:01:00Z"), &mut out);
    let (s1, s2) = (starts(&out)[0], starts(&out)[1]);
    assert_ne!(s1.session_id, s2.session_id);
    let end = ends(&out)[0];
    use hooks_core::event::{EventId, SessionEventKind};
    assert_eq!(end.event_id, EventId::for_session(s1.session_id, SessionEventKind::End));
    assert_eq!(s1.event_id, EventId::for_session(s1.session_id, SessionEventKind::Start));
    assert_eq!(end.detected_at, end.ended_at);
}

#[test]
fn many_resets_within_one_timeout_leave_one_session_and_one_deadline() {
    let mut h = Harness::new(policy());
    let k = key("a");
    let t0 = ts("2024-01-01T10:00:00Z");
    for i in 0..5000 {
        h.msg(&k, "u", "/new", t0 + jiff::SignedDuration::from_millis(i));
    }
    assert_eq!(h.engine.open_sessions(), 1);
    assert_eq!(
        h.engine.next_deadline(),
        Some(t0 + jiff::SignedDuration::from_millis(4999) + jiff::SignedDuration::from_mins(30))
    );
    let out = h.advance(t0 + jiff::SignedDuration::from_hours(1));
    assert_eq!(ends(&out).len(), 1);
    h.check();
}
