//! The audit hook: one JSON line per delivered event, in delivery order, in the events file.
//!
//! The two session lines have exactly the replay contract's shape (docs/gateway.md):
//!
//! ```text
//! {"event":"session_start","event_id":E,"at":T,"session_id":S,"platform":P,"chat_id":C,"user_id":U,"cause":K,"previous_session_id":S|null}
//! {"event":"session_end","event_id":E,"at":T,"session_id":S,"platform":P,"chat_id":C,"user_id":U,"reason":R,"message_count":N,"started_at":T}
//! ```
//!
//! A `session_end` detected late (the session fell due while the gateway was down) adds
//! `"detected_at":T`. The other events add lines of their own kinds (`gateway_startup`,
//! `message_received`, `command`, `agent_turn_start`, `agent_turn_end`, `gateway_shutdown`), which
//! readers of the contract skip. Message texts are not written, only their length in characters.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use hooks_core::event::{EventId, SessionId, SessionKey, TurnOutcome};
use hooks_core::prelude::*;

use crate::jsonl::{TsWriter, push_id, push_str, push_u64};

/// Which events the audit hook writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditLevel {
    /// Only `session_start` and `session_end`.
    Sessions,
    /// Every event of the catalogue.
    #[default]
    All,
}

/// The events file, shared by the audit hooks through the dispatcher state (as an `Arc<AuditLog>`).
#[derive(Debug)]
pub struct AuditLog {
    level: AuditLevel,
    sink: SinkLock,
}

/// The lock around the events file's [`Sink`]: taking it is one locked instruction and releasing it
/// a plain store, where `std::sync::Mutex` needs a locked instruction for each (~15 ns apiece on the
/// VM of docs/benchmarks.md, and the hooks take it once per event). A thread that finds it held
/// yields its time slice until it is free rather than sleeping on a futex: it is held only to
/// append a line, and in `serve` also to write that line to the file. A hook that panics while
/// holding it (it cannot: appending bytes does not panic) would release it as its guard unwinds.
type SinkLock = spin::mutex::SpinMutex<Sink, spin::relax::Yield>;

/// Lines are formatted straight into `buf`, which goes to the file when it passes [`FLUSH_AT`] bytes
/// (or after every line with `flush_each`): one copy per line, from `buf` to the kernel.
#[derive(Debug)]
struct Sink {
    file: File,
    buf: Vec<u8>,
    dates: TsWriter,
    sessions: SessionFields,
    lines: u64,
    flush_each: bool,
    error: Option<String>,
}

/// 1 MiB: against 64 KiB, the kernel's time writing a replay's 359 MB events file went from ~0.27 to
/// ~0.21 s (median of 8 alternating runs); a replay killed midway loses at most this much of the
/// file's tail, and a durable replay flushes before it records deliveries anyway.
const FLUSH_AT: usize = 1 << 20;

impl Sink {
    fn flush(&mut self) -> io::Result<()> {
        let result = self.file.write_all(&self.buf);
        self.buf.clear();
        if let Err(e) = &result {
            self.error.get_or_insert_with(|| e.to_string());
        }
        result
    }
}

