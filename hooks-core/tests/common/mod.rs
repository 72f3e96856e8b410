//! Shared by the lifecycle tests: THE history-invariant checker (DESIGN.md, "History invariants") and a
//! small recording harness around the engine.
#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use hooks_core::event::{AnyEvent, CloseReason, SessionEnd, SessionId, SessionKey, SessionStart};
use hooks_core::lifecycle::{Engine, Policy, Routed, SessionIds};
use jiff::{SignedDuration, Timestamp};

/// One message as it was routed: its key, the time it was processed at, and the session it counted
/// toward.
#[derive(Clone, Debug)]
pub struct RoutedMsg {
    pub key: SessionKey,
    pub at: Timestamp,
    pub session_id: SessionId,
}

/// What the checker needs to know besides the history.
#[derive(Clone, Debug)]
pub struct CheckOpts {
    /// The policy's idle timeout.
    pub idle_timeout: Duration,
    /// Whether the history ends with a shutdown (then every session must have ended).
    pub shut_down: bool,
}

/// Checks the five history invariants over `events` (in delivery order; events other than
/// `SessionStart`/`SessionEnd` are skipped) and the routed `messages`. Panics with a description of the
/// first violation.
pub fn check_history(events: &[AnyEvent], messages: &[RoutedMsg], opts: &CheckOpts) {
    if let Err(e) = try_check_history(events, messages, opts) {
        let dump: Vec<String> = events.iter().map(describe).collect();
        panic!("history invariant violated: {e}\nhistory:\n{}", dump.join("\n"));
    }
}

/// One line per event, for failure messages.
pub fn describe(ev: &AnyEvent) -> String {
    match ev {
        AnyEvent::SessionStart(s) => format!(
            "start {} {} at {} cause {} prev {:?}",
            s.session_id.as_u128(),
            s.key,
            s.started_at,
            s.cause,
            s.previous_session_id.map(|p| p.as_u128())
        ),
        AnyEvent::SessionEnd(e) => format!(
            "end   {} {} at {} reason {} count {}",
            e.session_id.as_u128(),
            e.key,
            e.ended_at,
            e.reason,
            e.message_count
        ),
        other => format!("{} {}", other.name(), other.event_id()),
    }
}

/// [`check_history`] returning the violation instead of panicking.
pub fn try_check_history(events: &[AnyEvent], messages: &[RoutedMsg], opts: &CheckOpts) -> Result<(), String> {
    let idle = SignedDuration::try_from(opts.idle_timeout).map_err(|e| e.to_string())?;
    let mut starts: HashMap<SessionId, &SessionStart> = HashMap::new();
    let mut ends: HashMap<SessionId, &SessionEnd> = HashMap::new();
    // Invariant 2/3: the open session of each key while walking the history in order.
    let mut open: HashMap<&SessionKey, SessionId> = HashMap::new();
    let mut last_end_of_key: HashMap<&SessionKey, Timestamp> = HashMap::new();

    for ev in events {
        match ev {
            AnyEvent::SessionStart(s) => {
                if starts.insert(s.session_id, s).is_some() {
                    return Err(format!("invariant 1: session {} started twice", s.session_id));
                }
                if let Some(other) = open.get(&s.key) {
                    return Err(format!(
                        "invariant 3: session {} of {} started while {} was open",
                        s.session_id, s.key, other
                    ));
                }
                if let Some(end) = last_end_of_key.get(&s.key)
                    && s.started_at < *end
                {
                    return Err(format!("invariant 3: session {} starts before the previous one ended", s.session_id));
                }
                if let Some(prev) = s.previous_session_id {
                    let Some(prev_end) = ends.get(&prev) else {
                        return Err(format!(
                            "session {} names {} as previous, which has not ended",
                            s.session_id, prev
                        ));
                    };
                    if prev_end.key != s.key || prev_end.ended_at != s.started_at {
                        return Err(format!("session {} does not directly succeed {}", s.session_id, prev));
                    }
                }
                open.insert(&s.key, s.session_id);
            }
            AnyEvent::SessionEnd(e) => {
                let Some(start) = starts.get(&e.session_id) else {
                    return Err(format!("invariant 2: session {} ended before (or without) its start", e.session_id));
                };
                if ends.insert(e.session_id, e).is_some() {
                    return Err(format!("invariant 1: session {} ended twice", e.session_id));
                }
                if open.get(&e.key) != Some(&e.session_id) || start.key != e.key {
                    return Err(format!(
                        "invariant 2: session {} ended while not the open session of {}",
                        e.session_id, e.key
                    ));
                }
                if e.ended_at < start.started_at || e.started_at != start.started_at {
                    return Err(format!("invariant 4: session {} ends before it started", e.session_id));
                }
                open.remove(&e.key);
                last_end_of_key.insert(&e.key, e.ended_at);
            }
            _ => {}
        }
    }
    if opts.shut_down
        && let Some((key, id)) = open.iter().next()
    {
        return Err(format!("invariant 1: session {id} of {key} never ended although the history was shut down"));
    }

    // Invariant 5 and the message side of invariant 4.
    let mut counts: HashMap<SessionId, u64> = HashMap::new();
    let mut last_msg: HashMap<SessionId, Timestamp> = HashMap::new();
    let mut by_key: HashMap<&SessionKey, Vec<Timestamp>> = HashMap::new();
    for m in messages {
        let Some(start) = starts.get(&m.session_id) else {
            return Err(format!("a message was routed to {}, which never started", m.session_id));
        };
        if start.key != m.key || m.at < start.started_at {
            return Err(format!(
                "a message at {} was routed to {} of another key or before it started",
                m.at, m.session_id
            ));
        }
        if let Some(end) = ends.get(&m.session_id)
            && m.at > end.ended_at
        {
            return Err(format!("a message at {} was routed to {} after it ended", m.at, m.session_id));
        }
        *counts.entry(m.session_id).or_default() += 1;
        let last = last_msg.entry(m.session_id).or_insert(m.at);
        *last = (*last).max(m.at);
        by_key.entry(&m.key).or_default().push(m.at);
    }
    let mut sum = 0;
    for (id, end) in &ends {
        let want = counts.get(id).copied().unwrap_or(0);
        if end.message_count != want {
            return Err(format!(
                "invariant 5: session {id} reports {} messages, {want} were routed to it",
                end.message_count
            ));
        }
        if end.transcript.len() as u64 > end.message_count {
            return Err(format!("session {id} has a longer transcript than its message count"));
        }
        sum += want;
        if matches!(end.reason, CloseReason::IdleExpiry | CloseReason::AutoReset) {
            let due = last_msg.get(id).map(|t| *t + idle);
            if due.is_some_and(|due| end.ended_at < due) {
                return Err(format!(
                    "invariant 4: session {id} closed ({}) at {} before its idle deadline",
                    end.reason, end.ended_at
                ));
            }
            // No idle close while a message for the key arrived within the timeout.
            if let Some(times) = by_key.get(&end.key)
                && let Some(t) = times.iter().find(|t| **t < end.ended_at && **t + idle > end.ended_at)
            {
                return Err(format!(
                    "invariant 4: session {id} closed idle at {} but a message arrived at {t}",
                    end.ended_at
                ));
            }
        }
    }
    for id in starts.keys().filter(|id| !ends.contains_key(*id)) {
        sum += counts.get(id).copied().unwrap_or(0);
    }
    if sum != messages.len() as u64 {
        return Err(format!("invariant 5: {sum} messages counted over sessions, {} routed", messages.len()));
    }
    let unique: HashSet<_> = ends.keys().collect();
    debug_assert_eq!(unique.len(), ends.len());
    Ok(())
}

