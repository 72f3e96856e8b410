//! A session key as the engine stores it: its parts length-prefixed in one byte string, inline in the
//! session's record when short (every key of the common `platform:chat` shape is), so that finding a
//! key's session and comparing keys reads that one record and nothing else.
//!
//! A lookup never packs the key it looks for: [`hash_key`] hashes a [`SessionKey`]'s parts as they are,
//! [`PackedKey::hash`] feeds a packed key's parts to the same hasher in the same order (so both give
//! the same hash), and [`PackedKey::matches`] compares a packed key with a key part by part.

use std::hash::{BuildHasher, Hasher};

use crate::event::SessionKey;

/// Bytes a [`PackedKey`] holds without a heap allocation.
const INLINE: usize = 78;

/// Bytes of a packed key built on the stack; a longer one (keys of more than ~120 bytes) goes to the
/// heap.
const STACK: usize = 128;

/// The packed form of a [`SessionKey`]: one flag byte (which optional parts are present), then each
/// present part as its length (LEB128) and its UTF-8 bytes. Two keys are equal exactly when their
/// packed forms are.
pub(super) enum PackedKey {
    Inline { len: u8, bytes: [u8; INLINE] },
    Spilled(Box<[u8]>),
}

impl PackedKey {
    /// The key of no session (a vacant slot): shorter than any packed key.
    pub(super) const VACANT: PackedKey = PackedKey::Inline { len: 0, bytes: [0; INLINE] };

    /// `key`, packed.
    pub(super) fn of(key: &SessionKey) -> Self {
        with_packed(key, Self::new)
    }

    fn new(packed: &[u8]) -> Self {
        match u8::try_from(packed.len()) {
            Ok(len) if packed.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..packed.len()].copy_from_slice(packed);
                PackedKey::Inline { len, bytes }
            }
            _ => PackedKey::Spilled(packed.into()),
        }
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            PackedKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            PackedKey::Spilled(bytes) => bytes,
        }
    }

    /// The parts of the key, as bytes: platform, chat, thread, user. Not for a vacant key.
    fn parts(&self) -> Parts<'_> {
        let bytes = self.as_bytes();
        let flags = bytes[0];
        let mut rest = &bytes[1..];
        let mut part = || {
            let (s, r) = split_part(rest).expect("a packed key holds whole parts");
            rest = r;
            s
        };
        let (platform, chat) = (part(), part());
        let thread = (flags & 1 != 0).then(&mut part);
        let user = (flags & 2 != 0).then(&mut part);
        (platform, chat, thread, user)
    }

    /// The key back (allocation-free for parts of up to 24 bytes).
    pub(super) fn unpack(&self) -> SessionKey {
        let utf8 = |s| std::str::from_utf8(s).expect("a packed key holds the UTF-8 parts of a key");
        let (platform, chat, thread, user) = self.parts();
        let mut key = SessionKey::chat(utf8(platform), utf8(chat));
        if let Some(thread) = thread {
            key = key.with_thread(utf8(thread));
        }
        if let Some(user) = user {
            key = key.with_user(utf8(user));
        }
        key
    }

    /// The key's hash: [`hash_key`] of the key it packs. Not for a vacant key.
    pub(super) fn hash(&self, build: &impl BuildHasher) -> u64 {
        let (platform, chat, thread, user) = self.parts();
        hash_parts(build, platform, chat, thread, user)
    }

    /// Whether this packs `key` (compared part by part; `false` for a vacant key).
    #[inline]
    pub(super) fn matches(&self, key: &SessionKey) -> bool {
        let (thread, user) = (key.thread_id(), key.user_id());
        let Some((&flags, rest)) = self.as_bytes().split_first() else { return false };
        if flags != u8::from(thread.is_some()) | u8::from(user.is_some()) << 1 {
            return false;
        }
        let Some(mut rest) = eat_part(rest, key.platform()).and_then(|r| eat_part(r, key.chat_id())) else {
            return false;
        };
        for part in [thread, user].into_iter().flatten() {
            match eat_part(rest, part) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        rest.is_empty()
    }
}

/// The hash of `key`, equal to [`PackedKey::hash`] of its packed form: its parts fed to one hasher
/// (the hasher mixes each part's length in, so the boundaries between parts count).
#[inline]
pub(super) fn hash_key(build: &impl BuildHasher, key: &SessionKey) -> u64 {
    let (thread, user) = (key.thread_id().map(str::as_bytes), key.user_id().map(str::as_bytes));
    hash_parts(build, key.platform().as_bytes(), key.chat_id().as_bytes(), thread, user)
}

#[inline]
fn hash_parts(
    build: &impl BuildHasher,
    platform: &[u8],
    chat: &[u8],
    thread: Option<&[u8]>,
    user: Option<&[u8]>,
) -> u64 {
    let mut h = build.build_hasher();
    h.write(platform);
    h.write(chat);
    if let Some(thread) = thread {
        h.write_u8(1);
        h.write(thread);
    }
    if let Some(user) = user {
        h.write_u8(2);
        h.write(user);
    }
    h.finish()
}