impl AuditLog {
    /// Creates the file at `path`, replacing an earlier one: what `replay` does.
    ///
    /// An existing regular file is removed first and a new one created, rather than truncated in
    /// place: on ext4 (and XFS), closing a file that was truncated and rewritten starts writing all of
    /// it back to the disk, which made a replay of 1,000,000 records wait ~0.27 s at exit for a 359 MB
    /// events file (the `auto_da_alloc` heuristic, there to protect the "truncate and rewrite" pattern
    /// against a crash). Anything that is not a regular file (`/dev/stdout`, a FIFO, a symbolic link)
    /// is opened as it is.
    ///
    /// # Errors
    ///
    /// The old file cannot be removed, or the new one cannot be created.
    pub fn create(path: &Path, level: AuditLevel) -> io::Result<Self> {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file()) {
            std::fs::remove_file(path)?;
        }
        Ok(Self::new(File::create(path)?, level, false))
    }

    /// Opens the file at `path` for appending, creating it if needed, and flushes after every line:
    /// what `serve` does, so a restarted gateway continues the file and a crash loses no written line.
    ///
    /// # Errors
    ///
    /// The file cannot be opened.
    pub fn append(path: &Path, level: AuditLevel) -> io::Result<Self> {
        Ok(Self::new(OpenOptions::new().create(true).append(true).open(path)?, level, true))
    }

    fn new(file: File, level: AuditLevel, flush_each: bool) -> Self {
        let sink = Sink {
            file,
            buf: Vec::with_capacity(FLUSH_AT + 4096),
            dates: TsWriter::default(),
            sessions: SessionFields::default(),
            lines: 0,
            flush_each,
            error: None,
        };
        Self { level, sink: SinkLock::new(sink) }
    }

    /// The number of lines written so far.
    pub fn lines(&self) -> u64 {
        self.sink.lock().lines
    }

    /// Writes the buffered lines to the file (to the kernel: they survive the process, not a power
    /// loss). A durable replay calls this before it records deliveries, so that an event the store
    /// counts as delivered is in the file even if the process is killed right after.
    ///
    /// # Errors
    ///
    /// The write failed (the error is also kept for [`finish`](Self::finish)).
    pub fn flush(&self) -> io::Result<()> {
        let mut sink = self.sink.lock();
        if sink.buf.is_empty() { Ok(()) } else { sink.flush() }
    }

    /// Flushes buffered lines to the file.
    ///
    /// # Errors
    ///
    /// The first write error of any earlier line (so a lost line is never silent), or the flush's own.
    pub fn finish(&self) -> io::Result<u64> {
        let mut sink = self.sink.lock();
        let flushed = sink.flush();
        if let Some(e) = sink.error.take() {
            return Err(io::Error::other(format!("writing the events file failed: {e}")));
        }
        flushed?;
        Ok(sink.lines)
    }

    fn write(&self, all_only: bool, fill: impl FnOnce(&mut Line<'_>)) -> Result<(), HookError> {
        if all_only && self.level != AuditLevel::All {
            return Ok(());
        }
        let mut sink = self.sink.lock();
        let sink = &mut *sink;
        fill(&mut Line { buf: &mut sink.buf, dates: &mut sink.dates, sessions: &mut sink.sessions });
        sink.buf.extend_from_slice(b"}\n");
        sink.lines += 1;
        if sink.flush_each || sink.buf.len() >= FLUSH_AT {
            sink.flush()?;
        }
        Ok(())
    }
}

/// What a hook formats its line into: the sink's buffer, and its memories of the last date and of
/// each session's fields.
struct Line<'a> {
    buf: &'a mut Vec<u8>,
    dates: &'a mut TsWriter,
    sessions: &'a mut SessionFields,
}

/// The part of a line that is the same on every line of a session, `,"session_id":S,"platform":P,
/// "chat_id":C`, as last written for each session. A session's later lines copy it instead of
/// hex-encoding the id and escaping the two strings again: ~300 instructions a line, ~5 % of a
/// replay. Direct-mapped on the id's low bits (sequential in a replay, random in `serve`), so it
/// holds at most [`SESSION_SLOTS`] fragments. A fragment is used only when its id, platform and chat
/// id are those of the line (so events made up with a reused id, as in tests, are still written as
/// they are); otherwise the slot is written afresh.
#[derive(Debug)]
struct SessionFields {
    slots: Box<[Option<SessionSlot>]>,
}

/// One session's fragment, followed in the same buffer by the platform and chat id it was written
/// from (unescaped, to compare with).
#[derive(Debug)]
struct SessionSlot {
    id: SessionId,
    /// Where the fragment ends and the platform starts.
    fields_len: usize,
    platform_len: usize,
    bytes: Vec<u8>,
}

impl SessionSlot {
    fn holds(&self, id: SessionId, key: &SessionKey) -> bool {
        let (platform, chat_id) = (key.platform().as_bytes(), key.chat_id().as_bytes());
        let (kept_platform, kept_chat_id) = self.bytes[self.fields_len..].split_at(self.platform_len);
        self.id == id && kept_platform == platform && kept_chat_id == chat_id
    }
}

/// Slots of [`SessionFields`]: more than the sessions a replay of the corpora has open at once (with
/// 4,096, a third of the lines missed), ~3 MB when all are filled.
const SESSION_SLOTS: usize = 16_384;
const _: () = assert!(SESSION_SLOTS.is_power_of_two());

impl Default for SessionFields {
    fn default() -> Self {
        Self { slots: (0..SESSION_SLOTS).map(|_| None).collect() }
    }
}

