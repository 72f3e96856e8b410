//! The fast path of [`parse_line`](super::parse_line): a hand-written scanner for the shape nearly
//! every replay line has, a flat chat record:
//!
//! ```text
//! {"ts":"2016-11-20T07:02:10Z","chat_id":"…","user_id":"…","text":"…","platform"?:"…", other: scalar|[scalar, …]}
//! ```
//!
//! It answers only when it is sure, and its answer is then exactly serde's: the same record, with
//! the same strings borrowed or decoded. Anything else (a Telegram Update, a nested value, a key
//! spelled with an escape, a required field missing or of another type, a duplicate field, invalid
//! JSON, a `ts` the quick timestamp reader does not take and jiff rejects) gets `None`, and the line
//! goes to the serde path, which finds the record or words the error. The tests compare the two paths
//! on generated lines and on every line of the corpora.
//!
//! Why: serde's derived visitor, the lenient field wrapper and jiff's general RFC 3339 parser cost
//! ~3,300 instructions per record of the tiled corpora, a third of a whole replay; with this scanner
//! a line costs ~1,190, UTF-8 validation included (~1,400 when it was written; callgrind,
//! docs/benchmarks-history.md, section 3, session 5).

use std::borrow::Cow;

use jiff::Timestamp;

use super::Record;
use crate::jsonl::first_escape_long;

/// The record of a flat chat-record line, or `None` when the serde path must decide. `text` is the
/// whole line, already known to be UTF-8.
pub(super) fn chat_record(text: &str) -> Option<Record<'_>> {
    let mut s = Scanner { text, bytes: text.as_bytes(), at: 0 };
    let mut ts = None;
    let [mut chat_id, mut user_id, mut body, mut platform] = [None, None, None, None];
    s.skip_ws();
    s.eat(b'{')?;
    s.skip_ws();
    if s.peek() == Some(b'}') {
        return None; // no fields: serde names the first missing one
    }
    loop {
        s.skip_ws();
        let key = s.key()?;
        s.skip_ws();
        s.eat(b':')?;
        s.skip_ws();
        match key {
            Key::Ts if ts.is_none() => ts = Some(s.timestamp()?),
            Key::Ts => return None, // a duplicate
            Key::ChatId => s.field(&mut chat_id)?,
            Key::UserId => s.field(&mut user_id)?,
            Key::Text => s.field(&mut body)?,
            Key::Platform => s.field(&mut platform)?,
            // The Update's fields: the serde path handles Updates (and their lenient `null`s).
            Key::Other("update_id" | "message" | "edited_message" | "channel_post" | "edited_channel_post") => {
                return None;
            }
            Key::Other(_) => s.skip_value()?,
        }
        s.skip_ws();
        match s.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    s.skip_ws();
    if s.at != s.bytes.len() {
        return None; // trailing characters
    }
    Some(Record {
        ts: ts?,
        platform: platform.unwrap_or(Cow::Borrowed("replay")),
        chat_id: chat_id?,
        user_id: user_id?,
        text: body?,
    })
}

/// A key of a record line: one of the record's own, or another (its text, unescaped).
enum Key<'a> {
    Ts,
    ChatId,
    UserId,
    Text,
    Platform,
    Other(&'a str),
}

