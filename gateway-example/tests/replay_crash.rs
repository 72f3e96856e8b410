//! A durable replay (`replay --store sqlite:PATH`) killed with SIGKILL at random points leaves a
//! database that `serve` recovers with nothing lost or doubled. A durable replay writes each
//! group-commit job's events as one packed outbox row, so this is also the crash test of packed rows:
//!
//! - right after the kill, the store opens and every pending event decodes;
//! - `serve` on that database delivers exactly the pending events, each once, with its event id, and
//!   ends every session the replay left open (late, as idle expiries) with exactly one `session_end`;
//! - it sends no `session_end` for a session whose end the replay had already delivered and recorded;
//! - across the replay's events file and serve's, every recorded session has exactly one start and one
//!   end, each under one event id (so the replay writes out its buffered lines before recording a
//!   delivery);
//! - afterwards every session in the database is closed and the outbox is empty.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hooks_core::event::{AnyEvent, SessionId};
use hooks_core::store::{SqliteOptions, SqliteStore, Store};
use serde_json::Value;

/// The replay input: both corpora, then the Gitter room again with fresh users (about 37,000 records),
/// long enough to be killed mid-way.
fn input(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("input.jsonl");
    let mut out = std::fs::File::create(&path).unwrap();
    for (name, suffix) in
        [("gitter_gitterHQ.jsonl", ""), ("ubuntu_irc_sample.jsonl", ""), ("gitter_gitterHQ.jsonl", "~2")]
    {
        for line in std::fs::read_to_string(common::data(name)).unwrap().lines() {
            let mut v: Value = serde_json::from_str(line).unwrap();
            let user = format!("{}{suffix}", v["user_id"].as_str().unwrap());
            v["user_id"] = Value::String(user);
            writeln!(out, "{v}").unwrap();
        }
    }
    path
}

/// What the database holds right after the kill.
struct Snapshot {
    /// Pending outbox events: event id -> session id of the session events among them.
    pending: HashMap<String, Option<String>>,
    /// Sessions open at the kill.
    open: HashSet<String>,
    /// Every session recorded.
    sessions: HashSet<String>,
}

fn snapshot(db: &Path) -> Snapshot {
    let store = SqliteStore::open(db, SqliteOptions::default()).expect("the killed replay's database opens");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let recovery = rt.block_on(store.recover()).expect("every pending event decodes");
    drop(store);
    let pending = recovery
        .pending
        .iter()
        .map(|p| {
            let e = &p.entry.event;
            let session = match e {
                AnyEvent::SessionStart(s) => Some(s.session_id.to_string()),
                AnyEvent::SessionEnd(s) => Some(s.session_id.to_string()),
                _ => None,
            };
            (e.event_id().to_string(), session)
        })
        .collect();
    let open = recovery.sessions.iter().map(|s| s.session_id.to_string()).collect();
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT id FROM sessions").unwrap();
    let sessions = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|id| SessionId::from_u128(u128::from_be_bytes(id.unwrap().try_into().unwrap())).to_string())
        .collect();
    Snapshot { pending, open, sessions }
}

/// Starts `serve` on `data`, waits until it listens, and stops it with SIGTERM.
fn serve_and_stop(data: &Path) {
    let mut child = Command::new(common::bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--memory-dir")
        .arg(data.join("memory"))
        .env_remove("TELEGRAM_WEBHOOK_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = common::listening_addr(&mut stderr);
    // Recovery is done once it listens; an answer shows it serves.
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = stderr.read_to_string(&mut sink);
    });
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown failed: {status}");
}

