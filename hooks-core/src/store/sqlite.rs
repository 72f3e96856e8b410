//! The SQLite store: sessions, their messages and the outbox in one database file.
//! See [`SqliteStore`] for the schema, the threads and group commit.

use std::any::Any;
use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use compact_str::CompactString;
use jiff::Timestamp;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{CachedStatement, Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

use super::codec::{self, from_nanos, nanos};
use super::{
    CloseOutcome, DeliveryRecord, LostClose, OpenOutcome, OpenSession, OutboxEntry, OutboxSeq, PendingDelivery,
    RecoveredSession, Recovery, RotateOutcome, RoutedMessage, Step, StepOutcome, Store, StoreError,
};
use crate::event::{AnyEvent, CloseReason, EventId, SessionEnd, SessionId, SessionKey, SessionStart};

/// The newest schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = 3;

/// Migrations: `MIGRATIONS[v - 1]` takes a database from version `v - 1` to `v`.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY NOT NULL,
        key TEXT NOT NULL,
        user_id TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        last_message_at INTEGER NOT NULL,
        message_count INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL CHECK (state IN ('open', 'closed')),
        reason TEXT,
        ended_at INTEGER,
        detected_at INTEGER,
        previous_session_id TEXT
    );
    CREATE UNIQUE INDEX sessions_one_open_per_key ON sessions (key) WHERE state = 'open';
    CREATE TABLE transcript (
        session_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        at INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        text TEXT NOT NULL,
        PRIMARY KEY (session_id, n)
    ) WITHOUT ROWID;
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL,
        event TEXT NOT NULL,
        key TEXT,
        payload TEXT NOT NULL,
        recorded_at INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE INDEX outbox_by_state ON outbox (state, seq);
    CREATE TABLE deliveries (
        seq INTEGER NOT NULL,
        handler TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        delivered INTEGER NOT NULL,
        last_error TEXT,
        PRIMARY KEY (seq, handler)
    ) WITHOUT ROWID;
",
    "
    -- Version 2, for throughput (see docs/benchmarks.md): session and event ids as 16-byte blobs
    -- instead of 36-character text (smaller keys, no formatting or parsing), sessions keyed by id
    -- directly (WITHOUT ROWID: one b-tree instead of a table plus its primary-key index), outbox
    -- positions without AUTOINCREMENT (whose bookkeeping row was written on every insert; a delivered
    -- row's position may now be reused, which nothing depends on: events are known by their event id),
    -- and no index over (state, seq): nearly every row is pending and read in position order anyway,
    -- so that index only cost a write per recorded and per delivered event. Dead letters, which are
    -- few, get a partial index. The outbox's `key` column is gone: the payload holds the key, and only
    -- the dead-letter listing needs it. Payloads are now MessagePack blobs (see `codec`); the JSON text
    -- of rows written by version 1 is kept as it is and still read.
    CREATE TABLE sessions_v2 (
        id BLOB PRIMARY KEY NOT NULL,
        key TEXT NOT NULL,
        user_id TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        last_message_at INTEGER NOT NULL,
        message_count INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL CHECK (state IN ('open', 'closed')),
        reason TEXT,
        ended_at INTEGER,
        detected_at INTEGER,
        previous_session_id BLOB
    ) WITHOUT ROWID;
    INSERT INTO sessions_v2
        SELECT unhex(replace(id, '-', '')), key, user_id, started_at, last_message_at, message_count, state,
               reason, ended_at, detected_at, unhex(replace(previous_session_id, '-', ''))
        FROM sessions;
    DROP TABLE sessions;
    ALTER TABLE sessions_v2 RENAME TO sessions;
    CREATE UNIQUE INDEX sessions_one_open_per_key ON sessions (key) WHERE state = 'open';

    CREATE TABLE transcript_v2 (
        session_id BLOB NOT NULL,
        n INTEGER NOT NULL,
        at INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        text TEXT NOT NULL,
        PRIMARY KEY (session_id, n)
    ) WITHOUT ROWID;
    INSERT INTO transcript_v2 SELECT unhex(replace(session_id, '-', '')), n, at, user_id, text FROM transcript;
    DROP TABLE transcript;
    ALTER TABLE transcript_v2 RENAME TO transcript;

    CREATE TABLE outbox_v2 (
        seq INTEGER PRIMARY KEY,
        event_id BLOB NOT NULL,
        event TEXT NOT NULL,
        payload BLOB NOT NULL,
        recorded_at INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    INSERT INTO outbox_v2
        SELECT seq, unhex(replace(event_id, '-', '')), event, payload, recorded_at, state, attempts, last_error
        FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_v2 RENAME TO outbox;
    CREATE INDEX outbox_dead ON outbox (seq) WHERE state = 'dead';
    DELETE FROM sqlite_sequence WHERE name = 'outbox';
",
    "
    -- Version 3, for throughput (see docs/operations.md#throughput): a session's messages are stored
    -- in chunks, one row per session and group-commit job holding that job's messages in order,
    -- instead of one row per message; a session that opens and closes within one job writes none.
    -- `first` and `last` are the message numbers (1-based) of a chunk's first and last message,
    -- `last_at` the time of its latest (ns since the Unix epoch, UTC). `messages` is MessagePack, an
    -- array of [at, user_id, text]; rows migrated from version 2 hold the same array as JSON text.
    -- An open session's message count and last message time are its row's or its newest chunk's,
    -- whichever is later: writing a chunk no longer updates the session row.
    CREATE TABLE transcript_chunks (
        session_id BLOB NOT NULL,
        first INTEGER NOT NULL,
        last INTEGER NOT NULL,
        last_at INTEGER NOT NULL,
        messages BLOB NOT NULL,
        PRIMARY KEY (session_id, first)
    ) WITHOUT ROWID;
    INSERT INTO transcript_chunks
        SELECT session_id, min(n), max(n), max(at), json_group_array(json_array(at, user_id, text) ORDER BY n)
        FROM transcript GROUP BY session_id;
    DROP TABLE transcript;

    -- An outbox row may hold several events: `events` of them, with positions `seq` to
    -- `seq + events - 1` (the positions in between are reserved: no other row takes them), the
    -- payload a MessagePack array of their payloads. A group-commit job that records many events
    -- writes one row instead of one per event, and their delivery deletes one row. A row is split
    -- into one row per event before anything is recorded about one of its events alone.
    ALTER TABLE outbox ADD COLUMN events INTEGER NOT NULL DEFAULT 1;
",
];

/// How hard SQLite works to make a commit durable (`PRAGMA synchronous`, in WAL mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// `FULL` (default): every commit is flushed to disk (fsync of the WAL) before the caller hears of
    /// it. A crash of the process, the OS or the machine loses nothing that was acknowledged.
    #[default]
    Full,
    /// `NORMAL`: the WAL is flushed only at checkpoints. Still safe against a crash of the *process*
    /// (SIGKILL, panic, OOM kill): the data is in the OS page cache. A power loss or kernel crash can
    /// lose the most recent commits (sessions opened or closed, messages counted, events recorded
    /// since the last checkpoint), though the database stays consistent. Faster on slow disks.
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

/// Settings of a [`SqliteStore`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// Durability of each commit. Default: [`Synchronous::Full`].
    pub synchronous: Synchronous,
    /// The most store calls committed in one transaction (group commit). Default: 512.
    pub max_batch: usize,
    /// How long a write waits for another process holding the database's write lock (e.g. a tool
    /// retrying dead letters) before failing. Default: 5 seconds.
    pub busy_timeout: Duration,
    /// Caps the database at this many pages (`PRAGMA max_page_count`; 4096 bytes each): a quota. A
    /// write beyond it fails with [`StoreError::Full`] exactly as a full disk would. Default: none.
    pub max_pages: Option<u64>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self { synchronous: Synchronous::Full, max_batch: 512, busy_timeout: Duration::from_secs(5), max_pages: None }
    }
}