impl SessionFields {
    /// Appends `,"session_id":…,"platform":…,"chat_id":…` for session `id` with key `key`.
    fn push(&mut self, buf: &mut Vec<u8>, id: SessionId, key: &SessionKey) {
        let slot = &mut self.slots[id.as_u128() as usize & (SESSION_SLOTS - 1)];
        let slot = match slot {
            Some(known) if known.holds(id, key) => known,
            _ => {
                // A slot's buffer is reused: once every slot was used, a miss allocates nothing.
                let mut bytes = slot.take().map_or_else(|| Vec::with_capacity(160), |old| old.bytes);
                bytes.clear();
                write_session_fields(&mut bytes, Some(id), key);
                let fields_len = bytes.len();
                bytes.extend_from_slice(key.platform().as_bytes());
                bytes.extend_from_slice(key.chat_id().as_bytes());
                slot.insert(SessionSlot { id, fields_len, platform_len: key.platform().len(), bytes })
            }
        };
        buf.extend_from_slice(&slot.bytes[..slot.fields_len]);
    }
}

/// `,"session_id":…,"platform":…,"chat_id":…`, written out.
fn write_session_fields(buf: &mut Vec<u8>, id: Option<SessionId>, key: &SessionKey) {
    buf.extend_from_slice(b",\"session_id\":");
    push_session_id(buf, id);
    buf.extend_from_slice(b",\"platform\":");
    push_str(buf, key.platform());
    buf.extend_from_slice(b",\"chat_id\":");
    push_str(buf, key.chat_id());
}

// `head` and the `field_*` writers are inlined into each hook, so that their constant keys become a
// few stores instead of `memcpy` calls (3.5 % of a whole replay when the compiler chose otherwise).
// Each constant part of a line is one literal, made by `start!` and `key!`, so it is one append (one
// capacity check) rather than three or four.

/// `{"event":"NAME","event_id":`, the start of every line.
macro_rules! start {
    ($event:literal) => {
        concat!("{\"event\":\"", $event, "\",\"event_id\":").as_bytes()
    };
}

/// `,"NAME":`, what comes before a field's value.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":").as_bytes()
    };
}

/// Starts a line: `start` (made by `start!`), then the event id.
#[inline(always)]
fn head(line: &mut Line<'_>, start: &[u8], event_id: EventId) {
    line.buf.extend_from_slice(start);
    push_id(line.buf, event_id.hyphenated_bytes());
}

/// A field: `key` (made by `key!`), then the value.
#[inline(always)]
fn field_ts(line: &mut Line<'_>, key: &[u8], ts: jiff::Timestamp) {
    line.buf.extend_from_slice(key);
    line.dates.push(line.buf, ts);
}

#[inline(always)]
fn field_str(line: &mut Line<'_>, key: &[u8], value: &str) {
    line.buf.extend_from_slice(key);
    push_str(line.buf, value);
}

#[inline(always)]
fn field_id(line: &mut Line<'_>, key: &[u8], id: Option<SessionId>) {
    line.buf.extend_from_slice(key);
    push_session_id(line.buf, id);
}

/// A quoted session id, or `null`.
#[inline(always)]
fn push_session_id(buf: &mut Vec<u8>, id: Option<SessionId>) {
    match id {
        Some(id) => push_id(buf, id.hyphenated_bytes()),
        None => buf.extend_from_slice(b"null"),
    }
}

/// `session_id`, `platform` and `chat_id`, in that order.
#[inline(always)] // see `TsWriter::push`
fn fields_session(line: &mut Line<'_>, id: Option<SessionId>, key: &SessionKey) {
    match id {
        Some(id) => line.sessions.push(line.buf, id, key),
        None => write_session_fields(line.buf, None, key),
    }
}

#[inline(always)]
fn field_u64(line: &mut Line<'_>, key: &[u8], n: u64) {
    line.buf.extend_from_slice(key);
    push_u64(line.buf, n);
}

/// The length of `text` in characters: its length in bytes when it is ASCII (most chat messages,
/// and a word-at-a-time check), else a count of the bytes that start a character.
fn chars(text: &str) -> u64 {
    if text.is_ascii() { text.len() as u64 } else { text.chars().count() as u64 }
}

macro_rules! audit_log {
    ($ctx:expr) => {
        match $ctx.state::<std::sync::Arc<AuditLog>>() {
            Some(log) => log,
            None => return Ok(()),
        }
    };
}

