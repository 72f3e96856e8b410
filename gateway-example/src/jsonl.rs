//! Small, allocation-free writers for the events file: JSON strings and second-precision RFC 3339
//! timestamps. The audit hook writes one line per event at replay speed (over a million lines a
//! second), so it formats by hand instead of going through a `serde_json::Value`.

use jiff::Timestamp;

/// The index of the first byte that needs an escape: a control character, `"` or `\`. (In JSON
/// text, the first such byte inside a string is where a reader must stop: its end, an escape, or an
/// error.)
///
/// It tests eight bytes at a time in a `u64` ("SWAR"): a byte `b` is flagged when `b ^ '"'` or
/// `b ^ '\\'` is zero or `b < 0x20`, each by the borrow trick `(x - 0x01…01 * n) & !x & 0x80…80`. The
/// trick can also flag a byte above (after) a true hit, through the borrow, never one before it,
/// so the lowest flag is the answer. The last, partial word is read overlapping the one before it.
/// It serves [`first_escape_long`]'s last, partial block (up to 15 bytes): for those it costs about
/// half of what `memchr::memchr2` plus a check for control characters did (its set-up per call
/// outweighs its SIMD on short strings), and a third of a byte loop.
pub(crate) fn first_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    fn flags(word: u64) -> u64 {
        let zero = |x: u64| x.wrapping_sub(ONES) & !x;
        let below_space = word.wrapping_sub(ONES * 0x20) & !word;
        (zero(word ^ (ONES * u64::from(b'"'))) | zero(word ^ (ONES * u64::from(b'\\'))) | below_space) & HIGH
    }
    let lowest = |flags: u64| (flags.trailing_zeros() / 8) as usize;
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let n = bytes.len();
    if n < 4 {
        return bytes.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\');
    }
    if n < 8 {
        // Two overlapping four-byte halves, each topped up with spaces (which need no escape).
        const SPACES: u64 = 0x2020_2020 << 32;
        let half = |at: usize| u64::from(u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))) | SPACES;
        let f = flags(half(0));
        if f != 0 {
            return Some(lowest(f));
        }
        let f = flags(half(n - 4));
        return (f != 0).then(|| n - 4 + lowest(f));
    }
    // Whole words, then the last eight bytes, overlapping checked ones (which hold no hit and so
    // lend no borrow). Up to 16 bytes, the common ids and names, that is two words and no loop.
    let mut at = 0;
    while at + 8 <= n {
        let f = flags(word(at));
        if f != 0 {
            return Some(at + lowest(f));
        }
        at += 8;
    }
    if at == n {
        return None;
    }
    let f = flags(word(n - 8));
    (f != 0).then(|| n - 8 + lowest(f))
}

/// The index of the first control character, `"` or `\` in text of any length: tested sixteen bytes
/// at a time with vector compares ([`escapes16`]), the last fewer than sixteen by [`first_escape`].
/// The scanner looks for the end of each string of a replay line with it, over the rest of the line:
/// a block costs ~8 instructions where two SWAR words cost ~34, which on the tiled corpora (message
/// texts of ~60 bytes) saved 145 instructions a record. [`push_str`] uses it for the strings its
/// fixed-size path does not take.
pub(crate) fn first_escape_long(bytes: &[u8]) -> Option<usize> {
    let mut blocks = bytes.chunks_exact(16);
    for (i, block) in blocks.by_ref().enumerate() {
        let mask = escapes16(<[u8; 16]>::try_from(block).expect("16 bytes"));
        if mask != 0 {
            return Some(i * 16 + mask.trailing_zeros() as usize);
        }
    }
    let done = bytes.len() - blocks.remainder().len();
    first_escape(blocks.remainder()).map(|i| done + i)
}

/// Which of 16 bytes need an escape (a control character, `"` or `\`): bit `i` of the result is
/// byte `i`'s. Three vector compares and one `movemask`, with `wide::u8x16`: SSE2 on x86-64, which
/// always has it, NEON on aarch64, simd128 on wasm, scalar code elsewhere.
#[inline(always)]
fn escapes16(block: [u8; 16]) -> u32 {
    use wide::u8x16;
    let v = u8x16::from(block);
    // `min(v, 0x1f) == v` is `v <= 0x1f`, unsigned: SSE2 has no unsigned less-than.
    let hits = v.simd_eq(u8x16::splat(b'"')) | v.simd_eq(u8x16::splat(b'\\')) | v.min(u8x16::splat(0x1f)).simd_eq(v);
    hits.to_bitmask()
}

