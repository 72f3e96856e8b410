use super::*;
use crate::event::{MessageReceived, TranscriptEntry};
use crate::event::{StartCause, Transcript};
use crate::store::HandlerResult;

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn start(n: u128, chat: &str, prev: Option<u128>) -> SessionStart {
    SessionStart::new(
        SessionId::from_u128(n),
        SessionKey::chat("web", chat),
        "alice".into(),
        t("2024-05-01T10:00:00Z"),
        if prev.is_some() { StartCause::Command } else { StartCause::Message },
        prev.map(SessionId::from_u128),
    )
}

fn end(n: u128, chat: &str, reason: CloseReason) -> SessionEnd {
    let entries = vec![TranscriptEntry { at: t("2024-05-01T10:00:00Z"), user_id: "alice".into(), text: "hi".into() }];
    SessionEnd::new(
        SessionId::from_u128(n),
        SessionKey::chat("web", chat),
        "alice".into(),
        reason,
        t("2024-05-01T10:00:00Z"),
        t("2024-05-01T10:30:00Z"),
        t("2024-05-01T11:00:00Z"),
        1,
        Transcript::new(entries, false),
    )
}

/// Message `m{min}` from alice to session `n`, at 10:`min` on 2024-05-01.
fn routed(n: u128, min: u32) -> Step {
    Step::Message(RoutedMessage {
        session_id: SessionId::from_u128(n),
        at: t(&format!("2024-05-01T10:{min:02}:00Z")),
        user_id: "alice".into(),
        text: format!("m{min}"),
    })
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("hooks-sqlite-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    fn db(&self) -> PathBuf {
        self.0.join("sessions.sqlite3")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn close_is_exactly_once_across_reopen_and_events_round_trip() {
    let dir = Dir::new("once");
    rt().block_on(async {
        let store = SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap();
        assert!(matches!(store.open(&start(1, "a", None)).await.unwrap(), OpenOutcome::Opened { .. }));
        let first = store.close_if_open(&end(1, "a", CloseReason::IdleExpiry)).await.unwrap();
        assert!(matches!(first, CloseOutcome::Closed { .. }));
        drop(store);

        let store = SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap();
        let second = store.close_if_open(&end(1, "a", CloseReason::UserNew)).await.unwrap();
        let CloseOutcome::Lost(lost) = second else { panic!("closed twice: {second:?}") };
        assert_eq!(lost.reason, CloseReason::IdleExpiry);
        assert_eq!(lost.ended_at, t("2024-05-01T10:30:00Z"));

        let pending = store.pending(10).await.unwrap();
        assert_eq!(pending.len(), 2);
        let AnyEvent::SessionEnd(e) = &pending[1].event else { panic!("{:?}", pending[1].event) };
        assert_eq!(e.event_id, end(1, "a", CloseReason::IdleExpiry).event_id);
        assert_eq!(e.detected_at, t("2024-05-01T11:00:00Z"));
        assert_eq!(e.transcript.entries()[0].text, "hi");
        assert!(matches!(
            store.close_if_open(&end(9, "a", CloseReason::UserNew)).await,
            Err(StoreError::UnknownSession(_))
        ));
    });
}

#[test]
fn a_key_has_at_most_one_open_session_even_for_raw_sql() {
    let dir = Dir::new("onekey");
    rt().block_on(async {
        let store = SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap();
        store.open(&start(1, "a", None)).await.unwrap();
        let busy = store.open(&start(2, "a", None)).await.unwrap();
        assert_eq!(busy, OpenOutcome::KeyBusy { open: SessionId::from_u128(1) });
        assert!(matches!(store.open(&start(1, "b", None)).await, Err(StoreError::DuplicateSession(_))));
        let rotated = store.rotate(&end(1, "a", CloseReason::UserNew), &start(2, "a", Some(1))).await.unwrap();
        assert!(matches!(rotated, RotateOutcome::Rotated { end, start } if end < start));
        let open = store.open_sessions().await.unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].session_id, SessionId::from_u128(2));
    });
    drop(dir.db());
    // The partial unique index holds for any writer, not only for this code.
    let conn = Connection::open(dir.db()).unwrap();
    let key: String = conn.query_row("SELECT key FROM sessions WHERE state = 'open'", [], |r| r.get(0)).unwrap();
    let err = conn
        .execute(
            "INSERT INTO sessions (id, key, user_id, started_at, last_message_at, state) VALUES ('x', ?1, 'u', 0, 0, 'open')",
            [key],
        )
        .unwrap_err();
    assert!(err.to_string().contains("UNIQUE"), "{err}");
}

