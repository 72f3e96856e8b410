//! Replay input: one JSON object per line, either a chat record or a Telegram Bot API `Update`.
//!
//! The rules are the replay contract's (docs/gateway.md):
//! - chat record: `{"ts": RFC 3339 with offset, "chat_id": string, "user_id": string, "text": string,
//!   "platform"?: string}`; unknown fields are ignored; platform defaults to `replay`;
//! - Telegram `Update` (an integer `update_id`): the message is the first of `message`,
//!   `edited_message`, `channel_post`, `edited_channel_post`; ts = its `date` (Unix seconds), chat id =
//!   `chat.id`, user id = `from.id` or else the chat id, text = `text` or `caption` or empty; platform
//!   `telegram`; an Update with none of those fields is [`Line::Ignored`];
//! - a field of the wrong JSON type, or `null`, counts as missing.
//!
//! Parsing borrows from the line where it can: a record without escapes in its strings allocates
//! nothing. A flat chat record is read by a hand-written scanner (`input/scan.rs`); every other line, and
//! every line the scanner is not sure of, by serde.

use std::borrow::Cow;
use std::fmt;

use jiff::Timestamp;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

mod scan;

/// One routed record: what the gateway routes to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// When it was sent (UTC, with its fractional seconds).
    pub ts: Timestamp,
    /// The platform (`replay` when the record names none, `telegram` for Updates).
    pub platform: Cow<'a, str>,
    /// The chat id.
    pub chat_id: Cow<'a, str>,
    /// The sender's id.
    pub user_id: Cow<'a, str>,
    /// The text (empty for media without caption).
    pub text: Cow<'a, str>,
}

/// What one input line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    /// Empty or only white space: no effect at all.
    Blank,
    /// A Telegram Update without a message field: counted, no effect.
    Ignored,
    /// A record to route.
    Record(Record<'a>),
}

/// Why a line was skipped. The [`kind`](Self::kind) is what the summary counts by.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Not UTF-8.
    #[error("not valid UTF-8 (byte {0})")]
    Utf8(usize),
    /// Not one JSON object.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// A required field is absent, `null` or of the wrong JSON type.
    #[error("missing field `{0}` (absent, null or of the wrong type)")]
    Missing(&'static str),
    /// `ts` is not an RFC 3339 timestamp with an offset.
    #[error("unparsable ts {0:?}: expected RFC 3339 with an offset, e.g. 2020-01-02T03:04:05Z")]
    BadTs(String),
    /// A Telegram `date` outside the representable range.
    #[error("Telegram date {0} is out of range")]
    BadDate(i64),
}

impl LineError {
    /// The cause's short name for summaries: `invalid_utf8`, `invalid_json`, `missing_field`,
    /// `bad_ts`.
    pub fn kind(&self) -> &'static str {
        match self {
            LineError::Utf8(_) => "invalid_utf8",
            LineError::Json(_) => "invalid_json",
            LineError::Missing(_) => "missing_field",
            LineError::BadTs(_) | LineError::BadDate(_) => "bad_ts",
        }
    }
}

/// Whether `text` goes to the command hooks first: after leading white space it starts with `/`
/// (the lifecycle's rule, `lifecycle::strip_command_slash`; which commands reset a session is
/// `lifecycle::parse_reset_command`).
pub fn is_command(text: &str) -> bool {
    hooks_core::lifecycle::strip_command_slash(text).is_some()
}

/// Parses one line (without its line terminator).
///
/// # Errors
///
/// [`LineError`] when the line is neither blank nor a valid record or Update.
pub fn parse_line(bytes: &[u8]) -> Result<Line<'_>, LineError> {
    let text = utf8(bytes)?;
    if let Some(record) = scan::chat_record(text) {
        return Ok(Line::Record(record));
    }
    parse_line_serde(text)
}

/// `parse_line` without the fast path: what decides every line the scanner leaves, and what the tests
/// compare the scanner with.
pub(crate) fn parse_line_serde(text: &str) -> Result<Line<'_>, LineError> {
    if text.chars().all(char::is_whitespace) {
        return Ok(Line::Blank);
    }
    let raw = parse_object(text)?;
    if raw.update_id.0.is_some() {
        return update_record(raw);
    }
    let ts = raw.ts.0.ok_or(LineError::Missing("ts"))?;
    let chat_id = raw.chat_id.0.ok_or(LineError::Missing("chat_id"))?;
    let user_id = raw.user_id.0.ok_or(LineError::Missing("user_id"))?;
    let text = raw.text.0.ok_or(LineError::Missing("text"))?;
    let ts: Timestamp = ts.parse().map_err(|_| LineError::BadTs(ts.clone().into_owned()))?;
    Ok(Line::Record(Record { ts, platform: raw.platform.0.unwrap_or(Cow::Borrowed("replay")), chat_id, user_id, text }))
}

