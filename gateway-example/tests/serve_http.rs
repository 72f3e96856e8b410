//! `serve` over real HTTP on 127.0.0.1: the binary is started as a child process, driven with plain
//! HTTP/1.1 requests, and stopped with SIGTERM.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

struct Gateway {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
    stderr: BufReader<std::process::ChildStderr>,
}

impl Gateway {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(common::bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .env_remove("TELEGRAM_WEBHOOK_SECRET")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let addr = common::listening_addr(&mut stderr);
        Self { child, addr, dir, stderr }
    }

    /// Sends one request; returns (status, headers, body).
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        // The server may answer (413) before reading a large body; a failed write is then expected.
        let _ = stream.write_all(body);
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP head");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let mut body = raw[split + 4..].to_vec();
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        (status, head, body)
    }

    fn post_json(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut h = vec![("Content-Type", "application/json")];
        h.extend_from_slice(headers);
        let (status, _, body) = self.request("POST", path, &h, body.to_string().as_bytes());
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// SIGTERM, wait for exit, return (success, stderr rest, events).
    fn stop(&mut self) -> (bool, String, Vec<Value>) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = self.child.wait().unwrap();
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        let events = std::fs::read_to_string(self.dir.path().join("events.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (status.success(), rest, events)
    }
}

impl Drop for Gateway {
    /// A failed assertion must not leave the server running (it would hold the test's pipes open).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&body[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[eol + 2..eol + 2 + size]);
        body = &body[eol + 2 + size + 2..];
    }
}

#[test]
fn telegram_update_round_trip_with_secret() {
    let mut gw = Gateway::start(&["--telegram-secret", "s3cret"]);
    let update = json!({"update_id": 10, "message": {"message_id": 1, "date": 1, "chat": {"id": -42}, "from": {"id": 7}, "text": "hi there"}});
    let (status, answer) = gw.post_json("/telegram/webhook", &update, &[("X-Telegram-Bot-Api-Secret-Token", "s3cret")]);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["method"], "sendMessage");
    assert_eq!(answer["chat_id"], -42);
    // The welcome is queued by the memory plugin's session_start hook, which runs after routing without
    // holding up the reply: it comes with this reply or, if its delivery is not done yet, a later one.
    let text = answer["text"].as_str().unwrap();
    assert!(text.ends_with("echo: hi there"), "{text}");

    let (status, answer) = gw.post_json("/telegram/webhook", &update, &[("X-Telegram-Bot-Api-Secret-Token", "wrong")]);
    assert_eq!(status, 401);
    assert!(answer["error"].as_str().unwrap().contains("x-telegram-bot-api-secret-token"), "{answer}");
    let (status, _) = gw.post_json("/telegram/webhook", &update, &[]);
    assert_eq!(status, 401);

    let (status, answer) = gw.post_json(
        "/telegram/webhook",
        &json!({"update_id": 11, "callback_query": {"id": "q"}}),
        &[("X-Telegram-Bot-Api-Secret-Token", "s3cret")],
    );
    assert_eq!((status, answer), (200, json!({})));

    let (ok, _, events) = gw.stop();
    assert!(ok);
    let start = events.iter().find(|e| e["event"] == "session_start").unwrap();
    assert_eq!(
        (start["platform"].as_str(), start["chat_id"].as_str(), start["user_id"].as_str()),
        (Some("telegram"), Some("-42"), Some("7"))
    );
}