#[test]
fn a_batch_commits_together_and_a_refused_step_leaves_the_others() {
    let dir = Dir::new("batch");
    rt().block_on(async {
        let store = SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap();
        let msg = RoutedMessage {
            session_id: SessionId::from_u128(1),
            at: t("2024-05-01T10:05:00Z"),
            user_id: "bob".into(),
            text: "hello".into(),
        };
        let out = store
            .apply(vec![
                Step::Open(start(1, "a", None)),
                Step::Message(msg),
                Step::Open(start(1, "b", None)),
                Step::Open(start(2, "b", None)),
            ])
            .await
            .unwrap();
        assert!(matches!(out[0], Ok(StepOutcome::Opened(OpenOutcome::Opened { .. }))));
        assert!(matches!(out[1], Ok(StepOutcome::Message)));
        assert!(matches!(out[2], Err(StoreError::DuplicateSession(_))));
        assert!(matches!(out[3], Ok(StepOutcome::Opened(OpenOutcome::Opened { .. }))));
        let rec = store.recover().await.unwrap();
        assert_eq!(rec.sessions.len(), 2);
        let a = rec.sessions.iter().find(|s| s.session_id == SessionId::from_u128(1)).unwrap();
        assert_eq!(a.message_count, 1);
        assert_eq!(a.last_message_at, t("2024-05-01T10:05:00Z"));
        assert_eq!(a.transcript[0].text, "hello");
        assert_eq!(rec.pending.len(), 2);
        assert!(rec.pending.iter().all(|p| p.attempts == 0 && p.done.is_empty()));
    });
}

#[test]
fn failing_handlers_are_retried_then_dead_lettered_and_can_be_retried() {
    let dir = Dir::new("dead");
    rt().block_on(async {
        let store = SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap();
        let OpenOutcome::Opened { start: seq } = store.open(&start(1, "a", None)).await.unwrap() else { panic!() };
        let results = [
            HandlerResult { handler: "m::ok".into(), error: None },
            HandlerResult { handler: "m::bad".into(), error: Some("boom".into()) },
        ];
        store.record_delivery(&DeliveryRecord { seq, attempt: 1, results: &results, dead: false }).await.unwrap();
        let rec = store.recover().await.unwrap();
        assert_eq!(rec.pending[0].attempts, 1);
        assert_eq!(rec.pending[0].done, vec!["m::ok".to_owned()]);

        let again = [HandlerResult { handler: "m::bad".into(), error: Some("boom".into()) }];
        store.record_delivery(&DeliveryRecord { seq, attempt: 2, results: &again, dead: true }).await.unwrap();
        let rec = store.recover().await.unwrap();
        assert!(rec.pending.is_empty());
        assert_eq!(rec.dead_letters, 1);
        let dead = store.dead_letters().await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].attempts, 2);
        assert_eq!(dead[0].event, "session_start");
        assert!(dead[0].error.as_deref().unwrap().contains("m::bad: boom"));

        assert_eq!(store.retry_dead_letters(None).await.unwrap(), 1);
        let rec = store.recover().await.unwrap();
        assert_eq!(rec.pending.len(), 1);
        assert_eq!(rec.pending[0].done, vec!["m::ok".to_owned()]);
        let ok = [HandlerResult { handler: "m::bad".into(), error: None }];
        store.record_delivery(&DeliveryRecord { seq, attempt: 3, results: &ok, dead: false }).await.unwrap();
        assert_eq!(store.counts().await.unwrap(), (1, 0, 0, 0));
    });
}