/// Splits the first packed part (its length, then its bytes) off `bytes`: the part and the rest.
#[inline]
fn split_part(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&b, mut rest) = bytes.split_first()?;
    let mut len = usize::from(b & 0x7f);
    if b & 0x80 != 0 {
        let mut shift = 7;
        loop {
            let (&b, r) = rest.split_first()?;
            rest = r;
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    rest.split_at_checked(len)
}

/// A key's parts as bytes: platform, chat, thread, user.
type Parts<'a> = (&'a [u8], &'a [u8], Option<&'a [u8]>, Option<&'a [u8]>);

/// `a == b` for slices of equal length, without a call to `memcmp` for up to 16 bytes (two overlapping
/// word loads compare them).
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| s.get(at..at + 8).map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()));
    let half = |s: &[u8], at: usize| s.get(at..at + 4).map(|w| u32::from_le_bytes(w.try_into().unwrap_or_default()));
    match n {
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        4..8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        _ => a == b,
    }
}

/// The rest of `bytes` after its first packed part, if that part is `part`.
#[inline]
fn eat_part<'a>(bytes: &'a [u8], part: &str) -> Option<&'a [u8]> {
    let (&b, rest) = bytes.split_first()?;
    // The common case: a part shorter than 128 bytes, whose length is one byte.
    if b & 0x80 == 0 {
        if usize::from(b) != part.len() {
            return None;
        }
        let (s, rest) = rest.split_at_checked(part.len())?;
        return same_bytes(s, part.as_bytes()).then_some(rest);
    }
    let (s, rest) = split_part(bytes)?;
    (s == part.as_bytes()).then_some(rest)
}

/// Calls `f` with `key` packed (on the stack unless the key is long; never moved, so not copied).
#[inline]
pub(super) fn with_packed<R>(key: &SessionKey, f: impl FnOnce(&[u8]) -> R) -> R {
    let (platform, chat, thread, user) = (key.platform(), key.chat_id(), key.thread_id(), key.user_id());
    let len = 1 + part_len(platform) + part_len(chat) + thread.map_or(0, part_len) + user.map_or(0, part_len);
    let fill = |out: &mut [u8]| {
        out[0] = u8::from(thread.is_some()) | u8::from(user.is_some()) << 1;
        let mut at = write_part(out, 1, platform);
        at = write_part(out, at, chat);
        if let Some(thread) = thread {
            at = write_part(out, at, thread);
        }
        if let Some(user) = user {
            at = write_part(out, at, user);
        }
        debug_assert_eq!(at, out.len());
    };
    if len <= STACK {
        let mut stack = [0; STACK];
        fill(&mut stack[..len]);
        f(&stack[..len])
    } else {
        let mut heap = vec![0; len];
        fill(&mut heap);
        f(&heap)
    }
}

/// Bytes `part` takes packed: its length, then itself.
fn part_len(part: &str) -> usize {
    varint_len(part.len()) + part.len()
}

/// Writes `part` packed at `at` in `out`; returns where it ends.
#[inline]
fn write_part(out: &mut [u8], mut at: usize, part: &str) -> usize {
    let mut n = part.len();
    while n >= 0x80 {
        out[at] = (n as u8 & 0x7f) | 0x80;
        n >>= 7;
        at += 1;
    }
    out[at] = n as u8;
    at += 1;
    out[at..at + part.len()].copy_from_slice(part.as_bytes());
    at + part.len()
}

fn varint_len(n: usize) -> usize {
    let bits = usize::BITS - n.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_keys_round_trip_and_compare_like_keys() {
        let long = "x".repeat(300);
        let keys = [
            SessionKey::chat("telegram", "1000000000"),
            SessionKey::chat("telegram", "100000000"),
            SessionKey::chat("telegra", "m1000000000"),
            SessionKey::chat("", ""),
            SessionKey::chat("web", "42").with_thread("7"),
            SessionKey::chat("web", "42").with_user("7"),
            SessionKey::chat("web", "42").with_thread("").with_user(""),
            SessionKey::chat("web", "42").with_thread(""),
            SessionKey::chat("discord", "123456789012345678").with_thread("876543210987654321").with_user("1"),
            SessionKey::chat("p", &long),
            SessionKey::chat(&long, "c").with_user(&long),
            SessionKey::chat("ü\u{0}", "\u{10ffff}"),
        ];
        for a in &keys {
            let packed = PackedKey::of(a);
            assert_eq!(packed.unpack(), *a);
            with_packed(a, |bytes| assert_eq!(bytes, packed.as_bytes()));
            let build = hashbrown::DefaultHashBuilder::default();
            assert_eq!(packed.hash(&build), hash_key(&build, a));
            assert!(same_bytes(a.chat_id().as_bytes(), a.chat_id().as_bytes()));
            for b in &keys {
                assert_eq!(packed.as_bytes() == PackedKey::of(b).as_bytes(), a == b, "{a:?} {b:?}");
                assert_eq!(packed.matches(b), a == b, "{a:?} {b:?}");
            }
        }
        assert!(matches!(PackedKey::of(&keys[0]), PackedKey::Inline { .. }));
        assert!(matches!(PackedKey::of(&keys[9]), PackedKey::Spilled(_)));
        assert!(!PackedKey::VACANT.matches(&keys[3]));
        for n in 0..40usize {
            let a: Vec<u8> = (0..n).map(|i| i as u8).collect();
            assert!(same_bytes(&a, &a));
            assert!(!same_bytes(&a, &a[..n.saturating_sub(1)]) || n == 0);
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 0x40;
                assert!(!same_bytes(&a, &b), "{n} {i}");
            }
        }
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(16_383), 2);
        assert_eq!(varint_len(16_384), 3);
    }
}