/// Parses the body of `POST /v1/messages`: `{"chat_id", "user_id", "text", "platform"?}` (a `ts` is
/// ignored: live messages take their arrival time, which the caller puts in `ts`).
///
/// # Errors
///
/// [`LineError`] naming the problem (invalid JSON, a missing field).
pub fn parse_message_body(bytes: &[u8], now: Timestamp) -> Result<Record<'_>, LineError> {
    let raw = parse_object(utf8(bytes)?)?;
    Ok(Record {
        ts: now,
        chat_id: raw.chat_id.0.ok_or(LineError::Missing("chat_id"))?,
        user_id: raw.user_id.0.ok_or(LineError::Missing("user_id"))?,
        text: raw.text.0.ok_or(LineError::Missing("text"))?,
        platform: raw.platform.0.unwrap_or(Cow::Borrowed("web")),
    })
}

/// Parses the body of `POST /telegram/webhook`, a Bot API `Update`; `Ok(None)` for an Update without
/// a message. The record's `ts` is `now` (arrival time), not the message's `date`.
///
/// # Errors
///
/// [`LineError`] naming the problem (invalid JSON, no `update_id`, a message without `chat.id`).
pub fn parse_telegram_update(bytes: &[u8], now: Timestamp) -> Result<Option<Record<'_>>, LineError> {
    let raw = parse_object(utf8(bytes)?)?;
    if raw.update_id.0.is_none() {
        return Err(LineError::Missing("update_id"));
    }
    Ok(match update_record(raw)? {
        Line::Record(r) => Some(Record { ts: now, ..r }),
        Line::Blank | Line::Ignored => None,
    })
}

/// `bytes` as text. `simdutf8` checks a line several times faster than `std` (SIMD over the whole
/// line rather than two words at a time); its error says nothing about where, so a bad line is
/// checked again by `std` for the position.
fn utf8(bytes: &[u8]) -> Result<&str, LineError> {
    simdutf8::basic::from_utf8(bytes)
        .or_else(|_| std::str::from_utf8(bytes))
        .map_err(|e| LineError::Utf8(e.valid_up_to()))
}

/// A JSON object's fields. Derived structs would also accept a JSON array (fields by position), so
/// the first character is checked: only objects are records.
fn parse_object(text: &str) -> Result<RawLine<'_>, LineError> {
    if !text.trim_start().starts_with('{') {
        return Err(LineError::Json("expected a JSON object".into()));
    }
    serde_json::from_str(text).map_err(|e| LineError::Json(e.to_string()))
}

fn update_record(raw: RawLine<'_>) -> Result<Line<'_>, LineError> {
    let Some(message) =
        [raw.message, raw.edited_message, raw.channel_post, raw.edited_channel_post].into_iter().find_map(|m| m.0)
    else {
        return Ok(Line::Ignored);
    };
    let date = message.date.0.ok_or(LineError::Missing("message.date"))?;
    let chat_id = message.chat.0.and_then(|c| c.id.0).ok_or(LineError::Missing("message.chat.id"))?;
    let user_id = message.from.0.and_then(|f| f.id.0).unwrap_or(chat_id);
    let ts = Timestamp::from_second(date).map_err(|_| LineError::BadDate(date))?;
    let text = message.text.0.or(message.caption.0).unwrap_or(Cow::Borrowed(""));
    Ok(Line::Record(Record {
        ts,
        platform: Cow::Borrowed("telegram"),
        chat_id: Cow::Owned(chat_id.to_string()),
        user_id: Cow::Owned(user_id.to_string()),
        text,
    }))
}

#[derive(Deserialize)]
struct RawLine<'a> {
    #[serde(default)]
    update_id: Lenient<i64>,
    #[serde(default, borrow)]
    ts: Lenient<Cow<'a, str>>,
    #[serde(default, borrow)]
    chat_id: Lenient<Cow<'a, str>>,
    #[serde(default, borrow)]
    user_id: Lenient<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Lenient<Cow<'a, str>>,
    #[serde(default, borrow)]
    platform: Lenient<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Lenient<Box<RawMessage<'a>>>,
    #[serde(default, borrow)]
    edited_message: Lenient<Box<RawMessage<'a>>>,
    #[serde(default, borrow)]
    channel_post: Lenient<Box<RawMessage<'a>>>,
    #[serde(default, borrow)]
    edited_channel_post: Lenient<Box<RawMessage<'a>>>,
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(default)]
    date: Lenient<i64>,
    #[serde(default)]
    chat: Lenient<RawId>,
    #[serde(default)]
    from: Lenient<RawId>,
    #[serde(default, borrow)]
    text: Lenient<Cow<'a, str>>,
    #[serde(default, borrow)]
    caption: Lenient<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawId {
    #[serde(default)]
    id: Lenient<i64>,
}