/// What ended a run of string bytes: the closing quote, or the `\` of an escape.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    Quote,
    Escape,
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// JSON's white space (RFC 8259 §2): space, tab, line feed, carriage return.
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// The value of `ts`. The common form, `"YYYY-MM-DDTHH:MM:SSZ"`, is read in place (its bytes need
    /// no escape); anything else is read as a string and then parsed, by jiff if need be. `None` if
    /// it is not a string or not a timestamp: the serde path words the error.
    fn timestamp(&mut self) -> Option<Timestamp> {
        if let Some(quoted) = self.bytes.get(self.at..self.at + 22)
            && quoted[0] == b'"'
            && quoted[21] == b'"'
            && let Some(ts) = quick_timestamp(&quoted[1..21])
        {
            self.at += 22;
            return Some(ts);
        }
        if self.peek() != Some(b'"') {
            return None;
        }
        let ts = self.string()?;
        quick_timestamp(ts.as_bytes()).or_else(|| ts.parse().ok())
    }

    /// The value of a field the record uses: a string, and the field's first occurrence (another
    /// type counts as missing and a duplicate is an error: both the serde path's to word).
    fn field(&mut self, slot: &mut Option<Cow<'a, str>>) -> Option<()> {
        if slot.is_some() || self.peek() != Some(b'"') {
            return None;
        }
        *slot = Some(self.string()?);
        Some(())
    }

    /// A key without escapes (a key with one is left to serde, which compares it decoded).
    ///
    /// The record's own keys are recognized by their first letter and then their bytes, closing quote
    /// included, each compared at its constant length: cheaper than searching for the end of the
    /// string first, or than comparing against each known key in turn. Any other key goes through
    /// [`string`](Self::string).
    fn key(&mut self) -> Option<Key<'a>> {
        if self.peek()? == b'"' {
            let rest = &self.bytes[self.at + 1..];
            let known = match rest.first() {
                Some(b'c') if rest.starts_with(b"chat_id\"") => Some((Key::ChatId, 7)),
                Some(b'u') if rest.starts_with(b"user_id\"") => Some((Key::UserId, 7)),
                Some(b't') if rest.starts_with(b"text\"") => Some((Key::Text, 4)),
                Some(b't') if rest.starts_with(b"ts\"") => Some((Key::Ts, 2)),
                Some(b'p') if rest.starts_with(b"platform\"") => Some((Key::Platform, 8)),
                _ => None,
            };
            if let Some((key, len)) = known {
                self.at += len + 2;
                return Some(key);
            }
        }
        match self.string()? {
            Cow::Borrowed(key) => Some(Key::Other(key)),
            Cow::Owned(_) => None,
        }
    }

    /// A string at `"`, borrowed from the line when it has no escape, decoded otherwise; `None` for
    /// a raw control character, a bad escape or a lone surrogate (serde's errors).
    #[inline(always)] // three calls a record: −33 instructions a record against a call
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.eat(b'"')?;
        let start = self.at;
        match self.run()? {
            (end, Stop::Quote) => Some(Cow::Borrowed(&self.text[start..end])),
            (end, Stop::Escape) => self.decode(start, end).map(Cow::Owned),
        }
    }

    /// Steps over string bytes that need no escape, from `at` to the first `"` or `\`, and past it;
    /// `None` at a raw control character or the end of the line. Returns where the run ended. (Both
    /// stops are ASCII, so the run's ends are character boundaries.)
    #[inline(always)] // into `string`, where the common case is one run to the closing quote
    fn run(&mut self) -> Option<(usize, Stop)> {
        let end = self.at + first_escape_long(&self.bytes[self.at..])?;
        self.at = end + 1;
        match self.bytes[end] {
            b'"' => Some((end, Stop::Quote)),
            b'\\' => Some((end, Stop::Escape)),
            _ => None,
        }
    }

    /// Decodes a string whose first escape's `\` is at `escape`, from `start` (after the quote).
    #[cold]
    fn decode(&mut self, start: usize, escape: usize) -> Option<String> {
        let mut out = String::with_capacity(escape - start + 16);
        out.push_str(&self.text[start..escape]);
        loop {
            // `self.at` is just past the `\` at `escape`.
            let c = match self.next()? {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => self.unicode_escape()?,
                _ => return None,
            };
            out.push(c);
            let from = self.at;
            let (end, stop) = self.run()?;
            out.push_str(&self.text[from..end]);
            if stop == Stop::Quote {
                return Some(out);
            }
        }
    }

    /// The character of `\uXXXX` (after the `u`), joining a surrogate pair.
    fn unicode_escape(&mut self) -> Option<char> {
        let high = self.hex4()?;
        match high {
            0xD800..=0xDBFF => {
                self.eat(b'\\')?;
                self.eat(b'u')?;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return None;
                }
                char::from_u32(0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(low) - 0xDC00))
            }
            0xDC00..=0xDFFF => None,
            _ => char::from_u32(u32::from(high)),
        }
    }

    fn hex4(&mut self) -> Option<u16> {
        let digits = self.bytes.get(self.at..self.at + 4)?;
        let mut n = 0u16;
        for &d in digits {
            n = n << 4 | u16::from(char::from(d).to_digit(16)? as u8);
        }
        self.at += 4;
        Some(n)
    }

    /// Skips the value of a field the record does not use: a scalar, or an array of scalars (the
    /// IRC corpus's `reply_to`). Objects and nested arrays get `None`: serde skips those.
    fn skip_value(&mut self) -> Option<()> {
        if self.peek()? != b'[' {
            return self.skip_scalar();
        }
        self.at += 1;
        self.skip_ws();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            self.skip_ws();
            self.skip_scalar()?;
            self.skip_ws();
            match self.next()? {
                b',' => {}
                b']' => return Some(()),
                _ => return None,
            }
        }
    }

    /// Skips a string, a number, `true`, `false` or `null`.
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.skip_number(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let rest = self.bytes.get(self.at..)?;
        rest.starts_with(word).then(|| self.at += word.len())
    }

    /// RFC 8259's number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`. What follows is
    /// checked by the caller (a digit after a leading `0` is then an error, as it should be).
    fn skip_number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.skip_digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.digits()?;
        }
        Some(())
    }

    /// One or more digits.
    fn digits(&mut self) -> Option<()> {
        let from = self.at;
        self.skip_digits();
        (self.at > from).then_some(())
    }

    fn skip_digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }
}