#[test]
fn new_over_http_rotates_the_session_and_bad_requests_get_json_errors() {
    let mut gw = Gateway::start(&["--body-limit", "4096"]);
    let msg = |text: &str| json!({"chat_id": "room", "user_id": "ann", "text": text});
    let (status, first) = gw.post_json("/v1/messages", &msg("hello"), &[]);
    assert_eq!(status, 200);
    assert_eq!(first["reply"], "echo: hello");
    let s1 = first["session_id"].as_str().unwrap().to_owned();
    let (_, again) = gw.post_json("/v1/messages", &msg("still here"), &[]);
    assert_eq!(again["session_id"], s1.as_str());
    let (_, new) = gw.post_json("/v1/messages", &msg("/new"), &[]);
    let s2 = new["session_id"].as_str().unwrap().to_owned();
    assert_ne!(s1, s2);
    assert_eq!(new["reply"], format!("New session {s2} started."));

    let (status, _, body) = gw.request("POST", "/v1/messages", &[], b"{not json");
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().starts_with("invalid JSON"), "{err}");
    let (status, err) = gw.post_json("/v1/messages", &json!({"user_id": "ann", "text": "x"}), &[]);
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("missing field `chat_id` (absent, null or of the wrong type)"))
    );
    let big = json!({"chat_id": "room", "user_id": "ann", "text": "x".repeat(10_000)});
    let (status, err) = gw.post_json("/v1/messages", &big, &[]);
    assert_eq!((status, err["error"].as_str()), (413, Some("request body too large")));

    let (status, _, health) = gw.request("GET", "/healthz", &[], b"");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_slice::<Value>(&health).unwrap(), json!({"status": "ok", "open_sessions": 1}));
    let (status, head, metrics) = gw.request("GET", "/metrics", &[], b"");
    let metrics = String::from_utf8(metrics).unwrap();
    assert_eq!(status, 200);
    assert!(head.contains("text/plain"));
    assert!(metrics.contains("\ngateway_open_sessions 1\n"), "{metrics}");
    assert!(metrics.contains("gateway_sessions_closed_total{reason=\"user_new\"} 1\n"), "{metrics}");
    assert!(metrics.contains("gateway_messages_total 3\n"), "{metrics}");

    let (ok, _, events) = gw.stop();
    assert!(ok);
    let ends: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["event"] == "session_end")
        .map(|e| (e["session_id"].as_str().unwrap(), e["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(ends, [(s1.as_str(), "user_new"), (s2.as_str(), "shutdown")]);
}

#[test]
fn sigterm_ends_every_open_session_before_exit() {
    let mut gw = Gateway::start(&[]);
    let mut sessions = Vec::new();
    for chat in ["a", "b", "c"] {
        let (status, answer) = gw.post_json(
            "/v1/messages",
            &json!({"chat_id": chat, "user_id": "u", "text": "hi", "platform": "web"}),
            &[],
        );
        assert_eq!(status, 200);
        sessions.push(answer["session_id"].as_str().unwrap().to_owned());
    }
    let (ok, stderr, events) = gw.stop();
    assert!(ok, "{stderr}");
    assert!(stderr.contains("shut down: 3 sessions closed, every event delivered"), "{stderr}");
    for sid in &sessions {
        let ends: Vec<&Value> =
            events.iter().filter(|e| e["event"] == "session_end" && e["session_id"] == sid.as_str()).collect();
        assert_eq!(ends.len(), 1, "{sid}");
        assert_eq!(ends[0]["reason"], "shutdown");
    }
    assert_eq!(events.last().unwrap()["event"], "gateway_shutdown");
    assert_eq!(events.last().unwrap()["sessions_closed"], 3);
    // Per key: start, message, agent turn, end – in that order.
    let kinds: Vec<&str> =
        events.iter().filter(|e| e["chat_id"] == "a").map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["session_start", "message_received", "agent_turn_start", "agent_turn_end", "session_end"]);
}

#[test]
fn a_denied_command_is_answered_and_not_routed() {
    let mut gw = Gateway::start(&["--deny-command", "reset"]);
    let msg = |text: &str| json!({"chat_id": "room", "user_id": "ann", "text": text});
    let (_, first) = gw.post_json("/v1/messages", &msg("hello"), &[]);
    let s1 = first["session_id"].as_str().unwrap().to_owned();
    let (status, denied) = gw.post_json("/v1/messages", &msg("/reset@Bot now"), &[]);
    assert_eq!(status, 200);
    assert_eq!(denied["denied"], true);
    assert_eq!(denied["reply"], "The /reset command is disabled on this gateway.");
    assert_eq!(denied["session_id"], s1.as_str(), "the session is untouched");
    let (_, new) = gw.post_json("/v1/messages", &msg("/new"), &[]);
    assert_ne!(new["session_id"], s1.as_str(), "other commands still run");

    let (ok, _, events) = gw.stop();
    assert!(ok);
    let first_end = events.iter().find(|e| e["event"] == "session_end" && e["session_id"] == s1.as_str()).unwrap();
    assert_eq!((first_end["reason"].as_str(), first_end["message_count"].as_u64()), (Some("user_new"), Some(1)));
    assert_eq!(events.iter().filter(|e| e["event"] == "command").count(), 2, "both commands were seen by the hooks");
}
