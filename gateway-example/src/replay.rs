//! `replay`: feeds recorded traffic through the session lifecycle on the records' own clock and
//! delivers every event to the linked hooks, exactly as `serve` would have live.
//!
//! The lifecycle engine decides; this module only reads lines, keeps the replay clock (it never moves
//! back: an older record is processed at the clock's time), asks the command hooks, and delivers the
//! engine's events in order. See docs/gateway.md for the contract.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hooks_core::dispatch::{Dispatcher, Verdict};
use hooks_core::event::{AnyEvent, Command, EventId, GatewayShutdown, GatewayStartup, MessageReceived};
use hooks_core::lifecycle::{Engine, SessionIds};
use hooks_core::store::{RoutedMessage, SqliteOptions, Step};
use jiff::Timestamp;
use serde::Serialize;

use crate::config::Settings;
use crate::durable::{DurableCounts, DurableOptions, DurableReplay, open_sqlite};
use crate::hooks::metrics::{Metrics, MetricsSnapshot};
use crate::input::{Line, LineError, is_command, parse_line};

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The JSON Lines input (`-` for standard input).
    pub input: PathBuf,
    /// Stop at the first bad line instead of skipping it.
    pub strict: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// At most this many bad lines are reported one by one on stderr; the rest only counted.
    pub max_reported: u64,
    /// Record sessions and events in this SQLite database (a new one), committing every `batch`
    /// records, and deliver each batch after its commit; `None`: the in-memory engine path.
    pub store: Option<DurableOptions>,
}

/// What a replay did: printed at the end, and written as JSON with `--summary-json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Lines read (every line, blank and bad ones included).
    pub lines: u64,
    /// Records routed to a session.
    pub records: u64,
    /// Blank lines.
    pub blank: u64,
    /// Telegram Updates without a message.
    pub ignored_updates: u64,
    /// Bad lines skipped, by cause.
    pub skipped: BTreeMap<&'static str, u64>,
    /// Commands denied by a command hook (not routed).
    pub commands_denied: u64,
    /// Counters of the metrics hook: sessions opened, closed by reason, messages.
    pub metrics: MetricsSnapshot,
    /// Handler calls that failed (error, panic or timeout), over all hooks.
    pub handler_failures: u64,
    /// Lines written to the events file.
    pub events_written: u64,
    /// With `--store sqlite:PATH`: events recorded in the outbox, transactions committed, and events
    /// moved to the dead-letter state. `None` with the in-memory store.
    pub durable: Option<DurableCounts>,
    /// Wall time of the replay, in seconds.
    pub wall_seconds: f64,
    /// Lines read per second of wall time.
    pub records_per_second: f64,
}

impl Summary {
    /// Bad lines skipped, over all causes.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.metrics;
        writeln!(f, "replay summary")?;
        writeln!(f, "  lines read         {}", self.lines)?;
        writeln!(f, "  records routed     {}", self.records)?;
        let causes: Vec<String> = self.skipped.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let causes = if causes.is_empty() { String::new() } else { format!(" ({})", causes.join(", ")) };
        writeln!(f, "  skipped            {}{causes}", self.skipped_total())?;
        writeln!(f, "  blank lines        {}", self.blank)?;
        writeln!(f, "  ignored updates    {}", self.ignored_updates)?;
        if self.commands_denied > 0 {
            writeln!(f, "  commands denied    {}", self.commands_denied)?;
        }
        writeln!(f, "  sessions opened    {}", m.sessions_opened)?;
        let closes: Vec<String> = m.closed.iter().filter(|(_, n)| *n > 0).map(|(r, n)| format!("{r} {n}")).collect();
        writeln!(f, "  sessions closed    {} ({})", m.sessions_closed(), closes.join(", "))?;
        writeln!(f, "  handler failures   {}", self.handler_failures)?;
        writeln!(f, "  events written     {}", self.events_written)?;
        if let Some(d) = &self.durable {
            let per = if d.batches == 0 { 0.0 } else { d.recorded as f64 / d.batches as f64 };
            writeln!(
                f,
                "  store              {} events recorded in {} batches ({per:.0} per batch), {} dead letters",
                d.recorded, d.batches, d.dead_letters
            )?;
        }
        write!(f, "  wall time          {:.3} s ({:.0} records/s)", self.wall_seconds, self.records_per_second)
    }
}

