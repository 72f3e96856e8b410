//! An example plugin crate for gateway-example, linked statically from another crate.
//!
//! - [`remember`] (on `session_end`): writes a summary of the closed session's transcript to
//!   `<dir>/<session_id>.md`, when the gateway put a [`MemoryDir`] in the dispatcher state.
//! - [`welcome`] (on `session_start`): queues a welcome for the new session in the [`Greeter`], when the
//!   gateway put one in the state; the gateway shows it with its next reply.
//!
//! rustc links this crate into a binary only if the binary names it, so the gateway writes
//! `use gateway_plugin_memory as _;` and checks at startup with
//! `Registry::require(&["gateway_plugin_memory::remember", "gateway_plugin_memory::welcome"])`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

use hooks_core::event::{SessionId, Transcript};
use hooks_core::prelude::*;

/// The hooks of this crate, as `Registry::require` takes them.
pub const HOOKS: &[&str] = &["gateway_plugin_memory::remember", "gateway_plugin_memory::welcome"];

/// Where [`remember`] writes its files (one per session).
#[derive(Debug, Clone)]
pub struct MemoryDir(pub PathBuf);

/// Welcomes waiting to be shown, per session.
#[derive(Debug)]
pub struct Greeter {
    text: String,
    pending: Mutex<HashMap<SessionId, String>>,
}

impl Greeter {
    /// A greeter that welcomes every new session with `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self { text: text.into(), pending: Mutex::new(HashMap::new()) }
    }

    /// The welcome queued for `session`, if it has not been shown yet (taking it out of the queue).
    pub fn take(&self, session: SessionId) -> Option<String> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&session)
    }
}

/// Queues a welcome for the new session (dropped again if the session ends first).
#[hook(session_start)]
pub fn welcome(ev: &SessionStart, ctx: &HookContext) {
    if let Some(greeter) = ctx.state::<Greeter>() {
        let text = match ev.previous_session_id {
            Some(_) => format!("{} (a new session started: {})", greeter.text, ev.cause),
            None => greeter.text.clone(),
        };
        greeter.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(ev.session_id, text);
    }
}

/// Writes the closed session's summary to `<MemoryDir>/<session_id>.md`, off the async threads.
#[hook(session_end, timeout = "5s")]
pub async fn remember(ev: &SessionEnd, ctx: &HookContext) -> Result<(), HookError> {
    if let Some(greeter) = ctx.state::<Greeter>() {
        greeter.take(ev.session_id);
    }
    let Some(dir) = ctx.state::<MemoryDir>() else { return Ok(()) };
    let path = dir.0.join(format!("{}.md", ev.session_id));
    let text = summary(ev);
    tokio::task::spawn_blocking(move || std::fs::write(path, text)).await.map_err(HookError::msg)??;
    Ok(())
}

/// The summary [`remember`] writes: the session's facts, who spoke how often, and its first and last
/// messages.
pub fn summary(ev: &SessionEnd) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Session {}\n", ev.session_id);
    let _ = writeln!(s, "- key: {}", ev.key);
    let _ = writeln!(s, "- started: {}", ev.started_at);
    let _ = writeln!(s, "- ended: {} ({})", ev.ended_at, ev.reason);
    let _ = writeln!(s, "- messages: {}", ev.message_count);
    speakers(&ev.transcript, &mut s);
    let entries = ev.transcript.entries();
    let excerpt: Vec<_> = if entries.len() <= 6 {
        entries.iter().collect()
    } else {
        entries[..3].iter().chain(&entries[entries.len() - 3..]).collect()
    };
    let _ = writeln!(s, "\n## Excerpt\n");
    if ev.transcript.truncated() || entries.len() > 6 {
        let _ = writeln!(s, "(first and last messages kept; {} in the transcript)\n", entries.len());
    }
    for m in excerpt {
        let _ = writeln!(s, "- {} {}: {}", m.at, m.user_id, m.text.lines().next().unwrap_or(""));
    }
    s
}

fn speakers(transcript: &Transcript, s: &mut String) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for m in transcript.entries() {
        *counts.entry(&m.user_id).or_default() += 1;
    }
    let mut by_count: Vec<_> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let list: Vec<String> = by_count.iter().take(5).map(|(u, n)| format!("{u} ({n})")).collect();
    let _ = writeln!(s, "- speakers: {}", list.join(", "));
}

#[cfg(test)]
mod tests {
    use hooks_core::State;
    use hooks_core::dispatch::{DispatchConfig, Dispatcher};
    use hooks_core::event::{AnyEvent, SessionKey};
    use hooks_core::lifecycle::{Engine, Policy, SessionIds};
    use hooks_core::registry::Registry;

    use super::*;

    /// Real session events, made by the lifecycle engine (nobody else can make them).
    fn one_session() -> (Vec<AnyEvent>, SessionId) {
        let mut engine = Engine::new(Policy::default(), SessionIds::Sequential);
        let mut out = Vec::new();
        let key = SessionKey::chat("web", "room");
        let t0: jiff::Timestamp = "2020-01-01T00:00:00Z".parse().unwrap();
        let routed = engine.message(&key, "ann", "hello", t0, &mut out);
        for (i, text) in ["how are you", "fine", "bye"].into_iter().enumerate() {
            let at = t0 + jiff::SignedDuration::from_secs(60 * (i as i64 + 1));
            engine.message(&key, if i % 2 == 0 { "bob" } else { "ann" }, text, at, &mut out);
        }
        engine.shutdown(t0 + jiff::SignedDuration::from_secs(600), &mut out);
        (out, routed.session_id)
    }

    #[tokio::test]
    async fn welcome_is_queued_on_start_and_remember_writes_the_summary_on_end() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::new().with(Greeter::new("hello!")).with(MemoryDir(dir.path().to_owned()));
        let dispatcher = Dispatcher::with_config(Registry::from_inventory(), state, DispatchConfig::default());
        let (events, sid) = one_session();
        let greeter = || dispatcher.state().get::<Greeter>().unwrap();

        dispatcher.deliver_any(&events[0]).await;
        assert_eq!(greeter().take(sid).as_deref(), Some("hello!"));
        assert_eq!(greeter().take(sid), None, "a welcome is shown once");

        let end = events.iter().find(|e| matches!(e, AnyEvent::SessionEnd(_))).unwrap();
        let report = dispatcher.deliver_any(end).await;
        assert_eq!(report.failed, 0);
        let text = std::fs::read_to_string(dir.path().join(format!("{sid}.md"))).unwrap();
        assert!(text.contains("- messages: 4"), "{text}");
        assert!(text.contains("- ended: 2020-01-01T00:10:00Z (shutdown)"), "{text}");
        assert!(text.contains("- speakers: ann (2), bob (2)"), "{text}");
        assert!(text.contains("bob: how are you"), "{text}");
    }

    #[tokio::test]
    async fn without_state_the_hooks_do_nothing_and_do_not_fail() {
        let dispatcher = Dispatcher::new(Registry::from_inventory());
        for ev in one_session().0 {
            assert_eq!(dispatcher.deliver_any(&ev).await.failed, 0);
        }
    }
}