/// Parses an RFC 3339 timestamp (test shorthand).
pub fn ts(s: &str) -> Timestamp {
    s.parse().unwrap_or_else(|e| panic!("bad timestamp {s:?}: {e}"))
}

/// An engine that records every event and routed message, for checking afterwards.
pub struct Harness {
    pub engine: Engine,
    pub events: Vec<AnyEvent>,
    pub messages: Vec<RoutedMsg>,
    pub shut_down: bool,
    idle: Duration,
}

impl Harness {
    pub fn new(policy: Policy) -> Self {
        let idle = policy.idle_timeout;
        Self {
            engine: Engine::new(policy, SessionIds::Sequential),
            events: Vec::new(),
            messages: Vec::new(),
            shut_down: false,
            idle,
        }
    }

    /// Routes a message; returns the events it produced along with where it went.
    pub fn msg(&mut self, key: &SessionKey, user: &str, text: &str, at: Timestamp) -> (Routed, Vec<AnyEvent>) {
        let mut out = Vec::new();
        let routed = self.engine.message(key, user, text, at, &mut out);
        self.events.extend(out.iter().cloned());
        self.messages.push(RoutedMsg { key: key.clone(), at: routed.at, session_id: routed.session_id });
        (routed, out)
    }

    pub fn advance(&mut self, at: Timestamp) -> Vec<AnyEvent> {
        let mut out = Vec::new();
        self.engine.advance(at, &mut out);
        self.events.extend(out.iter().cloned());
        out
    }

    pub fn shutdown(&mut self, at: Timestamp) -> Vec<AnyEvent> {
        let mut out = Vec::new();
        self.engine.shutdown(at, &mut out);
        self.events.extend(out.iter().cloned());
        self.shut_down = true;
        out
    }

    pub fn check(&self) {
        check_history(&self.events, &self.messages, &CheckOpts { idle_timeout: self.idle, shut_down: self.shut_down });
    }

    /// The history as compact lines, for exact comparisons.
    pub fn lines(&self) -> Vec<String> {
        self.events.iter().map(describe).collect()
    }
}

/// The `SessionEnd`s in `events`.
pub fn ends(events: &[AnyEvent]) -> Vec<&SessionEnd> {
    events.iter().filter_map(|e| if let AnyEvent::SessionEnd(e) = e { Some(e) } else { None }).collect()
}

/// The `SessionStart`s in `events`.
pub fn starts(events: &[AnyEvent]) -> Vec<&SessionStart> {
    events.iter().filter_map(|e| if let AnyEvent::SessionStart(e) = e { Some(e) } else { None }).collect()
}