/// Reads `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` (the form recorded traffic nearly always has) without
/// jiff's general parser; `None` for anything else, which then goes to jiff. Where it answers, the
/// answer is jiff's (a test compares them).
pub(super) fn quick_timestamp(b: &[u8]) -> Option<Timestamp> {
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        b[range].iter().try_fold(0i64, |n, &d| d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0')))
    };
    let date: [u8; 10] = b[..10].try_into().expect("10 bytes");
    let days = match LAST_DATE.get() {
        (last, days) if last == date => days,
        _ => {
            let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
            if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
                return None;
            }
            let days = days_from_civil(year, month, day);
            LAST_DATE.set((date, days));
            days
        }
    };
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None; // a leap second (60) is jiff's to read
    }
    let mut nanos = 0i32;
    let rest = match b[19] {
        b'.' => {
            let digits = b[20..].iter().take_while(|d| d.is_ascii_digit()).count();
            if !(1..=9).contains(&digits) {
                return None;
            }
            for &d in &b[20..20 + digits] {
                nanos = nanos * 10 + i32::from(d - b'0');
            }
            nanos *= 10i32.pow(9 - digits as u32);
            &b[20 + digits..]
        }
        _ => &b[19..],
    };
    if rest != b"Z" {
        return None;
    }
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    Timestamp::new(seconds, nanos).ok()
}