#[hook(session_start, priority = 100)]
fn audit_session_start(ev: &SessionStart, ctx: &HookContext) -> Result<(), HookError> {
    audit_log!(ctx).write(false, |b| {
        head(b, start!("session_start"), ev.event_id);
        field_ts(b, key!("at"), ev.started_at);
        fields_session(b, Some(ev.session_id), &ev.key);
        field_str(b, key!("user_id"), &ev.user_id);
        field_str(b, key!("cause"), ev.cause.as_str());
        field_id(b, key!("previous_session_id"), ev.previous_session_id);
    })
}

#[hook(session_end, priority = 100)]
fn audit_session_end(ev: &SessionEnd, ctx: &HookContext) -> Result<(), HookError> {
    audit_log!(ctx).write(false, |b| {
        head(b, start!("session_end"), ev.event_id);
        field_ts(b, key!("at"), ev.ended_at);
        fields_session(b, Some(ev.session_id), &ev.key);
        field_str(b, key!("user_id"), &ev.user_id);
        field_str(b, key!("reason"), ev.reason.as_str());
        field_u64(b, key!("message_count"), ev.message_count);
        field_ts(b, key!("started_at"), ev.started_at);
        if ev.detected_late() {
            field_ts(b, key!("detected_at"), ev.detected_at);
        }
    })
}

#[hook(message_received, priority = 100)]
fn audit_message(ev: &MessageReceived, ctx: &HookContext) -> Result<(), HookError> {
    audit_log!(ctx).write(true, |b| {
        head(b, start!("message_received"), ev.event_id);
        field_ts(b, key!("at"), ev.at);
        fields_session(b, Some(ev.session_id), &ev.key);
        field_str(b, key!("user_id"), &ev.user_id);
        field_u64(b, key!("chars"), chars(&ev.text));
    })
}

/// Runs first among the command hooks: a denial stops the hooks after it, and an audit log must
/// record denied commands too. It records the command as received, before any rewrite.
#[hook(command, priority = -1000)]
fn audit_command(ev: &Command, ctx: &HookContext) -> Result<(), HookError> {
    audit_log!(ctx).write(true, |b| {
        head(b, start!("command"), ev.event_id);
        field_ts(b, key!("at"), ev.at);
        fields_session(b, ev.session_id, &ev.key);
        field_str(b, key!("user_id"), &ev.user_id);
        field_str(b, key!("command"), ev.name());
    })
}

#[hook(agent_turn_start, priority = 100)]
fn audit_turn_start(ev: &AgentTurnStart, ctx: &HookContext) -> Result<(), HookError> {
    audit_log!(ctx).write(true, |b| {
        head(b, start!("agent_turn_start"), ev.event_id);
        field_ts(b, key!("at"), ev.at);
        fields_session(b, Some(ev.session_id), &ev.key);
    })
}

#[hook(agent_turn_end, priority = 100)]
fn audit_turn_end(ev: &AgentTurnEnd, ctx: &HookContext) -> Result<(), HookError> {
    audit_log!(ctx).write(true, |b| {
        head(b, start!("agent_turn_end"), ev.event_id);
        field_ts(b, key!("at"), ev.at);
        fields_session(b, Some(ev.session_id), &ev.key);
        let outcome = match &ev.outcome {
            TurnOutcome::Reply { .. } => "reply",
            TurnOutcome::Error { .. } => "error",
        };
        field_str(b, key!("outcome"), outcome);
        field_u64(b, key!("millis"), ev.at.duration_since(ev.started_at).as_millis().max(0) as u64);
    })
}

#[hook(gateway_startup, priority = 100)]
fn audit_startup(ev: &GatewayStartup, ctx: &HookContext) -> Result<(), HookError> {
    audit_log!(ctx).write(true, |b| {
        head(b, start!("gateway_startup"), ev.event_id);
        field_ts(b, key!("at"), ev.at);
        field_u64(b, key!("hooks"), ev.hooks as u64);
    })
}