fn snapshot(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn a_database_from_a_newer_schema_is_refused_and_left_untouched() {
    let dir = Dir::new("newer");
    drop(SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap());
    Connection::open(dir.db()).unwrap().pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
    let before = snapshot(&dir.db());
    let err = SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::NewerSchema { found, .. } if found == SCHEMA_VERSION + 1), "{err}");
    assert!(err.to_string().contains("newer than this build"), "{err}");
    assert_eq!(snapshot(&dir.db()), before);
}

#[test]
fn damaged_empty_and_foreign_files_are_refused_and_left_untouched() {
    let dir = Dir::new("corrupt");
    let garbage = dir.0.join("garbage.sqlite3");
    std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
    let err = SqliteStore::open(&garbage, SqliteOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert_eq!(snapshot(&garbage), vec![0x42u8; 8192]);

    let empty = dir.0.join("empty.sqlite3");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(SqliteStore::open(&empty, SqliteOptions::default()), Err(StoreError::Corrupt { .. })));
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);

    let foreign = dir.0.join("foreign.sqlite3");
    Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
    let before = snapshot(&foreign);
    assert!(matches!(SqliteStore::open(&foreign, SqliteOptions::default()), Err(StoreError::Corrupt { .. })));
    assert_eq!(snapshot(&foreign), before);

    // A truncated session database.
    rt().block_on(async {
        let store = SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap();
        for i in 0..300u128 {
            store.open(&start(i + 1, &format!("chat-{i}"), None)).await.unwrap();
        }
    });
    let full = snapshot(&dir.db());
    std::fs::write(dir.db(), &full[..full.len() / 2]).unwrap();
    let err = SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert_eq!(snapshot(&dir.db()).len(), full.len() / 2);
}

#[test]
fn a_new_database_appears_whole_and_leaves_no_temporary_file() {
    let dir = Dir::new("create");
    // What a process killed while creating the database with this process id left behind.
    let leftover = dir.0.join(format!(".sessions.sqlite3.{}.new", std::process::id()));
    std::fs::write(&leftover, b"half made").unwrap();
    rt().block_on(async {
        let store = SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap();
        store.open(&start(1, "chat", None)).await.unwrap();
    });
    let names: Vec<String> =
        std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.ends_with(".new")), "{names:?}");
    let version: i64 = Connection::open(dir.db()).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    // And it opens again with its session.
    let store = SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap();
    let recovery = rt().block_on(store.recover()).unwrap();
    assert_eq!(recovery.sessions.len(), 1);
}

