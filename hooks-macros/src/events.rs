//! The event catalogue as the macro sees it: the one table of names, types and decision types.
//!
//! It mirrors `hooks_core::registry::EVENT_NAMES` (same names, same order). A hook for an event missing
//! here would be rejected as unknown; a name here that hooks-core lacks would fail to resolve in the
//! generated code, so a drift between the two tables cannot go unnoticed.

/// One event of the catalogue.
#[derive(Debug)]
pub(crate) struct EventInfo {
    /// The name written in `#[hook(...)]`, e.g. `session_end`.
    pub(crate) name: &'static str,
    /// The struct in `hooks_core::event`, e.g. `SessionEnd`.
    pub(crate) ty: &'static str,
    /// The decision type its handlers may return, for decision events.
    pub(crate) decision: Option<&'static str>,
}

/// Every event, in catalogue order.
pub(crate) const EVENTS: &[EventInfo] = &[
    EventInfo { name: "gateway_startup", ty: "GatewayStartup", decision: None },
    EventInfo { name: "gateway_shutdown", ty: "GatewayShutdown", decision: None },
    EventInfo { name: "session_start", ty: "SessionStart", decision: None },
    EventInfo { name: "session_end", ty: "SessionEnd", decision: None },
    EventInfo { name: "message_received", ty: "MessageReceived", decision: None },
    EventInfo { name: "command", ty: "Command", decision: Some("CommandDecision") },
    EventInfo { name: "agent_turn_start", ty: "AgentTurnStart", decision: None },
    EventInfo { name: "agent_turn_end", ty: "AgentTurnEnd", decision: None },
];

/// Every decision type of the catalogue (a return type only decision events accept).
pub(crate) fn decision_types() -> impl Iterator<Item = &'static str> {
    EVENTS.iter().filter_map(|e| e.decision)
}

/// The event named `name` in `#[hook(...)]`.
pub(crate) fn by_name(name: &str) -> Option<&'static EventInfo> {
    EVENTS.iter().find(|e| e.name == name)
}

/// The event whose struct is `ty` (for `#[hook(SessionEnd)]`, which gets a "write `session_end`" hint).
pub(crate) fn by_type(ty: &str) -> Option<&'static EventInfo> {
    EVENTS.iter().find(|e| e.ty == ty)
}

/// The closest event name to a misspelled `name`, if one is close enough to be a likely typo.
pub(crate) fn suggest(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    EVENTS
        .iter()
        .map(|e| (strsim::damerau_levenshtein(&lower, e.name), e.name))
        .filter(|(distance, candidate)| *distance <= 3.max(candidate.len() / 3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// "`gateway_startup`, `gateway_shutdown`, …" for error notes.
pub(crate) fn list() -> String {
    EVENTS.iter().map(|e| format!("`{}`", e.name)).collect::<Vec<_>>().join(", ")
}
