//! The session store choice (`--store memory|sqlite:PATH`, `--synchronous full|normal`), the durable
//! replay path (group commit into SQLite, delivery after commit) and the `dead-letters` command.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use hooks_core::dispatch::Dispatcher;
use hooks_core::event::AnyEvent;
use hooks_core::store::{
    CloseOutcome, Commit, DeliveryRecord, HandlerResult, OpenOutcome, OutboxSeq, RotateOutcome, SqliteOptions,
    SqliteStore, Step, StepOutcome, Synchronous,
};

use crate::hooks::audit::AuditLog;

/// The file name of the session database inside the data directory.
pub const DB_FILE: &str = "sessions.sqlite3";

/// Where sessions live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    /// In memory: lost when the process stops.
    Memory,
    /// In this SQLite file (created if missing).
    Sqlite(PathBuf),
}

impl std::str::FromStr for StoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "memory" => Ok(StoreSpec::Memory),
            _ => match s.strip_prefix("sqlite:") {
                Some(path) if !path.is_empty() => Ok(StoreSpec::Sqlite(PathBuf::from(path))),
                _ => Err(format!("{s:?} is not a store; write `memory` or `sqlite:PATH`")),
            },
        }
    }
}

/// `--synchronous`: how hard SQLite works to make each commit durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncArg {
    /// Every commit reaches the disk before a reply (default): nothing acknowledged is lost, even on
    /// power loss.
    #[default]
    Full,
    /// Commits reach the disk at checkpoints: safe against a process crash, but a power loss or OS
    /// crash can lose the last acknowledged commits.
    Normal,
}

impl From<SyncArg> for Synchronous {
    fn from(s: SyncArg) -> Self {
        match s {
            SyncArg::Full => Synchronous::Full,
            SyncArg::Normal => Synchronous::Normal,
        }
    }
}

/// `replay --store sqlite:PATH`: where and how to record.
#[derive(Clone, Debug)]
pub struct DurableOptions {
    /// The database file (a new one).
    pub path: PathBuf,
    /// Records per transaction.
    pub batch: usize,
    /// Durability of each commit.
    pub synchronous: Synchronous,
}

/// Opens the SQLite store at `path` off the async runtime (opening runs SQLite's integrity check).
///
/// # Errors
///
/// The store's typed errors (corrupt, newer schema, read-only, full), with the path.
pub async fn open_sqlite(path: &Path, options: SqliteOptions) -> Result<SqliteStore> {
    let owned = path.to_owned();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(owned, options))
        .await
        .context("opening the session database")?;
    store.with_context(|| format!("opening the session database {}", path.display()))
}

/// What the durable path of a replay recorded (see [`Summary::durable`](crate::replay::Summary::durable)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DurableCounts {
    /// Events recorded in the outbox and delivered after their commit.
    pub recorded: u64,
    /// Batches committed and delivered: one store job each (`--batch` records, or fewer for the last);
    /// the store's writer commits every batch waiting for it in one transaction.
    pub batches: u64,
    /// Events whose delivery failed for some handler (dead letters).
    pub dead_letters: u64,
}

/// Replay's durable path: the engine's output and the messages are committed to SQLite in batches
/// (group commit), and each batch is delivered only after its commit, then its deliveries recorded.
///
/// Commits are pipelined: every `batch` records are handed to the store's writer thread at once, and
/// replay goes on parsing and routing the next records while they commit; a batch is delivered once
/// its commit is confirmed. Batches are delivered in the order they were handed over, so delivery order
/// is input order. While the store is slower than replay, batches queue up and its writer commits all
/// the waiting ones in one transaction (group commit), so commits grow with the load. Replay waits for
/// the oldest batch only when [`MAX_IN_FLIGHT`] are committing or queued.
#[derive(Debug)]
pub struct DurableReplay {
    store: SqliteStore,
    steps: Vec<Step>,
    /// Deliveries of the last delivered batch, recorded together with the next batch's commit.
    unrecorded: Vec<(OutboxSeq, Vec<HandlerResult>)>,
    /// The batches being committed, oldest first, with their steps (delivered once committed).
    in_flight: VecDeque<(Arc<Vec<Step>>, Commit)>,
    inputs: usize,
    batch: usize,
    /// What was recorded, committed and dead-lettered so far.
    pub counts: DurableCounts,
}

/// How many batches may be committing or queued for a commit before replay waits for the oldest. The
/// batch is handed over before that wait, so the writer thread always has work queued while the
/// replay thread delivers: handing over only after the wait left the writer idle while replay
/// delivered and staged (the two threads took turns: 13 s of CPU in 12.6 s of wall time on two cores,
/// measured on the 1,000,000-record tile).
pub const MAX_IN_FLIGHT: usize = 8;

