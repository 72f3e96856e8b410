//! A session key as the engine stores it: its parts length-prefixed in one byte string, inline in the
//! session's record when short (every key of the common `platform:chat` shape is), so that finding a
//! key's session and comparing keys reads that one record and nothing else.

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

    /// The key back (allocation-free for parts of up to 24 bytes).
    pub(super) fn unpack(&self) -> SessionKey {
        let mut bytes = self.as_bytes();
        let flags = bytes[0];
        bytes = &bytes[1..];
        let mut part = || {
            let mut len = 0usize;
            let mut shift = 0;
            loop {
                let b = bytes[0];
                bytes = &bytes[1..];
                len |= usize::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            let (s, rest) = bytes.split_at(len);
            bytes = rest;
            std::str::from_utf8(s).expect("a packed key holds the UTF-8 parts of a key")
        };
        let mut key = SessionKey::chat(part(), part());
        if flags & 1 != 0 {
            key = key.with_thread(part());
        }
        if flags & 2 != 0 {
            key = key.with_user(part());
        }
        key
    }
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
            for b in &keys {
                assert_eq!(packed.as_bytes() == PackedKey::of(b).as_bytes(), a == b, "{a:?} {b:?}");
            }
        }
        assert!(matches!(PackedKey::of(&keys[0]), PackedKey::Inline { .. }));
        assert!(matches!(PackedKey::of(&keys[9]), PackedKey::Spilled(_)));
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(16_383), 2);
        assert_eq!(varint_len(16_384), 3);
    }
}
