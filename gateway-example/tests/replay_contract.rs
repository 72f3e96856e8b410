//! The replay contract, rule by rule and tie by tie: small hand-written inputs through the real binary,
//! against histories computed by hand. Each history is also checked with the design's invariants.

mod common;

use common::{check_history, replay};

/// A chat record at `2020-01-01T{hms}Z`.
fn rec(hms: &str, chat: &str, user: &str, text: &str) -> String {
    serde_json::json!({"ts": format!("2020-01-01T{hms}Z"), "chat_id": chat, "user_id": user, "text": text}).to_string()
}

fn lines(records: &[String]) -> String {
    records.join("\n") + "\n"
}

/// Runs the replay, checks it succeeded and its invariants, and returns its session lines.
fn sessions(records: &[String], args: &[&str]) -> Vec<String> {
    let run = replay(&lines(records), args);
    assert!(run.output.status.success(), "replay failed: {}", run.stderr());
    let idle = args.iter().position(|a| *a == "--idle-timeout").map_or(1800, |i| humantime_secs(args[i + 1]));
    let scope_user = args.windows(2).any(|w| w == ["--session-scope", "user"]);
    check_history(&run.events, run.summary["records"].as_u64().unwrap(), idle, scope_user);
    run.sessions()
}

fn humantime_secs(s: &str) -> i64 {
    let (n, unit) = s.split_at(s.len() - 1);
    n.parse::<i64>().unwrap()
        * match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => panic!("{s}"),
        }
}

/// The session lines of one chat, in order (events of different keys may interleave at equal times).
fn of_chat(sessions: &[String], chat: &str) -> Vec<String> {
    sessions.iter().filter(|s| s.split(' ').nth(3) == Some(chat)).cloned().collect()
}

#[test]
fn a_message_exactly_at_the_idle_deadline_finds_its_session_closed() {
    let got = sessions(&[rec("00:00:00", "c", "u", "hi"), rec("00:30:00", "c", "v", "again")], &[]);
    assert_eq!(
        got,
        [
            "start s1 00:00:00 c u message -",
            "end s1 00:30:00 c u idle_expiry 1 00:00:00",
            "start s2 00:30:00 c v message -",
            "end s2 00:30:00 c v shutdown 1 00:30:00",
        ]
    );
}

#[test]
fn a_message_one_second_before_the_deadline_keeps_the_session() {
    let got = sessions(&[rec("00:00:00", "c", "u", "hi"), rec("00:29:59", "c", "v", "again")], &[]);
    assert_eq!(got, ["start s1 00:00:00 c u message -", "end s1 00:29:59 c u shutdown 2 00:00:00"]);
}

#[test]
fn end_of_input_closes_with_shutdown_at_the_clock_and_fires_no_later_timer() {
    let got = sessions(&[rec("00:00:00", "c", "u", "hi")], &["--daily-reset", "00:10"]);
    assert_eq!(got, ["start s1 00:00:00 c u message -", "end s1 00:00:00 c u shutdown 1 00:00:00"]);
}

#[test]
fn sweep_mode_auto_resets_a_stale_session_and_a_sweep_at_the_record_time_closes_first() {
    let got = sessions(
        &[rec("00:10:00", "c", "u", "one"), rec("00:50:00", "c", "v", "two"), rec("02:00:00", "c", "w", "three")],
        &["--sweep-interval", "1h"],
    );
    assert_eq!(
        got,
        [
            "start s1 00:10:00 c u message -",
            // deadline 00:40, next sweep 01:00: the 00:50 record finds it stale (routing step 1).
            "end s1 00:50:00 c u auto_reset 1 00:10:00",
            "start s2 00:50:00 c v auto_reset s1",
            // deadline 01:20; the first sweep at or after it is 02:00, the record's own time: due
            // closes happen before routing, so it is an idle expiry, not an auto-reset.
            "end s2 02:00:00 c v idle_expiry 1 00:50:00",
            "start s3 02:00:00 c w message -",
            "end s3 02:00:00 c w shutdown 1 02:00:00",
        ]
    );
}