#[test]
fn a_full_store_fails_the_write_and_keeps_what_was_committed() {
    let dir = Dir::new("full");
    rt().block_on(async {
        let store = SqliteStore::open(dir.db(), SqliteOptions::default().with_max_pages(12)).unwrap();
        let mut opened = 0;
        let mut failure = None;
        for i in 0..10_000u128 {
            match store.open(&start(i + 1, &format!("chat-with-a-long-name-{i:06}"), None)).await {
                Ok(_) => opened += 1,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let failure = failure.expect("the page cap was reached");
        assert!(matches!(failure, StoreError::Full { .. }), "{failure}");
        assert!(opened > 0);
        assert_eq!(store.open_sessions().await.unwrap().len(), opened);
        drop(store);
        let store = SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap();
        assert_eq!(store.open_sessions().await.unwrap().len(), opened);
    });
}

#[test]
fn a_version_1_database_is_migrated_with_its_sessions_transcripts_and_pending_events() {
    let dir = Dir::new("migrate-v1");
    let open_id = SessionId::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    let closed_id = SessionId::from_u128(7);
    let pending = AnyEvent::SessionEnd(end(7, "b", CloseReason::UserNew));
    {
        // A database exactly as version 1 wrote it: text ids, AUTOINCREMENT positions.
        let conn = Connection::open(dir.db()).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        let key = key_json(&SessionKey::chat("web", "a"));
        conn.execute(
            "INSERT INTO sessions (id, key, user_id, started_at, last_message_at, message_count, state)
             VALUES (?1, ?2, 'alice', 10, 20, 2, 'open')",
            params![open_id.to_string(), key],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO sessions (id, key, user_id, started_at, last_message_at, state, reason, ended_at,
                                   detected_at, previous_session_id)
             VALUES (?1, ?2, 'alice', 1, 2, 'closed', 'user_new', 3, 4, ?3)",
            params![closed_id.to_string(), key_json(&SessionKey::chat("web", "b")), open_id.to_string()],
        )
        .unwrap();
        for (n, text) in [(1, "hello"), (2, "again")] {
            conn.execute(
                "INSERT INTO transcript (session_id, n, at, user_id, text) VALUES (?1, ?2, ?3, 'alice', ?4)",
                params![open_id.to_string(), n, 10 + n, text],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO outbox (seq, event_id, event, key, payload, recorded_at, state, attempts, last_error)
             VALUES (41, ?1, 'session_end', NULL, ?2, 5, 'dead', 3, 'h: boom')",
            params![pending.event_id().to_string(), codec::encode_json(&pending)],
        )
        .unwrap();
    }
    let store = SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap();
    let version: i64 = Connection::open(dir.db()).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    rt().block_on(async {
        let recovery = store.recover().await.unwrap();
        assert_eq!(recovery.sessions.len(), 1);
        let s = &recovery.sessions[0];
        assert_eq!(s.session_id, open_id, "the text id became the same id as a blob");
        assert_eq!((s.message_count, nanos(s.last_message_at)), (2, 20));
        let texts: Vec<&str> = s.transcript.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["hello", "again"]);
        assert_eq!(recovery.dead_letters, 1);
        let dead = store.dead_letters().await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].seq, dead[0].event_id.as_str()), (OutboxSeq(41), pending.event_id().to_string().as_str()));
        assert_eq!(dead[0].key, Some(SessionKey::chat("web", "b").to_string()), "the key comes from the payload");
        assert_eq!((dead[0].attempts, dead[0].error.as_deref()), (3, Some("h: boom")));
        // The closed session kept its reason, and its predecessor link survived as a blob.
        let lost = store.close_if_open(&end(7, "b", CloseReason::IdleExpiry)).await.unwrap();
        assert!(matches!(lost, CloseOutcome::Lost(l) if l.reason == CloseReason::UserNew), "{lost:?}");
        // New positions continue after the migrated ones.
        assert_eq!(store.retry_dead_letters(None).await.unwrap(), 1);
        let opened = store.open(&start(9, "c", None)).await.unwrap();
        assert!(matches!(opened, OpenOutcome::Opened { start } if start.0 > 41), "{opened:?}");
    });
}

#[test]
fn a_failing_call_in_a_group_commit_fails_alone() {
    // Sent together, the three calls usually share one group commit: the failing one sends the batch
    // from the fast path (no savepoints) to the careful one, where it is undone alone.
    let dir = Dir::new("group-failure");
    let store = SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap();
    rt().block_on(async {
        for round in 0..20u128 {
            let (first, unknown, second) = (
                start(100 + round, &format!("a{round}"), None),
                end(1_000 + round, "nobody", CloseReason::UserNew),
                start(200 + round, &format!("b{round}"), None),
            );
            let (a, b, c) = tokio::join!(store.open(&first), store.close_if_open(&unknown), store.open(&second));
            assert!(matches!(a, Ok(OpenOutcome::Opened { .. })), "{a:?}");
            assert!(matches!(b, Err(StoreError::UnknownSession(id)) if id == SessionId::from_u128(1_000 + round)));
            assert!(matches!(c, Ok(OpenOutcome::Opened { .. })), "{c:?}");
        }
        assert_eq!(store.open_sessions().await.unwrap().len(), 40);
        assert_eq!(store.counts().await.unwrap(), (40, 0, 40, 0));
    });
}