impl SqliteOptions {
    /// The defaults with `synchronous`.
    pub fn with_synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// The defaults with a page cap (see [`max_pages`](Self::max_pages)).
    pub fn with_max_pages(mut self, pages: u64) -> Self {
        self.max_pages = Some(pages);
        self
    }
}

/// An event in the dead-letter state: a handler kept failing until the last allowed attempt.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// Its outbox position.
    pub seq: OutboxSeq,
    /// Its id.
    pub event_id: String,
    /// Its name, e.g. `"session_end"`.
    pub event: String,
    /// Its session key (as `platform:chat[#thread][@user]`), if it has one.
    pub key: Option<String>,
    /// Delivery attempts made.
    pub attempts: u32,
    /// The last failure, `hook: error` per failing handler.
    pub error: Option<String>,
    /// When it was recorded (UTC).
    pub recorded_at: Timestamp,
}

type AnyBox = Box<dyn Any + Send>;
/// A job may run twice: once in the fast path of a group commit and, if that transaction is rolled
/// back because some job of the batch failed, again in the careful path (see [`writer`]).
type JobFn = Box<dyn Fn(&Connection) -> Result<AnyBox, StoreError> + Send>;

struct Job {
    run: JobFn,
    reply: oneshot::Sender<Result<AnyBox, StoreError>>,
}

/// A [`Store`] in one SQLite file (WAL mode), safe across crashes.
///
/// # Schema (version 3)
///
/// - `sessions`: one row per session, keyed by its id (16 bytes, big-endian UUID), `state` `open` or
///   `closed`. A partial unique index on `key` where `state = 'open'` makes "at most one open session
///   per key" a database constraint, not a convention.
/// - `transcript_chunks`: the messages of open sessions, one row per session and job holding that
///   job's messages in order (MessagePack), keyed by session and the number of the chunk's first
///   message. They are deleted in the transaction that closes the session: its `SessionEnd` in the
///   outbox carries them from then on.
/// - `outbox`: recorded events in order of `seq`, the payload in MessagePack (JSON text for rows
///   written by version 1), `state` `pending` or `dead`; a delivered event's row is deleted. A row
///   written by [`submit`](Self::submit) may hold several events (`events`, at positions `seq` to
///   `seq + events - 1`); it is split into one row per event before anything is recorded about one
///   of them alone.
/// - `deliveries`: per event and handler, attempts and the last error, so a re-delivery skips the
///   handlers that already succeeded.
///
/// The schema version is `PRAGMA user_version`. Opening a database runs the migrations it lacks; a
/// database from a newer build, a damaged one, or a non-empty database that is not a session store
/// is refused with a typed error ([`StoreError::NewerSchema`], [`StoreError::Corrupt`]) and never
/// modified.
///
/// # Threads and group commit
///
/// SQLite calls block, so none runs on the async runtime: one dedicated writer thread owns the
/// connection, and every store call is a job sent to it. The writer takes every job that is waiting
/// (up to [`SqliteOptions::max_batch`]) and runs them in one transaction, then commits once and only then
/// answers each caller. If a job fails, that transaction is rolled back and the batch is run again with
/// each job inside a savepoint, so the failing job leaves no trace and the others still commit. Under
/// load many inputs share one disk flush; a caller is never told "done" before its data is durable.
/// [`submit`](Self::submit) lets a caller go on while its batch commits (pipelined group commit).
///
/// ```
/// use hooks_core::store::{SqliteOptions, SqliteStore, Store};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = std::env::temp_dir().join(format!("hooks-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let store = SqliteStore::open(dir.join("sessions.sqlite3"), SqliteOptions::default())?;
/// assert!(store.open_sessions().await?.is_empty());
/// # drop(store); std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
pub struct SqliteStore {
    path: PathBuf,
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish the jobs it has, then close the connection, which
        // checkpoints the WAL into the database file; waiting makes "dropped" mean "closed cleanly".
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Maps a SQLite error to the store's error kinds.
fn classify(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::Full { detail: e.to_string() },
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            StoreError::ReadOnly { detail: e.to_string() }
        }
        _ => StoreError::Backend(Box::new(e)),
    }
}

fn corrupt(path: &Path, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { path: path.to_owned(), detail: detail.to_string() }
}

/// A session id as stored: its 16 bytes, big-endian (the UUID's own byte order).
fn id_blob(id: SessionId) -> [u8; 16] {
    id.as_u128().to_be_bytes()
}

fn id_from_blob(blob: &[u8]) -> Result<SessionId, StoreError> {
    let bytes: [u8; 16] =
        blob.try_into().map_err(|_| bad_row("session id", format!("{} bytes, not 16", blob.len())))?;
    Ok(SessionId::from_u128(u128::from_be_bytes(bytes)))
}

/// The event of an outbox row's payload: MessagePack (a blob), or JSON (text, from schema version 1).
fn decode_payload(payload: Value) -> Result<AnyEvent, StoreError> {
    match payload {
        Value::Blob(bytes) => codec::decode(&bytes),
        Value::Text(json) => codec::decode_json(&json),
        other => Err(format!("a payload of type {:?}", other.data_type()).into()),
    }
    .map_err(|e| bad_row("outbox event", e))
}

fn key_json(key: &SessionKey) -> String {
    serde_json::to_string(key).expect("session keys serialize")
}