/// A field that is `None` when it is absent, `null`, or of a JSON type other than `T`'s, instead of
/// failing the whole line: the contract says a wrong type counts as missing.
struct Lenient<T>(Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Self(None)
    }
}

/// Which JSON shapes a lenient field takes.
trait LenientKind<'de>: Sized {
    fn from_str_borrowed(_: &'de str) -> Option<Self> {
        None
    }
    fn from_string(_: String) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        IgnoredAny.visit_map(map).map(|_| None)
    }
}

impl<'de: 'a, 'a> LenientKind<'de> for Cow<'a, str> {
    fn from_str_borrowed(s: &'de str) -> Option<Self> {
        Some(Cow::Borrowed(s))
    }
    fn from_string(s: String) -> Option<Self> {
        Some(Cow::Owned(s))
    }
}

impl LenientKind<'_> for i64 {
    fn from_i64(n: i64) -> Option<Self> {
        Some(n)
    }
}

// Boxed: a chat record has none of the four message fields, and an inline `RawMessage` would make
// every line's `RawLine` several times larger to move around.
impl<'de: 'a, 'a> LenientKind<'de> for Box<RawMessage<'a>> {
    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        RawMessage::deserialize(de::value::MapAccessDeserializer::new(map)).map(|m| Some(Box::new(m)))
    }
}

impl<'de> LenientKind<'de> for RawId {
    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        RawId::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
    }
}