#[hook(gateway_shutdown, priority = 100)]
fn audit_shutdown(ev: &GatewayShutdown, ctx: &HookContext) -> Result<(), HookError> {
    audit_log!(ctx).write(true, |b| {
        head(b, start!("gateway_shutdown"), ev.event_id);
        field_ts(b, key!("at"), ev.at);
        field_u64(b, key!("sessions_closed"), ev.sessions_closed);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_one(log: &AuditLog) -> u64 {
        log.write(false, |line| head(line, start!("gateway_startup"), EventId::from_u128(1))).unwrap();
        log.finish().unwrap()
    }

    proptest::proptest! {
        /// Whatever the order of sessions, including ids that share a slot and an id reused with
        /// another key, a remembered fragment is exactly what writing it out gives.
        #[test]
        fn session_fields_are_what_writing_them_out_gives(
            lines in proptest::collection::vec((0usize..4, 0usize..7), 1..80),
        ) {
            let ids = [1, 2, 1 + SESSION_SLOTS as u128, 2 + 7 * SESSION_SLOTS as u128].map(SessionId::from_u128);
            // Pairs whose bytes line up: "a\"b" written escaped is the bytes of `a\"b`; ("ab", "x") and
            // ("a", "\"x") split the same bytes differently around the quotes.
            let keys = [
                SessionKey::chat("telegram", "-100123"),
                SessionKey::chat("irc", "#ubuntu \"quoted\" and a long channel name"),
                SessionKey::user("slack", "C01", "U02"),
                SessionKey::chat("web", "a\"b"),
                SessionKey::chat("web", "a\\\"b"),
                SessionKey::chat("ab", "x"),
                SessionKey::chat("a", "\"x"),
            ];
            let mut fields = SessionFields::default();
            for (id, key) in lines {
                let (id, key) = (ids[id], &keys[key]);
                let mut remembered = b"{".to_vec();
                fields.push(&mut remembered, id, key);
                let mut written = b"{".to_vec();
                write_session_fields(&mut written, Some(id), key);
                proptest::prop_assert_eq!(&remembered, &written);
            }
        }
    }

    #[test]
    fn session_fields_are_json() {
        let mut line = b"{\"event\":\"x\"".to_vec();
        SessionFields::default().push(&mut line, SessionId::from_u128(7), &SessionKey::chat("web", "a\"b"));
        line.push(b'}');
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["session_id"], SessionId::from_u128(7).to_string());
        assert_eq!((value["platform"].as_str(), value["chat_id"].as_str()), (Some("web"), Some("a\"b")));
    }

    #[test]
    fn lines_written_from_many_threads_at_once_stay_whole() {
        // As in `serve`: appending, each line written to the file while the lock is held.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let log = AuditLog::append(&path, AuditLevel::All).unwrap();
        let (threads, per_thread) = (8u128, 500u128);
        std::thread::scope(|scope| {
            for t in 0..threads {
                let log = &log;
                scope.spawn(move || {
                    for i in 0..per_thread {
                        let id = SessionId::from_u128(t * per_thread + i);
                        let key = SessionKey::user("test", format!("chat {t}"), format!("user {i}"));
                        log.write(false, |line| {
                            head(line, start!("session_start"), EventId::from_u128(t));
                            fields_session(line, Some(id), &key);
                        })
                        .unwrap();
                    }
                });
            }
        });
        assert_eq!(log.finish().unwrap(), (threads * per_thread) as u64);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut seen: Vec<String> = text
            .lines()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                value["session_id"].as_str().unwrap().to_owned()
            })
            .collect();
        seen.sort();
        let mut expected: Vec<String> =
            (0..threads * per_thread).map(|n| SessionId::from_u128(n).to_string()).collect();
        expected.sort();
        assert_eq!(seen, expected);
    }

    #[test]
    fn create_replaces_an_existing_file_with_a_new_one() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let old_text = "an older, much longer events file\n".repeat(100);
        std::fs::write(&path, &old_text).unwrap();
        let mut old = File::open(&path).unwrap();
        let log = AuditLog::create(&path, AuditLevel::All).unwrap();
        assert_eq!(write_one(&log), 1);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"event\":\"gateway_startup\"") && text.lines().count() == 1, "{text}");
        let mut still = String::new();
        old.read_to_string(&mut still).unwrap();
        assert_eq!(still, old_text, "the old file was unlinked whole, not truncated");
    }

    #[test]
    fn create_through_a_symbolic_link_keeps_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.jsonl");
        let link = dir.path().join("events.jsonl");
        std::fs::write(&target, "old\n").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let log = AuditLog::create(&link, AuditLevel::All).unwrap();
        write_one(&log);
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(std::fs::read_to_string(&target).unwrap().starts_with("{\"event\":\"gateway_startup\""));
    }
}