/// Event ids of replay's own events, derived from the input line so that a replay of the same input
/// gives the same ids (the session events' ids come from their session ids).
fn line_event_id(kind: u8, line: u64) -> EventId {
    EventId::from_u128((0x7265_706c_6179u128 << 80) | (u128::from(kind) << 64) | u128::from(line))
}

const KIND_MESSAGE: u8 = 1;
const KIND_COMMAND: u8 = 2;
const KIND_GATEWAY: u8 = 3;

struct Replayer<'a> {
    engine: Engine,
    dispatcher: &'a Dispatcher,
    settings: &'a Settings,
    out: Vec<AnyEvent>,
    clock: Option<Timestamp>,
    started: bool,
    summary: Summary,
    durable: Option<DurableReplay>,
    /// The text of the last `MessageReceived` delivered in memory, emptied: its allocation is reused
    /// for the next record's text, so routing a record allocates for the transcript only.
    spare_text: String,
}

impl Replayer<'_> {
    async fn deliver_pending(&mut self) {
        if let Some(d) = &mut self.durable {
            // Delivered after the batch commits, in the same order.
            d.stage_engine_output(&mut self.out);
            return;
        }
        // Delivered where they lie and dropped together: moving each event out (`drain`) copied it, a
        // few hundred bytes, once more.
        for event in &self.out {
            self.dispatcher.deliver_any(event).await;
        }
        self.out.clear();
    }

    async fn start_gateway(&mut self, at: Timestamp) {
        if !self.started {
            self.started = true;
            let mut ev = GatewayStartup::new(at, self.dispatcher.registry().len());
            ev.event_id = line_event_id(KIND_GATEWAY, 0);
            self.dispatcher.deliver(&ev).await;
        }
    }

    async fn route(&mut self, line_no: u64, rec: crate::input::Record<'_>) -> Result<()> {
        // The replay clock never moves back: an older record is processed at the clock's time.
        let at = match self.clock {
            Some(clock) if rec.ts < clock => clock,
            _ => rec.ts,
        };
        self.clock = Some(at);
        if !self.started {
            self.start_gateway(at).await;
        }
        let key = self.settings.scope.key(&rec.platform, &rec.chat_id, &rec.user_id);

        // Closes due at or before `at` happen (and are delivered) before the record is looked at.
        self.engine.advance(at, &mut self.out);
        // Most records close nothing: the check spares the call (and its future) per record.
        if !self.out.is_empty() {
            self.deliver_pending().await;
        }

        let mut text = std::mem::take(&mut self.spare_text);
        text.push_str(&rec.text);
        if is_command(&text) {
            // The command hooks decide now, inline, as in `serve`. In memory everything before was
            // delivered already; with `--store sqlite` the events of the batches still committing are
            // delivered after their commit, so the command's own lines come before theirs in the events
            // file (waiting for a commit per command would make a durable replay wait for the disk once
            // per command).
            let id = line_event_id(KIND_COMMAND, line_no);
            let command = Command::new(id, self.engine.open_session(&key), key.clone(), &*rec.user_id, at, text);
            match self.dispatcher.decide(command).await {
                Verdict::Allowed { command, .. } => text = command.text,
                Verdict::Denied { hook, message, .. } => {
                    tracing::info!(line = line_no, %key, hook, %message, "command denied; record not routed");
                    self.summary.commands_denied += 1;
                    return Ok(());
                }
            }
        }
        let routed = self.engine.message(&key, &rec.user_id, &text, at, &mut self.out);
        if !self.out.is_empty() {
            self.deliver_pending().await;
        }
        let ev =
            MessageReceived::new(line_event_id(KIND_MESSAGE, line_no), routed.session_id, key, &*rec.user_id, at, text);
        self.summary.records += 1;
        match &mut self.durable {
            Some(d) => {
                d.stage(Step::Message(RoutedMessage {
                    session_id: routed.session_id,
                    at,
                    user_id: rec.user_id.as_ref().into(),
                    text: ev.text.clone(),
                }));
                d.stage(Step::Record(AnyEvent::MessageReceived(ev)));
                d.input_done(self.dispatcher).await?;
            }
            None => {
                self.dispatcher.deliver(&ev).await;
                self.spare_text = ev.text;
                self.spare_text.clear();
            }
        }
        Ok(())
    }
}