/// Appends `s` as a JSON string literal (quotes included), escaping as RFC 8259 requires.
pub fn push_str(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let n = bytes.len();
    let mut escape = if (4..=16).contains(&n) {
        // Most ids and names: quotes and text go in one fixed-size copy. The text is placed as two
        // overlapping pieces of constant size in an 18-byte array, and its escapes are looked for
        // there with one vector test (bits past the text masked off); if there are none, the array
        // is appended whole and what follows the closing quote is cut off again. (A `memcpy` call
        // of a short, variable length cost ~45 instructions, more than the rest of this. The vector
        // test instead of `first_escape`'s words: ~30 fewer a call, 66 fewer a record in a replay.)
        let mut quoted = [0u8; 18];
        quoted[0] = b'"';
        if n >= 8 {
            quoted[1..9].copy_from_slice(&bytes[..8]);
            quoted[n - 7..=n].copy_from_slice(&bytes[n - 8..]);
        } else {
            quoted[1..5].copy_from_slice(&bytes[..4]);
            quoted[n - 3..=n].copy_from_slice(&bytes[n - 4..]);
        }
        let text: [u8; 16] = quoted[1..17].try_into().expect("16 bytes");
        let hits = escapes16(text) & ((1u32 << n) - 1);
        if hits == 0 {
            quoted[n + 1] = b'"';
            buf.extend_from_slice(&quoted);
            buf.truncate(buf.len() - (16 - n));
            return;
        }
        Some(hits.trailing_zeros() as usize)
    } else {
        first_escape_long(bytes)
    };
    buf.reserve(bytes.len() + 2);
    buf.push(b'"');
    // Most texts need no escape at all: everything before the first byte that does is copied in
    // one go.
    let mut rest = bytes;
    while let Some(i) = escape {
        buf.extend_from_slice(&rest[..i]);
        match rest[i] {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            c => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                buf.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(c >> 4)], HEX[usize::from(c & 0xf)]]);
            }
        }
        rest = &rest[i + 1..];
        escape = first_escape_long(rest);
    }
    buf.extend_from_slice(rest);
    buf.push(b'"');
}

/// Appends `ts` as a quoted RFC 3339 UTC timestamp with second precision, fractional seconds
/// truncated: `"2020-01-02T03:04:05Z"`. Years outside 0..=9999 (which RFC 3339 cannot write) are
/// written with as many digits as they need.
pub fn push_ts(buf: &mut Vec<u8>, ts: Timestamp) {
    let secs = ts.as_second();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    buf.push(b'"');
    if (0..=9999).contains(&y) {
        let y = y as u32;
        push2(buf, y / 100);
        push2(buf, y % 100);
    } else {
        push_padded(buf, y, 4);
    }
    let (m, d, rem) = (m as u32, d as u32, rem as u32);
    buf.extend_from_slice(&[
        b'-',
        digit(m / 10),
        digit(m % 10),
        b'-',
        digit(d / 10),
        digit(d % 10),
        b'T',
        digit(rem / 36_000),
        digit(rem / 3600 % 10),
        b':',
        digit(rem % 3600 / 600),
        digit(rem % 3600 / 60 % 10),
        b':',
        digit(rem % 60 / 10),
        digit(rem % 10),
        b'Z',
        b'"',
    ]);
}

/// Writes timestamps as [`push_ts`] does, remembering the date of the last one: events come in
/// time order, so most share their day with the one before and only the time of day is formatted.
#[derive(Debug, Default)]
pub struct TsWriter {
    /// The day (since 1970-01-01) whose `"YYYY-MM-DDT` is in `date`.
    day: Option<i64>,
    date: [u8; 12],
}

impl TsWriter {
    /// Appends `ts` exactly as [`push_ts`] would.
    #[inline(always)] // with `push_u64` and the audit's `fields_session`: −87 instructions a record
    pub fn push(&mut self, buf: &mut Vec<u8>, ts: Timestamp) {
        let secs = ts.as_second();
        let day = secs.div_euclid(86_400);
        if self.day != Some(day) {
            let mut date = Vec::with_capacity(24);
            push_ts(&mut date, ts);
            if date.len() != 22 {
                return buf.extend_from_slice(&date); // a year outside 0..=9999: not cached
            }
            self.date.copy_from_slice(&date[..12]);
            self.day = Some(day);
        }
        let rem = secs.rem_euclid(86_400) as u32;
        let [h, m, s] = [rem / 3600, rem % 3600 / 60, rem % 60].map(|n| TWO_DIGITS[n as usize]);
        let mut out = [0u8; 22];
        out[..12].copy_from_slice(&self.date);
        out[12..].copy_from_slice(&[h[0], h[1], b':', m[0], m[1], b':', s[0], s[1], b'Z', b'"']);
        buf.extend_from_slice(&out);
    }
}