#[test]
fn sweep_mode_closes_at_the_first_sweep_instant_after_the_deadline() {
    let got =
        sessions(&[rec("00:10:00", "c", "u", "one"), rec("03:00:00", "d", "x", "other")], &["--sweep-interval", "1h"]);
    assert_eq!(of_chat(&got, "c"), ["start s1 00:10:00 c u message -", "end s1 01:00:00 c u idle_expiry 1 00:10:00"]);
}

#[test]
fn daily_reset_closes_idle_due_sessions_as_idle_expiry_and_others_as_scheduled_reset() {
    let got = sessions(
        &[
            rec("00:30:00", "a", "u", "deadline exactly at the reset"),
            rec("00:45:00", "b", "v", "deadline after"),
            rec("01:10:00", "b", "w", "later"),
        ],
        &["--daily-reset", "01:00"],
    );
    assert_eq!(of_chat(&got, "a"), ["start s1 00:30:00 a u message -", "end s1 01:00:00 a u idle_expiry 1 00:30:00"]);
    assert_eq!(
        of_chat(&got, "b"),
        [
            "start s2 00:45:00 b v message -",
            "end s2 01:00:00 b v scheduled_reset 1 00:45:00",
            "start s3 01:10:00 b w message -",
            "end s3 01:10:00 b w shutdown 1 01:10:00",
        ]
    );
}

#[test]
fn new_with_a_bot_suffix_rotates_and_counts_toward_the_new_session() {
    let got = sessions(&[rec("00:00:00", "c", "u", "hi"), rec("00:05:00", "c", "v", "  /new@MyBot please")], &[]);
    assert_eq!(
        got,
        [
            "start s1 00:00:00 c u message -",
            "end s1 00:05:00 c u user_new 1 00:00:00",
            "start s2 00:05:00 c v command s1",
            "end s2 00:05:00 c v shutdown 1 00:05:00",
        ]
    );
}

#[test]
fn reset_closes_with_user_reset() {
    let got = sessions(&[rec("00:00:00", "c", "u", "hi"), rec("00:01:00", "c", "u", "/reset")], &[]);
    assert_eq!(got[1], "end s1 00:01:00 c u user_reset 1 00:00:00");
    assert_eq!(got[2], "start s2 00:01:00 c u command s1");
}

#[test]
fn newest_and_uppercase_new_are_plain_messages() {
    let got = sessions(
        &[
            rec("00:00:00", "c", "u", "/newest"),
            rec("00:01:00", "c", "u", "/NEW"),
            rec("00:02:00", "c", "u", "/new\tnow"),
        ],
        &[],
    );
    assert_eq!(
        got,
        [
            "start s1 00:00:00 c u message -",
            "end s1 00:02:00 c u user_new 2 00:00:00",
            "start s2 00:02:00 c u command s1",
            "end s2 00:02:00 c u shutdown 1 00:02:00",
        ]
    );
}

#[test]
fn a_command_on_a_key_with_no_session_emits_no_end() {
    let got = sessions(&[rec("00:00:00", "c", "u", "/new")], &[]);
    assert_eq!(got, ["start s1 00:00:00 c u message -", "end s1 00:00:00 c u shutdown 1 00:00:00"]);
}

#[test]
fn a_reset_command_on_a_stale_session_in_sweep_mode_is_an_auto_reset() {
    let got =
        sessions(&[rec("00:10:00", "c", "u", "hi"), rec("00:50:00", "c", "u", "/new")], &["--sweep-interval", "1h"]);
    assert_eq!(
        got,
        [
            "start s1 00:10:00 c u message -",
            "end s1 00:50:00 c u auto_reset 1 00:10:00",
            "start s2 00:50:00 c u auto_reset s1",
            "end s2 00:50:00 c u shutdown 1 00:50:00",
        ]
    );
}

