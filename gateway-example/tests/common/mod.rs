//! Shared by the gateway's end-to-end tests: running the binary, reading the events file, and the
//! history invariants of the design (checked on every history a test produces).

#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The gateway binary built for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gateway-example"))
}

/// Reads a starting `serve`'s stderr up to its "listening" line and returns the address it listens on
/// (`host:port`); panics if it exits first.
pub fn listening_addr(stderr: &mut impl std::io::BufRead) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "serve exited before listening");
        if let Some(rest) = line.trim().strip_prefix("gateway-example listening on http://") {
            return rest.to_owned();
        }
    }
}

/// The repository's `data/` directory.
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("data").join(name)
}

/// The result of one `replay` run.
pub struct Run {
    pub output: Output,
    pub events: Vec<Value>,
    pub summary: Value,
}

impl Run {
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// The session lines, compact: see [`compact`].
    pub fn sessions(&self) -> Vec<String> {
        self.events.iter().filter_map(compact).collect()
    }
}

/// Replays `input` (the text of a JSONL file) with extra `args`.
pub fn replay(input: &str, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let input_path = dir.path().join("input.jsonl");
    std::fs::write(&input_path, input).unwrap();
    replay_file(&input_path, args)
}

/// Replays the file at `input` with extra `args`.
pub fn replay_file(input: &Path, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let summary = dir.path().join("summary.json");
    let output = Command::new(bin())
        .arg("replay")
        .arg(input)
        .arg("--events-out")
        .arg(&events)
        .arg("--summary-json")
        .arg(&summary)
        .args(args)
        .output()
        .unwrap();
    let events = std::fs::read_to_string(&events)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("events line {l:?}: {e}")))
        .collect();
    let summary = std::fs::read_to_string(&summary).map(|s| serde_json::from_str(&s).unwrap()).unwrap_or(Value::Null);
    Run { output, events, summary }
}

fn short_id(v: &Value) -> String {
    match v.as_str() {
        // Replay numbers sessions 1, 2, 3, … in UUID form.
        Some(s) => format!("s{}", u128::from_str_radix(&s.replace('-', ""), 16).unwrap()),
        None => "-".to_owned(),
    }
}

fn hms(v: &Value) -> String {
    let s = v.as_str().unwrap();
    assert!(s.len() == 20 && s.ends_with('Z'), "second-precision UTC: {s}");
    s[11..19].to_owned()
}

/// A session line as `start s1 00:00:00 chat user cause prev` or
/// `end s1 00:30:00 chat user reason count started`; other lines give `None`.
pub fn compact(ev: &Value) -> Option<String> {
    let common = |e: &Value| {
        format!(
            "{} {} {} {}",
            short_id(&e["session_id"]),
            hms(&e["at"]),
            e["chat_id"].as_str().unwrap(),
            e["user_id"].as_str().unwrap()
        )
    };
    match ev["event"].as_str()? {
        "session_start" => Some(format!(
            "start {} {} {}",
            common(ev),
            ev["cause"].as_str().unwrap(),
            short_id(&ev["previous_session_id"])
        )),
        "session_end" => Some(format!(
            "end {} {} {} {}",
            common(ev),
            ev["reason"].as_str().unwrap(),
            ev["message_count"],
            hms(&ev["started_at"])
        )),
        _ => None,
    }
}

/// Checks the five history invariants of the design on a finished replay's events, given the number
/// of records routed, the idle timeout in seconds and whether the session scope is `user`. Panics with
/// the broken invariant.
pub fn check_history(events: &[Value], routed: u64, idle_timeout_secs: i64, scope_user: bool) {
    let ts = |v: &Value| v.as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    let key = |e: &Value| {
        let chat = format!("{}|{}", e["platform"].as_str().unwrap(), e["chat_id"].as_str().unwrap());
        if scope_user { format!("{chat}|{}", e["user_id"].as_str().unwrap()) } else { chat }
    };
    let mut started: HashMap<String, (String, jiff::Timestamp)> = HashMap::new();
    let mut ended: HashSet<String> = HashSet::new();
    let mut open: HashMap<String, String> = HashMap::new();
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut last_msg: HashMap<String, jiff::Timestamp> = HashMap::new();
    let mut total = 0u64;
    for e in events {
        match e["event"].as_str().unwrap() {
            "session_start" => {
                let id = e["session_id"].as_str().unwrap().to_owned();
                assert!(
                    started.insert(id.clone(), (key(e), ts(&e["at"]))).is_none(),
                    "invariant 1: {id} started twice"
                );
                let scope_key = key(e);
                // Invariant 2/3: the key's previous session ended before this start.
                let prev = open.insert(scope_key.clone(), id.clone());
                assert!(
                    prev.is_none() || ended.contains(prev.as_ref().unwrap()),
                    "invariant 3: two open sessions on {scope_key}"
                );
            }
            "session_end" => {
                let id = e["session_id"].as_str().unwrap().to_owned();
                assert!(started.contains_key(&id), "invariant 2: {id} ended before it started");
                assert!(ended.insert(id.clone()), "invariant 1: {id} ended twice");
                let n = e["message_count"].as_u64().unwrap();
                assert_eq!(counts.get(&id).copied().unwrap_or(0), n, "invariant 5: message_count of {id}");
                total += n;
                if e["reason"] == "idle_expiry" {
                    let last = last_msg[&id];
                    let at = ts(&e["at"]);
                    assert!(
                        at.as_second() - last.as_second() >= idle_timeout_secs - 1,
                        "invariant 4: {id} idle-closed early at {at}, last message {last}"
                    );
                }
            }
            "message_received" => {
                let id = e["session_id"].as_str().unwrap().to_owned();
                assert!(
                    started.contains_key(&id) && !ended.contains(&id),
                    "message for a session that is not open: {id}"
                );
                *counts.entry(id.clone()).or_default() += 1;
                last_msg.insert(id, ts(&e["at"]));
            }
            _ => {}
        }
    }
    assert_eq!(started.len(), ended.len(), "invariant 1: after shutdown every session has ended");
    assert_eq!(total, routed, "invariant 5: the message counts sum to the routed records");
}