/// Replays `options.input` through a fresh engine with `settings`, delivering to `dispatcher`'s hooks.
/// The dispatcher's state should hold the [`Metrics`] (for the summary) and the audit log.
///
/// # Errors
///
/// The input cannot be read, or (with `strict`) a line is bad.
pub async fn run(options: &ReplayOptions, settings: &Settings, dispatcher: Arc<Dispatcher>) -> Result<Summary> {
    let started = Instant::now();
    let (reader, size): (Box<dyn Read>, Option<u64>) = if options.input.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let file = File::open(&options.input).with_context(|| format!("opening {}", options.input.display()))?;
        let size = file.metadata().ok().map(|m| m.len());
        (Box::new(file), size)
    };
    let mut lines = LineReader::new(BufReader::with_capacity(1 << 20, reader));
    let progress = make_progress(options.progress, size);
    let durable = match &options.store {
        Some(d) => {
            let sqlite = SqliteOptions::default().with_synchronous(d.synchronous);
            Some(DurableReplay::new(open_sqlite(&d.path, sqlite).await?, d.batch).await?)
        }
        None => None,
    };
    let mut r = Replayer {
        engine: Engine::new(settings.policy.clone(), SessionIds::Sequential),
        dispatcher: &dispatcher,
        settings,
        out: Vec::new(),
        clock: None,
        started: false,
        summary: Summary::default(),
        durable,
        spare_text: String::new(),
    };
    let name = options.input.display().to_string();
    let mut bytes_read = 0u64;
    let mut reported = 0u64;
    while let Some(line) = lines.next_line().with_context(|| format!("reading {name}"))? {
        bytes_read += line.len() as u64;
        r.summary.lines += 1;
        let line_no = r.summary.lines;
        let line = trim_newline(line);
        match parse_line(line) {
            Ok(Line::Record(rec)) => r.route(line_no, rec).await?,
            Ok(Line::Blank) => r.summary.blank += 1,
            Ok(Line::Ignored) => r.summary.ignored_updates += 1,
            Err(e) => {
                if options.strict {
                    bail!("{name}:{line_no}: {e} (--strict stops at the first bad line)");
                }
                skip(&mut r.summary, &e);
                reported += 1;
                if reported <= options.max_reported {
                    progress.suspend(|| eprintln!("{name}:{line_no}: skipped: {e}"));
                } else if reported == options.max_reported + 1 {
                    progress.suspend(|| eprintln!("{name}: more bad lines; counting them without reporting each"));
                }
            }
        }
        if line_no.is_multiple_of(16_384) {
            progress.set_position(bytes_read);
        }
    }
    progress.finish_and_clear();

    let end = r.clock.unwrap_or_else(Timestamp::now);
    r.start_gateway(end).await;
    let before = r.engine.open_sessions() as u64;
    r.engine.shutdown(end, &mut r.out);
    r.deliver_pending().await;
    if let Some(d) = &mut r.durable {
        d.finish(r.dispatcher).await?;
        r.summary.durable = Some(d.counts);
    }
    let mut shutdown = GatewayShutdown::new(end, before);
    shutdown.event_id = line_event_id(KIND_GATEWAY, u64::MAX);
    dispatcher.deliver(&shutdown).await;

    let mut summary = r.summary;
    summary.metrics = dispatcher.state().get::<Metrics>().map(Metrics::snapshot).unwrap_or_default();
    summary.handler_failures = dispatcher.stats().iter().map(|s| s.errors + s.panics + s.timeouts).sum();
    summary.wall_seconds = started.elapsed().as_secs_f64();
    summary.records_per_second = summary.lines as f64 / summary.wall_seconds.max(1e-9);
    Ok(summary)
}