#[test]
fn an_older_record_is_processed_at_the_clock_time() {
    // Processed at the clock's 00:20, the late record keeps the deadline at 00:50, so 00:45 stays in
    // s1. Processed at its own 00:10 it would have pulled the deadline to 00:40 and closed s1.
    let got = sessions(
        &[
            rec("00:00:00", "c", "u", "a"),
            rec("00:20:00", "c", "u", "b"),
            rec("00:10:00", "c", "u", "late"),
            rec("00:45:00", "c", "u", "c"),
        ],
        &[],
    );
    assert_eq!(got, ["start s1 00:00:00 c u message -", "end s1 00:45:00 c u shutdown 4 00:00:00"]);
    let run = replay(&lines(&[rec("00:20:00", "c", "u", "b"), rec("00:10:00", "c", "u", "late")]), &[]);
    let received: Vec<&str> =
        run.events.iter().filter(|e| e["event"] == "message_received").map(|e| e["at"].as_str().unwrap()).collect();
    assert_eq!(received, ["2020-01-01T00:20:00Z", "2020-01-01T00:20:00Z"]);
}

#[test]
fn bad_lines_are_reported_skipped_and_do_not_move_the_clock() {
    let input = [
        rec("00:00:00", "c", "u", "hi"),
        "{not json".to_owned(),
        r#"{"ts":"2020-01-01T05:00:00Z","user_id":"u","text":"no chat"}"#.to_owned(),
        r#"{"ts":"2020-01-01T05:00:00Z","chat_id":7,"user_id":"u","text":"chat id of the wrong type"}"#.to_owned(),
        r#"{"ts":"2020-01-01T05:00:00","chat_id":"c","user_id":"u","text":"no offset"}"#.to_owned(),
        String::new(),
        r#"{"update_id":5,"callback_query":{"id":"x"}}"#.to_owned(),
        rec("00:20:00", "c", "u", "still the same session"),
    ];
    let run = replay(&lines(&input), &[]);
    assert!(run.output.status.success());
    assert_eq!(run.sessions(), ["start s1 00:00:00 c u message -", "end s1 00:20:00 c u shutdown 2 00:00:00"]);
    let stderr = run.stderr();
    for (line, cause) in
        [(2, "invalid JSON"), (3, "missing field `chat_id`"), (4, "missing field `chat_id`"), (5, "unparsable ts")]
    {
        assert!(
            stderr.contains(&format!(":{line}: skipped: {cause}")),
            "line {line} ({cause}) not reported in:\n{stderr}"
        );
    }
    assert_eq!(run.summary["skipped"], serde_json::json!({"bad_ts": 1, "invalid_json": 1, "missing_field": 2}));
    assert_eq!((run.summary["blank"].as_u64(), run.summary["ignored_updates"].as_u64()), (Some(1), Some(1)));
    assert_eq!(run.summary["lines"].as_u64(), Some(8));
}

#[test]
fn strict_mode_stops_at_the_first_bad_line() {
    let run = replay(&lines(&[rec("00:00:00", "c", "u", "hi"), "[]".to_owned()]), &["--strict"]);
    assert!(!run.output.status.success());
    assert!(run.stderr().contains(":2: invalid JSON"), "{}", run.stderr());
}

#[test]
fn scope_user_keys_by_user_and_scope_chat_records_the_opener() {
    let input = [rec("00:00:00", "c", "u", "hi"), rec("00:01:00", "c", "v", "hello")];
    let chat = sessions(&input, &[]);
    assert_eq!(chat, ["start s1 00:00:00 c u message -", "end s1 00:01:00 c u shutdown 2 00:00:00"]);
    let user = sessions(&input, &["--session-scope", "user"]);
    assert_eq!(user.len(), 4);
    assert!(user.contains(&"start s2 00:01:00 c v message -".to_owned()), "{user:?}");
    assert!(user.contains(&"end s1 00:01:00 c u shutdown 1 00:00:00".to_owned()), "{user:?}");
}