/// `"00"` to `"99"`.
const TWO_DIGITS: [[u8; 2]; 100] = {
    let mut table = [[0u8; 2]; 100];
    let mut n = 0;
    while n < 100 {
        table[n] = [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
        n += 1;
    }
    table
};

const fn digit(n: u32) -> u8 {
    b'0' + n as u8
}

fn push2(buf: &mut Vec<u8>, n: u32) {
    buf.extend_from_slice(&[digit(n / 10), digit(n % 10)]);
}

/// Appends an id's 36-byte hyphenated form (from `SessionId::hyphenated_bytes` or
/// `EventId::hyphenated_bytes`), quoted.
pub fn push_id(buf: &mut Vec<u8>, id: [u8; 36]) {
    // One append of 38 bytes rather than three.
    let mut quoted = [b'"'; 38];
    quoted[1..37].copy_from_slice(&id);
    buf.extend_from_slice(&quoted);
}

/// Appends an unsigned integer in decimal.
#[inline(always)] // see `TsWriter::push`
pub fn push_u64(buf: &mut Vec<u8>, n: u64) {
    // Below 10,000 (the audit's counts and lengths): digits from the two-digit table, appended at a
    // constant length per case. (The general loop ends in a variable-length copy, a `memcpy` call
    // that costs more than the digits: ~70 instructions for a 2-digit number, against ~15 here.)
    if n < 10_000 {
        let n = n as usize;
        let (hi, lo) = (TWO_DIGITS[n / 100], TWO_DIGITS[n % 100]);
        match n {
            0..10 => buf.push(lo[1]),
            10..100 => buf.extend_from_slice(&lo),
            100..1000 => buf.extend_from_slice(&[hi[1], lo[0], lo[1]]),
            _ => buf.extend_from_slice(&[hi[0], hi[1], lo[0], lo[1]]),
        }
        return;
    }
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut n = n;
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

fn push_padded(buf: &mut Vec<u8>, n: i64, width: usize) {
    if n < 0 {
        buf.push(b'-');
    }
    let n = n.unsigned_abs();
    let mut digits = 1;
    let mut t = n;
    while t >= 10 {
        t /= 10;
        digits += 1;
    }
    buf.extend(std::iter::repeat_n(b'0', width.saturating_sub(digits)));
    push_u64(buf, n);
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
///
/// Howard Hinnant's `civil_from_days` (public domain algorithm, "chrono-Compatible Low-Level Date
/// Algorithms"): exact for every day in `i64` range that jiff can represent.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The first byte that needs an escape, found one byte at a time.
    fn first_flagged(bytes: &[u8]) -> Option<usize> {
        bytes.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\')
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Runs of timestamps that stay within a day, cross midnight, jump, and leave 0..=9999.
        #[test]
        fn ts_writer_writes_what_push_ts_writes(
            start in -70_000_000_000i64..260_000_000_000,
            steps in proptest::collection::vec(prop_oneof![0i64..5, 0i64..90_000, -1i64..2, Just(400_000_000_000)], 1..30),
        ) {
            let mut writer = TsWriter::default();
            let (mut fast, mut plain) = (Vec::new(), Vec::new());
            let mut secs = start;
            for step in steps {
                secs = (secs + step).clamp(Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
                let ts = Timestamp::from_second(secs).unwrap();
                writer.push(&mut fast, ts);
                push_ts(&mut plain, ts);
                prop_assert_eq!(std::str::from_utf8(&fast).unwrap(), std::str::from_utf8(&plain).unwrap());
            }
        }

        /// Bytes drawn mostly from around the three kinds of flagged byte, so that runs of hits,
        /// bytes just above and below them, and high bytes (where the borrow trick could go wrong)
        /// all occur, at every offset of the 8-byte words.
        #[test]
        fn first_escape_finds_the_first_flagged_byte(
            bytes in proptest::collection::vec(
                prop_oneof![0x00u8..0x24, 0x5au8..0x5f, 0x7eu8..=0xff, Just(b'a')], 0..40),
        ) {
            prop_assert_eq!(first_escape(&bytes), first_flagged(&bytes));
        }

        /// The same for the sixteen-byte blocks, at lengths that end in every position of a block and
        /// its SWAR tail.
        #[test]
        fn first_escape_long_finds_the_first_flagged_byte(
            bytes in proptest::collection::vec(
                prop_oneof![8 => Just(b'a'), 1 => 0x00u8..0x24, 1 => 0x5au8..0x5f, 1 => 0x7eu8..=0xff], 0..100),
        ) {
            prop_assert_eq!(first_escape_long(&bytes), first_flagged(&bytes));
        }

        /// Every bit of `escapes16`, not only the lowest: `push_str` masks off the bits past its
        /// text and takes the lowest of the rest.
        #[test]
        fn escapes16_flags_exactly_the_bytes_that_need_an_escape(
            block in proptest::array::uniform16(
                prop_oneof![4 => Just(b'a'), 1 => 0x00u8..0x24, 1 => 0x5au8..0x5f, 1 => 0x7eu8..=0xff]),
        ) {
            let mask = escapes16(block);
            for (i, &b) in block.iter().enumerate() {
                prop_assert_eq!(mask >> i & 1 == 1, first_flagged(&[b]).is_some(), "byte {} ({:#04x})", i, b);
            }
        }
    }

    fn ts(t: Timestamp) -> String {
        let mut buf = Vec::new();
        push_ts(&mut buf, t);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn timestamps_match_jiff_at_second_precision() {
        // Every 997,001 seconds over 1900..2100, plus leap-day and year-boundary instants.
        let mut s = -2_208_988_800i64;
        while s < 4_102_444_800 {
            let t = Timestamp::from_second(s).unwrap();
            assert_eq!(ts(t), format!("\"{}\"", t.strftime("%Y-%m-%dT%H:%M:%SZ")), "{s}");
            s += 997_001;
        }
        assert_eq!(ts("2024-02-29T23:59:59.999Z".parse().unwrap()), "\"2024-02-29T23:59:59Z\"");
        assert_eq!(ts("2000-03-01T00:00:00Z".parse().unwrap()), "\"2000-03-01T00:00:00Z\"");
    }

    proptest! {
        /// Every length (the short ones take the fixed-size copy), with and without characters that
        /// need escaping, appended after other text.
        #[test]
        fn push_str_writes_what_serde_json_reads_back(
            s in "[a-zé\"\\\n\u{1}€😀]{0,40}",
            before in "[a-z]{0,3}",
        ) {
            let mut buf = before.clone().into_bytes();
            push_str(&mut buf, &s);
            prop_assert_eq!(&buf[..before.len()], before.as_bytes());
            let back: String = serde_json::from_slice(&buf[before.len()..]).unwrap();
            prop_assert_eq!(back, s);
        }
    }

    #[test]
    fn strings_escape_like_serde_json() {
        let long = format!("{}\"{}\n{}", "a".repeat(37), "b".repeat(16), "ü".repeat(20));
        for s in ["plain", "quote\"back\\slash", "ctl\u{1}\u{1f}\n\r\t", "ünï €", "", "exactly sixteen!", &long] {
            let mut buf = Vec::new();
            push_str(&mut buf, s);
            let back: String = serde_json::from_slice(&buf).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn ids_are_quoted_hyphenated_lower_case() {
        let id = hooks_core::event::SessionId::from_u128(0xABCD_EF01_2345_6789_ABCD_EF01_2345_6789);
        let mut buf = Vec::new();
        push_id(&mut buf, id.hyphenated_bytes());
        assert_eq!(String::from_utf8(buf).unwrap(), format!("\"{id}\""));
    }

    #[test]
    fn integers_are_decimal() {
        // Every number up to 100,000 (each length of the table path and the loop beyond it), then
        // every power of ten and its neighbours, and the extremes; each after other text.
        let mut numbers: Vec<u64> = (0..100_000).collect();
        numbers.extend((5..20).flat_map(|e| [10u64.pow(e) - 1, 10u64.pow(e), 10u64.pow(e) + 1]));
        numbers.push(u64::MAX);
        for n in numbers {
            let mut buf = b"x".to_vec();
            push_u64(&mut buf, n);
            assert_eq!(String::from_utf8(buf).unwrap(), format!("x{n}"));
        }
    }
}