thread_local! {
    /// The date part of the last timestamp [`quick_timestamp`] read, with its day number: records come
    /// in time order, so most share their date with the one before. (All zero bytes match no date.)
    static LAST_DATE: std::cell::Cell<([u8; 10], i64)> = const { std::cell::Cell::new(([0; 10], 0)) };
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`, the
/// inverse of `jsonl::civil_from_days`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::input::{Line, parse_line, parse_line_serde};

    /// The scanner's answer, where it gives one, is serde's; and `parse_line` as a whole is
    /// `parse_line_serde`.
    fn check(line: &str) -> Result<bool, TestCaseError> {
        let serde = parse_line_serde(line);
        let fast = chat_record(line);
        if let Some(record) = &fast {
            prop_assert_eq!(&serde, &Ok(Line::Record(record.clone())), "{}", line);
        }
        prop_assert_eq!(parse_line(line.as_bytes()), serde, "{}", line);
        Ok(fast.is_some())
    }

    fn string_value() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            4 => "[a-z0-9 /:#~.-]{0,12}",
            1 => Just(r#"\""#.to_owned()),
            1 => Just(r"\\".to_owned()),
            1 => Just(r"\n\t\r\b\f\/".to_owned()),
            1 => Just(r"\u00e9\u0000\u20AC".to_owned()),
            1 => Just(r"\ud83d\ude00".to_owned()),
            1 => Just(r"\ud83d".to_owned()),   // a lone high surrogate: serde's error
            1 => Just(r"\ude00x".to_owned()),  // a lone low surrogate
            1 => Just(r"\x".to_owned()),       // not an escape
            1 => Just(r"\u12".to_owned()),     // a short one
            1 => Just("é€😀".to_owned()),
            1 => Just("\u{1}".to_owned()),      // a raw control character
        ];
        proptest::collection::vec(piece, 0..4).prop_map(|p| format!("\"{}\"", p.concat()))
    }

    fn ts_value() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "\"(19[0-9]{2}|20[0-9]{2}|0000|9999)-(0[0-9]|1[0-3])-([0-2][0-9]|3[0-2])T([01][0-9]|2[0-4]):[0-6][0-9]:[0-6][0-9](\\.[0-9]{1,10})?(Z|z|\\+01:00)\"",
            1 => Just("\"yesterday\"".to_owned()),
            1 => Just("17".to_owned()),
        ]
    }

    fn other_value() -> impl Strategy<Value = String> {
        prop_oneof![
            string_value(),
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            Just("nul".to_owned()),
            "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,2})?",
            Just("01".to_owned()),
            Just("-".to_owned()),
            Just("1.".to_owned()),
            Just("[1, \"a\"]".to_owned()),
            Just("[ ]".to_owned()),
            Just("[993,995 ]".to_owned()),
            Just("[1,]".to_owned()),
            Just("[[1]]".to_owned()),
            Just("{\"id\": 1}".to_owned()),
        ]
    }

    fn field() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("src"),
            Just("line"),
            Just("platform"),
            Just("update_id"),
            Just("message"),
            Just(r"t\u0073"),
            Just("ts"),
            Just("text"),
            // Near misses of the record's keys, which the first-letter match must pass to `string`.
            Just("t"),
            Just("tsx"),
            Just("texts"),
            Just("chat_idx"),
            Just("user"),
            Just("p"),
        ];
        (key, other_value()).prop_map(|(k, v)| format!("\"{k}\":{v}"))
    }

    /// Lines that are mostly records (the four fields with string values, in any order, plus extra
    /// fields), spelled with JSON's every freedom, and sometimes broken.
    fn line() -> impl Strategy<Value = String> {
        let required = (ts_value(), string_value(), string_value(), string_value()).prop_map(|(ts, c, u, t)| {
            vec![
                format!("\"ts\":{ts}"),
                format!("\"chat_id\":{c}"),
                format!("\"user_id\":{u}"),
                format!("\"text\":{t}"),
            ]
        });
        let drop_one = prop_oneof![4 => Just(None), 1 => (0usize..4).prop_map(Some)];
        let extra = proptest::collection::vec(field(), 0..3);
        let ws = prop_oneof![Just(""), Just(" "), Just("\t"), Just("\r\n "), Just("\u{3000}")];
        let tail = prop_oneof![8 => Just(""), 1 => Just(" x"), 1 => Just("}"), 1 => Just(",")];
        (required, drop_one, extra, ws.clone(), ws, tail)
            .prop_flat_map(|(mut fields, drop, extra, lead, gap, tail)| {
                if let Some(i) = drop {
                    fields.remove(i);
                }
                fields.extend(extra);
                (Just(fields).prop_shuffle(), Just(lead), Just(gap), Just(tail))
            })
            .prop_map(|(fields, lead, gap, tail)| {
                format!("{lead}{{{gap}{}{gap}}}{gap}{tail}", fields.join(&format!("{gap},{gap}")))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn the_scanner_agrees_with_serde(line in line()) {
            check(&line)?;
        }

        /// Where the quick reader answers, jiff agrees; and it answers for every plain UTC time.
        #[test]
        fn quick_timestamps_are_jiffs(
            ts in "(19[0-9]{2}|20[0-9]{2}|0000|9999)-(0[0-9]|1[0-3])-([0-2][0-9]|3[0-2])T([01][0-9]|2[0-4]):[0-6][0-9]:[0-6][0-9](\\.[0-9]{0,10})?(Z|z|\\+00:00)?",
        ) {
            let jiff = ts.parse::<Timestamp>().ok();
            match quick_timestamp(ts.as_bytes()) {
                Some(t) => prop_assert_eq!(Some(t), jiff, "{}", ts),
                None => prop_assert!(
                    jiff.is_none() || !ts.ends_with('Z') || ts[17..19] == *"60" || ts.len() > 30,
                    "{} is plain UTC and jiff reads it, but the quick reader does not", ts
                ),
            }
        }
    }

    #[test]
    fn the_corpora_take_the_fast_path_and_agree_with_serde() {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        for (name, at_least) in
            [("gitter_gitterHQ.jsonl", 1.0), ("ubuntu_irc_sample.jsonl", 1.0), ("telegram_payloads_public.jsonl", 0.0)]
        {
            let text = std::fs::read_to_string(data.join(name)).unwrap();
            let (mut lines, mut fast) = (0, 0);
            for line in text.lines() {
                lines += 1;
                fast += usize::from(check(line).unwrap_or_else(|e| panic!("{name}: {e}")));
            }
            let share = fast as f64 / lines as f64;
            assert!(share >= at_least, "{name}: the scanner read {fast} of {lines} lines");
        }
    }

    #[test]
    fn escapes_are_decoded_like_serde() {
        let line = r#"{"ts":"2020-01-01T00:00:00Z","chat_id":"c\"1","user_id":"\u00e9\ud83d\ude00","text":"a\nb\\"}"#;
        let r = chat_record(line).expect("the scanner reads escapes");
        assert_eq!((&*r.chat_id, &*r.user_id, &*r.text), ("c\"1", "é😀", "a\nb\\"));
        assert!(matches!(r.platform, Cow::Borrowed("replay")));
    }

    #[test]
    fn what_the_scanner_leaves_to_serde() {
        let rec =
            |extra: &str| format!(r#"{{"ts":"2020-01-01T00:00:00Z","chat_id":"c","user_id":"u","text":"t"{extra}}}"#);
        assert!(chat_record(&rec("")).is_some());
        for extra in [
            r#","update_id":null"#,            // an Update's field
            r#","ts":"2020-01-01T00:00:00Z""#, // a duplicate
            r#","platform":null"#,             // a wrong type counts as missing
            r#","x":{"a":1}"#,                 // an object
            r#","x":[[1]]"#,                   // a nested array
            r#","t\u0073":"1""#,               // a key with an escape
        ] {
            assert!(chat_record(&rec(extra)).is_none(), "{extra}");
        }
        assert!(chat_record(r#"{"chat_id":"c","user_id":"u","text":"t"}"#).is_none());
        assert!(chat_record(r#"{"ts":"2020-01-01T01:00:00+01:00","chat_id":"c","user_id":"u","text":"t"}"#).is_some());
    }
}