impl DurableReplay {
    /// Replays into `store`, committing at least every `batch` records (more while a commit is slow);
    /// the database must hold no sessions yet (replay makes sequential session ids, which would
    /// collide with an earlier replay's).
    ///
    /// # Errors
    ///
    /// The database already holds sessions or events, or cannot be read.
    pub async fn new(store: SqliteStore, batch: usize) -> Result<Self> {
        let (open, closed, pending, dead) = store.counts().await.context("reading the session database")?;
        if open + closed + pending + dead > 0 {
            bail!(
                "replay --store sqlite needs a new database, and {} already holds {} sessions and {} events",
                store.path().display(),
                open + closed,
                pending + dead
            );
        }
        Ok(Self {
            store,
            steps: Vec::new(),
            unrecorded: Vec::new(),
            in_flight: VecDeque::new(),
            inputs: 0,
            batch: batch.max(1),
            counts: DurableCounts::default(),
        })
    }

    /// Stages the engine's output: one step per close (a close and its successor's start: one rotate).
    pub fn stage_engine_output(&mut self, out: &mut Vec<AnyEvent>) {
        let mut events = out.drain(..).peekable();
        while let Some(event) = events.next() {
            match event {
                AnyEvent::SessionEnd(end) => {
                    let rotate = matches!(events.peek(), Some(AnyEvent::SessionStart(s)) if s.previous_session_id == Some(end.session_id));
                    match events.next_if(|_| rotate) {
                        Some(AnyEvent::SessionStart(start)) => self.steps.push(Step::Rotate(end, start)),
                        _ => self.steps.push(Step::Close(end)),
                    }
                }
                AnyEvent::SessionStart(start) => self.steps.push(Step::Open(start)),
                other => self.steps.push(Step::Record(other)),
            }
        }
    }

    /// Stages a step for the current batch.
    pub fn stage(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// Counts one input; hands the staged batch to the store when it is large enough, then delivers the
    /// batches whose commits are done, waiting for the oldest while too many are in flight.
    ///
    /// # Errors
    ///
    /// See [`flush`](Self::flush).
    pub async fn input_done(&mut self, dispatcher: &Dispatcher) -> Result<()> {
        self.inputs += 1;
        if self.inputs < self.batch {
            return Ok(());
        }
        self.submit(dispatcher)?;
        while self.in_flight.front_mut().is_some_and(|(_, commit)| commit.is_done()) {
            self.deliver_oldest(dispatcher).await?;
        }
        while self.in_flight.len() > MAX_IN_FLIGHT {
            self.deliver_oldest(dispatcher).await?;
        }
        Ok(())
    }

    /// Commits everything staged and delivers it, in order: afterwards nothing is staged or in flight
    /// (the deliveries of the last batch are recorded with the next commit, or by
    /// [`finish`](Self::finish)): a crash in between only delivers those events again, with the same
    /// ids.
    ///
    /// # Errors
    ///
    /// The store failed: nothing of that batch was recorded or delivered.
    pub async fn flush(&mut self, dispatcher: &Dispatcher) -> Result<()> {
        if !self.steps.is_empty() {
            self.submit(dispatcher)?;
        }
        while !self.in_flight.is_empty() {
            self.deliver_oldest(dispatcher).await?;
        }
        Ok(())
    }

    /// Hands the staged steps, and the deliveries of the batches delivered since the last hand-over,
    /// to the store's writer.
    fn submit(&mut self, dispatcher: &Dispatcher) -> Result<()> {
        self.inputs = 0;
        if !self.unrecorded.is_empty() {
            flush_events_file(dispatcher)?;
        }
        // The next batch is sized like this one: growing it step by step copied every step again.
        let capacity = self.steps.len();
        let steps = Arc::new(std::mem::replace(&mut self.steps, Vec::with_capacity(capacity)));
        let done = std::mem::take(&mut self.unrecorded);
        let commit =
            self.store.submit(Arc::clone(&steps), &delivery_records(&done)).context("the session store failed")?;
        self.in_flight.push_back((steps, commit));
        Ok(())
    }

    /// Waits for the oldest batch in flight, if any, and delivers what it recorded, in order.
    async fn deliver_oldest(&mut self, dispatcher: &Dispatcher) -> Result<()> {
        let Some((steps, commit)) = self.in_flight.pop_front() else { return Ok(()) };
        let outcomes = commit.wait().await.context("the session store failed")?;
        self.counts.batches += 1;
        self.unrecorded.reserve(steps.len());
        for (step, outcome) in steps.iter().zip(outcomes) {
            match (step, outcome?) {
                (Step::Record(event), StepOutcome::Recorded(seq)) => self.deliver(dispatcher, seq, event).await,
                (Step::Open(start), StepOutcome::Opened(OpenOutcome::Opened { start: seq })) => {
                    self.deliver(dispatcher, seq, &AnyEvent::SessionStart(start.clone())).await;
                }
                (Step::Close(end), StepOutcome::Closed(CloseOutcome::Closed { end: seq })) => {
                    self.deliver(dispatcher, seq, &AnyEvent::SessionEnd(end.clone())).await;
                }
                (Step::Rotate(end, start), StepOutcome::Rotated(RotateOutcome::Rotated { end: e, start: s })) => {
                    self.deliver(dispatcher, e, &AnyEvent::SessionEnd(end.clone())).await;
                    self.deliver(dispatcher, s, &AnyEvent::SessionStart(start.clone())).await;
                }
                (_, StepOutcome::Message) => {}
                (_, other) => bail!("the session store refused a step of a fresh replay: {other:?}"),
            }
        }
        Ok(())
    }

    /// Delivers one committed event (one attempt) and notes the delivery, to be recorded with the next
    /// commit.
    async fn deliver(&mut self, dispatcher: &Dispatcher, seq: OutboxSeq, event: &AnyEvent) {
        let outcomes = dispatcher.deliver_any_detailed(event, 1, &[]).await;
        // Per-handler rows are written only for an attempt that failed somewhere; a delivery every
        // handler took is recorded by its position alone.
        let results: Vec<HandlerResult> = if outcomes.iter().any(|o| o.error.is_some()) {
            self.counts.dead_letters += 1;
            outcomes.into_iter().map(|o| HandlerResult { handler: o.hook.to_string(), error: o.error }).collect()
        } else {
            Vec::new()
        };
        self.counts.recorded += 1;
        self.unrecorded.push((seq, results));
    }

    /// Commits what is staged and records the last deliveries.
    ///
    /// # Errors
    ///
    /// The store failed.
    pub async fn finish(&mut self, dispatcher: &Dispatcher) -> Result<()> {
        self.flush(dispatcher).await?;
        flush_events_file(dispatcher)?;
        let done = std::mem::take(&mut self.unrecorded);
        self.store.record_deliveries(&delivery_records(&done)).await.context("recording deliveries")?;
        Ok(())
    }
}

/// Writes out the events file's buffered lines before deliveries are recorded: what the store counts as
/// delivered must be in the file even if the process is killed right after (the audit hook buffers
/// its lines in replay).
fn flush_events_file(dispatcher: &Dispatcher) -> Result<()> {
    if let Some(audit) = dispatcher.state().get::<Arc<AuditLog>>() {
        audit.flush().context("writing the events file")?;
    }
    Ok(())
}

/// One attempt each; a failed delivery is a dead letter at once (replay does not retry).
fn delivery_records(done: &[(OutboxSeq, Vec<HandlerResult>)]) -> Vec<DeliveryRecord<'_>> {
    done.iter()
        .map(|(seq, results)| {
            let dead = results.iter().any(|r| r.error.is_some());
            DeliveryRecord { seq: *seq, attempt: 1, results, dead }
        })
        .collect()
}

