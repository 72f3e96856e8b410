//! The runtime on a durable store: recovery after a process that died, and a failing store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use super::{ManualClock, Runtime, RuntimeError};
use crate::dispatch::Dispatcher;
use crate::event::{AnyEvent, CloseReason, EventId, MessageReceived, SessionKey};
use crate::lifecycle::{Policy, SessionIds};
use crate::registry::Registry;
use crate::store::{SqliteOptions, SqliteStore, Step, Store};

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn db(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("hooks-runtime-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (dir.join("sessions.sqlite3"), dir)
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn a_restart_closes_overdue_sessions_late_and_redelivers_the_outbox() {
    let (path, dir) = db("restart");
    let key = SessionKey::chat("web", "42");
    let t0 = t("2024-05-01T10:00:00Z");
    let dispatcher = Arc::new(Dispatcher::new(Registry::empty()));

    // A gateway that routes two messages and dies: dropping the tokio runtime cancels its tasks
    // without any shutdown (the leaked handle keeps the store open, as a killed process would).
    let first = tokio_rt();
    let session = first.block_on(async {
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        let rt = Runtime::start_with_ids(
            Policy::default(),
            SessionIds::Random,
            store,
            Arc::clone(&dispatcher),
            ManualClock::new(t0),
        );
        let a = rt.handle().message(key.clone(), "alice", "hello").await.unwrap();
        let b = rt.handle().message(key.clone(), "alice", "again").await.unwrap();
        assert_eq!(a.session_id, b.session_id);
        std::mem::forget(rt);
        a.session_id
    });
    drop(first);

    // An event recorded and never delivered.
    let pending_id = EventId::from_u128(99);
    tokio_rt().block_on(async {
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        let ev = MessageReceived::new(pending_id, session, key.clone(), "alice", t0, "hello");
        store.apply(vec![Step::Record(AnyEvent::MessageReceived(ev))]).await.unwrap();
    });

    // Two hours later the gateway starts again.
    let restart = t("2024-05-01T12:00:00Z");
    tokio_rt().block_on(async {
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        let rt = Runtime::start_with_ids(
            Policy::default(),
            SessionIds::Random,
            store,
            dispatcher,
            ManualClock::new(restart),
        );
        // Answered only once recovery is done.
        assert_eq!(rt.handle().open_session(key.clone()).await.unwrap(), None);
        let m = rt.handle().metrics();
        assert_eq!(m.sessions_restored, 1);
        assert_eq!(m.closed(CloseReason::IdleExpiry), 1);
        assert!(m.redelivered >= 1, "{m:?}");
        let report = rt.shutdown(Duration::from_secs(5)).await;
        assert_eq!(report.sessions_closed, 0);
        assert!(report.drained, "{report:?}");
    });

    let conn = rusqlite::Connection::open(&path).unwrap();
    let (reason, ended, detected, count): (String, i64, i64, i64) = conn
        .query_row(
            "SELECT reason, ended_at, detected_at, message_count FROM sessions WHERE id = ?1",
            [&session.as_u128().to_be_bytes()[..]],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(reason, "idle_expiry");
    assert_eq!(ended as i128, t("2024-05-01T10:30:00Z").as_nanosecond());
    assert_eq!(detected as i128, restart.as_nanosecond());
    assert_eq!(count, 2);
    let left: i64 = conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0)).unwrap();
    assert_eq!(left, 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_full_store_stops_the_runtime_and_keeps_what_was_committed() {
    let (path, dir) = db("full");
    let t0 = t("2024-05-01T10:00:00Z");
    let dispatcher = Arc::new(Dispatcher::new(Registry::empty()));
    let accepted = tokio_rt().block_on(async {
        let store = SqliteStore::open(&path, SqliteOptions::default().with_max_pages(16)).unwrap();
        let rt = Runtime::start(Policy::default(), store, dispatcher, ManualClock::new(t0));
        let mut accepted = 0u64;
        let error = loop {
            let key = SessionKey::chat("web", format!("chat-{accepted:08}"));
            match rt.handle().message(key, "alice", "x".repeat(300)).await {
                Ok(_) => accepted += 1,
                Err(e) => break e,
            }
            assert!(accepted < 100_000, "the page cap was never reached");
        };
        assert!(matches!(&error, RuntimeError::Store(m) if m.contains("full")), "{error}");
        assert!(rt.handle().failed().await.contains("full"));
        assert!(matches!(
            rt.handle().message(SessionKey::chat("web", "z"), "a", "b").await,
            Err(RuntimeError::Store(_))
        ));
        let report = rt.shutdown(Duration::from_secs(1)).await;
        assert_eq!(report.sessions_closed, 0);
        accepted
    });
    assert!(accepted > 0);
    tokio_rt().block_on(async {
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        assert_eq!(store.open_sessions().await.unwrap().len() as u64, accepted);
    });
    let _ = std::fs::remove_dir_all(dir);
}