fn skip(summary: &mut Summary, e: &LineError) {
    *summary.skipped.entry(e.kind()).or_default() += 1;
}

/// Splits a reader into lines, each with its terminator as `read_until(b'\n')` gives it, without
/// copying the lines that lie whole in the reader's buffer (nearly all of them, with a 1 MiB buffer):
/// those are lent from the buffer; only a line that straddles a refill is put together in `carry`.
/// The newline is found with `memchr`'s SIMD search (`read_until` copies every line, and std's own
/// `memchr` tests a word at a time: ~395 instructions per record of the tiled corpora together,
/// against ~145 here; callgrind).
struct LineReader<R> {
    reader: BufReader<R>,
    carry: Vec<u8>,
    /// The length of the last line lent from the buffer, consumed at the next call.
    lent: usize,
}

impl<R: Read> LineReader<R> {
    fn new(reader: BufReader<R>) -> Self {
        Self { reader, carry: Vec::new(), lent: 0 }
    }

    /// The next line, `None` at the end of the input. The last line may lack its `\n`.
    fn next_line(&mut self) -> std::io::Result<Option<&[u8]>> {
        self.reader.consume(std::mem::take(&mut self.lent));
        self.carry.clear();
        loop {
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                // As `read_until` does: a read interrupted by a signal is tried again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                return Ok((!self.carry.is_empty()).then_some(&self.carry[..]));
            }
            match memchr::memchr(b'\n', available) {
                Some(i) if self.carry.is_empty() => {
                    self.lent = i + 1;
                    return Ok(Some(&self.reader.buffer()[..=i]));
                }
                Some(i) => {
                    self.carry.extend_from_slice(&available[..=i]);
                    self.reader.consume(i + 1);
                    return Ok(Some(&self.carry));
                }
                None => {
                    let n = available.len();
                    self.carry.extend_from_slice(available);
                    self.reader.consume(n);
                }
            }
        }
    }
}

fn trim_newline(buf: &[u8]) -> &[u8] {
    let buf = buf.strip_suffix(b"\n").unwrap_or(buf);
    buf.strip_suffix(b"\r").unwrap_or(buf)
}

fn make_progress(wanted: bool, size: Option<u64>) -> indicatif::ProgressBar {
    if !wanted || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match size {
        Some(len) => indicatif::ProgressBar::new(len).with_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} replay [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Where a replay's events file goes, checked before any work: the parent directory must exist.
///
/// # Errors
///
/// The parent directory does not exist.
pub fn check_events_out(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        bail!("the directory of --events-out {} does not exist", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Lines come out as `read_until` gives them, whatever the buffer's size: lines inside one
        /// fill, lines across several, empty lines, and a last line without its newline.
        #[test]
        fn line_reader_splits_like_read_until(
            text in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), Just(b'\r'), any::<u8>()], 0..200),
            capacity in 1usize..40,
        ) {
            let mut expected = Vec::new();
            let mut plain = BufReader::new(&text[..]);
            loop {
                let mut line = Vec::new();
                if plain.read_until(b'\n', &mut line).unwrap() == 0 {
                    break;
                }
                expected.push(line);
            }
            let mut lines = LineReader::new(BufReader::with_capacity(capacity, &text[..]));
            let mut got = Vec::new();
            while let Some(line) = lines.next_line().unwrap() {
                got.push(line.to_vec());
            }
            prop_assert_eq!(got, expected);
        }
    }
}