fn read_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn a_killed_durable_replay_leaves_a_database_that_serve_recovers_exactly_once() {
    let work = tempfile::tempdir().unwrap();
    let input = input(work.path());
    let mut killed = 0;
    // Kill points spread over the run, from early (first commits) to late, counted from when the
    // database appears: the process's start-up can stall for hundreds of milliseconds (its first
    // `fsync` waits behind the write-back of a build that just finished), which with delays counted
    // from the spawn left too few kills mid-way on a loaded machine.
    for (cycle, delay_ms) in [40u64, 90, 150, 230, 320, 450].into_iter().enumerate() {
        let data = work.path().join(format!("cycle{cycle}"));
        std::fs::create_dir_all(&data).unwrap();
        let db = data.join("sessions.sqlite3");
        let mut replay = Command::new(common::bin())
            .arg("replay")
            .arg(&input)
            .arg("--events-out")
            .arg(data.join("replay-events.jsonl"))
            .arg("--no-progress")
            .arg("--store")
            .arg(format!("sqlite:{}", db.display()))
            .args(["--batch", "32"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let spawned = std::time::Instant::now();
        while !db.exists() && replay.try_wait().unwrap().is_none() && spawned.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        if replay.try_wait().unwrap().is_some() {
            continue; // Finished before the kill: nothing to recover.
        }
        replay.kill().unwrap(); // SIGKILL
        replay.wait().unwrap();
        if !db.exists() {
            continue; // Killed before it created the database.
        }
        killed += 1;

        let before = snapshot(&db);
        serve_and_stop(&data);
        let events = read_events(&data.join("events.jsonl"));

        // Each event id once, and every pending event among them.
        let mut seen = HashSet::new();
        for e in &events {
            if let Some(id) = e["event_id"].as_str() {
                assert!(seen.insert(id.to_owned()), "cycle {cycle}: event {id} delivered twice by serve");
            }
        }
        for id in before.pending.keys() {
            assert!(seen.contains(id), "cycle {cycle}: pending event {id} was not delivered");
        }
        // One session_end for each session left open, and for each session whose end was pending; none
        // for a session whose end the replay had delivered and recorded.
        let pending_ends: HashSet<&String> = before
            .pending
            .iter()
            .filter_map(|(id, session)| session.as_ref().filter(|_| events_name(&events, id) == Some("session_end")))
            .collect();
        let mut ends: HashMap<String, usize> = HashMap::new();
        for e in events.iter().filter(|e| e["event"] == "session_end") {
            *ends.entry(e["session_id"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        for (session, n) in &ends {
            assert_eq!(*n, 1, "cycle {cycle}: session {session} ended {n} times");
            assert!(
                before.open.contains(session) || pending_ends.contains(session),
                "cycle {cycle}: session {session} ended again although its end was delivered and recorded"
            );
        }
        for session in &before.open {
            assert!(ends.contains_key(session), "cycle {cycle}: open session {session} never ended");
        }
        assert!(before.sessions.len() >= before.open.len());

        // Across both processes' events files (the replay writes out its buffered lines before it
        // records a delivery): every session recorded has exactly one start and one end, each under one
        // event id (a re-delivery repeats it), and no other session has either.
        let mut all = read_events(&data.join("replay-events.jsonl"));
        all.extend(events.iter().cloned());
        for kind in ["session_start", "session_end"] {
            let mut ids: HashMap<String, HashSet<String>> = HashMap::new();
            for e in all.iter().filter(|e| e["event"] == kind) {
                let session = e["session_id"].as_str().unwrap().to_owned();
                ids.entry(session).or_default().insert(e["event_id"].as_str().unwrap().to_owned());
            }
            for session in &before.sessions {
                let n = ids.get(session).map_or(0, HashSet::len);
                assert_eq!(n, 1, "cycle {cycle}: session {session} has {n} {kind} event ids");
            }
            assert_eq!(ids.len(), before.sessions.len(), "cycle {cycle}: a {kind} for a session not recorded");
        }

        let conn = rusqlite::Connection::open(&db).unwrap();
        let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count("SELECT count(*) FROM sessions WHERE state = 'open'"), 0, "cycle {cycle}");
        assert_eq!(count("SELECT count(*) FROM outbox"), 0, "cycle {cycle}: the outbox was not drained");
        eprintln!(
            "cycle {cycle}: killed {delay_ms} ms after the database appeared: {} sessions, {} open, {} pending events",
            before.sessions.len(),
            before.open.len(),
            before.pending.len()
        );
    }
    assert!(killed >= 3, "only {killed} replays were killed mid-way: the input is too short for this machine");
}

/// The `event` name of the delivered event with id `id`.
fn events_name<'a>(events: &'a [Value], id: &str) -> Option<&'a str> {
    events.iter().find(|e| e["event_id"] == id).and_then(|e| e["event"].as_str())
}