#[test]
fn telegram_updates_are_routed_by_chat_with_decimal_ids() {
    let input = [
        r#"{"update_id":1,"message":{"message_id":1,"date":1577836800,"chat":{"id":-1001},"from":{"id":42},"text":"hi"}}"#,
        r#"{"update_id":2,"channel_post":{"message_id":2,"date":1577836860,"chat":{"id":-1001},"caption":"/new"}}"#,
    ]
    .map(str::to_owned);
    let got = sessions(&input, &[]);
    assert_eq!(
        got,
        [
            "start s1 00:00:00 -1001 42 message -",
            "end s1 00:01:00 -1001 42 user_new 1 00:00:00",
            "start s2 00:01:00 -1001 -1001 command s1",
            "end s2 00:01:00 -1001 -1001 shutdown 1 00:01:00",
        ]
    );
    let run = replay(&lines(&input), &[]);
    assert_eq!(run.events.iter().find(|e| e["event"] == "session_start").unwrap()["platform"], "telegram");
}

#[test]
fn fractional_seconds_count_for_timing_and_are_truncated_on_output() {
    let input = [
        r#"{"ts":"2020-01-01T00:00:00.900Z","chat_id":"c","user_id":"u","text":"a"}"#.to_owned(),
        r#"{"ts":"2020-01-01T00:30:00.500Z","chat_id":"c","user_id":"u","text":"b"}"#.to_owned(),
    ];
    // The deadline is 00:30:00.900: the second message (00:30:00.500) is still in time.
    let got = sessions(&input, &[]);
    assert_eq!(got, ["start s1 00:00:00 c u message -", "end s1 00:30:00 c u shutdown 2 00:00:00"]);
}

#[test]
fn session_lines_have_exactly_the_contract_fields() {
    let run = replay(&lines(&[rec("00:00:00", "c", "u", "hi")]), &[]);
    let start = run.events.iter().find(|e| e["event"] == "session_start").unwrap();
    let end = run.events.iter().find(|e| e["event"] == "session_end").unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    let mut want_start =
        ["event", "event_id", "at", "session_id", "platform", "chat_id", "user_id", "cause", "previous_session_id"]
            .map(String::from)
            .to_vec();
    let mut want_end = [
        "event",
        "event_id",
        "at",
        "session_id",
        "platform",
        "chat_id",
        "user_id",
        "reason",
        "message_count",
        "started_at",
    ]
    .map(String::from)
    .to_vec();
    want_start.sort();
    want_end.sort();
    assert_eq!(keys(start), want_start);
    assert_eq!(keys(end), want_end);
    assert_eq!(start["platform"], "replay");
    assert_ne!(start["event_id"], end["event_id"]);
}

#[test]
fn the_same_input_gives_the_same_events_file() {
    let input =
        lines(&[rec("00:00:00", "c", "u", "hi"), rec("01:00:00", "c", "u", "/new"), rec("01:00:01", "d", "v", "x")]);
    let a = replay(&input, &[]);
    let b = replay(&input, &[]);
    assert_eq!(a.events, b.events);
}

#[test]
fn a_command_denied_by_a_hook_is_not_routed_and_does_not_rotate() {
    let input =
        [rec("00:00:00", "c", "u", "hi"), rec("00:01:00", "c", "u", "/reset"), rec("00:02:00", "c", "u", "/new")];
    let run = replay(&lines(&input), &["--deny-command", "reset"]);
    assert!(run.output.status.success(), "{}", run.stderr());
    assert_eq!(
        run.sessions(),
        [
            "start s1 00:00:00 c u message -",
            "end s1 00:02:00 c u user_new 1 00:00:00",
            "start s2 00:02:00 c u command s1",
            "end s2 00:02:00 c u shutdown 1 00:02:00",
        ]
    );
    assert_eq!(run.summary["commands_denied"], 1);
    assert_eq!(run.summary["records"], 2);
}
