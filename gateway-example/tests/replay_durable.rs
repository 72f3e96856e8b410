//! `replay --store sqlite:PATH`: the same events as the in-memory replay (command lines may come
//! earlier: command hooks decide inline while earlier batches commit), every session recorded closed
//! and every event delivered, and a used database refused.

mod common;

use std::process::Command;

fn replay(input: &std::path::Path, events: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(common::bin())
        .arg("replay")
        .arg(input)
        .arg("--events-out")
        .arg(events)
        .arg("--no-progress")
        .args(extra)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_durable_replay_writes_the_same_events_and_records_every_session() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::data("gitter_gitterHQ.jsonl");
    let (mem, sql) = (dir.path().join("mem.jsonl"), dir.path().join("sql.jsonl"));
    let db = dir.path().join("replay.sqlite3");
    let store = format!("sqlite:{}", db.display());
    assert!(replay(&input, &mem, &[]).0);
    let (ok, stderr) = replay(&input, &sql, &["--store", &store, "--batch", "64"]);
    assert!(ok, "{stderr}");
    let (mem, sql) = (std::fs::read_to_string(mem).unwrap(), std::fs::read_to_string(&sql).unwrap());
    assert!(mem.lines().count() > 1000);
    let is_command = |l: &&str| l.contains(r#""event":"command""#);
    let others = |s: &str| s.lines().filter(|l| !is_command(l)).map(str::to_owned).collect::<Vec<_>>();
    assert!(others(&mem) == others(&sql), "the durable replay's events differ from the in-memory replay's");
    let commands = |s: &str| s.lines().filter(is_command).map(str::to_owned).collect::<Vec<_>>();
    assert!(!commands(&mem).is_empty(), "the corpus has commands");
    assert_eq!(commands(&mem), commands(&sql), "the same command lines, in the same order");

    let conn = rusqlite::Connection::open(&db).unwrap();
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    let ends = mem.lines().filter(|l| l.contains(r#""event":"session_end""#)).count() as i64;
    assert_eq!(count("SELECT count(*) FROM sessions WHERE state = 'closed'"), ends);
    assert_eq!(count("SELECT count(*) FROM sessions WHERE state = 'open'"), 0);
    assert_eq!(count("SELECT count(*) FROM outbox"), 0, "every recorded event was delivered");
    drop(conn);

    let (ok, stderr) = replay(&input, &dir.path().join("again.jsonl"), &["--store", &store]);
    assert!(!ok && stderr.contains("needs a new database"), "{stderr}");
}