#[test]
fn messages_counted_in_one_batch_are_recovered_and_continue_in_the_next() {
    let dir = Dir::new("counts");
    let store = SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap();
    let msg = routed;
    rt().block_on(async {
        let steps = vec![
            Step::Open(start(1, "a", None)),
            Step::Open(start(2, "b", None)),
            msg(1, 1),
            msg(2, 2),
            msg(1, 3),
            // Closing session 2 inside the batch: its count is written first, then the close's.
            Step::Close(end(2, "b", CloseReason::UserNew)),
            msg(1, 4),
            msg(2, 5),
        ];
        let out = store.apply(steps).await.unwrap();
        assert!(matches!(out[7], Err(StoreError::UnknownSession(id)) if id == SessionId::from_u128(2)), "{out:?}");
        assert!(out[..7].iter().all(Result::is_ok), "{out:?}");
        let recovery = store.recover().await.unwrap();
        assert_eq!(recovery.sessions.len(), 1);
        let s = &recovery.sessions[0];
        assert_eq!((s.session_id, s.message_count), (SessionId::from_u128(1), 3));
        assert_eq!(s.last_message_at, t("2024-05-01T10:04:00Z"));
        let texts: Vec<&str> = s.transcript.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["m1", "m3", "m4"]);
        // A later batch continues the count from the row.
        store.apply(vec![msg(1, 6)]).await.unwrap();
        assert_eq!(store.recover().await.unwrap().sessions[0].message_count, 4);
    });
}