fn bad_row(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("unreadable {what} in the session database: {e}").into())
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`, bringing its schema up to [`SCHEMA_VERSION`].
    ///
    /// # Errors
    ///
    /// - [`StoreError::Corrupt`]: the file is empty, not a SQLite database, fails SQLite's integrity
    ///   check, or is a database of something else;
    /// - [`StoreError::NewerSchema`]: it was written by a newer build;
    /// - [`StoreError::ReadOnly`]: the file or its directory cannot be written;
    /// - [`StoreError::Full`], [`StoreError::Backend`]: creating or migrating it failed.
    ///
    /// In every error case the file is left as it was.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        let conn = Self::connect(&path, &options)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let max_batch = options.max_batch.max(1);
        let writer = std::thread::Builder::new()
            .name("sqlite-store".into())
            .spawn(move || writer(conn, rx, max_batch))
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        Ok(Self { path, jobs: Some(tx), writer: Some(writer) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn connect(path: &Path, options: &SqliteOptions) -> Result<Connection, StoreError> {
        match std::fs::metadata(path) {
            // A session database is never empty on disk (a new one is made under another name and
            // linked into place once its schema is written, see `create`), so an empty file is one
            // that was truncated: refuse it rather than start over in it.
            Ok(meta) if meta.len() == 0 => return Err(corrupt(path, "the file is empty (truncated?)")),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(path)?,
            Err(_) => {} // opening it will say what is wrong
        }
        let conn = Connection::open_with_flags(path, Self::FLAGS).map_err(|e| open_error(path, e))?;
        if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            return Err(StoreError::ReadOnly { detail: format!("{} can only be opened read-only", path.display()) });
        }
        conn.busy_timeout(options.busy_timeout).map_err(classify)?;
        // Every hot statement stays prepared (the default cache of 16 is smaller than the store's set).
        conn.set_prepared_statement_cache_capacity(64);
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| open_error(path, e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { path: path.to_owned(), found: version, supported: SCHEMA_VERSION });
        }
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(|e| open_error(path, e))?;
        if check != "ok" {
            return Err(corrupt(path, format!("integrity check: {check}")));
        }
        if version == 0 {
            let tables: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .map_err(|e| open_error(path, e))?;
            if tables > 0 {
                return Err(corrupt(path, "a SQLite database with tables but no session schema version"));
            }
        }
        migrate(&conn, version)?;
        let mode: String =
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(|e| open_error(path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!("could not switch {} to WAL (got {mode})", path.display()).into()));
        }
        conn.pragma_update(None, "synchronous", options.synchronous.pragma()).map_err(classify)?;
        // Each job of a group commit runs in a savepoint; its undo journal is small and short-lived, so
        // keep it (and other temporary data) in memory rather than in a temporary file.
        conn.pragma_update(None, "temp_store", "MEMORY").map_err(classify)?;
        // Checkpoint the WAL into the database every 8,192 pages (32 MiB) instead of SQLite's 1,000:
        // each checkpoint flushes the disk twice and rewrites every page changed since the last one, so
        // rarer checkpoints write a hot page (the outbox's last, a session's) once for many commits.
        conn.pragma_update(None, "wal_autocheckpoint", 8192).map_err(classify)?;
        // A 32 MiB page cache (negative: KiB) keeps the hot tables' pages between group commits.
        conn.pragma_update(None, "cache_size", -32_768).map_err(classify)?;
        if let Some(pages) = options.max_pages {
            let pages = i64::try_from(pages).unwrap_or(i64::MAX);
            let _: i64 =
                conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| r.get(0)).map_err(classify)?;
        }
        Ok(conn)
    }

    const FLAGS: OpenFlags =
        OpenFlags::SQLITE_OPEN_READ_WRITE.union(OpenFlags::SQLITE_OPEN_CREATE).union(OpenFlags::SQLITE_OPEN_NO_MUTEX);

    /// Makes a new session database at `path`, which does not exist: under a temporary name in the
    /// same directory first (`.NAME.PID.new`), linked into place once its schema is committed. A
    /// process killed while creating it (between SQLite creating the file and writing its first page)
    /// used to leave an empty file at `path`, which the next start refused as truncated; now it
    /// leaves at most the temporary file, which the next creation by the same process id replaces.
    /// If another process created `path` meanwhile, its database is kept and this one dropped.
    fn create(path: &Path) -> Result<(), StoreError> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = path.with_file_name(format!(".{name}.{}.new", std::process::id()));
        let _ = std::fs::remove_file(&temp);
        let made = (|| {
            let conn = Connection::open_with_flags(&temp, Self::FLAGS).map_err(|e| open_error(&temp, e))?;
            migrate(&conn, 0)?;
            conn.close().map_err(|(_, e)| classify(e))?;
            // A hard link fails if `path` exists (a rename would replace it); where the file system
            // has no hard links, a rename.
            match std::fs::hard_link(&temp, path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                Err(_) => std::fs::rename(&temp, path).map_err(|e| StoreError::Backend(Box::new(e))),
            }
        })();
        let _ = std::fs::remove_file(&temp);
        made
    }

    /// Runs `f` on the writer thread inside the current group transaction; answers after the commit.
    async fn call<T: Send + 'static>(
        &self,
        f: impl Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let rx = self.send(f)?;
        let any = rx.await.map_err(|_| StoreError::Closed)??;
        Ok(*any.downcast::<T>().expect("a job answers with its own type"))
    }

    /// Queues `f` for the writer thread; the receiver hears after the commit.
    fn send<T: Send + 'static>(
        &self,
        f: impl Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<oneshot::Receiver<Result<AnyBox, StoreError>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        let job = Job { run: Box::new(move |conn| f(conn).map(|t| Box::new(t) as AnyBox)), reply };
        self.jobs.as_ref().ok_or(StoreError::Closed)?.send(job).map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }

    /// Starts one job that applies `steps` (as [`Store::apply`]) and records `deliveries` (as
    /// [`record_deliveries`](Self::record_deliveries)) in the same transaction, and returns at once:
    /// the caller goes on with its next batch while this one commits (pipelined group commit), and
    /// learns the outcome from the returned [`Commit`]. Nothing of it is visible, and nothing may be
    /// delivered, before the commit.
    ///
    /// The events the job records share one outbox row (each keeps its own position, and its own row
    /// again as soon as anything is recorded about it alone), so delivering them all and recording that
    /// in one later job (as a durable replay does) writes and deletes one row instead of one per event.
    ///
    /// # Errors
    ///
    /// [`StoreError::Closed`] if the writer thread is gone. Failures of the job itself arrive through
    /// the [`Commit`]: a backend failure fails the whole job (nothing of it was recorded), a refused
    /// step is that step's outcome.
    pub fn submit(&self, steps: Arc<Vec<Step>>, deliveries: &[DeliveryRecord<'_>]) -> Result<Commit, StoreError> {
        let deliveries = Deliveries::new(deliveries);
        // The outbox payloads are encoded here, on the caller's thread, which would otherwise wait for
        // the writer: the writer thread is the bottleneck of a durable replay.
        let encoded = Encoded::new(&steps);
        let rx = self.send(move |conn| {
            deliveries.record(conn)?;
            apply_steps(conn, &steps, Some(&encoded), true)
        })?;
        Ok(Commit { rx, done: None })
    }

    /// Every event in the dead-letter state, oldest first.
    ///
    /// # Errors
    ///
    /// Backend failures.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.call(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, event_id, event, payload, attempts, last_error, recorded_at FROM outbox
                     WHERE state = 'dead' ORDER BY seq",
                )
                .map_err(classify)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Value>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, i64>(6)?,
                    ))
                })
                .map_err(classify)?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, event_id, event, payload, attempts, error, recorded_at) = row.map_err(classify)?;
                let key = decode_payload(payload)?.key().map(|k| k.to_string());
                let event_id = <[u8; 16]>::try_from(event_id.as_slice())
                    .map(|b| uuid::Uuid::from_bytes(b).to_string())
                    .map_err(|_| bad_row("event id", format!("{} bytes, not 16", event_id.len())))?;
                out.push(DeadLetter {
                    seq: OutboxSeq(seq as u64),
                    event_id,
                    event,
                    key,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    error,
                    recorded_at: from_nanos(recorded_at),
                });
            }
            Ok(out)
        })
        .await
    }

    /// Moves dead letters back to pending (all of them, or those at `only`): the next start of a
    /// gateway on this database delivers them again, to the handlers that had not handled them, with a
    /// fresh attempt budget. Returns how many moved.
    ///
    /// # Errors
    ///
    /// Backend failures.
    pub async fn retry_dead_letters(&self, only: Option<Vec<OutboxSeq>>) -> Result<u64, StoreError> {
        self.call(move |conn| {
            let moved = match &only {
                None => conn
                    .execute("UPDATE outbox SET state = 'pending', attempts = 0 WHERE state = 'dead'", [])
                    .map_err(classify)?,
                Some(seqs) => {
                    let mut stmt = conn
                        .prepare_cached(
                            "UPDATE outbox SET state = 'pending', attempts = 0 WHERE state = 'dead' AND seq = ?1",
                        )
                        .map_err(classify)?;
                    let mut n = 0;
                    for seq in seqs {
                        n += stmt.execute([seq.0 as i64]).map_err(classify)?;
                    }
                    n
                }
            };
            Ok(moved as u64)
        })
        .await
    }

    /// Records several delivery attempts in one job (one transaction), as
    /// [`Store::record_delivery`] records one.
    ///
    /// # Errors
    ///
    /// Backend failures: then none was recorded.
    pub async fn record_deliveries(&self, records: &[DeliveryRecord<'_>]) -> Result<(), StoreError> {
        let deliveries = Deliveries::new(records);
        self.call(move |conn| deliveries.record(conn)).await
    }

    /// Counts of sessions by state and of outbox rows by state: `(open, closed, pending, dead)`.
    ///
    /// # Errors
    ///
    /// Backend failures.
    pub async fn counts(&self) -> Result<(u64, u64, u64, u64), StoreError> {
        self.call(|conn| {
            let q = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|n| n as u64).map_err(classify);
            Ok((
                q("SELECT count(*) FROM sessions WHERE state = 'open'")?,
                q("SELECT count(*) FROM sessions WHERE state = 'closed'")?,
                q("SELECT coalesce(sum(events), 0) FROM outbox WHERE state = 'pending'")?,
                q("SELECT count(*) FROM outbox WHERE state = 'dead'")?,
            ))
        })
        .await
    }
}

/// Brings a database at schema version `version` to the current one, a transaction per step.
fn migrate(conn: &Connection, version: i64) -> Result<(), StoreError> {
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
        let to = i as i64 + 1;
        let tx = conn.unchecked_transaction().map_err(classify)?;
        tx.execute_batch(sql).map_err(classify)?;
        tx.pragma_update(None, "user_version", to).map_err(classify)?;
        tx.commit().map_err(classify)?;
    }
    Ok(())
}

fn open_error(path: &Path, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => corrupt(path, e),
        _ => classify(e),
    }
}

/// The writer thread: group commit of every waiting job.
///
/// Each batch first takes the fast path: every job in one transaction, back to back. Only if a job
/// fails (rare: a refused step is an answer, not a failure) or the commit fails is that transaction
/// rolled back and the batch run again the careful way, each job in its own savepoint so the failing
/// one leaves no trace and the others still commit. Savepoints are not free (SQLite copies every page
/// a job touches into a statement journal), so the common case does without them.
fn writer(conn: Connection, jobs: mpsc::Receiver<Job>, max_batch: usize) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        match run_fast(&conn, &batch) {
            Some(results) => {
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(result));
                }
            }
            None => run_careful(&conn, batch),
        }
    }
}

/// Runs every job of `batch` in one transaction without savepoints and commits; `None` (with the
/// transaction rolled back) if anything failed.
fn run_fast(conn: &Connection, batch: &[Job]) -> Option<Vec<AnyBox>> {
    conn.execute_batch("BEGIN IMMEDIATE").ok()?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        match (job.run)(conn) {
            Ok(result) if !conn.is_autocommit() => results.push(result),
            _ => break,
        }
    }
    if results.len() == batch.len() && conn.execute_batch("COMMIT").is_ok() {
        return Some(results);
    }
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    None
}

/// Runs every job of `batch` in its own savepoint inside one transaction, so that a failing job is
/// undone alone, then commits and answers each job (every job fails if the transaction does).
fn run_careful(conn: &Connection, batch: Vec<Job>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let msg = e.to_string();
        let code = e.sqlite_error_code();
        for job in batch {
            let _ = job.reply.send(Err(same_error(code, &msg)));
        }
        return;
    }
    let mut answers = Vec::with_capacity(batch.len());
    let mut broken: Option<(Option<ErrorCode>, String)> = None;
    for Job { run, reply } in batch {
        if let Some((code, msg)) = &broken {
            let _ = reply.send(Err(same_error(*code, msg)));
            continue;
        }
        let result = match conn.execute_batch("SAVEPOINT job") {
            Ok(()) => {
                let result = run(conn);
                let undo = if result.is_err() { "ROLLBACK TO job; RELEASE job" } else { "RELEASE job" };
                // After some errors (a full disk, I/O) SQLite rolls back the whole transaction by
                // itself; the jobs after it must not run in autocommit mode, so the batch stops.
                if conn.is_autocommit() {
                    broken = Some((None, "the transaction was rolled back by SQLite".into()));
                } else if let Err(e) = conn.execute_batch(undo) {
                    broken = Some((e.sqlite_error_code(), e.to_string()));
                }
                result
            }
            Err(e) => Err(classify(e)),
        };
        answers.push((reply, result));
    }
    let commit = if broken.is_none() { conn.execute_batch("COMMIT") } else { Err(rusqlite::Error::InvalidQuery) };
    match commit {
        Ok(()) => {
            for (reply, result) in answers {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            let (code, msg) = match broken {
                Some(b) => b,
                None => (e.sqlite_error_code(), e.to_string()),
            };
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            for (reply, result) in answers {
                // A job that failed on its own keeps its own (more precise) error.
                let _ = reply.send(Err(match result {
                    Err(e) => e,
                    Ok(_) => same_error(code, &msg),
                }));
            }
        }
    }
}

/// A fresh error of the kind `code` with message `msg` (the same failure, reported to several callers).
fn same_error(code: Option<ErrorCode>, msg: &str) -> StoreError {
    match code {
        Some(ErrorCode::DiskFull) => StoreError::Full { detail: msg.to_owned() },
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            StoreError::ReadOnly { detail: msg.to_owned() }
        }
        _ => StoreError::Backend(msg.to_owned().into()),
    }
}

// ---- the steps, each run inside the writer's transaction ----

/// The statements the steps run. A job borrows each from the connection's statement cache once and
/// keeps it for all its steps ([`Stmts`]): looking a statement up in the cache by its text, per row,
/// cost more than some of the statements themselves.
#[derive(Clone, Copy)]
enum Sql {
    InsertOutbox,
    NextSeq,
    SessionState,
    SessionExists,
    OpenOfKey,
    InsertSession,
    CloseSession,
    DeleteTranscript,
    ReadCount,
    LastChunk,
    InsertTranscript,
}

impl Sql {
    const COUNT: usize = 11;

    fn text(self) -> &'static str {
        match self {
            Sql::InsertOutbox => {
                "INSERT INTO outbox (seq, event_id, event, payload, recorded_at, events) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            }
            Sql::NextSeq => "SELECT seq + events FROM outbox ORDER BY seq DESC LIMIT 1",
            Sql::SessionState => "SELECT state, reason, ended_at FROM sessions WHERE id = ?1",
            Sql::SessionExists => "SELECT 1 FROM sessions WHERE id = ?1",
            Sql::OpenOfKey => "SELECT id FROM sessions WHERE key = ?1 AND state = 'open'",
            Sql::InsertSession => {
                "INSERT INTO sessions (id, key, user_id, started_at, last_message_at, state, previous_session_id)
                 VALUES (?1, ?2, ?3, ?4, ?4, 'open', ?5)"
            }
            Sql::CloseSession => {
                "UPDATE sessions SET state = 'closed', reason = ?2, ended_at = ?3, detected_at = ?4, message_count = ?5,
                        last_message_at = max(last_message_at, ?6)
                 WHERE id = ?1 AND state = 'open'"
            }
            Sql::DeleteTranscript => "DELETE FROM transcript_chunks WHERE session_id = ?1",
            Sql::ReadCount => "SELECT message_count, last_message_at FROM sessions WHERE id = ?1 AND state = 'open'",
            Sql::LastChunk => {
                "SELECT last, last_at FROM transcript_chunks WHERE session_id = ?1 ORDER BY first DESC LIMIT 1"
            }
            Sql::InsertTranscript => {
                "INSERT INTO transcript_chunks (session_id, first, last, last_at, messages) VALUES (?1, ?2, ?3, ?4, ?5)"
            }
        }
    }
}

/// What a job did to one open session that its rows do not show yet.
struct Touched<'c> {
    /// The message count so far: the row's, plus this job's messages.
    count: i64,
    /// The last message time so far (nanoseconds since the Unix epoch, UTC).
    last: i64,
    /// Whether this job opened the session: then no transcript chunk of it exists outside this job, and
    /// closing it has none to delete.
    opened_here: bool,
    /// This job's messages to the session, oldest first.
    messages: Vec<&'c RoutedMessage>,
}

/// A job's prepared statements, each taken from the connection's cache on first use and returned to
/// it when the job ends.
struct Stmts<'c> {
    conn: &'c Connection,
    prepared: [Option<CachedStatement<'c>>; Sql::COUNT],
    /// When the job started (nanoseconds since the Unix epoch, UTC): the `recorded_at` of every event
    /// it records (one clock read per job, not per row).
    now: i64,
    /// Sessions this job opened or routed messages to, with what it still owes them: a session is
    /// looked up at most once per job, and its messages become one transcript chunk (see [`flush`]),
    /// not one row each.
    touched: HashMap<SessionId, Touched<'c>>,
    /// The current step's outbox payloads encoded ahead, last one first (see [`Stmts::payload`]).
    encoded: Vec<&'c [u8]>,
    /// The next free outbox position, once read.
    next_seq: Option<i64>,
    /// With `Some`, the events this job records are collected here and written as one packed outbox
    /// row when it ends (see [`write_pack`]).
    pack: Option<Vec<Packed<'c>>>,
    /// The payloads encoded ahead, whose pack is the packed row if every one of them is recorded.
    whole: Option<&'c Encoded>,
}

/// An event collected for a packed outbox row: its position, id, name and payload.
struct Packed<'c> {
    seq: i64,
    event_id: EventId,
    name: &'static str,
    payload: Cow<'c, [u8]>,
}

impl<'c> Stmts<'c> {
    fn new(conn: &'c Connection) -> Self {
        Self {
            conn,
            prepared: Default::default(),
            now: nanos(Timestamp::now()),
            touched: HashMap::new(),
            encoded: Vec::new(),
            next_seq: None,
            pack: None,
            whole: None,
        }
    }

    /// Takes the next outbox position: one past the end of the last row (its last event's).
    fn take_seq(&mut self) -> Result<i64, StoreError> {
        let next = match self.next_seq {
            Some(next) => next,
            None => self.get(Sql::NextSeq)?.query_row([], |r| r.get(0)).optional().map_err(classify)?.unwrap_or(1),
        };
        self.next_seq = Some(next + 1);
        Ok(next)
    }

    /// The next outbox payload of the current step: encoded ahead if it was, else by `encode`.
    fn payload(&mut self, encode: impl FnOnce() -> Vec<u8>) -> Cow<'c, [u8]> {
        match self.encoded.pop() {
            Some(bytes) => Cow::Borrowed(bytes),
            None => Cow::Owned(encode()),
        }
    }

    fn get(&mut self, sql: Sql) -> Result<&mut CachedStatement<'c>, StoreError> {
        let slot = &mut self.prepared[sql as usize];
        if slot.is_none() {
            *slot = Some(self.conn.prepare_cached(sql.text()).map_err(classify)?);
        }
        Ok(slot.as_mut().expect("prepared just above"))
    }
}

fn insert_outbox(st: &mut Stmts<'_>, event: &AnyEvent) -> Result<OutboxSeq, StoreError> {
    let payload = st.payload(|| codec::encode(event));
    insert_outbox_row(st, event.event_id(), event.name(), payload)
}

/// Records one event in the outbox at the next position: as its own row, or collected for the job's
/// packed row.
fn insert_outbox_row<'c>(
    st: &mut Stmts<'c>,
    event_id: EventId,
    name: &'static str,
    payload: Cow<'c, [u8]>,
) -> Result<OutboxSeq, StoreError> {
    let seq = st.take_seq()?;
    match &mut st.pack {
        Some(pack) => pack.push(Packed { seq, event_id, name, payload }),
        None => write_outbox_row(st, seq, event_id, name, &payload, 1)?,
    }
    Ok(OutboxSeq(seq as u64))
}

fn write_outbox_row(
    st: &mut Stmts<'_>,
    seq: i64,
    event_id: EventId,
    name: &str,
    payload: &[u8],
    events: i64,
) -> Result<(), StoreError> {
    let now = st.now;
    st.get(Sql::InsertOutbox)?
        .execute(params![seq, &event_id.as_u128().to_be_bytes()[..], name, payload, now, events])
        .map_err(classify)?;
    Ok(())
}

/// At the end of a packing job, writes the events it collected: one row holding all of them (a lone
/// event gets a plain row).
fn write_pack(st: &mut Stmts<'_>) -> Result<(), StoreError> {
    let Some(pack) = st.pack.take() else { return Ok(()) };
    match pack.as_slice() {
        [] => Ok(()),
        [one] => write_outbox_row(st, one.seq, one.event_id, one.name, &one.payload, 1),
        [first, ..] => {
            let events = pack.len() as i64;
            // Every payload encoded ahead was recorded (each is taken once, in order): their pack is
            // the row as it is.
            if let Some(whole) = st.whole.filter(|w| w.spans.len() == pack.len())
                && pack.iter().all(|p| matches!(p.payload, Cow::Borrowed(_)))
            {
                return write_outbox_row(st, first.seq, first.event_id, PACKED, &whole.pack, events);
            }
            let payloads: Vec<Cow<'_, [u8]>> = pack.iter().map(|p| Cow::Borrowed(&*p.payload)).collect();
            let bytes = codec::pack(&payloads);
            write_outbox_row(st, first.seq, first.event_id, PACKED, &bytes, events)
        }
    }
}

/// The `event` column of a packed outbox row.
const PACKED: &str = "packed";

fn insert_start(st: &mut Stmts<'_>, start: &SessionStart) -> Result<OutboxSeq, StoreError> {
    let payload = st.payload(|| codec::encode_start(start));
    insert_outbox_row(st, start.event_id, "session_start", payload)
}

fn insert_end(st: &mut Stmts<'_>, end: &SessionEnd) -> Result<OutboxSeq, StoreError> {
    let payload = st.payload(|| codec::encode_end(end));
    insert_outbox_row(st, end.event_id, "session_end", payload)
}

/// `Ok(None)` if open, `Ok(Some(lost))` if closed, `Err(UnknownSession)` if never opened.
fn session_state(st: &mut Stmts<'_>, id: SessionId) -> Result<Option<LostClose>, StoreError> {
    let row = st
        .get(Sql::SessionState)?
        .query_row([&id_blob(id)[..]], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, Option<i64>>(2)?))
        })
        .optional()
        .map_err(classify)?;
    match row {
        None => Err(StoreError::UnknownSession(id)),
        Some((state, _, _)) if state == "open" => Ok(None),
        Some((_, reason, ended_at)) => {
            let reason = reason.as_deref().unwrap_or("");
            let reason = CloseReason::ALL
                .into_iter()
                .find(|r| r.as_str() == reason)
                .ok_or_else(|| bad_row("close reason", reason))?;
            Ok(Some(LostClose { session_id: id, reason, ended_at: from_nanos(ended_at.unwrap_or(0)) }))
        }
    }
}

fn session_exists(st: &mut Stmts<'_>, id: SessionId) -> Result<bool, StoreError> {
    st.get(Sql::SessionExists)?.exists([&id_blob(id)[..]]).map_err(classify)
}

fn open_of_key(st: &mut Stmts<'_>, key: &str) -> Result<Option<SessionId>, StoreError> {
    let id: Option<Vec<u8>> = st.get(Sql::OpenOfKey)?.query_row([key], |r| r.get(0)).optional().map_err(classify)?;
    id.map(|b| id_from_blob(&b)).transpose()
}

/// Inserts `start`'s session row. The insert's own failure comes back as SQLite's error (inner), so
/// that a caller can tell a constraint from other failures.
fn insert_session(
    st: &mut Stmts<'_>,
    start: &SessionStart,
    key: &str,
) -> Result<Result<(), rusqlite::Error>, StoreError> {
    let inserted = st.get(Sql::InsertSession)?.execute(params![
        &id_blob(start.session_id)[..],
        key,
        start.user_id.as_str(),
        nanos(start.started_at),
        start.previous_session_id.map(id_blob),
    ]);
    Ok(inserted.map(|_| ()))
}

/// Closes `end`'s session if it is open (and drops its transcript chunks: its `SessionEnd` carries the
/// transcript from then on); `false` if it was not open. What this job owed the session's row is
/// settled by the same update: the count is the `SessionEnd`'s, and this job's messages, already in
/// the `SessionEnd`, are never written as a chunk.
fn close_session(st: &mut Stmts<'_>, end: &SessionEnd) -> Result<bool, StoreError> {
    let id = &id_blob(end.session_id)[..];
    let touched = st.touched.remove(&end.session_id);
    // The row's last message time may predate chunks written since; the transcript's newest entry
    // (when transcripts are kept) and this job's messages bring it up to date.
    let newest = end.transcript.entries().last().map_or(i64::MIN, |e| nanos(e.at));
    let last = touched.as_ref().map_or(i64::MIN, |t| t.last).max(newest);
    let changed = st
        .get(Sql::CloseSession)?
        .execute(params![
            id,
            end.reason.as_str(),
            nanos(end.ended_at),
            nanos(end.detected_at),
            end.message_count as i64,
            last,
        ])
        .map_err(classify)?;
    if changed == 0 {
        return Ok(false);
    }
    if !touched.is_some_and(|t| t.opened_here) {
        st.get(Sql::DeleteTranscript)?.execute([id]).map_err(classify)?;
    }
    Ok(true)
}

/// Why a close changed nothing: the session was closed already (by whom and when), or never opened.
fn not_closed(st: &mut Stmts<'_>, id: SessionId) -> Result<LostClose, StoreError> {
    match session_state(st, id)? {
        Some(lost) => Ok(lost),
        // Open, yet the close matched no row: cannot happen inside one transaction.
        None => Err(StoreError::Backend(format!("session {id} changed under its close").into())),
    }
}

/// Whether an insert failed on a constraint: for a session row, its primary key (the id exists) or the
/// one-open-session-per-key index.
fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation)
}

// Opens and closes are optimistic: the write goes first and the checks run only when the database
// refuses it (a constraint) or it changes nothing (the session is not open). Checking first cost a
// query per open and per close that almost never found anything.

fn step_open(st: &mut Stmts<'_>, start: &SessionStart) -> Result<OpenOutcome, StoreError> {
    let key = key_json(&start.key);
    match insert_session(st, start, &key)? {
        Ok(()) => {
            opened(st, start);
            Ok(OpenOutcome::Opened { start: insert_start(st, start)? })
        }
        Err(e) if is_constraint(&e) => {
            if session_exists(st, start.session_id)? {
                return Err(StoreError::DuplicateSession(start.session_id));
            }
            match open_of_key(st, &key)? {
                Some(open) => Ok(OpenOutcome::KeyBusy { open }),
                None => Err(classify(e)),
            }
        }
        Err(e) => Err(classify(e)),
    }
}

fn step_close(st: &mut Stmts<'_>, end: &SessionEnd) -> Result<CloseOutcome, StoreError> {
    if !close_session(st, end)? {
        return Ok(CloseOutcome::Lost(not_closed(st, end.session_id)?));
    }
    Ok(CloseOutcome::Closed { end: insert_end(st, end)? })
}

fn step_rotate(st: &mut Stmts<'_>, end: &SessionEnd, start: &SessionStart) -> Result<RotateOutcome, StoreError> {
    if start.key != end.key || start.previous_session_id != Some(end.session_id) {
        return Err(StoreError::NotASuccessor { end: end.session_id, start: start.session_id });
    }
    // Checked before the close, which a refused rotation must not leave behind; a lost close is the
    // answer even then.
    if session_exists(st, start.session_id)? {
        if let Some(lost) = session_state(st, end.session_id)? {
            return Ok(RotateOutcome::Lost(lost));
        }
        return Err(StoreError::DuplicateSession(start.session_id));
    }
    if !close_session(st, end)? {
        return Ok(RotateOutcome::Lost(not_closed(st, end.session_id)?));
    }
    // The key's only open session was just closed, and the id is new: the insert cannot conflict.
    insert_session(st, start, &key_json(&start.key))?.map_err(classify)?;
    opened(st, start);
    let e = insert_end(st, end)?;
    let s = insert_start(st, start)?;
    Ok(RotateOutcome::Rotated { end: e, start: s })
}

fn step_record(st: &mut Stmts<'_>, event: &AnyEvent) -> Result<OutboxSeq, StoreError> {
    if matches!(event, AnyEvent::SessionStart(_) | AnyEvent::SessionEnd(_)) {
        return Err(StoreError::SessionEvent(event.name()));
    }
    insert_outbox(st, event)
}

fn step_message<'c>(st: &mut Stmts<'c>, m: &'c RoutedMessage) -> Result<(), StoreError> {
    if !st.touched.contains_key(&m.session_id) {
        let id = &id_blob(m.session_id)[..];
        // Chunks exist only for open sessions (a close deletes them), and the newest one holds the
        // count and last message time; without one, the session row says whether it is open.
        let newest: Option<(i64, i64)> =
            st.get(Sql::LastChunk)?.query_row([id], |r| Ok((r.get(0)?, r.get(1)?))).optional().map_err(classify)?;
        let (count, last) = match newest {
            Some(newest) => newest,
            None => st
                .get(Sql::ReadCount)?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(classify)?
                .ok_or(StoreError::UnknownSession(m.session_id))?,
        };
        st.touched.insert(m.session_id, Touched { count, last, opened_here: false, messages: Vec::new() });
    }
    let touched = st.touched.get_mut(&m.session_id).expect("inserted just above");
    touched.count += 1;
    touched.last = touched.last.max(nanos(m.at));
    touched.messages.push(m);
    Ok(())
}

/// Notes a session this job opened: its row says no messages, and no transcript chunk of it exists.
fn opened(st: &mut Stmts<'_>, start: &SessionStart) {
    let at = nanos(start.started_at);
    st.touched.insert(start.session_id, Touched { count: 0, last: at, opened_here: true, messages: Vec::new() });
}

/// At the end of a job, writes what it owes the sessions it routed messages to and did not close:
/// each one's messages as one transcript chunk, which also carries its message count and last
/// message time (the session row is not updated).
fn flush(st: &mut Stmts<'_>) -> Result<(), StoreError> {
    let touched = std::mem::take(&mut st.touched);
    for (id, t) in touched {
        if t.messages.is_empty() {
            continue;
        }
        let first = t.count - t.messages.len() as i64 + 1;
        let chunk = codec::encode_chunk(&t.messages);
        st.get(Sql::InsertTranscript)?
            .execute(params![&id_blob(id)[..], first, t.count, t.last, chunk])
            .map_err(classify)?;
    }
    Ok(())
}

fn is_fatal(e: &StoreError) -> bool {
    matches!(e, StoreError::Backend(_) | StoreError::Full { .. } | StoreError::ReadOnly { .. } | StoreError::Closed)
}

fn recover(conn: &Connection) -> Result<Recovery, StoreError> {
    let mut sessions = Vec::new();
    {
        let mut stmt = conn
            .prepare(
                "SELECT id, key, user_id, started_at, last_message_at, message_count FROM sessions
                 WHERE state = 'open' ORDER BY started_at, id",
            )
            .map_err(classify)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(classify)?;
        let mut chunks = conn
            .prepare("SELECT messages, last, last_at FROM transcript_chunks WHERE session_id = ?1 ORDER BY first")
            .map_err(classify)?;
        for row in rows {
            // The row's count and last message time, or its newest chunk's if later (chunks do not
            // update the row).
            let (id, key, user_id, started_at, mut last, mut count) = row.map_err(classify)?;
            let mut entries = Vec::new();
            let mut stored = chunks.query([&id]).map_err(classify)?;
            while let Some(r) = stored.next().map_err(classify)? {
                count = count.max(r.get(1).map_err(classify)?);
                last = last.max(r.get(2).map_err(classify)?);
                let chunk = match r.get_ref(0).map_err(classify)? {
                    ValueRef::Blob(bytes) => codec::Chunk::MessagePack(bytes),
                    ValueRef::Text(text) => {
                        codec::Chunk::Json(std::str::from_utf8(text).map_err(|e| bad_row("transcript chunk", e))?)
                    }
                    other => return Err(bad_row("transcript chunk", format!("a {:?} value", other.data_type()))),
                };
                codec::decode_chunk(chunk, &mut entries).map_err(|e| bad_row("transcript chunk", e))?;
            }
            sessions.push(RecoveredSession {
                session_id: id_from_blob(&id)?,
                key: serde_json::from_str(&key).map_err(|e| bad_row("session key", e))?,
                user_id: CompactString::new(user_id),
                started_at: from_nanos(started_at),
                last_message_at: from_nanos(last),
                message_count: count as u64,
                transcript: entries,
            });
        }
    }
    let mut pending = Vec::new();
    {
        let mut stmt = conn
            .prepare("SELECT seq, payload, events, attempts FROM outbox WHERE state = 'pending' ORDER BY seq")
            .map_err(classify)?;
        let mut done = conn
            .prepare("SELECT handler FROM deliveries WHERE seq = ?1 AND delivered = 1 ORDER BY handler")
            .map_err(classify)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Value>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
            })
            .map_err(classify)?;
        for row in rows {
            let (seq, payload, events, attempts) = row.map_err(classify)?;
            for (seq, event) in row_events(seq, payload, events)? {
                // A packed row has no per-handler rows (it is split before any are written).
                let handlers = if events == 1 {
                    done.query_map([seq], |r| r.get::<_, String>(0))
                        .map_err(classify)?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(classify)?
                } else {
                    Vec::new()
                };
                pending.push(PendingDelivery {
                    entry: OutboxEntry { seq: OutboxSeq(seq as u64), event },
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    done: handlers,
                });
            }
        }
    }
    let dead: i64 =
        conn.query_row("SELECT count(*) FROM outbox WHERE state = 'dead'", [], |r| r.get(0)).map_err(classify)?;
    Ok(Recovery { sessions, pending, dead_letters: dead as u64 })
}

/// The outbox payloads a job's steps record, encoded ahead (for [`SqliteStore::submit`]).
struct Encoded {
    /// Every payload, in step order, as one pack: the job's packed row when every step records.
    pack: Vec<u8>,
    /// Each payload's byte range in `pack`.
    spans: Vec<Range<usize>>,
    /// Each step's payloads, in the order it inserts them: a range of `spans`.
    steps: Vec<Range<usize>>,
}

impl Encoded {
    fn new(steps: &[Step]) -> Self {
        // About 250 bytes per event of real traffic; the buffer grows if that is short.
        let mut out = codec::PackWriter::with_capacity(steps.len() * 250, steps.len());
        let mut ranges = Vec::with_capacity(steps.len());
        for step in steps {
            let from = out.len();
            match step {
                Step::Open(start) => out.start(start),
                Step::Close(end) => out.end(end),
                Step::Rotate(end, start) => {
                    out.end(end);
                    out.start(start);
                }
                Step::Record(event) => out.event(event),
                Step::Message(_) => {}
            }
            ranges.push(from..out.len());
        }
        let (pack, spans) = out.finish();
        Self { pack, spans, steps: ranges }
    }

    /// Step `i`'s payloads, last one first (as [`Stmts::encoded`] takes them).
    fn of_step(&self, i: usize) -> impl Iterator<Item = &[u8]> {
        self.spans[self.steps[i].clone()].iter().rev().map(|span| &self.pack[span.clone()])
    }
}

/// Runs each step; a refused step is its own outcome, a backend failure fails them all. `payloads`,
/// if given, holds each step's outbox payloads encoded ahead ([`encode_step`]); else they are encoded
/// here. With `pack`, the events recorded go into one outbox row (see [`write_pack`]).
fn apply_steps<'c>(
    conn: &'c Connection,
    steps: &'c [Step],
    encoded: Option<&'c Encoded>,
    pack: bool,
) -> Result<Vec<Result<StepOutcome, StoreError>>, StoreError> {
    let mut out = Vec::with_capacity(steps.len());
    let mut st = Stmts::new(conn);
    if pack {
        st.pack = Some(Vec::new());
        st.whole = encoded;
    }
    for (i, step) in steps.iter().enumerate() {
        st.encoded.clear();
        if let Some(encoded) = encoded {
            st.encoded.extend(encoded.of_step(i));
        }
        let result = match step {
            Step::Open(start) => step_open(&mut st, start).map(StepOutcome::Opened),
            Step::Close(end) => step_close(&mut st, end).map(StepOutcome::Closed),
            Step::Rotate(end, start) => step_rotate(&mut st, end, start).map(StepOutcome::Rotated),
            Step::Record(event) => step_record(&mut st, event).map(StepOutcome::Recorded),
            Step::Message(m) => step_message(&mut st, m).map(|()| StepOutcome::Message),
        };
        match result {
            // A backend failure fails the whole batch (the writer rolls it back).
            Err(e) if is_fatal(&e) => return Err(e),
            other => out.push(other),
        }
    }
    flush(&mut st)?;
    write_pack(&mut st)?;
    Ok(out)
}

/// One attempt to record with its per-handler rows: `(seq, attempt, [(handler, error)], dead)`.
type Attempt = (i64, i64, Vec<(String, Option<String>)>, bool);

/// Delivery attempts to record, owned so that a job can carry them to the writer thread.
struct Deliveries {
    /// First attempts that reached every handler (they only delete their outbox rows), sorted.
    delivered: Vec<i64>,
    /// The others: `(seq, attempt, [(handler, error)], dead)`.
    other: Vec<Attempt>,
}

impl Deliveries {
    fn new(records: &[DeliveryRecord<'_>]) -> Self {
        let mut delivered = Vec::with_capacity(records.len());
        let mut other = Vec::new();
        for r in records {
            if r.attempt == 1 && r.results.iter().all(|h| h.error.is_none()) {
                delivered.push(r.seq.0 as i64);
            } else {
                let results = r.results.iter().map(|h| (h.handler.clone(), h.error.clone())).collect();
                other.push((r.seq.0 as i64, i64::from(r.attempt), results, r.dead));
            }
        }
        delivered.sort_unstable();
        delivered.dedup();
        Self { delivered, other }
    }

    fn record(&self, conn: &Connection) -> Result<(), StoreError> {
        delete_delivered(conn, &self.delivered)?;
        for (seq, attempt, results, dead) in &self.other {
            record_delivery(conn, *seq, *attempt, results, *dead)?;
        }
        Ok(())
    }
}

/// A job started by [`SqliteStore::submit`]: its outcome, once committed (or failed).
#[derive(Debug)]
#[must_use = "a submitted batch must be awaited before its events are delivered"]
pub struct Commit {
    rx: oneshot::Receiver<Result<AnyBox, StoreError>>,
    done: Option<Result<AnyBox, StoreError>>,
}

/// What a [`Commit`] yields: one outcome per step, as [`Store::apply`] returns them.
pub type StepOutcomes = Vec<Result<StepOutcome, StoreError>>;

impl Commit {
    /// Whether the job is over (committed or failed), without waiting.
    pub fn is_done(&mut self) -> bool {
        if self.done.is_none() {
            match self.rx.try_recv() {
                Ok(answer) => self.done = Some(answer),
                Err(oneshot::error::TryRecvError::Empty) => return false,
                Err(oneshot::error::TryRecvError::Closed) => self.done = Some(Err(StoreError::Closed)),
            }
        }
        true
    }

    /// Waits for the commit.
    ///
    /// # Errors
    ///
    /// The job failed as a whole (see [`SqliteStore::submit`]): nothing of it was recorded.
    pub async fn wait(self) -> Result<StepOutcomes, StoreError> {
        let answer = match self.done {
            Some(answer) => answer,
            None => self.rx.await.unwrap_or(Err(StoreError::Closed)),
        };
        Ok(*answer?.downcast::<StepOutcomes>().expect("a batch answers with its outcomes"))
    }
}

/// The events of the outbox row at `seq` holding `events` of them, with their positions.
fn row_events(seq: i64, payload: Value, events: i64) -> Result<Vec<(i64, AnyEvent)>, StoreError> {
    if events == 1 {
        return Ok(vec![(seq, decode_payload(payload)?)]);
    }
    let Value::Blob(bytes) = payload else { return Err(bad_row("packed outbox row", "a payload that is not a blob")) };
    (seq..)
        .zip(unpack_row(&bytes, events)?)
        .map(|(seq, p)| Ok((seq, codec::decode(p).map_err(|e| bad_row("outbox event", e))?)))
        .collect()
}

/// The payloads of a packed outbox row said to hold `events` events.
fn unpack_row(bytes: &[u8], events: i64) -> Result<Vec<&[u8]>, StoreError> {
    let payloads = codec::unpack(bytes).map_err(|e| bad_row("packed outbox row", e))?;
    if payloads.len() as i64 != events {
        return Err(bad_row("packed outbox row", format!("{} payloads for {events} events", payloads.len())));
    }
    Ok(payloads)
}

/// The outbox row holding position `seq`, if any: its own position and how many events it holds.
fn row_holding(conn: &Connection, seq: i64) -> Result<Option<(i64, i64)>, StoreError> {
    let row: Option<(i64, i64)> = conn
        .prepare_cached("SELECT seq, events FROM outbox WHERE seq <= ?1 ORDER BY seq DESC LIMIT 1")
        .and_then(|mut s| s.query_row([seq], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(classify)?;
    Ok(row.filter(|&(first, events)| seq < first + events))
}

/// Splits the packed outbox row holding position `seq` (if it is packed) into one row per event, at
/// the same positions, so that something can be recorded about one of its events alone.
fn split_row_holding(conn: &Connection, seq: i64) -> Result<(), StoreError> {
    let Some((first, events)) = row_holding(conn, seq)? else { return Ok(()) };
    if events == 1 {
        return Ok(());
    }
    let (payload, recorded_at): (Vec<u8>, i64) = conn
        .query_row("SELECT payload, recorded_at FROM outbox WHERE seq = ?1", [first], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(classify)?;
    let payloads = unpack_row(&payload, events)?;
    conn.execute("DELETE FROM outbox WHERE seq = ?1", [first]).map_err(classify)?;
    let mut insert = conn
        .prepare_cached("INSERT INTO outbox (seq, event_id, event, payload, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5)")
        .map_err(classify)?;
    for (seq, p) in (first..).zip(payloads) {
        let event = codec::decode(p).map_err(|e| bad_row("outbox event", e))?;
        insert
            .execute(params![seq, &event.event_id().as_u128().to_be_bytes()[..], event.name(), p, recorded_at])
            .map_err(classify)?;
    }
    Ok(())
}

/// Deletes the outbox rows of events every handler received on their first attempt (so they have no
/// per-handler rows), one statement per run of consecutive positions. A packed row that a run covers
/// only in part is split first, so its other events stay.
fn delete_delivered(conn: &Connection, seqs: &[i64]) -> Result<(), StoreError> {
    let mut rest = seqs;
    while let Some(&first) = rest.first() {
        let run = rest.iter().enumerate().take_while(|&(i, &s)| s == first + i as i64).count();
        let last = first + run as i64 - 1;
        // A row starting before the run but reaching into it, and the last row starting in the run if
        // it reaches past it.
        if row_holding(conn, first)?.is_some_and(|(seq, _)| seq < first) {
            split_row_holding(conn, first)?;
        }
        if row_holding(conn, last)?.is_some_and(|(seq, events)| seq + events - 1 > last) {
            split_row_holding(conn, last)?;
        }
        conn.prepare_cached("DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2")
            .and_then(|mut s| s.execute([first, last]))
            .map_err(classify)?;
        rest = &rest[run..];
    }
    Ok(())
}

fn record_delivery(
    conn: &Connection,
    seq: i64,
    attempt: i64,
    results: &[(String, Option<String>)],
    dead: bool,
) -> Result<(), StoreError> {
    split_row_holding(conn, seq)?;
    let failed: Vec<String> = results.iter().filter_map(|(h, e)| e.as_ref().map(|e| format!("{h}: {e}"))).collect();
    if failed.is_empty() {
        // Per-handler rows exist only after a failed attempt, so a first attempt has none to delete.
        if attempt != 1 {
            conn.prepare_cached("DELETE FROM deliveries WHERE seq = ?1")
                .and_then(|mut s| s.execute([seq]))
                .map_err(classify)?;
        }
        conn.prepare_cached("DELETE FROM outbox WHERE seq = ?1")
            .and_then(|mut s| s.execute([seq]))
            .map_err(classify)?;
        return Ok(());
    }
    let mut upsert = conn
        .prepare_cached(
            "INSERT INTO deliveries (seq, handler, attempts, delivered, last_error) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (seq, handler) DO UPDATE SET attempts = excluded.attempts,
                 delivered = excluded.delivered, last_error = excluded.last_error",
        )
        .map_err(classify)?;
    for (handler, error) in results {
        upsert.execute(params![seq, handler, attempt, error.is_none(), error]).map_err(classify)?;
    }
    let state = if dead { "dead" } else { "pending" };
    conn.prepare_cached("UPDATE outbox SET state = ?2, attempts = ?3, last_error = ?4 WHERE seq = ?1")
        .and_then(|mut s| s.execute(params![seq, state, attempt, failed.join("; ")]))
        .map_err(classify)?;
    Ok(())
}

impl Store for SqliteStore {
    async fn open(&self, start: &SessionStart) -> Result<OpenOutcome, StoreError> {
        let start = start.clone();
        self.call(move |conn| step_open(&mut Stmts::new(conn), &start)).await
    }

    async fn close_if_open(&self, end: &SessionEnd) -> Result<CloseOutcome, StoreError> {
        let end = end.clone();
        self.call(move |conn| step_close(&mut Stmts::new(conn), &end)).await
    }

    async fn rotate(&self, end: &SessionEnd, start: &SessionStart) -> Result<RotateOutcome, StoreError> {
        let (end, start) = (end.clone(), start.clone());
        self.call(move |conn| step_rotate(&mut Stmts::new(conn), &end, &start)).await
    }

    async fn record(&self, event: &AnyEvent) -> Result<OutboxSeq, StoreError> {
        let event = event.clone();
        self.call(move |conn| step_record(&mut Stmts::new(conn), &event)).await
    }

    async fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT seq, payload, events FROM outbox WHERE state = 'pending' ORDER BY seq LIMIT ?1")
                .map_err(classify)?;
            let rows = stmt
                .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Value>(1)?, r.get::<_, i64>(2)?))
                })
                .map_err(classify)?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, payload, events) = row.map_err(classify)?;
                for (seq, event) in row_events(seq, payload, events)? {
                    out.push(OutboxEntry { seq: OutboxSeq(seq as u64), event });
                }
                if out.len() >= limit {
                    break;
                }
            }
            out.truncate(limit);
            Ok(out)
        })
        .await
    }

    async fn mark_delivered(&self, seq: OutboxSeq) -> Result<(), StoreError> {
        self.call(move |conn| record_delivery(conn, seq.0 as i64, 0, &[], false)).await
    }

    async fn open_sessions(&self) -> Result<Vec<OpenSession>, StoreError> {
        self.call(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT id, key, started_at FROM sessions WHERE state = 'open' ORDER BY started_at, id")
                .map_err(classify)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))
                .map_err(classify)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, key, started_at) = row.map_err(classify)?;
                out.push(OpenSession {
                    session_id: id_from_blob(&id)?,
                    key: serde_json::from_str(&key).map_err(|e| bad_row("session key", e))?,
                    started_at: from_nanos(started_at),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn apply(&self, steps: Vec<Step>) -> Result<Vec<Result<StepOutcome, StoreError>>, StoreError> {
        self.call(move |conn| apply_steps(conn, &steps, None, false)).await
    }

    async fn record_delivery(&self, record: &DeliveryRecord<'_>) -> Result<(), StoreError> {
        let seq = record.seq.0 as i64;
        let attempt = i64::from(record.attempt);
        let results: Vec<(String, Option<String>)> =
            record.results.iter().map(|r| (r.handler.clone(), r.error.clone())).collect();
        let dead = record.dead;
        self.call(move |conn| record_delivery(conn, seq, attempt, &results, dead)).await
    }

    async fn recover(&self) -> Result<Recovery, StoreError> {
        self.call(recover).await
    }
}

#[cfg(test)]
mod tests;