/// `dead-letters list`: prints every dead letter (or JSON).
///
/// # Errors
///
/// The database cannot be opened or read.
pub async fn list_dead_letters(path: &Path, json: bool) -> Result<()> {
    let store = open_existing(path).await?;
    let dead = store.dead_letters().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&dead)?);
        return Ok(());
    }
    if dead.is_empty() {
        println!("no dead letters in {}", path.display());
        return Ok(());
    }
    println!("{:>8}  {:<16} {:<36} {:>8}  {:<24} error", "seq", "event", "event_id", "attempts", "key");
    for d in &dead {
        println!(
            "{:>8}  {:<16} {:<36} {:>8}  {:<24} {}",
            d.seq.0,
            d.event,
            d.event_id,
            d.attempts,
            d.key.as_deref().unwrap_or("-"),
            d.error.as_deref().unwrap_or("")
        );
    }
    println!("{} dead letters; `dead-letters retry` queues them for delivery at the next start", dead.len());
    Ok(())
}

/// `dead-letters retry [SEQ...]`: moves dead letters back to pending.
///
/// # Errors
///
/// The database cannot be opened or written.
pub async fn retry_dead_letters(path: &Path, seqs: Vec<u64>) -> Result<()> {
    let store = open_existing(path).await?;
    let only = if seqs.is_empty() { None } else { Some(seqs.into_iter().map(OutboxSeq).collect()) };
    let moved = store.retry_dead_letters(only).await?;
    println!("{moved} dead letters queued again; the gateway delivers them when it next starts on {}", path.display());
    Ok(())
}

async fn open_existing(path: &Path) -> Result<Arc<SqliteStore>> {
    if !path.is_file() {
        bail!("no session database at {} (give --data-dir or --store sqlite:PATH)", path.display());
    }
    Ok(Arc::new(open_sqlite(path, SqliteOptions::default()).await?))
}