#[test]
fn a_transcript_written_over_several_jobs_is_recovered_in_order_and_dropped_at_close() {
    let dir = Dir::new("chunks");
    let store = SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap();
    let msg = routed;
    let chunk_rows = || -> i64 {
        Connection::open(dir.db())
            .unwrap()
            .query_row("SELECT count(*) FROM transcript_chunks", [], |r| r.get(0))
            .unwrap()
    };
    rt().block_on(async {
        // Session 1 gets messages in three jobs; session 2 opens and closes within one job.
        store.apply(vec![Step::Open(start(1, "a", None)), msg(1, 1), msg(1, 2)]).await.unwrap();
        store.apply(vec![msg(1, 3)]).await.unwrap();
        let out = store
            .apply(vec![
                msg(1, 4),
                Step::Open(start(2, "b", None)),
                msg(2, 5),
                Step::Close(end(2, "b", CloseReason::UserNew)),
                msg(1, 6),
            ])
            .await
            .unwrap();
        assert!(out.iter().all(Result::is_ok), "{out:?}");
        assert_eq!(chunk_rows(), 3, "one chunk per job that routed messages to session 1, none for session 2");
        let recovery = store.recover().await.unwrap();
        assert_eq!(recovery.sessions.len(), 1);
        let s = &recovery.sessions[0];
        assert_eq!((s.session_id, s.message_count), (SessionId::from_u128(1), 5));
        let texts: Vec<&str> = s.transcript.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["m1", "m2", "m3", "m4", "m6"]);
        assert_eq!(s.transcript[4].at, t("2024-05-01T10:06:00Z"));
        // Closing it in a later job drops every chunk; the row keeps the count and last message time.
        let closed = store.apply(vec![msg(1, 7), Step::Close(end(1, "a", CloseReason::IdleExpiry))]).await.unwrap();
        assert!(closed.iter().all(Result::is_ok), "{closed:?}");
        assert_eq!(chunk_rows(), 0);
        let (count, last): (i64, i64) = Connection::open(dir.db())
            .unwrap()
            .query_row(
                "SELECT message_count, last_message_at FROM sessions WHERE id = ?1",
                [&id_blob(SessionId::from_u128(1))[..]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(last, nanos(t("2024-05-01T10:07:00Z")));
        // The count is the SessionEnd's (what the engine counted), as for every close.
        assert_eq!(count, end(1, "a", CloseReason::IdleExpiry).message_count as i64);
    });
}

/// The steps of a submitted job and the positions its events got, in step order.
async fn submit_and_wait(store: &SqliteStore, steps: Vec<Step>, deliveries: &[DeliveryRecord<'_>]) -> Vec<OutboxSeq> {
    let outcomes = store.submit(Arc::new(steps), deliveries).unwrap().wait().await.unwrap();
    outcomes
        .into_iter()
        .flat_map(|o| match o.unwrap() {
            StepOutcome::Opened(OpenOutcome::Opened { start }) => vec![start],
            StepOutcome::Closed(CloseOutcome::Closed { end }) => vec![end],
            StepOutcome::Rotated(RotateOutcome::Rotated { end, start }) => vec![end, start],
            StepOutcome::Recorded(seq) => vec![seq],
            StepOutcome::Message => vec![],
            other => panic!("refused: {other:?}"),
        })
        .collect()
}

fn outbox_rows(dir: &Dir) -> Vec<(i64, i64, String)> {
    let conn = Connection::open(dir.db()).unwrap();
    let mut stmt = conn.prepare("SELECT seq, events, event FROM outbox ORDER BY seq").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
}

fn received(n: u128, session: u128, text: &str) -> AnyEvent {
    AnyEvent::MessageReceived(MessageReceived::new(
        EventId::from_u128(n),
        SessionId::from_u128(session),
        SessionKey::chat("web", "a"),
        "alice",
        t("2024-05-01T10:01:00Z"),
        text,
    ))
}

#[test]
fn a_submitted_job_records_its_events_in_one_packed_row_with_a_position_each() {
    let dir = Dir::new("packed");
    let store = SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap();
    rt().block_on(async {
        let steps = vec![
            Step::Open(start(1, "a", None)),
            Step::Record(received(10, 1, "one")),
            Step::Record(received(11, 1, "two")),
            Step::Close(end(1, "a", CloseReason::UserNew)),
        ];
        let seqs = submit_and_wait(&store, steps, &[]).await;
        assert_eq!(seqs, [1, 2, 3, 4].map(OutboxSeq));
        assert_eq!(outbox_rows(&dir), [(1, 4, "packed".to_owned())]);
        assert_eq!(store.counts().await.unwrap(), (0, 1, 4, 0));
        // Read back as four events at their own positions, in order.
        let names = |entries: &[OutboxEntry]| entries.iter().map(|e| (e.seq.0, e.event.name())).collect::<Vec<_>>();
        let all = [(1, "session_start"), (2, "message_received"), (3, "message_received"), (4, "session_end")];
        assert_eq!(names(&store.pending(10).await.unwrap()), all);
        assert_eq!(names(&store.pending(3).await.unwrap()), all[..3]);
        let recovered: Vec<_> = store.recover().await.unwrap().pending.into_iter().map(|p| p.entry).collect();
        assert_eq!(names(&recovered), all);

        // A later event takes the position after the packed row's last, never one inside it.
        let later = store.record(&received(12, 1, "three")).await.unwrap();
        assert_eq!(later, OutboxSeq(5));

        // Delivering all four (recorded with the next job) deletes the one row.
        let delivered: Vec<DeliveryRecord<'_>> =
            seqs.iter().map(|&seq| DeliveryRecord { seq, attempt: 1, results: &[], dead: false }).collect();
        submit_and_wait(&store, vec![], &delivered).await;
        assert_eq!(outbox_rows(&dir), [(5, 1, "message_received".to_owned())]);
    });
}

#[test]
fn recording_one_event_of_a_packed_row_splits_it_and_keeps_the_others() {
    let dir = Dir::new("packed-split");
    let store = SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap();
    rt().block_on(async {
        let steps: Vec<Step> = (0..5).map(|i| Step::Record(received(20 + i, 1, &format!("m{i}")))).collect();
        let seqs = submit_and_wait(&store, steps, &[]).await;
        assert_eq!(outbox_rows(&dir), [(1, 5, "packed".to_owned())]);
        // Events 1 and 2 delivered, 3 failed for good, 4 and 5 not delivered yet.
        let failed = [HandlerResult { handler: "m::bad".into(), error: Some("boom".into()) }];
        let records = [
            DeliveryRecord { seq: seqs[0], attempt: 1, results: &[], dead: false },
            DeliveryRecord { seq: seqs[1], attempt: 1, results: &[], dead: false },
            DeliveryRecord { seq: seqs[2], attempt: 1, results: &failed, dead: true },
        ];
        store.record_deliveries(&records).await.unwrap();
        let rows: Vec<(i64, i64)> = outbox_rows(&dir).into_iter().map(|(s, n, _)| (s, n)).collect();
        assert_eq!(rows, [(3, 1), (4, 1), (5, 1)], "split into one row per event, delivered ones gone");
        let dead = store.dead_letters().await.unwrap();
        assert_eq!((dead.len(), dead[0].seq, dead[0].event.as_str()), (1, seqs[2], "message_received"));
        assert_eq!(dead[0].event_id, EventId::from_u128(22).to_string());
        let pending = store.recover().await.unwrap().pending;
        let texts: Vec<(u64, String)> = pending
            .iter()
            .map(|p| match &p.entry.event {
                AnyEvent::MessageReceived(m) => (p.entry.seq.0, m.text.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(texts, [(4, "m3".to_owned()), (5, "m4".to_owned())]);
        // Marking the last one delivered alone deletes only it.
        store.mark_delivered(seqs[4]).await.unwrap();
        assert_eq!(store.counts().await.unwrap(), (0, 0, 1, 1));
    });
}

#[test]
fn a_refused_step_leaves_its_payloads_out_of_the_packed_row() {
    let dir = Dir::new("packed-refused");
    let store = SqliteStore::open(dir.db(), SqliteOptions::default()).unwrap();
    rt().block_on(async {
        let steps = Arc::new(vec![
            Step::Open(start(1, "a", None)),
            // The key has an open session already: refused, recording nothing.
            Step::Open(start(2, "a", None)),
            Step::Record(received(30, 1, "kept")),
        ]);
        let out = store.submit(steps, &[]).unwrap().wait().await.unwrap();
        assert!(matches!(out[1], Ok(StepOutcome::Opened(OpenOutcome::KeyBusy { .. }))), "{out:?}");
        assert_eq!(outbox_rows(&dir), [(1, 2, "packed".to_owned())]);
        let names: Vec<_> = store.pending(10).await.unwrap().iter().map(|e| (e.seq.0, e.event.name())).collect();
        assert_eq!(names, [(1, "session_start"), (2, "message_received")]);
    });
}

mod packed_rows_model {
    //! Packed outbox rows against a model: random jobs of events (each job one packed row), deliveries
    //! of random subsets (first-attempt successes, failures, dead letters), single `mark_delivered`
    //! calls, dead-letter retries and reopening the store, checked after every operation against a
    //! plain list of what must be pending and what must be dead.

    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// A job recording this many events.
        Submit(u8),
        /// Delivers the pending events picked by the mask bits (in order), each succeeding, failing, or
        /// failing for good by the outcome bits.
        Deliver(u32, u32),
        /// Marks the n-th pending event (modulo their number) delivered on its own.
        MarkOne(u8),
        RetryDead,
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1u8..7).prop_map(Op::Submit),
            3 => (any::<u32>(), any::<u32>()).prop_map(|(m, o)| Op::Deliver(m, o)),
            1 => any::<u8>().prop_map(Op::MarkOne),
            1 => Just(Op::RetryDead),
            1 => Just(Op::Reopen),
        ]
    }

    fn event(n: u128) -> AnyEvent {
        received(n, 1, &format!("m{n}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn packed_rows_behave_like_one_row_per_event(ops in proptest::collection::vec(op(), 1..24)) {
            // A fresh directory per case (`Dir::new` empties it; dropping it removes it).
            let dir = Dir::new("packed-model");
            let options = || SqliteOptions::default().with_synchronous(Synchronous::Normal);
            let mut store = Some(SqliteStore::open(dir.db(), options()).unwrap());
            // The model: pending (position, event id) in order, and dead positions.
            let mut pending: Vec<(u64, u128)> = Vec::new();
            let mut dead: Vec<(u64, u128)> = Vec::new();
            let mut next_id = 1u128;
            let rt = rt();
            for op in ops {
                let s = store.as_ref().unwrap();
                match op {
                    Op::Submit(k) => {
                        let steps: Vec<Step> = (0..k).map(|i| Step::Record(event(next_id + u128::from(i)))).collect();
                        let seqs = rt.block_on(submit_and_wait(s, steps, &[]));
                        for (i, seq) in seqs.into_iter().enumerate() {
                            pending.push((seq.0, next_id + i as u128));
                        }
                        next_id += u128::from(k);
                    }
                    Op::Deliver(mask, outcome) => {
                        let failed = [HandlerResult { handler: "m::h".into(), error: Some("boom".into()) }];
                        let picked: Vec<(usize, u64, u128)> = pending
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| mask & (1 << (i % 32)) != 0)
                            .map(|(i, &(seq, id))| (i, seq, id))
                            .collect();
                        let records: Vec<DeliveryRecord<'_>> = picked
                            .iter()
                            .map(|&(i, seq, _)| match (outcome >> (2 * (i % 16))) & 3 {
                                0 | 1 => DeliveryRecord { seq: OutboxSeq(seq), attempt: 1, results: &[], dead: false },
                                2 => DeliveryRecord { seq: OutboxSeq(seq), attempt: 1, results: &failed, dead: false },
                                _ => DeliveryRecord { seq: OutboxSeq(seq), attempt: 1, results: &failed, dead: true },
                            })
                            .collect();
                        rt.block_on(s.record_deliveries(&records)).unwrap();
                        let mut keep = Vec::new();
                        for (i, &(seq, id)) in pending.iter().enumerate() {
                            match picked.iter().find(|p| p.0 == i).map(|_| (outcome >> (2 * (i % 16))) & 3) {
                                Some(0 | 1) => {}
                                Some(2) | None => keep.push((seq, id)),
                                Some(_) => dead.push((seq, id)),
                            }
                        }
                        pending = keep;
                    }
                    Op::MarkOne(n) => {
                        if !pending.is_empty() {
                            let (seq, _) = pending.remove(usize::from(n) % pending.len());
                            rt.block_on(s.mark_delivered(OutboxSeq(seq))).unwrap();
                        }
                    }
                    Op::RetryDead => {
                        let moved = rt.block_on(s.retry_dead_letters(None)).unwrap();
                        prop_assert_eq!(moved, dead.len() as u64);
                        pending.append(&mut dead);
                        pending.sort_unstable();
                    }
                    Op::Reopen => {
                        drop(store.take());
                        store = Some(SqliteStore::open(dir.db(), options()).unwrap());
                    }
                }
                let s = store.as_ref().unwrap();
                let got: Vec<(u64, u128)> = rt
                    .block_on(s.pending(10_000))
                    .unwrap()
                    .iter()
                    .map(|e| (e.seq.0, e.event.event_id().as_u128()))
                    .collect();
                prop_assert_eq!(&got, &pending);
                let recovered: Vec<u64> = rt.block_on(s.recover()).unwrap().pending.iter().map(|p| p.entry.seq.0).collect();
                prop_assert_eq!(recovered, pending.iter().map(|p| p.0).collect::<Vec<_>>());
                let mut got_dead: Vec<(u64, String)> =
                    rt.block_on(s.dead_letters()).unwrap().into_iter().map(|d| (d.seq.0, d.event_id)).collect();
                got_dead.sort_unstable();
                let mut want_dead: Vec<(u64, String)> =
                    dead.iter().map(|&(seq, id)| (seq, EventId::from_u128(id).to_string())).collect();
                want_dead.sort_unstable();
                prop_assert_eq!(got_dead, want_dead);
                let (_, _, n_pending, n_dead) = rt.block_on(s.counts()).unwrap();
                prop_assert_eq!((n_pending, n_dead), (pending.len() as u64, dead.len() as u64));
            }
        }
    }
}