impl<'de, T: LenientKind<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);

        impl<'de, T: LenientKind<'de>> Visitor<'de> for V<T> {
            type Value = Lenient<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Lenient(T::from_str_borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Lenient(T::from_string(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Lenient(T::from_string(s)))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(Lenient(T::from_i64(n)))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok(Lenient(i64::try_from(n).ok().and_then(T::from_i64)))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                IgnoredAny.visit_seq(seq).map(|_| Lenient(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::from_map(map).map(Lenient)
            }
        }

        deserializer.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(line: &str) -> Record<'_> {
        match parse_line(line.as_bytes()) {
            Ok(Line::Record(r)) => r,
            other => panic!("expected a record from {line}, got {other:?}"),
        }
    }

    fn error(line: &str) -> LineError {
        parse_line(line.as_bytes()).expect_err(line)
    }

    /// The first-byte shortcut agrees with the general rule for every ASCII first character, and for
    /// texts that start with non-ASCII white space or not.
    #[test]
    fn is_command_is_trim_then_slash() {
        let mut texts: Vec<String> =
            (0u8..0x80).flat_map(|b| [format!("{}/new", b as char), (b as char).to_string()]).collect();
        texts.extend(["\u{3000}/new", "\u{a0}x", "é/", "\u{85}/", "\u{200b}/new", ""].map(String::from));
        for text in &texts {
            assert_eq!(is_command(text), text.trim_start().starts_with('/'), "{text:?}");
        }
    }

    #[test]
    fn chat_record_with_default_platform_and_unknown_fields() {
        let r = record(r#"{"ts":"2020-01-02T03:04:05.250+01:00","chat_id":"c","user_id":"u","text":"hi","src":7}"#);
        assert_eq!(r.ts, "2020-01-02T02:04:05.25Z".parse::<Timestamp>().unwrap());
        assert_eq!((&*r.platform, &*r.chat_id, &*r.user_id, &*r.text), ("replay", "c", "u", "hi"));
    }

    #[test]
    fn null_or_wrong_typed_platform_is_replay() {
        for p in ["null", "3", "[\"x\"]", "{\"a\":1}"] {
            let line =
                format!(r#"{{"ts":"2020-01-01T00:00:00Z","chat_id":"c","user_id":"u","text":"","platform":{p}}}"#);
            assert_eq!(record(&line).platform, "replay", "{line}");
        }
        let r = record(r#"{"ts":"2020-01-01T00:00:00Z","chat_id":"c","user_id":"u","text":"","platform":"slack"}"#);
        assert_eq!(r.platform, "slack");
    }

    #[test]
    fn wrong_type_or_null_required_field_is_missing() {
        assert_eq!(
            error(r#"{"ts":"2020-01-01T00:00:00Z","chat_id":5,"user_id":"u","text":""}"#),
            LineError::Missing("chat_id")
        );
        assert_eq!(
            error(r#"{"ts":"2020-01-01T00:00:00Z","chat_id":"c","user_id":null,"text":""}"#),
            LineError::Missing("user_id")
        );
        assert_eq!(error(r#"{"ts":"2020-01-01T00:00:00Z","chat_id":"c","user_id":"u"}"#), LineError::Missing("text"));
        assert_eq!(error(r#"{"ts":17,"chat_id":"c","user_id":"u","text":""}"#), LineError::Missing("ts"));
    }

    #[test]
    fn ts_without_offset_is_unparsable() {
        let e = error(r#"{"ts":"2020-01-01T00:00:00","chat_id":"c","user_id":"u","text":""}"#);
        assert_eq!(e.kind(), "bad_ts");
        assert_eq!(error(r#"{"ts":"yesterday","chat_id":"c","user_id":"u","text":""}"#).kind(), "bad_ts");
    }

    #[test]
    fn invalid_json_and_non_objects_are_reported() {
        assert_eq!(error("{not json").kind(), "invalid_json");
        assert_eq!(error("[1,2]").kind(), "invalid_json");
        assert_eq!(error("\"a string\"").kind(), "invalid_json");
        assert_eq!(parse_line(b"\xff\xfe").unwrap_err(), LineError::Utf8(0));
    }

    #[test]
    fn blank_lines_are_blank() {
        assert_eq!(parse_line(b"").unwrap(), Line::Blank);
        assert_eq!(parse_line(" \t\r".as_bytes()).unwrap(), Line::Blank);
        assert_eq!(parse_line("\u{3000}".as_bytes()).unwrap(), Line::Blank);
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let r = record(r#"{"ts":"2020-01-01T00:00:00Z","chat_id":"c\"1","user_id":"\u00e9","text":"a\nb"}"#);
        assert_eq!((&*r.chat_id, &*r.user_id, &*r.text), ("c\"1", "é", "a\nb"));
    }

    #[test]
    fn telegram_update_takes_the_first_message_field() {
        let line = r#"{"update_id":1,"channel_post":{"date":5,"chat":{"id":-100},"text":"post"},
            "edited_message":{"date":1,"chat":{"id":42},"from":{"id":7},"caption":"cap"}}"#
            .replace('\n', "");
        let r = record(&line);
        assert_eq!(r.ts, Timestamp::from_second(1).unwrap());
        assert_eq!((&*r.platform, &*r.chat_id, &*r.user_id, &*r.text), ("telegram", "42", "7", "cap"));
    }

    #[test]
    fn telegram_update_without_from_uses_chat_id_and_empty_text() {
        let r = record(r#"{"update_id":9,"channel_post":{"date":1600000000,"chat":{"id":-1001234567890}}}"#);
        assert_eq!((&*r.chat_id, &*r.user_id, &*r.text), ("-1001234567890", "-1001234567890", ""));
    }

    #[test]
    fn telegram_update_with_null_message_falls_through() {
        let r = record(r#"{"update_id":9,"message":null,"edited_message":{"date":3,"chat":{"id":1},"text":"x"}}"#);
        assert_eq!(r.text, "x");
    }

    #[test]
    fn telegram_update_without_message_is_ignored() {
        assert_eq!(parse_line(br#"{"update_id":9,"callback_query":{"id":"1"}}"#).unwrap(), Line::Ignored);
    }

    #[test]
    fn telegram_message_without_date_or_chat_is_missing_field() {
        assert_eq!(error(r#"{"update_id":1,"message":{"chat":{"id":1}}}"#), LineError::Missing("message.date"));
        assert_eq!(
            error(r#"{"update_id":1,"message":{"date":1,"chat":{"id":"1"}}}"#),
            LineError::Missing("message.chat.id")
        );
    }

    #[test]
    fn null_update_id_means_a_chat_record() {
        let r = record(r#"{"update_id":null,"ts":"2020-01-01T00:00:00Z","chat_id":"c","user_id":"u","text":"t"}"#);
        assert_eq!(r.platform, "replay");
    }
}
